"""Weight averaging: the epochs kept, the windows averaged, the choice, and what a trained model ends up with."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import TINY
from typer.testing import CliRunner

from lstm_cli.artifact import read_metadata
from lstm_cli.averaging import EpochWindows, choose
from lstm_cli.cli import app

runner = CliRunner()


def _epoch(value: float) -> list[np.ndarray]:
    """One epoch's weights: a float matrix, and an int32 list like a bigram vocabulary's (never averaged)."""
    return [np.full((2, 3), value, np.float32), np.array([0, 5, 9], np.int32)]


def _path(bests: list[bool]) -> EpochWindows:
    """Epochs 1, 2, 3, ... whose float weights hold the epoch's number; `bests`: which were the best so far."""
    path = EpochWindows()
    for epoch, best in enumerate(bests, 1):
        path.add(_epoch(epoch), best=best)
    return path


def test_the_epochs_around_the_best_one_and_the_last_two_are_kept_and_windows_averaged():
    # val_loss improves at epochs 1, 2 and 5, then not for 4 epochs: best 5 of 9.
    path = _path([True, True, False, False, True, False, False, False, False])
    assert (path.count, path.best) == (9, 5)
    assert sorted(path.kept) == [3, 4, 5, 6, 7, 8, 9]  # 5 +- 2, and the last two (8, 9)
    means = dict(path.candidates())
    assert list(means) == [(4, 5), (3, 5), (5, 6), (5, 7), (4, 6), (3, 7)]
    for (first, last), mean in means.items():
        np.testing.assert_array_equal(mean[0], np.full((2, 3), (first + last) / 2, np.float32))
        assert mean[1].dtype == np.int32 and mean[1].tolist() == [0, 5, 9]  # carried, not divided
    # What a checkpoint keeps: a restored path goes on exactly as the original.
    restored = EpochWindows.restored(path.counts(), {k: [a.copy() for a in v] for k, v in path.arrays().items()})
    for p in (path, restored):
        p.add(_epoch(10), best=True)  # a new best: 8, 9 were kept for it
        assert sorted(p.kept) == [8, 9, 10] and p.windows() == [(9, 10), (8, 10)]
    for (window, mine), (theirs_window, theirs) in zip(path.candidates(), restored.candidates(), strict=True):
        assert window == theirs_window
        np.testing.assert_array_equal(mine[0], theirs[0])


def test_windows_stay_within_the_epochs_run():
    assert _path([True]).windows() == []  # one epoch: nothing to average
    assert _path([True, False, False]).windows() == [(1, 2), (1, 3)]  # nothing before epoch 1
    assert _path([False, True, False]).windows() == [(1, 2), (2, 3), (1, 3)]  # nor past the last epoch
    assert EpochWindows().windows() == []


def test_the_lowest_validation_loss_wins_and_the_best_epoch_keeps_ties():
    candidates = [((2, 3), _epoch(3)), ((3, 4), _epoch(4))]
    scores = {3.0: {"val_loss": 0.5, "val_accuracy": 0.7}, 4.0: {"val_loss": 0.4, "val_accuracy": 0.8}}
    choice = choose(0.45, iter(candidates), lambda w: scores[float(w[0][0, 0])])
    assert (choice.window, choice.val_loss, choice.tried) == ((3, 4), 0.4, {(2, 3): 0.5, (3, 4): 0.4})
    assert choice.weights is candidates[1][1] and choice.metrics == scores[4.0]
    kept = choose(0.4, iter(candidates), lambda w: scores[float(w[0][0, 0])])
    assert (kept.window, kept.weights, kept.val_loss, kept.metrics) == (None, None, 0.4, {})


