"""Multi-label models: reading label sets, thresholds chosen and saved, predict/evaluate output, both engines
and the SavedModel, metrics against hand-computed cases, and the commands that refuse such models."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.cli import app
from tests.conftest import TINY, unescape_tsv, write_csv
from tests.test_report import assert_self_contained

runner = CliRunner()

TOPICS = {
    "food": "pizza pasta soup bread salad cake".split(),
    "staff": "waiter waitress staff manager host chef".split(),
    "pos": "good great lovely excellent fine happy".split(),
    "neg": "bad awful poor terrible sad horrible".split(),
}
FILLER = "the a it was very really quite and".split()
# Labels that would break a naive output format: the separator of CSV (and of the labels' default), a tab,
# quotes, a backslash escape's look-alike, a line break, and non-ASCII text.
HOSTILE = {"food": 'a,b "c"', "staff": "tab\there", "pos": "back\\tslash\nnewline", "neg": "ünï ✓ 'q'"}


def label_rows(n: int, seed: int, names: dict[str, str] | None = None) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topics = rng.sample(sorted(TOPICS), rng.choice([1, 1, 2, 2, 3]))
        words = [rng.choice(TOPICS[t]) for t in topics for _ in range(rng.randint(1, 2))]
        words += [rng.choice(FILLER) for _ in range(rng.randint(0, 3))]
        rng.shuffle(words)
        rows.append((" ".join(words), [names[t] if names else t for t in topics]))
    return rows


def train(tmp_path, rows, *args: str, separator: str = ",") -> tuple[object, str]:
    data = write_csv(tmp_path / "train.csv", [(text, separator.join(labels)) for text, labels in rows])
    model = tmp_path / "model"
    result = runner.invoke(app, ["train", str(data), "-m", str(model), "--multi-label", *TINY, "--epochs", "8",
                                 *args])  # fmt: skip
    assert result.exit_code == 0, result.output
    return model, result


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("multilabel")
    trained, _ = train(d, label_rows(300, seed=1))
    write_csv(d / "test.csv", [(text, ",".join(labels)) for text, labels in label_rows(60, seed=2)])
    return trained


def metadata(model) -> dict:
    return json.loads((model / "metadata.json").read_text(encoding="utf-8"))


def predict_json(model, texts: list[str], *args: str) -> list[dict]:
    result = runner.invoke(app, ["predict", "-m", str(model), "-f", "json", *args, "-"], input="\n".join(texts) + "\n")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


TEXTS = ["great pizza", "awful waiter", "the", "lovely soup and a terrible manager", "quite"]


def test_thresholds_are_saved_and_used(model):
    saved = metadata(model)
    assert saved["config"]["multi_label"] is True
    assert saved["labels"] == ["food", "neg", "pos", "staff"]
    section = saved["multi_label"]
    assert section["mode"] in ("global", "per_label") and len(section["thresholds"]) == 4
    assert set(section["cross_validated_micro_f1"]) == {"global", "per_label"}
    thresholds = dict(zip(saved["labels"], section["thresholds"], strict=True))
    for record in predict_json(model, TEXTS):
        probabilities = record["probabilities"]
        over = {label for label, p in probabilities.items() if np.float32(p) >= np.float32(thresholds[label])}
        assert set(record["labels"]) == over
        # most probable first; independent sigmoids, not a distribution
        assert [probabilities[label] for label in record["labels"]] == sorted(
            (probabilities[label] for label in record["labels"]), reverse=True
        )
    assert predict_json(model, ["great pizza"])[0]["labels"][:2] in (["pos", "food"], ["food", "pos"])


@pytest.mark.parametrize("threshold", [0.05, 0.5, 0.95])
def test_threshold_overrides_the_saved_ones(model, threshold):
    for record in predict_json(model, TEXTS, "--threshold", str(threshold)):
        over = {label for label, p in record["probabilities"].items() if p >= threshold}
        assert set(record["labels"]) == over
    low = predict_json(model, TEXTS, "--threshold", "0.01")
    assert sum(len(r["labels"]) for r in low) > sum(len(r["labels"]) for r in predict_json(model, TEXTS))


def test_tsv_and_label_lines_match_json(model):
    records = predict_json(model, TEXTS, "--threshold", "0.3")
    for fmt in ("tsv", "label"):
        result = runner.invoke(app, ["predict", "-m", str(model), "-f", fmt, "--threshold", "0.3", *TEXTS])
        assert result.exit_code == 0, result.output
        lines = result.stdout.split("\n")
        assert lines[-1] == "" and len(lines) == len(TEXTS) + 1  # one line per input
        for line, record in zip(lines, records, strict=False):
            fields = line.split("\t") if line else []
            if fmt == "tsv":
                labels, probabilities = fields[0::2], [float(p) for p in fields[1::2]]
                assert probabilities == [record["probabilities"][label] for label in record["labels"]]
            else:
                labels = fields
            assert [unescape_tsv(f) for f in labels] == record["labels"]


def test_a_text_over_no_threshold_gets_an_empty_line(model):
    result = runner.invoke(app, ["predict", "-m", str(model), "--threshold", "1", "great pizza", "the"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "\n\n"
    assert [r["labels"] for r in predict_json(model, ["the"], "--threshold", "1")] == [[]]


def test_engines_and_saved_model_agree(model):
    assert_engines_agree(model)


def assert_engines_agree(model) -> None:
    import tensorflow as tf

    from lstm_cli.predict import Predictor

    texts = [*TEXTS, "", "pizza " * 50, "unseen words only", "zorbly quxful pizza"]
    numpy_engine = Predictor(model, engine="numpy")
    tensorflow = Predictor(model, engine="tensorflow")
    assert numpy_engine.engine == "numpy"
    ours = numpy_engine.probabilities(texts)
    np.testing.assert_allclose(ours, tensorflow.probabilities(texts), atol=1e-5)
    serve = tf.saved_model.load(str(model)).signatures["serving_default"]
    outputs = serve(text=tf.constant(texts))
    np.testing.assert_allclose(ours, outputs["probabilities"].numpy(), atol=1e-5)
    assert not np.allclose(ours.sum(axis=1), 1.0)  # sigmoids, not a softmax
    thresholds = np.array(metadata(model)["multi_label"]["thresholds"], np.float32)
    np.testing.assert_array_equal(outputs["selected"].numpy(), outputs["probabilities"].numpy() >= thresholds)


def test_evaluate_reports_the_metrics_of_predict(model):
    test = model.parent / "test.csv"
    result = runner.invoke(app, ["evaluate", str(test), "-m", str(model), "--json", "--threshold", "0.4"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = label_rows(60, seed=2)
    predicted = predict_json(model, [text for text, _ in rows], "--threshold", "0.4")
    labels = metadata(model)["labels"]
    truth = np.array([[label in row for label in labels] for _, row in rows])
    chosen = np.array([[label in r["labels"] for label in labels] for r in predicted])
    hits = (truth & chosen).sum()
    assert report["micro_f1"] == pytest.approx(2 * hits / (truth.sum() + chosen.sum()))
    assert report["subset_accuracy"] == pytest.approx((truth == chosen).all(axis=1).mean())
    assert report["hamming_loss"] == pytest.approx((truth != chosen).mean())
    assert report["thresholds"] == [0.4] * 4 and report["rows"]["evaluated"] == 60
    table = runner.invoke(app, ["evaluate", str(test), "-m", str(model)], env={"COLUMNS": "100"})
    assert table.exit_code == 0, table.output
    for words in ("micro-F1", "macro-F1", "subset accuracy", "hamming loss", "staff"):
        assert words in table.stdout


def test_report_against_a_hand_computed_case():
    from lstm_cli.multilabel import report

    # rows x labels (a, b, c)
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    chosen = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]])
    r = report(truth, chosen, ["a", "b", "c"])
    # a: tp 2, fp 0, fn 0 -> F1 1; b: tp 2 -> 1; c: tp 0, fp 1, fn 2 -> 0. micro: tp 4, fp 1, fn 2.
    assert r["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert r["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)
    assert r["subset_accuracy"] == pytest.approx(1 / 4)  # only row 3 is exact
    assert r["hamming_loss"] == pytest.approx(3 / 12)  # cells wrong: (0,c) (1,c) (3,c)
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "predicted": 1}
    assert r["per_class"]["a"]["precision"] == 1.0 and r["per_class"]["b"]["recall"] == 1.0


def test_global_and_per_label_thresholds_are_chosen_on_held_out_rows():
    from lstm_cli.multilabel import choose_thresholds, fit_thresholds

    rng = np.random.default_rng(0)
    truth = rng.random((400, 2)) < 0.4
    # label 0 separates at 0.8, label 1 at 0.2: only per-label thresholds get both right
    probabilities = np.where(truth, [0.85, 0.25], [0.75, 0.15]).astype(np.float32)
    fitted = fit_thresholds(probabilities, truth)
    assert 0.75 < fitted["per_label"][0] <= 0.85 and 0.15 < fitted["per_label"][1] <= 0.25
    chosen = choose_thresholds(probabilities, truth, seed=1)
    assert chosen["mode"] == "per_label" and chosen["validation_micro_f1"] == 1.0
    # one boundary for both labels: one threshold is as good, and per label does not win
    same = np.where(truth, 0.6, 0.3).astype(np.float32)
    assert choose_thresholds(same, truth, seed=1)["mode"] == "global"
    assert choose_thresholds(np.zeros((0, 2), np.float32), np.zeros((0, 2)), seed=1)["thresholds"] == [0.5, 0.5]


def test_hostile_labels_read_back_unambiguously(tmp_path):
    rows = label_rows(200, seed=3, names=HOSTILE)
    model, _ = train(tmp_path, rows, "--label-separator", "|", separator="|")
    assert sorted(metadata(model)["labels"]) == sorted(HOSTILE.values())
    records = predict_json(model, TEXTS, "--threshold", "0.2")
    for fmt in ("tsv", "label"):
        result = runner.invoke(app, ["predict", "-m", str(model), "-f", fmt, "--threshold", "0.2", *TEXTS])
        assert result.exit_code == 0, result.output
        lines = result.stdout.split("\n")[:-1]
        assert len(lines) == len(TEXTS)
        for line, record in zip(lines, records, strict=True):
            fields = line.split("\t") if line else []
            labels = fields[0::2] if fmt == "tsv" else fields
            assert [unescape_tsv(f) for f in labels] == record["labels"]
    assert any(len(r["labels"]) > 1 for r in records)
    write_csv(tmp_path / "test.csv", [(t, "|".join(labels)) for t, labels in rows[:40]])
    result = runner.invoke(app, ["evaluate", str(tmp_path / "test.csv"), "-m", str(model), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["per_class"]) == set(HOSTILE.values())
    assert_tables_hold_the_label_sets(model, tmp_path, records)


def assert_tables_hold_the_label_sets(model, tmp_path, records: list[dict]) -> None:
    """predict --input on CSV, TSV and JSON Lines tables of TEXTS (at --threshold 0.2) gives each row the labels
    and probabilities predict's json lines give: the cells JSON arrays, the JSON Lines fields lists."""
    import csv
    import io

    for name, delimiter in (("t.csv", ","), ("t.tsv", "\t")):
        write_csv(tmp_path / name, [(str(i), text) for i, text in enumerate(TEXTS)], ("id", "text"), delimiter)
        result = runner.invoke(app, ["predict", "-m", str(model), "--input", str(tmp_path / name), "--threshold",
                                     "0.2", "--all-probabilities"])  # fmt: skip
        assert result.exit_code == 0, result.output
        header, *rows = list(csv.reader(io.StringIO(result.stdout, newline=""), delimiter=delimiter))
        labels = metadata(model)["labels"]
        assert header == ["id", "text", "predicted_labels", "predicted_probabilities", *(f"p_{x}" for x in labels)]
        assert [row[:2] for row in rows] == [[str(i), text] for i, text in enumerate(TEXTS)]
        for row, record in zip(rows, records, strict=True):
            assert json.loads(row[2]) == record["labels"]
            assert json.loads(row[3]) == [record["probabilities"][x] for x in record["labels"]]
            assert [float(p) for p in row[4:]] == [record["probabilities"][x] for x in labels]
            assert "\n" not in row[2] and "\t" not in row[2]  # JSON escaped them: one physical line a row
    lines = "".join(json.dumps({"text": text, "n": i}) + "\n" for i, text in enumerate(TEXTS))
    result = runner.invoke(app, ["predict", "-m", str(model), "-", "--input-format", "jsonl", "--threshold", "0.2"],
                           input=lines)  # fmt: skip
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [list(o) for o in out] == [["text", "n", "predicted_labels", "predicted_probabilities"]] * len(TEXTS)
    assert [o["predicted_labels"] for o in out] == [r["labels"] for r in records]


