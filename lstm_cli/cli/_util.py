"""What the commands share: the Typer `app`, option types and choices, the stderr console and error mapping."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli import __version__
from lstm_cli.artifact import MODEL_ENV
from lstm_cli.cli._coerce import PlainGroup
from lstm_cli.config import TrainConfig
from lstm_cli.errors import LstmCliError, UsageError

app = typer.Typer(
    name="lstm-cli",
    help="Train, evaluate and serve LSTM text classifiers. Models are TensorFlow SavedModels that take raw strings.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (typer builds them only for the group)
    rich_markup_mode=None,  # plain help and one-paragraph usage errors, no boxes
    pretty_exceptions_enable=False,
    # help fills the terminal up to 120 columns (click stops at 80 by default: half a wide screen unused)
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    cls=PlainGroup,  # parses --version/--help without importing pydantic (see _coerce)
)
DEFAULTS = TrainConfig()


class Cell(StrEnum):
    lstm = "lstm"
    gru = "gru"


class Punctuation(StrEnum):
    split = "split"
    strip = "strip"


class Optimizer(StrEnum):
    adam = "adam"
    lazy_adam = "lazy-adam"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class OutputFormat(StrEnum):
    tsv = "tsv"
    json = "json"
    label = "label"


class ReportFormat(StrEnum):
    table = "table"
    json = "json"


ReportFormatOpt = Annotated[
    ReportFormat, typer.Option("--format", "-f", help="table: for people (fits COLUMNS); json: one JSON object.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json.")]


class EngineChoice(StrEnum):
    auto = "auto"
    numpy = "numpy"
    tensorflow = "tensorflow"


DataArg = Annotated[
    Path, typer.Argument(metavar="DATA", help="Labeled data: CSV/TSV, JSON Lines or fastText ('-' for stdin).")
]
ModelOpt = Annotated[
    Path,
    typer.Option("--model", "-m", envvar=MODEL_ENV, help="Model directory.", show_envvar=True),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Let TensorFlow's own log messages through.")]
EngineOpt = Annotated[
    EngineChoice,
    typer.Option(
        help="numpy: lstm-cli's own engine (starts in milliseconds, same probabilities); tensorflow: the SavedModel; "
        "auto: numpy when it can run the model, else TensorFlow."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary on stderr.")]


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    from lstm_cli.formats import parse_delimiter

    try:
        return parse_delimiter(value)
    except LstmCliError as e:
        raise typer.BadParameter(str(e), param_hint="--delimiter") from None


def _encoding(value: str) -> str:
    from lstm_cli.data import check_encoding

    try:
        check_encoding(value)
    except LstmCliError as e:
        raise typer.BadParameter(str(e), param_hint="--encoding") from None
    return value


class InputFormat(StrEnum):
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"
    fasttext = "fasttext"


TextColumnOpt = Annotated[
    str,
    typer.Option(help="Column (CSV/TSV) or field (JSON Lines) holding the texts; a number from 1 with --no-header."),
]
LabelColumnOpt = Annotated[
    str,
    typer.Option(help="Column (CSV/TSV) or field (JSON Lines) holding the labels; a number from 1 with --no-header."),
]
DelimiterOpt = Annotated[
    str | None,
    typer.Option(
        callback=_delimiter,
        help="Field separator: one character, or '\\t' / tab [default: tab for .tsv, else ',' (';' and '|' detected)].",
    ),
]
EncodingOpt = Annotated[str, typer.Option(callback=_encoding, help="Text encoding of the data file.")]
SkipBadOpt = Annotated[bool, typer.Option(help="Skip (and count) malformed rows instead of stopping.")]
NoHeaderOpt = Annotated[
    bool,
    typer.Option(
        "--no-header",
        help="The CSV/TSV has no header row: --text-column and --label-column are column numbers [default: 1 and 2].",
    ),
]
InputFormatOpt = Annotated[
    InputFormat | None,
    typer.Option(
        help="csv, tsv, jsonl (one JSON object a line) or fasttext (__label__X text) [default: by extension "
        "(.csv .tsv .jsonl .ndjson), else by the first line, else csv]."
    ),
]


def read_options(*, text_column: str, label_column: str, delimiter: str | None, encoding: str,
                 skip_bad_rows: bool, no_header: bool, input_format: InputFormat | None) -> dict:  # fmt: skip
    """stream_labeled's keyword arguments from the data options; a bad combination is misuse (exit 2)."""
    if no_header:
        columns = {"--text-column": (text_column, "text", 1), "--label-column": (label_column, "label", 2)}
        numbers = {}
        for flag, (value, default, number) in columns.items():
            if value == default:
                value = str(number)
            if not value.isdigit() or int(value) < 1:
                raise typer.BadParameter(f"with --no-header, {flag} is a column number from 1 (got {value!r})",
                                         param_hint=flag)  # fmt: skip
            numbers[flag] = int(value)
        if numbers["--text-column"] == numbers["--label-column"]:
            raise typer.BadParameter("--text-column and --label-column name the same column", param_hint="--no-header")
        text_column, label_column = numbers["--text-column"], numbers["--label-column"]
        if input_format in (InputFormat.jsonl, InputFormat.fasttext):
            raise typer.BadParameter(f"--no-header is for CSV/TSV, not {input_format.value}", param_hint="--no-header")
    if delimiter is not None and input_format in (InputFormat.jsonl, InputFormat.fasttext):
        raise typer.BadParameter(f"--delimiter is for CSV/TSV, not {input_format.value}", param_hint="--delimiter")
    return {"text_column": text_column, "label_column": label_column, "delimiter": delimiter, "encoding": encoding,
            "skip_bad_rows": skip_bad_rows, "header": not no_header,
            "input_format": input_format.value if input_format is not None else None}  # fmt: skip


VectorsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Pretrained word vectors (word2vec/GloVe/fastText text format, .gz too) to start the embedding "
        "from; their dimension replaces --embedding-dim."
    ),
]
FreezeVectorsOpt = Annotated[bool, typer.Option(help="Keep the embedding fixed at --vectors (not trained).")]
# The default is lstm_cli.config's (DEFAULTS.label_separator); each command writes it as its parameter's default.
LabelSeparatorOpt = Annotated[
    str,
    typer.Option(
        help="With --multi-label: what joins a row's labels in its label field (fastText: one __label__ each)."
    ),
]
ClassWeightOpt = Annotated[
    str | None,
    typer.Option(
        metavar="balanced|JSON",
        help="Weigh classes in the loss: 'balanced' (n_rows / (n_classes * rows of the class)) or a JSON "
        "object such as '{\"spam\": 4}' (unlisted labels weigh 1).",
    ),
]


def check_output_path(path: Path | None, option: str) -> None:
    """Refuse an output file that could not be written (a folder that does not exist, or a directory given as
    the file) before any work: UsageError, exit 2 (call it inside _errors)."""
    if path is None:
        return
    if str(path) == "-":  # would be a file named '-' in the current folder
        raise UsageError(f"{option} -: give a file name; the results go to stdout without {option}")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name such as {path / 'out'}")
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {path.parent} does not exist; create it first")


def _console():
    from rich.console import Console

    # No emoji codes either: a label ':smile:' is shown as typed. User text goes in as rich Text (render.literal).
    console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
    # A terminal gets long lines broken between words at its width, not mid-word by the terminal; a log file or
    # a pipe keeps one line per message, whatever its length.
    console.soft_wrap = not console.is_terminal
    return console


def _fail(message: str, code: int) -> typer.Exit:
    from lstm_cli.render import shown

    typer.echo(f"Error: {shown(message)}", err=True)  # one line, whatever paths or labels it quotes
    return typer.Exit(code)


@contextlib.contextmanager
def _errors(verbose: bool = False, interrupted_hint: Callable[[], str] = str):
    """The one place core errors become `Error: ...` and an exit code."""
    if verbose:
        from lstm_cli.tf_setup import set_verbose

        set_verbose(True)
    try:
        yield
    except UsageError as e:
        raise _fail(str(e), 2) from None
    except LstmCliError as e:
        raise _fail(str(e), 1) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted{interrupted_hint()}", 130) from None


def _engine_note(predictor, verbose: bool) -> None:
    """Say on stderr when TensorFlow serves instead of the numpy engine: always for a model directory that
    predates the engine files (retraining fixes it), otherwise with --verbose."""
    backend = predictor.backend
    if backend.fallback and (backend.outdated or verbose):
        typer.echo(f"Note: {backend.fallback}; predicting with TensorFlow.", err=True)
    elif verbose:
        typer.echo(f"Note: predicting with the {backend.name} engine.", err=True)


# uninterrupted() sections running, an interrupt they held back, and whether an interrupt ever came
_held = {"depth": 0, "pending": False, "signalled": False}


def interrupt_signalled() -> bool:
    """Whether _interrupt ran: true even where its KeyboardInterrupt was lost (raised inside a __del__)."""
    return _held["signalled"]


