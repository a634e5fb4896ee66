"""`lstm-cli evaluate`: accuracy, macro-F1, per-class scores and the confusion matrix on labeled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._util import (
    DataArg,
    DelimiterOpt,
    EncodingOpt,
    EngineChoice,
    EngineOpt,
    LabelColumnOpt,
    ModelOpt,
    SkipBadOpt,
    TextColumnOpt,
    VerboseOpt,
    _console,
    _engine_note,
    _errors,
    app,
)


@app.command("evaluate", cls=PlainCommand)
def evaluate_cli(
    data: DataArg,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    text_column: TextColumnOpt = "text",
    label_column: LabelColumnOpt = "label",
    delimiter: DelimiterOpt = None,
    encoding: EncodingOpt = "utf-8",
    skip_bad_rows: SkipBadOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout instead of tables.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON report here.")] = None,
    engine: EngineOpt = EngineChoice.auto,
    verbose: VerboseOpt = False,
) -> None:
    """Measure a model on labeled data: accuracy, macro-F1, per-class P/R/F1, confusion matrix.

    Example: lstm-cli evaluate sample_data/test.csv --json | jq .accuracy
    """
    console = _console()
    with _errors(verbose):
        from lstm_cli.data import read_labeled

        dataset = read_labeled(data, text_column=text_column, label_column=label_column, delimiter=delimiter,
                               encoding=encoding, skip_bad_rows=skip_bad_rows)  # fmt: skip
        from lstm_cli import render
        from lstm_cli.predict import Predictor
        from lstm_cli.predict import evaluate as evaluate_model

        predictor = Predictor(model, engine=engine.value)
        _engine_note(predictor, verbose)
        report = evaluate_model(predictor, dataset)
        for warning in render.evaluation_warnings(report):
            console.print(render.warning(warning))
        if output is not None:
            output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if as_json:
            typer.echo(json.dumps(report, ensure_ascii=False))
        else:
            render.print_report(report)
