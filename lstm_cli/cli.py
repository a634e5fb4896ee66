"""The `lstm-cli` command: a thin Typer layer. It parses options, calls the core, and renders results.

TensorFlow is imported inside the commands that need it, so `--help` and usage errors answer at once."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli import __version__
from lstm_cli.artifact import DEFAULT_MODEL_DIR, MODEL_ENV
from lstm_cli.config import TrainConfig
from lstm_cli.errors import LstmCliError

app = typer.Typer(
    name="lstm-cli",
    help="Train, evaluate and serve LSTM text classifiers. Models are TensorFlow SavedModels that take raw strings.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help and one-paragraph usage errors, no boxes
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
DEFAULTS = TrainConfig()


class Cell(StrEnum):
    lstm = "lstm"
    gru = "gru"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class OutputFormat(StrEnum):
    tsv = "tsv"
    json = "json"
    label = "label"


DataArg = Annotated[Path, typer.Argument(metavar="DATA", help="Labeled CSV/TSV with a header row ('-' for stdin).")]
ModelOpt = Annotated[
    Path,
    typer.Option("--model", "-m", envvar=MODEL_ENV, help="Model directory.", show_envvar=True),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Let TensorFlow's own log messages through.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")]
TextColumnOpt = Annotated[str, typer.Option(help="Column holding the texts.")]
LabelColumnOpt = Annotated[str, typer.Option(help="Column holding the labels.")]
DelimiterOpt = Annotated[
    str | None, typer.Option(help="Field separator [default: tab for .tsv, else ',' (';' and '|' detected)].")
]
EncodingOpt = Annotated[str, typer.Option(help="Text encoding of the data file.")]
SkipBadOpt = Annotated[bool, typer.Option(help="Skip (and count) malformed rows instead of stopping.")]


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _errors(verbose: bool = False, interrupted_hint: str = ""):
    """The one place core errors become `Error: ...` and an exit code."""
    if verbose:
        from lstm_cli.tf_setup import set_verbose

        set_verbose(True)
    try:
        yield
    except LstmCliError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(f"Error: interrupted{interrupted_hint}", err=True)
        raise typer.Exit(130) from None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lstm-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Train, evaluate and serve LSTM text classifiers.

    lstm-cli train sample_data/train.csv && lstm-cli predict "great value, arrived fast"
    """