def test_fasttext_lines_with_several_labels(tmp_path):
    from lstm_cli.data import stream_labeled
    from lstm_cli.multilabel import MultiLabelStream

    path = tmp_path / "train.txt"
    path.write_text("__label__a __label__b,c some text\n__label__a other text\n__label__x ,,\n", encoding="utf-8")
    rows = list(MultiLabelStream(stream_labeled(path), ",").label_sets())
    # fastText labels are taken whole: a comma in one is part of it
    assert rows == [("some text", ("a", "b,c")), ("other text", ("a",)), (",,", ("x",))]


def test_label_fields_are_split_stripped_and_deduplicated(tmp_path):
    from lstm_cli.data import stream_labeled
    from lstm_cli.multilabel import MultiLabelStream

    data = write_csv(tmp_path / "d.csv", [("one", " a , b,a,"), ("two", "b"), ("three", " , ")])
    stream = MultiLabelStream(stream_labeled(data), ",")
    assert list(stream.label_sets()) == [("one", ("a", "b")), ("two", ("b",))]
    assert stream.skipped["empty label"] == 1 and stream.rows == 2
    assert [key for _, key in stream] == ['["a", "b"]', '["b"]']


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "--top-k", "2", "x"], "--top-k is for single-label models"),
        (["predict", "--min-probability", "0.5", "x"], "--min-probability is for single-label models"),
        (["predict", "--all-probabilities", "x"], "--all-probabilities is for single-label models"),
        (["predict", "--threshold", "0", "x"], "--threshold must be a probability above 0"),
        (["predict", "--threshold", "1.5", "x"], "--threshold must be a probability above 0"),
        (["evaluate", "TEST", "--errors", "e.csv"], "--errors is for single-label models"),
        (["evaluate", "TEST", "--min-probability", "0.5"], "--min-probability is for single-label models"),
    ],
)
def test_options_a_multi_label_model_refuses(model, args, message):
    args = [str(model.parent / "test.csv") if a == "TEST" else a for a in args]
    result = runner.invoke(app, [*args, "-m", str(model)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1


def test_tables_get_label_sets(model, tmp_path):
    assert_tables_hold_the_label_sets(model, tmp_path, predict_json(model, TEXTS, "--threshold", "0.2"))
    table = write_csv(tmp_path / "t.csv", [("great pizza", "x")])
    for args, message in ((["--top-k", "2"], "--top-k is for single-label models"),
                          (["--min-probability", "0.5"], "--min-probability is for single-label models")):  # fmt: skip
        result = runner.invoke(app, ["predict", "-m", str(model), "--input", str(table), *args])
        assert result.exit_code == 2 and message in result.stderr and result.stdout == ""
    clash = write_csv(tmp_path / "c.csv", [("great pizza", "x")], ("text", "predicted_labels"))
    result = runner.invoke(app, ["predict", "-m", str(model), "--input", str(clash)])
    assert result.exit_code == 2 and "--column-prefix" in result.stderr
    result = runner.invoke(app, ["predict", "-m", str(model), "--input", str(clash), "--column-prefix", "new_"])
    assert result.exit_code == 0 and result.stdout.startswith("text,predicted_labels,new_predicted_labels,")


def test_report_shows_evaluates_metrics_thresholds_and_label_sets(model, tmp_path, monkeypatch):
    import lstm_cli.charts

    monkeypatch.setattr(lstm_cli.charts, "_svg", lambda fig: "<svg></svg>")  # drawn in test_report_escapes_...

    test = str(model.parent / "test.csv")
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", test, "-m", str(model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    page = out.read_text(encoding="utf-8")
    parsed = assert_self_contained(page)
    assert parsed.sections == ["summary", "per-label", "thresholds", "calibration", "training", "errors", "model-card"]
    evaluation = json.loads(runner.invoke(app, ["evaluate", test, "-m", str(model), "--json"]).stdout)
    for key in ("micro_f1", "macro_f1", "hamming_loss"):
        assert f"{evaluation[key]:.3f}" in parsed.text
    assert f"{evaluation['subset_accuracy']:.1%}" in parsed.text
    for label, scores in evaluation["per_class"].items():  # the per-label table: label, threshold, P, R, F1, ...
        threshold = metadata(model)["multi_label"]["thresholds"][evaluation["labels"].index(label)]
        cells = [label, f"{threshold:g}", *(f"{scores[k]:.3f}" for k in ("precision", "recall", "f1"))]
        assert "".join(cells) in parsed.text
    # The worst errors: each shows the label set predict gives that text, against the true one.
    rows = label_rows(60, seed=2)
    predicted = predict_json(model, [text for text, _ in rows])
    wrong = [(r, set(true)) for r, (_, true) in zip(predicted, rows, strict=True) if set(r["labels"]) != set(true)]
    heads = re.findall(r'<div class="head">(.*?)</div>', page)
    assert len(heads) == min(10, len(wrong)) > 0
    shown_sets = {(tuple(sorted(re.findall(r"<b class=\"\w+\">([^<]*)</b>", h.split("&middot;")[0]))),
                   tuple(sorted(re.findall(r"<b class=\"\w+\">([^<]*)</b>", h.split("&middot;")[1]))))
                  for h in heads}  # fmt: skip
    expected = {(tuple(sorted(r["labels"])), tuple(sorted(true))) for r, true in wrong}
    assert shown_sets <= expected


def test_report_threshold_replaces_the_saved_ones(model, monkeypatch):
    import lstm_cli.charts

    monkeypatch.setattr(lstm_cli.charts, "_svg", lambda fig: "<svg></svg>")  # drawn in test_report_escapes_...
    test = str(model.parent / "test.csv")
    at = runner.invoke(app, ["report", test, "-m", str(model), "-o", "-", "--threshold", "0.9", "--show-errors", "0"])
    assert at.exit_code == 0, at.output
    strict = json.loads(runner.invoke(app, ["evaluate", test, "-m", str(model), "--json", "--threshold", "0.9"]).stdout)
    assert f"{strict['micro_f1']:.3f}" in at.stdout and "--threshold 0.9</b> replaces" in at.stdout
    assert "none is shown (--show-errors 0)" in at.stdout


def test_report_worst_errors_by_hand():
    from lstm_cli.multilabel_report import worst_errors, wrongest_label

    truth = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probabilities = np.array([[0.9, 0.7], [0.2, 0.1], [0.6, 0.55], [0.3, 0.4]], np.float32)
    chosen = probabilities >= 0.5  # row 0: b extra at 0.7; row 1: b missed, 1 - 0.1; rows 2, 3 right
    assert worst_errors(truth, probabilities, chosen, 10) == [1, 0]
    assert worst_errors(truth, probabilities, chosen, 1) == [1]
    assert wrongest_label(truth[1], probabilities[1], chosen[1]) == 1
    assert wrongest_label(truth[0], probabilities[0], chosen[0]) == 1


def synthetic_report(labels: list[str], texts: list[str]):
    """A MultiLabelInput with random probabilities, its metrics, and the first three wrong rows explained."""
    from lstm_cli.explain import Explanation, TokenScore
    from lstm_cli.multilabel import report as metrics
    from lstm_cli.multilabel_report import MultiLabelInput

    rng = np.random.default_rng(0)
    n, rows = len(labels), len(texts)
    truth = (rng.random((rows, n)) < 0.4).astype(np.float32)
    probabilities = np.clip(truth * 0.5 + rng.random(truth.shape) * 0.6, 0, 1).astype(np.float32)
    evaluation = metrics(truth, probabilities >= 0.5, labels)
    evaluation.update(
        rows={"read": rows, "evaluated": rows, "unknown_label": 0, "skipped": {}},
        unknown_labels={},
        data={"path": "<d>.csv", "rows": rows, "sha256": "ab" * 32},
        model="<m>",
        thresholds=[0.5] * n,
    )
    meta = {"id": "x", "labels": labels, "config": {}, "multi_label": {"mode": "global", "thresholds": [0.5] * n},
            "training": {"history": [{"loss": 0.5, "val_loss": 0.6, "val_micro_f1": 0.5}]}}  # fmt: skip
    report = MultiLabelInput(labels, texts, truth, probabilities, np.full(n, 0.5, np.float32), evaluation, meta)
    for i in np.flatnonzero(((probabilities >= 0.5) != (truth > 0)).any(axis=1))[:3].tolist():
        tokens = [TokenScore(m.group(), m.start(), m.end(), 0.5) for m in re.finditer(r"\S+", texts[i])]
        report.explanations[i] = Explanation(texts[i], labels[0], 0.5, labels[0], "occlusion", tokens, 0)
    return report


def test_report_escapes_labels_and_texts():
    from lstm_cli.multilabel_report import render
    from lstm_cli.render import shown

    labels = [*HOSTILE.values(), "<script>alert(1)</script>", "\"&'<>", "$x^2$", "a\x1bb"]
    report = synthetic_report(labels, [f"<img src=x onerror=alert({i})> & 中文" for i in range(40)])
    page = render(report)
    parsed = assert_self_contained(page)
    assert parsed.tags.count("svg") == 4  # per label, thresholds, calibration, training
    assert "<img" not in page and "<script>" not in page and "<d>" not in page
    for label in labels:
        assert shown(label) in parsed.text
    assert report.explanations
    for i in report.explanations:
        assert report.texts[i] in parsed.text


@settings(max_examples=10, deadline=None)
@given(
    labels=st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=5, unique=True),
    text=st.text(min_size=1, max_size=30),
)
def test_report_shows_any_labels_and_texts_literally(labels, text):
    """Whatever the labels and texts hold, the page loads nothing and shows them as written (charts stubbed:
    drawn in the test above)."""
    from unittest import mock

    from lstm_cli.multilabel_report import render
    from lstm_cli.render import shown

    report = synthetic_report(labels, [f"{text} {i}" for i in range(12)])
    with mock.patch("lstm_cli.charts._svg", lambda fig: "<svg></svg>"):
        page = render(report)
    parsed = assert_self_contained(page)
    assert parsed.tags.count("script") == 0
    for label in labels:
        assert shown(label) in parsed.text
    for i in report.explanations:  # each token of the text shown, as it is
        assert all(m.group() in parsed.text for m in re.finditer(r"\S+", report.texts[i]))


def test_serve_answers_with_the_saved_models_selected_output(model):
    from google.protobuf.json_format import MessageToDict
    from starlette.testclient import TestClient
    from tensorflow.core.protobuf import saved_model_pb2

    from lstm_cli.predict import Predictor
    from lstm_cli.serve.app import build_app

    predictor = Predictor(model)
    server = build_app([predictor.probabilities], name="m", labels=predictor.labels, thresholds=predictor.thresholds)
    with TestClient(server) as client:
        rows = client.post("/v1/models/m:predict", json={"instances": TEXTS}).json()["predictions"]
        columns = client.post("/v1/models/m:predict", json={"inputs": TEXTS}).json()["outputs"]
        ours = client.get("/v1/models/m/metadata").json()["metadata"]["signature_def"]["signature_def"]
    expected = predictor.probabilities(TEXTS) >= predictor.thresholds
    assert [row["selected"] for row in rows] == expected.tolist() == columns["selected"]
    assert any(sum(row) > 1 for row in expected.tolist())
    saved = saved_model_pb2.SavedModel.FromString((model / "saved_model.pb").read_bytes())
    options = {"preserving_proto_field_name": True}
    try:
        real = MessageToDict(saved.meta_graphs[0], always_print_fields_with_no_presence=True, **options)
    except TypeError:  # protobuf < 5.26
        real = MessageToDict(saved.meta_graphs[0], including_default_value_fields=True, **options)
    for signature in real["signature_def"].values():
        signature.setdefault("defaults", {})
    assert ours == real["signature_def"]


def test_single_label_options_and_models_refuse_multi_label_ones(trained_model, data_dir):
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--threshold", "0.5", "x"])
    assert result.exit_code == 2 and "--threshold is for multi-label models" in result.stderr
    test = str(data_dir / "test.csv")
    result = runner.invoke(app, ["evaluate", test, "-m", str(trained_model), "--threshold", "0.5"])
    assert result.exit_code == 2 and "--threshold is for multi-label models" in result.stderr
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), "--label-separator", ";"])
    assert result.exit_code == 2 and "--label-separator is for --multi-label" in result.stderr
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), "--multi-label", "--class-weight", "balanced"])
    assert result.exit_code == 2 and "--class-weight is for single-label models" in result.stderr


