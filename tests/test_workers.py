"""`predict` shares long streams out over forked worker processes (lstm_cli.engine.workers): the same lines in
the same order as one process gives, small inputs start no worker, and no worker outlives its parent or
goes missing unnoticed. Forking happens in subprocesses, never in pytest's own (TensorFlow's threads)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lstm_cli.predict import WORKER_CHARS, WORKER_ROWS, Predictor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes fork on Linux only")

# Runs `lstm-cli ARGS` with two workers wanted whatever this machine's cores, and reports on stderr the pids
# of the workers started.
PREDICT = textwrap.dedent("""
    import json, os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as on a terminal, even if started with it ignored
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import lstm_cli.engine
    lstm_cli.engine.THREADS = 2
    from lstm_cli.engine import workers
    if os.environ.get("PLANT_FAILURE"):  # a failure inside the workers (they are forks: they inherit this)
        run = lstm_cli.engine.Engine.probabilities
        def failing(self, texts):
            if any("PLANTED" in t for t in texts):
                raise ValueError("planted failure")
            return run(self, texts)
        lstm_cli.engine.Engine.probabilities = failing
    started = []
    class Counted(workers.Workers):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.extend(self._pids)
            print("WORKERS", json.dumps(started), file=sys.stderr, flush=True)
    workers.Workers = Counted
    from lstm_cli.cli import app
    try:
        app(sys.argv[1:])
    except SystemExit as e:
        code = e.code
    print("STARTED", json.dumps(started), file=sys.stderr)
    sys.exit(code)
""")


def _texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["good", "great", "bad", "awful", "fine", "meh", "Café", "ÉTÉ", "x\u00a0y", "🙂", "!!", "--", "ok."]
    texts = []
    for i in range(count):
        length = rng.choice([0, 1, 2, 5, 20, 300])  # empty lines and long ones, mixed
        texts.append(" ".join(rng.choice(words) for _ in range(length)) + f" {i}" * rng.randint(0, 1))
    return texts


def _predict(model: Path, stdin: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", PREDICT, "predict", "-m", str(model), "-", "--format", "json",
               "--all-probabilities", *args]  # fmt: skip
    return subprocess.run(command, input=stdin.encode(), capture_output=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


def _started(stderr: bytes) -> list[int]:
    line = [line for line in stderr.decode().splitlines() if line.startswith("STARTED ")]
    assert line, stderr.decode()
    return json.loads(line[-1].removeprefix("STARTED "))


def test_a_long_stream_runs_on_two_workers_and_matches_one_process_line_for_line(trained_model):
    texts = _texts(3 * WORKER_ROWS + 17, seed=1)
    result = _predict(trained_model, "\n".join(texts) + "\n", "--batch-size", str(WORKER_ROWS + 100))
    assert result.returncode == 0, result.stderr.decode()
    assert len(_started(result.stderr)) == 2  # started once, for the first big batch, and kept
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["text"] for r in records] == texts  # every line, in order
    expected = Predictor(trained_model, engine="numpy").probabilities(texts)
    labels = Predictor(trained_model, engine="numpy").labels
    got = np.array([[r["probabilities"][label] for label in labels] for r in records])
    assert np.abs(got - expected).max() <= 1e-4  # the output rounds to 4 decimals


@pytest.mark.parametrize(
    ("rows", "chars", "workers"),
    [
        (WORKER_ROWS - 1, 20, 0),  # a short file: no worker
        (40, WORKER_CHARS // 40 + 50, 2),  # a few long documents: as much work as many lines
    ],
)
def test_workers_start_only_for_enough_work(trained_model, rows, chars, workers):
    rng = random.Random(rows)
    texts = [" ".join(rng.choice(["good", "bad", "fine"]) for _ in range(chars // 3))[:chars] for _ in range(rows)]
    result = _predict(trained_model, "\n".join(texts) + "\n")
    assert result.returncode == 0, result.stderr.decode()
    assert len(_started(result.stderr)) == workers
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["text"] for r in records] == texts


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], seconds: float = 20) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _started_stream(model: Path) -> tuple[subprocess.Popen, list[int]]:
    """A predict reading an open stdin, after its first batch went through two workers."""
    command = [sys.executable, "-c", PREDICT, "predict", "-m", str(model), "-", "--batch-size", str(WORKER_ROWS)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    process.stdin.write(("\n".join(_texts(WORKER_ROWS, seed=3)) + "\n").encode())
    process.stdin.flush()
    workers = json.loads(process.stderr.readline().decode().removeprefix("WORKERS "))
    for _ in range(WORKER_ROWS):  # the first batch's answers arrive while stdin stays open
        assert process.stdout.readline()
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    return process, workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_ctrl_c_ends_predict_and_its_workers(trained_model):
    process, workers = _started_stream(trained_model)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert [line for line in stderr.decode().splitlines() if line.startswith("Error")] == ["Error: interrupted"]
    assert "Traceback" not in stderr.decode()
    assert _wait_gone(workers) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_workers_end_when_predict_is_killed(trained_model):
    process, workers = _started_stream(trained_model)
    process.kill()  # SIGKILL: no handler runs; the workers see their pipes close
    process.wait(timeout=60)
    assert _wait_gone(workers) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_killed_worker_fails_predict_with_one_line_not_a_hang(trained_model):
    process, workers = _started_stream(trained_model)
    os.kill(workers[0], signal.SIGKILL)
    assert _wait_gone(workers[:1]) == []
    stdout, stderr = process.communicate(("\n".join(_texts(WORKER_ROWS, seed=4)) + "\n").encode(), timeout=60)
    assert process.returncode == 1
    errors = [line for line in stderr.decode().splitlines() if line.startswith("Error")]
    assert errors == ["Error: a prediction worker stopped (killed by SIGKILL); run again, or with --batch-size 1"]
    assert "Traceback" not in stderr.decode()
    assert stdout == b""  # nothing of the batch the dead worker had a share of
    assert _wait_gone(workers) == []


def test_a_failure_inside_a_worker_is_one_error_line(trained_model):
    texts = _texts(WORKER_ROWS, seed=5)
    stdin = "\n".join(texts + texts[:-1] + ["PLANTED"]) + "\n"  # the second batch, in the workers, fails
    result = _predict(trained_model, stdin, "--batch-size", str(WORKER_ROWS), env={"PLANT_FAILURE": "1"})
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert [line for line in stderr.splitlines() if line.startswith("Error")] == [
        "Error: a prediction worker failed: ValueError: planted failure"
    ]
    assert "Traceback" not in stderr
    assert len(result.stdout.decode().splitlines()) == WORKER_ROWS  # the first batch, whole; none of the second
