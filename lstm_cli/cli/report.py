"""`lstm-cli report`: one self-contained HTML page about a model on labeled data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._help import panels
from lstm_cli.cli._util import (
    DataArg,
    DataLabelSeparatorOpt,
    DataThresholdOpt,
    DelimiterOpt,
    EncodingOpt,
    EngineChoice,
    EngineOpt,
    InputFormatOpt,
    LabelColumnOpt,
    ModelOpt,
    NoHeaderOpt,
    SkipBadOpt,
    TextColumnOpt,
    VerboseOpt,
    _console,
    _engine_note,
    _errors,
    app,
    multi_label_separator,
    read_options,
    warn,
)


@app.command("report", cls=PlainCommand)
@panels(
    Data=("text_column", "label_column", "delimiter", "encoding", "skip_bad_rows", "no_header", "input_format",
          "label_separator"),
    Output=("output", "show_errors", "threshold"),
)  # fmt: skip
def report_cli(
    data: DataArg,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The HTML file to write ('-': stdout); only an earlier report or an empty file is replaced.",
        ),
    ] = Path("report.html"),
    show_errors: Annotated[
        int, typer.Option(min=0, help="How many of the most confident errors to show, explained (0: none).")
    ] = 10,
    text_column: TextColumnOpt = "text",
    label_column: LabelColumnOpt = "label",
    delimiter: DelimiterOpt = None,
    encoding: EncodingOpt = "utf-8",
    skip_bad_rows: SkipBadOpt = False,
    no_header: NoHeaderOpt = False,
    input_format: InputFormatOpt = None,
    label_separator: DataLabelSeparatorOpt = None,
    threshold: DataThresholdOpt = None,
    engine: EngineOpt = EngineChoice.auto,
    verbose: VerboseOpt = False,
) -> None:
    """Write an HTML report: metrics beside a baseline, per-class scores, confusions, calibration, ROC/PR (two
    classes), training curves, the most confident errors explained, and a model card. No network needed to
    view it; it prints too. Needs matplotlib: pip install 'lstm-cli[report]'.

    A multi-label model's page has micro- and macro-F1, subset accuracy, hamming loss, per-label scores with
    their thresholds, and the worst errors as predicted against true label sets.

    \b
    Example: lstm-cli report sample_data/test.csv -o report.html
    """
    console = _console()
    with _errors(verbose):
        from lstm_cli import render
        from lstm_cli import report as reporting

        reporting.require_matplotlib()
        to_stdout = str(output) == "-"
        if not to_stdout:
            reporting.check_output(output)
        read = read_options(text_column=text_column, label_column=label_column, delimiter=delimiter,
                            encoding=encoding, skip_bad_rows=skip_bad_rows, no_header=no_header,
                            input_format=input_format)  # fmt: skip
        separator = multi_label_separator(model, label_separator, threshold, refused={})
        from lstm_cli.predict import Predictor

        if separator is not None:
            from lstm_cli import multilabel_report
            from lstm_cli.multilabel import read_label_sets

            dataset = read_label_sets(data, separator, **read)
            predictor = Predictor(model, engine=engine.value)
            _engine_note(predictor, verbose)
            page = multilabel_report.build(predictor, dataset, threshold=threshold, errors=show_errors)
            warnings = [*dataset.warnings, *render.skipped_warnings(dataset)]
        else:
            from lstm_cli.data import read_labeled

            dataset = read_labeled(data, **read)
            predictor = Predictor(model, engine=engine.value)
            _engine_note(predictor, verbose)
            page = reporting.build(predictor, dataset, errors=show_errors)
            warnings = [*render.reading_warnings(dataset), *render.skipped_warnings(dataset)]
        if to_stdout:
            sys.stdout.buffer.write(page.encode("utf-8"))
            sys.stdout.flush()
            return
        reporting.write(output, page)
        warn(console, warnings)
        typer.echo(str(output))
