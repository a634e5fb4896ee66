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


def _default_sigint() -> None:
    # A job started in the background of a non-interactive shell inherits SIGINT ignored, and lstm-cli
    # respects that; these tests are about Ctrl-C in a terminal, where SIGINT is not ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [LSTM_CLI, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_default_sigint,
    )  # fmt: skip


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
    from lstm_cli.artifact import network_weights

    return list(network_weights(model_dir).values())


def test_interrupted_training_resumes_to_the_same_weights(data_dir, tmp_path):
    # Epochs of 7 steps, a third of a pass: the resumed run restarts mid-pass, in the same shuffled order.
    args = ["train", str(data_dir / "train.csv"), *LONG, "--steps-per-epoch", "7"]
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
    # Weight averaging's epochs came back from the checkpoint: its means validated as in one uninterrupted run.
    assert theirs["averaging_val_loss"] and ours["averaging_val_loss"] == theirs["averaging_val_loss"]
    assert ours["averaged_window"] == theirs["averaged_window"]


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


def test_checkpoint_dir_that_lstm_cli_did_not_make_is_refused_untouched(data_dir, tmp_path):
    mine = tmp_path / "mynotes"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (tmp_path / "plain.txt").write_text("a file")
    for given in ("mynotes", ".", "plain.txt"):
        result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *LONG, "--checkpoint-dir", given])
        assert result.exit_code == 2, (given, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "--checkpoint-dir" in lines[0], lines
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert (mine / "notes.txt").read_text() == "my notes" and (tmp_path / "plain.txt").read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mynotes", "plain.txt"]  # no model: refused before work


def test_checkpoint_dir_and_resume_after_a_failed_save(data_dir, tmp_path, monkeypatch):
    """Saving fails (here: the exported graph fails the op check predict runs, as a bug in lstm-cli would
    make it), so nothing is installed; --resume then saves the finished run without training again."""
    from lstm_cli import graphcheck
    from lstm_cli.owned import CHECKPOINT_MARKER

    args = ["train", str(data_dir / "train.csv"), *TINY[:-1], "-m", "model", "--checkpoint-dir", "ck"]
    with monkeypatch.context() as patched:
        patched.setattr(graphcheck, "ALLOWED_OPS", graphcheck.ALLOWED_OPS - {"Softmax"})
        failed = runner.invoke(app, args)
    assert failed.exit_code == 1 and failed.stdout == "", failed.output
    message = failed.stderr.strip().splitlines()[-1]
    assert "fails the check predict runs before loading" in message and "Softmax" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no model, no staging left; the checkpoint stays
    assert {CHECKPOINT_MARKER, "state.json", "latest.npz", "best_weights.npz"} <= {
        p.name for p in (tmp_path / "ck").iterdir()
    }
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    with np.load(tmp_path / "ck" / "best_weights.npz") as saved:
        best = [saved[f"arr_{i}"] for i in range(len(saved.files))]

    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming after epoch {state['epoch']}" in resumed.stderr
    assert "epoch 1/" not in resumed.stderr  # nothing is trained again: the finished run is only saved
    for a, b in zip(best, _weights(tmp_path / "model"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert read_metadata(tmp_path / "model")["training"]["history"] == state["history"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the checkpoint lstm-cli made is removed


def test_sigterm_after_the_new_model_is_installed_says_so(trained_model, data_dir, tmp_path, monkeypatch):
    """The message is decided when the signal arrives. Training is patched out (CLI wiring only): `save`
    installs another complete model, then SIGTERM arrives while it is finishing up."""
    import shutil
    from types import SimpleNamespace

    from lstm_cli import artifact, atomic
    from lstm_cli import train as core

    shutil.copytree(trained_model, tmp_path / "model")
    before = read_metadata(tmp_path / "model")["id"]

    def save_then_sigterm(result, target, **kwargs):
        staging = tmp_path / ".model.tmp-new"
        shutil.copytree(trained_model, staging)
        meta = json.loads((staging / "metadata.json").read_text())
        (staging / "metadata.json").write_text(json.dumps({**meta, "id": "new"}))
        atomic.install(staging, target)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(core, "train", lambda *args, **kwargs: SimpleNamespace(warnings=[], is_chief=True))
    monkeypatch.setattr(artifact, "save", save_then_sigterm)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "-m", "model"])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert result.exit_code == 130, result.output
    assert result.stderr == "Error: interrupted; the new model was already saved at model and is complete\n"
    assert read_metadata(tmp_path / "model")["id"] == "new" != before
    # before the new model is in place, the same interruption says the old one is unchanged
    monkeypatch.setattr(artifact, "save", lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGTERM))
    try:
        result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "-m", "model"])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert result.exit_code == 130 and "the model at model is unchanged" in result.stderr


