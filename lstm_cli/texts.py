"""Unlabeled texts for `lstm-cli pretrain`: one text per line, or the text column of a CSV/TSV/JSON Lines
file (read by the labeled-data readers of lstm_cli.data), re-iterable in bounded memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

from lstm_cli.data import LabeledStream, _split_lines, check_encoding, decoded, open_file, spool, stdin_bytes
from lstm_cli.errors import DataError, UsageError
from lstm_cli.formats import FORMATS, MAX_TEXT_CHARS, LineTooLong, format_for, too_long

TEXT_FORMATS = ("text", *(f for f in FORMATS if f != "fasttext"))


class Texts:
    """Every non-blank text of `path`, read again on each iteration. `input_format`: text (one per line),
    csv, tsv or jsonl; None: by the extension (.csv .tsv .jsonl .ndjson), else one text per line.
    After a complete pass `rows` and `sha256` (of the raw bytes) describe the file."""

    def __init__(
        self,
        path: Path | str,
        *,
        input_format: str | None = None,
        text_column: str | int = "text",
        delimiter: str | None = None,
        encoding: str = "utf-8",
        skip_bad_rows: bool = False,
        header: bool = True,
    ):
        stdin = str(path) == "-"
        self.name = "<stdin>" if stdin else str(path)
        chosen = input_format or (None if stdin else format_for(self.name)) or "text"
        if chosen not in TEXT_FORMATS:
            raise UsageError(f"unknown input format {chosen!r}; expected one of {', '.join(TEXT_FORMATS)}")
        self.format = chosen
        self.rows: int | None = None
        self.sha256: str | None = None
        self._table = None
        if chosen != "text":
            # The text column stands in for the label column too: rows without a text are skipped either way.
            self._table = LabeledStream(path, text_column=text_column, label_column=text_column, delimiter=delimiter,
                                        encoding=encoding, skip_bad_rows=skip_bad_rows, input_format=chosen,
                                        header=header)  # fmt: skip
            self.path = self._table.path
            return
        self._encoding, self._strip_bom = check_encoding(encoding)
        self._spool = None
        if stdin or not Path(path).is_file():  # stdin or a pipe: copied once, so it can be read in passes
            with nullcontext(stdin_bytes()) if stdin else open_file(Path(path), "a text file") as source:
                self._spool = spool(source, self.name)
        self.path = self.name if self._spool is not None else str(Path(path).resolve())

    def reading(self) -> dict[str, object]:
        """How the file is read, beside its bytes (part of what a resumed run must share)."""
        return {"format": self.format, **(self._table.reading() if self._table is not None else {})}

    def __iter__(self) -> Iterator[str]:
        if self._table is not None:
            for text, _ in self._table:
                yield text
            self.rows, self.sha256 = self._table.rows, self._table.sha256
            return
        digest, rows, number = hashlib.sha256(), 0, 0
        raw = self._open()
        try:
            for number, line in enumerate(  # noqa: B007 (number: the line a too-long error names)
                _split_lines(decoded(raw, digest, self.name, self._encoding, self._strip_bom)), 1
            ):
                if line.strip():
                    rows += 1
                    yield line.rstrip("\r\n")[:MAX_TEXT_CHARS]
        except LineTooLong:
            raise too_long(self.name, number + 1) from None
        finally:
            if self._spool is None:
                raw.close()
        if not rows:
            raise DataError(f"{self.name}: no texts (every line is blank); give one text per line")
        sha256 = digest.hexdigest()
        if self.sha256 is not None and sha256 != self.sha256:
            raise DataError(
                f"{self.name}: the file changed while it was being read (its bytes differ from the last pass)"
            )
        self.rows, self.sha256 = rows, sha256

    def _open(self):
        if self._spool is not None:
            self._spool.seek(0)
            return self._spool
        try:
            return open(self.name, "rb")
        except OSError as e:
            raise DataError(f"{self.name}: cannot read: {e.strerror}") from None
