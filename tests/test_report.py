"""`lstm-cli report`: the page's sections, that it loads nothing at view time, escaping of what users control,
the curve and calibration maths against hand-computed cases, atomic writing and one-line errors."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.curves import binary_curves, reliability, threshold_table
from lstm_cli.errors import LstmCliError
from lstm_cli.explain import Explanation, TokenScore
from lstm_cli.metrics import classification_report
from lstm_cli.render import shown
from lstm_cli.report import ReportInput, render, write

runner = CliRunner()
ALWAYS = {"summary", "per-class", "confusion", "calibration", "training", "errors", "model-card"}
FUZZ_LABELS = ["<script>alert(1)</script>", "\"&'<>", "$x^2$ \\frac", "naïve 中文 😀", "a\nb\x1b[31m", " "]


class Page(HTMLParser):
    """What a browser would load or run from the page: tags, and every src/href (any namespace)."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []
        self.handlers: list[str] = []
        self.sections: list[str] = []
        self.data: list[str] = []
        self.feed(page)
        self.text = "".join(self.data)  # what a reader sees, entities decoded

    def handle_data(self, data):
        self.data.append(data)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name.split(":")[-1] in {"src", "href"}:
                self.links.append(value or "")
            if name.startswith("on"):
                self.handlers.append(name)
            if tag == "section" and name == "id":
                self.sections.append(value)


def assert_self_contained(page: str) -> Page:
    parsed = Page(page)
    assert "script" not in parsed.tags and "iframe" not in parsed.tags and "link" not in parsed.tags
    assert not parsed.handlers
    inline = [x for x in parsed.links if not x.startswith(("#", "data:"))]  # same document, or inline data
    assert not inline, inline
    assert not re.search(r"url\(\s*['\"]?(?!#)|@import|@font-face", page)  # CSS loads nothing (clip paths: #id)
    return parsed


def test_report_from_the_command_line(trained_model, data_dir):
    result = runner.invoke(app, ["report", str(data_dir / "test.csv"), "-m", str(trained_model), "-o", "r.html"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "r.html\n"
    page = Path("r.html").read_text(encoding="utf-8")
    parsed = assert_self_contained(page)
    assert set(parsed.sections) == ALWAYS  # three classes: no ROC/PR section
    assert parsed.tags.count("svg") == 4  # per class, confusion, reliability, training
    evaluation = json.loads(runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model),
                                                "--json"]).stdout)  # fmt: skip
    assert f"{evaluation['accuracy']:.1%}" in page
    assert evaluation["data"]["sha256"] in page
    metadata = json.loads((trained_model / "metadata.json").read_text())
    assert metadata["id"] in page and metadata["training"]["data"]["sha256"] in page
    # Run again: the earlier report is replaced; '-o -' writes the page to stdout; data in any format evaluate
    # reads (here JSON Lines from stdin).
    again = runner.invoke(app, ["report", str(data_dir / "test.csv"), "-m", str(trained_model), "-o", "r.html"])
    assert again.exit_code == 0, again.output
    lines = "".join(json.dumps({"text": t, "label": x}) + "\n" for t, x in csv.reader(open(data_dir / "test.csv")))
    piped = runner.invoke(app, ["report", "-", "--input-format", "jsonl", "-m", str(trained_model), "-o", "-"],
                          input=lines.split("\n", 1)[1])  # fmt: skip
    assert piped.exit_code == 0, piped.output
    assert piped.stdout.startswith("<!DOCTYPE html>") and "</html>" in piped.stdout
    assert f"{evaluation['accuracy']:.1%}" in piped.stdout


