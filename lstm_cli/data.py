"""Reading labeled CSV/TSV files for training and evaluation, and text lines for prediction.

All input validation lives here, and every message names the file and line it is about."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO

from lstm_cli.errors import DataError

# Delimiters tried, in order, when none is given and the header does not split on the default one
# (Excel writes ';' in locales where ',' is the decimal separator).
_CANDIDATE_DELIMITERS = (",", "\t", ";", "|")


@dataclass
class LabeledData:
    texts: list[str]
    labels: list[str]
    path: str
    sha256: str
    delimiter: str
    # reason -> rows left out (empty text, empty label, malformed row with --skip-bad-rows)
    skipped: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(text, label) pairs, as a LabeledStream yields them."""
        return zip(self.texts, self.labels, strict=True)

    def fingerprint(self) -> dict[str, object]:
        return {"path": self.path, "rows": len(self), "sha256": self.sha256}


# Bytes read per step while streaming: decoding, line splitting and hashing work on this much at a time,
# so memory does not grow with the file (only with its longest row).
_CHUNK_BYTES = 1 << 20
# Bytes kept from before the current chunk to place a decoding error: more than any decoder buffers.
_TAIL_BYTES = 16
# stdin is copied here once so that it can be read again; past this size the copy goes to a temp file.
_SPOOL_BYTES = 32 << 20


