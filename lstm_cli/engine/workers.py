"""The engine shared out over forked copies of this process, for `predict`'s streams.

Threads share one interpreter lock, and the engine's many short numpy calls per time step wait for it (two
threads run the network 1.5-1.6x as fast as one on two cores); two processes, each tokenizing and running
half of every batch, have no lock between them. A worker is a fork of the process that loaded the model, so
the weights are shared pages and nothing is sent but texts (UTF-8) and probabilities (float32) over pipes:
no pickle. A worker ends when its request pipe closes: when the parent closes it, exits or is killed."""

from __future__ import annotations

import os
import signal
import struct
import sys
import threading
from collections.abc import Sequence

import numpy as np

from lstm_cli.errors import LstmCliError

_REQUEST = struct.Struct("<QQ")  # texts, bytes of UTF-8 that follow their character lengths
_RESPONSE = struct.Struct("<BQ")  # 0 and the bytes of the probabilities, or 1 and the bytes of an error message


def can_fork() -> bool:
    """Whether forking is safe here: Linux (on macOS, numpy's Accelerate BLAS runs on Grand Central Dispatch,
    which a forked child cannot use; Python's multiprocessing spawns there for the same reason), and no thread
    or TensorFlow runtime in this process whose locks a child could inherit held."""
    return sys.platform.startswith("linux") and threading.active_count() == 1 and "tensorflow" not in sys.modules


class Workers:
    """`engine.probabilities` on `count` forked processes: each batch split in interleaved shares (rows sorted
    by length are dealt out alternately, so each share has the same mix of lengths), results back in order."""

    def __init__(self, engine, count: int):
        self._pids: list[int | None] = []  # None once reaped
        self._pipes: list[tuple[int, int]] = []  # (request write end, response read end), the parent's side
        engine.threads = 1  # each worker runs its share on one thread
        for _ in range(count):
            requests, responses = os.pipe(), os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker: never returns into the parent's code
                code = 1
                try:
                    for fd in (requests[1], responses[0], *(fd for pair in self._pipes for fd in pair)):
                        os.close(fd)
                    code = _serve(engine, requests[0], responses[1])
                finally:
                    os._exit(code)
            os.close(requests[0])
            os.close(responses[1])
            self._pids.append(pid)
            self._pipes.append((requests[1], responses[0]))

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        lengths = np.fromiter((len(t) for t in texts), np.int64, len(texts))
        order = np.argsort(lengths, kind="stable")
        # As many shares as texts at most: one long text is one worker's whole batch, the other has none.
        shares = [order[k :: len(self._pipes)] for k in range(min(len(self._pipes), len(texts)))]
        pipes = self._pipes[: len(shares)]
        # Every request is written before any response is read: a worker reads its whole request before it
        # computes, so neither side waits on the other with a full pipe.
        for k, ((request, _), share) in enumerate(zip(pipes, shares, strict=True)):
            payload = "".join(texts[i] for i in share).encode("utf-8")
            try:
                _write(request, _REQUEST.pack(len(share), len(payload)) + lengths[share].tobytes() + payload)
            except BrokenPipeError:  # not stdout's: this worker is gone
                raise self._stopped(k) from None
        result = None
        for k, ((_, response), share) in enumerate(zip(pipes, shares, strict=True)):
            header = _read(response, _RESPONSE.size)
            if header is None:
                raise self._stopped(k)
            status, size = _RESPONSE.unpack(header)
            body = _read(response, size)
            if body is None:
                raise self._stopped(k)
            if status:
                raise LstmCliError(f"a prediction worker failed: {body.decode('utf-8', 'replace')}")
            rows = np.frombuffer(body, np.float32).reshape(len(share), -1)
            if result is None:
                result = np.empty((len(texts), rows.shape[1]), np.float32)
            result[share] = rows
        return result

    def _stopped(self, k: int) -> LstmCliError:
        pid, status = 0, 0
        if self._pids[k] is not None:
            try:
                pid, status = os.waitpid(self._pids[k], 0)  # its pipe is closed: it has ended, or is ending
            except ChildProcessError:
                pass
            self._pids[k] = None  # reaped: its number may be another process's from now on
        if pid and os.WIFSIGNALED(status):
            how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exit code {os.WEXITSTATUS(status)}" if pid else "it closed its pipe"
        return LstmCliError(f"a prediction worker stopped ({how}); run again, or with --batch-size 1")

    def close(self) -> None:
        """End the workers and wait for them. An idle worker ends as its pipe closes; one still computing (the
        parent was interrupted mid-batch) is stopped with SIGTERM rather than waited for. Only unreaped
        children of this process get a signal: their numbers cannot belong to anyone else yet."""
        for request, response in self._pipes:
            os.close(request)
            os.close(response)
        self._pipes = []
        for pid in self._pids:
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._pids = []


def _serve(engine, requests: int, responses: int) -> int:
    """A worker's loop: a request, its probabilities, until the request pipe closes."""
    # Ctrl-C reaches the whole process group; the parent handles it, and its exit closes our pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while (header := _read(requests, _REQUEST.size)) is not None:
        count, size = _REQUEST.unpack(header)
        lengths, payload = _read(requests, 8 * count), _read(requests, size)
        if lengths is None or payload is None:
            return 1
        text = payload.decode("utf-8")
        ends = np.cumsum(np.frombuffer(lengths, np.int64)).tolist()
        texts = [text[start:end] for start, end in zip([0, *ends][:-1], ends, strict=True)]  # none: an empty share
        try:
            body, status = np.ascontiguousarray(engine.probabilities(texts), np.float32).tobytes(), 0
        except Exception as e:  # said to the parent, which fails with it (a worker has no terminal of its own)
            body, status = f"{type(e).__name__}: {e}".encode(), 1
        try:
            _write(responses, _RESPONSE.pack(status, len(body)) + body)
        except BrokenPipeError:  # the parent is gone
            return 0
    return 0


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read(fd: int, size: int) -> bytes | None:
    """Exactly `size` bytes, or None if the pipe closes first."""
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
