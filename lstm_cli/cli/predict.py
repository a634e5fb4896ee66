"""`lstm-cli predict`: one output line per input text, in input order, on stdout."""

from __future__ import annotations

import contextlib
import sys
from enum import StrEnum
from itertools import chain
from pathlib import Path
from typing import Annotated, BinaryIO

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._help import panels
from lstm_cli.cli._util import (
    DelimiterOpt,
    EngineChoice,
    EngineOpt,
    ModelOpt,
    OutputFormat,
    VerboseOpt,
    _console,
    _engine_note,
    _errors,
    app,
    check_output_path,
    warn,
)
from lstm_cli.errors import UsageError


class PredictInput(StrEnum):
    lines = "lines"
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"
    fasttext = "fasttext"


# The options predict and explain share for reading their texts from a file.
PredictInputOpt = Annotated[
    PredictInput | None,
    typer.Option(
        help="lines (one text a line), fasttext (lines after their __label__s), or a table: csv, tsv, jsonl "
        "(its --text-column) [default: by --input's extension (.csv .tsv .jsonl .ndjson), else lines]."
    ),
]
TableNoHeaderOpt = Annotated[bool, typer.Option("--no-header", help="The CSV/TSV table has no header row.")]


def _input_format(given: PredictInput | None, input_file: Path | None) -> str:
    """lines, fasttext (lines after their labels) or a table format: as given, else by --input's extension."""
    if given is not None:
        return given.value
    if input_file is None or str(input_file) == "-":
        return "lines"
    name = str(input_file).lower()
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "tsv" if name.endswith((".tsv", ".tab")) else "csv" if name.endswith(".csv") else "lines"


def _source(texts: list[str] | None, input_file: Path | None) -> tuple[BinaryIO | None, str]:
    """(the stream to read, its name), or (None, "") when the texts are the arguments."""
    from lstm_cli.data import open_file, stdin_bytes

    if input_file is not None and texts:
        raise typer.BadParameter("give texts as arguments or --input FILE, not both")
    if input_file is not None and str(input_file) != "-":  # a pipe too: `--input <(cut -f2 tickets.tsv)`
        return open_file(input_file, "a file of texts or a table", "--input"), str(input_file)
    if input_file is not None or texts == ["-"]:
        return stdin_bytes(), "<stdin>"
    if texts:
        return None, ""
    if sys.stdin is None or sys.stdin.isatty():
        raise typer.BadParameter("no text given: pass texts as arguments, '-' to read stdin, or --input FILE")
    return sys.stdin.buffer, "<stdin>"


def _texts(texts: list[str] | None, input_file: Path | None, given: PredictInput | None = None, *,
           text_column: str = "text", no_header: bool = False):  # fmt: skip
    """The texts explain reads: the arguments; a table's text column (--input x.csv, .tsv, .jsonl, or
    --input-format); else one a line, refusing a table given as lines as predict does."""
    input_format = _input_format(given, input_file)
    if input_format not in ("csv", "tsv", "jsonl"):
        for flag, value, default in (("--text-column", text_column, "text"), ("--no-header", no_header, False)):
            if value != default:
                raise UsageError(f"{flag} is for tables (--input x.csv, or --input-format csv, tsv or jsonl)")
    elif no_header and input_format == "jsonl":
        raise UsageError("--no-header is for CSV/TSV tables, not JSON Lines")
    stream, name = _source(texts, input_file)
    if stream is None:
        return iter(texts or ())
    if input_format in ("csv", "tsv", "jsonl"):
        from lstm_cli.tables import TableReader

        column = "1" if no_header and text_column == "text" else text_column
        reader = TableReader(stream, name, input_format=input_format, text_column=column, header=not no_header,
                             delimiter=None, encoding="utf-8")  # fmt: skip
        warn(_console(), reader.warnings)
        return (text for _, _, text in reader.rows())
    return _lines(stream, name, input_format, given is not None, verb="explain")


def _lines(stream: BinaryIO, name: str, input_format: str, checked: bool, verb: str = "label"):
    """The texts of a line stream: one a line (after its labels, for fastText). Unless the format was given,
    a first line that is a table's header (naming a text column), a JSON object or a fastText label is
    refused: its rows would be classified (or explained) with their labels and the header as text."""
    from lstm_cli.data import iter_lines, table_hint

    lines = iter_lines(stream, name)
    if input_format == "fasttext":
        from lstm_cli.formats import split_fasttext

        return (split_fasttext(line)[1] for line in lines)
    first = next(lines, None)
    if first is None:
        return iter(())
    hint = None if checked else table_hint(first)
    if hint is not None:
        what = {"fasttext": "starts with a fastText label", "jsonl": 'is a JSON object with a "text" field'}.get(
            hint, "is a header naming a text column"
        )
        raise UsageError(
            f"{name}:1: {what}; pass --input-format {hint} to {verb} its texts"
            + ((" and keep its columns" if verb == "label" else "") if hint != "fasttext" else " without their labels")
            + f", or --input-format lines to {verb} every line as it is"
        )
    return chain([first], lines)


