"""Abstaining (issue 30, part 4): `predict --min-probability P` prints the unknown label exactly where the top
probability is below P, one line per input in every format; evaluate reports coverage and the accuracy and
macro-F1 of the rows answered."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from conftest import unescape_tsv
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.cli import app

runner = CliRunner()
HOSTILE = ["unknown", "[bold red]n/a[/]", "tab\there", "new\nline\r\n", "back\\slash\\t", "—ﾉ 🤷 ‏rtl", '"q",x', ""]


def _texts(data_dir) -> list[str]:
    with open(data_dir / "test.csv", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def _run(model, *args: str, input: str | None = None) -> list[str]:
    result = runner.invoke(app, ["predict", "-m", str(model), *args], input=input)
    assert result.exit_code == 0 and result.stderr == "", result.output
    return result.stdout.splitlines()


def _baseline(model, texts) -> tuple[list[str], np.ndarray]:
    """Labels and top probabilities (as float32, as predict compares them) without --min-probability."""
    records = [json.loads(line) for line in _run(model, "-f", "json", "-", input="\n".join(texts) + "\n")]
    assert len(records) == len(texts)
    return [r["label"] for r in records], np.array([r["probability"] for r in records], dtype=np.float32)


def _thresholds(top: np.ndarray) -> list[float]:
    """A printed top probability itself (rows at exactly P are answered), the median, and the extremes 0 and 1."""
    ordered = sorted(set(top.tolist()))
    return [float(np.float32(ordered[len(ordered) // 2])), 0.0, 1.0, float(ordered[-1])]


@pytest.mark.parametrize("output_format", ["tsv", "json", "label"])
@pytest.mark.parametrize("k", [1, 2])
def test_abstains_exactly_where_the_top_probability_is_below_p(trained_model, data_dir, output_format, k):
    texts = _texts(data_dir)
    labels, top = _baseline(trained_model, texts)
    stdin = "\n".join(texts) + "\n"
    common = ["-f", output_format, "--top-k", str(k), "-"]
    plain = _run(trained_model, *common, input=stdin)
    for p in _thresholds(top):
        unsure = top < np.float32(p)
        if p == 0.0:
            assert not unsure.any()
        lines = _run(trained_model, *common, "--min-probability", repr(p), input=stdin)
        assert len(lines) == len(texts)
        for line, before, no, label in zip(lines, plain, unsure, labels, strict=True):
            if output_format == "json":
                record, expected = json.loads(line), json.loads(before)
                assert record.pop("abstained") is bool(no)
                assert record.pop("label") == ("unknown" if no else label)
                expected.pop("label")
                assert record == expected  # probability, top: unchanged
                continue
            fields, expected = line.split("\t"), before.split("\t")
            assert fields[0] == ("unknown" if no else expected[0])
            assert fields[1:] == expected[1:]
        if p == 1.0:
            assert unsure.all() or top.max() == 1.0


def test_tables_get_the_unknown_label_as_predicted_label(trained_model, data_dir, tmp_path):
    texts = _texts(data_dir)
    labels, top = _baseline(trained_model, texts)
    p = _thresholds(top)[0]
    unsure = top < np.float32(p)
    assert unsure.any() and not unsure.all()
    label = HOSTILE[1] + HOSTILE[2] + HOSTILE[3]
    for suffix in ("csv", "tsv", "jsonl"):
        path = tmp_path / f"in.{suffix}"
        if suffix == "jsonl":
            path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
        else:
            with open(path, "w", newline="") as f:
                writer = csv.writer(f, delimiter="\t" if suffix == "tsv" else ",")
                writer.writerow(["id", "text"])
                writer.writerows(enumerate(texts))
        result = runner.invoke(app, ["predict", "-m", str(trained_model), "-i", str(path), "--min-probability",
                                     repr(p), "--unknown-label", label])  # fmt: skip
        assert result.exit_code == 0 and result.stderr == "", result.output
        out = result.stdout_bytes.decode()  # result.stdout turns \r\n into \n, even inside a CSV field
        if suffix == "jsonl":
            rows = [json.loads(line) for line in out.splitlines()]
        else:
            rows = list(csv.DictReader(io.StringIO(out, newline=""), delimiter="\t" if suffix == "tsv" else ","))
        assert [int(r["id"]) for r in rows] == list(range(len(texts)))  # one row per input, in order
        for row, no, expected, probability in zip(rows, unsure, labels, top, strict=True):
            assert row["predicted_label"] == (label if no else expected)
            assert np.float32(float(row["probability"])) == probability


@pytest.mark.parametrize("output_format", ["tsv", "json", "label"])
def test_unknown_label_is_printed_literally_per_format(trained_model, output_format):
    for label in HOSTILE:
        lines = _run(trained_model, "-f", output_format, "--min-probability", "1", "--unknown-label", label,
                     "a b c", "pos neg")  # fmt: skip
        assert len(lines) == 2
        for line in lines:
            if output_format == "json":
                assert json.loads(line)["label"] == label and json.loads(line)["abstained"] is True
            else:
                assert len(line.split("\t")) == (2 if output_format == "tsv" else 1)
                assert unescape_tsv(line.split("\t")[0]) == label


@given(
    labels=st.lists(st.text(max_size=6), min_size=2, max_size=4, unique=True),
    unknown=st.text(max_size=8),
    rows=st.lists(st.floats(0, 1, width=32), min_size=1, max_size=6),
    p=st.floats(0, 1),
)
@settings(max_examples=60, deadline=None)
def test_prediction_lines_abstain_for_any_labels(labels, unknown, rows, p):
    """Core rendering, fuzzed: whatever the labels and the unknown label hold, one parseable line per text."""
    from lstm_cli.predict import Predictions
    from lstm_cli.render import prediction_lines

    n = len(labels)
    probabilities = np.array([[q] + [(1 - q) / (n - 1)] * (n - 1) for q in rows], dtype=np.float32)
    batch = Predictions([f"t{i}" for i in range(len(rows))], probabilities)
    best = probabilities.argmax(axis=1)
    unsure = probabilities.max(axis=1) < np.float32(p)
    for output_format in ("tsv", "json", "label"):
        lines = prediction_lines(batch, labels, output_format, 1, abstain=(p, unknown))
        assert len(lines) == len(rows) and all("\n" not in line and "\r" not in line for line in lines)
        for line, i, no in zip(lines, best, unsure, strict=True):
            if output_format == "json":
                record = json.loads(line)
                assert (record["label"], record["abstained"]) == ((unknown, True) if no else (labels[i], False))
            else:
                assert unescape_tsv(line.split("\t")[0]) == (unknown if no else labels[i])
                assert len(line.split("\t")) == (2 if output_format == "tsv" else 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-probability", "0.5", "--unknown-label", "pos"], "one of the model's labels"),
        (["--min-probability", "nan"], "from 0 to 1"),
        (["--min-probability", "inf"], "from 0 to 1"),
        (["--min-probability", "-0.01"], "from 0 to 1"),
        (["--min-probability", "1.5"], "from 0 to 1"),
        (["--unknown-label", "x"], "--unknown-label is for --min-probability"),
    ],
)
def test_refused(trained_model, args, message):
    result = runner.invoke(app, ["predict", "-m", str(trained_model), *args, "good"])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1


def test_evaluate_refuses_p_out_of_range(trained_model, data_dir):
    result = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model),
                                 "--min-probability", "nan"])  # fmt: skip
    assert result.exit_code == 2 and result.stdout == "" and "from 0 to 1" in result.stderr, result.output


def test_python_api_abstains_as_the_command_line(trained_model, data_dir):
    import lstm_cli
    from lstm_cli.errors import UsageError

    texts = _texts(data_dir)
    labels, top = _baseline(trained_model, texts)
    p = _thresholds(top)[0]
    with lstm_cli.load(trained_model) as model:
        got = model.predict(texts, k=2, min_probability=p, unknown_label="?")
        plain = model.predict(texts, k=2)
        for row, before, label, probability in zip(got, plain, labels, top, strict=True):
            assert row[0].label == ("?" if probability < np.float32(p) else label)
            assert [q.probability for q in row] == [q.probability for q in before]
            assert row[1:] == before[1:]
        for bad in (-1, 2, math.nan):
            with pytest.raises(UsageError):
                model.predict(texts, min_probability=bad)
        with pytest.raises(UsageError):
            model.predict(texts, min_probability=0.5, unknown_label=model.labels[0])


def _macro_f1(truth: list[str], predicted: list[str]) -> float:
    f1s = []
    for label in sorted(set(truth) | set(predicted)):
        tp = sum(t == p == label for t, p in zip(truth, predicted, strict=True))
        precision = tp / max(1, predicted.count(label))
        recall = tp / max(1, truth.count(label))
        f1s.append(2 * precision * recall / (precision + recall) if tp else 0.0)
    return sum(f1s) / len(f1s)


def test_evaluate_coverage_and_accuracy_match_a_hand_count(trained_model, data_dir):
    with open(data_dir / "test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    texts, truth = [r["text"] for r in rows], [r["label"] for r in rows]
    predicted, top = _baseline(trained_model, texts)
    p = _thresholds(top)[0]
    args = ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--min-probability", repr(p)]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["abstention"]
    for entry in [report, *report["thresholds"]]:
        answered = [i for i in range(len(texts)) if top[i] >= np.float32(entry["min_probability"])]
        assert entry["answered"] == len(answered)
        assert entry["coverage"] == pytest.approx(len(answered) / len(texts))
        if not answered:
            assert entry["accuracy"] is None and entry["macro_f1"] is None
            continue
        right = sum(predicted[i] == truth[i] for i in answered)
        assert entry["accuracy"] == pytest.approx(right / len(answered))
        t, q = [truth[i] for i in answered], [predicted[i] for i in answered]
        assert entry["macro_f1"] == pytest.approx(_macro_f1(t, q))
    assert report["min_probability"] == p and 0 < report["answered"] < len(texts)
    assert [e["min_probability"] for e in report["thresholds"]] == [0.5, 0.7, 0.9, 0.95, 0.99]
    table = runner.invoke(app, args, env={"COLUMNS": "40"})  # narrow: headers shorten, numbers stay whole
    assert table.exit_code == 0, table.output
    assert f"{report['coverage']:.4f}" in table.stdout and f"{report['answered']} of {len(texts)}" in table.stdout
    assert f"{report['accuracy']:.4f}" in table.stdout
    plain = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "-f", "json"])
    assert "abstention" not in json.loads(plain.stdout)