def stream_labeled(
    path: Path | str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    delimiter: str | None = None,
    encoding: str = "utf-8",
    skip_bad_rows: bool = False,
) -> LabeledStream:
    """The (text, label) rows of a labeled CSV/TSV, read again from the file on every iteration.

    The header is checked (and the delimiter chosen) here, so a wrong column fails before any long pass."""
    return LabeledStream(
        path,
        text_column=text_column,
        label_column=label_column,
        delimiter=delimiter,
        encoding=encoding,
        skip_bad_rows=skip_bad_rows,
    )


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

    After a complete pass, `rows`, `skipped` and `sha256` (of the raw bytes) describe the file; a later pass
    that sees different bytes raises DataError. stdin ('-'), and a path that is no regular file (a pipe,
    as `<(zcat data.csv.gz)` gives, or a device), cannot be read twice, so it is copied once into a spooled
    temporary file (memory up to 32 MiB, disk beyond) that lives as long as this object."""

    def __init__(
        self,
        path: Path | str,
        *,
        text_column: str,
        label_column: str,
        delimiter: str | None,
        encoding: str,
        skip_bad_rows: bool,
    ):
        self._columns = (text_column, label_column)
        self._skip_bad_rows = skip_bad_rows
        self._spool: tempfile.SpooledTemporaryFile | None = None
        stdin = str(path) == "-"
        self._name = "<stdin>" if stdin else str(path)
        if stdin or not Path(path).is_file():  # stdin, a pipe (or a missing file: open_file says so): read once
            with nullcontext(sys.stdin.buffer) if stdin else open_file(Path(path), "a CSV or TSV file") as source:
                self._spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
                shutil.copyfileobj(source, self._spool, _CHUNK_BYTES)
        self.path = self._name if self._spool is not None else str(Path(self._name).resolve())
        try:
            info = codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"unknown encoding {encoding!r} given to --encoding") from None
        # UTF-8 files may start with a byte-order mark; it is skipped by hand (not with utf-8-sig) so that
        # decoding errors keep their true byte offsets.
        self._strip_bom = info.name == "utf-8"
        self._encoding = info.name
        self._given_delimiter = delimiter
        self.sha256: str | None = None
        self.rows: int | None = None
        self.skipped: Counter[str] = Counter()
        with self._open() as raw:
            self.delimiter, _, _ = self._start(raw, hashlib.sha256())

    def fingerprint(self) -> dict[str, object]:
        """As LabeledData.fingerprint; valid after a complete pass."""
        return {"path": self.path, "rows": self.rows, "sha256": self.sha256}

    def __iter__(self) -> Iterator[tuple[str, str]]:
        digest = hashlib.sha256()
        skipped: Counter[str] = Counter()
        rows = 0
        name, delimiter = self._name, self.delimiter
        with self._open() as raw:
            _, header, lines = self._start(raw, digest)
            text_index, label_index = header.index(self._columns[0]), header.index(self._columns[1])
            reader = csv.reader(lines, delimiter=delimiter, strict=True)
            next(reader)  # the header, parsed in _start
            line = reader.line_num + 1
            while True:
                start = line
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    line = reader.line_num + 1
                    if self._skip_bad_rows:
                        skipped["malformed row"] += 1
                        continue
                    raise DataError(
                        f"{name}:{start}: malformed CSV ({e}); fix the quoting or pass --skip-bad-rows"
                    ) from None
                line = reader.line_num + 1
                if not row:
                    continue  # blank line
                if len(row) != len(header):
                    if self._skip_bad_rows:
                        skipped["malformed row"] += 1
                        continue
                    raise DataError(
                        f"{name}:{start}: expected {len(header)} fields, found {len(row)}; quote fields that "
                        f"contain {_printable(delimiter)}, or pass --skip-bad-rows to skip such rows"
                    )
                label = row[label_index].strip()
                if not row[text_index].strip():
                    skipped["empty text"] += 1
                elif not label:
                    skipped["empty label"] += 1
                else:
                    rows += 1
                    yield row[text_index], label
        if not rows:
            what = "has a header but no data rows" if not skipped else "has no usable rows"
            detail = f" ({describe_skipped(skipped)})" if skipped else ""
            raise DataError(f"{name}: {what}{detail}")
        sha256 = digest.hexdigest()
        if self.sha256 is not None and sha256 != self.sha256:
            raise DataError(f"{name}: the file changed while it was being read (its bytes differ from the last pass)")
        self.sha256, self.rows, self.skipped = sha256, rows, skipped

    def _open(self) -> BinaryIO:
        if self._spool is not None:
            self._spool.seek(0)
            return _Unclosed(self._spool)
        try:
            return open(self._name, "rb")  # closed by the caller's `with`
        except OSError as e:
            raise DataError(f"{self._name}: cannot read: {e.strerror}") from None

    def _start(self, raw: BinaryIO, digest) -> tuple[str, list[str], Iterator[str]]:
        """(delimiter, header, lines from the first one) for a file opened at its start."""
        size = _size(raw)
        # No per-field limit (csv's default is 128 KiB): a field can never be longer than the file.
        csv.field_size_limit(max(csv.field_size_limit(), min(size + 1, 2**31 - 1)))
        lines = _split_lines(self._decoded(raw, digest))
        replay = _Replay(lines)
        text_column, label_column = self._columns
        delimiter, header = _choose_delimiter(replay, self._name, self._given_delimiter, [*self._columns])
        for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
            if column not in header:
                if all(not line.strip() for line in chain(replay.buffer, lines)):
                    raise DataError(
                        f"{self._name}: file is empty; expected a header with columns "
                        f"{text_column!r} and {label_column!r}"
                    )
                raise _missing_column_error(self._name, header, column, flag)
        return delimiter, header, chain(replay.buffer, lines)

    def _decoded(self, raw: BinaryIO, digest) -> Iterator[str]:
        """The file's text, one chunk at a time, hashing the bytes as they go by."""
        decoder = codecs.getincrementaldecoder(self._encoding)()
        offset = 0  # bytes read before `chunk`
        # Bytes [counted, offset) are kept as `tail`; `newlines` and `last_newline` describe [0, counted).
        counted, newlines, last_newline, tail = 0, 0, -1, b""
        while True:
            chunk = raw.read(_CHUNK_BYTES if offset else max(_CHUNK_BYTES, 3))  # a whole BOM, if any
            digest.update(chunk)
            skip = 3 if offset == 0 and self._strip_bom and chunk.startswith(codecs.BOM_UTF8) else 0
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk[skip:] if skip else chunk, final=not chunk)
            except UnicodeDecodeError as e:
                window = tail + chunk
                at = offset + skip - pending + e.start - counted  # position in `window`
                before = window.rfind(b"\n", 0, at)
                line = newlines + window.count(b"\n", 0, at) + 1
                column = at - before if before >= 0 else counted + at - last_newline
                raise DataError(
                    f"{self._name}:{line}:{column}: byte 0x{window[at]:02x} at byte offset {counted + at} is not "
                    f"valid {e.encoding}; if the file uses another encoding, pass it with --encoding "
                    f"(e.g. --encoding latin-1)"
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


class _Unclosed(io.BufferedIOBase):
    """A view of the stdin spool whose close() leaves the spool open for the next pass."""

    def __init__(self, inner):
        self._inner = inner

    def read(self, size: int | None = -1) -> bytes:
        return self._inner.read(size)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def size(self) -> int:
        position = self._inner.tell()
        end = self._inner.seek(0, io.SEEK_END)
        self._inner.seek(position)
        return end


def _size(raw) -> int:
    if isinstance(raw, _Unclosed):
        return raw.size()
    return os.fstat(raw.fileno()).st_size


class _Replay:
    """Lines pulled from `source` so far, readable again from the first (to try each delimiter on the header)."""

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


def _split_lines(pieces: Iterable[str]) -> Iterator[str]:
    """Lines as io.StringIO(text, newline="") splits them ('\\n', '\\r\\n' or a lone '\\r' ends one and is
    kept), from text that arrives in pieces cut anywhere."""
    parts: list[str] = []
    for text in pieces:
        if "\n" not in text and "\r" not in text:
            parts.append(text)
            continue
        if parts:
            text = "".join(parts) + text
        held = text.endswith("\r")  # may be the first half of a '\r\n' cut in two
        lines = io.StringIO(text[:-1] if held else text, newline="").readlines()
        parts = []
        if lines and not lines[-1].endswith(("\n", "\r")):
            parts.append(lines.pop())
        yield from lines
        if held:
            parts.append("\r")
    if parts:
        yield from io.StringIO("".join(parts), newline="").readlines()


def _default_delimiter(name: str) -> str:
    return "\t" if name.lower().endswith((".tsv", ".tab")) else ","


def _header(replay: _Replay, delimiter: str) -> list[str]:
    first = next(csv.reader(replay.lines(), delimiter=delimiter), [])
    return [column.strip() for column in first]


def _choose_delimiter(replay: _Replay, name: str, delimiter: str | None, required: list[str]) -> tuple[str, list[str]]:
    if delimiter is not None:
        return delimiter, _header(replay, delimiter)
    default = _default_delimiter(name)
    header = _header(replay, default)
    if all(column in header for column in required):
        return default, header
    for candidate in _CANDIDATE_DELIMITERS:
        other = _header(replay, candidate)
        if candidate != default and all(column in other for column in required):
            return candidate, other
    return default, header


def _missing_column_error(name: str, header: list[str], column: str, flag: str) -> DataError:
    seen = ", ".join(repr(c) for c in header) or "none"
    return DataError(
        f"{name}:1: no column {column!r} in the header (columns seen: {seen}); "
        f"name the right one with {flag}, or add a header line if the file has none"
    )


def read_labeled(
    path: Path | str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    delimiter: str | None = None,
    encoding: str = "utf-8",
    skip_bad_rows: bool = False,
) -> LabeledData:
    """Read a labeled CSV/TSV with a header row. Labels are stripped strings; texts are kept as written.

    One pass of stream_labeled, kept in memory."""
    stream = stream_labeled(
        path,
        text_column=text_column,
        label_column=label_column,
        delimiter=delimiter,
        encoding=encoding,
        skip_bad_rows=skip_bad_rows,
    )
    texts, labels = [], []
    for text, label in stream:
        texts.append(text)
        labels.append(label)
    assert stream.sha256 is not None  # a complete pass sets it
    return LabeledData(texts, labels, stream.path, stream.sha256, stream.delimiter, stream.skipped)


def _printable(delimiter: str) -> str:
    return {"\t": "a tab", ",": "','", ";": "';'"}.get(delimiter, repr(delimiter))


def describe_skipped(skipped: Counter[str]) -> str:
    """'3 with empty text, 1 with malformed row' — for messages and warnings."""
    return ", ".join(f"{count} with {reason}" for reason, count in sorted(skipped.items()))


def iter_lines(stream: BinaryIO) -> Iterator[str]:
    """One text per line; '\\n' or '\\r\\n' ends a line; bytes that are not UTF-8 become U+FFFD."""
    for raw in stream:
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        yield raw.decode("utf-8", errors="replace")


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
