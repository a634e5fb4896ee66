"""The on-disk token cache: every row's token ids and label index, encoded once, read back one shard at a
time as shuffled, length-bucketed batches (optionally sliced for several workers).

Layout of a cache directory: per shard `shard-NNNNN.ids` (int32 token ids of its rows, concatenated) and
`shard-NNNNN.rows` (int32 [rows, 2]: length, label index), raw little-endian arrays; and `cache.json`,
written last and atomically, which is the only proof that the shards are complete.

Shuffle scheme: every row goes to a shard drawn at random (seeded), so each shard is a uniform random
sample of the corpus even when the file is sorted by label; each pass then permutes the shard order and
the rows within each shard. Memory stays bounded: building holds one chunk of rows, reading one shard."""

from __future__ import annotations

import json
import os
import re
import stat
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lstm_cli.batching import Batch, EncodedTexts, batch_count, batch_indices, worker_batch
from lstm_cli.engine.tokenizer import OOV_ID
from lstm_cli.errors import LstmCliError
from lstm_cli.schema import read_json

__all__ = ["Batch", "TokenCache"]

MANIFEST = "cache.json"
FORMAT = "lstm-cli-token-cache"
FORMAT_VERSION = 1
# Rows are encoded into chunks of at most this many rows / token ids (4 bytes each) before going to disk.
CHUNK_ROWS = 1 << 14
CHUNK_TOKENS = 1 << 18
# A shard holds at most about this many token ids (64 MiB of int32): training reads one shard at a time.
SHARD_TOKENS = 1 << 24
# Names build() writes, and so may remove when it rebuilds.
_OURS = re.compile(r"(shard-\d{5,}\.(ids|rows)|incoming\.(ids|rows)|cache\.json\.tmp)")
_SHARD = re.compile(r"shard-\d{5,}")  # the only names a manifest may give its shards: plain, in the directory
# Files are opened without following a symbolic link (O_NOFOLLOW): a link planted in the cache (or left
# dangling) must not make lstm-cli read or write outside the checkpoint directory.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class _Chunk(NamedTuple):
    tokens: np.ndarray  # int32, the ids of all rows concatenated
    lengths: np.ndarray  # int32 [rows]
    labels: np.ndarray  # int32 [rows]


