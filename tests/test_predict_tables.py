"""predict on tables: a CSV, TSV or JSON Lines file comes back in its format, every column kept, plus the
predictions of its text column alone; line mode refuses what looks like a table."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import toy_rows
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.tables import Added

runner = CliRunner()

ROWS = [
    ("7", 'good great, "lovely" film', "pos"),
    ("8", "awful\nbroken on two lines", "neg"),
    ("9", "text", "label"),  # a row that looks like the header
    ("10", "okay plain\tusual", "meh"),
    ("11", "", "pos"),  # an empty text still gets its row back
] + [(str(12 + i), text, label) for i, (text, label) in enumerate(toy_rows(30, seed=5))]


def write_table(path, rows, header=("id", "text", "label"), delimiter=","):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def direct(model, texts: list[str], *extra: str) -> list[list[str]]:
    """What predict says about each text given as an argument: the model sees exactly that text."""
    result = runner.invoke(app, ["predict", "-m", str(model), *extra, "--", *texts])
    assert result.exit_code == 0, result.output
    return [line.split("\t") for line in result.stdout.splitlines()]


def test_csv_keeps_its_columns_and_the_model_sees_only_the_text(trained_model, tmp_path):
    write_table(tmp_path / "in.csv", ROWS)
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.csv"])
    assert result.exit_code == 0, result.output
    out = list(csv.reader(io.StringIO(result.stdout, newline="")))
    assert out[0] == ["id", "text", "label", "predicted_label", "probability"]
    assert [row[:3] for row in out[1:]] == [list(row) for row in ROWS]  # every row, in order, as it was
    # Each prediction is the text's own: neither the header nor the label column reached the model.
    assert [row[3:] for row in out[1:]] == direct(trained_model, [text for _, text, _ in ROWS])


def test_top_k_and_all_probabilities_columns(trained_model, tmp_path):
    write_table(tmp_path / "in.tsv", ROWS[:4], delimiter="\t")
    args = ["predict", "-m", str(trained_model), "--input", "in.tsv", "--top-k", "2", "--all-probabilities"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = list(csv.reader(io.StringIO(result.stdout, newline=""), delimiter="\t"))
    labels = json.loads((trained_model / "metadata.json").read_text())["labels"]
    assert out[0] == ["id", "text", "label", "predicted_label", "probability", "label_2", "probability_2",
                      *(f"p_{label}" for label in labels)]  # fmt: skip
    expected = direct(trained_model, [text for _, text, _ in ROWS[:4]], "--top-k", "2")
    for row, want in zip(out[1:], expected, strict=True):
        assert row[3:7] == want
        every = dict(zip(labels, row[7:], strict=True))
        assert every[row[3]] == row[4] and every[row[5]] == row[6]


def test_no_header_tsv_by_column_number(trained_model, tmp_path):
    write_table(tmp_path / "in.tsv", ROWS, header=None, delimiter="\t")
    args = ["predict", "-m", str(trained_model), "--input", "in.tsv", "--no-header", "--text-column", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = list(csv.reader(io.StringIO(result.stdout, newline=""), delimiter="\t"))
    assert [row[:3] for row in out] == [list(row) for row in ROWS]
    assert [row[3:] for row in out] == direct(trained_model, [text for _, text, _ in ROWS])


def test_jsonl_keeps_fields_in_order_and_adds_predictions(trained_model, tmp_path):
    records = [{"id": int(i), "meta": {"a": [1, None]}, "body": text, "label": label} for i, text, label in ROWS]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    args = ["predict", "-m", str(trained_model), "--input", "in.jsonl", "--text-column", "body", "--top-k", "2",
            "--all-probabilities"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    expected = direct(trained_model, [r["body"] for r in records], "--top-k", "2")
    for record, got, want in zip(records, out, expected, strict=True):
        assert list(got)[:4] == list(record) and {k: got[k] for k in record} == record
        assert list(got)[4:] == ["predicted_label", "probability", "label_2", "probability_2", "probabilities"]
        assert [got["predicted_label"], repr(got["probability"]), got["label_2"], repr(got["probability_2"])] == want
        assert got["probabilities"][got["predicted_label"]] == got["probability"]


def test_small_batches_stream_the_same_rows(trained_model, tmp_path):
    write_table(tmp_path / "in.csv", ROWS)
    whole = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.csv"])
    batched = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.csv", "--batch-size", "3"])
    assert batched.exit_code == 0, batched.output
    whole_rows = list(csv.reader(io.StringIO(whole.stdout, newline="")))
    batched_rows = list(csv.reader(io.StringIO(batched.stdout, newline="")))
    assert [row[:4] for row in batched_rows] == [row[:4] for row in whole_rows]
    # float32 sums in another batch shape may differ in the last digit, as for lines
    assert [float(row[4]) for row in batched_rows[1:]] == pytest.approx([float(row[4]) for row in whole_rows[1:]])


def test_output_file_is_written_whole_or_not_at_all(trained_model, tmp_path):
    write_table(tmp_path / "in.csv", ROWS)
    shown = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.csv"])
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.csv", "-o", "out.csv"])
    assert result.exit_code == 0 and result.stdout == ""
    assert (tmp_path / "out.csv").read_text(encoding="utf-8") == shown.stdout
    # A malformed row far down: exit 1 naming it, and the earlier out.csv is left as it was.
    (tmp_path / "bad.csv").write_text((tmp_path / "in.csv").read_text(encoding="utf-8") + "1,2,3,4\n", encoding="utf-8")
    failed = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "bad.csv", "-o", "out.csv"])
    assert failed.exit_code == 1
    assert "bad.csv:" in failed.stderr and "expected 3 fields, found 4" in failed.stderr
    assert (tmp_path / "out.csv").read_text(encoding="utf-8") == shown.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "in.csv", "out.csv"]


def test_a_table_given_as_lines_is_refused_with_the_fix(trained_model, tmp_path):
    write_table(tmp_path / "tickets.txt", ROWS[:3], header=("text", "label", "id"))
    for args, kwargs in (
        (["--input", "tickets.txt"], {}),
        (["-"], {"input": (tmp_path / "tickets.txt").read_text()}),
    ):
        result = runner.invoke(app, ["predict", "-m", str(trained_model), *args], **kwargs)
        assert result.exit_code == 2, result.output
        assert result.stdout == "" and result.stderr.count("Error:") == 1
        assert "header naming a text column" in result.stderr and "--input-format csv" in result.stderr
    forced = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "tickets.txt", "--input-format",
                                 "lines"])  # fmt: skip
    assert forced.exit_code == 0 and len(forced.stdout.splitlines()) == 4 + 1  # a text has a newline in it
    table = runner.invoke(app, ["predict", "-m", str(trained_model), "--input-format", "csv", "-"],
                          input=(tmp_path / "tickets.txt").read_text())  # fmt: skip
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[0] == "text,label,id,predicted_label,probability"


def test_fasttext_lines_are_labelled_without_their_labels(trained_model, tmp_path):
    texts = ["good great film", "awful sad"]
    (tmp_path / "in.ft").write_text("".join(f"__label__pos {t}\n" for t in texts), encoding="utf-8")
    refused = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.ft"])
    assert refused.exit_code == 2 and "--input-format fasttext" in refused.stderr
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.ft", "--input-format", "fasttext"])
    assert result.exit_code == 0, result.output
    assert [line.split("\t") for line in result.stdout.splitlines()] == direct(trained_model, texts)


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--column-prefix", ""], "already has a column 'predicted_label'", 2),
        (["--text-column", "body"], "no column 'body' in the header", 1),
        (["--format", "json"], "--format is for lines", 2),
        (["--input-format", "lines", "--no-header"], "--no-header is for tables", 2),
        (["--input-format", "jsonl", "--delimiter", "tab"], "--delimiter is for CSV/TSV tables", 2),
    ],
)
def test_table_misuse(trained_model, tmp_path, args, message, code):
    write_table(tmp_path / "in.csv", ROWS[:2], header=("text", "label", "predicted_label"))
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.csv", *args])
    assert result.exit_code == code, result.output
    assert message in result.stderr and result.stderr.count("Error:") == 1 and result.stdout == ""


def test_a_column_prefix_names_the_added_columns_apart(trained_model, tmp_path):
    write_table(tmp_path / "in.csv", ROWS[:2], header=("text", "label", "predicted_label"))
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.csv", "--column-prefix", "new_"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "text,label,predicted_label,new_predicted_label,new_probability"


@given(labels=st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=8, unique=True),
       k=st.integers(1, 8), every=st.booleans(), jsonl=st.booleans())  # fmt: skip
def test_added_column_names_never_collide_whatever_the_labels(labels, k, every, jsonl):
    added = Added.for_model(labels, k=min(k, len(labels)), all_probabilities=every, prefix="", jsonl=jsonl)
    assert len(set(added.names)) == len(added.names)
    if every and not jsonl:
        assert added.names[-len(labels) :] == [f"p_{label}" for label in labels]


def test_the_line_path_loads_no_table_machinery(trained_model):
    """A one-off predict stays fast: csv and the table code are imported only for tables."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\nfrom lstm_cli.cli import main\n"
        f"sys.argv = ['lstm-cli', 'predict', '-m', {str(trained_model)!r}, 'good film']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('csv', 'lstm_cli.tables') if m in sys.modules), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this lstm_cli, whatever the directory
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.count("\t") == 1 and done.stderr.strip().splitlines()[-1] == "[]"


def test_crlf_tables_keep_their_line_ends_and_lines_go_to_a_file_too(trained_model, tmp_path):
    (tmp_path / "in.csv").write_bytes(b'text,id\r\ngood film,1\r\n"two\r\nlines",2\r\n')
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "in.csv", "-o", "out.csv"])
    assert result.exit_code == 0, result.output
    out = (tmp_path / "out.csv").read_bytes()
    assert out.startswith(b"text,id,predicted_label,probability\r\ngood film,1,") and out.count(b"\r\n") == 4
    shown = runner.invoke(app, ["predict", "-m", str(trained_model), "good film", "bad"])
    written = runner.invoke(app, ["predict", "-m", str(trained_model), "good film", "bad", "-o", "out.tsv"])
    assert written.exit_code == 0 and written.stdout == ""
    assert (tmp_path / "out.tsv").read_text(encoding="utf-8") == shown.stdout
