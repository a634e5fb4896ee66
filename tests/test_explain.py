"""`lstm-cli explain`: occlusion scores are the engine's own probability changes; integrated gradients
adds up to the change from the baseline; every output mode gives one result per input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lstm_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def predictor(trained_model):
    from lstm_cli.predict import Predictor

    return Predictor(trained_model)


@pytest.mark.parametrize(
    "text",
    ["good great, really lovely!", "bad", "", "the food was AWFUL -- so-so service", "good " * 10 + "bad"],
)
@pytest.mark.parametrize("label", [None, "neg"])
@pytest.mark.parametrize("unit", ["log-odds", "probability"])
def test_occlusion_scores_are_the_engine_changes_of_the_ablated_texts(predictor, text, label, unit):
    from lstm_cli.explain import log_odds, occlusion

    explanation = occlusion(predictor, text, label=label, unit=unit)
    k = predictor.labels.index(explanation.label)
    ablated = [text[: t.start] + text[t.end :] for t in explanation.tokens]  # each token's characters cut out
    probabilities = predictor.probabilities([text, *ablated])
    assert explanation.label == (label or predictor.labels[int(probabilities[0].argmax())])
    assert explanation.probability == probabilities[0, k] and explanation.unit == unit
    measure = log_odds(probabilities, k) if unit == "log-odds" else probabilities[:, k]
    assert [t.score for t in explanation.tokens] == [float(measure[0] - m) for m in measure[1:]]
    assert [t.token for t in explanation.tokens] == predictor.tokenizer.words(text)


def test_occlusion_reads_only_the_tokens_the_model_saw(predictor):
    from lstm_cli.explain import occlusion

    limit = predictor.tokenizer.max_length
    explanation = occlusion(predictor, "good " * (limit + 7))
    assert len(explanation.tokens) == limit and explanation.unseen_tokens == 7


def test_integrated_gradients_add_up_to_the_change_from_the_baseline(predictor):
    from lstm_cli.explain import IntegratedGradients

    ig = IntegratedGradients(predictor)
    for text in ["good great lovely", "bad awful broken service", "okay"]:
        explanation = ig.explain(text)
        assert explanation.completeness_gap < 1e-3
        # the same prediction as serving gives
        expected = predictor.probabilities([text])[0]
        assert explanation.label == predictor.labels[int(expected.argmax())]
        assert abs(explanation.probability - expected.max()) < 1e-5
        assert len(explanation.tokens) == len(text.split())
    # on the toy task, the sentiment word carries the prediction
    scores = {t.token: t.score for t in ig.explain("the good movie", label="pos").tokens}
    assert scores["good"] > abs(scores["the"]) and scores["good"] > abs(scores["movie"])


@pytest.mark.parametrize("mode", ["argument", "stdin"])
def test_explain_json_gives_one_object_per_input_with_positions(trained_model, mode):
    texts = ["good great", "", "Bad, AWFUL service"]
    args = ["explain", "-m", str(trained_model), "--format", "json"]
    result = runner.invoke(app, args + (texts if mode == "argument" else ["-"]),
                           input="\n".join(texts) + "\n" if mode == "stdin" else None)  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == texts
    for record in records:
        assert record["method"] == "occlusion" and record["label"] == record["predicted"]
        for token in record["tokens"]:
            chunk = record["text"][token["start"] : token["end"]]
            assert token["token"] == "".join(c for c in chunk.lower() if c.isalnum())
    assert [t["token"] for t in records[2]["tokens"]] == ["bad", "awful", "service"]


def test_explain_text_output_is_plain_when_not_a_terminal_and_markup_is_literal(trained_model):
    result = runner.invoke(app, ["explain", "-m", str(trained_model), "[red]good[/red] great", "bad"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "\x1b" not in result.stdout
    label, probability, tokens = lines[0].split("\t")
    assert label in {"pos", "neg", "meh"} and 0 < float(probability) <= 1
    tokens, note = tokens.rsplit("  (", 1)
    assert note == "scores in log-odds)"
    # the brackets split words (--punctuation split): the tokens, shown as they are, not as markup
    assert [pair.split(" ")[0] for pair in tokens.split("  ")] == ["red", "good", "red", "great"]


def test_explain_another_label_and_integrated_gradients_from_the_command_line(trained_model):
    args = ["explain", "-m", str(trained_model), "good great", "--format", "json", "--label", "neg"]
    occluded = json.loads(runner.invoke(app, args).stdout)
    result = runner.invoke(app, [*args, "--method", "integrated-gradients"])
    assert result.exit_code == 0, result.output
    ig = json.loads(result.stdout)
    assert occluded["label"] == ig["label"] == "neg" and occluded["predicted"] == "pos"
    assert ig["completeness_gap"] < 1e-3 and occluded["completeness_gap"] is None
    assert np.sign(ig["tokens"][0]["score"]) == np.sign(occluded["tokens"][0]["score"]) == -1


def test_explain_rejects_a_label_the_model_does_not_have(trained_model):
    result = runner.invoke(app, ["explain", "-m", str(trained_model), "good", "--label", "nope"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "'nope' is not one of the model's labels" in result.stderr
