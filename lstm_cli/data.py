"""Reading labeled files (CSV/TSV, JSON Lines, fastText: see lstm_cli.formats) for training and evaluation,
in bounded memory, and text lines for prediction.

All input validation lives here, and every message names the file and line it is about."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO

from lstm_cli.errors import DataError, UsageError
from lstm_cli.formats import (
    FASTTEXT_PREFIX,
    FORMATS,
    MAX_LINE_CHARS,
    MAX_TEXT_CHARS,
    Bad,
    Columns,
    LineTooLong,
    Record,
    json_label,
    json_text,
    open_reader,
    parse_delimiter,
)


@dataclass
class LabeledData:
    texts: list[str]
    labels: list[str]
    path: str
    sha256: str
    delimiter: str | None  # None for the formats without one (JSON Lines, fastText)
    # reason -> rows left out (empty text, empty label, malformed row with --skip-bad-rows)
    skipped: Counter[str] = field(default_factory=Counter)
    format: str = "csv"
    warnings: list[str] = field(default_factory=list)  # about how the file was read (a header read as data)

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(text, label) pairs, as a LabeledStream yields them."""
        return zip(self.texts, self.labels, strict=True)

    def fingerprint(self) -> dict[str, object]:
        return {"path": self.path, "rows": len(self), "sha256": self.sha256}


@dataclass
class Row:
    line: int  # where the row starts in its file, 1-based
    text: str
    labels: tuple[str, ...]  # one, except on fastText lines with several


# Bytes read per step while streaming: decoding, line splitting and hashing work on this much at a time,
# so memory does not grow with the file (only with its longest row).
_CHUNK_BYTES = 1 << 20
# Bytes kept from before the current chunk to place a decoding error: more than any decoder buffers.
_TAIL_BYTES = 16
# stdin is copied here once so that it can be read again; past this size the copy goes to a temp file.
_SPOOL_BYTES = 32 << 20


def stream_labeled(path: Path | str, **options) -> LabeledStream:
    """The (text, label) rows of a labeled file, read again from the file on every iteration.

    The header or first record is checked (and the format and delimiter chosen) here, so a wrong column
    fails before any long pass. Options as LabeledStream's."""
    return LabeledStream(path, **options)


def stdin_bytes() -> BinaryIO:
    """Standard input, as bytes; a UsageError when the process has none (started with it closed: `<&-`)."""
    if sys.stdin is None:
        raise UsageError("standard input is closed, and '-' reads it; pipe the data in, or give a file name")
    return sys.stdin.buffer


def open_file(path: Path, expected: str, option: str = "") -> BinaryIO:
    """`path` opened for reading (a pipe too), or one DataError naming what is wrong: missing, a directory,
    unreadable. `expected` says what it should be, `option` which option named it."""
    named = f" ({option})" if option else ""
    if not path.exists():
        raise DataError(f"{path}: file not found{named}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected {expected}{named}")
    try:
        return path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}{named}") from None


