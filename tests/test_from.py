"""`train NEW --from MODEL`: the parent's tokenizer, labels and weights, grown for NEW's words and labels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FILLER, TINY, toy_rows, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.artifact import read_metadata
from lstm_cli.cli import app
from lstm_cli.config import TrainConfig
from lstm_cli.errors import UsageError
from lstm_cli.parent import child_config, extend_bigrams, extend_labels, extend_vocabulary

runner = CliRunner()
NEW_WORDS = ["zorbly", "quxful"]  # in no toy row: only NEW's rows of the new label have them


def _new_rows(n: int = 48, seed: int = 4, labels=("pos", "neg")) -> list[tuple[str, str]]:
    """Old labels' rows (without 'meh': the parent's labels need not all be in NEW), and a new label, 'wow',
    whose rows hold the new words among the usual filler."""
    rng = random.Random(seed)
    rows = toy_rows(n, seed=seed, labels=labels)
    for _ in range(n // 2):
        words = [rng.choice(NEW_WORDS) for _ in range(rng.randint(1, 2))] + rng.sample(FILLER, rng.randint(0, 3))
        rng.shuffle(words)
        rows.append((" ".join(words), "wow"))
    return rows


def _arrays(model: Path) -> dict[str, np.ndarray]:
    from lstm_cli.artifact import network_weights  # whatever file holds them (the SavedModel's variables)

    return network_weights(model)


def _vocabulary(model: Path) -> list[str]:
    return json.loads((model / "vocabulary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def child(trained_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("from")
    data = write_csv(folder / "new.csv", _new_rows())
    out = folder / "child"
    args = ["train", str(data), "--from", str(trained_model), "-m", str(out), *TINY[:-1], "--epochs", "8"]
    result = runner.invoke(app, [*args, "--class-weight", "balanced", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    assert "has no rows of 1 of the labels" in result.stderr and "'meh'): the model will forget" in result.stderr
    return out


def test_from_adds_the_new_words_and_label_and_learns_them(trained_model, child):
    import lstm_cli

    parent_meta, meta = read_metadata(trained_model), read_metadata(child)
    # Old labels keep their indices; the new one is a new output.
    assert meta["labels"] == [*parent_meta["labels"], "wow"]
    old, new = _vocabulary(trained_model), _vocabulary(child)
    assert new[: len(old)] == old and set(NEW_WORDS) <= set(new[len(old) :])
    assert meta["vectorizer"]["vocabulary_size"] == len(new) <= meta["config"]["max_tokens"]
    with lstm_cli.load(child) as model:
        predictions = model.predict(["zorbly", "quxful the movie", "good great lovely", "awful bad poor"])
    assert [p[0].label for p in predictions] == ["wow", "wow", "pos", "neg"]


def test_the_continued_model_names_its_parent(trained_model, child):
    meta, parent_meta = read_metadata(child), read_metadata(trained_model)
    parent = meta["parent"]
    assert parent["id"] == parent_meta["id"] != meta["id"]
    assert parent["path"] == str(trained_model.resolve())
    assert parent["metadata_sha256"] == hashlib.sha256((trained_model / "metadata.json").read_bytes()).hexdigest()
    assert parent["lineage"] == [parent_meta["id"]]
    assert parent["labels_added"] == ["wow"] and parent["words_added"] == len(_vocabulary(child)) - len(
        _vocabulary(trained_model)
    )
    # Architecture from the parent; the batch size and learning rate were worked out again, or given.
    for key in ("embedding_dim", "units", "bigram_buckets", "punctuation", "max_length", "dense_units"):
        assert meta["config"][key] == parent_meta["config"][key]
    assert meta["config"]["epochs"] == 8 and meta["training"]["class_weights"]["meh"] == 1.0
    shown = runner.invoke(app, ["info", "-m", str(child)])
    assert shown.exit_code == 0 and "continues" in shown.stdout and parent_meta["id"] in shown.stdout


def test_engine_and_saved_model_agree_on_the_continued_model(child):
    import lstm_cli

    texts = ["zorbly", "good zorbly bad", "", "quxful quxful the", "ordinary fair movie", "unseen words only"]
    with lstm_cli.load(child, engine="numpy") as fast, lstm_cli.load(child, engine="tensorflow") as saved:
        assert fast.engine == "numpy" and saved.engine == "tensorflow"
        np.testing.assert_allclose(fast.predict_proba(texts), saved.predict_proba(texts), atol=1e-5)


@pytest.mark.parametrize("temperature", [None, 2.5])
def test_training_starts_from_the_parents_weights(trained_model, tmp_path, temperature):
    """A learning rate of 1e-9 leaves every weight where it started (Adam moves each by ~1e-9 a step): the
    parent's values, and the grown rows and columns as documented. A calibrated parent's head holds its
    weights divided by the temperature (calibration.temperature): training goes on from the raw ones."""
    shutil.copytree(trained_model, "parent")
    if temperature is not None:  # metadata.json is not among the files it lists the sha256 of
        meta = json.loads(Path("parent/metadata.json").read_text(encoding="utf-8"))
        meta["calibration"] = {"method": "temperature", "temperature": temperature}
        Path("parent/metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    data = write_csv(tmp_path / "new.csv", _new_rows(seed=7))
    # (72 rows: too few validation rows for the child to get a temperature of its own)
    args = ["train", str(data), "--from", "parent", "-m", "child", "--epochs", "1", "--learning-rate", "1e-9",
            "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    before, after = _arrays(trained_model), _arrays(tmp_path / "child")
    for name in ("probabilities/kernel", "probabilities/bias"):
        before[name] = before[name] * (temperature or 1.0)
    assert set(before) == set(after)
    words, labels = len(_vocabulary(trained_model)), len(read_metadata(trained_model)["labels"])
    assert len(_vocabulary(tmp_path / "child")) > words
    for name, old in before.items():
        new = after[name]
        if name == "embedding/embeddings":
            np.testing.assert_allclose(new[:words], old, atol=1e-6)
            # New words: the mean word plus a fresh embedding's small random row (uniform within 0.05).
            assert np.all(np.abs(new[words:] - old[2:].mean(axis=0)) <= 0.05 + 1e-6)
        elif name == "probabilities/kernel":
            np.testing.assert_allclose(new[:, :labels], old, atol=1e-6)
            assert new.shape == (old.shape[0], labels + 1)
        elif name == "probabilities/bias":
            np.testing.assert_allclose(new, [*old, old.mean()], atol=1e-6)
        else:
            np.testing.assert_allclose(new, old, atol=1e-6, err_msg=name)


def test_from_into_itself_replaces_the_model_and_keeps_the_lineage(trained_model, tmp_path):
    shutil.copytree(trained_model, tmp_path / "model")
    first = read_metadata(tmp_path / "model")["id"]
    data = write_csv(tmp_path / "new.csv", _new_rows(seed=9))
    for _ in range(2):
        result = runner.invoke(app, ["train", str(data), "--from", "model", "-m", "model", "--epochs", "1", "--quiet"])
        assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "model")
    assert len(meta["parent"]["lineage"]) == 2 and meta["parent"]["lineage"][0] == first
    assert meta["parent"]["labels_added"] == [] and meta["labels"][-1] == "wow"  # added by the first run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "new.csv"]  # no staging, no checkpoint left


def _refused(args: list[str], *words: str) -> str:
    result = runner.invoke(app, ["train", *args, "-m", "out", "--quiet"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not Path("out").exists()
    return lines[0]


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--embedding-dim", "16"], ["--embedding-dim 16", "(8)", "without --from"]),
        (["--punctuation", "strip"], ["--punctuation strip", "(split)"]),
        (["--bidirectional"], ["--bidirectional true", "(false)"]),
        (["--pooling", "last"], ["--pooling last", "(max,mean)"]),
        (["--max-tokens", "5"], ["--max-tokens 5", "vocabulary"]),
        (["--vectors", "vectors.txt"], ["--vectors", "--from"]),
    ],
)
def test_options_that_change_the_parents_shape_are_refused(trained_model, data_dir, option, words):
    Path("vectors.txt").write_text("good 0.1 0.2\n", encoding="utf-8")
    _refused([str(data_dir / "train.csv"), "--from", str(trained_model), *option], *words)


def test_from_something_that_is_not_a_model_is_refused(trained_model, data_dir, tmp_path):
    Path("empty").mkdir()
    data = str(data_dir / "train.csv")
    _refused([data, "--from", "missing"], "--from missing", "no model here")
    _refused([data, "--from", "empty"], "--from empty", "not an lstm-cli model directory")
    _refused([data, "--from", data], f"--from {data}", "not a directory")


def test_resume_continues_an_interrupted_from_run_of_the_same_parent_only(trained_model, tmp_path, monkeypatch):
    """Saving fails (the exported graph fails predict's op check), the checkpoint stays; --resume with the same
    --from saves that run, naming its parent; with another parent it is another run, refused."""
    from lstm_cli import graphcheck

    shutil.copytree(trained_model, "other")
    other = json.loads(Path("other/metadata.json").read_text(encoding="utf-8"))
    Path("other/metadata.json").write_text(json.dumps({**other, "id": "0" * 32}), encoding="utf-8")
    data = write_csv(tmp_path / "new.csv", _new_rows(seed=11))
    args = ["train", str(data), *TINY, "-m", "child", "--checkpoint-dir", "ck"]
    with monkeypatch.context() as patched:
        patched.setattr(graphcheck, "ALLOWED_OPS", graphcheck.ALLOWED_OPS - {"Softmax"})
        failed = runner.invoke(app, [*args, "--from", str(trained_model)])
    assert failed.exit_code == 1 and not Path("child").exists() and Path("ck/state.json").is_file()
    refused = runner.invoke(app, [*args, "--from", "other", "--resume"])
    assert refused.exit_code == 1 and "from a run with other data or options" in refused.stderr, refused.output
    resumed = runner.invoke(app, [*args, "--from", str(trained_model), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert read_metadata(Path("child"))["parent"]["id"] == read_metadata(trained_model)["id"]


def test_the_same_values_as_the_parent_and_training_options_are_accepted(trained_model):
    parent = read_metadata(trained_model)
    config = TrainConfig.from_dict(parent["config"])
    given = {"embedding_dim": config.embedding_dim, "dropout": 0.4, "epochs": 2, "min_count": 1}
    child = child_config(config, given, vocabulary_size=parent["vectorizer"]["vocabulary_size"])
    assert (child.embedding_dim, child.dropout, child.epochs, child.min_count) == (config.embedding_dim, 0.4, 2, 1)
    assert child.learning_rate is None and child.batch_size is None  # automatic again, for NEW's size
    assert child.dense_dropout == config.dense_dropout and child.seed == config.seed  # the parent's
    started = dataclasses.replace(config, pretrained="encoder-dir")  # the embedding starts from the parent's now
    assert child_config(started, {}, vocabulary_size=3).pretrained is None
    with pytest.raises(UsageError, match="--units 7 conflicts"):
        child_config(config, {"units": 7}, vocabulary_size=3)
    with pytest.raises(UsageError, match="--multi-label: the model of --from is single-label"):
        child_config(config, {"multi_label": True}, vocabulary_size=3)  # a softmax head stays one
    multi = dataclasses.replace(config, multi_label=True, label_separator="|")
    assert child_config(multi, {}, vocabulary_size=3).label_separator == "|"  # NEW is read as the model was
    assert child_config(multi, {"multi_label": True, "label_separator": ";"}, vocabulary_size=3).multi_label


words = st.text(alphabet="abcxyz", min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(words, unique=True, max_size=12),
    st.dictionaries(words, st.integers(1, 6), max_size=20),
    st.integers(1, 4),
    st.integers(0, 25),
)
def test_extend_vocabulary_keeps_every_id_and_adds_frequent_words_up_to_the_cap(old, counts, min_count, room):
    vocabulary = ["", "[UNK]", *old]
    cap = len(vocabulary) + room
    grown = extend_vocabulary(vocabulary, counts, min_count=min_count, max_tokens=cap)
    added = grown[len(vocabulary) :]
    assert grown[: len(vocabulary)] == vocabulary and len(grown) <= cap and len(set(grown)) == len(grown)
    assert all(counts[w] >= min_count and w not in vocabulary for w in added)
    assert [counts[w] for w in added] == sorted((counts[w] for w in added), reverse=True)
    left_out = [w for w, c in counts.items() if c >= min_count and w not in vocabulary and w not in added]
    assert not left_out or len(grown) == cap  # a frequent word is left out only for want of room
    assert all(counts[w] <= counts[a] for w in left_out for a in added)


@pytest.mark.parametrize("section", [None, "x", {"lineage": "abc"}, {"lineage": ["a", 3, None, "b"]}])
def test_the_lineage_reads_a_parents_parent_section_as_data(section):
    from lstm_cli.parent import Parent

    parent = Parent(Path("/p"), {"id": "c", "parent": section}, "0" * 64, TrainConfig(), ["x", "y"], ["", "[UNK]"], {})
    expected = ["a", "b", "c"] if isinstance(section, dict) and isinstance(section["lineage"], list) else ["c"]
    assert parent.describe(["", "[UNK]", "w"], ["x", "y", "z"])["lineage"] == expected


def test_extend_labels_and_bigrams():
    assert extend_labels(["pos", "neg"], ["wow", "neg", "aha"]) == ["pos", "neg", "aha", "wow"]
    counts = np.array([0, 5, 0, 1, 9, 2, 7, 0], dtype=np.uint32)
    kept = np.array([0, 3], dtype=np.int32)
    assert extend_bigrams(kept, counts, min_count=2, max_rows=10).tolist() == [0, 1, 3, 4, 5, 6]
    assert extend_bigrams(kept, counts, min_count=2, max_rows=3).tolist() == [0, 3, 4, 6]  # the most frequent
    assert extend_bigrams(kept, counts, min_count=2, max_rows=1).tolist() == [0, 3]  # the parent's all stay


def test_bigram_buckets_of_a_parent_with_a_bigram_min_count_keep_their_rows(data_dir, tmp_path):
    """With --bigram-min-count, only the buckets seen often enough have rows: the parent's keep theirs (at
    their place among the sorted buckets), NEW's frequent ones join with the mean row plus a fresh one."""
    args = ["train", str(data_dir / "train.csv"), "-m", "parent", *TINY, "--bigram-min-count", "3"]
    parent = runner.invoke(app, args)
    assert parent.exit_code == 0, parent.output
    data = write_csv(tmp_path / "new.csv", _new_rows(n=90, seed=13))
    child = runner.invoke(app, ["train", str(data), "--from", "parent", "-m", "child", "--epochs", "1",
                                "--learning-rate", "1e-9", "--quiet"])  # fmt: skip
    assert child.exit_code == 0, child.output
    before, after = _arrays(Path("parent")), _arrays(Path("child"))
    old_kept, new_kept = before["bigram_vocabulary/kept"], after["bigram_vocabulary/kept"]
    assert set(old_kept) < set(new_kept) and list(new_kept) == sorted(new_kept)
    where = np.searchsorted(new_kept, old_kept)
    np.testing.assert_allclose(after["bigram_embedding/embeddings"][where], before["bigram_embedding/embeddings"],
                               atol=1e-6)  # fmt: skip
    added = np.setdiff1d(np.arange(len(new_kept)), where)
    mean = before["bigram_embedding/embeddings"][1:].mean(axis=0)
    assert np.all(np.abs(after["bigram_embedding/embeddings"][added] - mean) <= 0.05 + 1e-6)


