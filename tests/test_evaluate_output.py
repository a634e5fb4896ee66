"""evaluate for people at any number of classes (every line within COLUMNS, most-confused pairs beyond 15),
its files (--errors, --confusion-csv, -o), its one output switch, and metrics sparse in the number of labels."""

from __future__ import annotations

import csv
import json
import tracemalloc

import numpy as np
import pytest
from conftest import TINY, unescape_tsv, write_csv
from rich.cells import cell_len
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.metrics import DENSE_LABELS, classification_report, dense_confusion, most_confused

runner = CliRunner()

# Labels a user might have: long ones, rich markup, a tab, a newline, wide and combining characters.
ODD_LABELS = [
    "[bold]loud[/bold]",
    "tab\there",
    "new\nline",
    "宽字符的标签名字",
    "ünïcødé ✓",
    'quote"d',
    "card_payment_wrong_exchange_rate_for_a_transfer_abroad_that_was_declined_twice_" * 2,
]
MANY_LABELS = ODD_LABELS + [f"class_{i:02d}" for i in range(17)]  # 24 classes


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """A tiny 24-class model and a test file: each class has its own word, plus shared noise so that the
    tiny model confuses some of them."""
    d = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)

    def rows(n: int) -> list[tuple[str, str]]:
        out = []
        for r in range(n):
            for i, label in enumerate(MANY_LABELS):
                noise = " ".join(f"n{x}" for x in rng.integers(0, 6, 2))
                out.append((f"w{i} {noise}" if r % 3 else f"w{(i + 1) % len(MANY_LABELS)} {noise}", label))
        return out

    write_csv(d / "train.csv", rows(4))
    write_csv(d / "test.csv", rows(2))
    model = d / "model"
    options = [*TINY, "--max-tokens", "80", "--epochs", "2", "--validation-split", "0"]
    trained = runner.invoke(app, ["train", str(d / "train.csv"), "-m", str(model), *options])
    assert trained.exit_code == 0, trained.output
    return d, model


def _evaluate(many, *args: str):
    d, model = many
    return runner.invoke(app, ["evaluate", str(d / "test.csv"), "-m", str(model), *args])


@pytest.mark.parametrize("columns", [100, 60])
def test_every_line_fits_the_terminal_and_many_classes_show_the_most_confused_pairs(many, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    result = _evaluate(many)
    assert result.exit_code == 0, result.output
    lines = (result.stdout + result.stderr).splitlines()
    too_wide = [line for line in lines if cell_len(line) > columns]
    assert not too_wide, "\n".join(too_wide)
    assert "Most confused" in result.stdout and "Confusion matrix" not in result.stdout
    # labels are shown literally: markup as typed, control characters as escapes, nothing lost
    flat = "".join(line.strip() for line in result.stdout.splitlines())
    for label in ("[bold]loud[/bold]", "tab\\there", "new\\nline", "宽字符的标签名字", "ünïcødé ✓", 'quote"d'):
        assert label in flat
    report = json.loads(_evaluate(many, "--format", "json").stdout)
    pairs = most_confused(report, 20)
    assert pairs, "the tiny model should confuse some classes"
    for _true, _predicted, count, share in pairs[:3]:  # the largest pairs are listed with count and share
        assert f"{count:,}" in result.stdout and f"{share:.1%}" in result.stdout


def test_a_few_classes_keep_the_grid(trained_model, data_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    result = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model)])
    assert result.exit_code == 0, result.output
    assert "Confusion matrix" in result.stdout and "Most confused" not in result.stdout
    assert all(cell_len(line) <= 100 for line in result.stdout.splitlines())


