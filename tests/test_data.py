"""Reading labeled files: formats, encodings, and errors that say where and what to do."""

from __future__ import annotations

import pytest

from lstm_cli.data import iter_lines, read_labeled
from lstm_cli.errors import DataError


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
        ("hello,pos\nbye,neg\n", "add a header line"),
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
    with pytest.raises(DataError, match="unknown encoding"):
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
