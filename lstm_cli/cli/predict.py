"""`lstm-cli predict`: one output line per input text, in input order, on stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._util import EngineChoice, EngineOpt, ModelOpt, OutputFormat, VerboseOpt, _engine_note, _errors, app


def _texts(texts: list[str] | None, input_file: Path | None):
    """Where predict reads from: --input FILE, '-' (stdin), arguments, or a piped stdin."""
    from lstm_cli.data import iter_lines, open_file

    if input_file is not None and texts:
        raise typer.BadParameter("give texts as arguments or --input FILE, not both")
    if input_file is not None and str(input_file) != "-":  # a pipe too: `--input <(cut -f2 tickets.tsv)`
        return iter_lines(open_file(input_file, "a file of one text per line", "--input"))
    if input_file is not None or texts == ["-"]:
        return iter_lines(sys.stdin.buffer)
    if texts:
        return iter(texts)
    if sys.stdin is None or sys.stdin.isatty():
        raise typer.BadParameter("no text given: pass texts as arguments, '-' to read stdin, or --input FILE")
    return iter_lines(sys.stdin.buffer)


@app.command("predict", cls=PlainCommand)
def predict_cli(
    texts: Annotated[
        list[str] | None,
        typer.Argument(metavar="[TEXT]...", help="Texts to classify; '-' (or a pipe) reads one text per line."),
    ] = None,
    input_file: Annotated[Path | None, typer.Option("--input", "-i", help="File with one text per line.")] = None,
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

    Example: printf 'great phone\nbroken on arrival\n' | lstm-cli predict - --format json
    """
    with _errors(verbose):
        source = _texts(texts, input_file)
        from lstm_cli.predict import Predictor
        from lstm_cli.render import prediction_lines

        predictor = Predictor(model, engine=engine.value)
        _engine_note(predictor, verbose)
        predictor.share_out()
        n = len(predictor.labels)
        # json keeps its --top-k list and adds every probability; tsv and label list every label.
        k = n if all_probabilities and output_format is not OutputFormat.json else min(top_k, n)
        out = sys.stdout.buffer  # UTF-8 whatever the locale
        try:
            for batch in predictor.predict(source, batch_size=batch_size):
                lines = prediction_lines(
                    batch, predictor.labels, output_format.value, k, all_probabilities=all_probabilities
                )
                out.write(("\n".join(lines) + "\n").encode("utf-8"))
                out.flush()
        finally:
            predictor.close()
