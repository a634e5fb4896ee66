"""The shapes labeled data comes in (CSV/TSV with or without a header, fastText's `__label__` lines, JSON
Lines), each read as records with their line numbers; and the limits every reader keeps.

csv and json are imported where they are used: predict's line path imports this module and needs neither.
A reader is built on the file's first lines (it checks the header or first record at once, so a wrong
column fails before any long pass) and then yields `Record`s, or `Bad` for a row it cannot use: the caller
decides whether a bad row stops the run or is skipped (--skip-bad-rows)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lstm_cli.errors import DataError, UsageError

FORMATS = ("csv", "tsv", "jsonl", "fasttext")
# A line (and a CSV row over several lines) longer than this many characters is refused while it is read:
# no text classifier needs it, and it bounds the memory one row can take whatever the file holds
# (/dev/zero, a binary file, one 100 MB field).
MAX_LINE_CHARS = 16 << 20
# Texts are cut to this many characters as they are read: a model reads at most --max-length tokens
# (2,000 by default), so this keeps every token it would read unless the average one is over 500 characters.
MAX_TEXT_CHARS = 1 << 20
FASTTEXT_PREFIX = "__label__"
# Delimiters tried, in order, when none is given and the header does not split on the default one
# (Excel writes ';' in locales where ',' is the decimal separator).
_CANDIDATE_DELIMITERS = (",", "\t", ";", "|")
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}


def parse_delimiter(value: str) -> str:
    """The one character a --delimiter value names: itself, or `\\t` / `tab` (and comma, semicolon, pipe,
    space) spelled out. UsageError for anything else."""
    named = _DELIMITER_NAMES.get(value.lower() if len(value) > 1 else value, value)
    if len(named) != 1:
        raise UsageError(
            f"--delimiter must be one character, '\\t' or 'tab' (got {value!r}); e.g. --delimiter ';' or tab"
        )
    if named in '\r\n"':
        raise UsageError(f"--delimiter cannot be {named!r}: it is part of CSV's own syntax (line ends and quotes)")
    return named


def format_for(name: str) -> str | None:
    """The format a file name's extension says (None: none that decides it)."""
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lower.endswith((".tsv", ".tab")):
        return "tsv"
    if lower.endswith(".csv"):
        return "csv"
    return None


def sniff(first_line: str) -> str | None:
    """The format a file's first line shows beyond doubt: fastText's `__label__` or a JSON object."""
    stripped = first_line.lstrip("\ufeff \t")
    if stripped.startswith(FASTTEXT_PREFIX):
        return "fasttext"
    if stripped.startswith("{"):
        return "jsonl"
    return None


class LineTooLong(Exception):
    """Raised by a line splitter for a line over MAX_LINE_CHARS; the reader names the line."""


def too_long(name: str, line: int) -> DataError:
    return DataError(
        f"{name}:{line}: a line or row longer than {MAX_LINE_CHARS:,} characters (lstm-cli's limit; a model reads "
        "only the first --max-length tokens of a text); is this a text file? Shorten the texts or split the file"
    )


