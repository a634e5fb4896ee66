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
uses ASCII bytes inside a multi-byte character, so working on `str` gives the same tokens as on bytes."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

PAD_ID = 0
OOV_ID = 1
STANDARDIZE = "lower_and_strip_punctuation"
SPLIT = "whitespace"
PUNCTUATION = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'"  # exactly the characters TextVectorization's regex strips
ASCII_WHITESPACE = " \t\n\v\f\r"

# One translate() call lowercases A-Z, deletes punctuation and turns every ASCII whitespace into ' '.
_TABLE = str.maketrans(
    string.ascii_uppercase + ASCII_WHITESPACE[1:],
    string.ascii_lowercase + " " * len(ASCII_WHITESPACE[1:]),
    PUNCTUATION,
)
_CHUNK = re.compile(f"[^{re.escape(ASCII_WHITESPACE)}]+")


@dataclass(frozen=True)
class Token:
    text: str  # as the model saw it (lowercased, punctuation removed)
    id: int
    start: int  # character offsets of its whitespace-delimited chunk in the original text
    end: int


class Tokenizer:
    def __init__(self, vocabulary: Sequence[str], *, max_length: int):
        """`vocabulary[i]` is the token of id i; ids 0 and 1 are padding and out-of-vocabulary."""
        self.vocabulary = list(vocabulary)
        self.max_length = max_length
        self._ids = dict(zip(self.vocabulary[OOV_ID + 1 :], range(OOV_ID + 1, len(self.vocabulary)), strict=True))

    def words(self, text: str) -> list[str]:
        """The standardized tokens of `text`, before truncation."""
        return [w for w in text.translate(_TABLE).split(" ") if w]

    def ids(self, text: str) -> list[int]:
        """Token ids the model reads for `text` (valid Unicode: see data.clean_text)."""
        get = self._ids.get
        ids = [get(w, OOV_ID) for w in self.words(text)[: self.max_length]]
        return ids or [OOV_ID]

    def tokens(self, text: str) -> list[Token]:
        """The tokens the model sees (after truncation), with where each came from in `text`.

        Splitting before stripping punctuation gives the same tokens (punctuation is not whitespace), and
        keeps each token's place: a chunk that is all punctuation ('--') is no token."""
        found = []
        for chunk in _CHUNK.finditer(text):
            word = chunk.group().translate(_TABLE)
            if word:
                found.append(Token(word, self._ids.get(word, OOV_ID), chunk.start(), chunk.end()))
                if len(found) == self.max_length:
                    break
        return found