def test_explain_scores_a_labels_own_log_odds(model):
    from lstm_cli.explain import occlusion
    from lstm_cli.predict import Predictor

    predictor = Predictor(model)
    explanation = occlusion(predictor, "lovely soup and a terrible waiter", label="neg")
    p = predictor.probabilities(["lovely soup and a terrible waiter", "lovely soup and a waiter"]).astype(np.float64)
    k = predictor.labels.index("neg")
    odds = np.log(p[:, k]) - np.log(1 - p[:, k])  # the sigmoid's own odds, not the other labels' sum
    scores = {t.token: t.score for t in explanation.tokens}
    assert scores["terrible"] == pytest.approx(odds[0] - odds[1], abs=1e-4)
    assert scores["terrible"] > 0
    result = runner.invoke(app, ["explain", "-m", str(model), "--format", "json", "great pizza"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] in ("pos", "food")


@pytest.mark.slow
def test_tune_ranks_multi_label_trials_by_validation_micro_f1(tmp_path):
    from lstm_cli.config import TrainConfig
    from lstm_cli.multilabel import keyed_data
    from lstm_cli.tune import tune

    write_csv(tmp_path / "t.csv", [(text, "|".join(labels)) for text, labels in label_rows(120, seed=4, names=HOSTILE)])
    write_csv(tmp_path / "v.csv", [(text, "|".join(labels)) for text, labels in label_rows(40, seed=5, names=HOSTILE)])
    data, validation = (keyed_data(tmp_path / name, "|") for name in ("t.csv", "v.csv"))
    base = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, bigram_buckets=0, epochs=1,
                       batch_size=16, learning_rate=0.02, multi_label=True, label_separator="|")  # fmt: skip
    result = tune(base, data, budget_seconds=600, metric="micro_f1", max_trials=2, validation=validation)
    scores = [t.micro_f1 for t in result.trials]
    assert len(scores) == 2 and result.best_trial == 1 + int(np.argmax(scores))
    # The best trial's score is what training measured on the same rows, by its own path (the token cache).
    assert scores[result.best_trial - 1] == pytest.approx(result.best.multi_label["validation_micro_f1"], abs=1e-6)
    assert sorted(result.best.labels) == sorted(HOSTILE.values())


