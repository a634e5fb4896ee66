"""lstm-cli never replaces, restores or deletes a directory it cannot prove it made (issue 32, class 1).

Proof is lstm-cli's own format marker and version in metadata.json, with every other file listed in it
(every lstm-cli release wrote all three), or a checkpoint directory's marker file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _ops import assert_one_error, dead_pid, tree_digest
from conftest import TINY
from typer.testing import CliRunner

from lstm_cli.cli import app

runner = CliRunner()
TUNE_TINY = ["--set", "units=4", "--set", "embedding_dim=4", "--set", "epochs=1", "--quiet"]
# The commands that save a model directory at --model, each with arguments that would otherwise start work.
WRITERS = {
    "train": lambda data: ["train", str(data), *TINY, "--epochs", "1"],
    "tune": lambda data: ["tune", str(data), "--budget", "30s", "--trials", "1", *TUNE_TINY],
}


def _user_folder(tmp_path: Path, metadata: str | None, trained_model: Path) -> Path:
    """A user's project folder with files of their own and, maybe, a metadata.json of its own."""
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "notes.txt").write_text("do not lose me")
    (folder / "src" / "main.py").write_text("print('hello')\n")
    if metadata == "copied":  # an lstm-cli model's metadata.json, copied next to the user's files
        shutil.copy(trained_model / "metadata.json", folder / "metadata.json")
    elif metadata is not None:
        (folder / "metadata.json").write_text(metadata)
    return folder


FOREIGN_METADATA = [
    None,
    "{}",
    '{"format": "lstm-cli-model"}',  # the marker without a version or a listing of files
    '{"format": "lstm-cli-model", "format_version": 1, "files": {}}',  # listed nothing of what is there
    '{"format": "lstm-cli-model", "format_version": "1", "files": {"notes.txt": "x"}}',
    "[1, 2, 3]",
    "not json",
    "copied",
]


@pytest.mark.parametrize("command", sorted(WRITERS))
@pytest.mark.parametrize("metadata", FOREIGN_METADATA)
def test_a_users_folder_is_refused_before_any_work_and_left_untouched(
    command, metadata, trained_model, data_dir, tmp_path
):
    folder = _user_folder(tmp_path, metadata, trained_model)
    before, siblings = tree_digest(folder), sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, [*WRITERS[command](data_dir / "train.csv"), "-m", str(folder)])
    line = assert_one_error(2, result.exit_code, result.stderr, result.stdout)
    assert str(folder) in line and "--model" in line
    assert tree_digest(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # no staging, checkpoint or model beside it


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_a_model_directory_with_the_users_own_files_in_it_is_refused(command, trained_model, data_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    (model / "assets" / "my-notes.txt").write_text("mine")
    before = tree_digest(model)
    result = runner.invoke(app, [*WRITERS[command](data_dir / "train.csv"), "-m", str(model)])
    assert_one_error(2, result.exit_code, result.stderr, result.stdout)
    assert tree_digest(model) == before


@pytest.mark.parametrize("kind", ["file", "symlink to a model", "fifo"])
def test_something_else_at_the_model_path_is_refused(kind, trained_model, data_dir, tmp_path):
    import os

    target = tmp_path / "target"
    if kind == "file":
        target.write_text("my data")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(trained_model)
    before = tree_digest(tmp_path)
    result = runner.invoke(app, [*WRITERS["train"](data_dir / "train.csv"), "-m", str(target)])
    assert_one_error(2, result.exit_code, result.stderr, result.stdout)
    assert tree_digest(tmp_path) == before


def test_an_empty_directory_may_be_filled(tmp_path):
    from lstm_cli.owned import check_model_target

    (tmp_path / "model").mkdir()
    check_model_target(tmp_path / "model")  # nothing in it to lose: no error


@pytest.mark.parametrize("command", [["info"], ["predict", "good"], ["evaluate", "DATA"]])
def test_a_reader_restores_only_what_carries_lstm_cils_marker(command, trained_model, data_dir, tmp_path):
    """`.NAME.old-PID` of a dead process is what a killed two-rename swap leaves; a folder of the user's that
    happens to have that name is not put in the model's place, nor deleted."""
    folder = _user_folder(tmp_path, "{}", trained_model)
    hidden = folder.rename(tmp_path / f".foo.old-{dead_pid()}")
    before = tree_digest(hidden)
    command = [str(data_dir / "test.csv") if arg == "DATA" else arg for arg in command]
    result = runner.invoke(app, [*command, "-m", str(tmp_path / "foo")])
    assert_one_error(1, result.exit_code, result.stderr, result.stdout)
    assert not (tmp_path / "foo").exists() and tree_digest(hidden) == before


def test_a_model_lstm_cli_saved_is_replaced_and_only_its_own_leftovers_tidied(trained_model, data_dir, tmp_path):
    """What lstm-cli made (any release: the marker, an integer version and the files listing) is replaceable.
    Beside the target, dead processes' staging (`.NAME.tmp-PID-XXXXXXXX`) and retired (`.NAME.old-PID`)
    directories are tidied away only if lstm-cli began them; a user's folders with those names stay."""
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    old = json.loads((model / "metadata.json").read_text())["id"]
    pid = dead_pid()
    users = [tmp_path / f".model.tmp-{pid}-0123abcd", tmp_path / f".model.old-{pid}"]
    for folder in users:
        folder.mkdir()
        (folder / "metadata.json").write_text("{}")
        (folder / "mine.txt").write_text("mine")
    ours = tmp_path / f".model.tmp-{pid}-89abcdef"
    ours.mkdir()
    (ours / "metadata.json").write_text('{"format": "lstm-cli-model", "format_version": 1}\n')
    before = {p: tree_digest(p) for p in users}
    result = runner.invoke(app, [*WRITERS["train"](data_dir / "train.csv"), "-m", str(model)])
    assert result.exit_code == 0, result.output
    assert json.loads((model / "metadata.json").read_text())["id"] != old
    assert {p: tree_digest(p) for p in users} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", *(p.name for p in users)])