def synthetic(labels: list[str], *, seed: int = 0, rows: int = 60, texts: list[str] | None = None) -> ReportInput:
    """A ReportInput with random probabilities that are right about 70% of the time, and explained errors."""
    rng = np.random.default_rng(seed)
    truth = np.arange(rows) % len(labels)
    probabilities = rng.dirichlet(np.ones(len(labels)), size=rows)
    right = rng.random(rows) < 0.7
    probabilities[right, truth[right]] += 1.5
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    texts = texts or [f'row {i} <img src=x onerror=alert(1)> & "quoted" 中文' for i in range(rows)]
    evaluation = classification_report(truth, probabilities.argmax(axis=1), labels)
    evaluation.update(rows={"read": rows, "evaluated": rows, "unknown_label": 1, "skipped": {}},
                      unknown_labels={"<b>new</b>": 1}, data={"path": "<data>&.csv", "rows": rows, "sha256": "ab" * 32},
                      model="models/<m>")  # fmt: skip
    history = [{"loss": 1.0 / (i + 1), "accuracy": 0.5 + i / 20, "val_loss": 1.1 / (i + 1), "val_accuracy": 0.5}
               for i in range(5)]  # fmt: skip
    metadata = {"id": "<id>", "config": {"units": 4, "<k>": "<v>"}, "labels": labels,
                "training": {"history": history, "best_epoch": 4, "averaged_window": [3, 5],
                             "data": {"path": "<train>.csv", "rows": 9, "sha256": "cd" * 32}}}  # fmt: skip
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != truth)[:5]
    explanations = {}
    for i in wrong:
        text = texts[i]
        tokens = [TokenScore(m.group(), m.start(), m.end(), float(rng.normal())) for m in re.finditer(r"\S+", text)]
        label = labels[int(probabilities[i].argmax())]
        explanations[int(i)] = Explanation(text, label, float(probabilities[i].max()), label, "occlusion", tokens, 0)
    return ReportInput(labels, texts, truth, probabilities, evaluation, metadata, explanations)


@pytest.mark.parametrize("labels", [FUZZ_LABELS[:2], FUZZ_LABELS])
def test_labels_texts_and_paths_are_escaped(labels):
    report = synthetic(labels)
    page = render(report)
    parsed = assert_self_contained(page)
    two = len(labels) == 2
    assert set(parsed.sections) == ALWAYS | ({"two-classes"} if two else set())  # ROC/PR for two classes only
    assert ("ROC AUC" in parsed.text and "Thresholds" in parsed.text) == two
    assert "<img" not in page and "<script>" not in page and "<b>new" not in page and "<data>" not in page
    assert report.explanations
    for i in report.explanations:  # the texts of the errors shown, literally
        assert report.texts[i] in parsed.text
    for label in labels[:5]:
        assert f"true {shown(label)} (" in parsed.text or f"predicted {shown(label)} (" in parsed.text
    assert "<script>alert(1)</script>" in parsed.text and "\"&'<>" in parsed.text
    if len(labels) > 2:
        assert "a\\nb\\x1b[31m" in parsed.text  # control characters as escapes
    assert "<data>&.csv" in parsed.text and "<k>=<v>" in parsed.text and "<b>new</b> (1)" in parsed.text


def test_errors_not_shown_are_counted_not_denied():
    report = synthetic(["a", "b", "c"])
    report.explanations = {}
    wrong = int(np.sum(report.probabilities.argmax(axis=1) != report.truth))
    assert wrong and f"{wrong:,} rows were predicted wrongly; none is shown" in render(report)


def test_many_classes_show_the_most_confused_pairs():
    labels = [f"class {i}" for i in range(30)]
    page = render(synthetic(labels, rows=300, seed=3))
    assert "most-confused pairs" in page and "predicted as" in page
    many = render(synthetic(labels[:15], rows=150, seed=3))
    assert "most-confused pairs" not in many


def test_expected_calibration_error_by_hand():
    # Two rows in the top bin (0.95, half right) and two in (0.533, 0.6] (0.55, both right):
    # ECE = 2/4 * |0.5 - 0.95| + 2/4 * |1 - 0.55| = 0.45.
    bins = reliability(np.array([0.95, 0.95, 0.55, 0.55]), np.array([True, False, True, True]))
    assert bins.ece == pytest.approx(0.45)
    assert bins.count.tolist() == [0] * 8 + [2] + [0] * 5 + [2]
    assert bins.accuracy[14] == 0.5 and bins.confidence[8] == pytest.approx(0.55)
    # The edges: 0 goes to the first bin, 1 to the last, a value on an edge to the bin below it.
    edges = reliability(np.array([0.0, 1.0, 1 / 15 * 2]), np.array([True, True, False]))
    assert edges.count[0] == 1 and edges.count[14] == 1 and edges.count[1] == 1
    assert edges.ece == pytest.approx((1.0 + 0.0 + 2 / 15) / 3)
    assert reliability(np.full(10, 0.7), np.arange(10) < 7).ece == pytest.approx(0.0)