def catch_interrupts() -> None:
    """train's, pretrain's and tune's handlers: `kill` (SIGTERM) stops as Ctrl-C does, and both wait for an
    uninterrupted() section, such as a trial's row, to end (SIGINT is left alone when the process started with
    it ignored). An earlier interrupt is forgotten."""
    import signal

    _held["signalled"] = False
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)


def raise_if_signalled() -> bool:
    """A training loop's stop(): the KeyboardInterrupt of an interrupt that was lost (see interrupt_signalled) is
    raised again here, between two steps; otherwise False, go on."""
    if _held["signalled"]:
        raise KeyboardInterrupt
    return False


def _interrupt(signum, frame) -> None:
    """The SIGTERM (and, in tune, SIGINT) handler: Ctrl-C's KeyboardInterrupt, unless an uninterrupted()
    section runs, which raises it as it ends."""
    _held["signalled"] = True
    if _held["depth"]:
        _held["pending"] = True
        return
    raise KeyboardInterrupt


def uninterrupted(fn: Callable) -> Callable:
    """`fn` with interrupts (see _interrupt) held until it returns. An interrupt landing inside rich's print,
    after the write but before rich empties its buffer, gets the line printed again by the next print."""

    def call(*args, **kwargs):
        _held["depth"] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _held["depth"] -= 1
            if not _held["depth"] and _held["pending"]:
                _held["pending"] = False
                raise KeyboardInterrupt

    return call


def pretrained_options(vectors: Path | None, freeze_vectors: bool, class_weight: str | None) -> dict:
    """TrainConfig fields for --vectors, --freeze-vectors and --class-weight; a bad value is misuse (exit 2)."""
    from lstm_cli.config import parse_class_weight

    try:
        fields = {"class_weight": parse_class_weight(class_weight)}
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--class-weight") from None
    if freeze_vectors and vectors is None:
        raise typer.BadParameter("--freeze-vectors needs --vectors FILE", param_hint="--freeze-vectors")
    if vectors is not None:
        fields.update(vectors=str(vectors), freeze_vectors=freeze_vectors)
    return fields


def vectors_warnings(vectors: Path | None, embedding_dim: int | None) -> list[str]:
    """Which width wins when an embedding width was asked for (None: not explicitly) and the vectors file
    has another; reads only the file's first line."""
    if vectors is None or embedding_dim is None:
        return []
    from lstm_cli.vectors import peek_dimension

    dimension = peek_dimension(vectors)
    if embedding_dim != dimension:
        return [f"--embedding-dim {embedding_dim} ignored: the vectors in {vectors} have {dimension} dimensions"]
    return []


def explicit(ctx: typer.Context, name: str):
    """The value of option `name` if given on the command line, else None."""
    source = ctx.get_parameter_source(name)
    return ctx.params.get(name) if source is not None and source.name == "COMMANDLINE" else None


def warn(console, warnings: list[str]) -> None:
    """Each warning on its own line, shown literally (they carry paths, labels and values from the user)."""
    from lstm_cli.render import warning

    for message in warnings:
        console.print(warning(message))


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


# evaluate's and report's options for multi-label models
DataLabelSeparatorOpt = Annotated[
    str | None,
    typer.Option(
        "--label-separator",
        help="Multi-label models: what joins a row's labels in DATA's label field. [default: the model's]",
        show_default=False,
    ),
]
DataThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="Multi-label models: count a label as predicted at or over this probability (above 0, at most 1), "
        "instead of the thresholds chosen in training.",
        show_default=False,
    ),
]


def multi_label_separator(model: Path, separator: str | None, threshold: float | None, refused: dict) -> str | None:
    """The label separator to read DATA with when the model is multi-label (None: it is not, or its metadata
    cannot be read, which the Predictor then reports); the options that do not apply refused (exit 2)."""
    from lstm_cli.errors import LstmCliError, UsageError

    try:
        from lstm_cli.artifact import read_metadata
        from lstm_cli.multilabel import is_multi_label

        metadata = read_metadata(model)
        multi = is_multi_label(metadata)
    except LstmCliError:
        metadata, multi = None, False
    if not multi:
        for flag, value in (("--label-separator", separator), ("--threshold", threshold)):
            if value is not None and metadata is not None:
                raise UsageError(f"{flag} is for multi-label models, and {model} is single-label")
        return None
    for flag, value in refused.items():
        if value is not None:
            raise UsageError(f"{flag} is for single-label models, and {model} is multi-label; leave it out")
    from lstm_cli.multilabel import DEFAULT_SEPARATOR, check_separator, check_threshold

    if threshold is not None:
        check_threshold(threshold)
    saved = (metadata.get("multi_label") or {}).get("separator", DEFAULT_SEPARATOR)
    return check_separator(separator if separator is not None else saved)
