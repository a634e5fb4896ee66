"""Length-bucketed batches of right-padded token ids, so a batch carries little padding.

Pure numpy: rows are stored flat (`values`, `row_splits`) as TensorFlow's ragged tensors are."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from lstm_cli.engine.tokenizer import OOV_ID

# Batches are formed inside pools of this many batches: sorted by length within a pool (little
# padding), random across pools and epochs (SGD still sees shuffled data).
POOL_BATCHES = 32


@dataclass(frozen=True)
class EncodedTexts:
    values: np.ndarray  # int32 token ids of all rows, concatenated
    row_splits: np.ndarray  # int64, len(rows) + 1; row i is values[row_splits[i]:row_splits[i + 1]]

    def __len__(self) -> int:
        return len(self.row_splits) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.row_splits)

    def take(self, indices: np.ndarray) -> EncodedTexts:
        lengths = self.lengths[indices]
        splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.concatenate([self.values[self.row_splits[i] : self.row_splits[i + 1]] for i in indices])
        return EncodedTexts(values.astype(np.int32), splits)

    def padded(self, indices: np.ndarray) -> np.ndarray:
        """Rows `indices` as a [batch, longest] int32 matrix, right-padded with 0."""
        lengths = self.lengths[indices]
        out = np.zeros((len(indices), int(lengths.max(initial=1))), dtype=np.int32)
        starts = self.row_splits[indices]
        # Scatter every row's ids at once: position j of row r comes from values[starts[r] + j].
        rows = np.repeat(np.arange(len(indices)), lengths)
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = self.values[np.repeat(starts, lengths) + cols]
        return out


class Batch(NamedTuple):
    ids: np.ndarray  # int32 [b, L], right-padded with 0; L is the longest row of this part (at least 1)
    labels: np.ndarray  # int32 [b]
    weights: np.ndarray  # float32 [b]: 1 for real rows, 0 for filler rows
    global_rows: int  # real rows in the whole global batch, all parts together (the loss divides by it)


def worker_batch(
    encoded: EncodedTexts, labels: np.ndarray, indices: np.ndarray, *, part: int = 0, parts: int = 1
) -> Batch:
    """Part `part` of `parts` of the global batch `indices`: its rows part::parts (similar lengths in every
    part, since a batch is sorted by length), topped up to ceil(batch / parts) rows with filler rows
    ([OOV_ID], weight 0, never all padding), so that every worker gets a batch of the same size."""
    mine = indices[part::parts]
    size = -(-len(indices) // parts)
    fill = size - len(mine)
    ids = encoded.padded(mine)
    if fill:
        filler = np.zeros((fill, ids.shape[1]), dtype=np.int32)
        filler[:, 0] = OOV_ID
        ids = np.concatenate([ids, filler])
    weights = np.zeros(size, dtype=np.float32)
    weights[: len(mine)] = 1
    targets = np.concatenate([labels[mine], np.zeros(fill, dtype=labels.dtype)]).astype(np.int32)
    return Batch(ids, targets, weights, len(indices))


def batch_indices(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Row indices per batch. With `rng`: shuffled pools, sorted within, batch order shuffled.

    Without: all rows sorted by length (evaluation, where order does not matter)."""
    n = len(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    pool = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, n, pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def batch_count(rows: int, batch_size: int, *, shuffled: bool) -> int:
    """How many batches `batch_indices` makes for `rows` rows."""
    if not shuffled:
        return -(-rows // batch_size)
    pool = batch_size * POOL_BATCHES
    full, rest = divmod(rows, pool)
    return full * POOL_BATCHES + -(-rest // batch_size)


def epoch_batches(
    encoded: EncodedTexts, labels: np.ndarray, batch_size: int, *, seed: int | None, epoch: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, labels) batches for one epoch; the shuffle depends only on (seed, epoch)."""
    rng = None if seed is None else np.random.default_rng([seed, epoch])
    for indices in batch_indices(encoded.lengths, batch_size, rng):
        yield encoded.padded(indices), labels[indices]