@pytest.mark.slow
def test_tune_trains_multi_label_trials_ranked_by_validation_micro_f1(tmp_path):
    from tests.test_tune import TINY_SET

    write_csv(tmp_path / "t.csv", [(text, "|".join(labels)) for text, labels in label_rows(120, seed=4, names=HOSTILE)])
    write_csv(tmp_path / "v.csv", [(text, "|".join(labels)) for text, labels in label_rows(40, seed=5, names=HOSTILE)])
    tuned = tmp_path / "tuned"
    result = runner.invoke(app, ["tune", str(tmp_path / "t.csv"), "--multi-label", "--label-separator", "|",
                                 "--validation-data", str(tmp_path / "v.csv"), "--trials", "1", "-m", str(tuned),
                                 *TINY_SET, "--set", "epochs=1", "-f", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    tuning = json.loads(result.stdout)
    assert tuning["metric"] == "micro_f1" and "micro_f1" in result.stderr.splitlines()[1]
    saved = metadata(tuned)
    assert saved["config"]["multi_label"] and sorted(saved["labels"]) == sorted(HOSTILE.values())
    # The trial's score is the saved model's micro-F1 on the validation rows, at its saved thresholds.
    evaluation = runner.invoke(app, ["evaluate", str(tmp_path / "v.csv"), "-m", str(tuned), "--json"])
    scores = json.loads(evaluation.stdout)
    trial = tuning["trials"][0]
    assert trial["micro_f1"] == pytest.approx(scores["micro_f1"], abs=1e-6)
    assert trial["accuracy"] == pytest.approx(scores["subset_accuracy"], abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "multi_label=true"], "use tune --multi-label"),
        (["--metric", "micro_f1"], "micro_f1 ranks multi-label trials"),
        (["--label-separator", "|"], "--label-separator is for --multi-label"),
        (["--multi-label", "--class-weight", "balanced"], "--class-weight is for single-label models"),
    ],
)
def test_tune_multi_label_misuse(data_dir, args, message):
    result = runner.invoke(app, ["tune", str(data_dir / "train.csv"), *args])
    assert result.exit_code == 2 and message in result.stderr and result.stdout == ""