class LabeledStream:
    """Re-iterable (text, label) pairs of a labeled file, in bounded memory: one chunk and one row at a time.

    The format is `input_format` (csv, tsv, jsonl, fasttext), else the file's extension (.csv, .tsv,
    .jsonl/.ndjson), else its first line (`__label__...` is fastText, `{` JSON Lines), else CSV.
    After a complete pass, `rows`, `skipped` and `sha256` (of the raw bytes) describe the file; a later pass
    that sees different bytes raises DataError. stdin ('-'), and a path that is no regular file (a pipe,
    as `<(zcat data.csv.gz)` gives, or a device), cannot be read twice, so it is copied once into a spooled
    temporary file (memory up to 32 MiB, disk beyond) that lives as long as this object."""

    def __init__(
        self,
        path: Path | str,
        *,
        text_column: str | int = "text",
        label_column: str | int = "label",
        delimiter: str | None = None,
        encoding: str = "utf-8",
        skip_bad_rows: bool = False,
        input_format: str | None = None,
        header: bool = True,
    ):
        self._columns = Columns({"--text-column": text_column, "--label-column": label_column}, header=header)
        self._skip_bad_rows = skip_bad_rows
        self._spool: tempfile.SpooledTemporaryFile | None = None
        if delimiter is not None:
            delimiter = parse_delimiter(delimiter)
        if input_format is not None and input_format not in FORMATS:
            raise UsageError(f"unknown input format {input_format!r}; expected one of {', '.join(FORMATS)}")
        self._encoding, self._strip_bom = check_encoding(encoding)
        stdin = str(path) == "-"
        self._name = "<stdin>" if stdin else str(path)
        if stdin or not Path(path).is_file():  # stdin, a pipe (or a missing file: open_file says so): read once
            with nullcontext(stdin_bytes()) if stdin else open_file(Path(path), "a data file") as source:
                self._spool = spool(source, self._name)
        self.path = self._name if self._spool is not None else str(Path(self._name).resolve())
        self._given = (input_format, delimiter)
        self.sha256: str | None = None
        self.rows: int | None = None
        self.skipped: Counter[str] = Counter()
        with self._open() as raw:
            reader = self._start(raw, hashlib.sha256())
        self.format: str = reader.format
        self.warnings: list[str] = getattr(reader, "warnings", [])  # about how the file is read
        self.delimiter: str | None = reader.delimiter

    def fingerprint(self) -> dict[str, object]:
        """As LabeledData.fingerprint; valid after a complete pass."""
        return {"path": self.path, "rows": self.rows, "sha256": self.sha256}

    def reading(self) -> dict[str, object]:
        """How the file is read (format, delimiter, columns): what, beside its bytes, decides its rows."""
        columns = {flag.strip("-"): value for flag, value in self._columns.wanted.items()}
        return {"format": self.format, "delimiter": self.delimiter, "header": self._columns.header,
                "encoding": self._encoding, "skip_bad_rows": self._skip_bad_rows, **columns}  # fmt: skip

    def labeled_rows(self) -> Iterator[Row]:
        """Every usable row with all of its labels (fastText lines may carry several), in file order; rows
        without a text or a label, and malformed rows, are counted in `skipped` (or, malformed, raise)."""
        digest = hashlib.sha256()
        skipped: Counter[str] = Counter()
        rows = 0
        name = self._name
        with self._open() as raw:
            reader = self._start(raw, digest)
            for record in reader.records():
                row = self._row(reader, record)
                if isinstance(row, Bad):
                    if not self._skip_bad_rows:
                        raise DataError(f"{name}:{row.line}: {row.message}")
                    skipped[row.reason] += 1
                elif not row.text.strip():
                    skipped["empty text"] += 1
                elif not row.labels:
                    skipped["empty label"] += 1
                else:
                    rows += 1
                    yield row
        if not rows:
            what = "has a header but no data rows" if not skipped and self._columns.header else "has no usable rows"
            if not skipped and reader.format != "csv":
                what = "has no data rows"
            detail = f" ({describe_skipped(skipped)})" if skipped else ""
            raise DataError(f"{name}: {what}{detail}")
        sha256 = digest.hexdigest()
        if self.sha256 is not None and sha256 != self.sha256:
            raise DataError(f"{name}: the file changed while it was being read (its bytes differ from the last pass)")
        self.sha256, self.rows, self.skipped = sha256, rows, skipped

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(text, label) of every row, for a single-label model: a row with several labels is malformed."""
        skip = self._skip_bad_rows
        several = 0
        for row in self.labeled_rows():
            if len(row.labels) == 1:
                yield row.text, row.labels[0]
                continue
            if not skip:
                shown = " ".join(FASTTEXT_PREFIX + label for label in row.labels)
                raise DataError(
                    f"{self._name}:{row.line}: {len(row.labels)} labels ({shown}); lstm-cli trains single-label "
                    "models: keep one label per line, or pass --skip-bad-rows to skip such lines"
                )
            several += 1
        if several:  # labeled_rows counted them as usable
            self.rows = (self.rows or 0) - several
            self.skipped["several labels"] += several

    def _row(self, reader, record: Record | Bad) -> Row | Bad:
        if isinstance(record, Bad):
            return record
        fields = record.fields
        if reader.format == "fasttext":
            labels, text = fields
            return Row(record.line, text[:MAX_TEXT_CHARS], labels)
        if reader.format == "jsonl":
            text, problem = json_text(fields, reader.fields["--text-column"], "--text-column")
            if problem is None:
                label, problem = json_label(fields, reader.fields["--label-column"], "--label-column")
            if problem is not None:
                return Bad(record.line, "bad field", f"{problem}, or pass --skip-bad-rows to skip such lines")
            label = label.strip()
            return Row(record.line, text[:MAX_TEXT_CHARS], (label,) if label else ())
        text_index, label_index = reader.indexes
        label = fields[label_index].strip()
        return Row(record.line, fields[text_index][:MAX_TEXT_CHARS], (label,) if label else ())

    def _open(self) -> BinaryIO:
        if self._spool is not None:
            self._spool.seek(0)
            return _Unclosed(self._spool)
        try:
            return open(self._name, "rb")  # closed by the caller's `with`
        except OSError as e:
            raise DataError(f"{self._name}: cannot read: {e.strerror}") from None

    def _start(self, raw: BinaryIO, digest):
        """The format's reader for a file opened at its start, its header or first record checked."""
        lines = _Replay(_split_lines(decoded(raw, digest, self._name, self._encoding, self._strip_bom)))
        input_format, delimiter = self._given
        return open_reader(lines, self._name, self._columns, input_format=input_format, delimiter=delimiter)


