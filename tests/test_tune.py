"""`lstm-cli tune`: budget parsing, the search, the table, the saved best model, and interrupts."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import toy_rows, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.config import TrainConfig
from lstm_cli.tune import _candidates, describe, parse_budget, parse_setting, search_space

runner = CliRunner()
LSTM_CLI = str(Path(sys.executable).with_name("lstm-cli"))
# conftest's TINY model, fixed with --set: what is left of the space (dropouts, bidirectional, max_length) is searched.
TINY_SET = [
    "--set", "embedding_dim=8", "--set", "units=6", "--set", "dense_units=8", "--set", "max_tokens=60",
    "--set", "epochs=2", "--set", "batch_size=16", "--set", "learning-rate=0.02",
]  # fmt: skip
ROW = re.compile(r"^\s*(\d+)(\*?)\s+(\d\.\d{4})\s+(\d\.\d{4})\s+(\d+)\s+([\d.]+)s\s+(.*)$")


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("10m", 600), ("1h", 3600), ("600", 600), ("2.5", 2.5), ("1h30m", 5400), (" 5M ", 300)],
)
def test_budget_parsing(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "0", "0s", "-5", "m", "1 h 3", "ten minutes", "1e3"])
def test_bad_budgets_exit_2_before_any_work(text):
    result = runner.invoke(app, ["tune", "no-such.csv", "--budget", text])
    assert result.exit_code == 2, result.output
    assert "--budget" in result.stderr and "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "nonsense=1"], "--set expects FIELD=VALUE"),
        (["--set", "units"], "--set expects FIELD=VALUE"),
        (["--set", "units=abc"], "--units must be a number"),
        (["--metric", "f1"], "'f1' is not one of"),
        (["--trials", "0"], "--trials"),
        (["--class-weight", "{x"], "--class-weight"),
    ],
)
def test_tune_misuse_exits_2(tmp_path, args, message):
    write_csv(tmp_path / "train.csv", toy_rows(30))
    result = runner.invoke(app, ["tune", "train.csv", "--budget", "5s", *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stdout == ""


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_any_budget_text_is_positive_seconds_or_a_value_error(text):
    try:
        seconds = parse_budget(text)
    except ValueError as e:
        assert str(e).startswith("--budget")
        return
    assert 0 < seconds < float("inf")


def test_set_values_are_json_or_words():
    assert parse_setting("units=64") == ("units", 64)
    assert parse_setting("learning-rate=3e-4") == ("learning_rate", 3e-4)
    assert parse_setting("bidirectional=true") == ("bidirectional", True)
    assert parse_setting("cell=gru") == ("cell", "gru")
    assert parse_setting("batch_size=null") == ("batch_size", None)
    assert parse_setting("pooling=max,mean") == parse_setting('pooling=["max", "mean"]') == ("pooling", ("max", "mean"))
    assert parse_setting("embedding_pooling=") == ("embedding_pooling", ())
    # The table shows an automatic value as "auto", which --set takes back for the fields that have one.
    assert parse_setting("bigram_buckets=auto") == ("bigram_buckets", None)
    assert parse_setting("batch_size=auto") == ("batch_size", None)
    assert describe({"bigram_buckets": None, "units": 64}) == "bigram_buckets=auto units=64"
    assert parse_setting("cell=auto") == ("cell", "auto")  # a field without an automatic value keeps the word


def test_the_space_drops_fixed_and_unknown_fields_and_draws_each_setting_once(monkeypatch):
    import lstm_cli.tune as tune

    monkeypatch.setattr(tune, "SPACE", {"units": (4, 8), "dropout": (0.0, 0.5), "not_a_field_yet": (1, 2)})
    base = TrainConfig(units=16, dropout=0.1)
    assert search_space(base, {"dropout"}) == {"units": (4, 8)}
    space = search_space(base, set())
    drawn = list(_candidates(base, space, seed=0))
    assert drawn[0] == {"units": 16, "dropout": 0.1}  # the starting configuration comes first
    assert len(drawn) == 5 and len({tuple(d.items()) for d in drawn}) == 5  # then all 4 draws, once each
    assert list(_candidates(base, space, seed=0)) == drawn  # seeded


def test_draws_that_build_the_same_model_are_one_trial(monkeypatch):
    import lstm_cli.tune as tune

    space = {"bigram_buckets": (0, 16), "bigram_min_count": (0, 2), "dense_units": (0, 8), "dense_dropout": (0.2, 0.5)}
    monkeypatch.setattr(tune, "SPACE", space)
    base = TrainConfig(bigram_buckets=16, bigram_min_count=0, dense_units=8, dense_dropout=0.5)
    drawn = list(_candidates(base, search_space(base, set()), seed=0))
    # 16 combinations, 9 models: without bigrams the min count is moot, without the Dense layer its dropout.
    assert len(drawn) == 9 and len({tuple(sorted(d.items())) for d in drawn}) == 9
    for trial in drawn:
        assert trial["bigram_buckets"] or trial["bigram_min_count"] == base.bigram_min_count
        assert trial["dense_units"] or trial["dense_dropout"] == base.dense_dropout
    # A field the user fixed is theirs, moot or not: only searched fields are put back.
    fixed = dataclasses.replace(base, bigram_min_count=2)
    drawn = list(_candidates(fixed, search_space(fixed, {"bigram_min_count"}), seed=0))
    assert len(drawn) == 6 and all("bigram_min_count" not in d for d in drawn)


def test_an_automatic_dense_layer_is_the_model_it_builds(monkeypatch):
    """The automatic --dense-units is 0 with multi-label data (128 otherwise): a draw that differs from another
    only in the moot dropout of that missing layer, or in naming its width 'auto', is the same trial."""
    import lstm_cli.tune as tune

    monkeypatch.setattr(tune, "SPACE", {"dense_units": (0, 64, 128), "dense_dropout": (0.2, 0.5)})
    multi = TrainConfig(multi_label=True)  # dense_units None: automatic
    drawn = list(_candidates(multi, search_space(multi, set()), seed=0))
    # The start (auto = 0) and the draws of 0 are one model; 64 and 128 with each dropout: 5 models in all.
    assert drawn[0] == {"dense_units": 0, "dense_dropout": multi.dense_dropout}
    assert len(drawn) == 5 and len({tuple(sorted(d.items())) for d in drawn}) == 5
    assert sum(d["dense_units"] == 0 for d in drawn) == 1
    single = TrainConfig()  # auto = 128: the start is the draw of 128 with the default dropout
    drawn = list(_candidates(single, search_space(single, set()), seed=0))
    assert drawn[0] == {"dense_units": 128, "dense_dropout": single.dense_dropout} and len(drawn) == 5
    # --set dense_units=auto with multi-label data: no Dense layer, so its dropout is not searched in vain.
    assert list(_candidates(multi, search_space(multi, {"dense_units"}), seed=0)) == [
        {"dense_dropout": multi.dense_dropout}
    ]


def _table(stderr: str) -> list[re.Match]:
    return [m for m in map(ROW.match, stderr.splitlines()) if m]


def test_tune_prints_trials_and_saves_the_best_one(tmp_path):
    write_csv(tmp_path / "train.csv", toy_rows(90, seed=4))
    (tmp_path / "v.txt").write_text("good 1 0 0 0\nbad 0 1 0 0\nokay 0 0 1 0\nthe 0 0 0 1\n", encoding="utf-8")
    args = ["tune", "train.csv", "--budget", "10m", "--trials", "3", "--metric", "macro_f1", "-m", "best"]
    result = runner.invoke(app, [*args, *TINY_SET, "--vectors", "v.txt"])
    assert result.exit_code == 0, result.output
    assert "--embedding-dim 8 ignored: the vectors in v.txt have 4 dimensions" in result.stderr
    assert result.stdout == "best\n"
    assert "trial  accuracy  macro_f1" in result.stderr
    rows = _table(result.stderr)
    metadata = json.loads((tmp_path / "best" / "metadata.json").read_text())
    tuning = metadata["tuning"]
    assert [int(r[1]) for r in rows] == [t["number"] for t in tuning["trials"]] == [1, 2, 3]
    for row, trial in zip(rows, tuning["trials"], strict=True):
        assert float(row[4]) == pytest.approx(trial["macro_f1"], abs=5e-5)
    assert tuning["metric"] == "macro_f1" and tuning["budget_seconds"] == 600 and tuning["trial_cap"] == 3
    assert tuning["interrupted"] is False
    best = max(tuning["trials"], key=lambda t: t["macro_f1"])  # max() keeps the first of equals, as tune does
    assert tuning["best_trial"] == best["number"]
    # the saved model is that trial's: its settings, and its validation accuracy at the kept epoch
    fixed = {k: v for k, v in best["settings"].items() if v is not None}  # None: automatic, resolved when saved
    assert {k: metadata["config"][k] for k in fixed} == fixed
    assert all(metadata["config"][k] is not None for k in best["settings"])
    assert metadata["metrics"]["val_accuracy"] == pytest.approx(best["accuracy"], abs=1e-6)
    assert set(best["settings"]) == set(tuning["space"]) and "units" not in tuning["space"]
    assert metadata["config"]["units"] == 6 and metadata["training"]["validation"] == {"split": 0.1, "seed": 1337}
    # the vectors, read once, reach every trial; their width is not searched
    assert metadata["vectors"]["coverage"]["vocabulary_words"] == 4 and metadata["config"]["embedding_dim"] == 4
    # trial 1 is the starting configuration; the others differ from it and from each other
    assert tuning["trials"][0]["settings"]["dropout"] == TrainConfig().dropout
    assert len({json.dumps(t["settings"], sort_keys=True) for t in tuning["trials"]}) == 3
    improvements = [int(r[1]) for r in rows if r[2] == "*"]  # marked as each beat the best so far
    assert improvements[0] == 1 and improvements[-1] == best["number"]
    predicted = runner.invoke(app, ["predict", "-m", "best", "good great"])
    assert predicted.exit_code == 0 and predicted.stdout.split("\t")[0] in {"pos", "neg", "meh"}


@pytest.mark.slow
def test_the_budget_ends_the_running_trial_and_the_search(tmp_path):
    write_csv(tmp_path / "train.csv", toy_rows(60, seed=5))
    result = runner.invoke(app, ["tune", "train.csv", "--budget", "1s", "-m", "m", *TINY_SET, "--set", "epochs=50"])
    assert result.exit_code == 0, result.output
    [trial] = json.loads((tmp_path / "m" / "metadata.json").read_text())["tuning"]["trials"]
    assert trial["cut_by_budget"] and trial["epochs"] < 50
    assert "(budget ran out)" in result.stderr


def _start_tune(cwd: Path) -> subprocess.Popen:
    args = ["tune", "train.csv", "--budget", "1h", "-m", "m", *TINY_SET]
    return subprocess.Popen([LSTM_CLI, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _read_until(proc: subprocess.Popen, pattern: re.Pattern, seen: list[str]) -> None:
    while line := proc.stderr.readline():
        seen.append(line)
        if pattern.search(line):
            return
    raise AssertionError("".join(seen))


def test_sigterm_saves_the_best_trial_so_far(tmp_path):
    write_csv(tmp_path / "train.csv", toy_rows(60, seed=6))
    proc, seen = _start_tune(tmp_path), []
    _read_until(proc, ROW, seen)  # the first trial has finished; a 1-hour search goes on
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(seen) + err
    assert out == "m\n" and "Traceback" not in err
    assert "Interrupted: saving the best of" in err
    tuning = json.loads((tmp_path / "m" / "metadata.json").read_text())["tuning"]
    finished = len(_table("".join(seen) + err))
    assert tuning["interrupted"] is True and len(tuning["trials"]) == finished >= 1
    best = max(tuning["trials"], key=lambda t: t["accuracy"])
    assert tuning["best_trial"] == best["number"]
    config = json.loads((tmp_path / "m" / "metadata.json").read_text())["config"]
    for name, value in best["settings"].items():  # an automatic setting is saved as the value it came to
        assert config[name] == value or (value is None and isinstance(config[name], (int, float))), name


def test_an_interrupt_before_any_trial_finished_saves_nothing(tmp_path):
    write_csv(tmp_path / "train.csv", toy_rows(60, seed=6))
    proc, seen = _start_tune(tmp_path), []
    _read_until(proc, re.compile("^Searching"), seen)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + err
    assert "Error: interrupted before the first trial finished; no model was saved at m" in err
    assert out == "" and not (tmp_path / "m").exists()


def test_an_interrupt_flag_stops_the_running_trial_even_if_its_keyboardinterrupt_was_lost(tmp_path):
    """A signal handler's KeyboardInterrupt raised inside a __del__ is printed and ignored by Python; tune also
    asks `interrupt_requested()`: the running trial stops after its epoch and does not count."""
    from lstm_cli.data import read_labeled
    from lstm_cli.tune import tune

    data = read_labeled(write_csv(tmp_path / "train.csv", toy_rows(60, seed=6)))
    base = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, epochs=3, batch_size=16,
                       learning_rate=0.02)  # fmt: skip
    fixed = ["embedding_dim", "units", "dense_units", "max_tokens", "epochs", "batch_size", "learning_rate"]
    with pytest.raises(KeyboardInterrupt):  # no trial finished
        tune(base, data, budget_seconds=3600, fixed=fixed, interrupt_requested=lambda: True)
    finished = []
    requested = lambda: bool(finished)  # noqa: E731
    result = tune(base, data, budget_seconds=3600, fixed=fixed, max_trials=5, interrupt_requested=requested,
                  on_trial=lambda trial, best: finished.append(trial))  # fmt: skip
    assert result.interrupted and [t.number for t in result.trials] == [1] and finished == result.trials


def test_an_interrupt_waits_for_the_printed_row_then_ends_the_search():
    """SIGTERM during a trial's row (rich's print) is held until the row is done, then raised: it landing
    inside rich's print used to get the row printed twice."""
    import os

    from lstm_cli.cli._util import _interrupt, uninterrupted

    done = []

    def row():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):  # bytecodes on which Python runs the handler if nothing holds it
            pass
        done.append(True)

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            uninterrupted(row)()
        assert done == [True]
        with pytest.raises(KeyboardInterrupt):  # outside a held section it interrupts at once
            row()
        assert done == [True]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_tune_refuses_a_pretrained_encoder_it_would_not_load(data_dir, tmp_path):
    """The trials train from scratch: a --set pretrained=ENCODER would be recorded in the table and the
    model's config while no trial used it, so it is refused before any work."""
    args = ["tune", str(data_dir / "train.csv"), "-m", str(tmp_path / "m"), "--set", "pretrained=x"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--set pretrained is not supported" in result.stderr and "train --pretrained" in result.stderr
    assert not (tmp_path / "m").exists()