def test_python_api(model):
    from lstm_cli import api
    from lstm_cli.errors import UsageError

    texts = ["great pizza", "slow rude delivery", "", "pizza " * 30]
    with api.load(model) as loaded:
        assert loaded.thresholds == metadata(model)["multi_label"]["thresholds"]
        probabilities = loaded.predict_proba(texts)
        assert probabilities.shape == (4, 4)
        # predict() gives the labels `predict --format json` prints, most probable first, with their probabilities
        for threshold, extra in ((None, []), (0.3, ["--threshold", "0.3"]), (1.0, ["--threshold", "1"])):
            printed = runner.invoke(app, ["predict", "-m", str(model), "--format", "json", *extra, *texts])
            assert printed.exit_code == 0, printed.output
            expected = [json.loads(line) for line in printed.stdout.splitlines()]
            got = loaded.predict(texts, threshold=threshold)
            assert [[p.label for p in row] for row in got] == [e["labels"] for e in expected]
            for row, e in zip(got, expected, strict=True):
                assert [p.probability for p in row] == pytest.approx([e["probabilities"][p.label] for p in row])
                assert [p.probability for p in row] == sorted((p.probability for p in row), reverse=True)
        for kwargs, name in (({"k": 2}, "k"), ({"min_probability": 0.5}, "min_probability")):
            with pytest.raises(UsageError, match=f"^{name} is for single-label models"):
                loaded.predict(texts, **kwargs)
        with pytest.raises(UsageError, match="threshold must be a probability"):
            loaded.predict(texts, threshold=0)


