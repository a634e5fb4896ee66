"""`lstm-cli info`: what a saved model is, from its metadata alone (no TensorFlow)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._util import JsonOpt, ModelOpt, ReportFormat, ReportFormatOpt, _errors, app


@app.command("info", cls=PlainCommand)
def info_cli(
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    output_format: ReportFormatOpt = ReportFormat.table,
    as_json: JsonOpt = False,
) -> None:
    """Show what a saved model is: labels, hyperparameters, vocabulary, training data, metrics, versions.

    --format json prints the whole metadata.json as it is.

    \b
    Example: lstm-cli info -m lstm-model --format json | jq .labels
    """
    with _errors():
        from lstm_cli.artifact import read_metadata

        metadata = read_metadata(model)
        if as_json or output_format is ReportFormat.json:
            typer.echo(json.dumps(metadata, ensure_ascii=False, indent=2))
        else:
            from lstm_cli import render

            render.print_info(metadata, model)
