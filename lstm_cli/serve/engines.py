"""Where the server's batches are predicted: forked copies of the numpy engine, one batch each at a time.

The server's own process parses HTTP and JSON, which holds Python's interpreter lock; the engine's
tokenizer and its many short numpy calls want it too. Forked engine processes (lstm_cli.engine.workers)
have no lock between them and the server: while one predicts a batch, the next batch forms and goes to
another. Without fork (not Linux, or TensorFlow serving the model) batches run in this process, one at a time."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from lstm_cli.data import clean_text


def default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


class EnginePool:
    """`slots`: functions texts -> probabilities, each safe to call from one thread at a time."""

    def __init__(self, predictor, processes: int):
        from lstm_cli.engine import _keep_freed_memory
        from lstm_cli.engine.workers import Workers, can_fork

        self._workers = []
        engine = predictor.backend.engine
        if engine is None or processes < 1 or not can_fork():
            self.slots: list[Callable[[list[str]], np.ndarray]] = [predictor.probabilities]
            self.where = "in the server's process"
            return
        # Each Workers is one forked process predicting whole batches on one thread; each batch allocates and
        # frees the same arrays, which glibc then keeps instead of unmapping (inherited by the workers).
        _keep_freed_memory()
        self._workers = [Workers(engine, 1) for _ in range(processes)]
        self.slots = [_cleaned(workers.probabilities) for workers in self._workers]
        self.where = f"{processes} engine process{'es' if processes > 1 else ''}"

    def close(self) -> None:
        for workers in self._workers:
            workers.close()
        self._workers = []


def _cleaned(run: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    def probabilities(texts: list[str]) -> np.ndarray:
        return run([clean_text(t) for t in texts])  # JSON can carry lone surrogates ("\ud800"); UTF-8 cannot

    return probabilities
