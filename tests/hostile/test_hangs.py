"""Nothing lstm-cli reads of its own can make it wait forever, and no supervisor outlives its worker's
watch (issue 32, class 3). A FIFO in place of a file of a model directory, of a --model target or of a
checkpoint is refused at once (opened non-blocking, then checked to be a regular file). Each command runs
in a subprocess with a timeout, or under an alarm, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _ops import assert_one_error, tree_digest
from conftest import TINY
from typer.testing import CliRunner

from lstm_cli import watchdog
from lstm_cli.cli import app

LSTM_CLI = str(Path(sys.executable).with_name("lstm-cli"))
QUICK = 20  # seconds; these commands take about one (no TensorFlow)
runner = CliRunner()


def run(args: list[str], cwd: Path, timeout: float = QUICK) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([LSTM_CLI, *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"lstm-cli {' '.join(args)}: still running after {timeout} s (waiting on a FIFO?)")


def with_fifo(source: Path, tmp_path: Path, name: str) -> Path:
    model = tmp_path / "model"
    shutil.copytree(source, model)
    (model / name).unlink()
    os.mkfifo(model / name)
    return model


@pytest.mark.parametrize("name", ["metadata.json", "engine.json", "variables/variables.index",
                                  "variables/variables.data-00000-of-00001", "vocabulary.json"])  # fmt: skip
@pytest.mark.parametrize("command", [["predict", "good"], ["info"]])
def test_a_fifo_in_a_model_directory_is_refused_not_waited_on(command, name, trained_model, tmp_path):
    model = with_fifo(trained_model, tmp_path, name)
    result = run([*command, "-m", str(model)], tmp_path)
    if result.returncode == 0:  # info reads only metadata.json
        assert command == ["info"] and name != "metadata.json"
        return
    line = assert_one_error(1, result.returncode, result.stderr, result.stdout)
    assert name in line


@pytest.mark.slow  # two TensorFlow start-ups
@pytest.mark.parametrize("name", ["saved_model.pb", "variables/variables.index"])
def test_a_fifo_among_the_saved_model_files_is_refused_before_tensorflow_reads_it(name, trained_model, tmp_path):
    model = with_fifo(trained_model, tmp_path, name)
    result = run(["predict", "good", "--engine", "tensorflow", "-m", str(model)], tmp_path, timeout=90)
    assert name.split("/")[-1] in assert_one_error(1, result.returncode, result.stderr, result.stdout)


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_fifo_as_the_targets_metadata_is_refused(command, data_dir, tmp_path):
    target = tmp_path / "project"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    os.mkfifo(target / "metadata.json")
    before = tree_digest(tmp_path)
    result = run([command, str(data_dir / "train.csv"), "-m", str(target)], tmp_path)
    assert_one_error(2, result.returncode, result.stderr, result.stdout)
    assert tree_digest(tmp_path) == before


def test_a_fifo_as_the_checkpoint_marker_is_refused(data_dir, tmp_path):
    (tmp_path / "ckpt").mkdir()
    os.mkfifo(tmp_path / "ckpt" / "lstm-cli-checkpoint.json")
    result = run(["train", str(data_dir / "train.csv"), "--checkpoint-dir", "ckpt", "-m", "m"], tmp_path)
    assert "--checkpoint-dir" in assert_one_error(2, result.returncode, result.stderr, result.stdout)


class _Alarm(Exception):
    pass


@pytest.fixture
def alarm():
    """Fail a test whose Python code blocks (opening a FIFO) for more than `seconds`."""

    def ring(*_):
        raise _Alarm

    previous = signal.signal(signal.SIGALRM, ring)
    yield lambda seconds: signal.alarm(seconds)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_as_a_checkpoints_weights_is_refused_on_resume(data_dir, tmp_path, monkeypatch, alarm):
    from lstm_cli import owned

    monkeypatch.setattr(owned, "remove_checkpoint_dir", lambda directory: None)  # keep the finished run's
    args = ["train", str(data_dir / "train.csv"), *TINY, "--epochs", "1", "-m", "m", "--checkpoint-dir", "ckpt"]
    assert runner.invoke(app, args).exit_code == 0
    (tmp_path / "ckpt" / "latest.npz").unlink()
    os.mkfifo(tmp_path / "ckpt" / "latest.npz")
    alarm(60)
    result = runner.invoke(app, [*args, "--resume"])
    assert not isinstance(result.exception, _Alarm), "waited on the FIFO"
    assert "latest.npz" in assert_one_error(1, result.exit_code, result.stderr, result.stdout)


def test_the_supervisor_ends_its_worker_whatever_ends_it(monkeypatch):
    """An error inside the supervisor's loop (here select itself) still ends the worker before it returns."""
    from lstm_cli import watchdog

    started, real_popen = [], subprocess.Popen

    def popen(args, **kwargs):
        child = real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)
        started.append(child)
        return child

    def broken_select(*args):
        raise OverflowError("timeout is too large")

    monkeypatch.setattr(watchdog.subprocess, "Popen", popen)
    monkeypatch.setattr(watchdog.select, "select", broken_select)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(OverflowError):
            watchdog.supervise(["train", "x.csv"], hint="")
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert started and started[0].poll() is not None


@pytest.mark.parametrize("when", ["at_fork", "after_exec"])
def test_a_killed_supervisor_takes_its_worker_with_it(tmp_path, when):
    """kill -9 of the supervisor (nothing of it runs) ends the worker too: Linux's parent-death signal once the
    worker runs its program, the worker's own check when the supervisor died before the signal was armed."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    script = (
        f"import sys; from lstm_cli import watchdog; sys.executable = {str(fake)!r}; watchdog.supervise([], hint='')"
    )
    supervisor = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL)
    children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
    deadline = time.monotonic() + QUICK
    while not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.001)  # the child is listed from its fork on: killing at once hits the time before it is armed
    (worker,) = map(int, children.read_text().split())
    if when == "after_exec":
        while b"sleep" not in Path(f"/proc/{worker}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
    supervisor.kill()
    supervisor.wait()
    while not _ended(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _ended(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"worker {worker} outlived its supervisor ({when})")


def test_a_worker_whose_supervisor_died_before_it_was_armed_ends_itself():
    not_my_parent = 1 if os.getpid() != 1 else 2
    child = subprocess.Popen(["sleep", "60"], preexec_fn=watchdog.dying_with(not_my_parent))
    try:
        assert child.wait(timeout=QUICK) == 1
    finally:
        child.kill()


def _ended(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