@contextlib.contextmanager
def _writer(path: Path | None):
    """A function that writes results: to stdout (as UTF-8 whatever the locale, flushed at once: a pipe's
    reader gets each batch as it is done), or to a file that appears complete or not at all."""
    if path is None:
        if sys.stdout is None:  # started with it closed: `>&-`
            raise UsageError("standard output is closed; redirect it, or write the results to a file with -o FILE")
        out = sys.stdout.buffer

        def write(text: str) -> None:
            out.write(text.encode("utf-8"))
            out.flush()

        yield write
        return
    from lstm_cli.atomic import replacing_file

    with replacing_file(path, newline="") as f:
        yield f.write


@app.command("predict", cls=PlainCommand)
@panels(
    Data=("input_file", "input_format", "text_column", "no_header", "delimiter", "encoding"),
    Output=("output_format", "top_k", "all_probabilities", "threshold", "output", "column_prefix"),
)  # fmt: skip
def predict_cli(
    texts: Annotated[
        list[str] | None,
        typer.Argument(metavar="TEXT", help="Texts to classify; '-' (or a pipe) reads one text per line."),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", help="File of texts, one a line; a .csv/.tsv/.jsonl table gets its rows back, labelled."
        ),
    ] = None,
    input_format: PredictInputOpt = None,
    text_column: Annotated[
        str, typer.Option(help="A table's column (or JSON field) to label; a number from 1 with --no-header.")
    ] = "text",
    no_header: TableNoHeaderOpt = False,
    delimiter: DelimiterOpt = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of a table (lines are read as UTF-8).")] = "utf-8",
    column_prefix: Annotated[
        str, typer.Option(help="Put before the names of the columns a table gets (predicted_label, ...).")
    ] = "",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (complete or not at all) instead of stdout.")
    ] = None,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="tsv: label<TAB>probability; json: JSON lines; label.")
    ] = OutputFormat.tsv,
    top_k: Annotated[int, typer.Option(min=1, help="Show the K most probable labels, most probable first.")] = 1,
    all_probabilities: Annotated[
        bool,
        typer.Option(
            help="Every label's probability: json adds \"probabilities\" (in the model's label order); tsv and "
            "label list every label, most probable first."
        ),
    ] = False,
    min_probability: Annotated[
        float | None,
        typer.Option(
            help="Abstain below this top probability (0 to 1): print --unknown-label instead of the label, "
            "the probabilities unchanged.",
            show_default=False,
        ),
    ] = None,
    unknown_label: Annotated[
        str | None,
        typer.Option(help="The label of texts that abstain (never one of the model's). [default: unknown]"),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Multi-label models: show the labels with a probability at or over this (above 0, at most 1), "
            "instead of the thresholds chosen in training.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, help="Lines read and written at a time, fewer if long (1: answer each line as it arrives)."
        ),
    ] = 16_384,  # lstm_cli.predict.PREDICT_BATCH, not imported: --help must not load numpy
    engine: EngineOpt = EngineChoice.auto,
    verbose: VerboseOpt = False,
) -> None:
    """Label texts: one output line per input, in input order, on stdout.

    A table (--input x.csv, .tsv, .jsonl) comes back in its format, every column kept, plus the predictions.

    \b
    Example: printf 'great phone\\nbroken on arrival\\n' | lstm-cli predict - --format json
    """
    chosen = _input_format(input_format, input_file)
    table = chosen in ("csv", "tsv", "jsonl")
    if not table:
        for name, value, default in (("--text-column", text_column, "text"), ("--no-header", no_header, False),
                                     ("--delimiter", delimiter, None), ("--encoding", encoding, "utf-8"),
                                     ("--column-prefix", column_prefix, "")):  # fmt: skip
            if value != default:
                raise typer.BadParameter(f"{name} is for tables (--input-format csv, tsv or jsonl)", param_hint=name)
    elif output_format is not OutputFormat.tsv:
        raise typer.BadParameter(f"a table's predictions are written as {chosen}, with its columns; --format is for "
                                 "lines", param_hint="--format")  # fmt: skip
    if unknown_label is not None and min_probability is None:
        raise typer.BadParameter("--unknown-label is for --min-probability P", param_hint="--unknown-label")
    with _errors(verbose):
        output = None if str(output) == "-" else output  # stdout, as for any other '-'
        check_output_path(output, "--output")
        abstain = _abstain(min_probability, unknown_label)
        stream, name = _source(texts, input_file)
        if table:
            if stream is None:
                raise typer.BadParameter("a table is read from --input FILE or stdin, not from arguments")
            _predict_table(stream, name, chosen, model=model, engine=engine, verbose=verbose, text_column=text_column,
                           no_header=no_header, delimiter=delimiter, encoding=encoding, top_k=top_k,
                           all_probabilities=all_probabilities, prefix=column_prefix, output=output,
                           batch_size=batch_size, abstain=abstain, threshold=threshold)  # fmt: skip
            return
        source = iter(texts or ()) if stream is None else _lines(stream, name, chosen, input_format is not None)
        from lstm_cli.predict import Predictor
        from lstm_cli.render import multilabel_lines, prediction_lines

        predictor = Predictor(model, engine=engine.value)
        _engine_note(predictor, verbose)
        thresholds = _multi_label(
            predictor,
            threshold,
            abstain=abstain,
            top_k=top_k,
            all_probabilities=all_probabilities and output_format is not OutputFormat.json,
        )
        _check_abstain(abstain, predictor.labels)
        predictor.share_out()
        n = len(predictor.labels)
        # json keeps its --top-k list and adds every probability; tsv and label list every label.
        k = n if all_probabilities and output_format is not OutputFormat.json else min(top_k, n)
        try:
            with _writer(output) as write:
                for batch in predictor.predict(source, batch_size=batch_size):
                    if thresholds is not None:
                        lines = multilabel_lines(batch, predictor.labels, output_format.value, thresholds)
                    else:
                        lines = prediction_lines(batch, predictor.labels, output_format.value, k,
                                                 all_probabilities=all_probabilities, abstain=abstain)  # fmt: skip
                    write("\n".join(lines) + "\n")
        finally:
            predictor.close()


