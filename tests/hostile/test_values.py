"""Values that are not numbers, or numbers out of range, are refused by name before any work (issue 32,
class 4): every numeric option of train and tune, tune --set, TF_CONFIG, --worker-timeout, serve's timing and
process options. A run whose loss stops being a number ends with one line and keeps the previous model."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from _ops import assert_one_error, tree_digest
from conftest import TINY
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.config import _RANGES, TrainConfig

runner = CliRunner()
NUMERIC = [name for name, *_ in _RANGES]
INTEGERS = {f.name for f in dataclasses.fields(TrainConfig) if f.type.split(" |")[0] == "int"}
# Bounded above: a huge value is refused. The others (a learning rate, a gradient norm, a penalty) may be any
# finite number; a learning rate that makes the loss diverge is caught in training (see below).
UNBOUNDED = {name for name, _, high, _ in _RANGES if high is None}
BAD = ["nan", "inf", "-1", "huge"]


def assert_usage_error(result, *names: str) -> str:
    """Exit 2, exactly one `Error:` line naming the option (after click's usage lines), no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and result.stdout == "", result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and any(name in errors[0] for name in names), result.stderr
    return errors[0]


def test_the_table_covers_every_numeric_field():
    numeric = {f.name for f in dataclasses.fields(TrainConfig) if f.type.split(" |")[0] in ("int", "float")}
    assert numeric == set(NUMERIC)


def _bad(name: str, value: str) -> str:
    return (str(10**30) if name in INTEGERS else "1e300") if value == "huge" else value


@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_train_option_refuses_nan_by_name_before_any_work(name, data_dir, tmp_path):
    flag = "--" + name.replace("_", "-")
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, flag, "nan", "-m", "m"])
    assert_usage_error(result, flag)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_setting_refuses_what_is_not_a_number_in_range(name, value):
    """The one check train, tune and saved configurations go through (the option reaches it: above)."""
    if name in UNBOUNDED and value == "huge":
        pytest.skip("any finite value is allowed")
    number = float(_bad(name, value)) if name not in INTEGERS or value in ("nan", "inf") else int(_bad(name, value))
    with pytest.raises(ValueError, match="--" + name.replace("_", "-")):
        TrainConfig(**{name: number})


@pytest.mark.parametrize("name", ["units", "dropout", "learning_rate", "max_length"])
@pytest.mark.parametrize("value", BAD)
def test_a_sample_of_options_refuses_each_kind_of_bad_value_on_the_command_line(name, value, data_dir, tmp_path):
    flag = "--" + name.replace("_", "-")
    if name == "learning_rate" and value == "huge":
        return  # a finite learning rate is allowed (a diverging run is caught in training: below)
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, flag, _bad(name, value), "-m", "m"])
    assert_usage_error(result, flag)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "setting",
    ["units=2.5", "units=1e400", "units=true", "units=-3", "dropout=NaN", "dropout=nan", "learning_rate=Infinity",
     "validation_split=NaN", "max_length=10000000000", "seed=-1", "epochs=\"3\"", "layers=[1]"],
)  # fmt: skip
def test_tune_set_checks_the_value_as_train_does(setting, data_dir, tmp_path):
    result = runner.invoke(app, ["tune", str(data_dir / "train.csv"), "--budget", "5s", "--set", setting])
    field = setting.split("=")[0]
    assert_usage_error(result, "--" + field.replace("_", "-"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e300"])
@pytest.mark.parametrize("option", ["--validation-split", "--seed"])
def test_tune_options_check_their_values(option, value, data_dir, tmp_path):
    result = runner.invoke(app, ["tune", str(data_dir / "train.csv"), "--budget", "5s", option, value])
    assert_usage_error(result, option)


@pytest.mark.parametrize("budget", ["9" * 400, "99999999999h", "0"])
def test_tune_budget_is_a_finite_positive_duration(budget, data_dir):
    result = runner.invoke(app, ["tune", str(data_dir / "train.csv"), "--budget", budget])
    assert len(assert_usage_error(result, "--budget")) < 200


CLUSTER = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}


def _tf_config(**changes) -> str:
    config = json.loads(json.dumps(CLUSTER))
    for path, value in changes.items():
        section, key = path.split("__")
        config[section][key] = value
    return json.dumps(config).replace('"INDEX"', "1e400")


@pytest.mark.parametrize(
    "tf_config",
    [
        _tf_config(task__index="INDEX"),  # 1e400: infinite as a float
        _tf_config(task__index=float("nan")),  # NaN
        _tf_config(task__index=-1),
        _tf_config(task__index=2),
        _tf_config(task__index=0.5),
        _tf_config(task__index=True),
        _tf_config(task__index="one"),
        _tf_config(task__type=["worker"]),
        _tf_config(task__type="ps"),
        _tf_config(cluster__worker="ab"),
        _tf_config(cluster__worker=["ab", "cd"]),
        _tf_config(cluster__worker=[1, 2]),
        _tf_config(cluster__worker=["127.0.0.1:99999", "127.0.0.1:2"]),
        '{"cluster": [], "task": {}}',
        "[1, 2]",
        "not json",
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_a_tf_config_that_cannot_be_used_is_misuse(tf_config, data_dir, tmp_path):
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "-m", "m"], env={"TF_CONFIG": tf_config})
    assert len(assert_usage_error(result, "TF_CONFIG")) < 400
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "-1", "0", "1e300"])
@pytest.mark.parametrize("cluster", [False, True])
def test_worker_timeout_is_checked_before_a_supervisor_starts(value, cluster, data_dir, tmp_path):
    env = {"TF_CONFIG": json.dumps(CLUSTER)} if cluster else {}
    args = ["train", str(data_dir / "train.csv"), *TINY, "-m", "m", "--worker-timeout", value]
    assert_usage_error(runner.invoke(app, args, env=env), "--worker-timeout")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option,value", [("--batch-wait-ms", "nan"), ("--batch-wait-ms", "inf"),
                                          ("--batch-wait-ms", "1e300"), ("--processes", "100000000")])  # fmt: skip
def test_serve_checks_its_numbers(option, value):
    assert_usage_error(runner.invoke(app, ["serve", "-m", "no-model-needed", option, value]), option)


def test_a_diverging_run_stops_with_one_line_and_keeps_the_previous_model(trained_model, data_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    before = tree_digest(model)
    args = ["train", str(data_dir / "train.csv"), *TINY, "--learning-rate", "1e30", "-m", str(model)]
    result = runner.invoke(app, args)
    line = assert_one_error(1, result.exit_code, result.stderr, result.stdout)
    assert "diverged" in line and "--learning-rate" in line
    assert tree_digest(model) == before
