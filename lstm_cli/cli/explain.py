"""`lstm-cli explain`: how much each token pushed a prediction, one result per input text."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._util import EngineChoice, EngineOpt, ModelOpt, VerboseOpt, _engine_note, _errors, app
from lstm_cli.cli.predict import PredictInputOpt, TableNoHeaderOpt, _texts


class Method(StrEnum):
    occlusion = "occlusion"
    integrated_gradients = "integrated-gradients"


class Unit(StrEnum):
    log_odds = "log-odds"
    probability = "probability"


class ExplainFormat(StrEnum):
    text = "text"
    json = "json"


@app.command("explain", cls=PlainCommand)
def explain_cli(
    texts: Annotated[
        list[str] | None,
        typer.Argument(metavar="TEXT", help="Texts to explain; '-' (or a pipe) reads one text per line."),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="File of texts, one a line; a .csv/.tsv/.jsonl table's text column."),
    ] = None,
    input_format: PredictInputOpt = None,
    text_column: Annotated[
        str, typer.Option(help="A table's column (or JSON field) to explain; a number from 1 with --no-header.")
    ] = "text",
    no_header: TableNoHeaderOpt = False,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    method: Annotated[
        Method,
        typer.Option(
            help="occlusion: what the label loses when each token is removed (numpy engine, fast); "
            "integrated-gradients: gradients of its probability along a path from zero embeddings (TensorFlow), "
            "with the completeness gap."
        ),
    ] = Method.occlusion,
    unit: Annotated[
        Unit | None,
        typer.Option(
            help="Occlusion's scores: log-odds, log p - log(1 - p), which still rank tokens when the model is "
            "sure (p near 1); or probability. [default: log-odds; probability for integrated-gradients]"
        ),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Explain this label [default: the predicted one].")] = None,
    output_format: Annotated[
        ExplainFormat,
        typer.Option("--format", "-f", help="text: coloured on a terminal, else one plain line; json: JSON lines."),
    ] = ExplainFormat.text,
    engine: EngineOpt = EngineChoice.auto,
    verbose: VerboseOpt = False,
) -> None:
    """Show how much each token pushed the prediction (positive: towards the label).

    \b
    Example: lstm-cli explain "the parcel never arrived, refund please" --format json | jq .tokens
    """
    with _errors(verbose):
        source = _texts(texts, input_file, input_format, text_column=text_column, no_header=no_header)
        from lstm_cli import explain, render
        from lstm_cli.data import clean_text
        from lstm_cli.predict import Predictor

        predictor = Predictor(model, engine=engine.value)
        _engine_note(predictor, verbose)
        if label is not None and label not in predictor.labels:
            choices = ", ".join(repr(x) for x in predictor.labels[:20])
            raise typer.BadParameter(f"{label!r} is not one of the model's labels ({choices})", param_hint="--label")
        if method is Method.integrated_gradients:
            if unit is Unit.log_odds:
                raise typer.BadParameter("integrated gradients score in probability; use --method occlusion for "
                                         "log-odds", param_hint="--unit")  # fmt: skip
            explain_one = explain.IntegratedGradients(predictor).explain
        else:
            chosen = (unit or Unit.log_odds).value
            explain_one = lambda text, label: explain.occlusion(predictor, text, label=label, unit=chosen)  # noqa: E731
        console = None
        if output_format is ExplainFormat.text and sys.stdout.isatty():
            from rich.console import Console

            console = Console(highlight=False, soft_wrap=True)
        out = sys.stdout.buffer  # UTF-8 whatever the locale
        for text in source:
            result = explain_one(clean_text(text), label=label)
            if console is not None:
                console.print(render.explanation_text(result))
                continue
            line = json.dumps(render.explanation_record(result), ensure_ascii=False) if (
                output_format is ExplainFormat.json
            ) else render.explanation_line(result)  # fmt: skip
            out.write((line + "\n").encode("utf-8"))
            out.flush()