# Each engine reads the model through checked readers: the data files (vocabulary, the numpy engine's) through
# read_model, the SavedModel's through verify_files.
@pytest.mark.parametrize(("engine", "reader"), [("auto", "read_model"), ("tensorflow", "verify_files")])
def test_a_file_vanishing_while_the_model_is_read_is_retried(trained_model, tmp_path, monkeypatch, engine, reader):
    import shutil

    from lstm_cli import predict

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    real = getattr(predict, reader)
    calls = []

    def vanish_once(root, metadata, *args, **kwargs):
        calls.append(root)
        if len(calls) == 1:  # as if `train` swapped a new model in and removed this one mid-read
            shutil.copytree(model, tmp_path / "new")
            shutil.rmtree(model)
            (tmp_path / "new").rename(model)
            raise FileNotFoundError(2, "No such file or directory")
        return real(root, metadata, *args, **kwargs)

    monkeypatch.setattr(predict, reader, vanish_once)
    loaded = predict.Predictor(model, engine=engine)
    assert len(calls) >= 2 and loaded.labels == ["meh", "neg", "pos"]
    # without a swap, the same error is one line, not a traceback
    calls.clear()
    monkeypatch.setattr(predict, reader, lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError(2, "gone")))
    result = runner.invoke(app, ["predict", "-m", str(model), "--engine", engine, "good"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"Error: {model}: could not read the model (gone)"]


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


def test_a_sigterm_whose_keyboardinterrupt_was_lost_still_stops_training(
    trained_model, data_dir, tmp_path, monkeypatch
):
    """A signal handler's KeyboardInterrupt raised inside a __del__ is printed and ignored by Python. Its
    handler also sets a flag, which training checks between steps: it still stops, and the old model stays."""
    import shutil

    from lstm_cli import render
    from lstm_cli.cli import _util

    shutil.copytree(trained_model, tmp_path / "model")
    before = read_metadata(tmp_path / "model")["id"]
    epoch_line = render.epoch_line

    def lost_interrupt(report):  # after epoch 1: the handler ran, its exception went nowhere
        _util._held["signalled"] = True
        return epoch_line(report)

    monkeypatch.setattr(render, "epoch_line", lost_interrupt)
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *LONG, "-m", str(tmp_path / "model")])
    assert result.exit_code == 130 and "is unchanged" in result.stderr
    assert [line.split()[:2] for line in result.stderr.splitlines() if line.startswith("epoch ")] == [["epoch", "1/40"]]
    assert read_metadata(tmp_path / "model")["id"] == before
    _util.catch_interrupts()  # as the next train in this process starts: the flag goes down
    assert not _util.interrupt_signalled()


def _kill_round(workdir: Path, data: Path, delay: float) -> str:
    """Start a train that replaces `workdir/model`, kill -9 it after `delay` s; say what was left."""
    old = read_metadata(workdir / "model")["id"]
    proc = _start(["train", str(data), *TINY, "--epochs", "2", "-m", "model"], workdir)
    time.sleep(delay)
    proc.kill()
    proc.communicate()
    return _outcome(workdir / "model", old)


def _outcome(model: Path, old_id: str) -> str:
    meta = read_metadata(model)  # raises if the directory is not a complete model
    verify_files(model, meta)
    return "old" if meta["id"] == old_id else "new"


# Run in a subprocess: `atomic.install(staging, target)`, killed with SIGKILL inside the swap: between the
# two renames of the fallback (where renameat2 is missing), or just after renameat2's exchange.
KILL_IN_SWAP = """
import os, signal, sys
from pathlib import Path
from lstm_cli import atomic
where, staging, target = sys.argv[1:]
rename, exchange = os.rename, atomic._exchange
def rename_then_die(src, dst):
    rename(src, dst)
    if ".old-" in os.path.basename(dst):  # the first of the two renames: nothing is at the target now
        os.kill(os.getpid(), signal.SIGKILL)
def exchange_then_die(a, b):
    if exchange(a, b):  # the new directory is at the target, the old one at the staging path
        os.kill(os.getpid(), signal.SIGKILL)
    return False
if where == "fallback":
    atomic._exchange = lambda a, b: False
    os.rename = rename_then_die
else:
    atomic._exchange = exchange_then_die
atomic.install(Path(staging), Path(target))
"""


