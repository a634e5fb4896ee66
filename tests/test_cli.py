"""The command line, through its real entry point: train -> predict -> evaluate -> info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, pipe_path, toy_rows, write_csv
from typer.testing import CliRunner

from lstm_cli.cli import app

runner = CliRunner()


def test_train_prints_only_the_model_path_and_reports_on_stderr(data_dir):
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY[:-1], "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "lstm-model\n"
    assert "epoch 1/2" in result.stderr and "val_loss" in result.stderr
    for fact in ("rows", "classes", "vocabulary", "parameters", "device", "wall time"):
        assert fact in result.stderr
    assert "CPU" in result.stderr
    # the default location: predict works right after train, with no flags
    predicted = runner.invoke(app, ["predict", "good great"])
    assert predicted.exit_code == 0, predicted.output
    label, probability = predicted.stdout.rstrip("\n").split("\t")
    assert label in {"pos", "neg", "meh"} and 0 < float(probability) <= 1


@pytest.mark.parametrize("mode", ["argument", "file", "stdin", "piped"])
def test_predict_input_modes_give_one_line_per_input_in_order(trained_model, tmp_path, mode):
    texts = ["good great lovely", "", "bad awful", "okay plain", "good great lovely"]
    args, stdin = ["predict", "-m", str(trained_model), "--format", "json", "--all-probabilities"], None
    if mode == "argument":
        args += texts
    elif mode == "file":
        (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        args += ["--input", str(tmp_path / "in.txt")]
    else:
        stdin = "\n".join(texts) + "\n"
        args += ["-"] if mode == "stdin" else []
    result = runner.invoke(app, args, input=stdin)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in records] == texts
    for r in records:
        assert set(r["probabilities"]) == {"meh", "neg", "pos"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["probability"] == max(r["probabilities"].values())
        assert r["probabilities"][r["label"]] == r["probability"]
    # the same text twice in one batch: the same probabilities (to float32 rounding)
    for label, p in records[0]["probabilities"].items():
        assert records[4]["probabilities"][label] == pytest.approx(p, abs=1e-6)


def test_predict_formats_and_top_k(trained_model):
    base = ["predict", "-m", str(trained_model), "good great", "bad awful"]
    tsv = runner.invoke(app, base).stdout.splitlines()
    labels = runner.invoke(app, [*base, "--format", "label"]).stdout.splitlines()
    top = runner.invoke(app, [*base, "--top-k", "3"]).stdout.splitlines()
    records = [
        json.loads(x) for x in runner.invoke(app, [*base, "--format", "json", "--top-k", "2"]).stdout.splitlines()
    ]
    assert [line.split("\t")[0] for line in tsv] == labels == [r["label"] for r in records]
    for line, record in zip(top, records, strict=True):
        fields = line.split("\t")
        assert len(fields) == 6 and fields[0] == record["label"]
        probabilities = [float(p) for p in fields[1::2]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sorted(fields[0::2]) == ["meh", "neg", "pos"]
        assert [t["label"] for t in record["top"]] == fields[0:4:2]


def test_predict_streams_many_lines_in_order(trained_model):
    texts = [f"{'good' if i % 2 else 'bad'} line {i}" for i in range(2500)]
    result = runner.invoke(
        app, ["predict", "-m", str(trained_model), "-", "--batch-size", "256", "--format", "json"],
        input="\n".join(texts) + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(texts)
    assert [json.loads(line)["text"] for line in lines] == texts


def test_predict_with_empty_stdin_prints_nothing(trained_model):
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "-"], input="")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""


def test_evaluate_reports_all_metrics(trained_model, data_dir):
    result = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"]["evaluated"] == 45
    assert sum(sum(row) for row in report["confusion_matrix"]) == 45
    confusion = report["confusion_matrix"]
    correct = sum(confusion[i][i] for i in range(3))
    assert report["accuracy"] == pytest.approx(correct / 45)
    assert report["accuracy"] > 0.6  # the toy task is learnable by the tiny model
    for label in ("pos", "neg", "meh"):
        assert set(report["per_class"][label]) == {"precision", "recall", "f1", "support"}
    tables = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model)])
    assert tables.exit_code == 0
    for word in ("accuracy", "macro-F1", "precision", "recall", "Confusion matrix", "pos", "neg", "meh"):
        assert word in tables.stdout


def test_evaluate_counts_unknown_labels(trained_model, tmp_path):
    rows = toy_rows(9, seed=5) + [("good stuff", "surprise"), ("strange", "surprise"), ("what", "other")]
    path = write_csv(tmp_path / "odd.csv", rows)
    result = runner.invoke(app, ["evaluate", str(path), "-m", str(trained_model), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"]["evaluated"] == 9 and report["rows"]["unknown_label"] == 3
    assert report["unknown_labels"] == {"surprise": 2, "other": 1}
    assert "3 rows have labels the model was not trained on" in result.stderr


def test_info_describes_the_model(trained_model):
    result = runner.invoke(app, ["info", "-m", str(trained_model), "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["labels"] == ["meh", "neg", "pos"]
    assert meta["config"]["units"] == 6 and meta["config"]["embedding_dim"] == 8
    assert meta["training"]["data"]["rows"] == 120 and len(meta["training"]["data"]["sha256"]) == 64
    assert {"lstm_cli", "tensorflow", "keras"} <= set(meta["versions"])
    assert "val_accuracy" in meta["metrics"]
    human = runner.invoke(app, ["info", "-m", str(trained_model)])
    assert "meh, neg, pos" in human.stdout and "tensorflow" in human.stdout
    assert "standardized lower_and_split_punctuation" in " ".join(human.stdout.split())


def test_model_env_var_selects_the_model(trained_model, monkeypatch):
    monkeypatch.setenv("LSTM_CLI_MODEL", str(trained_model))
    result = runner.invoke(app, ["predict", "good"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[0] in {"pos", "neg", "meh"}


def test_every_command_has_help_with_an_example():
    for command in ("train", "predict", "evaluate", "info"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example: " in result.stdout, command


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lstm-cli")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs)


def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from lstm_cli.cli import app; sys.argv=['lstm-cli','--help']\n"
        "try: app()\nexcept SystemExit: pass\nassert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train" in done.stdout and "predict" in done.stdout


def test_installed_command_end_to_end_in_a_subprocess(trained_model, tmp_path):
    env = {**os.environ, "LSTM_CLI_MODEL": str(trained_model)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lstm-cli")), "predict", "-"],
        input="good great\n\nbad awful\n", capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no TensorFlow log noise
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 2 for line in lines)
    version = _run(["--version"])
    assert version.returncode == 0 and version.stdout.startswith("lstm-cli ")
    module = subprocess.run([sys.executable, "-m", "lstm_cli", "--help"], capture_output=True, text=True)
    assert module.returncode == 0 and "evaluate" in module.stdout


ERROR_CASES = [
    ("missing.csv", None, "missing.csv: file not found"),
    ("cols.csv", "body,label\nhi,a\n", "no column 'text' in the header (columns seen: 'body', 'label')"),
    ("empty.csv", "", "file is empty"),
    ("header.csv", "text,label\n", "no data rows"),
    ("one.csv", "text,label\nhi,a\nho,a\n", "only one class ('a')"),
    ("latin.csv", "text,label\ncaf\xe9,a\n".encode("latin-1"), "--encoding"),
    ("ragged.csv", "text,label\nx,a,extra\n", "ragged.csv:2: expected 2 fields, found 3"),
]


@pytest.mark.parametrize(("name", "content", "message"), ERROR_CASES)
def test_train_errors_are_one_line_exit_1_and_leave_no_model(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    result = runner.invoke(app, ["train", str(tmp_path / name), *TINY])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "lstm-model").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "-1"], "--epochs must be >= 1"),
        (["--dropout", "1"], "--dropout must be < 1.0"),
        (["--units", "0"], "--units must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--cell", "rnn"], "rnn"),
    ],
)
def test_out_of_range_options_are_usage_errors_before_any_work(tmp_path, args, message):
    result = runner.invoke(app, ["train", "does-not-exist.csv", *args])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "file not found" not in result.stderr  # rejected before the data is read


def test_evaluate_and_info_without_a_model(tmp_path, data_dir):
    for args in (["evaluate", str(data_dir / "test.csv")], ["info"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert result.stderr.startswith("Error: ") and "lstm-cli train" in result.stderr


def test_predict_usage_errors(trained_model, tmp_path):
    both = runner.invoke(app, ["predict", "-m", str(trained_model), "x", "--input", "f.txt"])
    assert both.exit_code == 2 and "not both" in both.stderr
    missing = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "nope.txt"])
    assert missing.exit_code == 1 and "nope.txt: file not found" in missing.stderr
    folder = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", str(tmp_path)])
    assert folder.exit_code == 1 and folder.stderr.count("\n") == 1 and "is a directory" in folder.stderr


def test_predict_and_evaluate_read_pipes(trained_model, data_dir, tmp_path):
    """`--input <(cut -f2 tickets.tsv)` and `evaluate <(zcat test.csv.gz)`: a path that is a pipe."""
    piped = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", str(pipe_path(b"good\nbad\n"))])
    assert piped.exit_code == 0 and len(piped.stdout.splitlines()) == 2
    test_csv = (data_dir / "test.csv").read_bytes()
    from_pipe = runner.invoke(app, ["evaluate", str(pipe_path(test_csv)), "-m", str(trained_model), "--json"])
    from_file = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--json"])
    assert from_pipe.exit_code == 0, from_pipe.stderr
    assert json.loads(from_pipe.stdout)["accuracy"] == json.loads(from_file.stdout)["accuracy"]
    assert json.loads(from_pipe.stdout)["rows"] == json.loads(from_file.stdout)["rows"]


# --- options that had no test ---------------------------------------------------------------------------


def test_validation_data_device_cpu_and_mixed_precision_on_a_cpu_machine(data_dir, tmp_path):
    import keras

    validation = write_csv(tmp_path / "val.csv", toy_rows(21, seed=9))
    args = ["train", str(data_dir / "train.csv"), *TINY[:-1], "--epochs", "1", "--validation-data", str(validation)]
    result = runner.invoke(app, [*args, "-m", str(tmp_path / "m"), "--device", "cpu", "--mixed-precision"])
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "m" / "metadata.json").read_text())["training"]
    assert training["rows"] == {"train": 120, "validation": 21}  # all of DATA trains, none is split off
    assert training["validation"]["path"] == str(validation.resolve()) and training["validation"]["rows"] == 21
    # --device cpu, and --mixed-precision declined on a CPU: float32, with a warning
    assert training["device"] == "CPU" and "Training on CPU" in result.stderr
    assert "Warning: --mixed-precision needs a GPU (float16 is slower on a CPU); training in float32" in result.stderr
    assert keras.config.dtype_policy().name == "float32"

    unseen = write_csv(tmp_path / "unseen.csv", [*toy_rows(6, seed=9), ("odd words", "surprise")])
    refused = runner.invoke(app, [*args[:-1], str(unseen), "-m", str(tmp_path / "m2")])
    assert refused.exit_code == 1 and refused.stdout == ""
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error")]
    assert errors == [f"Error: {unseen}: validation labels not in the training data: 'surprise'"]
    assert "Traceback" not in refused.stderr and not (tmp_path / "m2").exists()


def test_evaluate_writes_the_json_report_to_a_file(trained_model, data_dir, tmp_path):
    out = tmp_path / "reports" / "metrics[1].json"
    out.parent.mkdir()
    result = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout  # the tables still go to stdout
    written = json.loads(out.read_text(encoding="utf-8"))
    as_json = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--json"])
    assert written == json.loads(as_json.stdout)
    assert written["rows"]["evaluated"] == 45 and len(written["confusion_matrix"]) == 3


def test_evaluate_with_no_row_of_a_known_label_is_an_error(trained_model, tmp_path):
    path = write_csv(tmp_path / "other.csv", [("good", "x"), ("bad", "y"), ("meh", "x")])
    result = runner.invoke(app, ["evaluate", str(path), "-m", str(trained_model), "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no row has a label the model knows (labels here: 'x', 'y'" in lines[0]
    assert "--label-column" in lines[0]


def test_a_model_path_that_is_not_a_model_directory_is_refused_untouched(data_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "file.txt").write_text("keep me too")
    for target in ("mine", "file.txt"):
        result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY[:-1], "-m", str(tmp_path / target)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "is not an lstm-cli model directory" in lines[0] and "--model" in lines[0]
        assert "epoch" not in result.stderr and "Read " not in result.stderr  # refused before any work
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "file.txt").read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "mine"]


@pytest.mark.parametrize(
    ("flag", "standardize", "present", "absent"),
    [
        ([], "lower_and_split_punctuation", {"long", "term", "state", "run", "dont"}, {"longterm", "staterun"}),
        (["--punctuation", "strip"], "lower_and_strip_punctuation", {"longterm", "staterun", "dont"}, {"term"}),
    ],
)
def test_punctuation_splits_words_by_default_and_both_engines_agree(tmp_path, flag, standardize, present, absent):
    rows = [(f"Long-term gains, state-run firms don't {w}", "pos" if i % 2 else "neg")
            for i, w in enumerate(["up", "down", "U.S.", "e-mail", "a/b", "x"] * 4)]  # fmt: skip
    write_csv(tmp_path / "train.csv", rows)
    model = tmp_path / "m"
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), *TINY, "--epochs", "1", *flag, "-m", str(model)])
    assert result.exit_code == 0, result.output
    vocabulary = set(json.loads((model / "vocabulary.json").read_text(encoding="utf-8")))
    assert present <= vocabulary and not absent & vocabulary
    meta = json.loads((model / "metadata.json").read_text(encoding="utf-8"))
    engine = json.loads((model / "engine.json").read_text(encoding="utf-8"))
    assert meta["vectorizer"]["standardize"] == engine["tokenizer"]["standardize"] == standardize
    texts = ["Long-term, state-run", "don't e-mail U.S.", "long term state run"]
    options = ["--format", "json", "--all-probabilities"]
    out = {e: runner.invoke(app, ["predict", "-m", str(model), "--engine", e, *options, *texts])
           for e in ("numpy", "tensorflow")}  # fmt: skip
    probabilities = {e: [json.loads(line)["probabilities"] for line in r.stdout.splitlines()] for e, r in out.items()}
    for got, expected in zip(probabilities["numpy"], probabilities["tensorflow"], strict=True):
        assert got == pytest.approx(expected, abs=1e-5)
    # split: the hyphenated text is the spaced one, token for token
    if not flag:
        assert probabilities["numpy"][0] == probabilities["numpy"][2]
    explained = runner.invoke(app, ["explain", "-m", str(model), "--format", "json", "Long-term!"])
    tokens = [t["token"] for t in json.loads(explained.stdout)["tokens"]]
    assert tokens == (["long", "term"] if not flag else ["longterm"])


@pytest.mark.parametrize("terminal", [True, False])
def test_long_progress_lines_wrap_between_words_on_a_terminal_only(capsys, monkeypatch, terminal):
    """On a terminal rich breaks a long line between words at its width (the terminal itself would cut words);
    a log file or a pipe gets one line per message."""
    from lstm_cli import render
    from lstm_cli.cli._util import _console

    monkeypatch.setenv("TTY_COMPATIBLE", "1" if terminal else "0")
    monkeypatch.setenv("COLUMNS", "40")
    words = [f"word{i:02d}" for i in range(30)]
    _console().print(render.literal(" ".join(words)))
    lines = capsys.readouterr().err.splitlines()
    if terminal:
        assert len(lines) > 1 and all(len(line) <= 40 for line in lines)
        assert [word for line in lines for word in line.split()] == words  # no word cut in two
    else:
        assert lines == [" ".join(words)]
