"""`lstm-cli pretrain` (a bag-of-words phase and a language model on unlabeled texts, saved as an encoder
directory) and `train --pretrained ENCODER` (a classifier that starts from it)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, toy_rows, write_csv
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.owned import is_encoder_dir

runner = CliRunner()
# A tiny encoder: the classifier's TINY widths (embedding 8, units 6).
SMALL = ["--embedding-dim", "8", "--units", "6", "--window", "8", "--batch-size", "8", "--eval-steps", "10",
         "--bag-eval-steps", "10", "--min-count", "1", "--quiet"]  # fmt: skip
SUBJECTS = "the cat|a dog|my aunt|the old man|a child|the bird".split("|")
VERBS = "sat on|looked at|ran to|slept near|jumped over".split("|")
PLACES = "the mat|a chair|the red door|the garden|a big tree".split("|")


def sentences(n: int, seed: int = 0) -> list[str]:
    """Texts with an order a language model can learn: subject, verb, place, then a full stop word."""
    rng = random.Random(seed)
    return [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} today" for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    texts = sentences(300) + [text for text, _ in toy_rows(300, seed=3)]
    random.Random(1).shuffle(texts)
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def encoder(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "encoder"
    result = runner.invoke(app, ["pretrain", str(corpus), "-o", str(out), *SMALL, "--objective", "bag+lm",
                                 "--bag-steps", "30", "--max-steps", "60"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    return out


def _config(**changes):
    from lstm_cli.pretrain import PretrainConfig

    base = {"embedding_dim": 8, "units": 6, "window": 8, "batch_size": 8, "eval_steps": 10, "min_count": 1,
            "learning_rate": 0.01, "objective": "lm", "bag_eval_steps": 10}  # fmt: skip
    return PretrainConfig(**{**base, **changes})


def test_the_encoder_is_plain_files_with_its_marker_and_listing(encoder):
    assert sorted(p.name for p in encoder.iterdir()) == ["encoder.json", "vocabulary.json", "weights.npz"]
    meta = json.loads((encoder / "encoder.json").read_text())
    assert meta["format"] == "lstm-cli-encoder" and meta["format_version"] == 1
    assert set(meta["files"]) == {"vocabulary.json", "weights.npz"}
    assert meta["network"] == {"embedding_dim": 8, "units": 6, "cell": "lstm", "layers": 1}
    vocabulary = json.loads((encoder / "vocabulary.json").read_text())
    assert vocabulary[:2] == ["", "[UNK]"] and "cat" in vocabulary
    with np.load(encoder / "weights.npz", allow_pickle=False) as weights:
        assert weights["embedding"].shape == (len(vocabulary), 8)
        assert weights["lstm_kernel"].shape == (8, 24) and weights["lstm_recurrent_kernel"].shape == (6, 24)
        # Both phases' output layers: the bag's over the embedding, the language model's over the LSTM.
        assert weights["bag_weights"].shape == (len(vocabulary), 8) and weights["bag_bias"].shape == (len(vocabulary),)
        assert weights["softmax_weights"].shape == (len(vocabulary), 6)
    training = meta["training"]
    assert training["objective"] == "bag+lm" and training["bag"]["steps"] == 30
    assert training["bag"]["heldout_loss"] > 0 and training["bag"]["unigram_loss"] > 0
    assert training["steps"] == 60 and training["stopped_by"] == "max_steps"
    assert is_encoder_dir(encoder)
    assert not (encoder.parent / ".encoder.checkpoint").exists()  # removed once the encoder is saved


def test_pretraining_lowers_held_out_perplexity_below_the_unigram_bar(corpus):
    from lstm_cli.pretrain import pretrain
    from lstm_cli.texts import Texts

    result = pretrain(_config(max_steps=300, eval_steps=100), Texts(corpus))
    first, best = result.history[0]["perplexity"], result.heldout_perplexity
    # The texts' word order is predictable: a trained model beats word frequencies alone by far.
    assert best < 0.75 * result.unigram_perplexity, (best, result.unigram_perplexity)
    assert best < first


def test_the_budget_stops_it_with_the_best_state_kept(corpus):
    from lstm_cli.pretrain import pretrain
    from lstm_cli.texts import Texts

    result = pretrain(_config(epochs=100_000, budget=2.0), Texts(corpus))
    assert result.stopped_by == "budget"
    best = min(h["perplexity"] for h in result.history)
    assert result.heldout_perplexity == best and result.weights is not None


def test_resume_continues_an_interrupted_run(corpus, tmp_path):
    from lstm_cli.pretrain import pretrain
    from lstm_cli.texts import Texts

    reports = []

    def interrupt_after_two(report):
        reports.append(report.step)
        if len(reports) == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        pretrain(_config(max_steps=40), Texts(corpus), checkpoint_dir=ckpt, on_eval=interrupt_after_two)
    assert reports == [10, 20]
    resumed = pretrain(_config(max_steps=40), Texts(corpus), checkpoint_dir=ckpt, resume=True)
    assert resumed.steps == 40
    assert [h["step"] for h in resumed.history] == [10, 20, 30, 40]  # the first two from before the interruption
    # Another option than the interrupted run's is refused, not silently mixed in.
    from lstm_cli.errors import LstmCliError

    with pytest.raises(LstmCliError, match="other texts or options"):
        pretrain(_config(max_steps=40, learning_rate=0.5), Texts(corpus), checkpoint_dir=ckpt, resume=True)


def test_the_bag_phase_lowers_its_held_out_loss_below_the_unigram_bar(corpus):
    from lstm_cli.pretrain import pretrain
    from lstm_cli.texts import Texts

    result = pretrain(_config(objective="bag", bag_steps=150, bag_eval_steps=50), Texts(corpus))
    bag = result.bag
    # The texts' topics (the sentences' words, the toy rows' words) make a half predict the other half: well
    # below what the targets' frequencies alone score, and lower as it learns.
    assert bag.heldout_loss < 0.9 * bag.unigram_loss, (bag.heldout_loss, bag.unigram_loss)
    assert bag.heldout_loss < bag.history[0]["heldout_loss"] and bag.stopped_by == "bag_steps"
    assert result.heldout_perplexity is None and result.history == []  # no language model
    assert set(result.weights) == {"embedding", "lstm_kernel", "lstm_recurrent_kernel", "lstm_bias", "bag_weights",
                                   "bag_bias"}  # fmt: skip
    np.testing.assert_array_equal(result.weights["embedding"], bag.weights["embedding"])


def test_the_bag_phase_resumes_where_it_was_interrupted(corpus, tmp_path):
    from lstm_cli.pretrain import pretrain
    from lstm_cli.texts import Texts

    reports = []

    def interrupt_after_two(report):
        reports.append(report.step)
        if len(reports) == 2:
            raise KeyboardInterrupt

    config = _config(objective="bag", bag_steps=40)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, Texts(corpus), checkpoint_dir=tmp_path, on_bag_eval=interrupt_after_two)
    resumed = pretrain(config, Texts(corpus), checkpoint_dir=tmp_path, resume=True, on_bag_eval=interrupt_after_two)
    assert reports == [10, 20, 30, 40] and resumed.bag.steps == 40
    assert [h["step"] for h in resumed.bag.history] == [10, 20, 30, 40]  # the first two from before
    assert resumed.bag.texts == 40 * 8
    # Its seconds count the interrupted run's too (as the budget does): at least those at its last checkpoint.
    assert resumed.seconds == resumed.bag.seconds >= resumed.bag.history[1]["seconds"]


def test_a_sigterm_whose_keyboardinterrupt_was_lost_still_stops_pretraining(corpus, tmp_path, monkeypatch):
    """A signal handler's KeyboardInterrupt raised inside a __del__ is printed and ignored by Python. Its handler
    also sets a flag, which pretraining checks between steps: it stops there and writes no encoder."""
    from lstm_cli.cli import _util
    from lstm_cli.cli import pretrain as command

    bag_line, steps = command._bag_line, []

    def lost_interrupt(report):  # after the first evaluation: the handler ran, its exception went nowhere
        steps.append(report.step)
        _util._held["signalled"] = True
        return bag_line(report)

    monkeypatch.setattr(command, "_bag_line", lost_interrupt)
    out = tmp_path / "encoder"
    result = runner.invoke(app, ["pretrain", str(corpus), "-o", str(out), *SMALL, "--objective", "bag",
                                 "--bag-steps", "40"])  # fmt: skip
    assert result.exit_code == 130 and f"{out} is unchanged" in result.stderr, result.output
    assert steps == [10] and not out.exists()


@pytest.mark.slow
def test_bag_then_language_model_resumes_in_either_phase_and_keeps_the_bag_embedding(corpus, tmp_path):
    from lstm_cli.pretrain import pretrain
    from lstm_cli.texts import Texts

    config = _config(objective="bag+lm", bag_steps=40, max_steps=20)
    bag_reports, lm_reports = [], []

    def interrupt_after_two(report):
        bag_reports.append(report.step)
        if len(bag_reports) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(config, Texts(corpus), checkpoint_dir=tmp_path, on_bag_eval=interrupt_after_two)

    def interrupt_the_language_model(report):
        lm_reports.append(report.step)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(config, Texts(corpus), checkpoint_dir=tmp_path, resume=True,
                 on_bag_eval=lambda r: bag_reports.append(r.step), on_eval=interrupt_the_language_model)  # fmt: skip
    assert bag_reports == [10, 20, 30, 40] and lm_reports == [10]
    resumed = pretrain(config, Texts(corpus), checkpoint_dir=tmp_path, resume=True,
                       on_bag_eval=lambda r: bag_reports.append(r.step))  # fmt: skip
    assert bag_reports == [10, 20, 30, 40]  # the finished bag phase is not run again
    assert [h["step"] for h in resumed.bag.history] == [10, 20, 30, 40]
    assert [h["step"] for h in resumed.history] == [10, 20] and resumed.bag.stopped_by == "bag_steps"
    (last,) = tmp_path.glob("bag-latest-*.npz")  # the bag phase's last state, kept in its checkpoint
    with np.load(last) as kept:
        np.testing.assert_array_equal(resumed.weights["embedding"], kept["model/embedding"])  # frozen under the LM


def test_the_budget_is_split_between_the_phases(corpus):
    from lstm_cli.pretrain import pretrain
    from lstm_cli.texts import Texts

    result = pretrain(_config(objective="bag+lm", bag_steps=10**9, epochs=100_000, budget=0.5), Texts(corpus))
    assert result.bag.stopped_by == "budget" and result.stopped_by == "budget"
    assert result.heldout_perplexity is not None and "softmax_weights" in result.weights


def test_texts_from_a_csv_column_and_from_stdin(tmp_path):
    csv_file = write_csv(tmp_path / "t.csv", [(text, "x") for text in sentences(60)], header=("body", "label"))
    for args, stdin in (([str(csv_file), "--text-column", "body"], None), (["-"], "\n".join(sentences(60)))):
        out = tmp_path / f"enc{len(args)}"
        result = runner.invoke(
            app, ["pretrain", *args, "-o", str(out), *SMALL, "--max-steps", "5", "--bag-steps", "5"], input=stdin
        )
        assert result.exit_code == 0, result.output
        assert "cat" in json.loads((out / "vocabulary.json").read_text())


@pytest.fixture(scope="module")
def pretrained_model(encoder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pre")
    data = write_csv(folder / "train.csv", toy_rows(120, seed=1))
    out = folder / "model"
    args = ["train", str(data), "--pretrained", str(encoder), "-m", str(out), *TINY[4:6], *TINY[8:]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_a_pretrained_model_is_an_ordinary_model_and_its_engines_agree(pretrained_model, encoder):
    import lstm_cli

    meta = json.loads((pretrained_model / "metadata.json").read_text())
    assert meta["pretrained"]["id"] == json.loads((encoder / "encoder.json").read_text())["id"]
    assert meta["config"]["pretrained"] == str(encoder) and meta["config"]["units"] == 6
    assert json.loads((pretrained_model / "vocabulary.json").read_text()) == json.loads(
        (encoder / "vocabulary.json").read_text()
    )
    texts = ["the cat sat on the mat", "good great", "", "unseen zorbly words", "awful " * 50]
    with (
        lstm_cli.load(pretrained_model, engine="numpy") as fast,
        lstm_cli.load(pretrained_model, engine="tensorflow") as saved,
    ):  # noqa: E501
        assert fast.engine == "numpy" and saved.engine == "tensorflow"
        np.testing.assert_allclose(fast.predict_proba(texts), saved.predict_proba(texts), atol=1e-5)
    explained = runner.invoke(app, ["explain", "-m", str(pretrained_model), "good great"])
    assert explained.exit_code == 0, explained.output


def test_info_names_the_encoder_a_model_started_from(pretrained_model, encoder):
    described = json.loads((encoder / "encoder.json").read_text())
    shown = runner.invoke(app, ["info", "-m", str(pretrained_model)], env={"COLUMNS": "1000"})  # a row a line
    assert shown.exit_code == 0, shown.output
    row = next(line.split(None, 1)[1] for line in shown.stdout.splitlines() if line.split()[0] == "pretrained")
    tokens, bag = described["training"]["tokens_seen"], described["training"]["bag"]
    assert row.startswith(f"{encoder} (id {described['id']}): bag of words 30 steps, held-out loss "
                          f"{bag['heldout_loss']:.3f}, language model trained on {tokens:,} tokens"), row  # fmt: skip


def test_frozen_encoder_layers_keep_the_encoders_weights_while_the_head_learns(encoder, tmp_path):
    """Training starts from the encoder's weights, and --frozen-epochs keeps them there while the new layers
    learn (the epochs' learning rate is 0 for the encoder's layers only; the scaling is tested on the
    optimizer below)."""
    data = write_csv(tmp_path / "train.csv", toy_rows(60, seed=2))
    args = ["train", str(data), "--pretrained", str(encoder), "-m", "m", "--learning-rate", "0.01", "--epochs", "1",
            "--frozen-epochs", "1", "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from lstm_cli.artifact import network_weights

    arrays = network_weights(tmp_path / "m")
    with np.load(encoder / "weights.npz") as pretrained:
        np.testing.assert_array_equal(arrays["embedding/embeddings"], pretrained["embedding"])
        lstm = {k.rsplit("/", 1)[1]: v for k, v in arrays.items() if k.startswith("lstm_1/")}
        np.testing.assert_array_equal(lstm["kernel"], pretrained["lstm_kernel"])
        np.testing.assert_array_equal(lstm["recurrent_kernel"], pretrained["lstm_recurrent_kernel"])
        np.testing.assert_array_equal(lstm["bias"], pretrained["lstm_bias"])
    assert np.abs(arrays["dense/bias"]).max() > 0  # the new layers learned (their biases start at 0)


def test_the_rate_multiplier_scales_only_its_variables_and_is_adams_without_it():
    from lstm_cli.model import keras, tf
    from lstm_cli.optim import Adam

    def run(optimizer, scale=None):
        a, b = tf.Variable([1.0, -2.0]), tf.Variable([0.5])
        optimizer.build([a, b])
        if scale is not None:
            optimizer.scale_rate([a], tf.Variable(scale))
        for _ in range(3):
            optimizer.apply([tf.constant([0.3, -0.1]), tf.constant([0.2])], [a, b])
        return a.numpy(), b.numpy()

    reference = run(keras.optimizers.Adam(0.1))
    np.testing.assert_array_equal(run(Adam(0.1))[0], reference[0])
    frozen = run(Adam(0.1), scale=0.0)
    np.testing.assert_array_equal(frozen[0], [1.0, -2.0])
    np.testing.assert_array_equal(frozen[1], reference[1])
    half = run(Adam(0.1), scale=0.5)
    np.testing.assert_allclose(half[0] - [1.0, -2.0], (reference[0] - [1.0, -2.0]) / 2, rtol=1e-5)


def test_a_pretrained_model_can_be_continued_with_from(pretrained_model, tmp_path):
    data = write_csv(tmp_path / "new.csv", toy_rows(60, seed=5))
    result = runner.invoke(app, ["train", str(data), "--from", str(pretrained_model), "-m", "child", "--epochs", "1",
                                 "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--units", "32"], "--units 32 conflicts with --pretrained"),
        (["--punctuation", "strip"], "--punctuation strip conflicts with --pretrained"),
        (["--bidirectional"], "--bidirectional True conflicts with --pretrained"),
        (["--from", "somewhere"], "give one"),
    ],
)
def test_options_the_encoder_fixes_are_refused_in_one_line(encoder, tmp_path, extra, expected):
    data = write_csv(tmp_path / "train.csv", toy_rows(30))
    result = runner.invoke(app, ["train", str(data), "--pretrained", str(encoder), *extra, "--quiet"])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "lstm-model").exists()


@pytest.mark.parametrize("extra", [["--frozen-epochs", "1"], ["--pretrained-rate", "0.1"]])
def test_fine_tuning_options_without_an_encoder_are_refused(tmp_path, extra):
    data = write_csv(tmp_path / "train.csv", toy_rows(30))
    result = runner.invoke(app, ["train", str(data), *extra, "--quiet"])
    assert result.exit_code == 2, result.output
    assert "--pretrained-rate and --frozen-epochs need --pretrained ENCODER" in result.stderr, result.stderr


def test_a_folder_that_is_no_encoder_is_refused_both_ways(corpus, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = runner.invoke(
        app, ["pretrain", str(corpus), "-o", str(mine), *SMALL, "--max-steps", "2", "--bag-steps", "2"]
    )
    assert result.exit_code == 2 and "not an lstm-cli encoder directory" in result.stderr, result.output
    assert (mine / "notes.txt").read_text() == "keep me" and len(result.stderr.strip().splitlines()) == 1
    data = write_csv(tmp_path / "train.csv", toy_rows(30))
    result = runner.invoke(app, ["train", str(data), "--pretrained", str(mine), "--quiet"])
    assert result.exit_code == 2 and "not an lstm-cli encoder" in result.stderr, result.output


def test_a_changed_encoder_is_refused(encoder, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(encoder, copy)
    with np.load(copy / "weights.npz") as weights:
        arrays = dict(weights)
    arrays["embedding"] = arrays["embedding"] + 1
    np.savez(copy / "weights.npz", **arrays)
    data = write_csv(tmp_path / "train.csv", toy_rows(30))
    result = runner.invoke(app, ["train", str(data), "--pretrained", str(copy), "--quiet"])
    assert result.exit_code == 1 and "changed since pretrain wrote it" in result.stderr, result.output