class TokenCache:
    """A complete cache directory (see the module docstring); make one with build() or find one with open()."""

    def __init__(self, directory: Path, manifest: dict):
        self.directory = Path(directory)
        self.manifest = manifest
        self.rows: int = manifest["rows"]
        self.tokens: int = manifest["tokens"]
        self._shards: list[dict] = manifest["shards"]

    def label_counts(self) -> np.ndarray:
        """Rows per label index."""
        return np.array(self.manifest["label_counts"], dtype=np.int64)

    @property
    def shard_rows(self) -> list[int]:
        return [shard["rows"] for shard in self._shards]

    # --- building and opening --------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        directory: Path,
        rows: Iterable[tuple[Sequence[int] | np.ndarray, int]],
        *,
        fingerprint: dict,
        seed: int,
        shard_rows: int = 2**18,
        expected_rows: int | None = None,
        shard_tokens: int = SHARD_TOKENS,
        expected_tokens: int | None = None,
    ) -> TokenCache:
        """Write every (token ids, label index) row to `directory` and return the cache.

        The shard count is ceil(expected_rows / shard_rows), or ceil(expected_tokens / shard_tokens) when more
        (long documents), so shards hold about `shard_rows` rows and at most about `shard_tokens` token ids
        each: reading one for training costs that much memory, whatever the corpus. Without `expected_rows`
        (and without len(rows)), rows are first written in arrival order to a temporary file, then dealt out
        to the shards: one more sequential write and read of the ids.
        A row without ids is stored as [OOV_ID], as the tokenizer encodes a text with no tokens."""
        directory = Path(directory)
        _real_directory(directory.parent)
        _real_directory(directory)
        _remove_ours(directory)
        if expected_rows is None and hasattr(rows, "__len__"):
            expected_rows = len(rows)  # type: ignore[arg-type]
        chunks: Iterable[_Chunk] = _chunks(rows)
        if expected_rows is None:
            expected_rows, expected_tokens = _spool(chunks, directory)
            chunks = _read_spool(directory)
        shards = max(1, -(-expected_rows // shard_rows), -(-(expected_tokens or 0) // shard_tokens))
        summary = _deal(chunks, directory, shards, np.random.default_rng([seed, 0x5EED]))
        for name in ("incoming.ids", "incoming.rows"):
            (directory / name).unlink(missing_ok=True)
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint, "seed": seed}
        manifest = json.loads(json.dumps(header | summary))
        _write_manifest(directory, manifest)
        return cls(directory, manifest)

    @classmethod
    def open(cls, directory: Path, fingerprint: dict, *, seed: int | None = None) -> TokenCache | None:
        """The cache in `directory` if it is complete and was built for `fingerprint` (and `seed`, if
        given); None otherwise, and the caller rebuilds it."""
        directory = Path(directory)
        try:
            if not (_is_real_directory(directory.parent) and _is_real_directory(directory)):
                return None
            manifest = read_json(directory / MANIFEST, follow_symlinks=False)
            if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
                return None
            if manifest["fingerprint"] != json.loads(json.dumps(fingerprint)):
                return None
            if seed is not None and manifest["seed"] != seed:
                return None
            if not _counts_agree(manifest):
                return None
            for shard in manifest["shards"]:
                ids, rows = _paths(directory, shard["name"])
                if _regular_size(ids) != 4 * shard["tokens"] or _regular_size(rows) != 8 * shard["rows"]:
                    return None
            return cls(directory, manifest)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return None

    # --- reading ---------------------------------------------------------------------------------------

    def batch_count(self, batch_size: int, *, shuffled: bool) -> int:
        """Exactly how many batches one pass of `batches` yields (to every part)."""
        return sum(batch_count(rows, batch_size, shuffled=shuffled) for rows in self.shard_rows)

    def batches(
        self, batch_size: int, *, seed: int | None, epoch: int, start: int = 0, part: int = 0, parts: int = 1
    ) -> Iterator[Batch]:
        """One pass over every row, in global batches of `batch_size` rows (fewer at the end of a shard).

        With `seed`, the order depends only on (seed, epoch): shards in a permuted order, rows permuted
        within each shard, then sorted by length within pools of batching.POOL_BATCHES batches (little
        padding) and the batches of the shard shuffled. Without, a fixed order: each shard sorted by length.
        The first `start` batches are skipped (whole shards without reading them). Part `part` of `parts`
        gets rows part::parts of every global batch, topped up with filler rows ([OOV_ID], weight 0) to
        ceil(batch / parts) rows, so every part yields the same number of batches of the same size."""
        if batch_size < 1 or parts < 1 or not 0 <= part < parts:
            raise ValueError(f"bad batch_size={batch_size}, part={part}, parts={parts}")
        shuffled = seed is not None
        order = (
            np.random.default_rng([seed, epoch]).permutation(len(self._shards))
            if shuffled
            else range(len(self._shards))
        )
        skip = start
        for k in order:
            shard = self._shards[k]
            count = batch_count(shard["rows"], batch_size, shuffled=shuffled)
            if skip >= count:
                skip -= count
                continue
            encoded, labels = self._read(shard)
            rng = np.random.default_rng([seed, epoch, int(k)]) if shuffled else None
            for indices in batch_indices(encoded.lengths, batch_size, rng)[skip:]:
                yield worker_batch(encoded, labels, indices, part=part, parts=parts)
            skip = 0

    def texts(self) -> Iterator[EncodedTexts]:
        """Every row's token ids, a shard at a time, in the order the cache holds them."""
        for shard in self._shards:
            yield self._read(shard)[0]

    def _read(self, shard: dict) -> tuple[EncodedTexts, np.ndarray]:
        ids_path, rows_path = _paths(self.directory, shard["name"])
        rows = _fromfile(rows_path).reshape(-1, 2)
        lengths = rows[:, 0].astype(np.int64)
        splits = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=splits[1:])
        ids = _fromfile(ids_path).astype(np.int32, copy=False)
        labels = rows[:, 1].astype(np.int32)
        if len(rows) and (lengths.min() < 1 or splits[-1] != len(ids) or not 0 <= labels.min() <= labels.max()
                          < len(self.manifest["label_counts"])):  # fmt: skip
            raise LstmCliError(
                f"{rows_path}: the token cache was changed after it was written; delete {self.directory} and rerun"
            )
        return EncodedTexts(ids, splits), labels