@app.command()
def train(
    data: DataArg,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    text_column: TextColumnOpt = "text",
    label_column: LabelColumnOpt = "label",
    delimiter: DelimiterOpt = None,
    encoding: EncodingOpt = "utf-8",
    skip_bad_rows: SkipBadOpt = False,
    validation_data: Annotated[
        Path | None, typer.Option(help="Labeled file to validate on, instead of a split of DATA.")
    ] = None,
    validation_split: Annotated[
        float, typer.Option(help="Stratified, seeded fraction of DATA held out for validation.")
    ] = DEFAULTS.validation_split,
    max_tokens: Annotated[int, typer.Option(help="Vocabulary size.")] = DEFAULTS.max_tokens,
    max_length: Annotated[int, typer.Option(help="Tokens kept per text (longer texts are truncated).")] = (
        DEFAULTS.max_length
    ),
    embedding_dim: Annotated[int, typer.Option(help="Embedding width.")] = DEFAULTS.embedding_dim,
    units: Annotated[int, typer.Option(help="Recurrent units per layer.")] = DEFAULTS.units,
    layers: Annotated[int, typer.Option(help="Stacked recurrent layers.")] = DEFAULTS.layers,
    cell: Annotated[Cell, typer.Option(help="Recurrent cell.")] = Cell.lstm,
    bidirectional: Annotated[bool, typer.Option(help="Read texts in both directions.")] = DEFAULTS.bidirectional,
    dropout: Annotated[float, typer.Option(help="Dropout on the recurrent layers' inputs.")] = DEFAULTS.dropout,
    recurrent_dropout: Annotated[
        float, typer.Option(help="Dropout on the recurrent state (0 allows cuDNN on a GPU).")
    ] = DEFAULTS.recurrent_dropout,
    dense_units: Annotated[int, typer.Option(help="Hidden Dense layer width (0: none).")] = DEFAULTS.dense_units,
    dense_dropout: Annotated[float, typer.Option(help="Dropout after the Dense layer.")] = DEFAULTS.dense_dropout,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = DEFAULTS.epochs,
    batch_size: Annotated[
        int | None, typer.Option(help="Texts per training step [default: auto, ~1 per 1,024 tokens, 32..512].")
    ] = None,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = DEFAULTS.learning_rate,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without val_loss improvement (best weights kept).")
    ] = DEFAULTS.patience,
    seed: Annotated[int, typer.Option(help="Random seed: same seed and data give the same model on CPU.")] = (
        DEFAULTS.seed
    ),
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    mixed_precision: Annotated[bool, typer.Option(help="float16 compute on a GPU.")] = False,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Where per-epoch checkpoints go [default: .MODEL.checkpoint beside the model]."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last finished epoch.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Learn a classifier from a labeled CSV and save it; prints the model directory on stdout.

    Example: lstm-cli train sample_data/train.csv --epochs 5 && lstm-cli predict "refund please"
    """
    try:
        config = TrainConfig(
            max_tokens=max_tokens, max_length=max_length, embedding_dim=embedding_dim, units=units,
            layers=layers, cell=cell.value, bidirectional=bidirectional, dropout=dropout,
            recurrent_dropout=recurrent_dropout, dense_units=dense_units, dense_dropout=dense_dropout,
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, patience=patience,
            validation_split=validation_split, seed=seed,
        )  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console = _console()
    say = (lambda *a, **k: None) if quiet else console.print
    checkpoints = checkpoint_dir or model.parent / f".{model.name}.checkpoint"
    kept = f"the model at {model} is unchanged" if model.exists() else f"no model was saved at {model}"
    hint = f"; {kept}. Continue from the last finished epoch by repeating the command with --resume"
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops training as cleanly as Ctrl-C
    with _errors(verbose, interrupted_hint=hint):
        from lstm_cli.data import read_labeled

        read = {"text_column": text_column, "label_column": label_column, "delimiter": delimiter,
                "encoding": encoding, "skip_bad_rows": skip_bad_rows}  # fmt: skip
        dataset = read_labeled(data, **read)
        validation = read_labeled(validation_data, **read) if validation_data else None
        from lstm_cli import render
        from lstm_cli.artifact import check_writable, save

        check_writable(model)
        from lstm_cli.train import train as train_model

        for warning in render.skipped_warnings(dataset, validation):
            console.print(f"[yellow]Warning:[/] {warning}")
        say(f"Read {len(dataset):,} rows from {data}")
        result = train_model(
            config, dataset, validation=validation, device=device.value, mixed_precision=mixed_precision,
            on_epoch=None if quiet else lambda report: say(render.epoch_line(report)),
            on_stage=say,
            checkpoint_dir=checkpoints,
            resume=resume,
        )  # fmt: skip
        for warning in result.warnings:
            console.print(f"[yellow]Warning:[/] {warning}")
        split = validation.fingerprint() if validation else {"split": config.validation_split, "seed": config.seed}
        save(result, model, data_fingerprint=dataset.fingerprint(), validation=split,
                     skipped=dict(dataset.skipped))  # fmt: skip
        shutil.rmtree(checkpoints, ignore_errors=True)
        if not quiet:
            console.print(render.train_summary(result, model))
    typer.echo(str(model))


def _texts(texts: list[str] | None, input_file: Path | None):
    """Where predict reads from: --input FILE, '-' (stdin), arguments, or a piped stdin."""
    from lstm_cli.data import iter_lines

    if input_file is not None and texts:
        raise typer.BadParameter("give texts as arguments or --input FILE, not both")
    if input_file is not None and str(input_file) != "-":
        if not input_file.is_file():
            raise LstmCliError(f"{input_file}: file not found (--input)")
        return iter_lines(input_file.open("rb"))
    if input_file is not None or texts == ["-"]:
        return iter_lines(sys.stdin.buffer)
    if texts:
        return iter(texts)
    if sys.stdin is None or sys.stdin.isatty():
        raise typer.BadParameter("no text given: pass texts as arguments, '-' to read stdin, or --input FILE")
    return iter_lines(sys.stdin.buffer)


@app.command()
def predict(
    texts: Annotated[
        list[str] | None,
        typer.Argument(metavar="[TEXT]...", help="Texts to classify; '-' (or a pipe) reads one text per line."),
    ] = None,
    input_file: Annotated[Path | None, typer.Option("--input", "-i", help="File with one text per line.")] = None,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="tsv: label<TAB>probability; json: JSON lines; label.")
    ] = OutputFormat.tsv,
    top_k: Annotated[int, typer.Option(min=1, help="Show the K most probable labels.")] = 1,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Lines read and written at a time (1: answer each line as it arrives).")
    ] = 4096,
    verbose: VerboseOpt = False,
) -> None:
    """Label texts: one output line per input, in input order, on stdout.

    Example: printf 'great phone\nbroken on arrival\n' | lstm-cli predict - --format json
    """
    with _errors(verbose):
        source = _texts(texts, input_file)
        from lstm_cli.predict import Predictor
        from lstm_cli.render import prediction_lines

        predictor = Predictor(model)
        k = min(top_k, len(predictor.labels))
        out = sys.stdout.buffer  # UTF-8 whatever the locale
        for batch in predictor.predict(source, batch_size=batch_size):
            lines = prediction_lines(batch, predictor.labels, output_format.value, k)
            out.write(("\n".join(lines) + "\n").encode("utf-8"))
            out.flush()


@app.command()
def evaluate(
    data: DataArg,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    text_column: TextColumnOpt = "text",
    label_column: LabelColumnOpt = "label",
    delimiter: DelimiterOpt = None,
    encoding: EncodingOpt = "utf-8",
    skip_bad_rows: SkipBadOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout instead of tables.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON report here.")] = None,
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

        report = evaluate_model(Predictor(model), dataset)
        for warning in render.evaluation_warnings(report):
            console.print(f"[yellow]Warning:[/] {warning}")
        if output is not None:
            output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if as_json:
            typer.echo(json.dumps(report, ensure_ascii=False))
        else:
            render.print_report(report)


@app.command()
def info(
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    as_json: Annotated[bool, typer.Option("--json", help="The metadata as JSON on stdout.")] = False,
) -> None:
    """Show what a saved model is: labels, hyperparameters, vocabulary, training data, metrics, versions.

    Example: lstm-cli info -m lstm-model --json | jq .labels
    """
    with _errors():
        from lstm_cli.artifact import read_metadata

        metadata = read_metadata(model)
        if as_json:
            typer.echo(json.dumps(metadata, ensure_ascii=False, indent=2))
        else:
            from lstm_cli import render

            render.print_info(metadata, model)


def main() -> None:
    app()
