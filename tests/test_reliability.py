"""Nothing a user saved is lost: interruptions, kill -9, full or read-only disks, readers during a swap."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from typer.testing import CliRunner

from lstm_cli.artifact import read_metadata, verify_files
from lstm_cli.cli import app

runner = CliRunner()
LSTM_CLI = str(Path(sys.executable).with_name("lstm-cli"))
# Many short epochs: long enough to interrupt mid-run, still a few seconds in all.
LONG = [*TINY[:-1], "--epochs", "40", "--patience", "40"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [LSTM_CLI, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_epoch(checkpoint: Path, epoch: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((checkpoint / "state.json").read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def _weights(model_dir: Path) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(model_dir / "model.keras").weights]


def test_interrupted_training_resumes_to_the_same_weights(data_dir, tmp_path):
    args = ["train", str(data_dir / "train.csv"), *LONG]
    reference = runner.invoke(app, [*args, "-m", str(tmp_path / "reference")])
    assert reference.exit_code == 0, reference.output

    proc = _start([*args, "-m", "model"], tmp_path)
    _wait_for_epoch(tmp_path / ".model.checkpoint", 3, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Error: interrupted; no model was saved at model" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "model").exists()
    finished = json.loads((tmp_path / ".model.checkpoint" / "state.json").read_text())["epoch"]
    assert 3 <= finished < 40

    resumed = runner.invoke(app, [*args, "-m", str(tmp_path / "model"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert not (tmp_path / ".model.checkpoint").exists()  # removed once the model is saved
    for a, b in zip(_weights(tmp_path / "reference"), _weights(tmp_path / "model"), strict=True):
        np.testing.assert_array_equal(a, b)
    ours = read_metadata(tmp_path / "model")["training"]
    theirs = read_metadata(tmp_path / "reference")["training"]
    assert ours["epochs_run"] == theirs["epochs_run"] == 40 and ours["history"] == theirs["history"]


def test_resume_refuses_a_different_run(data_dir, tmp_path):
    nothing = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "--resume"])
    assert nothing.exit_code == 1 and "no checkpoint to resume from" in nothing.stderr
    proc = _start(["train", str(data_dir / "train.csv"), *LONG, "-m", "model"], tmp_path)
    _wait_for_epoch(tmp_path / ".model.checkpoint", 1, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    other = runner.invoke(app, ["train", str(data_dir / "train.csv"), *LONG, "--units", "5", "-m", "model", "--resume"])
    assert other.exit_code == 1 and "from a run with other data or options" in other.stderr


def test_sigterm_during_training_keeps_the_previous_model(trained_model, data_dir, tmp_path):
    import shutil

    shutil.copytree(trained_model, tmp_path / "model")
    before = read_metadata(tmp_path / "model")["id"]
    proc = _start(["train", str(data_dir / "train.csv"), *LONG, "-m", "model"], tmp_path)
    _wait_for_epoch(tmp_path / ".model.checkpoint", 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "the model at model is unchanged" in stderr
    meta = read_metadata(tmp_path / "model")
    assert meta["id"] == before
    verify_files(tmp_path / "model", meta)


def _kill_round(workdir: Path, data: Path, old_id: str, delay: float) -> str:
    """Start a train that replaces `workdir/model`, kill -9 it after `delay` s; say what was left."""
    proc = _start(["train", str(data), *TINY, "--epochs", "2", "-m", "model"], workdir)
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    meta = read_metadata(workdir / "model")  # raises if the directory is not a complete model
    verify_files(workdir / "model", meta)
    return "old" if meta["id"] == old_id else "new"


def test_kill_9_at_random_points_leaves_the_old_or_the_new_model(trained_model, data_dir, tmp_path):
    import shutil

    rng = random.Random(int(os.environ.get("KILL_SEED", "0")) or None)
    workers = [tmp_path / "a", tmp_path / "b"]
    for w in workers:
        w.mkdir()
        shutil.copytree(trained_model, w / "model")
    started = time.monotonic()
    timed = _start(["train", str(data_dir / "train.csv"), *TINY, "--epochs", "2", "-m", "timed"], tmp_path)
    timed.communicate()
    full_run = time.monotonic() - started
    old_id = read_metadata(trained_model)["id"]
    outcomes = []

    def rounds(workdir: Path) -> None:
        for _ in range(10):
            old = read_metadata(workdir / "model")["id"]
            # Kill times cover the whole run, from start-up through training to the swap.
            outcome = _kill_round(workdir, data_dir / "train.csv", old, rng.uniform(0.2, full_run * 1.1))
            outcomes.append(outcome)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(rounds, workers))
    assert len(outcomes) == 20
    assert old_id  # every round above checked a complete old or new model
    for w in workers:  # leftovers of killed runs are hidden siblings, never the model itself
        assert all(p.name.startswith(".") for p in w.iterdir() if p.name != "model")
    # and the next train clears the staging directories of dead processes
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "-m", str(workers[0] / "model")])
    assert result.exit_code == 0, result.output
    assert not [p for p in workers[0].iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("engine", ["numpy", "tensorflow"])
def test_readers_see_a_complete_model_while_it_is_replaced(trained_model, data_dir, tmp_path, engine):
    import shutil
    import threading

    from lstm_cli.atomic import install
    from lstm_cli.predict import Predictor

    other = tmp_path / "other"
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "--seed", "99", "-m", str(other)])
    assert result.exit_code == 0, result.output
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    text = ["good great lovely bad"]
    expected = {
        read_metadata(d)["id"]: Predictor(d, engine=engine).probabilities(text)[0] for d in (trained_model, other)
    }
    stop, seen, errors = threading.Event(), [], []

    def swap() -> None:  # what `train` does when it saves: swap a complete new directory in
        versions = [trained_model, other]
        i = 0
        while not stop.is_set():
            staging = tmp_path / f".model.tmp-{i}"
            shutil.copytree(versions[i % 2], staging)
            install(staging, model)
            i += 1
            stop.wait(0.4)  # far more often than real trains finish, slower than one load

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for _ in range(8):
            if engine == "numpy":
                time.sleep(0.25)  # it loads in milliseconds: spread its loads over several swaps
            try:
                predictor = Predictor(model, engine=engine)
            except Exception as e:  # noqa: BLE001 - any failure to load is what this test is about
                errors.append(repr(e))
                continue
            seen.append(predictor.metadata["id"])
            assert predictor.engine == engine
            np.testing.assert_allclose(predictor.probabilities(text)[0], expected[seen[-1]], atol=1e-6)
    finally:
        stop.set()
        swapper.join()
    assert errors == [] and len(seen) == 8 and len(set(seen)) == 2
