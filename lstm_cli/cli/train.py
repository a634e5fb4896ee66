"""`lstm-cli train`: read labeled data, train, save the model directory."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._help import panels
from lstm_cli.cli._util import (
    DEFAULTS,
    Cell,
    ClassWeightOpt,
    DataArg,
    DelimiterOpt,
    Device,
    EncodingOpt,
    FreezeVectorsOpt,
    InputFormatOpt,
    LabelColumnOpt,
    LabelSeparatorOpt,
    ModelOpt,
    NoHeaderOpt,
    Optimizer,
    Punctuation,
    QuietOpt,
    SkipBadOpt,
    TextColumnOpt,
    VectorsOpt,
    VerboseOpt,
    _console,
    _errors,
    app,
    catch_interrupts,
    explicit,
    pretrained_options,
    raise_if_signalled,
    read_options,
    vectors_warnings,
    warn,
)
from lstm_cli.config import TrainConfig


def _kinds(option: str) -> tuple[str, ...]:
    """'max, mean' -> ('max', 'mean'); 'none' -> ()."""
    kinds = tuple(k.strip().lower() for k in option.split(",") if k.strip())
    return () if kinds == ("none",) else kinds


@app.command("train", cls=PlainCommand)
@panels(
    Data=("text_column", "label_column", "delimiter", "encoding", "skip_bad_rows", "no_header", "input_format",
          "validation_data", "validation_split", "multi_label", "label_separator"),
    Tokens=("max_tokens", "min_count", "punctuation", "max_length", "recurrent_length"),
    Model=("embedding_dim", "units", "layers", "cell", "bidirectional", "dropout", "recurrent_dropout",
           "embedding_dropout", "pooling", "embedding_pooling", "bigram_buckets", "bigram_dim", "bigram_min_count",
           "dense_units", "dense_dropout", "vectors", "freeze_vectors", "pretrained",
           "pretrained_rate", "frozen_epochs"),
    Training=("epochs", "batch_size", "learning_rate", "optimizer", "clip_norm", "l2", "patience", "plateau_factor",
              "label_smoothing", "weight_averaging", "calibrate", "steps_per_epoch", "max_steps", "seed",
              "class_weight"),
    Hardware_and_checkpoints=("device", "mixed_precision", "checkpoint_dir", "resume", "from_model", "tensorboard",
                              "worker_timeout"),
)  # fmt: skip
def train_cli(
    ctx: typer.Context,
    data: DataArg,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    text_column: TextColumnOpt = "text",
    label_column: LabelColumnOpt = "label",
    delimiter: DelimiterOpt = None,
    encoding: EncodingOpt = "utf-8",
    skip_bad_rows: SkipBadOpt = False,
    no_header: NoHeaderOpt = False,
    input_format: InputFormatOpt = None,
    validation_data: Annotated[
        Path | None, typer.Option(help="Labeled file to validate on, instead of a split of DATA.")
    ] = None,
    validation_split: Annotated[
        float, typer.Option(help="Stratified, seeded fraction of DATA held out for validation.")
    ] = DEFAULTS.validation_split,
    multi_label: Annotated[
        bool,
        typer.Option(
            "--multi-label",
            help="Several labels a text: a sigmoid per label, decision thresholds chosen on the validation rows.",
        ),
    ] = False,
    label_separator: LabelSeparatorOpt = DEFAULTS.label_separator,
    max_tokens: Annotated[int, typer.Option(help="Vocabulary size.")] = DEFAULTS.max_tokens,
    min_count: Annotated[
        int, typer.Option(help="Tokens seen fewer times in the training texts are out of vocabulary.")
    ] = DEFAULTS.min_count,
    punctuation: Annotated[
        Punctuation,
        typer.Option(
            help="split: ASCII punctuation separates words (long-term: long, term), apostrophes are dropped "
            "(don't: dont); strip: Keras's default, all of it deleted (long-term: longterm)."
        ),
    ] = Punctuation.split,  # TrainConfig.punctuation
    max_length: Annotated[
        int, typer.Option(help="Tokens kept per text (longer texts are truncated); the pooled views read them all.")
    ] = DEFAULTS.max_length,
    recurrent_length: Annotated[
        int, typer.Option(help="Tokens the recurrent layers read, from the start of each text (at most --max-length).")
    ] = DEFAULTS.recurrent_length,
    embedding_dim: Annotated[int, typer.Option(help="Embedding width.")] = DEFAULTS.embedding_dim,
    units: Annotated[int, typer.Option(help="Recurrent units per layer.")] = DEFAULTS.units,
    layers: Annotated[int, typer.Option(help="Stacked recurrent layers.")] = DEFAULTS.layers,
    cell: Annotated[Cell, typer.Option(help="Recurrent cell.")] = Cell.lstm,
    bidirectional: Annotated[bool, typer.Option(help="Read texts in both directions.")] = DEFAULTS.bidirectional,
    dropout: Annotated[float, typer.Option(help="Dropout on the recurrent layers' inputs.")] = DEFAULTS.dropout,
    recurrent_dropout: Annotated[
        float, typer.Option(help="Dropout on the recurrent state (0 allows cuDNN on a GPU).")
    ] = DEFAULTS.recurrent_dropout,
    embedding_dropout: Annotated[
        float, typer.Option(help="Spatial dropout of embedding channels.")
    ] = DEFAULTS.embedding_dropout,
    pooling: Annotated[
        str, typer.Option(help="What the head reads from the recurrent outputs: last, or max and/or mean over time.")
    ] = ",".join(DEFAULTS.pooling),
    embedding_pooling: Annotated[
        str, typer.Option(help="Embeddings pooled over the text beside it (SWEM): max and/or mean, or none.")
    ] = ",".join(DEFAULTS.embedding_pooling) or "none",
    bigram_buckets: Annotated[
        int | None,
        typer.Option(
            help="Hash buckets for pairs of adjacent tokens, embedded and averaged beside the rest (0: no bigrams) "
            "[default: auto, a power of two from 4,096 to 131,072, about a quarter of the training tokens; "
            "16,777,216 with --bigram-min-count]."
        ),
    ] = None,
    bigram_dim: Annotated[int, typer.Option(help="Width of the bigram embeddings.")] = DEFAULTS.bigram_dim,
    bigram_min_count: Annotated[
        int | None,
        typer.Option(
            help="Only the bigram buckets seen this many times in the training rows get an embedding; the others "
            "are left out of the mean (0: every bucket gets one) [default: auto, 2 when the training rows hold "
            "more than 200,000 distinct bigrams and --bigram-buckets is automatic, else 0]."
        ),
    ] = None,
    dense_units: Annotated[
        int | None,
        typer.Option(
            help="Hidden Dense layer width (0: none). [default: 128; 0 with --multi-label]", show_default=False
        ),  # fmt: skip
    ] = DEFAULTS.dense_units,
    dense_dropout: Annotated[float, typer.Option(help="Dropout after the Dense layer.")] = DEFAULTS.dense_dropout,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = DEFAULTS.epochs,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Texts per training step [default: auto, a power of two from 32 to 512, ~100 steps a pass]."),
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Adam learning rate [default: auto, 1e-3; 2e-3 if a pass has under 100 steps].")
    ] = None,
    optimizer: Annotated[
        Optimizer,
        typer.Option(
            help="adam, or lazy-adam: embedding rows updated only when a batch uses them (faster on big vocabularies)."
        ),
    ] = Optimizer.adam,
    clip_norm: Annotated[
        float, typer.Option(help="Clip the global gradient norm to this (0: no clipping).")
    ] = DEFAULTS.clip_norm,
    l2: Annotated[float, typer.Option("--l2", help="L2 penalty on the Dense and recurrent kernels.")] = DEFAULTS.l2,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without val_loss improvement (best weights kept).")
    ] = DEFAULTS.patience,
    plateau_factor: Annotated[
        float, typer.Option(help="Multiply the learning rate by this after an epoch without val_loss improvement.")
    ] = DEFAULTS.plateau_factor,
    label_smoothing: Annotated[
        float, typer.Option(help="Train towards 1 - E on the label and E spread over all labels.")
    ] = DEFAULTS.label_smoothing,
    weight_averaging: Annotated[
        bool,
        typer.Option(
            help="Save the mean of a few consecutive epochs' weights around the best epoch when it has the lower "
            "validation loss; --no-weight-averaging: always the best epoch's weights."
        ),
    ] = DEFAULTS.weight_averaging,
    calibrate: Annotated[
        bool,
        typer.Option(
            help="Fit a temperature on the validation rows so the probabilities match how often the model is "
            "right (the labels predicted do not change); --no-calibrate: the network's raw softmax."
        ),
    ] = DEFAULTS.calibrate,
    steps_per_epoch: Annotated[
        int | None,
        typer.Option(
            help="Make an epoch this many steps (validation, checkpoint, early stopping every N steps) "
            "[default: one pass over DATA]."
        ),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps in all.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same seed and data give the same model on CPU.")] = (
        DEFAULTS.seed
    ),
    vectors: VectorsOpt = None,
    freeze_vectors: FreezeVectorsOpt = False,
    pretrained: Annotated[
        Path | None,
        typer.Option(
            metavar="ENCODER",
            help="Start from this encoder (`lstm-cli pretrain -o`): its tokenizer, embedding and LSTM, fine-tuned "
            "on DATA; its tokenizer and network options cannot be changed.",
        ),
    ] = None,
    pretrained_rate: Annotated[
        float,
        typer.Option(
            help="With --pretrained: the encoder's embedding and LSTM learn at this fraction of the learning rate."
        ),
    ] = DEFAULTS.pretrained_rate,
    frozen_epochs: Annotated[
        int,
        typer.Option(help="With --pretrained: epochs during which the encoder's layers stay as pretrained."),
    ] = DEFAULTS.frozen_epochs,
    class_weight: ClassWeightOpt = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    mixed_precision: Annotated[bool, typer.Option(help="float16 compute on a GPU.")] = False,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Where per-epoch checkpoints go [default: .MODEL.checkpoint beside the model]."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last finished epoch.")] = False,
    from_model: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Continue training this model on DATA: its tokenizer, labels and weights, with DATA's new words "
            "and labels added; options not given are the model's (see the docs for which cannot change).",
        ),
    ] = None,
    tensorboard: Annotated[
        Path | None, typer.Option(help="Write loss, accuracy, learning rate and throughput for TensorBoard here.")
    ] = None,
    worker_timeout: Annotated[
        float, typer.Option(min=1, help="With TF_CONFIG: seconds to wait for the other workers before giving up.")
    ] = 300.0,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Learn a classifier from labeled data and save it; prints the model directory on stdout.

    \b
    Example: lstm-cli train sample_data/train.csv --epochs 5 && lstm-cli predict "refund please"
    """
    extra = pretrained_options(vectors, freeze_vectors, class_weight)
    try:
        config = TrainConfig(
            max_tokens=max_tokens, min_count=min_count, punctuation=punctuation.value, max_length=max_length,
            recurrent_length=recurrent_length,
            embedding_dim=embedding_dim, units=units,
            layers=layers, cell=cell.value, bidirectional=bidirectional, dropout=dropout,
            recurrent_dropout=recurrent_dropout, embedding_dropout=embedding_dropout,
            pooling=_kinds(pooling), embedding_pooling=_kinds(embedding_pooling),
            bigram_buckets=bigram_buckets, bigram_dim=bigram_dim,
            bigram_min_count=bigram_min_count, dense_units=dense_units, dense_dropout=dense_dropout,
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer.value,
            clip_norm=clip_norm, l2=l2,
            patience=patience, plateau_factor=plateau_factor, label_smoothing=label_smoothing,
            weight_averaging=weight_averaging, calibrate=calibrate, steps_per_epoch=steps_per_epoch,
            max_steps=max_steps,
            validation_split=validation_split, seed=seed, multi_label=multi_label, label_separator=label_separator,
            pretrained_rate=pretrained_rate, frozen_epochs=frozen_epochs, **extra,
        )  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if pretrained is None and (pretrained_rate != DEFAULTS.pretrained_rate or frozen_epochs != DEFAULTS.frozen_epochs):
        raise typer.BadParameter("--pretrained-rate and --frozen-epochs need --pretrained ENCODER",
                                 param_hint="--pretrained")  # fmt: skip
    if label_separator != DEFAULTS.label_separator and not multi_label and from_model is None:
        raise typer.BadParameter("--label-separator is for --multi-label", param_hint="--label-separator")
    from lstm_cli.config import number_problem
    from lstm_cli.watchdog import MAX_TIMEOUT

    # The options given on the command line: with --from, the model's values fill in the others.
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if explicit(ctx, f.name) is not None}
    if problem := number_problem("--worker-timeout", worker_timeout, 1, MAX_TIMEOUT):
        raise typer.BadParameter(problem, param_hint="--worker-timeout")
    cluster = _cluster()
    if cluster is not None:
        from lstm_cli import watchdog

        if not watchdog.supervised():  # a worker runs under a supervisor that bounds its waits on the others
            hint = ("check that every task in TF_CONFIG runs the same command and is reachable, "
                    "or raise --worker-timeout")  # fmt: skip
            raise typer.Exit(watchdog.supervise(sys.argv[1:], hint=hint))
    console = _console()
    checkpoints = checkpoint_dir or model.parent / f".{model.name}.checkpoint"
    if cluster is not None and not cluster.is_chief:
        # Only the chief writes the model; each other worker keeps its own checkpoint (and token cache).
        checkpoints = checkpoints.with_name(f"{checkpoints.name}.{cluster.task.replace('/', '-')}")
    before = _model_id(model)
    catch_interrupts()  # `kill` stops training as cleanly as Ctrl-C
    with _errors(verbose, interrupted_hint=lambda: _interrupted(model, before)):
        from lstm_cli import render
        from lstm_cli.artifact import check_writable, save
        from lstm_cli.owned import check_checkpoint_dir, remove_checkpoint_dir

        # Paths first: a model or checkpoint path lstm-cli would not replace is refused before any work.
        if cluster is None or cluster.is_chief:
            check_writable(model)
        check_checkpoint_dir(checkpoints, model=model)
        parent, encoder = None, None
        if pretrained is not None:
            from lstm_cli.encoder import classifier_config, read_encoder
            from lstm_cli.errors import UsageError

            if from_model is not None:
                raise UsageError(
                    f"--pretrained starts a new model from an encoder and --from continues the model {from_model}: "
                    "give one (train --pretrained first, then --from that model)"
                )
            encoder = read_encoder(pretrained)
            config = classifier_config(config, given, encoder)
        if from_model is not None:  # read whole now: -m may name the same directory, replaced at the end
            from lstm_cli.parent import child_config, read_parent

            parent = read_parent(from_model)
            config = child_config(parent.config, given, vocabulary_size=len(parent.vocabulary))
            # A multi-label model's data is read as multi-label, with its separator unless one is given.
            multi_label, label_separator = config.multi_label, config.label_separator

        def say(message: str) -> None:
            if not quiet:
                console.print(render.literal(message))

        from lstm_cli.data import stream_labeled

        # Streamed, never held whole: the header is checked now, the rows are read in passes by training.
        read = read_options(text_column=text_column, label_column=label_column, delimiter=delimiter,
                            encoding=encoding, skip_bad_rows=skip_bad_rows, no_header=no_header,
                            input_format=input_format)  # fmt: skip
        dataset = stream_labeled(data, **read)
        validation = stream_labeled(validation_data, **read) if validation_data else None
        if multi_label:  # rows keyed by their label sets (lstm_cli.multilabel)
            from lstm_cli.multilabel import MultiLabelStream

            dataset = MultiLabelStream(dataset, label_separator)
            validation = MultiLabelStream(validation, label_separator) if validation is not None else None
        warn(console, render.reading_warnings(dataset, validation))
        warn(console, vectors_warnings(vectors, explicit(ctx, "embedding_dim")))  # before TensorFlow's import
        from lstm_cli.train import train as train_model

        with _progress(console, enabled=not quiet and console.is_terminal) as (on_step, on_rows):
            result = train_model(
                config, dataset, validation=validation, device=device.value, mixed_precision=mixed_precision,
                on_epoch=lambda report: say(render.epoch_line(report)),
                on_stage=say,
                on_step=on_step,
                checkpoint_dir=checkpoints,
                resume=resume,
                model_dir=model,
                tensorboard=tensorboard,
                worker_timeout=worker_timeout,
                on_progress=on_rows,
                parent=parent,
                encoder=encoder,
                stop=raise_if_signalled,
            )  # fmt: skip
        raise_if_signalled()  # an interrupt lost after the last step: the model is not saved
        warn(console, [*render.skipped_warnings(dataset, validation), *result.warnings])
        if not result.is_chief:
            remove_checkpoint_dir(checkpoints)
            say(f"{cluster.task}: training finished; the chief saves the model")
            return
        split = validation.fingerprint() if validation else {"split": config.validation_split, "seed": config.seed}
        if parent is not None:
            _check_parent_unchanged(model, parent)
        save(result, model, data_fingerprint=dataset.fingerprint(), validation=split,
             skipped=dict(dataset.skipped),
             extra={**({"parent": result.parent} if parent else {}),
                    **({"pretrained": result.pretrained} if encoder else {})} or None)  # fmt: skip
        remove_checkpoint_dir(checkpoints)
        if not quiet:
            console.print(render.train_summary(result, model))
    typer.echo(str(model))


