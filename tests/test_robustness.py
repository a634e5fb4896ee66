"""Hostile input: odd CSVs, huge texts, junk bytes, arbitrary Unicode, damaged disks. Never a traceback."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, npz_layout, toy_rows, unescape_tsv, write_csv
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.artifact import read_metadata, verify_files
from lstm_cli.cli import app
from lstm_cli.data import read_labeled
from lstm_cli.errors import DataError

runner = CliRunner()


def test_lone_carriage_returns_and_nul_bytes(tmp_path):
    (tmp_path / "cr.csv").write_bytes(b"text,label\rhello there,a\rbye now,b\r")
    assert read_labeled(tmp_path / "cr.csv").texts == ["hello there", "bye now"]
    (tmp_path / "nul.csv").write_bytes(b'text,label\nhe\x00llo,a\n"q\x00",b\n')
    assert read_labeled(tmp_path / "nul.csv").texts == ["he\x00llo", "q\x00"]


def test_awkward_labels_round_trip_through_training(tmp_path):
    labels = ["a, b", 'say "hi"', "multi\nline", "🙂 emoji", "  padded  ", "007"]
    words = "one two three four five six".split()
    rows = [(f"{word} {i % 4}", label) for label, word in zip(labels, words, strict=True) for i in range(8)]
    path = write_csv(tmp_path / "labels.csv", rows)
    data = read_labeled(path)
    assert sorted(set(data.labels)) == sorted({x.strip() for x in labels})
    # No dropout: six classes of eight rows each must be learnt exactly by a tiny network.
    args = ["train", str(path), "-m", str(tmp_path / "m"), *TINY, "--epochs", "15", "--validation-split", "0",
            "--embedding-dropout", "0", "--dense-dropout", "0"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    meta = read_metadata(tmp_path / "m")
    assert sorted(meta["labels"]) == sorted({x.strip() for x in labels})
    out = runner.invoke(app, ["predict", "-m", str(tmp_path / "m"), "--format", "json", "one 1", "six 2"])
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["label"] for r in records] == ["a, b", "007"]


def test_single_row_class_is_kept_for_training_with_a_warning(tmp_path):
    rows = toy_rows(30, labels=("pos", "neg")) + [("strange words", "rare")]
    path = write_csv(tmp_path / "rare.csv", rows)
    result = runner.invoke(app, ["train", str(path), "-m", str(tmp_path / "m"), *TINY[:-1]])
    assert result.exit_code == 0, result.output
    assert "class 'rare' has a single row: kept for training" in result.stderr
    assert "rare" in read_metadata(tmp_path / "m")["labels"]


def test_ten_megabyte_text_is_truncated_not_a_crash(trained_model, tmp_path):
    huge = "good great " * 500_000  # ~5.5 MB of text, 1M tokens
    huge = huge + "x" * (10_000_000 - len(huge))
    rows = [*toy_rows(40, seed=3), (huge, "pos")]
    path = write_csv(tmp_path / "huge.csv", rows)
    result = runner.invoke(app, ["train", str(path), "-m", str(tmp_path / "m"), *TINY, "--max-length", "50"])
    assert result.exit_code == 0, result.output
    (tmp_path / "in.txt").write_text(huge + "\nbad\n", encoding="utf-8")
    out = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", str(tmp_path / "in.txt")])
    assert out.exit_code == 0, out.output
    assert len(out.stdout.splitlines()) == 2


def test_binary_junk_on_stdin_gives_one_line_per_input_line(trained_model):
    junk = bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8))
    exe = Path(sys.executable).with_name("lstm-cli")
    done = subprocess.run([str(exe), "predict", "-m", str(trained_model), "-"], input=junk, capture_output=True)
    assert done.returncode == 0, done.stderr
    expected = junk.count(b"\n") + (0 if junk.endswith(b"\n") else 1)
    assert len(done.stdout.split(b"\n")) - 1 == expected
    assert done.stderr == b""
    # a command-line argument that is not UTF-8 arrives as surrogates; it is still one prediction
    done = subprocess.run([str(exe), "predict", "-m", str(trained_model), "--format", "json", b"bad \xff\xfe"],
                          capture_output=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == "bad \ufffd\ufffd"


# --- property-based ---------------------------------------------------------------------------------------

cell_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(cell_text, cell_text), max_size=12),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    terminator=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_reader_round_trips_what_csv_writes_or_raises_data_error(tmp_path, rows, delimiter, quoting, terminator, bom):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator=terminator)
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    path = tmp_path / "fuzz.csv"
    path.write_bytes(("\ufeff" if bom else "").encode() + buffer.getvalue().encode("utf-8"))
    expected = [(t, lb.strip()) for t, lb in rows if t.strip() and lb.strip()]
    # What the csv module itself reads back (its writer leaves a lone '\r' unquoted, which no reader can undo).
    reference = list(csv.reader(io.StringIO(buffer.getvalue(), newline=""), delimiter=delimiter))
    round_trips = reference[1:] == [list(r) for r in rows]
    try:
        data = read_labeled(path, delimiter=delimiter)
    except DataError:
        assert not (round_trips and expected), "a file the csv module reads was refused"
        return
    assert len(data.texts) == len(data.labels) > 0
    if round_trips:
        assert list(zip(data.texts, data.labels, strict=True)) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_reader_never_fails_with_anything_but_data_error(tmp_path, raw):
    path = tmp_path / "raw.csv"
    path.write_bytes(raw)
    try:
        data = read_labeled(path)
    except DataError:
        return
    assert len(data.texts) == len(data.labels) > 0


@pytest.fixture(scope="module")
def predictor(trained_model):
    from lstm_cli.predict import Predictor

    return Predictor(trained_model)


any_text = st.lists(
    st.one_of(
        st.characters(),  # everything, lone surrogates and control characters included
        st.sampled_from(["\u202e", "\u0301", "\u200f", "🙂", "👩‍👩‍👧", "\x00", "\r", "\x1b[31m", "שלום", "مرحبا"]),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(any_text, min_size=1, max_size=8))
def test_predict_on_arbitrary_unicode_never_crashes(predictor, texts):
    from lstm_cli.render import prediction_lines

    batches = list(predictor.predict(texts, batch_size=3))
    assert sum(len(b.texts) for b in batches) == len(texts)
    for batch in batches:
        assert np.isfinite(batch.probabilities).all()
        np.testing.assert_allclose(batch.probabilities.sum(axis=1), 1, atol=1e-5)
        for text in batch.texts:
            text.encode("utf-8")  # printable as UTF-8
        for fmt in ("tsv", "json", "label"):
            lines = prediction_lines(batch, predictor.labels, fmt, 2)
            assert len(lines) == len(batch.texts) and all("\n" not in line for line in lines)


# --- full or read-only disks ------------------------------------------------------------------------------


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture()
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)):
        pytest.skip("needs root to mount a tmpfs")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.mark.parametrize("checkpoint_elsewhere", [True, False])
def test_full_disk_fails_cleanly_and_keeps_the_old_model(trained_model, data_dir, small_disk, tmp_path,
                                                         checkpoint_elsewhere):  # fmt: skip
    import shutil

    shutil.copytree(trained_model, small_disk / "model")
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - 200_000))  # room for far less than a model
    before = read_metadata(small_disk / "model")
    # With the checkpoint on another disk the model's own write fails; beside the model, the checkpoint's first.
    elsewhere = ["--checkpoint-dir", str(tmp_path / "checkpoint")] if checkpoint_elsewhere else []
    args = ["train", str(data_dir / "train.csv"), *TINY, "-m", str(small_disk / "model"), *elsewhere]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("Error: ")
    after = read_metadata(small_disk / "model")
    assert after["id"] == before["id"]
    verify_files(small_disk / "model", after)
    # no half-written staging directory is left
    if checkpoint_elsewhere:
        assert "could not write the model" in message[0] and "untouched" in message[0]
        assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "model"]
        assert (tmp_path / "checkpoint" / "state.json").is_file()  # it stays, so --resume can save later
    else:
        assert "could not write the training checkpoint" in message[0] and "--checkpoint-dir" in message[0]
        assert sorted(p.name for p in small_disk.iterdir()) == [".model.checkpoint", "filler", "model"]
        # what stays is the last checkpoint that was written whole (an earlier, smaller epoch's), if any
        state = small_disk / ".model.checkpoint" / "state.json"
        assert not state.exists() or json.loads(state.read_text())["epoch"] >= 1


def test_read_only_target_fails_cleanly_and_keeps_the_old_model(trained_model, data_dir, small_disk):
    import shutil

    shutil.copytree(trained_model, small_disk / "model")
    assert _mount("-o", "remount,ro", str(small_disk))
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY, "-m", str(small_disk / "model")])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and "Read-only file system" in result.stderr
    assert "--model" in result.stderr and "epoch" not in result.stderr  # refused before training
    verify_files(small_disk / "model", read_metadata(small_disk / "model"))


# --- planted code in a model directory --------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--cell", "gru", "--pooling", "last", "--embedding-pooling", "none"],
        ["--bidirectional", "--layers", "2"],
        ["--cell", "gru", "--dense-units", "0"],
        ["--pooling", "max,mean", "--embedding-pooling", "max,mean", "--embedding-dropout", "0.2"],
        # the bigram table's variants export the same ops as the default: checked with --slow only
        pytest.param(["--bigram-buckets", "64", "--bigram-dim", "4"], marks=pytest.mark.slow),
        pytest.param(["--bigram-min-count", "2"], marks=pytest.mark.slow),
    ],
)
def test_every_exported_variant_passes_the_op_check(data_dir, tmp_path, options):
    from lstm_cli.graphcheck import ALLOWED_OPS, SAVER_OPS, check_saved_model, graph_problems

    args = ["train", str(data_dir / "train.csv"), *TINY, "--epochs", "1", "-m", str(tmp_path / "m"), *options]
    assert runner.invoke(app, args).exit_code == 0  # train runs the check before installing the model
    ops, problems = graph_problems((tmp_path / "m" / "saved_model.pb").read_bytes(), "serving_default")
    assert problems == []
    assert {"MatMul", "StringSplitV2", "Softmax", "LookupTableImportV2", "RestoreV2", "SaveV2"} <= ops
    assert ops <= ALLOWED_OPS | SAVER_OPS.keys()
    assert ops.isdisjoint({"ReadFile", "WriteFile", "PyFunc", "EagerPyFunc", "PrintV2"})
    check_saved_model(tmp_path / "m" / "saved_model.pb", "serving_default")


def _plant(model: Path, module, tmp_path: Path, **save_kwargs) -> None:
    """Replace the SavedModel in `model` with `module`'s, and rewrite the hashes as a forger would. The
    engine's weights move to engine.npz first (the older layout, still read), as a forger keeping the model
    loadable would: so the check that refuses the planted graph is the op check, not the engine's reading of
    variables/ that the planted SavedModel replaced."""
    import hashlib
    import shutil

    import tensorflow as tf

    npz_layout(model)
    shutil.rmtree(model / "variables")
    (model / "saved_model.pb").unlink()
    tf.saved_model.save(module, str(tmp_path / "planted"), **save_kwargs)
    for item in (tmp_path / "planted").iterdir():
        if not (model / item.name).exists():
            shutil.move(str(item), model / item.name)
    meta = json.loads((model / "metadata.json").read_text())
    meta["files"] = {  # a forger can rewrite the hashes too; the op check does not rely on them
        p.relative_to(model).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in model.rglob("*")
        if p.is_file() and p.name != "metadata.json"
    }
    (model / "metadata.json").write_text(json.dumps(meta))


def _refused(model: Path) -> str:
    # The numpy engine never runs the SavedModel's graph; these checks are for serving it through TensorFlow.
    result = runner.invoke(app, ["predict", "-m", str(model), "hello", "--engine", "tensorflow"])
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.stderr, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to load it" in lines[0]
    return lines[0]


def test_a_planted_file_reading_graph_is_refused(trained_model, tmp_path):
    import shutil

    import tensorflow as tf

    class Planted(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            leaked = tf.io.read_file("/etc/hostname")
            return {"probabilities": tf.zeros([tf.shape(text)[0], 3]) + tf.cast(tf.strings.length(leaked), tf.float32)}

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    module = Planted()
    _plant(model, module, tmp_path, signatures={"serving_default": module.serve})
    assert "operations lstm-cli never exports (ReadFile, " in _refused(model)


@pytest.mark.parametrize("where", ["resource initializer", "unused library function"])
def test_a_file_write_anywhere_in_the_saved_model_is_refused_before_loading(trained_model, tmp_path, where):
    import shutil

    import tensorflow as tf

    written = tmp_path / "pwned.txt"

    class Writer(tf.saved_model.experimental.TrackableResource):
        """A resource whose initializer, run by tf.saved_model.load, writes a file."""

        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="planted")

        def _initialize(self):
            tf.io.write_file(str(written), "planted")

    class Planted(tf.Module):
        def __init__(self):
            super().__init__()
            if where == "resource initializer":
                self.writer = Writer()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return {"probabilities": tf.fill([tf.shape(text)[0], 3], 1 / 3)}

        @tf.function(input_signature=[])
        def unused(self):
            tf.io.write_file(str(written), "planted")
            return tf.constant(0)

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    module = Planted()
    module.unused.get_concrete_function()
    _plant(model, module, tmp_path, signatures={"serving_default": module.serve})
    if written.exists():  # saving ran the initializer once; what matters is that loading does not
        written.unlink()
    assert "WriteFile" in _refused(model)
    assert not written.exists()


@pytest.mark.parametrize("role", ["save", "restore"])
def test_checkpoint_io_outside_the_savers_own_functions_is_refused(trained_model, role):
    from tensorflow.core.framework import node_def_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    from lstm_cli.graphcheck import graph_problems

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((trained_model / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    # plant the op a saver function uses in a function that loading runs (a resource initializer)
    initializer = next(f for f in graph.library.function if f.signature.name.startswith("__inference__initializer"))
    initializer.node_def.append(
        node_def_pb2.NodeDef(name="planted", op={"save": "SaveV2", "restore": "RestoreV2"}[role])
    )
    _, problems = graph_problems(saved.SerializeToString(), "serving_default")
    assert problems == [f"{'SaveV2' if role == 'save' else 'RestoreV2'} outside the saver's functions"]


# --- any label, through every command -----------------------------------------------------------------------

# Smaller than TINY: these tests train one model per label set, and only check how labels travel.
MICRO = [
    "--embedding-dim", "4", "--units", "2", "--dense-units", "0", "--max-tokens", "20", "--epochs", "1",
    "--batch-size", "16", "--validation-split", "0", "--quiet",
]  # fmt: skip


def _every_command(workdir: Path, labels: list[str], data_name: str = "data.csv") -> dict[str, str]:
    """Train on `labels`, then predict in every format, evaluate and info; returns each command's stdout.

    Asserts what must hold for any label: exit 0, no traceback, one line per input, labels exact in JSON."""
    rows = [(f"w{i} common {j}", label) for i, label in enumerate(labels) for j in range(3)]
    data = workdir / data_name
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerows([("text", "label"), *rows, ("", labels[0])])  # the empty text: a skipped-rows warning
    model = str(workdir / "m")
    outputs = {}
    expected = sorted({label.strip() for label in labels})
    train = runner.invoke(app, ["train", str(data), "-m", model, *MICRO[:-1]])
    assert train.exit_code == 0 and train.stdout == f"{model}\n", train.output
    texts = [f"w{i} common" for i in range(len(labels))] + ["", "unknown words"]
    for fmt, k in (("tsv", "2"), ("label", "2"), ("json", "2")):
        out = runner.invoke(
            app,
            ["predict", "-m", model, "--format", fmt, "--top-k", k, *(["--all-probabilities"] * (fmt == "json")), "-"],
            input="\n".join(texts),
        )
        assert out.exit_code == 0 and out.stderr == "", out.output
        lines = out.stdout.split("\n")
        assert lines[-1] == "" and len(lines) - 1 == len(texts), lines  # exactly one line per input
        outputs[f"{fmt}{k}"] = out.stdout
    records = [json.loads(line) for line in outputs["json2"].split("\n")[:-1]]
    assert all(sorted(r["probabilities"]) == expected and r["label"] in expected for r in records)
    # tsv and label fields decode (backslash escapes) to exactly the labels JSON gives
    for tsv, label, record in zip(*(outputs[f].split("\n")[:-1] for f in ("tsv2", "label2")), records, strict=True):
        top = [t["label"] for t in record["top"]]
        assert [unescape_tsv(x) for x in tsv.split("\t")[0::2]] == top == [unescape_tsv(x) for x in label.split("\t")]
        assert len(set(top)) == 2 and top[0] == record["label"]
    report = workdir / "report.json"
    evaluated = runner.invoke(app, ["evaluate", str(data), "-m", model, "-o", str(report)])
    assert evaluated.exit_code == 0 and "Traceback" not in evaluated.output, evaluated.output
    assert sorted(json.loads(report.read_text(encoding="utf-8"))["per_class"]) == expected
    outputs["evaluate"], outputs["evaluate_stderr"] = evaluated.stdout, evaluated.stderr
    info = runner.invoke(app, ["info", "-m", model, "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["labels"] == expected
    human = runner.invoke(app, ["info", "-m", model])
    assert human.exit_code == 0, human.output
    outputs["info"], outputs["train_stderr"] = human.stdout, train.stderr
    return outputs


def test_markup_control_characters_and_tabs_in_labels_and_paths_are_shown_literally(tmp_path):
    labels = ["[/x]", "[positive]", ":smile:", "multi\nline", "tab\tbed", "back\\slash"]
    out = _every_command(tmp_path, labels, data_name="data[1].csv")
    assert "Warning: " in out["train_stderr"] and f"{tmp_path}/data[1].csv: skipped 1 rows" in out["train_stderr"]
    assert f"Read 18 rows from {tmp_path}/data[1].csv" in out["train_stderr"]
    for shown in ("[/x]", "[positive]", ":smile:", "multi\\nline", "tab\\tbed", "back\\slash"):
        assert shown in out["evaluate"] and shown in out["info"] and shown in out["train_stderr"], shown
    assert "😄" not in out["evaluate"] + out["info"] + out["train_stderr"]
    # evaluate wraps its warnings at the terminal's width (rich keeps the space before a line break)
    unwrapped = out["evaluate_stderr"].replace("\n", "")
    assert f"Warning: {tmp_path}/data[1].csv: skipped 1 rows (1 with empty text)" in unwrapped
    # the default format: a label's tab, newline and backslash are backslash escapes, as documented
    first = {line.split("\t")[0] for line in out["tsv2"].split("\n")[:-1]}
    assert first <= {"[/x]", "[positive]", ":smile:", "multi\\nline", "tab\\tbed", "back\\\\slash"}


label_strategy = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
    st.sampled_from(["[/x]", "[b]bold[/b]", ":smile:", "  spaced", "a\tb", "a\nb", "a\rb", "\\", "🙂", "\x1b[31m"]),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=200, max_size=400),  # very long
).filter(lambda label: label.strip() != "")


# A model per example: few examples, the same ones every run, and no shrinking (each step trains a model).
@settings(
    max_examples=2,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(labels=st.lists(label_strategy, min_size=2, max_size=3, unique_by=str.strip))
def test_any_labels_go_through_train_predict_evaluate_and_info(tmp_path_factory, labels):
    _every_command(tmp_path_factory.mktemp("labels"), labels)
