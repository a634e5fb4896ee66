"""Text -> token ids, byte for byte what the exported SavedModel's TextVectorization does.

TensorFlow's `lower_and_strip_punctuation` + whitespace split is narrower than Python's string methods,
and every difference changes a token (each checked against TensorFlow 2.21; tests/test_engine.py keeps
checking it):
- `tf.strings.lower` without an `encoding` (Keras passes none) lowercases ASCII A-Z only: 'ÉTÉ' -> 'ÉtÉ';
- the regex `[!"#$%&()\\*\\+,-\\./:;<=>?@\\[\\\\\\]^_`{|}~\\']` strips ASCII punctuation only (`,-\\.` is a
  range: , - .), so '«', '—' and '’' stay inside tokens;
- `tf.strings.split` with no separator splits on ASCII whitespace only (space, \\t \\n \\v \\f \\r):
  NBSP, U+2003 and U+3000 do not split, and neither do \\x1c-\\x1f, which Python's `str.split` splits on.
Then the first `max_length` tokens are kept, and a text with none becomes one out-of-vocabulary token
(model.token_ids: a fully masked row breaks cuDNN). All of these are ASCII-only rules, and UTF-8 never
uses ASCII bytes inside a multi-byte character, so working on `str` gives the same tokens as on bytes.

lstm-cli's own standardization, `lower_and_split_punctuation` (new models' default; each model names its own), differs
in one rule: the same punctuation separates words instead of vanishing inside them ('long-term' ->
'long term', 'U.S.' -> 'u s', 'a,b' -> 'a b'), except the apostrophe, which is deleted as before ("don't" ->
'dont', "BBC's" -> 'bbcs'). lstm_cli.model.split_punctuation is the same rule in TensorFlow."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np

PAD_ID = 0
OOV_ID = 1
STRIP_PUNCTUATION = "lower_and_strip_punctuation"  # Keras's
SPLIT_PUNCTUATION = "lower_and_split_punctuation"  # lstm-cli's: punctuation but the apostrophe splits words
SPLIT = "whitespace"
PUNCTUATION = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'"  # exactly the characters TextVectorization's regex strips
SEPARATORS = PUNCTUATION.replace("'", "")  # what splits words in lower_and_split_punctuation
ASCII_WHITESPACE = " \t\n\v\f\r"


def _tables(splitting: str) -> tuple[dict[int, int | None], tuple[bytes, bytes]]:
    """The standardization as translate tables, for str and for UTF-8 bytes (table, deleted bytes): A-Z
    lowercased, every ASCII whitespace and each of `splitting` turned into ' ', the rest of the punctuation
    deleted."""
    upper, lower = string.ascii_uppercase, string.ascii_lowercase
    spaces = ASCII_WHITESPACE[1:] + splitting
    deleted = "".join(c for c in PUNCTUATION if c not in splitting)
    text = str.maketrans(upper + spaces, lower + " " * len(spaces), deleted)
    utf8 = bytes.maketrans((upper + spaces).encode(), (lower + " " * len(spaces)).encode()), deleted.encode()
    return text, utf8


# Per standardization: its translate tables (str, bytes), and what a token's characters cannot be (tokens()
# finds them).
_RULES = {
    STRIP_PUNCTUATION: (*_tables(""), re.compile(f"[^{re.escape(ASCII_WHITESPACE)}]+")),
    SPLIT_PUNCTUATION: (*_tables(SEPARATORS), re.compile(f"[^{re.escape(ASCII_WHITESPACE + SEPARATORS)}]+")),
}
STANDARDIZATIONS = tuple(_RULES)

# batch_ids standardizes a batch as one string, texts apart by a NUL (which neither standardization changes or
# splits on), when it has at least this many texts: below, building its byte-keyed vocabulary is not worth it
# (a one-off predict never does).
JOINED_FROM = 64
_JOIN = "\x00"
_JOIN_ID = -1


def flattened(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ids as batch_ids gives them: (flat, starts, lengths)."""
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    flat = np.fromiter(chain.from_iterable(rows), np.int32, int(lengths.sum()))
    return flat, np.cumsum(lengths) - lengths, lengths


