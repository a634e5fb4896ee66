"""Pretrained word vectors in the word2vec/GloVe/fastText text format, read as a stream, keeping only the
rows of words the model's vocabulary has, and turned into an embedding matrix.

Format: optional header line "count dimension", then one "word v1 v2 ... vD" line per word (a trailing
space is fine; a word may itself contain spaces, as in GloVe 840B). `.gz` files are read as they are."""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lstm_cli.data import open_file
from lstm_cli.engine.tokenizer import Tokenizer
from lstm_cli.errors import DataError

# Most dimensions a vectors file may have (the usual ones have 100 to 1,024): the embedding matrix is
# vocabulary x dimension float32, 1.6 GB at 100,000 words and this many.
MAX_DIMENSION = 4_096
# Longest line read, in bytes (a word and 4,096 numbers printed in full take about 70 KB): a line is read up
# to this and no further, so a file of one endless line (a gzip bomb) never fills the memory.
MAX_LINE_BYTES = 1 << 20


def token_key(word: str, tokenizer: Tokenizer) -> str | None:
    """The vocabulary entry a word of the file would be, read by the model's tokenizer (ASCII letters
    lowercased, punctuation deleted or splitting: "Don't" -> dont), or None when it makes no token or
    several ("e-mail" under --punctuation split)."""
    tokens = tokenizer.words(word)
    return tokens[0] if len(tokens) == 1 else None


@dataclass
class WordVectors:
    path: str
    sha256: str
    dimension: int
    vectors: dict[str, np.ndarray]  # vocabulary entry -> float32 vector, only for the words asked for
    words_in_file: int  # lines read as vectors (malformed ones excluded)
    malformed: int  # lines skipped: wrong number of fields or numbers that do not parse
    exact: set[str] = field(default_factory=set)  # entries taken from a word written exactly as the entry

    def describe(self) -> dict[str, object]:
        return {"file": Path(self.path).name, "sha256": self.sha256, "dimension": self.dimension}


class _Hashing(io.RawIOBase):
    """Reads through to `raw`, hashing every byte: the sha256 of a file comes with the one pass that reads it."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.digest = raw, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.digest.update(memoryview(buffer)[:n])
        return n


def _open(path: Path) -> tuple[_Hashing, BinaryIO]:
    if path.exists() and not path.is_dir() and not path.is_file():
        # a pipe: `<(zcat vectors.gz)` cannot be read twice (its width first, then its words)
        raise DataError(
            f"{path}: is a pipe or device; --vectors reads its file twice: save it to a file (.gz is read as is)"
        )
    raw = open_file(path, "a word vectors file (text format, .gz allowed)", "--vectors")
    try:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror} (--vectors)") from None
    hashing = _Hashing(raw)
    buffered = io.BufferedReader(hashing, 1 << 20)
    return hashing, gzip.GzipFile(fileobj=buffered) if compressed else buffered


def _not_vectors(path: Path, line: int, why: str) -> DataError:
    return DataError(
        f"{path}:{line}: not a word vectors file ({why}); --vectors expects the text format, one "
        '"word v1 v2 ... vD" line per word (e.g. GloVe .txt, fastText .vec, word2vec saved with binary=False)'
    )


def _header(fields: list[str]) -> int | None:
    """The dimension a "count dimension" header line gives, or None if the line is not one."""
    if len(fields) == 2 and all(f.isdigit() and len(f) < 20 for f in fields) and int(fields[1]) > 0:
        return int(fields[1])
    return None


def _lines(stream: BinaryIO, path: Path):
    """(line number, bytes) of each line, never reading more than MAX_LINE_BYTES of one."""
    number = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(
                f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} bytes; not a word vectors file "
                f"(--vectors reads vectors of up to {MAX_DIMENSION:,} dimensions)"
            )
        yield number, raw


def _check_dimension(path: Path, number: int, dimension: int) -> int:
    if dimension > MAX_DIMENSION:
        raise DataError(
            f"{path}:{number}: vectors of {dimension:,} dimensions; --vectors reads up to {MAX_DIMENSION:,}"
        )
    return dimension


def _numbers(fields: list[str]) -> np.ndarray | None:
    try:
        vector = np.array(fields, dtype=np.float32)
    except ValueError:
        return None
    return vector if np.isfinite(vector).all() else None


def _decode(raw: bytes) -> str:
    # Bytes that are not UTF-8 (fastText files have a few) only spoil that word, never the whole read.
    return raw.decode("utf-8", errors="replace").rstrip("\r\n\t ")


def read_vectors(path: Path | str, wanted: set[str], standardize: str) -> WordVectors:
    """Stream the file; keep the vectors of words whose `token_key` under the model's standardization is in
    `wanted` (a word written exactly as the entry beats its variants: "apple" over "Apple", "dont" over
    "don't"). Malformed lines are skipped and counted; a file whose first lines are not vectors at all fails
    with file:line."""
    path = Path(path)
    tokenizer = Tokenizer(["", "[UNK]"], max_length=2, standardize=standardize)
    hashing, stream = _open(path)
    found: dict[str, np.ndarray] = {}
    exact: set[str] = set()
    dimension, words, malformed, number = None, 0, 0, 0
    try:
        with stream:
            for number, raw in _lines(stream, path):
                text = _decode(raw)
                if not text:
                    continue
                if dimension is None:
                    fields = text.split(" ")
                    dimension = _header(fields) if number == 1 else None
                    if dimension is not None:
                        _check_dimension(path, number, dimension)
                        continue
                    _check_dimension(path, number, len(fields) - 1)
                    if len(fields) < 2 or "\ufffd" in fields[-1] or _numbers(fields[1:]) is None:
                        raise _not_vectors(path, number, "expected a word followed by numbers")
                    dimension = len(fields) - 1
                fields = text.rsplit(" ", dimension)
                if words == 0 and (len(fields) != dimension + 1 or _numbers(fields[1:]) is None):
                    raise _not_vectors(path, number, f"expected a word and {dimension} numbers")
                if len(fields) != dimension + 1 or not fields[0]:
                    malformed += 1
                    continue
                key = token_key(fields[0], tokenizer)
                if key in wanted and (key not in found or (fields[0] == key and key not in exact)):
                    vector = _numbers(fields[1:])
                    if vector is None:
                        malformed += 1
                        continue
                    found[key] = vector
                    if fields[0] == key:
                        exact.add(key)
                words += 1
            while hashing.read(1 << 20):  # a gzip stream may end before the file does: hash all of it
                pass
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}:{number + 1}: cannot read ({e}); is the file complete? (--vectors)") from None
    if dimension is None or words == 0:
        raise DataError(f"{path}: no word vectors in the file (--vectors)")
    return WordVectors(str(path), hashing.digest.hexdigest(), dimension, found, words, malformed, exact)


def peek_dimension(path: Path | str) -> int:
    """The vectors' dimension from the first lines, so the CLI can say which width wins before training."""
    path = Path(path)
    _, stream = _open(path)
    number = 0
    try:
        with stream:
            for number, raw in _lines(stream, path):
                text = _decode(raw)
                if not text:
                    continue  # as read_vectors does
                fields = text.split(" ")
                if number == 1 and _header(fields) is not None:
                    return _check_dimension(path, number, int(fields[1]))
                if (
                    len(fields) >= 2
                    and _check_dimension(path, number, len(fields) - 1)
                    and _numbers(fields[1:]) is not None
                ):
                    return len(fields) - 1
                raise _not_vectors(path, number, "expected a word followed by numbers")
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}:{number + 1}: cannot read ({e}); is the file complete? (--vectors)") from None
    raise DataError(f"{path}: no word vectors in the file (--vectors)")