class _Unclosed(io.BufferedIOBase):
    """A view of the stdin spool whose close() leaves the spool open for the next pass."""

    def __init__(self, inner):
        self._inner = inner

    def read(self, size: int | None = -1) -> bytes:
        return self._inner.read(size)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


def check_encoding(encoding: str) -> tuple[str, bool]:
    """(the codec's name, whether a UTF-8 byte-order mark is skipped by hand) for --encoding; UsageError for
    a name Python does not know or a codec that does not decode bytes to text (base64, zlib, rot13)."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        raise UsageError(
            f"unknown encoding {encoding!r} given to --encoding (e.g. utf-8, latin-1, cp1252, utf-16)"
        ) from None
    if not getattr(info, "_is_text_encoding", True):
        raise UsageError(
            f"--encoding {encoding!r} is not a text encoding (it encodes bytes to bytes); e.g. utf-8, latin-1"
        )
    # UTF-8 files may start with a byte-order mark; it is skipped by hand (not with utf-8-sig) so that
    # decoding errors keep their true byte offsets.
    return info.name, info.name == "utf-8"


_BOMS = {"utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)}


def decoded(raw: BinaryIO, digest, name: str, encoding: str, strip_bom: bool) -> Iterator[str]:
    """The text of a file opened at its start, one chunk at a time, hashing the bytes as they go by (into
    `digest`, unless None).
    A byte that does not decode is a DataError naming its line, column and byte offset."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0  # bytes read before `chunk`
    # Bytes [counted, offset) are kept as `tail`; `newlines` and `last_newline` describe [0, counted).
    counted, newlines, last_newline, tail = 0, 0, -1, b""
    while True:
        chunk = raw.read(_CHUNK_BYTES if offset else max(_CHUNK_BYTES, 4))  # a whole BOM, if any
        if digest is not None:
            digest.update(chunk)
        if offset == 0 and chunk and encoding in _BOMS and not chunk.startswith(_BOMS[encoding]):
            raise UsageError(
                f"{name}: no byte-order mark, which --encoding {encoding} needs to know the byte order; "
                f"pass --encoding {encoding}-le (or {encoding}-be)"
            )
        skip = 3 if offset == 0 and strip_bom and chunk.startswith(codecs.BOM_UTF8) else 0
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(chunk[skip:] if skip else chunk, final=not chunk)
        except UnicodeDecodeError as e:
            window = tail + chunk
            at = min(max(0, offset + skip - pending + e.start - counted), len(window) - 1)  # position in `window`
            before = window.rfind(b"\n", 0, at)
            line = newlines + window.count(b"\n", 0, at) + 1
            column = at - before if before >= 0 else counted + at - last_newline
            raise DataError(
                f"{name}:{line}:{column}: byte 0x{window[at]:02x} at byte offset {counted + at} is not "
                f"valid {e.encoding}; if the file uses another encoding, pass it with --encoding "
                f"(e.g. --encoding latin-1)"
            ) from None
        except UnicodeError as e:  # not a decoding error of a byte: what some codecs raise about the stream
            raise DataError(
                f"{name}: cannot decode as {encoding} ({e}); pass the file's encoding with --encoding"
            ) from None
        if text:
            yield text
        if not chunk:
            return
        window = tail + chunk
        cut = max(0, len(window) - _TAIL_BYTES)
        newlines += window.count(b"\n", 0, cut)
        found = window.rfind(b"\n", 0, cut)
        if found >= 0:
            last_newline = counted + found
        counted, tail = counted + cut, window[cut:]
        offset += len(chunk)