def test_roc_and_precision_recall_by_hand():
    curves = binary_curves(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], dtype=bool))
    assert curves.roc_auc == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ordered right
    # Down the scores: 0.8 (+) p=1 r=.5; 0.4 (-) p=.5 r=.5; 0.35 (+) p=2/3 r=1; 0.1 (-): AP = .5*1 + .5*2/3.
    assert curves.average_precision == pytest.approx(0.5 + 1 / 3)
    assert curves.fpr.tolist() == [0, 0, 0.5, 0.5, 1] and curves.tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    tied = binary_curves(np.array([0.5, 0.5]), np.array([True, False]))
    assert tied.roc_auc == pytest.approx(0.5) and tied.average_precision == pytest.approx(0.5)
    assert binary_curves(np.array([0.9, 0.2]), np.array([True, False])).roc_auc == 1.0
    assert np.isnan(binary_curves(np.array([0.9, 0.2]), np.array([True, True])).roc_auc)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=30))
def test_roc_auc_is_the_share_of_pairs_ordered_right(rows):
    scores = np.array([s / 6 for s, _ in rows])
    positive = np.array([p for _, p in rows])
    pos, neg = scores[positive], scores[~positive]
    auc = binary_curves(scores, positive).roc_auc
    if not len(pos) or not len(neg):
        assert np.isnan(auc)
        return
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc == pytest.approx(pairs)


def test_threshold_table_by_hand():
    scores = np.array([0.9, 0.6, 0.4, 0.2])
    positive = np.array([True, False, True, False])
    at_half, at_zero = threshold_table(scores, positive, [0.5, 0.0])
    assert at_half == {"threshold": 0.5, "flagged": 2, "precision": 0.5, "recall": 0.5, "f1": 0.5,
                       "false_positive_rate": 0.5}  # fmt: skip
    assert at_zero["flagged"] == 4 and at_zero["recall"] == 1.0 and at_zero["false_positive_rate"] == 1.0


def test_the_page_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    write(target, '<meta name="generator" content="lstm-cli report"> old')

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(LstmCliError, match="r.html"):
        write(target, render(synthetic(["a", "b"])))
    assert target.read_text().endswith(" old") and os.listdir(tmp_path) == ["r.html"]  # no temporary file left
    monkeypatch.undo()
    write(target, "<!DOCTYPE html> new")
    assert target.read_text() == "<!DOCTYPE html> new" and os.listdir(tmp_path) == ["r.html"]


@pytest.mark.parametrize(
    ("setup", "args", "message", "code"),
    [  # a bad -o is misuse (2), as for predict and evaluate; a missing model a failure (1)
        (lambda: Path("notes.html").write_text("my notes"), ["-o", "notes.html"], "is not an lstm-cli report", 2),
        (lambda: Path("out").mkdir(), ["-o", "out"], "is a directory", 2),
        (lambda: None, ["-o", "no/such/dir/r.html"], "no such directory", 2),
        (lambda: None, ["-m", "no-model"], "no-model", 1),
    ],
)
def test_errors_are_one_line(trained_model, data_dir, setup, args, message, code):
    setup()
    before = {p: p.read_bytes() for p in Path(".").rglob("*") if p.is_file()}
    result = runner.invoke(app, ["report", str(data_dir / "test.csv"), "-m", str(trained_model), *args])
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1 and message in result.stderr
    assert {p: p.read_bytes() for p in Path(".").rglob("*") if p.is_file()} == before  # nothing touched


def test_without_matplotlib_the_error_names_the_extra(trained_model, data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = runner.invoke(app, ["report", str(data_dir / "test.csv"), "-m", str(trained_model)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "pip install 'lstm-cli[report]'" in result.stderr
    assert not Path("report.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_chromium_renders_the_page(trained_model, data_dir, tmp_path):
    """Headless Chromium draws the page: a tall picture that is not blank (the charts and text are there)."""
    from matplotlib.image import imread

    result = runner.invoke(app, ["report", str(data_dir / "test.csv"), "-m", str(trained_model), "-o", "r.html"])
    assert result.exit_code == 0, result.output
    png = tmp_path / "r.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1100,3000", (tmp_path / "r.html").as_uri()],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    pixels = imread(png)[..., :3]
    assert pixels.shape[:2] == (3000, 1100)
    ink = (pixels.mean(axis=2) < 0.6).mean(axis=1)  # share of dark pixels per row
    assert (ink > 0.002).mean() > 0.5  # more than half of the rows carry text or chart
    assert (np.abs(pixels[..., 2] - pixels[..., 0]) > 0.2).any()  # the charts' colours made it
