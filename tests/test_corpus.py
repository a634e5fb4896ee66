"""One streaming pass over a corpus: token counts and vocabulary (bounded by pruning, exact at the top),
and the stratified, seeded validation split chosen row by row."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lstm_cli.corpus import CorpusStats, ValidationSplit, scan
from lstm_cli.engine.tokenizer import SPLIT_PUNCTUATION, STRIP_PUNCTUATION, Tokenizer

SPLIT = {"standardize": SPLIT_PUNCTUATION}


def test_scan_counts_rows_labels_and_the_first_max_length_tokens():
    rows = [("The cat, the HAT!", "a"), ("hat hat hat cat dog", "b"), ("...", "a"), ("Été été", "a"), ("it's A-b", "b")]
    stats = scan(rows, max_length=3, standardize=STRIP_PUNCTUATION)
    assert stats.rows == 5 and stats.labels == ["a", "b"] and stats.label_counts == {"a": 3, "b": 2}
    # TextVectorization's standardization: ASCII lowercase, ASCII punctuation stripped; 'dog' is past max_length
    assert stats.token_counts == {"the": 2, "cat": 1, "hat": 3, "Été": 1, "été": 1, "its": 1, "ab": 1}
    assert stats.max_undercount == 0
    # lstm-cli's: the same, but punctuation other than the apostrophe separates words
    split = scan(rows, max_length=3, **SPLIT).token_counts
    assert split == {"the": 2, "cat": 1, "hat": 3, "Été": 1, "été": 1, "its": 1, "a": 1, "b": 1}


def test_vocabulary_orders_by_count_then_token_and_honours_min_count_and_max_tokens():
    stats = scan([("b a c b a d e e e", "x"), ("c f", "y")], max_length=50, **SPLIT)
    # e:3, a:2, b:2, c:2, d:1, f:1
    assert stats.vocabulary(100, 1) == ["", "[UNK]", "e", "a", "b", "c", "d", "f"]
    assert stats.vocabulary(100, 2) == ["", "[UNK]", "e", "a", "b", "c"]
    assert stats.vocabulary(4, 1) == ["", "[UNK]", "e", "a"]
    shuffled = [("f c", "y"), ("e e e d a b a b c", "x")]
    assert scan(shuffled, max_length=50, **SPLIT).vocabulary(100, 1) == stats.vocabulary(100, 1)


def test_vocabulary_gives_the_ids_the_tokenizer_uses():
    stats = scan([("good good bad", "p"), ("good fine", "n")], max_length=10, **SPLIT)
    tokenizer = Tokenizer(stats.vocabulary(10, 1), max_length=10, **SPLIT)
    assert tokenizer.ids("Good, unknown bad!") == [2, 1, 3]


def skewed_corpus(rows: int, seed: int = 0) -> list[tuple[str, str]]:
    """Zipf-like: 30 common words, and a rare word never seen before in every row."""
    rng = random.Random(seed)
    common = [f"w{i}" for i in range(30)]
    weights = [1 / (i + 1) for i in range(30)]
    return [(" ".join([*rng.choices(common, weights, k=6), f"rare{i}"]), rng.choice("xy")) for i in range(rows)]


def test_pruning_bounds_the_counts_and_keeps_the_top_exact():
    corpus = skewed_corpus(3000)
    truth = Counter(w for text, _ in corpus for w in text.split())
    stats = scan(corpus, max_length=50, **SPLIT, max_distinct=200)
    assert len(stats.token_counts) <= 200 < len(truth)
    assert stats.max_undercount > 0
    for word in (f"w{i}" for i in range(30)):
        assert stats.token_counts[word] == truth[word]
    exact = CorpusStats(3000, {}, truth).vocabulary(32, 1)
    assert stats.vocabulary(32, 1) == exact


def test_progress_is_reported_every_ten_thousand_rows_and_at_the_end():
    seen = []
    scan((("a b", "x") for _ in range(25_000)), max_length=5, **SPLIT, on_progress=seen.append)
    assert seen == [10_000, 20_000, 25_000]


# --- validation split ---------------------------------------------------------------------------------------

COUNTS = {"a": 10, "b": 3, "c": 2, "d": 1, "e": 5, "f": 7, "g": 100}


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [  # what train.stratified_split holds for these classes (Python rounds halves to even: 2.5 -> 2, 3.5 -> 4)
        (0.1, {"a": 1, "b": 1, "c": 1, "d": 0, "e": 1, "f": 1, "g": 10}),
        (0.25, {"a": 2, "b": 1, "c": 1, "d": 0, "e": 1, "f": 2, "g": 25}),
        (0.5, {"a": 5, "b": 2, "c": 1, "d": 0, "e": 2, "f": 4, "g": 50}),
        (0.9, {"a": 9, "b": 2, "c": 1, "d": 0, "e": 4, "f": 6, "g": 90}),
        (0.0, dict.fromkeys(COUNTS, 0)),
    ],
)
@pytest.mark.parametrize("sorted_by_label", [True, False])
def test_validation_split_holds_exactly_as_stratified_split(fraction, expected, sorted_by_label):
    labels = [label for label, n in COUNTS.items() for _ in range(n)]
    if not sorted_by_label:
        random.Random(1).shuffle(labels)
    split = ValidationSplit(COUNTS, fraction, seed=0)
    held = Counter(label for label in labels if split.held(label))
    assert {label: held[label] for label in COUNTS} == expected == split.validation_counts
    assert split.train_counts == {label: COUNTS[label] - expected[label] for label in COUNTS}


def held_rows(seed: int, labels: list[str]) -> list[int]:
    split = ValidationSplit(Counter(labels), 0.2, seed)
    return [i for i, label in enumerate(labels) if split.held(label)]


def test_validation_split_is_seeded_and_every_row_can_be_held():
    labels = [random.Random(2).choice("xyz") for _ in range(300)]
    assert held_rows(5, labels) == held_rows(5, labels)
    assert held_rows(5, labels) != held_rows(6, labels)
    ever = set().union(*(held_rows(seed, labels) for seed in range(60)))
    assert len(ever) > 0.95 * len(labels)  # not a fixed prefix or stride


def test_validation_split_keeps_a_single_row_class_for_training_with_a_warning():
    split = ValidationSplit({"big": 20, "rare": 1}, 0.5, seed=0)
    assert split.warnings == ["class 'rare' has a single row: kept for training, absent from validation"]
    assert not split.held("rare")
    assert sum(split.held("big") for _ in range(20)) == 10
    with pytest.raises(ValueError, match="not counted"):
        split.held("new")


def test_a_split_holds_out_at_most_max_validation_rows():
    from lstm_cli.corpus import MAX_VALIDATION_ROWS, validation_fraction

    assert validation_fraction(0.1, 10_000) == 0.1  # small data: the fraction as given
    big = 60_000_000
    assert round(validation_fraction(0.1, big) * big) == MAX_VALIDATION_ROWS
    split = ValidationSplit({"a": big // 2, "b": big // 2}, validation_fraction(0.1, big), seed=1)
    assert split.validation_counts == {"a": MAX_VALIDATION_ROWS // 2, "b": MAX_VALIDATION_ROWS // 2}


def test_train_validates_on_the_capped_split(tmp_path, monkeypatch):
    from conftest import toy_rows, write_csv

    from lstm_cli import corpus
    from lstm_cli.config import TrainConfig
    from lstm_cli.data import stream_labeled
    from lstm_cli.train import train

    monkeypatch.setattr(corpus, "MAX_VALIDATION_ROWS", 12)
    data = stream_labeled(write_csv(tmp_path / "train.csv", toy_rows(120, seed=2)))
    stages: list[str] = []
    config = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, epochs=1, batch_size=16,
                         validation_split=0.5)  # fmt: skip
    result = train(config, data, on_stage=stages.append)
    assert (result.train_rows, result.validation_rows) == (108, 12)
    assert any(s.startswith("Validating on 10.00% of the rows") for s in stages), stages
