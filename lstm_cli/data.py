"""Reading labeled CSV/TSV files for training and evaluation, and text lines for prediction.

All input validation lives here, and every message names the file and line it is about."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
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

    def fingerprint(self) -> dict[str, object]:
        return {"path": self.path, "rows": len(self), "sha256": self.sha256}


def _read_bytes(path: Path | str) -> tuple[bytes, str]:
    if str(path) == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a CSV or TSV file")
    try:
        return p.read_bytes(), str(p)
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e.strerror}") from None


def _decode(raw: bytes, name: str, encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r} given to --encoding") from None
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # accept files with or without a byte-order mark
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{name}:{line}:{column}: byte 0x{raw[e.start]:02x} at byte offset {e.start} is not valid "
            f"{e.encoding}; if the file uses another encoding, pass it with --encoding (e.g. --encoding latin-1)"
        ) from None


def _default_delimiter(name: str) -> str:
    return "\t" if name.lower().endswith((".tsv", ".tab")) else ","


def _header(text: str, delimiter: str) -> list[str]:
    first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])
    return [column.strip() for column in first]


def _choose_delimiter(text: str, name: str, delimiter: str | None, required: list[str]) -> tuple[str, list[str]]:
    if delimiter is not None:
        return delimiter, _header(text, delimiter)
    default = _default_delimiter(name)
    header = _header(text, default)
    if all(column in header for column in required):
        return default, header
    for candidate in _CANDIDATE_DELIMITERS:
        other = _header(text, candidate)
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
    """Read a labeled CSV/TSV with a header row. Labels are stripped strings; texts are kept as written."""
    raw, name = _read_bytes(path)
    digest = hashlib.sha256(raw).hexdigest()
    text = _decode(raw, name, encoding)
    if not text.strip():
        raise DataError(f"{name}: file is empty; expected a header with columns {text_column!r} and {label_column!r}")
    delimiter, header = _choose_delimiter(text, name, delimiter, [text_column, label_column])
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in header:
            raise _missing_column_error(name, header, column, flag)
    text_index, label_index = header.index(text_column), header.index(label_column)

    data = LabeledData([], [], str(Path(name).resolve()) if name != "<stdin>" else name, digest, delimiter)
    # No per-field limit (csv's default is 128 KiB): a field can never be larger than the file in memory.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    next(reader)  # the header, parsed above
    line = reader.line_num + 1
    while True:
        start = line
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            line = reader.line_num + 1
            if skip_bad_rows:
                data.skipped["malformed row"] += 1
                continue
            raise DataError(f"{name}:{start}: malformed CSV ({e}); fix the quoting or pass --skip-bad-rows") from None
        line = reader.line_num + 1
        if not row:
            continue  # blank line
        if len(row) != len(header):
            if skip_bad_rows:
                data.skipped["malformed row"] += 1
                continue
            raise DataError(
                f"{name}:{start}: expected {len(header)} fields, found {len(row)}; quote fields that "
                f"contain {_printable(delimiter)}, or pass --skip-bad-rows to skip such rows"
            )
        label = row[label_index].strip()
        if not row[text_index].strip():
            data.skipped["empty text"] += 1
        elif not label:
            data.skipped["empty label"] += 1
        else:
            data.texts.append(row[text_index])
            data.labels.append(label)
    if not data.texts:
        what = "has a header but no data rows" if not data.skipped else "has no usable rows"
        detail = f" ({describe_skipped(data.skipped)})" if data.skipped else ""
        raise DataError(f"{name}: {what}{detail}")
    return data


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


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
