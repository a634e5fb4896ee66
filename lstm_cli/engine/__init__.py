"""lstm-cli's own inference engine: the SavedModel's tokenizer and network in numpy, no TensorFlow.

It starts in milliseconds and agrees with the SavedModel to float precision (tests/test_engine.py).
This package must never import TensorFlow or Keras; a test imports it with TensorFlow blocked."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lstm_cli import tensorbundle
from lstm_cli.engine.network import Network, Unsupported
from lstm_cli.engine.tokenizer import STANDARDIZATIONS, STRIP_PUNCTUATION, Token, Tokenizer, flattened
from lstm_cli.schema import load_json, npz_arrays

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["Engine", "Token", "Tokenizer", "Unsupported", "npz_arrays"]

# Rows per network call. Texts are sorted by length first, so a batch carries little padding; 256 to 512
# rows cost the same CPU per text on SST-2 (measured), and smaller batches share out better over threads.
BATCH = 256
# ...and at most this many token positions (rows x the longest row): long documents come in smaller batches,
# so a batch's arrays stay near the size of 256 texts of 300 tokens (each position holds the embedding and
# bigram vectors of the pooled views, up to max_length 2,000 tokens a text).
BATCH_TOKENS = 256 * 300
# Batches run on two threads at once (numpy releases the GIL inside matmuls and ufuncs), but only when BLAS
# itself is single-threaded, as the command line makes it: OpenBLAS's own threads on top of ours fight over
# the cores (measured: 7x slower on 2 cores).
THREADS = max(1, min(2, os.cpu_count() or 1)) if os.environ.get("OPENBLAS_NUM_THREADS") == "1" else 1


class Engine:
    def __init__(self, description: dict[str, Any], weights: Mapping[str, np.ndarray], vocabulary: Sequence[str]):
        self.network = Network(description, weights)
        settings = description["tokenizer"]
        standardize = settings.get("standardize", STRIP_PUNCTUATION)
        if standardize not in STANDARDIZATIONS:  # a newer lstm-cli's: TensorFlow can still serve the model
            raise Unsupported(f"text standardization {standardize!r}")
        self.tokenizer = Tokenizer(vocabulary, max_length=settings["max_length"], standardize=standardize)
        self.threads = THREADS  # batches run at once (1: on the calling thread)
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_bytes(cls, description: bytes, weights: bytes, vocabulary: bytes, index: bytes | None = None) -> Engine:
        """From the contents of engine.json, its weights and vocabulary.json (never unpickles anything): the weights
        are engine.npz's, or, with `index` (variables/variables.index), the SavedModel's variables data, each found
        by the checkpoint key engine.json gives it. A model directory's files are checked as a whole first by
        lstm_cli.artifact.read_model."""
        described = load_json(description)
        if index is None:
            return cls(described, npz_arrays(weights), load_json(vocabulary))
        return cls(described, tensorbundle.arrays(index, weights, described["weights_keys"]), load_json(vocabulary))

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """One row of label probabilities per text (valid Unicode), in input order."""
        # Tokenized here, not in the threads: pure-Python work beside a thread's many short numpy calls makes
        # that thread wait for the GIL at every call (measured slower on 100,000 SST-2 lines).
        return self._run(*self.tokenizer.batch_ids(texts))

    def probabilities_of_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """As `probabilities`, for token id sequences (each non-empty, at most max_length long)."""
        return self._run(*flattened(rows))

    def close(self) -> None:
        """Stop the thread pool, if batches started one (a later large batch starts it again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _run(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Probabilities of the rows flat[starts[i] : starts[i] + lengths[i]], in batches of similar length."""
        order = np.argsort(lengths, kind="stable")
        chunks = _chunks(order, lengths[order])

        def run(chunk: np.ndarray) -> np.ndarray:
            return self.network(_padded(flat, starts[chunk], lengths[chunk]))

        return _in_order(len(lengths), chunks, self._map(run, chunks))

    def _map(self, run, chunks: list) -> list[np.ndarray]:
        if len(chunks) < 2 or self.threads == 1:
            return [run(chunk) for chunk in chunks]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor  # only when there is work to share out

            _keep_freed_memory()
            self._pool = ThreadPoolExecutor(self.threads)
        return list(self._pool.map(run, chunks))


def _chunks(order: np.ndarray, sorted_lengths: np.ndarray) -> list[np.ndarray]:
    """`order` (rows sorted by length) cut into batches of at most BATCH rows and BATCH_TOKENS positions."""
    chunks, start = [], 0
    while start < len(order):
        # k rows from `start` pad to k x the k-th one's length, which grows with k: the largest k that fits
        candidates = sorted_lengths[start : start + BATCH] * np.arange(1, min(BATCH, len(order) - start) + 1)
        rows = max(1, int(np.searchsorted(candidates, BATCH_TOKENS, side="right")))
        chunks.append(order[start : start + rows])
        start += rows
    return chunks


def _padded(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The rows flat[starts[i] : starts[i] + lengths[i]] right-padded with 0 into one [rows, longest] matrix."""
    ids = np.zeros((len(lengths), int(lengths.max())), dtype=np.int32)
    row = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # within its row
    ids[row, position] = flat[np.repeat(starts, lengths) + position]
    return ids


def _in_order(count: int, chunks: list, outputs: list[np.ndarray]) -> np.ndarray:
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    result = np.empty((count, outputs[0].shape[1]), dtype=np.float32)
    for chunk, out in zip(chunks, outputs, strict=True):
        result[chunk] = out
    return result


def _keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of unmapping it: every batch allocates and frees the same
    few megabytes of arrays, and each new mapping is paged in again (measured on 50,000 SST-2 lines on two
    threads: 18,000 page faults without this, 2,000 with it). Memory stays bounded by one batch's arrays."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator as it is
        return
    mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: arrays up to 64 MiB come from the heap...
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: ...which keeps up to 256 MiB free before returning it
