"""Reading labeled files: formats, encodings, and errors that say where and what to do."""

from __future__ import annotations

import hashlib
import io
import sys

import pytest
from conftest import pipe_path

import lstm_cli.data
from lstm_cli.data import iter_lines, read_labeled, stream_labeled
from lstm_cli.errors import DataError, UsageError


def write(tmp_path, content: bytes | str, name: str = "d.csv"):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def test_reads_quoted_multiline_fields_bom_and_crlf(tmp_path):
    path = write(tmp_path, b'\xef\xbb\xbftext,label\r\n"line one\r\nline two, still",a\r\nplain,"b"\r\n')
    data = read_labeled(path)
    assert data.texts == ["line one\r\nline two, still", "plain"]
    assert data.labels == ["a", "b"]
    assert data.fingerprint()["rows"] == 2 and len(data.sha256) == 64


def test_tsv_by_extension_and_custom_columns(tmp_path):
    path = write(tmp_path, "id\tbody\tcat\n1\thello, world\tx\n2\tbye\ty\n", name="d.tsv")
    data = read_labeled(path, text_column="body", label_column="cat")
    assert data.texts == ["hello, world", "bye"] and data.labels == ["x", "y"]


def test_excel_semicolons_are_detected_and_delimiter_flag_wins(tmp_path):
    path = write(tmp_path, "text;label\nbonjour, ça va;fr\nhello;en\n")
    assert read_labeled(path).labels == ["fr", "en"]
    pipe = write(tmp_path, "text|label\na,b|x\n", name="p.txt")
    assert read_labeled(pipe, delimiter="|").texts == ["a,b"]


def test_labels_are_strings_and_stripped(tmp_path):
    path = write(tmp_path, 'text,label\na,0\nb, 1 \nc,"01"\n')
    assert read_labeled(path).labels == ["0", "1", "01"]


def test_empty_texts_and_labels_are_skipped_and_counted(tmp_path):
    path = write(tmp_path, "text,label\n,a\n   ,b\nok,\nfine,c\n\n")
    data = read_labeled(path)
    assert data.texts == ["fine"]
    assert data.skipped == {"empty text": 2, "empty label": 1}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "file is empty"),
        ("text,label\n", "no data rows"),
        (
            "body,label\nx,y\n",
            "no column 'text' in the header (columns seen: 'body', 'label'); name the right one with --text-column",
        ),
        ("text,tag\nx,y\n", "--label-column"),
        ("hello,pos\nbye,neg\n", "pass --no-header if the file has none"),
        ("text,label\nok,a\ntoo,many,fields\n", "d.csv:3: expected 2 fields, found 3"),
        ("text,label\nok,a\nfew\n", "--skip-bad-rows"),
        (b"text,label\nok,a\nbad \xff byte,b\n", "d.csv:3:5: byte 0xff at byte offset 20 is not valid utf-8"),
    ],
)
def test_errors_name_the_place_and_the_fix(tmp_path, content, expected):
    with pytest.raises(DataError) as error:
        read_labeled(write(tmp_path, content))
    assert expected in str(error.value)


def test_skip_bad_rows_counts_them(tmp_path):
    data = read_labeled(write(tmp_path, "text,label\nok,a\ntoo,many,fields\nfew\nfine,b\n"), skip_bad_rows=True)
    assert data.texts == ["ok", "fine"] and data.skipped == {"malformed row": 2}


