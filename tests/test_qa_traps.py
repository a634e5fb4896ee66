"""Traps a new user walked into after issue 28: explain reading a CSV as lines, --no-header silently training on
a header row, and predict/evaluate -o DIR failing only after the model had loaded."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.data import read_labeled

runner = CliRunner()


def rows_of(path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def explained(model, *args: str, **kwargs) -> list[dict]:
    result = runner.invoke(app, ["explain", "-m", str(model), "--format", "json", *args], **kwargs)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_explain_reads_a_tables_text_column_not_its_header_or_labels(trained_model, data_dir):
    texts = [row["text"] for row in rows_of(data_dir / "test.csv")][:6]
    (data_dir / "few.csv").write_text("label,text\n" + "".join(f"pos,{t}\n" for t in texts), encoding="utf-8")
    from_table = explained(trained_model, "--input", str(data_dir / "few.csv"))
    assert from_table == explained(trained_model, *texts)  # each row's text alone: no header, no label
    tokens = [t["token"] for r in from_table for t in r["tokens"]]
    assert "label" not in tokens and "pos" not in tokens


def test_explain_takes_the_tables_column_options_its_error_names(trained_model, tmp_path):
    (tmp_path / "msg.csv").write_text("message,label\ngood great film,pos\n", encoding="utf-8")
    (tmp_path / "bare.csv").write_text("pos,good great film\n", encoding="utf-8")
    missing = runner.invoke(app, ["explain", "-m", str(trained_model), "--input", str(tmp_path / "msg.csv")])
    assert missing.exit_code == 1 and "--text-column" in missing.stderr  # an option explain has
    want = explained(trained_model, "good great film")
    assert explained(trained_model, "--input", str(tmp_path / "msg.csv"), "--text-column", "message") == want
    bare = ["--input", str(tmp_path / "bare.csv"), "--no-header", "--text-column", "2"]
    assert explained(trained_model, *bare) == want
    lines = runner.invoke(app, ["explain", "-m", str(trained_model), "--text-column", "message", "good"])
    assert lines.exit_code == 2 and "for tables" in lines.stderr


def test_explain_refuses_a_table_given_as_lines_with_the_fix(trained_model, data_dir):
    table = (data_dir / "test.csv").read_text(encoding="utf-8")
    refused = runner.invoke(app, ["explain", "-m", str(trained_model), "-"], input=table)
    assert refused.exit_code == 2, refused.output
    assert refused.stdout == "" and refused.stderr.count("Error:") == 1
    assert "header naming a text column" in refused.stderr and "--input-format csv" in refused.stderr
    as_csv = explained(trained_model, "--input-format", "csv", "-", input=table)
    assert len(as_csv) == len(rows_of(data_dir / "test.csv"))
    as_lines = explained(trained_model, "--input-format", "lines", "-", input=table)
    assert len(as_lines) == len(table.splitlines())  # the header too, as asked


def test_no_header_on_a_file_with_a_header_warns_on_one_line(trained_model, data_dir):
    read = read_labeled(data_dir / "test.csv", header=False, text_column=1, label_column=2)
    assert len(read.warnings) == 1 and "looks like a header" in read.warnings[0]
    assert (read.texts[0], read.labels[0]) == ("text", "label")  # read as data, as asked
    headless = data_dir / "headless.csv"
    headless.write_text("".join(f"{r['text']},{r['label']}\n" for r in rows_of(data_dir / "test.csv")[:5]))
    assert read_labeled(headless, header=False, text_column=1, label_column=2).warnings == []
    for args in (
        ["evaluate", str(data_dir / "test.csv")],
        ["predict", "--input", str(data_dir / "test.csv")],
        ["explain", "--input", str(data_dir / "test.csv")],
    ):
        result = runner.invoke(app, [*args, "-m", str(trained_model), "--no-header"])
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if "looks like a header" in line]
        assert len(warnings) == 1 and "leave out --no-header" in warnings[0], result.stderr
    quiet = runner.invoke(app, ["evaluate", str(headless), "-m", str(trained_model), "--no-header"])
    assert quiet.exit_code == 0 and "looks like a header" not in quiet.stderr


def test_output_to_a_directory_is_misuse_before_the_model_loads(tmp_path, data_dir):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    missing_model = str(tmp_path / "no-model")  # loading it would fail with exit 1: it must not be reached
    for args in (
        ["predict", "hello", "-o", str(folder)],
        ["predict", "--input", str(data_dir / "test.csv"), "-o", str(folder)],
        ["evaluate", str(data_dir / "test.csv"), "-o", str(folder)],
        ["evaluate", str(data_dir / "test.csv"), "--errors", str(folder)],
    ):
        result = runner.invoke(app, [*args, "-m", missing_model])
        assert result.exit_code == 2, (args, result.output)
        assert "is a directory" in result.stderr and result.stderr.count("Error:") == 1
        assert result.stdout == ""
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]


def test_help_uses_a_wide_terminal_and_fits_it():
    lines = {}
    for columns in (80, 100, 120):  # a real process: the terminal width is read as a user's shell has it
        env = {**os.environ, "COLUMNS": str(columns)}
        result = subprocess.run([sys.executable, "-m", "lstm_cli", "train", "--help"], capture_output=True,
                                text=True, env=env, check=True)  # fmt: skip
        lines[columns] = result.stdout.splitlines()
        assert columns == 80 or max(len(line) for line in lines[columns]) <= columns  # the example is 94 long
    assert len(lines[120]) < len(lines[100]) < len(lines[80]) - 10  # click alone wrapped at 80 whatever the width
    assert "JSON Lines" in "\n".join(lines[100])


def test_output_dash_is_stdout_for_predict_and_refused_for_evaluate(trained_model, data_dir, tmp_path):
    plain = runner.invoke(app, ["predict", "-m", str(trained_model), "good great"])
    dashed = runner.invoke(app, ["predict", "-m", str(trained_model), "good great", "-o", "-"])
    assert dashed.exit_code == 0 and dashed.stdout == plain.stdout != ""
    refused = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "-o", "-"])
    assert refused.exit_code == 2 and refused.stderr.count("Error:") == 1 and refused.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no file named '-' (the test runs in tmp_path)


def test_a_small_confusion_matrix_keeps_its_title_on_one_line(trained_model, data_dir):
    result = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model)],
                           env={"COLUMNS": "100"})  # fmt: skip
    assert result.exit_code == 0, result.output
    title = "Confusion matrix (rows: true, columns: predicted)"
    assert any(line.strip() == title for line in result.stdout.splitlines()), result.stdout


def test_usage_names_the_texts_once():
    for command in ("predict", "explain"):
        usage = runner.invoke(app, [command, "--help"]).stdout.splitlines()[0]
        assert usage == f"Usage: lstm-cli {command} [OPTIONS] [TEXT]...", usage  # was [[TEXT]...]...
