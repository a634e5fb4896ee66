"""`lstm-cli evaluate`: accuracy, macro-F1, per-class scores and the confusion matrix on labeled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
    JsonOpt,
    LabelColumnOpt,
    ModelOpt,
    NoHeaderOpt,
    ReportFormat,
    ReportFormatOpt,
    SkipBadOpt,
    TextColumnOpt,
    VerboseOpt,
    _console,
    _engine_note,
    _errors,
    app,
    check_output_path,
    multi_label_separator,
    read_options,
    warn,
)

DENSE_LABELS = 1_000  # lstm_cli.metrics.DENSE_LABELS, not imported: --help must not load numpy


def _write_confusion_csv(path: Path, report: dict[str, Any]) -> None:
    """The confusion grid as CSV: a header of predicted labels, then a row per true label led by its name."""
    import csv

    from lstm_cli.atomic import replacing_file

    with replacing_file(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *report["labels"]])
        for label, row in zip(report["labels"], report["confusion_matrix"], strict=True):
            writer.writerow([label, *row])


def _write_errors_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The misclassified rows as CSV: text, label, predicted_label, probability (float32's digits)."""
    import csv

    from lstm_cli.atomic import replacing_file
    from lstm_cli.render import probability_values

    probabilities = probability_values([row["probability"] for row in rows])
    with replacing_file(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "predicted_label", "probability"])
        for row, p in zip(rows, probabilities, strict=True):
            writer.writerow([row["text"], row["label"], row["predicted_label"], repr(p)])


@app.command("evaluate", cls=PlainCommand)
@panels(
    Data=("text_column", "label_column", "delimiter", "encoding", "skip_bad_rows", "no_header", "input_format",
          "label_separator"),
    Output=("output_format", "as_json", "output", "confusion_csv", "errors"),
)  # fmt: skip
def evaluate_cli(
    data: DataArg,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    text_column: TextColumnOpt = "text",
    label_column: LabelColumnOpt = "label",
    delimiter: DelimiterOpt = None,
    encoding: EncodingOpt = "utf-8",
    skip_bad_rows: SkipBadOpt = False,
    no_header: NoHeaderOpt = False,
    input_format: InputFormatOpt = None,
    output_format: ReportFormatOpt = ReportFormat.table,
    as_json: JsonOpt = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON report here.")] = None,
    confusion_csv: Annotated[
        Path | None,
        typer.Option(
            help=f"Write the full confusion matrix here as a CSV grid (rows: true, columns: predicted; "
            f"at most {DENSE_LABELS:,} labels)."
        ),
    ] = None,
    errors: Annotated[
        Path | None,
        typer.Option(help="Write the misclassified rows here as CSV: text, label, predicted_label, probability."),
    ] = None,
    min_probability: Annotated[
        float | None,
        typer.Option(
            help="Also report coverage (the share of rows whose top probability is at least this, 0 to 1) and "
            "accuracy and macro-F1 on those rows, as predict --min-probability would answer.",
            show_default=False,
        ),
    ] = None,
    label_separator: DataLabelSeparatorOpt = None,
    threshold: DataThresholdOpt = None,
    engine: EngineOpt = EngineChoice.auto,
    verbose: VerboseOpt = False,
) -> None:
    """Measure a model on labeled data: accuracy, macro-F1, per-class P/R/F1, confusion matrix.

    A multi-label model gets micro- and macro-F1, subset accuracy, hamming loss and per-label P/R/F1.
    Tables fit the terminal's width; beyond 15 classes the confusion matrix is shown as the most-confused pairs.

    \b
    Example: lstm-cli evaluate sample_data/test.csv --format json | jq .accuracy
    """
    if as_json:
        output_format = ReportFormat.json
    console = _console()
    with _errors(verbose):
        for path, option in ((output, "--output"), (confusion_csv, "--confusion-csv"), (errors, "--errors")):
            check_output_path(path, option)
        if min_probability is not None:
            from lstm_cli.abstain import check_min_probability

            check_min_probability(min_probability)
        from lstm_cli.data import read_labeled

        read = read_options(text_column=text_column, label_column=label_column, delimiter=delimiter,
                            encoding=encoding, skip_bad_rows=skip_bad_rows, no_header=no_header,
                            input_format=input_format)  # fmt: skip
        separator = multi_label_separator(model, label_separator, threshold,
                                           refused={"--confusion-csv": confusion_csv, "--errors": errors,
                                                    "--min-probability": min_probability})  # fmt: skip
        if separator is not None:
            _evaluate_multi_label(data, read, separator, threshold, model=model, engine=engine, verbose=verbose,
                                  output=output, json_output=output_format is ReportFormat.json)  # fmt: skip
            return
        dataset = read_labeled(data, **read)
        from lstm_cli import render

        warn(console, render.reading_warnings(dataset))  # one line each, unwrapped
        from lstm_cli.predict import Predictor
        from lstm_cli.predict import evaluate as evaluate_model

        predictor = Predictor(model, engine=engine.value)
        _engine_note(predictor, verbose)
        if confusion_csv is not None and len(predictor.labels) > DENSE_LABELS:
            raise typer.BadParameter(
                f"the model has {len(predictor.labels):,} labels, a grid of that many squared cells; "
                f'--confusion-csv writes at most {DENSE_LABELS:,}: use the JSON report\'s "confusion" '
                "(non-zero [true, predicted, count] cells) from --format json or -o",
                param_hint="--confusion-csv",
            )
        report = evaluate_model(predictor, dataset, misclassified=errors is not None, min_probability=min_probability)
        misclassified = report.pop("misclassified", None)
        for warning in render.evaluation_warnings(report):
            console.print(render.warning(warning), soft_wrap=False)
        if output is not None:
            from lstm_cli.atomic import replacing_file

            with replacing_file(output) as f:
                f.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        if confusion_csv is not None:
            _write_confusion_csv(confusion_csv, report)
        if errors is not None:
            _write_errors_csv(errors, misclassified)
        if output_format is ReportFormat.json:
            typer.echo(json.dumps(report, ensure_ascii=False))
        else:
            render.print_report(report)


def _evaluate_multi_label(data: Path, read: dict, separator: str, threshold: float | None, *, model: Path,
                          engine: EngineChoice, verbose: bool, output: Path | None,
                          json_output: bool) -> None:  # fmt: skip
    from lstm_cli import render
    from lstm_cli.multilabel import read_label_sets
    from lstm_cli.predict import Predictor, evaluate_multi_label

    console = _console()
    dataset = read_label_sets(data, separator, **read)
    warn(console, dataset.warnings)
    predictor = Predictor(model, engine=engine.value)
    _engine_note(predictor, verbose)
    report = evaluate_multi_label(predictor, dataset, thresholds=threshold)
    for warning in render.multilabel_warnings(report):
        console.print(render.warning(warning), soft_wrap=False)
    if output is not None:
        from lstm_cli.atomic import replacing_file

        with replacing_file(output) as f:
            f.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if json_output:
        typer.echo(json.dumps(report, ensure_ascii=False))
    else:
        render.print_multilabel_report(report)
