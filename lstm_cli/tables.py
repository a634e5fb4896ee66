"""Predictions on tables: a CSV, TSV or JSON Lines file read row by row, its text column labelled, and the
same rows written back in the same format with every column kept, in order, plus the predictions.

Added columns (after the input's own, `prefix` before each name):
  predicted_label, probability            the most probable label and its probability
  label_N, probability_N (N = 2..K)       with --top-k K: the N-th most probable
  p_<label> (CSV/TSV)                     with --all-probabilities: every label's, in the model's order
  probabilities (JSON Lines)              ... as one object {label: probability}
A multi-label model's rows get instead:
  predicted_labels, predicted_probabilities   the labels at or over their thresholds, most probable first,
                                              and their probabilities: in CSV/TSV each cell a JSON array
                                              (["a,b", "c"]; [] for none), in JSON Lines a list
  p_<label> / probabilities               with --all-probabilities, as above
No two added names can be equal whatever the labels hold; one that equals an input column is refused
(pass a prefix). Imported only for tables: predict's line path never loads csv or json."""

from __future__ import annotations

import csv
import io
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from lstm_cli.data import _Replay, _split_lines, check_encoding, decoded
from lstm_cli.errors import DataError, UsageError
from lstm_cli.formats import MAX_LINE_CHARS, Bad, Columns, CsvReader, JsonlReader, LineTooLong, json_text, too_long

TABLE_FORMATS = ("csv", "tsv", "jsonl")


@dataclass
class Added:
    """The columns predict adds to each row, for a model's labels."""

    names: list[str]
    k: int
    all_probabilities: bool
    prefix: str
    jsonl: bool
    multi_label: bool = False

    @classmethod
    def for_model(cls, labels: list[str], *, k: int, all_probabilities: bool, prefix: str, jsonl: bool,
                  multi_label: bool = False) -> Added:  # fmt: skip
        names = ["predicted_labels", "predicted_probabilities"] if multi_label else ["predicted_label", "probability"]
        for n in range(2, k + 1):
            names += [f"label_{n}", f"probability_{n}"]
        if all_probabilities:
            names += ["probabilities"] if jsonl else [f"p_{label}" for label in labels]
        return cls([prefix + name for name in names], k, all_probabilities, prefix, jsonl, multi_label)

    def clash(self, existing) -> str | None:
        """The first added name that an input column or field already has, or None."""
        return next((name for name in self.names if name in existing), None)


class TableReader:
    """The rows of a CSV/TSV/JSON Lines stream, each with the text to label, read once in bounded memory."""

    def __init__(self, raw: BinaryIO, name: str, *, input_format: str, text_column: str | int, header: bool,
                 delimiter: str | None, encoding: str):  # fmt: skip
        self.name = name
        self.format = input_format
        codec, strip_bom = check_encoding(encoding)
        lines = _Replay(_split_lines(decoded(raw, None, name, codec, strip_bom)))
        columns = Columns({"--text-column": text_column}, header=header)
        try:
            if input_format == "jsonl":
                self._reader = JsonlReader(lines, name, columns)
            else:
                default = "\t" if input_format == "tsv" else ","
                csv.field_size_limit(MAX_LINE_CHARS)
                self._reader = CsvReader(lines, name, columns, delimiter=delimiter, default=default)
        except LineTooLong:
            raise too_long(name, len(lines.buffer) + 1) from None
        self.header: list[str] | None = getattr(self._reader, "header", None)
        self.delimiter: str | None = self._reader.delimiter
        self.warnings: list[str] = getattr(self._reader, "warnings", [])  # a header read as data, ...
        # Written back as the input ends its lines (csv writes '\r\n' unless told).
        self.line_end = "\r\n" if lines.buffer and lines.buffer[0].endswith("\r\n") else "\n"

    def rows(self) -> Iterator[tuple[int, object, str]]:
        """(line, the record as read, its text): a CSV row's fields, or a JSON object."""
        text_field = self._reader.fields["--text-column"] if self.format == "jsonl" else None
        text_index = None if text_field is not None else self._reader.indexes[0]
        for record in self._reader.records():
            if isinstance(record, Bad):
                # No --skip-bad-rows here: every row of a table gets its prediction, in order.
                message = record.message.replace(", or pass --skip-bad-rows to skip such rows", "")
                raise DataError(f"{self.name}:{record.line}: {message.replace(' or pass --skip-bad-rows', '')}")
            if text_field is None:
                yield record.line, record.fields, record.fields[text_index]
                continue
            text, problem = json_text(record.fields, text_field, "--text-column")
            if problem is not None:
                raise DataError(f"{self.name}:{record.line}: {problem}")
            yield record.line, record.fields, text


