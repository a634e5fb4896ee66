"""`lstm-cli tune`: a time-budgeted search over training settings; saves the best model as `train` would."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._help import panels
from lstm_cli.cli._util import (
    DEFAULTS,
    ClassWeightOpt,
    DataArg,
    DelimiterOpt,
    EncodingOpt,
    FreezeVectorsOpt,
    InputFormatOpt,
    LabelColumnOpt,
    LabelSeparatorOpt,
    ModelOpt,
    NoHeaderOpt,
    QuietOpt,
    ReportFormat,
    SkipBadOpt,
    TextColumnOpt,
    VectorsOpt,
    VerboseOpt,
    _console,
    _errors,
    app,
    catch_interrupts,
    interrupt_signalled,
    pretrained_options,
    read_options,
    uninterrupted,
    vectors_warnings,
    warn,
)
from lstm_cli.config import TrainConfig


class Metric(StrEnum):
    accuracy = "accuracy"
    macro_f1 = "macro_f1"
    micro_f1 = "micro_f1"


def _base_config(settings: list[str], seed: int, validation_split: float, extra: dict) -> tuple[TrainConfig, set]:
    """The starting configuration (defaults, `extra` options, then each --set) and the names --set fixed."""
    from lstm_cli.tune import parse_setting

    fixed = {}
    try:
        for text in settings:
            name, value = parse_setting(text)
            fixed[name] = value
        values = {"seed": seed, "validation_split": validation_split, **extra, **fixed}
        return TrainConfig(**values), set(fixed)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--set") from None


@app.command("tune", cls=PlainCommand)
@panels(
    Search=("budget", "metric", "trials", "seed", "settings"),
    Data=("text_column", "label_column", "delimiter", "encoding", "skip_bad_rows", "no_header", "input_format",
          "validation_data", "validation_split", "multi_label", "label_separator"),
    Model=("vectors", "freeze_vectors", "class_weight"),
    Output=("output_format",),
)  # fmt: skip
def tune_cli(
    data: DataArg,
    budget: Annotated[
        str, typer.Option(help="Wall time for the search: 90s, 10m, 1h, 1h30m or seconds. Trials start while it lasts.")
    ] = "10m",
    metric: Annotated[
        Metric | None,
        typer.Option(
            help="Validation metric that ranks the trials (multi-label: accuracy is subset accuracy). "
            "[default: accuracy; micro_f1 with --multi-label]",
            show_default=False,
        ),
    ] = None,
    trials: Annotated[int | None, typer.Option(min=1, help="At most this many trials.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the validation split, the draws and every trial.")] = (
        DEFAULTS.seed
    ),
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="FIELD=VALUE", help="Fix a setting (not searched), e.g. --set units=64."),
    ] = None,
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    text_column: TextColumnOpt = "text",
    label_column: LabelColumnOpt = "label",
    delimiter: DelimiterOpt = None,
    encoding: EncodingOpt = "utf-8",
    skip_bad_rows: SkipBadOpt = False,
    no_header: NoHeaderOpt = False,
    input_format: InputFormatOpt = None,
    validation_data: Annotated[
        Path | None, typer.Option(help="Labeled file to rank trials on, instead of a split of DATA.")
    ] = None,
    validation_split: Annotated[
        float, typer.Option(help="Stratified, seeded fraction of DATA held out to rank the trials.")
    ] = DEFAULTS.validation_split,
    multi_label: Annotated[
        bool,
        typer.Option("--multi-label", help="Several labels a text, as train --multi-label; trials ranked by micro-F1."),
    ] = False,
    label_separator: LabelSeparatorOpt = DEFAULTS.label_separator,
    vectors: VectorsOpt = None,
    freeze_vectors: FreezeVectorsOpt = False,
    class_weight: ClassWeightOpt = None,
    output_format: Annotated[
        ReportFormat,
        typer.Option(
            "--format", "-f", help="table: the model's directory on stdout; json: it and every trial, as one object."
        ),
    ] = ReportFormat.table,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Search training settings within a time budget; save the best model and print its directory on stdout.

    Trials are printed on stderr as they finish. Ctrl-C (or SIGTERM) ends the search and saves the best so far.

    \b
    Example: lstm-cli tune sample_data/train.csv --budget 2m --metric macro_f1 && lstm-cli info
    """
    from lstm_cli.tune import parse_budget

    try:
        budget_seconds = parse_budget(budget)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--budget") from None
    if label_separator != DEFAULTS.label_separator and not multi_label:
        raise typer.BadParameter("--label-separator is for --multi-label", param_hint="--label-separator")
    if multi_label and class_weight is not None:
        raise typer.BadParameter("--class-weight is for single-label models; leave it out with --multi-label",
                                 param_hint="--class-weight")  # fmt: skip
    metric = metric or (Metric.micro_f1 if multi_label else Metric.accuracy)
    if metric is Metric.micro_f1 and not multi_label:
        raise typer.BadParameter("micro_f1 ranks multi-label trials (--multi-label); use accuracy or macro_f1",
                                 param_hint="--metric")  # fmt: skip
    extra = pretrained_options(vectors, freeze_vectors, class_weight)
    if multi_label:
        extra.update(multi_label=True, label_separator=label_separator)
    base, fixed = _base_config(settings or [], seed, validation_split, extra)
    console = _console()
    say = (lambda *a, **k: None) if quiet else console.print

    def stage(message: str) -> None:  # core messages carry file names: shown literally, not as markup
        from lstm_cli.render import literal

        say(literal(message))

    catch_interrupts()
    kept = f"the model at {model} is unchanged" if model.exists() else f"no model was saved at {model}"
    with _errors(verbose, interrupted_hint=lambda: f" before the first trial finished; {kept}"):
        from lstm_cli.artifact import check_writable, save

        check_writable(model)  # a path lstm-cli would not replace is refused before any work
        from lstm_cli.data import read_labeled

        read = read_options(text_column=text_column, label_column=label_column, delimiter=delimiter,
                            encoding=encoding, skip_bad_rows=skip_bad_rows, no_header=no_header,
                            input_format=input_format)  # fmt: skip
        if multi_label:  # rows keyed by their label sets, as train streams them (lstm_cli.multilabel)
            from lstm_cli.multilabel import keyed_data

            dataset = keyed_data(data, label_separator, **read)
            validation = keyed_data(validation_data, label_separator, **read) if validation_data else None
        else:
            dataset = read_labeled(data, **read)
            validation = read_labeled(validation_data, **read) if validation_data else None
        from lstm_cli import render

        given_dim = base.embedding_dim if "embedding_dim" in fixed else None
        reading = [*render.reading_warnings(dataset, validation), *render.skipped_warnings(dataset, validation)]
        warn(console, [*vectors_warnings(vectors, given_dim), *reading])
        from lstm_cli.tune import tune

        table = render.TrialTable(say, metric.value, multi_label=multi_label)
        result = tune(base, dataset, budget_seconds=budget_seconds, metric=metric.value, max_trials=trials,
                      fixed=fixed, validation=validation, on_trial=uninterrupted(table.row),
                      on_stage=uninterrupted(stage), interrupt_requested=interrupt_signalled)  # fmt: skip
        warn(console, result.warnings)
        if result.interrupted:
            say(f"Interrupted: saving the best of {len(result.trials)} finished trials")
        split = validation.fingerprint() if validation else {"split": base.validation_split, "seed": base.seed}
        save(result.best, model, data_fingerprint=dataset.fingerprint(), validation=split,
             skipped=dict(dataset.skipped), extra={"tuning": result.metadata(trials)})  # fmt: skip
        say(render.tune_summary(result, model))
    if output_format is ReportFormat.json:
        import json

        typer.echo(json.dumps({"model": str(model), **result.metadata(trials)}, ensure_ascii=False))
    else:
        typer.echo(str(model))