def _kill_inside_swap(model: Path, where: str) -> str:
    """Swap a copy of `model` with a new id in, kill -9 inside the swap; returns the new id."""
    import shutil

    # named as a staging directory of a process that no longer exists, as the kill leaves it
    staging = model.with_name(f".{model.name}.tmp-{2**22 + random.randrange(1000)}-{random.getrandbits(32):08x}")
    shutil.copytree(model, staging)
    meta = json.loads((staging / "metadata.json").read_text())
    meta["id"] = f"new-{random.random()}"
    (staging / "metadata.json").write_text(json.dumps(meta))
    args = [sys.executable, "-c", KILL_IN_SWAP, where, str(staging), str(model)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return meta["id"]


def test_kill_9_at_random_points_leaves_the_old_or_the_new_model(trained_model, data_dir, tmp_path, request):
    import shutil

    # The default run: one directory and the two kills placed for sure below; --slow: two directories side by
    # side, 8 random kills in each before the placed ones
    slow = request.config.getoption("--slow")
    random_kills = 8 if slow else 0

    rng = random.Random(int(os.environ.get("KILL_SEED", "1")))  # fixed: the same kill times every run
    workers = [tmp_path / "a", tmp_path / "b"] if slow else [tmp_path / "a"]
    for w in workers:
        w.mkdir()
        shutil.copytree(trained_model, w / "model")
    full_run = 0.0
    if random_kills:
        started = time.monotonic()
        timed = _start(["train", str(data_dir / "train.csv"), *TINY, "--epochs", "2", "-m", "timed"], tmp_path)
        timed.communicate()
        full_run = time.monotonic() - started
    outcomes = []

    def rounds(workdir: Path) -> None:
        for _ in range(random_kills):
            # Kill times cover the whole run, from start-up through training to the swap.
            outcomes.append(_kill_round(workdir, data_dir / "train.csv", rng.uniform(0.2, full_run * 1.1)))
        # and two kills placed for sure: during training (after the first checkpoint), and right after the
        # new model appears (the process is still running: removing the old one, printing the summary)
        old = read_metadata(workdir / "model")["id"]
        proc = _start(["train", str(data_dir / "train.csv"), *TINY, "--epochs", "2", "-m", "model"], workdir)
        _wait_for_epoch(workdir / ".model.checkpoint", 1, proc)
        proc.kill()
        proc.communicate()
        outcomes.append(_outcome(workdir / "model", old))
        proc = _start(["train", str(data_dir / "train.csv"), *TINY, "--epochs", "2", "-m", "model"], workdir)
        while read_metadata(workdir / "model")["id"] == old and proc.poll() is None:
            time.sleep(0.001)
        proc.kill()
        proc.communicate()
        outcomes.append(_outcome(workdir / "model", old))

    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(rounds, workers))
    assert len(outcomes) == len(workers) * (random_kills + 2) and set(outcomes) == {"old", "new"}, (
        outcomes
    )  # both outcomes happen
    for w in workers:  # leftovers of killed runs are hidden siblings, never the model itself
        assert all(p.name.startswith(".") for p in w.iterdir() if p.name != "model")

    # one kill inside the swap itself, just after renameat2 exchanged the directories: the new model
    new = _kill_inside_swap(workers[0] / "model", "exchange")
    assert read_metadata(workers[0] / "model")["id"] == new
    verify_files(workers[0] / "model", read_metadata(workers[0] / "model"))
    # and the next train clears the directories of dead processes
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "-m", str(workers[0] / "model")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in workers[0].iterdir()) == ["model"]