def _mean(epochs: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The epochs' float weights summed in order and divided by their number; the others as the last has them."""
    total = [np.array(w) for w in epochs[0]]
    for weights in epochs[1:]:
        total = [t + w if t.dtype.kind == "f" else w for t, w in zip(total, weights, strict=True)]
    return [t / np.float32(len(epochs)) if t.dtype.kind == "f" else t for t in total]


def _trained_weights(model_dir) -> list[np.ndarray]:
    from lstm_cli.artifact import network_weights

    return list(network_weights(model_dir).values())


@pytest.mark.parametrize("averaging_wins", [True, False])
def test_a_trained_model_holds_the_mean_of_a_window_when_averaging_wins(
    data_dir, tmp_path, monkeypatch, averaging_wins
):
    import lstm_cli.averaging as averaging
    import lstm_cli.train as train

    epochs = []
    add = averaging.EpochWindows.add

    def recording_add(self, weights, *, best):
        epochs.append([np.array(w) for w in weights])
        add(self, weights, best=best)

    def rigged_choose(best_loss, candidates, validate):
        # Averaging wins whatever it scores (best loss inf), or never (best loss -inf): both paths are tested.
        return averaging.choose(math.inf if averaging_wins else -math.inf, candidates, validate)

    monkeypatch.setattr(averaging.EpochWindows, "add", recording_add)
    monkeypatch.setattr(train, "choose", rigged_choose)
    model = tmp_path / "model"
    args = ["train", str(data_dir / "train.csv"), *TINY, "--epochs", "4", "--patience", "4", "-m", str(model)]
    assert runner.invoke(app, args).exit_code == 0
    training = read_metadata(model)["training"]
    assert len(epochs) == training["epochs_run"] == 4
    best = training["best_epoch"]
    tried = {tuple(map(int, w.split("-"))): loss for w, loss in training["averaging_val_loss"].items()}
    around = [(best - back, best + forward) for back, forward in ((1, 0), (2, 0), (0, 1), (0, 2), (1, 1), (2, 2))]
    assert set(tried) == {(first, last) for first, last in around if first >= 1 and last <= 4} != set()
    saved = _trained_weights(model)
    metrics, best_epoch_metrics = read_metadata(model)["metrics"], training["history"][best - 1]
    if averaging_wins:
        first, last = training["averaged_window"]
        assert (first, last) == min(tried, key=tried.get)  # the best of the means
        expected = _mean(epochs[first - 1 : last])
        assert metrics["val_loss"] == tried[(first, last)]  # the metrics saved are the mean's, not the best epoch's
        assert metrics["val_loss"] != best_epoch_metrics["val_loss"]
        info = runner.invoke(app, ["info", "-m", str(model)])
        assert f"weights: mean of epochs {first}-{last}" in " ".join(info.output.split())
    else:
        assert training["averaged_window"] is None
        expected = epochs[best - 1]
        assert metrics == best_epoch_metrics
    for a, b in zip(saved, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_no_weight_averaging_saves_the_best_epoch_and_tries_nothing(data_dir, tmp_path):
    model = tmp_path / "model"
    args = ["train", str(data_dir / "train.csv"), *TINY, "--no-weight-averaging", "-m", str(model)]
    assert runner.invoke(app, args).exit_code == 0
    training = read_metadata(model)["training"]
    assert training["averaged_window"] is None and training["averaging_val_loss"] == {}
    assert read_metadata(model)["config"]["weight_averaging"] is False


def test_a_checkpoint_of_the_running_sums_before_the_windows_is_refused_with_one_line(tmp_path):
    from lstm_cli import checkpoint
    from lstm_cli.errors import LstmCliError

    with pytest.raises(LstmCliError, match="no weight averaging state this lstm-cli can use; run without --resume"):
        checkpoint.restore_average(tmp_path, {"average": {"count": 3, "best_count": 2}})


def test_a_checkpoint_carries_the_epochs_it_holds_and_restores_them(tmp_path):
    import json
    from types import SimpleNamespace

    from lstm_cli import checkpoint

    network, optimizer = SimpleNamespace(variables=[np.zeros(2, np.float32)]), SimpleNamespace(variables=[])
    directory, inodes = tmp_path / "ck", {}

    def save(path: EpochWindows, epoch: int) -> dict[str, int]:
        checkpoint.save(directory, run={}, epoch=epoch, stopped=False, history=[], epoch_seconds=[],
                        early_stopping={"value": 1.0, "epoch": 0, "wait": 0}, network=network,
                        optimizer=optimizer, best_weights=None, average=path)  # fmt: skip
        return {p.name: p.stat().st_ino for p in directory.glob("average_epoch_*.npz")}

    path = EpochWindows()
    for epoch, best in enumerate([True, True, False, False, False, False], 1):
        path.add(_epoch(epoch), best=best)
        files = save(path, epoch)
        assert sorted(files) == [f"average_epoch_{e}.npz" for e in sorted(path.kept)]
        # An epoch already in the checkpoint is carried into the new one (same file), not written again.
        assert all(files[name] == inode for name, inode in inodes.items() if name in files)
        inodes = files
    assert sorted(path.kept) == [1, 2, 3, 4, 5, 6]  # best 2: epochs 1-4, and the last two
    state = json.loads((directory / "state.json").read_text())
    restored = checkpoint.restore_average(directory, state)
    assert (restored.count, restored.best, sorted(restored.kept)) == (6, 2, [1, 2, 3, 4, 5, 6])
    for epoch, weights in path.kept.items():
        np.testing.assert_array_equal(restored.kept[epoch][0], weights[0])
    # A run that did not write them (a new one, not resumed) never takes files it finds: it writes its own.
    fresh = EpochWindows()
    fresh.add(_epoch(7), best=True)
    assert save(fresh, 1)["average_epoch_1.npz"] != inodes["average_epoch_1.npz"]
    np.testing.assert_array_equal(checkpoint.restore_average(directory, json.loads(
        (directory / "state.json").read_text())).kept[1][0], _epoch(7)[0])  # fmt: skip
