"""Weight averaging: the running sums, the choice, and what a trained model ends up with."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TINY
from typer.testing import CliRunner

from lstm_cli.artifact import read_metadata
from lstm_cli.averaging import PathAverage, choose
from lstm_cli.cli import app

runner = CliRunner()


def _epoch(value: float) -> list[np.ndarray]:
    """One epoch's weights: a float matrix, and an int32 list like a bigram vocabulary's (never averaged)."""
    return [np.full((2, 3), value, np.float32), np.array([0, 5, 9], np.int32)]


def test_sums_are_kept_at_the_best_epoch_and_the_one_after_and_averaged_there():
    path = PathAverage()
    # val_loss by epoch: 1.0, 0.8 (best), 0.9, 0.7 (best), 0.75, 0.74 -> best epoch 4, one after it 5.
    for value, best in ((1, True), (2, True), (4, False), (8, True), (16, False), (32, False)):
        path.add(_epoch(value), best=best)
    assert path.count == 6 and path.best_count == 4
    (n4, mean4), (n5, mean5) = path.candidates()
    assert (n4, n5) == (4, 5)
    np.testing.assert_array_equal(mean4[0], np.full((2, 3), (1 + 2 + 4 + 8) / 4, np.float32))
    np.testing.assert_array_equal(mean5[0], np.full((2, 3), (1 + 2 + 4 + 8 + 16) / 5, np.float32))
    assert mean4[1].dtype == np.int32 and mean4[1].tolist() == [0, 5, 9]  # carried, not divided
    # The sums survive a checkpoint: a restored average goes on exactly as the original.
    restored = PathAverage.restored(path.counts(), {k: [a.copy() for a in v] for k, v in path.arrays().items()})
    for p in (path, restored):
        p.add(_epoch(64), best=True)
    assert [n for n, _ in restored.candidates()] == [n for n, _ in path.candidates()] == [7]
    np.testing.assert_array_equal(restored.candidates()[0][1][0], path.candidates()[0][1][0])


def test_a_best_first_epoch_has_only_the_mean_with_the_next_one():
    path = PathAverage()
    path.add(_epoch(1), best=True)
    assert path.candidates() == []  # the mean of epoch 1 alone is epoch 1
    path.add(_epoch(3), best=False)
    path.add(_epoch(5), best=False)
    [(n, mean)] = path.candidates()
    assert n == 2 and mean[0][0, 0] == 2.0  # epochs 1-2, not 1-3


def test_the_lowest_validation_loss_wins_and_the_best_epoch_keeps_ties():
    candidates = [(3, _epoch(3)), (4, _epoch(4))]
    scores = {3.0: {"val_loss": 0.5, "val_accuracy": 0.7}, 4.0: {"val_loss": 0.4, "val_accuracy": 0.8}}
    choice = choose(0.45, candidates, lambda w: scores[float(w[0][0, 0])])
    assert (choice.epochs, choice.val_loss, choice.tried) == (4, 0.4, {3: 0.5, 4: 0.4})
    assert choice.weights is candidates[1][1] and choice.metrics == scores[4.0]
    kept = choose(0.4, candidates, lambda w: scores[float(w[0][0, 0])])
    assert (kept.epochs, kept.weights, kept.val_loss, kept.metrics) == (0, None, 0.4, {})


def _mean(epochs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The epochs' float weights summed in order and divided by their number; the others as the last has them."""
    total = [np.array(w) for w in epochs[0]]
    for weights in epochs[1:]:
        total = [t + w if t.dtype.kind == "f" else w for t, w in zip(total, weights, strict=True)]
    return [t / np.float32(len(epochs)) if t.dtype.kind == "f" else t for t in total]


def _trained_weights(model_dir) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(model_dir / "model.keras").weights]


@pytest.mark.parametrize("averaging_wins", [True, False])
def test_a_trained_model_holds_the_mean_of_its_first_epochs_when_averaging_wins(
    data_dir, tmp_path, monkeypatch, averaging_wins
):
    import lstm_cli.averaging as averaging
    import lstm_cli.train as train

    epochs = []
    add = averaging.PathAverage.add

    def recording_add(self, weights, *, best):
        epochs.append([np.array(w) for w in weights])
        add(self, weights, best=best)

    def rigged_choose(best_loss, candidates, validate):
        # Averaging wins whatever it scores (best loss inf), or never (best loss -inf): both paths are tested.
        return averaging.choose(math.inf if averaging_wins else -math.inf, candidates, validate)

    monkeypatch.setattr(averaging.PathAverage, "add", recording_add)
    monkeypatch.setattr(train, "choose", rigged_choose)
    model = tmp_path / "model"
    args = ["train", str(data_dir / "train.csv"), *TINY, "--epochs", "4", "--patience", "4", "-m", str(model)]
    assert runner.invoke(app, args).exit_code == 0
    training = read_metadata(model)["training"]
    assert len(epochs) == training["epochs_run"] == 4
    best = training["best_epoch"]
    tried = {int(n): loss for n, loss in training["averaging_val_loss"].items()}
    assert set(tried) == {n for n in (best, best + 1) if 1 < n <= 4}
    saved = _trained_weights(model)
    metrics, best_epoch_metrics = read_metadata(model)["metrics"], training["history"][best - 1]
    if averaging_wins:
        n = training["averaged_epochs"]
        assert n == min(tried, key=tried.get)  # the better of the means
        expected = _mean(epochs[:n])
        assert metrics["val_loss"] == tried[n]  # the metrics saved are the mean's, not the best epoch's
        assert metrics["val_loss"] != best_epoch_metrics["val_loss"]
    else:
        assert training["averaged_epochs"] == 0
        expected = epochs[best - 1]
        assert metrics == best_epoch_metrics
    for a, b in zip(saved, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_no_weight_averaging_saves_the_best_epoch_and_tries_nothing(data_dir, tmp_path):
    model = tmp_path / "model"
    args = ["train", str(data_dir / "train.csv"), *TINY, "--no-weight-averaging", "-m", str(model)]
    assert runner.invoke(app, args).exit_code == 0
    training = read_metadata(model)["training"]
    assert training["averaged_epochs"] == 0 and training["averaging_val_loss"] == {}
    assert read_metadata(model)["config"]["weight_averaging"] is False