def test_format_json_equals_the_json_alias_and_the_report_file(many, tmp_path):
    out = tmp_path / "report.json"
    as_format = _evaluate(many, "--format", "json", "-o", str(out))
    alias = _evaluate(many, "--json")
    assert as_format.exit_code == 0 and alias.exit_code == 0, as_format.output + alias.output
    report = json.loads(as_format.stdout)
    assert report == json.loads(alias.stdout) == json.loads(out.read_text(encoding="utf-8"))
    assert report["labels"] == sorted(MANY_LABELS)
    # the sparse triples and the dense grid say the same
    assert dense_confusion(report) == report["confusion_matrix"]
    assert sum(c for _, _, c in report["confusion"]) == report["rows"]["evaluated"]
    assert all(c > 0 for _, _, c in report["confusion"])


def test_confusion_csv_is_the_json_matrix_with_labels(many, tmp_path):
    grid = tmp_path / "confusion.csv"
    result = _evaluate(many, "--format", "json", "--confusion-csv", str(grid))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    with grid.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true\\predicted", *report["labels"]]
    assert [r[0] for r in rows[1:]] == report["labels"]
    assert [[int(x) for x in r[1:]] for r in rows[1:]] == report["confusion_matrix"]


def test_errors_file_holds_exactly_the_misclassified_rows(many, tmp_path):
    from lstm_cli.predict import Predictor

    d, model = many
    errors = tmp_path / "errors.csv"
    result = _evaluate(many, "--errors", str(errors), "--format", "json")
    assert result.exit_code == 0, result.output
    with errors.open(newline="", encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    with (d / "test.csv").open(newline="", encoding="utf-8") as f:
        test = list(csv.DictReader(f))
    predictor = Predictor(model)
    probabilities = predictor.probabilities([row["text"] for row in test])
    expected = [
        (row["text"], row["label"], predictor.labels[p.argmax()], p.max())
        for row, p in zip(test, probabilities, strict=True)
        if predictor.labels[p.argmax()] != row["label"]
    ]
    assert expected and len(expected) < len(test)
    assert list(written[0]) == ["text", "label", "predicted_label", "probability"]
    assert [(r["text"], r["label"], r["predicted_label"]) for r in written] == [e[:3] for e in expected]
    for row, (*_, p) in zip(written, expected, strict=True):
        assert np.float32(row["probability"]) == p  # float32's digits, read back exactly
    report = json.loads(result.stdout)
    assert len(written) == report["rows"]["evaluated"] - sum(c for t, p, c in report["confusion"] if t == p)
    assert "misclassified" not in report
    assert [p.name for p in tmp_path.iterdir()] == ["errors.csv"]  # no temporary file left beside it


@pytest.mark.parametrize("option", ["--errors", "--confusion-csv", "--output"])
def test_an_output_in_a_missing_folder_is_refused_before_evaluating(trained_model, data_dir, tmp_path, option):
    target = tmp_path / "missing" / "out.csv"
    result = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), option, str(target)])
    assert result.exit_code == 2 and result.stdout == ""
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "missing").exists()


def test_confusion_csv_is_refused_above_the_dense_limit(trained_model, data_dir, tmp_path, monkeypatch):
    import lstm_cli.cli.evaluate as evaluate_cli

    assert evaluate_cli.DENSE_LABELS == DENSE_LABELS  # the CLI's copy (kept off numpy for --help) agrees
    monkeypatch.setattr(evaluate_cli, "DENSE_LABELS", 2)  # the toy model has 3 labels
    grid = tmp_path / "grid.csv"
    result = runner.invoke(
        app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--confusion-csv", str(grid)]
    )
    assert result.exit_code == 2 and result.stdout == "" and not grid.exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and '"confusion"' in errors[0] and "Traceback" not in result.stderr


def test_odd_labels_reach_predict_json_exactly_and_tsv_escaped(many):
    d, model = many
    texts = [f"w{i} n1" for i in range(len(MANY_LABELS))]
    args = ["predict", "-m", str(model), "--top-k", "30", *texts]
    as_json = runner.invoke(app, [*args, "-f", "json", "--all-probabilities"])
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(records) == len(texts)
    for record in records:
        assert list(record["probabilities"]) == sorted(MANY_LABELS)
        assert sorted(t["label"] for t in record["top"]) == sorted(MANY_LABELS)  # --top-k above the label count
    tsv = runner.invoke(app, args).stdout.splitlines()
    assert len(tsv) == len(texts)
    for line, record in zip(tsv, records, strict=True):
        assert [unescape_tsv(f) for f in line.split("\t")[0::2]] == [t["label"] for t in record["top"]]