def test_a_kill_inside_the_fallback_swap_is_repaired_by_the_next_predict_info_or_train(
    trained_model, data_dir, tmp_path
):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    old = read_metadata(model)["id"]
    for command in (["predict", "--format", "json", "good"], ["evaluate", str(data_dir / "test.csv")], ["info"]):
        _kill_inside_swap(model, "fallback")
        # killed between the two renames: nothing at the target, the old model under a hidden name
        assert not model.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".model.old-")]
        result = runner.invoke(app, [*command, "-m", str(model)])
        assert result.exit_code == 0, result.output
        assert _outcome(model, old) == "old"  # put back by the reader
    _kill_inside_swap(model, "fallback")
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "--epochs", "1", "-m", str(model)])
    assert result.exit_code == 0, result.output
    assert _outcome(model, old) == "new"  # the old model was put back, then replaced by the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # and the dead staging directory removed


def test_the_fallback_swap_replaces_the_model_when_not_interrupted(trained_model, tmp_path, monkeypatch):
    import shutil

    from lstm_cli import atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # as where renameat2 is missing
    shutil.copytree(trained_model, tmp_path / "model")
    (tmp_path / "model" / "marker").write_text("old")
    staging = tmp_path / ".model.tmp-1"
    staging.mkdir()
    (staging / "marker").write_text("new")
    atomic.install(staging, tmp_path / "model")
    assert (tmp_path / "model" / "marker").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


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
    started = time.monotonic()
    Predictor(trained_model, engine=engine)
    # Swaps far more often than real trains finish, yet slower than one load on this machine (a TensorFlow
    # load of the pooled network can take longer than the 0.4 s that suits the numpy engine).
    interval = max(0.4, 3 * (time.monotonic() - started))
    stop, seen, errors = threading.Event(), [], []

    def swap() -> None:  # what `train` does when it saves: swap a complete new directory in
        versions = [trained_model, other]
        i = 0
        while not stop.is_set():
            staging = tmp_path / f".model.tmp-{i}"
            shutil.copytree(versions[i % 2], staging)
            install(staging, model)
            i += 1
            stop.wait(interval)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for _ in range(8):
            # Spread the loads over several swaps whatever one load costs: without a pause, eight fast loads
            # could all fall between two swaps when the load timed above happened to be slow.
            time.sleep(max(0.25, interval / 2))
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


class _Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, so the deletion stops where it is."""


def _die_after(monkeypatch, deletions: int) -> None:
    """Make os.unlink and os.rmdir (which shutil.rmtree uses too) die after `deletions` calls."""
    done = 0
    for name in ("unlink", "rmdir"):
        real = getattr(os, name)

        def deleting(*args, _real=real, **kwargs):
            nonlocal done
            if done >= deletions:
                raise _Killed
            done += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, deleting)


@pytest.mark.parametrize("kind", ["tmp", "old", "checkpoint"])
def test_a_kill_at_any_point_of_a_deletion_leaves_what_the_next_run_can_prove_is_its_own(
    trained_model, tmp_path, monkeypatch, kind
):
    """Removing a staging, retired or checkpoint directory deletes its marker last, so a process killed after
    any number of deletions leaves a directory the next run recognises and finishes removing (a plain rmtree
    could delete the marker first and strand the rest, which lstm-cli may then never touch)."""
    import shutil

    from lstm_cli import atomic, owned

    dead = 4_194_305  # above Linux's largest pid: no process has it
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    if kind == "checkpoint":
        victim = tmp_path / ".model.checkpoint"
        victim.mkdir()
        owned.write_checkpoint_marker(victim)
        for name in ("latest.npz", "best.npz", "state.json"):
            (victim / name).write_bytes(b"x" * 10)
        (victim / "cache").mkdir()
        (victim / "cache" / "tokens.npy").write_bytes(b"x")
    else:
        victim = tmp_path / (f".model.tmp-{dead}-0123abcd" if kind == "tmp" else f".model.old-{dead}")
        shutil.copytree(trained_model, victim)
    backup = tmp_path.parent / f"{tmp_path.name}-backup"
    shutil.copytree(victim, backup)
    entries = sum(1 for _ in victim.rglob("*")) + 1
    for deletions in range(entries):
        with monkeypatch.context() as patch:
            _die_after(patch, deletions)
            with pytest.raises(_Killed):
                owned.remove_marked_tree(victim)
        if kind == "checkpoint":
            owned.check_checkpoint_dir(victim)  # the next train still takes it as its own: no UsageError
            assert owned.is_checkpoint_dir(victim) or not any(victim.iterdir()), deletions
        else:
            atomic.remove_stale_staging(model)
            assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], deletions
        shutil.rmtree(victim, ignore_errors=True)
        shutil.copytree(backup, victim)