def _cluster():
    """This process's place in a TF_CONFIG cluster (None without one); a broken TF_CONFIG is misuse."""
    from lstm_cli.devices import read_cluster

    try:
        return read_cluster()
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="TF_CONFIG") from None


@contextlib.contextmanager
def _progress(console, *, enabled: bool):
    """A progress bar for the steps of each epoch on a terminal (step, rows/s, running loss, time left),
    and a count of the rows read while the vocabulary is built; yields (on_step, on_rows), both None when
    stderr is not a terminal (the epoch lines say it all)."""
    if not enabled:
        yield None, None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]:,.0f} rows/s  loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("steps", total=None, epoch=0, speed=0.0, loss=0.0, visible=False)
        reading = bar.add_task("reading", total=None, epoch="-", speed=0.0, loss=0.0)
        read_started = time.monotonic()

        def on_rows(rows: int) -> None:
            bar.update(reading, completed=rows, speed=rows / max(time.monotonic() - read_started, 1e-9))

        def on_step(report) -> None:
            if report.step == 1:
                bar.update(reading, visible=False)
                bar.reset(task, total=report.steps, visible=True)
            speed = report.rows / report.seconds if report.seconds > 0 else 0.0
            bar.update(task, completed=report.step, epoch=report.epoch, speed=speed, loss=report.loss)

        yield on_step, on_rows


def _check_parent_unchanged(model: Path, parent) -> None:
    """With -m naming the model of --from: refuse to replace it if another run replaced it meanwhile."""
    from lstm_cli.errors import LstmCliError

    if not (model.exists() and os.path.samefile(model, parent.path)):
        return
    now = _model_id(model)
    if now != parent.id:
        raise LstmCliError(
            f"{model} was replaced by another run while this one trained (its id is now {now}, was {parent.id}); "
            "not replacing it again: continue it with --from into another -m directory"
        )


def _model_id(model: Path) -> str | None:
    """The id in the model's metadata.json, or None if there is no readable model (no TensorFlow needed)."""
    try:
        from lstm_cli.schema import read_json

        return read_json(model / "metadata.json").get("id")
    except (OSError, ValueError, AttributeError):
        return None


def _interrupted(model: Path, before: str | None) -> str:
    """What an interruption left, judged when it happens: the new model may already be in place."""
    now = _model_id(model)
    if now is not None and now != before:
        return f"; the new model was already saved at {model} and is complete"
    kept = f"the model at {model} is unchanged" if before is not None else f"no model was saved at {model}"
    return f"; {kept}. Continue from the last finished epoch by repeating the command with --resume"