def test_info_format_json_equals_the_json_alias(many):
    _, model = many
    as_format = runner.invoke(app, ["info", "-m", str(model), "--format", "json"])
    alias = runner.invoke(app, ["info", "-m", str(model), "--json"])
    assert as_format.exit_code == 0, as_format.output
    assert json.loads(as_format.stdout) == json.loads(alias.stdout)
    assert json.loads(as_format.stdout)["labels"] == sorted(MANY_LABELS)


def test_info_fits_the_terminal_with_many_labels(many, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    result = runner.invoke(app, ["info", "-m", str(many[1])])
    assert result.exit_code == 0, result.output
    assert all(cell_len(line) <= 100 for line in result.stdout.splitlines())
    assert "24: " in result.stdout and "[bold]loud[/bold]" in result.stdout


# --- metrics, sparse in the number of labels ------------------------------------------------------------------


def test_report_by_hand_with_sparse_confusion():
    truth = np.array([0, 0, 0, 1, 1, 2, 3])
    predicted = np.array([0, 0, 1, 1, 2, 2, 1])
    r = classification_report(truth, predicted, ["a", "b", "c", "d"])
    assert r["accuracy"] == pytest.approx(4 / 7)
    assert r["confusion"] == [["a", "a", 2], ["a", "b", 1], ["b", "b", 1], ["b", "c", 1], ["c", "c", 1], ["d", "b", 1]]
    assert dense_confusion(r) == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 0, 0]]
    assert r["per_class"]["b"] == {"precision": pytest.approx(1 / 3), "recall": 0.5, "f1": pytest.approx(0.4),
                                   "support": 2}  # fmt: skip
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["macro_f1"] == pytest.approx((0.8 + 0.4 + 2 / 3 + 0) / 4)
    # largest count first; ties by the larger share of the true class
    assert most_confused(r, 10) == [("d", "b", 1, 1.0), ("b", "c", 1, 0.5), ("a", "b", 1, pytest.approx(1 / 3))]