# A stream copied to the spool may have no line break in this many bytes (4 per character of the longest line).
_SPOOL_LINE_BYTES = 4 * MAX_LINE_CHARS
# The spool stops when the disk it is on has less than this left, rather than fill it (`yes | lstm-cli train -`).
_SPOOL_FREE_BYTES = 1 << 30


def spool(source: BinaryIO, name: str) -> tempfile.SpooledTemporaryFile:
    """A copy of a stream that can be read only once (stdin, a pipe, a device), readable again and again:
    in memory up to 32 MiB, on disk beyond. A stream without line breaks (/dev/zero, a binary file) or one
    that would fill the disk stops the copy with a DataError."""
    copy = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
    since_newline, written, checked = 0, 0, 0
    while chunk := source.read(_CHUNK_BYTES):
        copy.write(chunk)
        written += len(chunk)
        newline = chunk.rfind(b"\n")
        since_newline = len(chunk) - newline - 1 if newline >= 0 else since_newline + len(chunk)
        if since_newline > _SPOOL_LINE_BYTES:
            copy.close()
            raise DataError(
                f"{name}: no line break in {_SPOOL_LINE_BYTES // 2**20} MiB (lstm-cli reads lines of at most "
                f"{MAX_LINE_CHARS:,} characters); is this a text file?"
            )
        if written - checked >= _SPOOL_BYTES and getattr(copy, "_rolled", True):
            checked = written
            disk = os.fstatvfs(copy.fileno())
            if disk.f_bavail * disk.f_frsize < _SPOOL_FREE_BYTES:
                copy.close()
                raise DataError(
                    f"{name}: stopped after copying {written / 2**30:.1f} GiB to a temporary file: less than "
                    f"{_SPOOL_FREE_BYTES >> 30} GiB left on {tempfile.gettempdir()}; pass the data as a file path "
                    "(read in place), or point TMPDIR to a larger disk"
                )
    return copy


class _Replay:
    """Lines pulled from `source` so far, readable again from the first (to try each delimiter on the header),
    then `all()` of them, the buffered ones and the rest."""

    def __init__(self, source: Iterator[str]):
        self.source = source
        self.buffer: list[str] = []

    def lines(self) -> Iterator[str]:
        i = 0
        while True:
            if i == len(self.buffer):
                line = next(self.source, None)
                if line is None:
                    return
                self.buffer.append(line)
            yield self.buffer[i]
            i += 1

    def all(self) -> Iterator[str]:
        return chain(self.buffer, self.source)


def _split_lines(pieces: Iterable[str]) -> Iterator[str]:
    """Lines as io.StringIO(text, newline="") splits them ('\\n', '\\r\\n' or a lone '\\r' ends one and is
    kept), from text that arrives in pieces cut anywhere. A line over MAX_LINE_CHARS raises LineTooLong as
    soon as that much of it has arrived."""
    parts: list[str] = []
    pending = 0
    for text in pieces:
        if "\n" not in text and "\r" not in text:
            parts.append(text)
            pending += len(text)
            if pending > MAX_LINE_CHARS:
                raise LineTooLong
            continue
        if parts:
            text = "".join(parts) + text
        held = text.endswith("\r")  # may be the first half of a '\r\n' cut in two
        lines = io.StringIO(text[:-1] if held else text, newline="").readlines()
        parts, pending = [], 0
        if lines and not lines[-1].endswith(("\n", "\r")):
            parts.append(lines.pop())
            pending = len(parts[0])
        if lines and len(lines[0]) > MAX_LINE_CHARS:
            raise LineTooLong
        yield from lines
        if held:
            parts.append("\r")
            pending += 1
    if parts:
        yield from io.StringIO("".join(parts), newline="").readlines()


