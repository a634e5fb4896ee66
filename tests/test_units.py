"""Pure-Python pieces: batching, metrics, configuration limits, device decisions."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import encoded, unescape_tsv
from hypothesis import given
from hypothesis import strategies as st

from lstm_cli.batching import batch_count, batch_indices
from lstm_cli.config import TrainConfig
from lstm_cli.devices import decide
from lstm_cli.metrics import classification_report, dense_confusion


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
    assert dense_confusion(r) == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
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


@pytest.mark.parametrize("rows", [1, 50, 799, 800, 1_600, 1_601, 3_199, 3_200, 9_000, 25_600, 51_200, 60_000, 10**7])
def test_auto_batch_size_is_the_largest_power_of_two_leaving_100_steps_an_epoch(rows):
    from lstm_cli.config import TrainConfig, auto_batch_size

    batch = auto_batch_size(rows)
    assert 32 <= batch <= 512 and batch & (batch - 1) == 0
    if 32 < batch < 512:
        assert rows / batch >= 100 > rows / (2 * batch)
    elif batch == 32:
        assert rows / 64 < 100
    else:
        assert rows / 512 >= 100
    # the automatic learning rate: twice as large when an epoch has fewer than 100 steps; a given one is kept
    resolved = TrainConfig().resolved(rows=rows, tokens=10 * rows)
    assert (resolved.batch_size, resolved.learning_rate) == (batch, 2e-3 if rows < 3_200 else 1e-3)
    assert TrainConfig(batch_size=512).resolved(rows=rows, tokens=rows).learning_rate == (
        1e-3 if rows >= 51_200 else 2e-3
    )
    assert TrainConfig(learning_rate=5e-4).resolved(rows=rows, tokens=10 * rows).learning_rate == 5e-4


# --- stratified validation split ----------------------------------------------------------------------------


def test_stratified_split_holds_out_the_fraction_of_every_class():
    from lstm_cli.train import stratified_split

    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 7 + ["d"] * 2 + ["e"]
    train, validation, warnings = stratified_split(labels, 0.2, seed=3)
    assert sorted([*train, *validation]) == list(range(len(labels)))  # every row on exactly one side
    held = {x: sum(labels[i] == x for i in validation) for x in "abcde"}
    # round(n * fraction), but at least one row and never the whole class
    assert held == {"a": 10, "b": 6, "c": 1, "d": 1, "e": 0}
    assert warnings == ["class 'e' has a single row: kept for training, absent from validation"]
    again, _, _ = stratified_split(labels, 0.2, seed=3)
    other, _, _ = stratified_split(labels, 0.2, seed=4)
    np.testing.assert_array_equal(train, again)  # seeded
    assert not np.array_equal(train, other)


# --- output escaping ----------------------------------------------------------------------------------------

NASTY_LABELS = ["multi\nline", "tab\tbed", "back\\slash", "cr\rhere", "\\n literally", "[/x]", "plain"]


@pytest.mark.parametrize("k", [1, 3])
def test_tsv_and_label_lines_are_one_line_per_text_and_unambiguous(k):
    from lstm_cli.predict import Predictions
    from lstm_cli.render import prediction_lines

    rng = np.random.default_rng(k)
    probabilities = rng.dirichlet(np.ones(len(NASTY_LABELS)), size=40).astype(np.float32)
    batch = Predictions([f"text {i}" for i in range(40)], probabilities)
    expected = [[NASTY_LABELS[i] for i in row] for row in np.argsort(-probabilities, axis=1, kind="stable")[:, :k]]
    tsv = "\n".join(prediction_lines(batch, NASTY_LABELS, "tsv", k)) + "\n"
    labels = "\n".join(prediction_lines(batch, NASTY_LABELS, "label", k)) + "\n"
    for output, step in ((tsv, 2), (labels, 1)):
        lines = output.split("\n")[:-1]
        assert len(lines) == 40
        decoded = [[unescape_tsv(f) for f in line.split("\t")[::step]] for line in lines]
        assert decoded == expected
    records = [json.loads(line) for line in prediction_lines(batch, NASTY_LABELS, "json", k)]
    assert [r["label"] for r in records] == [row[0] for row in expected]  # JSON: exact, no escapes


def test_shown_text_is_literal_and_on_one_line():
    from rich.console import Console

    from lstm_cli.render import literal, warning

    console = Console(file=io.StringIO(), width=200, emoji=False, highlight=False, color_system=None)
    for value in ["[/x]", "[bold]b[/bold]", "data[1].csv", ":smile:", "a\nb", "esc\x1b[31m", "\x85"]:
        console.print(warning(f"{value} here"))
        console.print(literal(value))
    lines = console.file.getvalue().splitlines()
    assert lines == [
        "Warning: [/x] here", "[/x]",
        "Warning: [bold]b[/bold] here", "[bold]b[/bold]",
        "Warning: data[1].csv here", "data[1].csv",
        "Warning: :smile: here", ":smile:",
        "Warning: a\\nb here", "a\\nb",
        "Warning: esc\\x1b[31m here", "esc\\x1b[31m",
        "Warning: \\x85 here", "\\x85",
    ]  # fmt: skip


@given(
    texts=st.lists(st.text(max_size=30), max_size=60),
    size=st.integers(1, 9),
    max_chars=st.one_of(st.none(), st.integers(1, 80)),
)
def test_batched_keeps_order_bounds_batches_and_never_reads_ahead(texts, size, max_chars):
    from lstm_cli.data import batched

    consumed = []

    def source():
        for text in texts:
            consumed.append(text)
            yield text

    batches = []
    for batch in batched(source(), size, max_chars):
        assert len(consumed) == sum(map(len, batches)) + len(batch)  # nothing read beyond this batch
        batches.append(batch)
    assert [t for b in batches for t in b] == texts
    for batch in batches:
        assert 1 <= len(batch) <= size
        if max_chars is not None:
            assert sum(map(len, batch[:-1])) < max_chars  # it ended as soon as it reached the budget
    for batch in batches[:-1]:
        assert len(batch) == size or (max_chars is not None and sum(map(len, batch)) >= max_chars)


def test_bigram_buckets_default_to_a_quarter_of_the_training_tokens_or_with_a_min_count_a_hash_space():
    from lstm_cli.config import BIGRAM_HASH_SPACE, auto_bigram_buckets

    assert [auto_bigram_buckets(t) for t in (0, 16_384, 16_385, 100_000, 10**9)] == [4096, 4096, 8192, 32768, 131072]
    assert TrainConfig().resolved(rows=1000, tokens=100_000).bigram_buckets == 32768  # auto made concrete
    # With a bigram min count the buckets are a hash space: only those seen often enough get a row.
    seen = TrainConfig(bigram_min_count=2).resolved(rows=1000, tokens=100_000)
    assert seen.bigram_buckets == BIGRAM_HASH_SPACE == 2**24
    assert TrainConfig(bigram_buckets=0).resolved(rows=1000, tokens=100_000).bigram_buckets == 0  # off stays off
    assert TrainConfig(bigram_buckets=500).resolved(rows=1000, tokens=100_000).bigram_buckets == 500  # given: kept
    with pytest.raises(ValueError, match="--bigram-buckets must be 0"):
        TrainConfig(bigram_buckets=1)
    with pytest.raises(ValueError, match="--bigram-min-count must be >= 0"):
        TrainConfig(bigram_min_count=-1)


def test_the_bigram_min_count_is_two_for_a_corpus_with_more_distinct_bigrams_than_the_line_else_zero():
    from lstm_cli.config import AUTO_BIGRAM_MIN_COUNT_ABOVE as line
    from lstm_cli.config import BIGRAM_HASH_SPACE, auto_bigram_min_count

    assert [auto_bigram_min_count(n) for n in (0, line, line + 1, 10**7)] == [0, 0, 2, 2]
    large = TrainConfig().resolved(rows=1000, tokens=10**6, distinct_bigrams=line + 1)
    assert (large.bigram_min_count, large.bigram_buckets) == (2, BIGRAM_HASH_SPACE)
    below = TrainConfig().resolved(rows=1000, tokens=10**6, distinct_bigrams=line)
    assert (below.bigram_min_count, below.bigram_buckets) == (0, 131_072)
    # What the user set wins: a min count (0 too), or the size of the table, whose every bucket is then a row.
    assert TrainConfig(bigram_min_count=0).resolved(1000, 10**6, line + 1).bigram_min_count == 0
    assert TrainConfig(bigram_min_count=3).resolved(1000, 10**6, 0).bigram_min_count == 3
    sized = TrainConfig(bigram_buckets=4096).resolved(1000, 10**6, line + 1)
    assert (sized.bigram_min_count, sized.bigram_buckets) == (0, 4096)
    assert TrainConfig(bigram_buckets=0).resolved(1000, 10**6, line + 1).bigram_min_count == 0
    # The buckets are counted in an array of the hash space's size: no table or hash space beyond it.
    assert TrainConfig(bigram_buckets=BIGRAM_HASH_SPACE).bigram_buckets == BIGRAM_HASH_SPACE
    with pytest.raises(ValueError, match="--bigram-buckets must be <= 16777216"):
        TrainConfig(bigram_buckets=BIGRAM_HASH_SPACE + 1)
