"""What one streaming pass over a labeled corpus learns: row and label counts, token counts for the
vocabulary, and a stratified validation split chosen row by row without holding the corpus."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lstm_cli.engine.tokenizer import Tokenizer
from lstm_cli.errors import DataError

# Distinct tokens counted at most. A Python dict entry for a short token costs ~100-150 bytes, so this
# bounds the counts near 300 MB even for a corpus with endless distinct tokens (ids, typos, URLs).
MAX_DISTINCT = 2_000_000
# on_progress is called after every this many rows.
PROGRESS_ROWS = 10_000
RESERVED = ["", "[UNK]"]  # ids 0 (padding) and 1 (out of vocabulary), as TextVectorization's vocabulary
# A split holds out at most about this many rows: validation runs every epoch (every --steps-per-epoch
# steps on a large corpus), and 10% of 60M rows would cost more than the steps between two validations
# while measuring little better. The accuracy of 50,000 rows is known to within ~0.5 points.
MAX_VALIDATION_ROWS = 50_000


def validation_fraction(fraction: float, rows: int) -> float:
    """The fraction of `rows` a split of `fraction` holds out: at most MAX_VALIDATION_ROWS rows."""
    return min(fraction, MAX_VALIDATION_ROWS / rows) if rows else fraction


@dataclass
class CorpusStats:
    rows: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    token_counts: Counter[str] = field(default_factory=Counter)
    # Any token's count is at most this much below its true count (0 when nothing was ever pruned);
    # a token that was never pruned, which in practice is every token near the top, is counted exactly.
    max_undercount: int = 0

    @property
    def labels(self) -> list[str]:
        return sorted(self.label_counts)

    def vocabulary(self, max_tokens: int, min_count: int = 1) -> list[str]:
        """["", "[UNK]", tokens seen >= min_count times by descending count, ties by token], max_tokens long at most."""
        kept = [(-count, token) for token, count in self.token_counts.items() if count >= min_count]
        kept.sort()
        return (RESERVED + [token for _, token in kept])[:max_tokens]


def scan(
    stream: Iterable[tuple[str, str]],
    *,
    max_length: int,
    standardize: str,
    on_progress: Callable[[int], None] | None = None,
    max_distinct: int = MAX_DISTINCT,
) -> CorpusStats:
    """Count rows, labels and the tokens of the first `max_length` tokens of each text, in one pass.

    Pruning rule, when more than `max_distinct` tokens are counted: drop every token whose count is at
    or below the smallest threshold that leaves at most half of `max_distinct` (lossy counting; the
    threshold is added to `max_undercount`). Halving makes pruning rare (amortised O(1) per token), and
    on natural text the dropped tokens are the long tail of once-seen words, far below any vocabulary cut."""
    words = Tokenizer(RESERVED, max_length=max_length, standardize=standardize).words
    counts: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    undercount = 0
    rows = 0
    for text, label in stream:
        labels[label] += 1
        counts.update(words(text)[:max_length])
        rows += 1
        if len(counts) > max_distinct:
            undercount += _prune(counts, max_distinct // 2)
        if on_progress is not None and rows % PROGRESS_ROWS == 0:
            on_progress(rows)
    if on_progress is not None and rows % PROGRESS_ROWS:
        on_progress(rows)
    return CorpusStats(rows, dict(labels), counts, undercount)


def _prune(counts: Counter[str], keep: int) -> int:
    """Drop the rarest tokens so that at most `keep` remain; returns the count threshold used."""
    histogram = Counter(counts.values())
    remaining = len(counts)
    threshold = 0
    for count in sorted(histogram):
        if remaining <= keep:
            break
        remaining -= histogram[count]
        threshold = count
    for token in [token for token, count in counts.items() if count <= threshold]:
        del counts[token]
    return threshold


class ValidationSplit:
    """A seeded, exactly stratified validation split chosen one row at a time, in O(classes) memory.

    Per class, as train.stratified_split: held = min(n - 1, max(1, round(n * fraction))), and a class with
    a single row stays in training (with a warning). Each class uses Knuth's selection sampling
    (Algorithm S): a row is held with probability needed / remaining, which holds exactly `held` rows, every
    subset equally likely. Each class has its own generator, seeded by (seed, label), so the rows chosen
    for one class do not depend on the others."""

    def __init__(self, label_counts: dict[str, int], fraction: float, seed: int):
        self.warnings: list[str] = []
        self._fraction = fraction
        self.validation_counts: dict[str, int] = {}
        for label in sorted(label_counts):
            n = label_counts[label]
            if fraction <= 0:
                held = 0
            elif n < 2:
                self.warnings.append(f"class {label!r} has a single row: kept for training, absent from validation")
                held = 0
            else:
                held = min(n - 1, max(1, round(n * fraction)))
            self.validation_counts[label] = held
        self.train_counts = {label: label_counts[label] - self.validation_counts[label] for label in label_counts}
        self._needed = dict(self.validation_counts)
        self._remaining = dict(label_counts)
        self._random = {label: random.Random(f"{seed}\0{label}").random for label in label_counts}

    def require_rows(self, path: str) -> None:
        """A DataError when the split holds no row although a fraction was asked for (every class has one)."""
        if self._fraction > 0 and not any(self.validation_counts.values()):
            raise DataError(
                f"{path}: no row to validate on: every class has a single row, and a class's only row is kept "
                "for training; add rows, give --validation-data FILE, or pass --validation-split 0"
            )

    def held(self, label: str) -> bool:
        """Whether the next row (in file order) of class `label` goes to validation."""
        try:
            remaining = self._remaining[label]
        except KeyError:
            raise ValueError(f"label {label!r} was not counted by the scan (did the file change?)") from None
        needed = self._needed[label]
        if remaining <= 0 or needed <= 0:
            self._remaining[label] = remaining - 1
            return False
        self._remaining[label] = remaining - 1
        if self._random[label]() * remaining < needed:
            self._needed[label] = needed - 1
            return True
        return False
