"""`explain` ranks tokens on confident predictions: occlusion scores in log-odds, which keep their spread where
the probability saturates (float32 rounds p to 1.0 and every probability change to 0)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, write_csv
from typer.testing import CliRunner

from lstm_cli.cli import app

runner = CliRunner()

# A corpus in the style of the SMS spam set: spam and ham words apart, everyday words shared by both.
SPAM = "winner won free prize claim cash urgent txt award guaranteed".split()
HAM = "ok later lol home dinner tomorrow love sorry meeting mum".split()
SHARED = "you have a to now the your call me i".split()
SPAM_TEXT = "WINNER!! You have won a free prize, call 0800 now to claim your cash"


def sms_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = rng.sample(SPAM if label == "spam" else HAM, rng.randint(2, 4))
        words += [rng.choice(SHARED) for _ in range(rng.randint(2, 6))]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def spam_model(tmp_path_factory):
    """A tiny model that is sure of SPAM_TEXT: p(spam) rounds to 1.0 in float32 (about 1 - 1e-11)."""
    d = tmp_path_factory.mktemp("spam")
    model = d / "model"
    args = ["train", str(write_csv(d / "train.csv", sms_rows(240, seed=7))), "-m", str(model), *TINY, "--epochs", "8"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return model


def _leads(scores: dict[str, float], words: set[str]) -> bool:
    """Whether every token in `words` scores strictly above every other token."""
    return min(scores[w] for w in words) > max(s for t, s in scores.items() if t not in words)


def test_spam_words_lead_the_default_explanation_of_a_confident_spam_text(spam_model):
    result = runner.invoke(app, ["explain", "-m", str(spam_model), "--format", "json", SPAM_TEXT])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["label"] == "spam" and record["unit"] == "log-odds" and record["method"] == "occlusion"
    scores = {t["token"]: t["score"] for t in record["tokens"]}
    spam_words = set(SPAM) & set(scores)
    assert spam_words == {"winner", "won", "free", "prize", "claim", "cash"}
    assert _leads(scores, spam_words), sorted(scores.items(), key=lambda kv: -kv[1])


def test_occlusion_on_the_probability_could_not_rank_that_text(spam_model):
    """The premise of log-odds: this model is so sure that the probability shows nothing."""
    from lstm_cli.explain import occlusion
    from lstm_cli.predict import Predictor

    explanation = occlusion(Predictor(spam_model), SPAM_TEXT, unit="probability")
    scores = {t.token: t.score for t in explanation.tokens}
    assert explanation.probability == 1.0  # float32 rounded it
    assert not _leads(scores, set(SPAM) & set(scores))
    assert max(abs(s) for s in scores.values()) < 1e-6


def test_the_plain_line_names_the_unit_and_keeps_the_ranking_readable(spam_model):
    result = runner.invoke(app, ["explain", "-m", str(spam_model), SPAM_TEXT])
    assert result.exit_code == 0, result.output
    label, _, rest = result.stdout.rstrip("\n").split("\t")
    tokens, note = rest.rsplit("  (", 1)
    assert label == "spam" and note == "scores in log-odds)"
    shown = {token: float(score) for token, score in (pair.split(" ") for pair in tokens.split("  "))}
    assert _leads(shown, {"winner", "won", "free", "prize", "claim", "cash"})  # still apart at 2 decimals


def test_integrated_gradients_refuse_log_odds(spam_model):
    result = runner.invoke(app, ["explain", "-m", str(spam_model), "--method", "integrated-gradients",
                                 "--unit", "log-odds", SPAM_TEXT])  # fmt: skip
    assert result.exit_code == 2 and result.stdout == ""
    assert "--unit" in result.stderr and "--method occlusion" in result.stderr


# The shared data sets beside the checkout, as the benchmarks take them (../shared/datasets), or named here.
DATASETS = Path(os.environ.get("LSTM_CLI_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
SMS_SPAM = DATASETS / "sms_spam" / "train.csv"


@pytest.mark.slow
@pytest.mark.skipif(not SMS_SPAM.exists(), reason="the SMS spam data set is not on this machine")
def test_spam_words_lead_on_a_model_of_the_real_sms_spam_set(tmp_path):
    """The issue's example, on a model trained with the defaults (about 15 s on 2 cores)."""
    model = tmp_path / "sms"
    result = runner.invoke(app, ["train", str(SMS_SPAM), "-m", str(model), "--quiet"])
    assert result.exit_code == 0, result.output
    text = "WINNER!! You have won a free ticket, call 0800 now to claim"
    record = json.loads(runner.invoke(app, ["explain", "-m", str(model), "--format", "json", text]).stdout)
    assert record["label"] == "spam" and record["probability"] > 0.999
    ranked = [t["token"] for t in sorted(record["tokens"], key=lambda t: -t["score"])]
    assert set(ranked[:3]) <= {"won", "free", "call", "claim", "winner", "0800", "prize"}, ranked
    assert ranked[-1] in {"you", "have", "a", "to", "now", "ticket"}, ranked


def _softmax32(logits: np.ndarray) -> np.ndarray:
    """As the engine's (and Keras's) softmax computes it, in float32."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("labels", [2, 3, 77])
@pytest.mark.parametrize("spread", [1.0, 10.0, 40.0])
def test_log_odds_from_float32_probabilities_match_the_logits(labels, spread):
    """log p_k - log(1 - p_k) computed from the probabilities equals z_k - logsumexp(z_others), also where p_k
    rounds to 1.0: the other labels' probabilities keep what 1 - p_k loses (up to logit gaps of 80; float32's
    exponential leaves the normal range near 87)."""
    from lstm_cli.explain import log_odds

    rng = np.random.default_rng(labels)
    logits = rng.uniform(-spread, spread, size=(50, labels)).astype(np.float32)
    probabilities = _softmax32(logits)
    z = logits.astype(np.float64)
    for k in range(min(labels, 3)):
        others = np.delete(z, k, axis=1)
        top = others.max(axis=1)
        expected = z[:, k] - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))
        np.testing.assert_allclose(log_odds(probabilities, k), expected, atol=1e-4, rtol=1e-5)


def test_log_odds_stay_finite_past_float32s_range():
    from lstm_cli.explain import log_odds

    probabilities = _softmax32(np.array([[0.0, 300.0], [300.0, 0.0]], np.float32))
    assert probabilities.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    values = log_odds(probabilities, 1)
    assert np.isfinite(values).all() and values[0] > 80 and values[1] < -80
