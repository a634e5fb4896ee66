"""--vectors: reading word2vec/GloVe/fastText text files, coverage, the embedding they start, resume checks."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import FILLER, TINY, WORDS, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.config import PUNCTUATION
from lstm_cli.errors import DataError
from lstm_cli.vectors import embedding_matrix, peek_dimension, read_vectors

runner = CliRunner()
DIM = 6
SPLIT = "lower_and_split_punctuation"


def _vector(word: str) -> np.ndarray:
    """A distinct, reproducible vector per word."""
    rng = np.random.default_rng(sum(map(ord, word)) * 31 + len(word))
    return np.round(rng.normal(size=DIM), 4).astype(np.float32)


def write_vectors(path: Path, words: list[str], *, header: bool = True, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [f"{len(words)} {DIM}"] if header else []
    # A trailing space, as GloVe and fastText .vec files have.
    lines += [word + " " + " ".join(f"{x:.4f}" for x in _vector(word)) + " " for word in words]
    lines += extra_lines
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name,header", [("v.txt", True), ("v.vec", False), ("v.txt.gz", True), ("v.gz", False)])
def test_reads_text_vectors_with_or_without_header_and_gzipped(tmp_path, name, header):
    path = write_vectors(tmp_path / name, ["apple", "pear", "plum"], header=header)
    vectors = read_vectors(path, {"apple", "plum", "fig"}, SPLIT)
    assert vectors.dimension == DIM == peek_dimension(path)
    assert set(vectors.vectors) == {"apple", "plum"}  # only the words asked for are kept
    np.testing.assert_array_equal(vectors.vectors["plum"], _vector("plum"))
    assert vectors.words_in_file == 3 and vectors.malformed == 0
    import hashlib

    assert vectors.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_case_insensitive_match_prefers_the_exact_lowercase_entry(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("Apple 1 1\napple 2 2\nAPPLE 3 3\nPear 4 4\nPEAR 5 5\nÉté 6 6\nété 7 7\n", encoding="utf-8")
    vectors = read_vectors(path, {"apple", "pear", "Été"}, SPLIT)
    assert vectors.vectors["apple"].tolist() == [2, 2]  # exact lowercase wins wherever it is in the file
    assert vectors.vectors["pear"].tolist() == [4, 4]  # no exact entry: the first case variant
    # the tokenizer lowercases ASCII only, so "Été" stays a vocabulary entry of its own
    assert vectors.vectors["Été"].tolist() == [6, 6]


@pytest.mark.parametrize("punctuation", ["split", "strip"])
def test_words_are_matched_as_the_models_tokenizer_reads_them(tmp_path, punctuation):
    path = tmp_path / "v.txt"
    path.write_text("Don't 1 1\ndont 2 2\nIt's 3 3\nU.S. 4 4\ne-mail 5 5\n--- 6 6\nnew york 7 7\n", encoding="utf-8")
    wanted = {"dont", "its", "us", "u", "email", "e", "mail", "new", "york", "newyork"}
    vectors = read_vectors(path, wanted, PUNCTUATION[punctuation])
    found = {word: vector.tolist() for word, vector in vectors.vectors.items()}
    # apostrophes are deleted either way; the word written as the entry wins over its variants
    assert found["dont"] == [2, 2] and found["its"] == [3, 3]
    if punctuation == "split":  # "U.S." and "e-mail" are two tokens each: no one entry to give them to
        assert found == {"dont": [2, 2], "its": [3, 3]}
    else:
        assert found == {"dont": [2, 2], "its": [3, 3], "us": [4, 4], "email": [5, 5]}
    assert "dont" in vectors.exact and "its" not in vectors.exact


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    path = write_vectors(
        tmp_path / "v.txt", ["apple", "pear"], extra_lines=("plum 1 2", "fig 1 2 3 4 5 x", "", "kiwi " + "0 " * DIM)
    )
    vectors = read_vectors(path, {"apple", "plum", "fig", "kiwi"}, SPLIT)
    assert set(vectors.vectors) == {"apple", "kiwi"}
    assert vectors.malformed == 2


@pytest.mark.parametrize(
    "content,line",
    [
        ("text,label\nhello,pos\n", 1),  # a CSV, not vectors
        ("3 300\napple 1 2 3\n", 2),  # the header disagrees with the first vector
        ("2 4\n" + "\x00\xff\xfe binary junk" * 3 + "\n", 2),  # word2vec binary=True
    ],
)
def test_a_file_that_is_not_vectors_fails_with_file_and_line(tmp_path, content, line):
    path = tmp_path / "v.txt"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataError, match=rf"v\.txt:{line}: not a word vectors file") as error:
        read_vectors(path, {"apple"}, SPLIT)
    assert "\n" not in str(error.value)


def test_coverage_counts_vocabulary_words_and_token_occurrences_exactly():
    from lstm_cli.vectors import WordVectors

    vocabulary = ["", "[UNK]", "the", "cat", "sat", "mat"]
    counts = np.array([0, 2, 10, 3, 4, 1])  # occurrences of each id in the training data
    found = {w: np.full(2, i, np.float32) for i, w in enumerate(vocabulary) if w in ("the", "mat")}
    vectors = WordVectors("v.txt", "0" * 64, 2, found, 2, 0)
    matrix, coverage = embedding_matrix(vectors, vocabulary, counts, seed=1)
    assert (coverage.words, coverage.vocabulary, coverage.tokens, coverage.token_total) == (2, 4, 11, 20)
    assert coverage.describe() == "vectors for 50% of the vocabulary (2 of 4 words), 55% of tokens"
    np.testing.assert_array_equal(matrix[0], 0)  # padding
    np.testing.assert_array_equal(matrix[2], [2, 2])
    np.testing.assert_array_equal(matrix[5], [5, 5])
    assert not np.allclose(matrix[3], matrix[4])  # missing words get their own draws...
    again, _ = embedding_matrix(vectors, vocabulary, counts, seed=1)
    np.testing.assert_array_equal(matrix, again)  # ...seeded


def _train(data: Path, model: Path, *extra: str, quiet: bool = True):
    return runner.invoke(app, ["train", str(data), "-m", str(model), *(TINY if quiet else TINY[:-1]), *extra])


def _embedding(model_dir: Path) -> np.ndarray:
    from lstm_cli.artifact import network_weights

    return network_weights(model_dir)["embedding/embeddings"]


def _toy(tmp_path: Path) -> Path:
    rows = [(" ".join([WORDS[label][i % 8], FILLER[i % 11], WORDS[label][(i * 3) % 8]]), label)
            for i in range(60) for label in ("pos", "neg")]  # fmt: skip
    return write_csv(tmp_path / "train.csv", rows)


COVERED = ["good", "great", "bad", "awful", "the", "a"]


@pytest.mark.parametrize("freeze", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_training_starts_from_the_vectors_and_they_travel_in_the_model(tmp_path, freeze):
    data = _toy(tmp_path)
    vectors = write_vectors(tmp_path / "v.txt.gz", [w.upper() for w in COVERED[:2]] + COVERED[2:] + ["zebra"])
    # A tiny learning rate: unfrozen rows move by ~1e-4 at most, so they visibly start from the file.
    extra = ["--freeze-vectors"] if freeze else ["--learning-rate", "1e-6"]
    result = _train(data, tmp_path / "m", "--vectors", str(vectors), *extra, quiet=False)
    assert result.exit_code == 0, result.output
    vocabulary = json.loads((tmp_path / "m" / "vocabulary.json").read_text())
    embedding = _embedding(tmp_path / "m")
    assert embedding.shape == (len(vocabulary), DIM)  # the file's dimension, not --embedding-dim 8
    for word in COVERED:
        row = embedding[vocabulary.index(word)]
        if freeze:
            np.testing.assert_array_equal(row, _vector(word.upper() if word in COVERED[:2] else word))
        else:
            np.testing.assert_allclose(row, _vector(word.upper() if word in COVERED[:2] else word), atol=1e-3)
    np.testing.assert_array_equal(embedding[0], 0)
    metadata = json.loads((tmp_path / "m" / "metadata.json").read_text())
    words = len(vocabulary) - 2
    assert metadata["vectors"]["file"] == "v.txt.gz" and metadata["vectors"]["dimension"] == DIM
    assert metadata["vectors"]["frozen"] is freeze
    assert metadata["vectors"]["coverage"]["vocabulary_words"] == len(COVERED)
    assert metadata["vectors"]["coverage"]["vocabulary_size"] == words
    assert metadata["config"]["embedding_dim"] == DIM and metadata["config"]["freeze_vectors"] is freeze
    assert "--embedding-dim 8 ignored: the vectors in" in result.stderr
    assert f"vectors for {100 * len(COVERED) // words}% of the vocabulary" in result.stderr
    info = runner.invoke(app, ["info", "-m", str(tmp_path / "m")])
    assert "v.txt.gz" in info.stdout and "6 dimensions" in info.stdout
    # the SavedModel serves with those weights: same probabilities as the Keras network
    predicted = runner.invoke(app, ["predict", "-m", str(tmp_path / "m"), "--format", "json", "good the"])
    assert predicted.exit_code == 0, predicted.output


def test_token_coverage_counts_training_occurrences(tmp_path):
    rows = [("cat cat cat dog", "a"), ("dog bird", "b")] * 10
    data = write_csv(tmp_path / "d.csv", rows)
    vectors = write_vectors(tmp_path / "v.txt", ["cat"])
    # no validation split: all 20 rows train; 60 "cat" of 120 tokens, 1 of 3 words
    result = _train(data, tmp_path / "m", "--vectors", str(vectors), "--validation-split", "0", quiet=False)
    assert result.exit_code == 0, result.output
    coverage = json.loads((tmp_path / "m" / "metadata.json").read_text())["vectors"]["coverage"]
    assert coverage["tokens"] == 30 and coverage["token_total"] == 60
    assert coverage["vocabulary_words"] == 1 and coverage["vocabulary_size"] == 3
    assert "vectors for 33% of the vocabulary (1 of 3 words), 50% of tokens" in result.stderr


@pytest.mark.parametrize(
    "args,message,code",
    [
        (["--vectors", "missing.txt"], "missing.txt: file not found (--vectors)", 1),
        (["--freeze-vectors"], "--freeze-vectors needs --vectors FILE", 2),
        (["--vectors", "csv.txt"], "csv.txt:1: not a word vectors file", 1),
        (["--vectors", "nowords.txt"], "none of the", 1),
        (["--vectors", "pipe.txt"], "pipe.txt: is a pipe or device; --vectors reads its file twice", 1),
    ],
)
def test_vectors_errors_are_one_line(tmp_path, args, message, code):
    data = _toy(tmp_path)
    (tmp_path / "csv.txt").write_text("text,label\nhi,pos\n")
    os.mkfifo(tmp_path / "pipe.txt")  # as <(zcat vectors.gz) would give: refused before it is opened
    write_vectors(tmp_path / "nowords.txt", ["zebra", "yak"])
    result = _train(data, tmp_path / "m", *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and not (tmp_path / "m").exists()
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1 and message in errors[0]


def test_resume_refuses_a_checkpoint_made_with_other_vectors(tmp_path):
    from lstm_cli.config import TrainConfig
    from lstm_cli.data import read_labeled
    from lstm_cli.errors import LstmCliError
    from lstm_cli.train import train

    data = read_labeled(_toy(tmp_path))
    vectors = write_vectors(tmp_path / "v.txt", COVERED)
    config = TrainConfig(embedding_dim=4, units=4, dense_units=0, max_tokens=60, epochs=1, batch_size=32,
                         vectors=str(vectors))  # fmt: skip
    checkpoints = tmp_path / "ckpt"
    train(config, data, checkpoint_dir=checkpoints)
    train(config, data, checkpoint_dir=checkpoints, resume=True)  # same vectors: resumes (nothing left to do)
    write_vectors(vectors, COVERED[:-1])  # same file name, other vectors
    with pytest.raises(LstmCliError, match="from a run with other data or options"):
        train(config, data, checkpoint_dir=checkpoints, resume=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(["", "3 2", "2 4"]),
            st.builds(
                lambda w, xs, tail: w + " " + " ".join(map(str, xs)) + tail,
                st.text(min_size=1, max_size=8),
                st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=4),
                st.sampled_from(["", " ", "\t", "\r"]),
            ),
        ),
        max_size=12,
    ),
    wanted=st.sets(st.text(min_size=1, max_size=8), max_size=5),
)
def test_any_file_gives_vectors_of_one_width_or_one_clear_error(tmp_path, lines, wanted):
    path = tmp_path / "fuzz.txt"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        vectors = read_vectors(path, wanted, SPLIT)
    except DataError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
        return
    assert set(vectors.vectors) <= wanted
    for vector in vectors.vectors.values():
        assert vector.shape == (vectors.dimension,) and np.isfinite(vector).all()
    assert peek_dimension(path) == vectors.dimension