def test_python_api_threshold_is_for_multi_label_models(trained_model):
    from lstm_cli import api
    from lstm_cli.errors import UsageError

    with api.load(trained_model) as loaded, pytest.raises(UsageError, match="threshold is for multi-label models"):
        loaded.predict(["good"], threshold=0.5)


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("chromium") is None, reason="needs Debian's chromium")
def test_chromium_renders_the_multi_label_report(model, tmp_path):
    """Headless Chromium draws the multi-label page: tall, not blank, the charts' colours there."""
    import subprocess

    from matplotlib.image import imread

    page, png = tmp_path / "r.html", tmp_path / "r.png"
    result = runner.invoke(app, ["report", str(model.parent / "test.csv"), "-m", str(model), "-o", str(page)])
    assert result.exit_code == 0, result.output
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1100,3000", page.as_uri()],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    pixels = imread(png)[..., :3]
    assert pixels.shape[:2] == (3000, 1100)
    ink = (pixels.mean(axis=2) < 0.6).mean(axis=1)  # share of dark pixels per row
    assert (ink > 0.002).mean() > 0.5
    assert (np.abs(pixels[..., 2] - pixels[..., 0]) > 0.2).any()


def test_multi_label_models_default_to_no_hidden_dense_layer():
    from lstm_cli.config import TrainConfig

    assert TrainConfig(multi_label=True).resolved(1_000, 10_000).dense_units == 0
    assert TrainConfig().resolved(1_000, 10_000).dense_units == 128  # single-label: as before
    assert TrainConfig(multi_label=True, dense_units=64).resolved(1_000, 10_000).dense_units == 64  # given: kept


