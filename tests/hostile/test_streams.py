"""Streams and options that fail outside lstm-cli's data (issue 32, class 7, in part): a full stdout, a closed
stdin, an output folder that does not exist, a file where --tensorboard wants a folder, and training data
with nothing to validate on or no word to learn. Each is one line with its exit code, never a traceback,
and the options are checked before the data is read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _ops import assert_one_error
from conftest import TINY, write_csv
from typer.testing import CliRunner

from lstm_cli.cli import app

LSTM_CLI = str(Path(sys.executable).with_name("lstm-cli"))
runner = CliRunner()


def run(args: list[str], cwd: Path, **streams) -> subprocess.CompletedProcess:
    streams = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, **streams}
    return subprocess.run([LSTM_CLI, *args], cwd=cwd, stderr=subprocess.PIPE, text=True, timeout=60, **streams)


@pytest.mark.parametrize("command", [["predict", "good"], ["predict", "good", "--format", "json"], ["info"]])
def test_a_full_stdout_is_one_line(command, trained_model, tmp_path):
    with open("/dev/full", "wb") as full:
        result = run([*command, "-m", str(trained_model)], tmp_path, stdout=full)
    assert "No space left" in assert_one_error(1, result.returncode, result.stderr)


@pytest.mark.parametrize("command", [["predict", "-"], ["evaluate", "-"], ["train", "-", *TINY, "-m", "new"]])
def test_a_closed_stdin_is_one_line(command, trained_model, tmp_path):
    model = [] if command[0] == "train" else ["-m", str(trained_model)]
    result = run([*command, *model], tmp_path, stdin=None, preexec_fn=lambda: os.close(0))
    assert "standard input is closed" in assert_one_error(2, result.returncode, result.stderr, result.stdout)
    assert list(tmp_path.iterdir()) == []


def test_an_output_in_a_missing_folder_is_refused_before_evaluating(trained_model, data_dir, tmp_path):
    result = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model),
                                 "-o", "missing/x.json"])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.stderr and result.stdout == ""
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert "--output" in line and "missing" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["tb", "tb/inside"])
def test_tensorboard_at_a_file_is_refused_before_the_data_is_read(where, data_dir, tmp_path):
    (tmp_path / "tb").write_text("my file")
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "-m", "m", "--tensorboard", where])
    assert "--tensorboard" in assert_one_error(2, result.exit_code, result.stderr, result.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tb"]  # no checkpoint, cache or model begun
    assert (tmp_path / "tb").read_text() == "my file"


@pytest.mark.parametrize(
    "rows,options,message",
    [
        ([("good fine", "x"), ("bad awful", "y"), ("meh so", "z")], [], "every class has a single row"),
        ([("good", "x"), ("bad", "y")] * 3, ["--min-count", "9"], "--min-count"),
    ],
)
@pytest.mark.parametrize("command", ["train", "tune"])
def test_data_with_nothing_to_validate_on_or_no_word_to_learn_is_one_line(command, rows, options, message, tmp_path):
    write_csv(tmp_path / "data.csv", rows)
    if command == "train":
        args = ["train", "data.csv", *TINY, *options]
    else:
        setting = ["--set", f"min_count={options[1]}"] if options else []
        args = ["tune", "data.csv", "--budget", "30s", "--trials", "1", "--quiet", *setting]
    result = runner.invoke(app, args)
    assert message in assert_one_error(1, result.exit_code, result.stderr, result.stdout)
    assert not (tmp_path / "lstm-model").exists()


@pytest.mark.parametrize("command", [["predict", "good"], ["predict", "--input", "texts.txt"]])
def test_a_closed_stdout_is_one_line(command, trained_model, tmp_path):
    (tmp_path / "texts.txt").write_text("good\nbad\n")
    result = run([*command, "-m", str(trained_model)], tmp_path, stdout=None, preexec_fn=lambda: os.close(1))
    assert "standard output is closed" in assert_one_error(2, result.returncode, result.stderr)


@pytest.mark.parametrize("command", [["predict", "good"], ["predict", "--input", "texts.txt", "--format", "json"]])
def test_predict_into_a_missing_folder_is_misuse_as_for_evaluate(command, trained_model, tmp_path):
    (tmp_path / "texts.txt").write_text("good\n")
    result = runner.invoke(app, [*command, "-m", str(trained_model), "-o", "missing/out.txt"])
    assert "missing" in assert_one_error(2, result.exit_code, result.stderr, result.stdout)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]