def test_fifty_thousand_labels_take_memory_in_the_labels_not_their_square():
    n, rows = 50_000, 100_000
    labels = [f"label {i}" for i in range(n)]
    rng = np.random.default_rng(0)
    truth = rng.integers(0, n, rows)
    predicted = np.where(rng.random(rows) < 0.7, truth, rng.integers(0, n, rows))
    tracemalloc.start()
    try:
        report = classification_report(truth, predicted, labels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # a dense matrix would be 20 GB
    assert report["accuracy"] == pytest.approx(np.mean(truth == predicted))
    assert sum(c for _, _, c in report["confusion"]) == rows
    assert sum(report["per_class"][label]["support"] for label in labels) == rows
    # per-class figures agree with counting one class by hand
    k = int(truth[0])
    tp = int(np.sum((truth == k) & (predicted == k)))
    assert report["per_class"][labels[k]]["recall"] == pytest.approx(tp / np.sum(truth == k))
    assert report["per_class"][labels[k]]["precision"] == pytest.approx(tp / max(1, np.sum(predicted == k)))


def test_ten_thousand_labels_render_the_weakest_classes_within_the_width():
    """A report too big for any grid: the per-class table lists the weakest, the pairs table the largest cells,
    every line within the console's width; the report has no dense matrix to print."""
    from io import StringIO

    from rich.console import Console

    from lstm_cli.render import PER_CLASS_WEAKEST, print_report

    n = 10_000
    labels = [f"intent_{i:05d}_" + "x" * (i % 90) for i in range(n)]
    rng = np.random.default_rng(1)
    truth = rng.integers(0, n, 30_000)
    predicted = np.where(rng.random(truth.size) < 0.8, truth, rng.integers(0, 20, truth.size))
    report = classification_report(truth, predicted, labels)
    report["rows"] = {"evaluated": truth.size}
    out = StringIO()
    print_report(report, Console(file=out, width=100, highlight=False, emoji=False))
    lines = out.getvalue().splitlines()
    assert all(cell_len(line) <= 100 for line in lines)
    assert f"the {PER_CLASS_WEAKEST} lowest F1 of 10,000" in out.getvalue() and "Most confused" in out.getvalue()
    weakest = min((c["f1"], label) for label, c in report["per_class"].items() if c["support"])
    assert weakest[1][:12] in out.getvalue()
    assert len(lines) < 120


def test_evaluate_batches_by_rows_times_labels_with_the_same_report(trained_model, data_dir, monkeypatch):
    import lstm_cli.predict as predict

    args = ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--format", "json"]
    whole = json.loads(runner.invoke(app, args).stdout)
    calls = []
    monkeypatch.setattr(predict, "EVALUATE_CELLS", 6)  # 3 labels: 2 rows at a time
    original = predict.Predictor.probabilities
    monkeypatch.setattr(predict.Predictor, "probabilities", lambda self, texts: calls.append(len(texts)) or
                        original(self, texts))  # fmt: skip
    batched = json.loads(runner.invoke(app, args).stdout)
    # The calibration errors average probabilities, which the engine computes a rounding apart in batches of
    # other shapes; every count and label is the same.
    assert batched.pop("calibration") == pytest.approx(whole.pop("calibration"), abs=1e-6)
    assert batched == whole
    assert max(calls) == 2 and sum(calls) == whole["rows"]["evaluated"]


def test_report_files_follow_symlinks_and_write_into_pipes(trained_model, data_dir, tmp_path):
    """-o through a symlink replaces the file it names and keeps the link; a pipe (a FIFO, `>(cmd)`,
    /dev/stdout) is written to, never replaced by a regular file."""
    import os
    import threading

    base = ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--format", "json"]
    (tmp_path / "real.json").write_text("old", encoding="utf-8")
    (tmp_path / "link.json").symlink_to("real.json")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text(encoding="utf-8")), daemon=True)
    reader.start()
    result = runner.invoke(app, [*base, "-o", str(tmp_path / "link.json"), "--errors", str(fifo)])
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.json").is_symlink()
    assert json.loads((tmp_path / "real.json").read_text(encoding="utf-8")) == json.loads(result.stdout)
    assert fifo.is_fifo() and received and received[0].startswith("text,label,predicted_label,probability")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "real.json"]


@pytest.mark.parametrize("width", [100, 60, 45])
def test_narrow_terminals_fold_labels_and_never_cut_a_number(width):
    from io import StringIO

    from rich.console import Console

    from lstm_cli.render import print_report

    labels = ["card_payment_wrong_exchange_rate", "balance_not_updated", "age_limit", "x", "[b]long_label_name[/b]"]
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 5000)
    predicted = np.where(rng.random(truth.size) < 0.7, truth, rng.integers(0, 5, truth.size))
    report = classification_report(truth, predicted, labels)
    report["confusion_matrix"], report["rows"] = dense_confusion(report), {"evaluated": truth.size}
    out = StringIO()
    print_report(report, Console(file=out, width=width, highlight=False, emoji=False))
    text = out.getvalue()
    assert all(cell_len(line) <= width for line in text.splitlines())
    for c in report["per_class"].values():  # every figure whole (support is 4 digits with a comma)
        assert f"{c['f1']:.4f}" in text and f"{c['support']:,}" in text
    if "Confusion matrix" in text:  # the grid shows every count whole
        assert width == 100
        for row in report["confusion_matrix"]:
            assert all(f"{n:,}" in text for n in row)
    else:
        assert "Most confused" in text
