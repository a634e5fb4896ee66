"""Labeled data in every common shape: a delimiter spelled `\\t` or `tab`, files without a header, fastText's
`__label__` lines and JSON Lines, read by train, evaluate and tune with CSV's error quality."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import TINY, toy_rows, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.data import read_labeled, stream_labeled
from lstm_cli.errors import DataError, UsageError
from lstm_cli.formats import parse_delimiter

runner = CliRunner()


def write(path, content: str | bytes):
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def as_fasttext(rows) -> str:
    return "".join(f"__label__{label} {text}\n" for text, label in rows)


def as_jsonl(rows, text="text", label="label") -> str:
    return "".join(json.dumps({label: lab, text: t}, ensure_ascii=False) + "\n" for t, lab in rows)


# --- the delimiter ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "char"), [("\\t", "\t"), ("tab", "\t"), ("TAB", "\t"), ("\t", "\t"), (";", ";"),
                                              ("|", "|"), ("semicolon", ";"), ("x", "x")])  # fmt: skip
def test_delimiter_spellings(given, char):
    assert parse_delimiter(given) == char


@pytest.mark.parametrize("given", ["ab", "", "\\n", '"', "\n", "tabs"])
def test_other_delimiters_are_refused(given):
    with pytest.raises(UsageError, match="--delimiter"):
        parse_delimiter(given)


@pytest.mark.parametrize("spelling", ["\\t", "tab"])
def test_evaluate_a_tab_separated_file_named_txt(trained_model, data_dir, tmp_path, spelling):
    """A shell passes '\\t' as backslash-t: it used to end in a TypeError traceback."""
    rows = list(csv.reader((data_dir / "test.csv").open(newline="", encoding="utf-8")))
    write(tmp_path / "test.txt", "".join("\t".join(row) + "\n" for row in rows))
    expected = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--json"])
    result = runner.invoke(app, ["evaluate", "test.txt", "-m", str(trained_model), "--json", "--delimiter", spelling])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == json.loads(expected.stdout)["accuracy"]
    assert json.loads(result.stdout)["rows"]["evaluated"] == len(rows) - 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delimiter", "ab"], "--delimiter must be one character"),
        (["--encoding", "base64"], "not a text encoding"),
        (["--encoding", "no-such-codec"], "unknown encoding"),
        (["--encoding", "utf-16"], "no byte-order mark"),
        (["--no-header", "--text-column", "body"], "column number"),
        (["--no-header", "--text-column", "0"], "column number"),
        (["--no-header", "--input-format", "jsonl"], "--no-header is for CSV/TSV"),
        (["--delimiter", ";", "--input-format", "fasttext"], "--delimiter is for CSV/TSV"),
    ],
)
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_option_misuse_is_one_line_and_exit_2(data_dir, tmp_path, command, args, message):
    result = runner.invoke(app, [command, str(data_dir / "train.csv"), "-m", str(tmp_path / "m"), *args])
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and message in result.stderr
    assert result.stderr.count("Error") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


# --- no header ----------------------------------------------------------------------------------------------


def test_no_header_with_column_numbers(trained_model, data_dir, tmp_path):
    rows = list(csv.reader((data_dir / "test.csv").open(newline="", encoding="utf-8")))[1:]
    path = tmp_path / "test.tsv"
    write(path, "".join(f"{i}\t{label}\t{text}\n" for i, (text, label) in enumerate(rows)))
    data = read_labeled(path, header=False, text_column=3, label_column=2)
    assert list(data) == [tuple(row) for row in rows]
    expected = runner.invoke(app, ["evaluate", str(data_dir / "test.csv"), "-m", str(trained_model), "--json"])
    args = ["evaluate", str(path), "-m", str(trained_model), "--json", "--no-header", "--text-column", "3",
            "--label-column", "2"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == json.loads(expected.stdout)["accuracy"]
    # the defaults are columns 1 and 2
    write(tmp_path / "plain.csv", "hello there,a\nbye now,b\n")
    assert list(read_labeled(tmp_path / "plain.csv", header=False, text_column=1, label_column=2)) == [
        ("hello there", "a"), ("bye now", "b")]  # fmt: skip


def test_no_header_errors_name_the_place(tmp_path):
    path = write(tmp_path / "d.csv", "a,x\nb\n")
    with pytest.raises(DataError, match=r"d.csv:2: expected 2 fields, found 1"):
        read_labeled(path, header=False, text_column=1, label_column=2)
    with pytest.raises(DataError, match=r"d.csv:1: --label-column 3, but the first row has 2 fields"):
        read_labeled(path, header=False, text_column=1, label_column=3)


# --- fastText -----------------------------------------------------------------------------------------------


def test_fasttext_lines_are_recognised_from_the_first_line(tmp_path):
    path = write(tmp_path / "d.txt", "__label__pos  great film __label__x stays text\n\n__label__neg\tawful\r\n")
    stream = stream_labeled(path)
    assert stream.format == "fasttext"
    assert list(stream) == [("great film __label__x stays text", "pos"), ("awful", "neg")]


def test_fasttext_several_labels_name_the_line_and_are_kept_for_later(tmp_path):
    path = write(tmp_path / "d.ft", "__label__a one\n__label__a __label__b two\n__label__b three\n")
    with pytest.raises(DataError, match=r"d.ft:2: 2 labels \(__label__a __label__b\); lstm-cli trains single-label"):
        read_labeled(path, input_format="fasttext")
    stream = stream_labeled(path, input_format="fasttext", skip_bad_rows=True)
    assert [row.labels for row in stream.labeled_rows()] == [("a",), ("a", "b"), ("b",)]
    assert list(stream) == [("one", "a"), ("three", "b")]
    assert stream.skipped == {"several labels": 1} and stream.rows == 2


def test_fasttext_line_without_label(tmp_path):
    path = write(tmp_path / "d.ft", "__label__a one\nno label here\n")
    with pytest.raises(DataError, match=r"d.ft:2: no __label__LABEL at the start of the line"):
        read_labeled(path, input_format="fasttext")
    assert read_labeled(path, input_format="fasttext", skip_bad_rows=True).skipped == {"no label": 1}


# --- JSON Lines ---------------------------------------------------------------------------------------------


def test_jsonl_by_extension_with_named_fields_and_integer_labels(tmp_path):
    lines = ['{"body": "hello", "cat": 1, "id": 7}', "", '{"cat": "0", "body": "bye"}']
    path = write(tmp_path / "d.ndjson", "\n".join(lines) + "\n")
    assert list(read_labeled(path, text_column="body", label_column="cat")) == [("hello", "1"), ("bye", "0")]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"\n', "d.jsonl:2: not valid JSON"),
        ('{"text": "a", "label": "x"}\n[1, 2]\n', "d.jsonl:2: a JSON array, not an object"),
        ('{"text": "a", "label": "x"}\n{"text": 3, "label": "x"}\n', "d.jsonl:2: field 'text' is a JSON number"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n', "d.jsonl:2: field 'label' is a JSON null"),
        ('{"text": "a", "label": "x"}\n{"txt": "b", "label": "x"}\n', "d.jsonl:2: no field 'text' (fields: 'txt'"),
        (
            '{"body": "a", "label": "x"}\n',
            "d.jsonl:1: no field 'text' (fields: 'body', 'label'); name the right one with --text-column",
        ),  # fmt: skip
        ('{"text": "a", "label": "x"}\n' + "[" * 100_000 + "]" * 100_000 + "\n", "d.jsonl:2: JSON nested too deeply"),
        ("", "file is empty"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, expected):
    with pytest.raises(DataError) as error:
        read_labeled(write(tmp_path / "d.jsonl", content))
    assert expected in str(error.value)


def test_jsonl_bad_lines_can_be_skipped(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\nnot json\n{"text": 1, "label": "x"}\n')
    data = read_labeled(path, skip_bad_rows=True)
    assert list(data) == [("a", "x")] and data.skipped == {"bad JSON": 1, "bad field": 1}


# --- train and evaluate on every format ---------------------------------------------------------------------


def test_train_on_fasttext_evaluate_on_jsonl_and_csv(tmp_path, data_dir):
    rows = toy_rows(120, seed=1)
    write(tmp_path / "train.txt", as_fasttext(rows))
    result = runner.invoke(app, ["train", "train.txt", "-m", "m", *TINY])
    assert result.exit_code == 0, result.output
    test = toy_rows(45, seed=2)
    write(tmp_path / "test.jsonl", as_jsonl(test))
    write(tmp_path / "test.ft", as_fasttext(test))
    reports = []
    for path, extra in (("test.jsonl", []), ("test.ft", ["--input-format", "fasttext"]),
                        (str(write_csv(tmp_path / "test.csv", test)), [])):  # fmt: skip
        result = runner.invoke(app, ["evaluate", path, "-m", "m", "--json", *extra])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(result.stdout))
    assert {r["rows"]["evaluated"] for r in reports} == {45}
    assert reports[0]["accuracy"] == reports[1]["accuracy"] == reports[2]["accuracy"]
    assert reports[0]["accuracy"] > 0.5


def test_train_on_jsonl_reads_the_named_fields(tmp_path):
    write(tmp_path / "train.data", as_jsonl(toy_rows(60, seed=4), text="review", label="stars"))
    args = ["train", "train.data", "-m", "m", *TINY, "--epochs", "1", "--input-format", "jsonl",
            "--text-column", "review", "--label-column", "stars"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "metadata.json").read_text())["labels"] == ["meh", "neg", "pos"]


# --- what users control, through every format ---------------------------------------------------------------

_chars = st.characters(blacklist_categories=("Cs",))
TEXT = st.text(_chars, min_size=1, max_size=40).filter(lambda t: t.strip())
LABEL = st.text(_chars, min_size=1, max_size=12).map(str.strip).filter(bool)
NUMBERISH = st.sampled_from(["0", "1", "01", "1.0", "-2", "1e3", "null", "true", '{"a": 1}', "[1]", '"q"'])
TRICKY = st.sampled_from(["a,b", 'say "hi"', "tab\there", "two\nlines", "cr\rlf\r\n", "__label__x inside", "é🙂"])


def _write_format(path, fmt: str, rows) -> dict:
    if fmt in ("csv", "tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            writer.writerow(["label", "text"])
            writer.writerows([(label, text) for text, label in rows])
        return {"input_format": fmt}
    if fmt == "jsonl":
        write(path, as_jsonl(rows))
        return {}
    write(path, as_fasttext(rows))
    return {"input_format": "fasttext"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["csv", "tsv", "jsonl", "fasttext"]),
    rows=st.lists(st.tuples(st.one_of(TEXT, TRICKY), st.one_of(LABEL, NUMBERISH, TRICKY)), min_size=1, max_size=8),
)
def test_texts_and_labels_round_trip_through_every_format(tmp_path, fmt, rows):
    if fmt == "fasttext":  # one line a row, labels without spaces, texts that do not start like a label
        rows = [(" ".join(text.split()), "_".join(label.split())) for text, label in rows]
        rows = [(text, label) for text, label in rows if text and label and not text.startswith("__label__")]
        if not rows:
            return
    else:
        rows = [(text, label.strip()) for text, label in rows]
    path = tmp_path / f"data.{fmt}"
    options = _write_format(path, fmt, rows)
    assert list(read_labeled(path, **options)) == rows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\xc3\xa9", b"\r", b"\n", b"\r\n", b"\xff", b"\xe2\x82", b" "]), max_size=60))
def test_predict_lines_are_split_as_before_whatever_the_bytes(pieces):
    """iter_lines reads blocks and decodes whole lines at once: the same lines as reading one at a time."""
    import io

    from lstm_cli.data import iter_lines

    data = b"".join(pieces)
    expected = []
    for raw in io.BytesIO(data):
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        expected.append(raw.decode("utf-8", errors="replace"))
    assert list(iter_lines(io.BytesIO(data))) == expected


def test_tune_reads_a_headerless_tsv(tmp_path):
    rows = toy_rows(60, seed=6)
    write(tmp_path / "train.txt", "".join(f"{label}\t{text}\n" for text, label in rows))
    tiny = ["--set", "embedding_dim=8", "--set", "units=6", "--set", "dense_units=8", "--set", "max_tokens=60",
            "--set", "epochs=1", "--set", "batch_size=16"]  # fmt: skip
    args = ["tune", "train.txt", "-m", "m", "--budget", "10m", "--trials", "1", "--quiet", "--delimiter", "tab",
            "--no-header", "--text-column", "2", "--label-column", "1", *tiny]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metadata = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert metadata["labels"] == ["meh", "neg", "pos"] and metadata["training"]["data"]["rows"] == 60


def test_every_format_streams_from_stdin_and_pipes_in_any_encoding(monkeypatch):
    """The machinery CSV had (the stdin spool read in passes, encodings, the file hash) serves every format."""
    import hashlib
    import io
    import sys

    from conftest import pipe_path

    rows = [("héllo wörld", "a"), ("bye", "b")]
    for content in (as_jsonl(rows), as_fasttext(rows)):
        data = content.encode("utf-16")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        stream = stream_labeled("-", encoding="utf-16")
        assert list(stream) == list(stream) == rows and stream.sha256 == hashlib.sha256(data).hexdigest()
        assert list(stream_labeled(pipe_path(content.encode("utf-8")))) == rows


def test_how_a_file_is_read_is_part_of_its_identity(tmp_path):
    """The token cache is keyed on the file's bytes and on this: other columns of the same bytes are other rows."""
    path = write(tmp_path / "d.csv", "a,b\nx,y\nz,w\n")
    one = stream_labeled(path, text_column="a", label_column="b")
    other = stream_labeled(path, text_column="b", label_column="a")
    assert list(one) != list(other) and one.sha256 == other.sha256
    assert one.reading() != other.reading()