@dataclass
class Coverage:
    words: int  # vocabulary entries with a vector (padding and [UNK] excluded)
    vocabulary: int  # vocabulary entries that could have one
    tokens: int  # training token occurrences whose word has a vector
    token_total: int  # all training token occurrences

    @property
    def vocabulary_fraction(self) -> float:
        return self.words / self.vocabulary if self.vocabulary else 0.0

    @property
    def token_fraction(self) -> float:
        return self.tokens / self.token_total if self.token_total else 0.0

    def describe(self) -> str:
        return (
            f"vectors for {math.floor(100 * self.vocabulary_fraction)}% of the vocabulary "
            f"({self.words:,} of {self.vocabulary:,} words), {math.floor(100 * self.token_fraction)}% of tokens"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "vocabulary_words": self.words,
            "vocabulary_size": self.vocabulary,
            "vocabulary_fraction": round(self.vocabulary_fraction, 6),
            "tokens": self.tokens,
            "token_total": self.token_total,
            "token_fraction": round(self.token_fraction, 6),
        }


def embedding_matrix(
    vectors: WordVectors, vocabulary: list[str], token_counts: np.ndarray, *, seed: int
) -> tuple[np.ndarray, Coverage]:
    """[vocabulary, dimension] float32: the file's vector for covered words; for the others, a seeded draw
    from a normal with the per-dimension mean and std of the loaded vectors (same scale, so the network
    sees no odd rows); zeros for padding (id 0). `token_counts[i]`: occurrences of id i in training."""
    covered = [i for i, word in enumerate(vocabulary) if i >= 2 and word in vectors.vectors]
    if not covered:
        raise DataError(
            f"{vectors.path}: none of the {len(vocabulary) - 2:,} vocabulary words has a vector in this file; "
            "is it for another language or tokenization? (--vectors)"
        )
    loaded = np.stack([vectors.vectors[vocabulary[i]] for i in covered])
    rng = np.random.default_rng(seed)
    matrix = rng.normal(loaded.mean(axis=0), loaded.std(axis=0), size=(len(vocabulary), vectors.dimension))
    matrix = matrix.astype(np.float32)
    matrix[covered] = loaded
    matrix[0] = 0.0
    counts = np.zeros(len(vocabulary), np.int64)
    counts[: len(token_counts)] = token_counts[: len(vocabulary)]
    coverage = Coverage(len(covered), len(vocabulary) - 2, int(counts[covered].sum()), int(counts.sum()))
    return matrix, coverage