@settings(max_examples=150, deadline=None)
@given(
    labels=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True),
    seed=st.integers(0, 2**16),
    fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
)
def test_table_cells_read_back_to_the_label_sets_whatever_the_labels(labels, seed, fmt):
    """Any labels (separators, quotes, tabs, line breaks, NUL, U+2028...) come back exactly from a table's
    cells: JSON arrays in CSV/TSV, one physical line a row; lists in JSON Lines."""
    import csv
    import io
    import types

    from lstm_cli.multilabel import picked as multilabel_picked
    from lstm_cli.tables import Added, TableReader, TableWriter

    rng = np.random.default_rng(seed)
    probabilities = rng.random((3, len(labels))).astype(np.float32)
    delimiter = "\t" if fmt == "tsv" else ","
    source = "".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(3)) if fmt == "jsonl" else (
        "text\n" + "".join(f"t{i}\n" for i in range(3)))  # fmt: skip
    reader = TableReader(io.BytesIO(source.encode()), "in", input_format=fmt, text_column="text", header=True,
                         delimiter=None, encoding="utf-8")  # fmt: skip
    out = io.StringIO()
    added = Added.for_model(labels, k=1, all_probabilities=False, prefix="", jsonl=fmt == "jsonl", multi_label=True)
    writer = TableWriter(out, reader, added, labels, thresholds=np.float32(0.5))
    records = [(line, record) for line, record, _ in reader.rows()]
    writer.write(records, types.SimpleNamespace(probabilities=probabilities, texts=["t0", "t1", "t2"]))
    expected = [[labels[i] for i in row] for row in multilabel_picked(probabilities, 0.5)]
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.getvalue().split("\n")[:-1]]  # not splitlines: U+2028 stays
        assert [r["predicted_labels"] for r in rows] == expected
        return
    assert out.getvalue().count("\n") == 4 and "\r" not in out.getvalue()  # no line break inside a cell
    header, *rows = list(csv.reader(io.StringIO(out.getvalue(), newline=""), delimiter=delimiter))
    assert header == ["text", "predicted_labels", "predicted_probabilities"]
    assert [json.loads(row[1]) for row in rows] == expected
    assert [len(json.loads(row[2])) for row in rows] == [len(e) for e in expected]


# train NEW --from a multi-label model: NEW read as multi-label, its new words and labels added, thresholds again.
NEW_WORDS = ["zorbly", "quxful"]  # in no row of the module's model: only NEW's rows of its new label have them


def from_rows(n: int, seed: int) -> list[tuple[str, list[str]]]:
    """`n` rows of the module model's labels, then `n` of a new label, 'drink', whose texts hold the new words."""
    rng = random.Random(seed)
    rows = label_rows(n, seed)
    for _ in range(n):
        words = [rng.choice(NEW_WORDS) for _ in range(rng.randint(1, 2))] + rng.sample(FILLER, rng.randint(0, 2))
        rng.shuffle(words)
        rows.append((" ".join(words), ["drink"]))
    return rows