def _paths(directory: Path, name: str) -> tuple[Path, Path]:
    if not _SHARD.fullmatch(name) and name != "incoming":
        raise ValueError(f"not a shard name: {name!r}")
    return directory / f"{name}.ids", directory / f"{name}.rows"


def _counts_agree(manifest: dict) -> bool:
    """The manifest's counts are non-negative integers that add up, and its shards have plain names."""
    shards, counts = manifest["shards"], manifest["label_counts"]
    numbers = [manifest["rows"], manifest["tokens"], *counts, *(s[k] for s in shards for k in ("rows", "tokens"))]
    return (
        all(type(n) is int and n >= 0 for n in numbers)
        and all(isinstance(s["name"], str) and _SHARD.fullmatch(s["name"]) for s in shards)
        and len({s["name"] for s in shards}) == len(shards)
        and sum(s["rows"] for s in shards) == manifest["rows"] == sum(counts)
        and sum(s["tokens"] for s in shards) == manifest["tokens"]
    )


def _is_real_directory(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _real_directory(path: Path) -> None:
    """Make `path` a directory of its own: a symbolic link or a file in its place (inside the checkpoint
    directory, which lstm-cli made) is removed first, never followed."""
    if os.path.lexists(path) and not _is_real_directory(path):
        os.unlink(path)
    path.mkdir(parents=True, exist_ok=True)


def _regular_size(path: Path) -> int | None:
    """The size of `path` if it is a regular file (not a link to one), else None."""
    info = os.lstat(path)
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _open(path: Path, flags: int, mode: str):
    """A file object for `path`, never through a symbolic link."""
    fd = os.open(path, flags | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")


def _fromfile(path: Path) -> np.ndarray:
    with _open(path, os.O_RDONLY, "rb") as f:
        return np.fromfile(f, dtype="<i4")


def _remove_ours(directory: Path) -> None:
    """Remove what an earlier build left (the manifest first: a half-removed cache must not look complete).
    A symbolic link under one of these names is removed itself; what it points to is never touched."""
    (directory / MANIFEST).unlink(missing_ok=True)
    for path in directory.iterdir():
        if _OURS.fullmatch(path.name) and (path.is_symlink() or path.is_file()):
            path.unlink()


def _create(path: Path) -> None:
    """An empty file at `path` (after _remove_ours: nothing there, or a link planted since, which fails)."""
    _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "wb").close()


def _chunks(rows: Iterable[tuple[Sequence[int] | np.ndarray, int]]) -> Iterator[_Chunk]:
    """Rows gathered into chunks of compact int32 arrays (4 bytes an id, not a Python int's 28)."""
    tokens, lengths, labels = array("i"), array("i"), array("i")
    for ids, label in rows:
        n = len(ids)
        if n == 0:
            ids, n = (OOV_ID,), 1
        if isinstance(ids, np.ndarray):
            tokens.frombytes(ids.astype(np.int32, copy=False).tobytes())
        else:
            tokens.extend(ids)
        lengths.append(n)
        labels.append(label)
        if len(lengths) >= CHUNK_ROWS or len(tokens) >= CHUNK_TOKENS:
            yield _Chunk(*(np.frombuffer(a, dtype=np.int32) for a in (tokens, lengths, labels)))
            tokens, lengths, labels = array("i"), array("i"), array("i")
    if lengths:
        yield _Chunk(*(np.frombuffer(a, dtype=np.int32) for a in (tokens, lengths, labels)))


def _append(path: Path, values: np.ndarray) -> None:
    with _open(path, os.O_WRONLY | os.O_APPEND, "ab") as f:
        f.write(values.astype("<i4", copy=False).tobytes())


def _spool(chunks: Iterable[_Chunk], directory: Path) -> tuple[int, int]:
    """Write chunks in arrival order to incoming.*; returns the row and token counts."""
    ids_path, rows_path = _paths(directory, "incoming")
    for path in (ids_path, rows_path):
        _create(path)
    total = tokens = 0
    for chunk in chunks:
        _append(ids_path, chunk.tokens)
        _append(rows_path, np.stack([chunk.lengths, chunk.labels], axis=1))
        total += len(chunk.lengths)
        tokens += len(chunk.tokens)
    return total, tokens


def _read_spool(directory: Path) -> Iterator[_Chunk]:
    ids_path, rows_path = _paths(directory, "incoming")
    with _open(ids_path, os.O_RDONLY, "rb") as ids, _open(rows_path, os.O_RDONLY, "rb") as rows:
        while True:
            pairs = np.fromfile(rows, dtype="<i4", count=2 * CHUNK_ROWS).reshape(-1, 2)
            if not len(pairs):
                return
            tokens = np.fromfile(ids, dtype="<i4", count=int(pairs[:, 0].sum()))
            yield _Chunk(tokens.astype(np.int32), pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32))


