"""Every JSON lstm-cli reads (files, the environment, options) goes through one loader bounded in size and
depth (lstm_cli.schema.load_json), and a checkpoint's files are checked before --resume uses them (issue 32,
classes 2 and 5): one `Error:` line, never a RecursionError or a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _forge import invoke, kept_checkpoint, one_error, train_args

from lstm_cli.schema import MAX_JSON_DEPTH, JsonLimit, load_json

DEEP = "[" * 50_000 + "]" * 50_000


def test_the_loader_bounds_depth_and_size_and_reads_everything_else_as_json_does():
    for text in ('{"a": [1, {"b": "[[[[[[["}], "c": "\\"]]]"}', "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "3"):
        assert load_json(text) == json.loads(text)
    for text in ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), DEEP, '{"a":' * 5000 + "1" + "}" * 5000):
        with pytest.raises(JsonLimit, match="nested"):
            load_json(text)
    with pytest.raises(JsonLimit, match="bytes"):
        load_json(json.dumps(["x" * 100]), max_bytes=50)


def test_class_weight_nested_thousands_deep_is_misuse(data_dir):
    line = one_error(invoke("train", str(data_dir / "train.csv"), "--class-weight", '{"pos": ' + DEEP + "}"), code=2)
    assert "--class-weight" in line and "nested" in line, line


def test_tf_config_nested_thousands_deep_is_one_error(data_dir, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": ' + DEEP + "}")
    result = invoke("train", str(data_dir / "train.csv"), "--epochs", "1")
    line = one_error(result, code=result.exit_code if result.exit_code in (1, 2) else -1)
    assert "TF_CONFIG" in line and "nested" in line, line


def test_tune_set_nested_thousands_deep_is_one_error(data_dir):
    result = invoke("tune", str(data_dir / "train.csv"), "--set", "units=" + DEEP, "--budget", "1")
    assert result.exit_code in (1, 2), result.output
    one_error(result, code=result.exit_code)


@pytest.fixture
def checkpoint(tmp_path_factory, data_dir, tmp_path) -> Path:
    copy = tmp_path / "ck"
    shutil.copytree(kept_checkpoint(tmp_path_factory.getbasetemp(), data_dir / "train.csv"), copy, symlinks=True)
    return copy


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda ck: (ck / "latest.npz").unlink(), "latest.npz"),
        (lambda ck: (ck / "state.json").write_text("[1, 2]"), "state.json"),
        (lambda ck: (ck / "state.json").write_text(DEEP), "state.json"),
        (lambda ck: (ck / "latest.npz").write_bytes(b"not a zip"), "latest.npz"),
        (lambda ck: _edit_state(ck, epoch="one"), "state.json"),
    ],
    ids=["latest.npz missing", "state.json a list", "state.json deep", "latest.npz not a zip", "epoch a string"],
)
def test_resume_from_a_damaged_checkpoint_is_one_error(checkpoint, data_dir, tmp_path, damage, named):
    args = train_args(data_dir / "train.csv", checkpoint, tmp_path / "model")
    damage(checkpoint)
    line = one_error(invoke(*args, "--resume"))
    assert named in line and "--resume" in line, line


def _edit_state(checkpoint: Path, **values) -> None:
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps({**state, **values}))
