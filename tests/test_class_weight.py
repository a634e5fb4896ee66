"""--class-weight: the weights computed, that they reach the loss, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, toy_rows, write_csv
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.config import TrainConfig, class_weights, parse_class_weight

runner = CliRunner()


def test_balanced_is_scikit_learns_formula():
    labels = ["ham", "spam", "zzz"]
    counts = {"ham": 90, "spam": 9, "zzz": 1}
    weights = class_weights("balanced", labels, counts)
    # n_samples / (n_classes * count_c), as sklearn.utils.class_weight.compute_class_weight("balanced")
    np.testing.assert_allclose(weights, [100 / (3 * 90), 100 / (3 * 9), 100 / (3 * 1)])
    # every row's weight summed gives the number of rows: the loss keeps its scale on average
    assert sum(w * counts[label] for w, label in zip(weights, labels, strict=True)) == pytest.approx(100)


def test_a_mapping_weighs_unlisted_labels_one():
    assert class_weights(parse_class_weight('{"spam": 4}'), ["ham", "spam"], {"ham": 5, "spam": 1}) == [1.0, 4.0]
    assert class_weights(None, ["ham", "spam"], {"ham": 5, "spam": 1}) == [1.0, 1.0]


def _history(data, **options) -> list[dict[str, float]]:
    from lstm_cli.train import train

    # No bigrams: most rows of their table get no gradient in a step, and there Adam's epsilon, not the loss's
    # scale, sets the update, which would break the scale invariance the test below relies on.
    config = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, epochs=2, batch_size=16,
                         learning_rate=0.02, bigram_buckets=0, **options)  # fmt: skip
    return train(config, data).history


def test_weights_reach_the_training_loss(tmp_path):
    from lstm_cli.data import read_labeled

    data = read_labeled(write_csv(tmp_path / "train.csv", toy_rows(96, seed=3)))
    plain = _history(data)
    # Weight 5 for every class: Adam is invariant to the scale of the loss, so training follows the same path
    # and the reported training loss is 5 times as large; the validation loss is not weighted.
    scaled = _history(data, class_weight={"pos": 5, "neg": 5, "meh": 5})
    for a, b in zip(plain, scaled, strict=True):
        assert b["loss"] == pytest.approx(5 * a["loss"], rel=1e-2)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-2)
    # Unequal weights change what is learned; the weights are saved and shown.
    result = runner.invoke(app, ["train", "train.csv", "-m", "skewed", *TINY, "--epochs", "2",
                                 "--class-weight", '{"pos": 20}'])  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = json.loads((tmp_path / "skewed" / "metadata.json").read_text())
    assert metadata["training"]["history"][-1]["val_loss"] != pytest.approx(plain[-1]["val_loss"], rel=1e-3)
    assert metadata["config"]["class_weight"] == {"pos": 20.0}
    assert metadata["training"]["class_weights"] == {"meh": 1.0, "neg": 1.0, "pos": 20.0}
    info = runner.invoke(app, ["info", "-m", "skewed"])
    assert "class weights" in info.stdout and "pos 20" in info.stdout


@pytest.mark.parametrize(
    "value,message,code",
    [
        ('{"spam": 4}', "--class-weight names labels not in", 1),
        ('{"pos": 0}', "the weight of 'pos' must be a positive number", 2),
        ('{"pos": "x"}', "the weight of 'pos' must be a positive number", 2),
        ("{pos: 2}", "must be 'balanced' or a JSON object", 2),
        ("[1, 2]", "must be 'balanced' or a JSON object", 2),
        ("balance", "must be 'balanced' or a JSON object", 2),
    ],
)
def test_class_weight_errors(tmp_path, value, message, code):
    write_csv(tmp_path / "train.csv", toy_rows(30))
    result = runner.invoke(app, ["train", "train.csv", *TINY, "--class-weight", value])
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and not (tmp_path / "lstm-model").exists()