def numbered(lines: Iterator[str], name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a file's lines; a line over the limit is a DataError naming it."""
    number = 0
    while True:
        try:
            line = next(lines, None)
        except LineTooLong:
            raise too_long(name, number + 1) from None
        if line is None:
            return
        number += 1
        yield number, line


@dataclass
class Record:
    line: int  # where the record starts, 1-based
    fields: Any  # list[str] (CSV), dict (JSON Lines) or (labels, text) (fastText)


@dataclass
class Bad:
    line: int
    reason: str  # a short name, counted by --skip-bad-rows
    message: str  # what is wrong and the fix, without the file:line


# The column options' default names: a --no-header file whose first row holds them has a header after all.
HEADER_NAMES = {"--text-column": "text", "--label-column": "label"}


class Columns:
    """Which columns or fields hold what: names, or with `header=False` 0-based indexes from 1-based numbers."""

    def __init__(self, wanted: dict[str, str | int], *, header: bool):
        self.wanted = wanted  # flag -> name or 1-based number, e.g. {"--text-column": "text"}
        self.header = header
        if not header:
            for flag, value in wanted.items():
                if not str(value).isdigit() or int(value) < 1:
                    raise UsageError(f"with --no-header, {flag} is a column number counted from 1 (got {value!r})")


def open_reader(replay, name: str, columns: Columns, *, input_format: str | None, delimiter: str | None):
    """The reader for a file's lines (a data._Replay at the file's start): the format given, else the one its
    extension or first line shows, else CSV. The header (or first JSON record) is checked here."""
    chosen = input_format or format_for(name)
    if chosen is None:
        try:
            first = next(replay.lines(), "")
        except LineTooLong:
            raise too_long(name, 1) from None
        chosen = sniff(first) or "csv"
    try:
        if chosen == "fasttext":
            return FastTextReader(replay, name)
        if chosen == "jsonl":
            return JsonlReader(replay, name, columns)
        import csv

        csv.field_size_limit(MAX_LINE_CHARS)  # a longer field (a quote never closed) stops at the limit
        return CsvReader(replay, name, columns, delimiter=delimiter, default="\t" if chosen == "tsv" else ",")
    except LineTooLong:
        raise too_long(name, len(replay.buffer) + 1) from None


# --- CSV and TSV --------------------------------------------------------------------------------------------


class CsvReader:
    """Rows of a delimited file: a header names the columns (found in any order), or with --no-header the
    columns are numbered; every row must have as many fields as the first."""

    format = "csv"

    def __init__(self, replay, name: str, columns: Columns, *, delimiter: str | None, default: str):
        self.name = name
        self.header: list[str] | None
        self.warnings: list[str] = []  # about how the file is read, for the CLI to show
        names = list(columns.wanted.values())
        if columns.header:
            self.delimiter, self.header = _choose_delimiter(replay, delimiter, default, [str(n) for n in names])
            for flag, column in columns.wanted.items():
                if column not in self.header:
                    if all(not line.strip() for line in replay.all()):
                        wanted = " and ".join(repr(n) for n in names)
                        raise DataError(f"{name}: file is empty; expected a header with columns {wanted}")
                    raise _missing_column(name, self.header, str(column), flag)
            self.indexes = [self.header.index(str(n)) for n in names]
            self.width = len(self.header)
        else:
            self.delimiter = delimiter or default
            self.header = None
            import csv

            first = next(csv.reader(replay.lines(), delimiter=self.delimiter), None)
            if first is None:
                raise DataError(f"{name}: file is empty")
            self.indexes = [int(n) - 1 for n in names]
            self.width = len(first)
            for flag, number in columns.wanted.items():
                if int(number) > self.width:
                    raise DataError(
                        f"{name}:1: {flag} {number}, but the first row has {self.width} field"
                        f"{'s' if self.width != 1 else ''} split on {printable(self.delimiter)}; "
                        "pass the right --delimiter or column number"
                    )
            if all(first[int(n) - 1].strip().lower() == HEADER_NAMES.get(f) for f, n in columns.wanted.items()):
                row = self.delimiter.join(first)
                self.warnings.append(
                    f"{name}:1: {row!r} looks like a header, but --no-header reads it as data; "
                    "leave out --no-header to use it as the header"
                )
        self._lines = replay

    def records(self) -> Iterator[Record | Bad]:
        import csv

        reader = csv.reader(self._lines.all(), delimiter=self.delimiter, strict=True)
        if self.header is not None:
            next(reader)  # parsed already
        line = reader.line_num + 1
        while True:
            start = line
            try:
                row = next(reader)
            except StopIteration:
                return
            except LineTooLong:
                raise too_long(self.name, reader.line_num + 1) from None
            except csv.Error as e:
                line = reader.line_num + 1
                if str(e).startswith("field larger than field limit"):
                    raise too_long(self.name, start) from None
                yield Bad(start, "malformed row", f"malformed CSV ({e}); fix the quoting or pass --skip-bad-rows")
                continue
            line = reader.line_num + 1
            if not row:
                continue  # blank line
            if len(row) != self.width:
                yield Bad(
                    start,
                    "malformed row",
                    f"expected {self.width} fields, found {len(row)}; quote fields that contain "
                    f"{printable(self.delimiter)}, or pass --skip-bad-rows to skip such rows",
                )
                continue
            yield Record(start, row)


def _header(replay, delimiter: str) -> list[str]:
    import csv

    first = next(csv.reader(replay.lines(), delimiter=delimiter), [])
    return [column.strip() for column in first]


def _choose_delimiter(replay, delimiter: str | None, default: str, required: list[str]) -> tuple[str, list[str]]:
    if delimiter is not None:
        return delimiter, _header(replay, delimiter)
    header = _header(replay, default)
    if all(column in header for column in required):
        return default, header
    for candidate in _CANDIDATE_DELIMITERS:
        other = _header(replay, candidate)
        if candidate != default and all(column in other for column in required):
            return candidate, other
    return default, header


def _missing_column(name: str, header: list[str], column: str, flag: str) -> DataError:
    seen = ", ".join(repr(c) for c in header) or "none"
    return DataError(
        f"{name}:1: no column {column!r} in the header (columns seen: {seen}); "
        f"name the right one with {flag}, or pass --no-header if the file has none"
    )


def printable(delimiter: str) -> str:
    return {"\t": "a tab", ",": "','", ";": "';'"}.get(delimiter, repr(delimiter))


# --- fastText -----------------------------------------------------------------------------------------------


class FastTextReader:
    """fastText's supervised format: `__label__A [__label__B ...] text` a line. Every label is kept (a
    single-label model refuses a line with several; the list is there for a multi-label one)."""

    format = "fasttext"
    delimiter = None

    def __init__(self, replay, name: str):
        self.name = name
        self._lines = replay

    def records(self) -> Iterator[Record | Bad]:
        for number, line in numbered(self._lines.all(), self.name):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            labels, text = split_fasttext(line)
            if not labels:
                yield Bad(number, "no label", f"no {FASTTEXT_PREFIX}LABEL at the start of the line; "
                                              "label it or pass --skip-bad-rows")  # fmt: skip
                continue
            yield Record(number, (labels, text))


def split_fasttext(line: str) -> tuple[tuple[str, ...], str]:
    """(labels, text) of one fastText line: the leading whitespace-separated `__label__X` words are labels
    (X kept as written), the rest of the line is the text (a `__label__` inside it stays text)."""
    labels: list[str] = []
    rest = line.lstrip(" \t\ufeff")
    while rest.startswith(FASTTEXT_PREFIX):
        end = len(rest)
        for i, c in enumerate(rest):
            if c in " \t":
                end = i
                break
        labels.append(rest[len(FASTTEXT_PREFIX) : end])
        rest = rest[end:].lstrip(" \t")
    return tuple(label for label in labels if label), rest


# --- JSON Lines ---------------------------------------------------------------------------------------------


class JsonlReader:
    """One JSON object a line; the column options name its fields. Blank lines are skipped."""

    format = "jsonl"
    delimiter = None

    def __init__(self, replay, name: str, columns: Columns):
        self.name = name
        self.fields = {flag: str(value) for flag, value in columns.wanted.items()}
        self._lines = replay
        # The first record is checked now, as a header is: a wrong field name fails before any long pass.
        for record in self._records(replay.lines()):
            if isinstance(record, Bad):
                raise DataError(f"{name}:{record.line}: {record.message}")
            for flag, field in self.fields.items():
                if field not in record.fields:
                    raise DataError(f"{name}:{record.line}: {_missing_field(record.fields, field, flag)}")
            return
        raise DataError(f"{name}: file is empty; expected one JSON object a line")

    def records(self) -> Iterator[Record | Bad]:
        return self._records(self._lines.all())

    def _records(self, lines: Iterator[str]) -> Iterator[Record | Bad]:
        import json

        for number, line in numbered(lines, self.name):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except RecursionError:
                yield Bad(number, "bad JSON", "JSON nested too deeply; fix the line or pass --skip-bad-rows")
                continue
            except ValueError as e:  # JSONDecodeError, or a number too long to read
                detail = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
                yield Bad(number, "bad JSON", f"not valid JSON ({detail}); fix the line or pass --skip-bad-rows")
                continue
            if not isinstance(value, dict):
                yield Bad(number, "bad JSON", f"a JSON {_kind(value)}, not an object; each line must be one "
                                              "object such as {\"text\": ..., \"label\": ...}")  # fmt: skip
                continue
            yield Record(number, value)


def _kind(value: object) -> str:
    return {list: "array", str: "string", bool: "true/false", type(None): "null", dict: "object"}.get(
        type(value), "number"
    )


def _missing_field(record: dict, field: str, flag: str) -> str:
    seen = ", ".join(repr(k) for k in list(record)[:20]) or "none"
    return f"no field {field!r} (fields: {seen}); name the right one with {flag}"


def json_text(record: dict, field: str, flag: str) -> tuple[str | None, str | None]:
    """(the string in `field`, None) or (None, what is wrong)."""
    if field not in record:
        return None, _missing_field(record, field, flag)
    value = record[field]
    if not isinstance(value, str):
        return None, f"field {field!r} is a JSON {_kind(value)}, not a string; quote it"
    return value, None


def json_label(record: dict, field: str, flag: str) -> tuple[str | None, str | None]:
    """As json_text, but an integer label is read as its decimal string (0 and "0" are the same label)."""
    value = record.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    return json_text(record, field, flag)
