"""Pure-Python pieces: batching, metrics, configuration limits, device decisions."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_cli.batching import EncodedTexts, batch_count, batch_indices
from lstm_cli.config import TrainConfig
from lstm_cli.devices import decide
from lstm_cli.metrics import classification_report


def encoded(rows: list[list[int]]) -> EncodedTexts:
    lengths = [len(r) for r in rows]
    return EncodedTexts(np.array([x for r in rows for x in r], np.int32), np.cumsum([0, *lengths]))


def test_padded_rows_are_right_padded_copies():
    enc = encoded([[5, 6, 7], [8], [9, 10]])
    np.testing.assert_array_equal(enc.padded(np.array([2, 0, 1])), [[9, 10, 0], [5, 6, 7], [8, 0, 0]])


@pytest.mark.parametrize("shuffled", [True, False])
def test_batches_cover_every_row_once_with_little_padding(shuffled):
    rng_lengths = np.random.default_rng(0).integers(1, 60, size=5000)
    rng = np.random.default_rng(1) if shuffled else None
    batches = batch_indices(rng_lengths, 32, rng)
    assert len(batches) == batch_count(5000, 32, shuffled=shuffled)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(5000))
    padded = sum(len(b) * rng_lengths[b].max() for b in batches)
    assert padded < 1.15 * rng_lengths.sum()  # versus ~1.9x for random batches


def test_shuffle_depends_only_on_seed():
    lengths = np.arange(1000) % 17 + 1
    a = batch_indices(lengths, 16, np.random.default_rng([3, 0]))
    b = batch_indices(lengths, 16, np.random.default_rng([3, 0]))
    c = batch_indices(lengths, 16, np.random.default_rng([3, 1]))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_classification_report_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    r = classification_report(truth, predicted, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["per_class"]["a"] == {
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert r["per_class"]["c"]["precision"] == 0.5 and r["per_class"]["c"]["recall"] == 1.0
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "--epochs must be >= 1"),
        ("dropout", 1.0, "--dropout must be < 1.0"),
        ("units", 0, "--units must be >= 1"),
        ("batch_size", -3, "--batch-size must be >= 1"),
        ("learning_rate", 0.0, "--learning-rate must be > 0"),
        ("validation_split", 1.0, "--validation-split must be < 1.0"),
        ("cell", "rnn", "--cell must be one of"),
    ],
)
def test_config_rejects_out_of_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_config_round_trips_and_rejects_unknown_keys():
    config = TrainConfig(units=7)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown configuration keys: colour"):
        TrainConfig.from_dict({**config.to_dict(), "colour": "red"})


def test_device_decisions():
    default = TrainConfig()
    cpu = decide(default, requested="auto", gpus_visible=0)
    assert (cpu.device, cpu.cudnn, cpu.warnings) == ("cpu", False, [])
    forced = decide(default, requested="cpu", gpus_visible=2)
    assert forced.device == "cpu" and forced.gpus == 0
    gpu = decide(default, requested="auto", gpus_visible=1)
    assert gpu.device == "gpu" and gpu.cudnn and gpu.strategy == "default" and gpu.warnings == []  # defaults fit cuDNN
    slow = decide(TrainConfig(recurrent_dropout=0.2), requested="auto", gpus_visible=1)
    assert not slow.cudnn and len(slow.warnings) == 1 and "--recurrent-dropout 0" in slow.warnings[0]
    fast = decide(TrainConfig(recurrent_dropout=0.0), requested="gpu", gpus_visible=4, mixed_precision=True)
    assert (fast.cudnn, fast.strategy, fast.mixed_precision, fast.warnings) == (True, "mirrored", True, [])
    assert "4 GPUs" in fast.describe() and "cuDNN" in fast.describe()
    missing = decide(default, requested="gpu", gpus_visible=0, mixed_precision=True)
    assert missing.device == "cpu" and not missing.mixed_precision and len(missing.warnings) == 2


@pytest.mark.parametrize("rows", [1, 50, 1_600, 1_601, 3_199, 3_200, 9_000, 51_200, 60_000, 10**7])
def test_auto_batch_size_is_the_largest_power_of_two_leaving_100_steps_an_epoch(rows):
    from lstm_cli.config import auto_batch_size

    batch = auto_batch_size(rows)
    assert 16 <= batch <= 512 and batch & (batch - 1) == 0
    if 16 < batch < 512:
        assert rows / batch >= 100 > rows / (2 * batch)
    elif batch == 16:
        assert rows / 32 < 100
    else:
        assert rows / 512 >= 100
