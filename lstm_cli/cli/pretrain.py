"""`lstm-cli pretrain`: learn an embedding (bag of words) and/or an LSTM (language model) from unlabeled texts;
save the encoder."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._help import panels
from lstm_cli.cli._util import (
    DEFAULTS,
    DelimiterOpt,
    Device,
    EncodingOpt,
    Punctuation,
    QuietOpt,
    SkipBadOpt,
    TextColumnOpt,
    VerboseOpt,
    _console,
    _errors,
    app,
    catch_interrupts,
    raise_if_signalled,
)

DEFAULT_ENCODER_DIR = "lstm-encoder"


class Objective(StrEnum):
    bag = "bag"
    lm = "lm"
    bag_lm = "bag+lm"


class TextFormat(StrEnum):
    text = "text"
    csv = "csv"
    tsv = "tsv"
    jsonl = "jsonl"


@app.command("pretrain", cls=PlainCommand)
@panels(
    Data=("text_column", "input_format", "delimiter", "encoding", "skip_bad_rows", "no_header"),
    Tokens=("max_tokens", "min_count", "punctuation", "max_length"),
    Model=("embedding_dim", "units"),
    Training=("objective", "budget", "batch_size", "samples", "learning_rate", "seed"),
    Bag_of_words=("bag_steps", "bag_targets", "bag_eval_steps"),
    Language_model=("epochs", "max_steps", "window", "dropout", "eval_steps"),
    Hardware_and_checkpoints=("device", "mixed_precision", "checkpoint_dir", "resume"),
)  # fmt: skip
def pretrain_cli(
    texts: Annotated[
        Path,
        typer.Argument(metavar="TEXTS", help="Unlabeled texts: one a line, or CSV/TSV/JSON Lines ('-' for stdin)."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Encoder directory to write (for train --pretrained).")
    ] = Path(DEFAULT_ENCODER_DIR),
    budget: Annotated[
        str | None,
        typer.Option(help="Stop after this much wall time (90s, 10m, 1h30m or seconds), keeping the best state."),
    ] = None,
    objective: Annotated[
        Objective,
        typer.Option(
            help="bag (word embeddings from whole texts, fresh LSTM), lm (language model) or bag+lm "
            "(bag for half the budget, then the LM with the embedding frozen)."
        ),
    ] = Objective.bag,
    text_column: TextColumnOpt = "text",
    input_format: Annotated[
        TextFormat | None,
        typer.Option(help="text (one per line), csv, tsv or jsonl [default: by extension, else text]."),
    ] = None,
    delimiter: DelimiterOpt = None,
    encoding: EncodingOpt = "utf-8",
    skip_bad_rows: SkipBadOpt = False,
    no_header: Annotated[
        bool, typer.Option("--no-header", help="The CSV/TSV has no header: --text-column is a number [default: 1].")
    ] = False,
    max_tokens: Annotated[int, typer.Option(help="Vocabulary size.")] = DEFAULTS.max_tokens,
    min_count: Annotated[int, typer.Option(help="Tokens seen fewer times are out of vocabulary.")] = DEFAULTS.min_count,
    punctuation: Annotated[
        Punctuation, typer.Option(help="split or strip, as train's --punctuation.")
    ] = Punctuation.split,
    max_length: Annotated[int, typer.Option(help="Tokens kept per text.")] = DEFAULTS.max_length,
    embedding_dim: Annotated[int, typer.Option(help="Embedding width.")] = DEFAULTS.embedding_dim,
    units: Annotated[int, typer.Option(help="LSTM units.")] = DEFAULTS.units,
    bag_steps: Annotated[int, typer.Option(help="Bag-of-words steps, at most.")] = 20_000,
    bag_targets: Annotated[int, typer.Option(help="Words of a text's other half each half predicts.")] = 32,
    bag_eval_steps: Annotated[
        int, typer.Option(help="Bag-of-words steps between held-out loss measurements and checkpoints.")
    ] = 1_000,
    epochs: Annotated[int, typer.Option(help="Language model: passes over the texts, at most.")] = 10,
    max_steps: Annotated[int | None, typer.Option(help="Language model: stop after this many steps.")] = None,
    window: Annotated[int, typer.Option(help="Language model: tokens per training sequence.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Texts (bag) or sequences (language model) per step.")] = 128,
    samples: Annotated[int, typer.Option(help="Sampled softmax: vocabulary entries scored per step.")] = 256,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 2e-3,
    dropout: Annotated[float, typer.Option(help="Language model: dropout on the LSTM's inputs and outputs.")] = 0.1,
    eval_steps: Annotated[
        int, typer.Option(help="Language model: steps between held-out perplexity measurements and checkpoints.")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = DEFAULTS.seed,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    mixed_precision: Annotated[bool, typer.Option(help="float16 compute on a GPU.")] = False,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Where checkpoints and the token cache go [default: .ENCODER.checkpoint beside it]."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Learn word embeddings (bag of words) and optionally an LSTM (language model) from unlabeled texts; save
    them as an encoder directory for `train --pretrained`, and print its path on stdout.

    \b
    Example: lstm-cli pretrain sample_data/train.csv -o enc && lstm-cli train sample_data/train.csv --pretrained enc
    """
    from lstm_cli.pretrain import PretrainConfig
    from lstm_cli.tune import parse_budget

    try:
        seconds = parse_budget(budget) if budget is not None else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--budget") from None
    if no_header:
        if text_column == "text":
            text_column = "1"
        if not text_column.isdigit() or int(text_column) < 1:
            raise typer.BadParameter(f"with --no-header, --text-column is a column number from 1 (got {text_column!r})",
                                     param_hint="--text-column")  # fmt: skip
    try:
        config = PretrainConfig(
            max_tokens=max_tokens, min_count=min_count, punctuation=punctuation.value, max_length=max_length,
            embedding_dim=embedding_dim, units=units, window=window, batch_size=batch_size, samples=samples,
            learning_rate=learning_rate, dropout=dropout, epochs=epochs, max_steps=max_steps, budget=seconds,
            eval_steps=eval_steps, seed=seed, objective=objective.value, bag_steps=bag_steps, bag_targets=bag_targets,
            bag_eval_steps=bag_eval_steps,
        )  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    console = _console()
    checkpoints = checkpoint_dir or output.parent / f".{output.name}.checkpoint"
    catch_interrupts()  # `kill` stops as cleanly as Ctrl-C
    hint = f"; {output} is unchanged. Continue from the last checkpoint by repeating the command with --resume"
    with _errors(verbose, interrupted_hint=lambda: hint):
        from lstm_cli import render
        from lstm_cli.owned import check_checkpoint_dir, check_encoder_target, remove_checkpoint_dir

        check_encoder_target(output)  # a path lstm-cli would not replace is refused before any work
        check_checkpoint_dir(checkpoints)

        def say(message: str) -> None:
            if not quiet:
                console.print(render.literal(message))

        from lstm_cli.texts import Texts

        source = Texts(texts, input_format=input_format.value if input_format else None, text_column=text_column,
                       delimiter=delimiter, encoding=encoding, skip_bad_rows=skip_bad_rows,
                       header=not no_header)  # fmt: skip
        from lstm_cli.encoder import write_encoder
        from lstm_cli.pretrain import pretrain

        result = pretrain(config, source, checkpoint_dir=checkpoints, resume=resume, device=device.value,
                          mixed_precision=mixed_precision, on_stage=say,
                          on_eval=lambda report: say(_eval_line(report)),
                          on_bag_eval=lambda report: say(_bag_line(report)), stop=raise_if_signalled)  # fmt: skip
        raise_if_signalled()  # an interrupt lost after the last step: the encoder is not written
        write_encoder(output, vocabulary=result.vocabulary, weights=result.weights,
                      settings={**vars(config), "max_length": config.max_length},
                      training=result.training())  # fmt: skip
        remove_checkpoint_dir(checkpoints)
        figures = []
        if result.bag is not None:
            figures.append(f"bag of words: held-out loss {result.bag.heldout_loss:.3f}, {result.bag.steps:,} steps")
        if result.heldout_perplexity is not None:
            figures.append(f"language model: held-out perplexity {result.heldout_perplexity:,.1f} (unigram "
                           f"{result.unigram_perplexity:,.1f}), {result.tokens:,} tokens in {result.steps:,} "
                           "steps")  # fmt: skip
        say(f"Encoder saved to {output}: {'; '.join(figures)}; {result.seconds:,.0f} s (stopped by "
            f"{result.stopped_by.replace('_', ' ')})")  # fmt: skip
    typer.echo(str(output))


def _eval_line(report) -> str:
    mark = " *" if report.best else ""
    return (
        f"step {report.step:,} (pass {report.epoch}): loss {report.train_loss:.3f}, held-out perplexity "
        f"{report.perplexity:,.1f}{mark}, {report.tokens:,} tokens, {report.tokens_per_second:,.0f} tokens/s "
        f"({report.cpu_tokens_per_second:,.0f} per 2 CPU-seconds), {report.seconds:,.0f} s"
    )


def _bag_line(report) -> str:
    mark = " *" if report.best else ""
    return (
        f"bag step {report.step:,} (pass {report.epoch}): loss {report.train_loss:.3f}, held-out loss "
        f"{report.heldout_loss:.3f}{mark}, {report.texts:,} texts, {report.steps_per_second:,.1f} steps/s, "
        f"{report.seconds:,.0f} s"
    )