@dataclass(frozen=True)
class Token:
    text: str  # as the model saw it (lowercased, punctuation removed)
    id: int
    start: int  # character offsets of its whitespace-delimited chunk in the original text
    end: int


class Tokenizer:
    def __init__(self, vocabulary: Sequence[str], *, max_length: int, standardize: str):
        """`vocabulary[i]` is the token of id i; ids 0 and 1 are padding and out-of-vocabulary. `standardize`:
        one of STANDARDIZATIONS, as the model's metadata names it (models saved before lstm-cli had its own
        standardization name none: they used Keras's, STRIP_PUNCTUATION)."""
        if standardize not in _RULES:
            raise ValueError(f"unknown standardization {standardize!r}; this lstm-cli knows {STANDARDIZATIONS}")
        self.vocabulary = list(vocabulary)
        self.max_length = max_length
        self.standardize = standardize
        self._table, (self._byte_table, self._byte_deleted), self._chunk = _RULES[standardize]
        self._ids = dict(zip(self.vocabulary[OOV_ID + 1 :], range(OOV_ID + 1, len(self.vocabulary)), strict=True))
        self._byte_ids: dict[bytes, int] | None = None  # built by the first joined batch_ids

    def words(self, text: str) -> list[str]:
        """The standardized tokens of `text`, before truncation."""
        return [w for w in text.translate(self._table).split(" ") if w]

    def ids(self, text: str) -> list[int]:
        """Token ids the model reads for `text` (valid Unicode: see data.clean_text)."""
        get = self._ids.get
        ids = [get(w, OOV_ID) for w in self.words(text)[: self.max_length]]
        return ids or [OOV_ID]

    def batch_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ids() of every text, as (flat, starts, lengths): text i's ids are flat[starts[i] : starts[i] + lengths[i]].

        A batch of JOINED_FROM texts or more is standardized as one UTF-8 string, the texts apart by a NUL: every
        rule is ASCII-only and UTF-8 never uses an ASCII byte inside a multi-byte character, so bytes give the
        same tokens as characters, at a fraction of the calls (twice as fast on SST-2 sentences). A batch in
        which a text holds a NUL itself goes text by text."""
        joined = f" {_JOIN} ".join(texts) if len(texts) >= JOINED_FROM else None
        if joined is None or joined.count(_JOIN) != len(texts) - 1:
            return flattened([self.ids(t) for t in texts])
        if self._byte_ids is None:
            self._byte_ids = {w.encode("utf-8", "surrogatepass"): i for w, i in self._ids.items()}
            self._byte_ids[_JOIN.encode()] = _JOIN_ID  # no vocabulary entry can be met in a batch without NULs
        get = self._byte_ids.get
        words = joined.encode("utf-8", "surrogatepass").translate(self._byte_table, self._byte_deleted).split(b" ")
        found = np.fromiter([get(w, OOV_ID) for w in words if w], np.int32)
        joins = np.flatnonzero(found == _JOIN_ID)
        starts = np.concatenate([[0], joins + 1])
        lengths = np.minimum(np.append(joins, len(found)) - starts, self.max_length)
        empty = lengths == 0  # a text with no tokens: one out-of-vocabulary token, kept at the end
        starts[empty], lengths[empty] = len(found), 1
        return np.append(found, np.int32(OOV_ID)), starts, lengths

    def tokens(self, text: str) -> list[Token]:
        """The tokens the model sees (after truncation), with where each came from in `text`.

        Splitting before stripping punctuation gives the same tokens (punctuation is not whitespace), and
        keeps each token's place: a chunk that is all punctuation ('--') is no token. With the punctuation that
        splits words, chunks end at it too."""
        found = []
        for chunk in self._chunk.finditer(text):
            word = chunk.group().translate(self._table)
            if word:
                found.append(Token(word, self._ids.get(word, OOV_ID), chunk.start(), chunk.end()))
                if len(found) == self.max_length:
                    break
        return found