def test_other_encodings_with_flag(tmp_path):
    path = write(tmp_path, "text,label\ncafé,a\n".encode("latin-1"))
    with pytest.raises(DataError, match="--encoding"):
        read_labeled(path)
    assert read_labeled(path, encoding="latin-1").texts == ["café"]
    with pytest.raises(UsageError, match="unknown encoding"):  # misuse of an option: exit 2
        read_labeled(path, encoding="no-such-codec")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_labeled(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        read_labeled(tmp_path)


def test_iter_lines_keeps_empty_lines_and_survives_junk():
    import io

    lines = list(iter_lines(io.BytesIO(b"a\r\n\nb\xff\xfe\n\x00c")))
    assert lines == ["a", "", "b\ufffd\ufffd", "\x00c"]


# --- streaming: the same rows and errors, whatever the size of the chunks the file is read in ----------------

CHUNKS = [None, 1, 2, 3, 7]  # None: the default (1 MiB, the whole of these files)

FORMATS = [
    (
        b'\xef\xbb\xbftext,label\r\n"line one\r\nline two, still",a\r\nplain,"b"\r\n',
        "d.csv",
        {},
        [("line one\r\nline two, still", "a"), ("plain", "b")],
    ),
    (
        "id\tbody\tcat\n1\thello, world\tx\n2\tbye\ty\n",
        "d.tsv",
        {"text_column": "body", "label_column": "cat"},
        [("hello, world", "x"), ("bye", "y")],
    ),  # fmt: skip
    ("text;label\nbonjour, ça va;fr\nhello;en\n", "d.csv", {}, [("bonjour, ça va", "fr"), ("hello", "en")]),
    ("text|label\na,b|x\n", "p.txt", {"delimiter": "|"}, [("a,b", "x")]),
    (b"text,label\rhello there,a\rbye now,b\r", "d.csv", {}, [("hello there", "a"), ("bye now", "b")]),
    ("text,label\n,a\n   ,b\nok,\nfine, c \n\n", "d.csv", {}, [("fine", "c")]),
    ("text,label\nok,a\ntoo,many,fields\nfew\nfine,b", "d.csv", {"skip_bad_rows": True}, [("ok", "a"), ("fine", "b")]),
    ("text,label\ncafé,a\n".encode("latin-1"), "d.csv", {"encoding": "latin-1"}, [("café", "a")]),
    ("text,label\n🙂 é,a\n".encode("utf-16"), "d.csv", {"encoding": "utf-16"}, [("🙂 é", "a")]),
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("content", "name", "options", "rows"), FORMATS)
def test_stream_gives_the_rows_of_read_labeled_at_any_chunk_size(
    tmp_path, monkeypatch, chunk, content, name, options, rows
):
    path = write(tmp_path, content, name)
    data = read_labeled(path, **options)
    if chunk is not None:
        monkeypatch.setattr(lstm_cli.data, "_CHUNK_BYTES", chunk)
    stream = stream_labeled(path, **options)
    assert stream.sha256 is None and stream.delimiter == data.delimiter and stream.path == data.path
    assert list(stream) == list(zip(data.texts, data.labels, strict=True)) == rows
    assert stream.sha256 == data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (stream.rows, stream.skipped) == (len(data), data.skipped)
    assert stream.fingerprint() == data.fingerprint()
    assert list(stream) == rows  # each pass reads the file again


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("text,label\nok,a\ntoo,many,fields\n", "d.csv:3: expected 2 fields, found 3"),
        ('text,label\n"a\r\nb\nc",x\r\nbad\n', "d.csv:5: expected 2 fields, found 1"),
        ('text,label\nok,a\n"a"b,x\n', "d.csv:3: malformed CSV (',' expected after '\"')"),
        (b"text,label\nok,a\nbad \xff byte,b\n", "d.csv:3:5: byte 0xff at byte offset 20 is not valid utf-8"),
        (b'text,label\n"x\ny",a\nok \xc3', "d.csv:4:4: byte 0xc3 at byte offset 22 is not valid utf-8"),
        # offsets count the byte-order mark: they are positions in the file
        (b"\xef\xbb\xbftext,label\nok,a\nbad \xff,b\n", "d.csv:3:5: byte 0xff at byte offset 23"),
        ("  \n\t\n", "file is empty"),
        ("text,label\n\n", "has a header but no data rows"),
        ("text,label\n,a\n", "has no usable rows (1 with empty text)"),
    ],
)
def test_stream_errors_name_the_same_line_at_any_chunk_size(tmp_path, monkeypatch, chunk, content, expected):
    path = write(tmp_path, content)
    if chunk is not None:
        monkeypatch.setattr(lstm_cli.data, "_CHUNK_BYTES", chunk)
    with pytest.raises(DataError) as error:
        list(stream_labeled(path))
    assert expected in str(error.value)
    with pytest.raises(DataError) as again:
        read_labeled(path)
    assert str(again.value) == str(error.value)


def test_header_errors_are_raised_before_any_pass(tmp_path):
    with pytest.raises(DataError, match="--label-column"):
        stream_labeled(write(tmp_path, "text,tag\nx,y\n"))


def test_a_field_longer_than_a_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(lstm_cli.data, "_CHUNK_BYTES", 64)
    long = "word, " * 300 + "\r\nnext line\r" + "é" * 100
    path = write(tmp_path, f'text,label\r\n"{long}",a\r\nshort,b\r\n')
    assert list(stream_labeled(path)) == [(long, "a"), ("short", "b")]


def test_stdin_is_read_once_and_can_be_streamed_again(monkeypatch):
    content = b"text,label\nhello,a\nbye,b\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(content)))
    stream = stream_labeled("-")
    assert list(stream) == list(stream) == [("hello", "a"), ("bye", "b")]
    assert stream.path == "<stdin>" and stream.sha256 == hashlib.sha256(content).hexdigest()


def test_a_pipe_is_read_once_and_can_be_streamed_again():
    content = b"text,label\nhello,a\nbye,b\n"
    stream = stream_labeled(pipe_path(content))  # read a second time, a pipe would be empty
    assert list(stream) == list(stream) == [("hello", "a"), ("bye", "b")]
    assert stream.sha256 == hashlib.sha256(content).hexdigest()


def test_a_file_that_changes_between_passes_is_refused(tmp_path):
    path = write(tmp_path, "text,label\nhello,a\n")
    stream = stream_labeled(path)
    assert list(stream) == [("hello", "a")]
    path.write_text("text,label\nhello,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="changed while it was being read"):
        list(stream)