def _predict_table(stream, name: str, input_format: str, *, model: Path, engine: EngineChoice, verbose: bool,
                   text_column: str, no_header: bool, delimiter: str | None, encoding: str, top_k: int,
                   all_probabilities: bool, prefix: str, output: Path | None, batch_size: int,
                   abstain: tuple[float, str] | None = None, threshold: float | None = None) -> None:  # fmt: skip
    """predict on a CSV/TSV/JSON Lines table: the rows written back with their predictions."""
    from lstm_cli.tables import TableReader, predict_table

    for flag, given in (("--no-header", no_header), ("--delimiter", delimiter is not None)):
        if given and input_format == "jsonl":
            raise typer.BadParameter(f"{flag} is for CSV/TSV tables, not JSON Lines", param_hint=flag)
    if no_header:
        text_column = "1" if text_column == "text" else text_column
    reader = TableReader(stream, name, input_format=input_format, text_column=text_column, header=not no_header,
                         delimiter=delimiter, encoding=encoding)  # fmt: skip
    warn(_console(), reader.warnings)
    from lstm_cli.predict import Predictor

    predictor = Predictor(model, engine=engine.value)
    _engine_note(predictor, verbose)
    thresholds = _multi_label(predictor, threshold, abstain=abstain, top_k=top_k)  # a table has every probability
    _check_abstain(abstain, predictor.labels)
    predictor.share_out()
    try:
        with _writer(output) as write:
            predict_table(predictor, reader, write, k=min(top_k, len(predictor.labels)),
                          all_probabilities=all_probabilities, prefix=prefix, batch_size=batch_size,
                          abstain=abstain, thresholds=thresholds)  # fmt: skip
    finally:
        predictor.close()


def _multi_label(predictor, threshold: float | None, *, abstain=None, top_k: int = 1,
                 all_probabilities: bool = False):  # fmt: skip
    """A multi-label model's thresholds (--threshold, else the saved ones), the options that do not apply to it
    refused; None for a single-label model, which refuses --threshold. UsageError: exit 2."""
    if not predictor.multi_label:
        if threshold is not None:
            raise UsageError(f"--threshold is for multi-label models, and {predictor.path} is single-label; "
                             "--min-probability P abstains below a top probability")  # fmt: skip
        return None
    for given, flag, why in (
        (abstain is not None, "--min-probability", "its --threshold decides which labels show"),
        (top_k != 1, "--top-k", "every label over its threshold is shown"),
        (all_probabilities, "--all-probabilities", "--format json has every probability"),
    ):
        if given:
            raise UsageError(f"{flag} is for single-label models, and {predictor.path} is multi-label: {why}")
    if threshold is None:
        return predictor.thresholds
    from lstm_cli.multilabel import check_threshold

    return check_threshold(threshold)


def _abstain(min_probability: float | None, unknown_label: str | None) -> tuple[float, str] | None:
    """(P, unknown label) for --min-probability, P checked (UsageError: exit 2), or None."""
    if min_probability is None:
        return None
    from lstm_cli.abstain import UNKNOWN_LABEL, check_min_probability

    return check_min_probability(min_probability), UNKNOWN_LABEL if unknown_label is None else unknown_label


def _check_abstain(abstain: tuple[float, str] | None, labels: list[str]) -> None:
    if abstain is not None:
        from lstm_cli.abstain import check_unknown_label

        check_unknown_label(abstain[1], labels)