def test_a_model_replaced_by_another_run_meanwhile_is_not_replaced_again(trained_model, tmp_path, monkeypatch):
    """-m names the model of --from, and another run replaces it while this one trains (here: its metadata
    gets another id, as a new model would): this run refuses to save over it, and says so."""
    from lstm_cli import train as core

    shutil.copytree(trained_model, "model")
    real = core.train

    def train_then_replaced(*args, **kwargs):
        result = real(*args, **kwargs)
        meta = json.loads(Path("model/metadata.json").read_text(encoding="utf-8"))
        Path("model/metadata.json").write_text(json.dumps({**meta, "id": "f" * 32}), encoding="utf-8")
        return result

    monkeypatch.setattr(core, "train", train_then_replaced)
    data = write_csv(tmp_path / "new.csv", _new_rows(seed=17))
    result = runner.invoke(app, ["train", str(data), "--from", "model", "-m", "model", "--epochs", "1", "--quiet"])
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert "was replaced by another run while this one trained" in result.stderr and "f" * 32 in result.stderr
    assert read_metadata(Path("model"))["id"] == "f" * 32  # the other run's model stays


def test_a_full_vocabulary_takes_new_words_up_to_max_tokens_and_says_what_it_left_out(trained_model, tmp_path):
    data = write_csv(tmp_path / "new.csv", _new_rows(seed=19))
    cap = len(_vocabulary(trained_model)) + 1
    args = ["train", str(data), "--from", str(trained_model), "-m", "child", "--epochs", "1", "--max-tokens",
            str(cap), "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    grown = _vocabulary(Path("child"))
    assert len(grown) == cap and grown[-1] in NEW_WORDS  # the most frequent new word
    assert read_metadata(Path("child"))["config"]["max_tokens"] == cap
    left_out = f"{data}: 1 of its words seen at least 2 times are left out of the vocabulary, full at --max-tokens"
    assert f"{left_out} {cap}; give a larger --max-tokens" in result.stderr