class TableWriter:
    """Rows written back in their input's format, each followed by its predictions, into `out` (a buffer that
    the caller empties after each batch: one write a batch, not one a row)."""

    def __init__(self, out: io.StringIO, reader: TableReader, added: Added, labels: list[str],
                 abstain: tuple[float, str] | None = None, thresholds=None):  # fmt: skip
        self.out = out
        self.abstain = abstain  # (min probability, unknown label): lstm_cli.abstain
        self.thresholds = thresholds  # a multi-label model's, one a label (or one for all)
        self.reader = reader
        self.added = added
        self.labels = labels
        if reader.format == "jsonl":
            self._csv = None
            return
        self._csv = csv.writer(out, delimiter=reader.delimiter or ",", lineterminator=reader.line_end)
        if reader.header is not None:
            clash = added.clash(reader.header)
            if clash is not None:
                raise UsageError(_clash_message(f"{reader.name}:1: the header", clash))
            self._csv.writerow([*reader.header, *added.names])

    def write(self, records: list[tuple[int, object]], batch) -> None:
        """One batch: `records` (line, record) in order and their `Predictions`."""
        from lstm_cli.render import probability_values

        if self.thresholds is not None:
            self._write_rows(records, self._label_sets(batch), batch)
            return
        best, scores = batch.top(self.added.k)
        unsure = None
        if self.abstain is not None:
            from lstm_cli.abstain import abstains

            unsure = abstains(scores[:, 0], self.abstain[0]).tolist()
        best, scores = best.tolist(), probability_values(scores)
        rows = []
        for i, (row, s) in enumerate(zip(best, scores, strict=True)):
            values: list[object] = []
            for index, p in zip(row, s, strict=True):
                values += [self.labels[index], p]
            if unsure is not None and unsure[i]:
                values[0] = self.abstain[1]  # predicted_label; every probability stays
            rows.append(values)
        self._write_rows(records, rows, batch)

    def _label_sets(self, batch) -> list[list[object]]:
        """A multi-label model's added values for each row: [its labels at or over their thresholds, their
        probabilities], most probable first; in CSV/TSV each a compact JSON array, in JSON Lines a list."""
        from lstm_cli.multilabel import picked as multilabel_picked
        from lstm_cli.render import probability_values

        values = probability_values(batch.probabilities)
        rows = []
        for picked, every in zip(multilabel_picked(batch.probabilities, self.thresholds), values, strict=True):
            labels, probabilities = [self.labels[i] for i in picked], [every[i] for i in picked]
            if self._csv is not None:  # JSON escapes tabs and line breaks: the cell holds neither
                labels, probabilities = (json.dumps(x, ensure_ascii=False, separators=(",", ":"))
                                         for x in (labels, probabilities))  # fmt: skip
            rows.append([labels, probabilities])
        return rows

    def _write_rows(self, records: list[tuple[int, object]], rows: list[list[object]], batch) -> None:
        """Each record followed by its added values (and every probability, with --all-probabilities)."""
        from lstm_cli.render import probability_values

        every = probability_values(batch.probabilities) if self.added.all_probabilities else None
        labels = self.labels
        for i, ((line, record), values) in enumerate(zip(records, rows, strict=True)):
            if self._csv is not None:
                if every is not None:
                    values += every[i]
                self._csv.writerow([*record, *(v if isinstance(v, str) else repr(v) for v in values)])
                continue
            clash = self.added.clash(record)
            if clash is not None:
                raise UsageError(_clash_message(f"{self.reader.name}:{line}: the record", clash))
            out = dict(record)
            out.update(zip(self.added.names, values, strict=False))
            if every is not None:
                out[self.added.names[-1]] = dict(zip(labels, every[i], strict=True))
            self.out.write(json.dumps(out, ensure_ascii=False) + "\n")


def _clash_message(where: str, name: str) -> str:
    return (f"{where} already has a column {name!r}, which predict adds; pass --column-prefix (e.g. "
            "--column-prefix new_) to name the added columns apart")  # fmt: skip


def predict_table(predictor, reader: TableReader, write: Callable[[str], None], *, k: int, all_probabilities: bool,
                  prefix: str, batch_size: int, abstain: tuple[float, str] | None = None,
                  thresholds=None) -> int:  # fmt: skip
    """Label every row of `reader` and `write` it with its predictions, a batch at a time (flat memory for any
    table: at most one batch of rows is held). `abstain`: (P, label), the label written as predicted_label
    where the top probability is below P (lstm_cli.abstain). `thresholds`: a multi-label model's (then `k` is
    1, `abstain` None). Returns the number of rows."""
    multi_label = thresholds is not None
    added = Added.for_model(predictor.labels, k=1 if multi_label else k, all_probabilities=all_probabilities,
                            prefix=prefix, jsonl=reader.format == "jsonl", multi_label=multi_label)  # fmt: skip
    out = io.StringIO()
    writer = TableWriter(out, reader, added, predictor.labels, abstain, thresholds)
    # The header first, so that a table with no rows still gets one.
    write(out.getvalue())
    out.seek(0)
    out.truncate()
    pending: deque[tuple[int, object]] = deque()

    def texts() -> Iterator[str]:
        for line, record, text in reader.rows():
            pending.append((line, record))
            yield text

    rows = 0
    for batch in predictor.predict(texts(), batch_size=batch_size):
        records = [pending.popleft() for _ in batch.texts]
        writer.write(records, batch)
        write(out.getvalue())
        out.seek(0)
        out.truncate()
        rows += len(records)
    return rows