def read_labeled(path: Path | str, **options) -> LabeledData:
    """Read a labeled file (see LabeledStream for the formats and options). Labels are stripped strings;
    texts are kept as written. One pass of stream_labeled, kept in memory."""
    stream = stream_labeled(path, **options)
    texts, labels = [], []
    for text, label in stream:
        texts.append(text)
        labels.append(label)
    assert stream.sha256 is not None  # a complete pass sets it
    return LabeledData(
        texts, labels, stream.path, stream.sha256, stream.delimiter, stream.skipped, stream.format, stream.warnings
    )


def describe_skipped(skipped: Counter[str]) -> str:
    """'3 with empty text, 1 with malformed row' — for messages and warnings."""
    return ", ".join(f"{count} with {reason}" for reason, count in sorted(skipped.items()))


def iter_lines(stream: BinaryIO, name: str = "<stdin>") -> Iterator[str]:
    """One text per line; '\\n' or '\\r\\n' ends a line; bytes that are not UTF-8 become U+FFFD. A line over
    MAX_LINE_CHARS bytes (no text file has one: /dev/zero, a binary file) is a DataError, raised as soon as
    that much of it has been read.

    Reads what the stream has (read1: a pipe's lines are answered as they arrive) and decodes all its whole
    lines at once, which is faster than a line at a time."""
    read = getattr(stream, "read1", stream.read)
    held: list[bytes] = []  # the start of a line whose end has not arrived, in pieces
    size = 0  # bytes in `held`
    number = 0  # lines before `held`
    while chunk := read(1 << 16):
        end = chunk.rfind(b"\n")
        if end < 0:
            held.append(chunk)
            size += len(chunk)
            if size > MAX_LINE_CHARS:
                raise DataError(
                    f"{name}:{number + 1}: a line longer than {MAX_LINE_CHARS:,} bytes (lstm-cli's limit; a model "
                    "reads only the first --max-length tokens of a text); is this a text file? Shorten the lines"
                )
            continue
        held.append(chunk[: end + 1])
        lines = b"".join(held).decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n")
        lines.pop()  # the '' after the last line break
        number += len(lines)
        yield from lines
        held = [chunk[end + 1 :]]
        size = len(held[0])
    if size:
        yield b"".join(held).decode("utf-8", errors="replace")


def table_hint(first_line: str) -> str | None:
    """The --input-format a file given as lines of text should have had, judging by its first line: a header
    naming a `text` column (csv or tsv), a JSON object with a "text" field, or a fastText label; else None."""
    stripped = first_line.strip().lstrip("\ufeff")
    if stripped.startswith(FASTTEXT_PREFIX):
        return "fasttext"
    if stripped.startswith("{") and '"text"' in stripped:
        return "jsonl"
    for delimiter, kind in (("\t", "tsv"), (",", "csv"), (";", "csv"), ("|", "csv")):
        fields = [f.strip().strip('"').strip() for f in stripped.split(delimiter)]
        if len(fields) >= 2 and any(f.lower() == "text" for f in fields):
            return kind
    return None


def clean_text(text: str) -> str:
    """Valid Unicode for any str: bytes smuggled in as surrogates (non-UTF-8 command-line arguments)
    become U+FFFD, as undecodable bytes on stdin do."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "replace").decode("utf-8", "replace")


def _only_escapes(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def batched(items: Iterable[str], size: int, max_chars: int | None = None) -> Iterator[list[str]]:
    """Lists of `size` items (the last may be shorter); with `max_chars`, a list also ends once its texts
    reach that many characters. Each list is yielded as soon as it is complete, never after reading on."""
    iterator = iter(items)
    if max_chars is None:
        while batch := list(islice(iterator, size)):
            yield batch
        return
    batch, chars = [], 0
    for item in iterator:
        batch.append(item)
        chars += len(item)
        if len(batch) == size or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