@pytest.fixture(scope="module")
def continued(model, tmp_path_factory):
    """The module's model continued on NEW (its labels, and a new one: 'drink'), validated on a file of its own
    (dev.csv, beside it). The model is a copy whose label separator is '|', so NEW's fields are read with '|'
    though none is given. The run is interrupted (Ctrl-C) after its third epoch, and --resume with the same
    --from finishes it."""
    from lstm_cli import render

    d = tmp_path_factory.mktemp("continued")
    shutil.copytree(model, d / "parent")
    meta = metadata(d / "parent")  # metadata.json is not among the files it lists the sha256 of
    meta["config"]["label_separator"] = meta["multi_label"]["separator"] = "|"
    (d / "parent/metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    for name, (n, seed) in {"new.csv": (100, 3), "dev.csv": (40, 4)}.items():
        write_csv(d / name, [(text, "|".join(labels)) for text, labels in from_rows(n, seed)])
    out = d / "child"
    args = ["train", str(d / "new.csv"), "--from", str(d / "parent"), "-m", str(out), "--validation-data",
            str(d / "dev.csv"), "--checkpoint-dir", str(d / "ck"), "--epochs", "8", "--batch-size", "16",
            "--learning-rate", "0.02", "--quiet"]  # fmt: skip
    epoch_line = render.epoch_line

    def interrupted_after_epoch_3(report):  # train reports an epoch once its checkpoint is written
        if report.epoch == 3:
            raise KeyboardInterrupt
        return epoch_line(report)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(render, "epoch_line", interrupted_after_epoch_3)
        interrupted = runner.invoke(app, args)
    assert interrupted.exit_code == 130 and "--resume" in interrupted.stderr, interrupted.output
    assert not out.exists() and json.loads((d / "ck/state.json").read_text(encoding="utf-8"))["epoch"] == 3
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n" and not (d / "ck").exists()
    assert "will forget" not in result.stderr  # NEW has rows of each of the model's labels (in its label sets)
    return out


def test_from_a_multi_label_model_learns_a_new_label_and_new_words(model, continued):
    parent, child = metadata(model), metadata(continued)
    # The old labels keep their columns; the new one is a new sigmoid.
    assert child["config"]["multi_label"] is True and child["labels"] == [*parent["labels"], "drink"]
    old, new = (json.loads((m / "vocabulary.json").read_text(encoding="utf-8")) for m in (model, continued))
    assert new[: len(old)] == old and set(NEW_WORDS) <= set(new[len(old) :])
    assert child["config"]["dense_units"] == parent["config"]["dense_units"]
    records = predict_json(continued, ["zorbly", "quxful the quxful", "great pizza", "awful waiter"])
    assert [r["labels"] for r in records[:2]] == [["drink"], ["drink"]]  # NEW read with the model's '|'
    assert child["multi_label"]["separator"] == "|"
    assert {"pos", "food"} <= set(records[2]["labels"]) and {"neg", "staff"} <= set(records[3]["labels"])
    assert all("drink" not in r["labels"] for r in records[2:])
    section = child["parent"]
    assert section["id"] == parent["id"] != child["id"] and section["lineage"] == [parent["id"]]
    assert section["labels_added"] == ["drink"] and section["words_added"] == len(new) - len(old)
    shown = runner.invoke(app, ["info", "-m", str(continued)])
    assert shown.exit_code == 0 and "continues" in shown.stdout and parent["id"] in shown.stdout


def test_engines_and_saved_model_agree_on_a_continued_model(continued):
    assert_engines_agree(continued)


def test_a_continued_model_chooses_its_thresholds_again_and_uses_them(continued):
    child = metadata(continued)
    section = child["multi_label"]
    assert len(section["thresholds"]) == len(child["labels"]) == 5
    thresholds = dict(zip(child["labels"], section["thresholds"], strict=True))
    for record in predict_json(continued, [*TEXTS, "zorbly pizza", "quxful"]):
        over = {label for label, p in record["probabilities"].items() if np.float32(p) >= np.float32(thresholds[label])}
        assert set(record["labels"]) == over
    # Chosen on the validation file: evaluate there at the saved thresholds finds the micro-F1 training recorded.
    result = runner.invoke(app, ["evaluate", str(continued.parent / "dev.csv"), "-m", str(continued), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["thresholds"] == section["thresholds"] and report["rows"]["evaluated"] == section["validation_rows"]
    assert report["micro_f1"] == pytest.approx(section["validation_micro_f1"])


@pytest.mark.parametrize(
    ("parent", "args", "words"),
    [
        ("single", ["--multi-label"], ["--multi-label", "single-label", "softmax", "without --from"]),
        ("single", ["--label-separator", ";"], ["--label-separator", "single-label"]),
        ("multi", ["--class-weight", "balanced"], ["--class-weight", "multi-label"]),
        ("multi", ["--dense-units", "32"], ["--dense-units 32", "(8)"]),
    ],
)
def test_from_refuses_options_that_contradict_the_model(request, data_dir, parent, args, words):
    parent = request.getfixturevalue("trained_model" if parent == "single" else "model")
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), "--from", str(parent), *args, "-m", "out"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and result.stdout == "" and len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and all(word in lines[0] for word in words), lines[0]
    assert not Path("out").exists()


def test_a_multi_label_models_head_grows_by_a_column_for_a_new_label(model):
    """Continuing starts from the parent's weights: the old labels' kernel columns and biases as they were,
    a fresh column for the new label, its bias the mean of the parent's."""
    from lstm_cli.model import build_network
    from lstm_cli.parent import inherit_weights, read_parent

    parent = read_parent(model)
    config = parent.config.resolved(100, 1_000)
    network = build_network(config, vocabulary_size=len(parent.vocabulary) + 2, num_classes=len(parent.labels) + 1)
    inherit_weights(network, parent, bigrams=None)
    kernel, bias = (np.asarray(w) for w in network.get_layer("probabilities").get_weights())
    old_kernel, old_bias = parent.weights["probabilities/kernel"], parent.weights["probabilities/bias"]
    np.testing.assert_array_equal(kernel[:, : len(parent.labels)], old_kernel)
    np.testing.assert_allclose(bias, [*old_bias, old_bias.mean()], rtol=1e-6)
    assert kernel.shape == (old_kernel.shape[0], len(parent.labels) + 1) and np.any(kernel[:, -1] != 0)
    embeddings = network.get_layer("embedding").get_weights()[0]
    np.testing.assert_array_equal(embeddings[: len(parent.vocabulary)], parent.weights["embedding/embeddings"])