def _deal(chunks: Iterable[_Chunk], directory: Path, shards: int, rng: np.random.Generator) -> dict:
    """Send every row to a shard drawn at random; returns the manifest's counts and shard list."""
    names = [f"shard-{k:05d}" for k in range(shards)]
    for name in names:
        for path in _paths(directory, name):
            _create(path)
    shard_rows = np.zeros(shards, dtype=np.int64)
    shard_tokens = np.zeros(shards, dtype=np.int64)
    label_counts = np.zeros(0, dtype=np.int64)
    for chunk in chunks:
        if len(chunk.labels) and chunk.labels.min() < 0:
            raise ValueError("label indices must be >= 0")
        target = rng.integers(shards, size=len(chunk.lengths))
        order = np.argsort(target, kind="stable")
        lengths = chunk.lengths[order].astype(np.int64)
        starts = (np.cumsum(chunk.lengths, dtype=np.int64) - chunk.lengths)[order]
        # The ids of the reordered rows: row r's ids are tokens[starts[r] : starts[r] + lengths[r]].
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        tokens = chunk.tokens[np.repeat(starts, lengths) + offsets]
        pairs = np.stack([lengths.astype(np.int32), chunk.labels[order]], axis=1)
        rows_per = np.bincount(target, minlength=shards)
        tokens_per = np.bincount(target, weights=chunk.lengths, minlength=shards).astype(np.int64)
        row_end, token_end = np.cumsum(rows_per), np.cumsum(tokens_per)
        for k in np.flatnonzero(rows_per):
            ids_path, rows_path = _paths(directory, names[k])
            _append(ids_path, tokens[token_end[k] - tokens_per[k] : token_end[k]])
            _append(rows_path, pairs[row_end[k] - rows_per[k] : row_end[k]])
        shard_rows += rows_per
        shard_tokens += tokens_per
        counts = np.bincount(chunk.labels)
        if len(counts) > len(label_counts):
            label_counts = np.pad(label_counts, (0, len(counts) - len(label_counts)))
        label_counts[: len(counts)] += counts
    for name in names:
        for path in _paths(directory, name):
            _fsync(path)
    listed = [
        {"name": name, "rows": int(r), "tokens": int(t)}
        for name, r, t in zip(names, shard_rows, shard_tokens, strict=True)
    ]
    return {
        "rows": int(shard_rows.sum()),
        "tokens": int(shard_tokens.sum()),
        "label_counts": [int(c) for c in label_counts],
        "shards": listed,
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(directory: Path, manifest: dict) -> None:
    """Written last, and atomically: its presence means every shard is complete and on disk."""
    temporary = directory / f"{MANIFEST}.tmp"
    temporary.unlink(missing_ok=True)
    with _open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, directory / MANIFEST)
