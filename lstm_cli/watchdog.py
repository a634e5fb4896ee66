"""A bound on every wait for the other workers of a cluster.

A worker that died or never started can leave TensorFlow blocked inside a call that holds the GIL (the
cluster's start-up does), where no Python thread, signal handler or exception can act. So a cluster worker
runs as a child of a small supervisor process that does not import TensorFlow: before each wait on its
peers the child says "arm SECONDS WHAT" on a pipe, after it "disarm". If a wait outlasts its deadline, the
supervisor ends the child, writes one line naming what was waited for, and exits with status 1. Only
finished epochs are ever saved (atomically), so `--resume` continues from the last checkpoint."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

GRACE = 10.0  # seconds a child has to stop after SIGTERM before it is killed
MAX_TIMEOUT = 7 * 24 * 3600.0  # the longest --worker-timeout: a week
MAX_WAIT = 3600.0  # select() waits at most this long at a time (its timeout has a ceiling of its own)
ENV = "LSTM_CLI_WATCHDOG_FD"  # set in the supervised child: where it reports its waits


def supervised() -> bool:
    """Whether this process is a supervised worker (or needs no supervisor)."""
    return ENV in os.environ


def supervise(argv: list[str], *, hint: str) -> int:
    """Run `python -m lstm_cli ARGV` as a supervised child; returns the exit status to end with.

    Whatever happens here (an error, a signal's exception), the child is ended before this returns."""
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-m", "lstm_cli", *argv], pass_fds=(write_end,), env={**os.environ, ENV: str(write_end)},
        preexec_fn=dying_with(os.getpid()),
    )  # fmt: skip
    os.close(write_end)
    try:
        return _watch(child, read_end, hint)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def dying_with(parent: int) -> Callable[[], None] | None:
    """What a child runs before its program: Linux kills it if process PARENT dies, even by SIGKILL (elsewhere
    the `finally` of supervise is what ends it).

    The child exists from the fork, before this runs: if PARENT died in between, the signal is armed too late
    to fire, so the child then ends itself. ctypes is loaded here, in the parent: little should run between
    fork and exec."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return arm


def _watch(child: subprocess.Popen, read_end: int, hint: str) -> int:
    # Ctrl-C reaches the child through the terminal's process group; `kill` of the supervisor is passed
    # on, and a child blocked where it cannot act on it is ended GRACE seconds later.
    terminating: list[float] = []

    def terminate(*_):
        child.send_signal(signal.SIGTERM)
        terminating.append(time.monotonic() + GRACE)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    deadline, what, seconds, pending = None, "", 0.0, b""
    with os.fdopen(read_end, "rb", buffering=0) as reports:
        while True:
            ends = [t for t in (deadline, *terminating[:1]) if t is not None]
            timeout = None if not ends else min(max(0.0, min(ends) - time.monotonic()), MAX_WAIT)
            ready, _, _ = select.select([reports], [], [], timeout)
            now = time.monotonic()
            if not ready and terminating and now >= terminating[0]:
                child.kill()
                child.wait()
                sys.stderr.write(
                    "Error: interrupted while waiting for the other workers; nothing was saved since "
                    "the last finished epoch, which --resume continues from\n"
                )
                return 128 + signal.SIGTERM
            if not ready and deadline is not None and now >= deadline:  # the child still waits on its peers
                child.kill()
                child.wait()
                sys.stderr.write(f"Error: {what} for {seconds:g} s; {hint}\n")
                return 1
            if not ready:
                continue
            chunk = reports.read(65536)
            if not chunk:  # the child exited (or closed its end): its status is ours
                return _status(child.wait())
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                command, _, rest = line.decode("utf-8", "replace").partition(" ")
                if command == "arm":
                    limit, _, what = rest.partition(" ")
                    seconds = _seconds(limit)
                    deadline = now + seconds
                elif command == "disarm":
                    deadline = None


def _seconds(text: str) -> float:
    """A wait's limit as the child reported it, within (0, MAX_TIMEOUT] whatever the text."""
    try:
        seconds = float(text)
    except ValueError:
        return MAX_TIMEOUT
    return min(seconds, MAX_TIMEOUT) if seconds > 0 else MAX_TIMEOUT  # nan > 0 is False


def _status(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


class Watchdog:
    """The child's side: `with watchdog.waiting(what):` around each wait on the other workers."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._fd = int(os.environ[ENV])

    @contextlib.contextmanager
    def waiting(self, what: str):
        os.write(self._fd, f"arm {self.timeout!r} {what.replace(chr(10), ' ')}\n".encode())
        try:
            yield
        finally:
            os.write(self._fd, b"disarm\n")


class Unbounded:
    """The same interface where nothing waits on a peer (single-process runs)."""

    def waiting(self, what: str):
        return contextlib.nullcontext()


def for_this_process(timeout: float) -> Watchdog | Unbounded:
    return Watchdog(timeout) if supervised() else Unbounded()
