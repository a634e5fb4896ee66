"""Time-budgeted hyperparameter search: settings drawn at random from SPACE, each trial one `train()` run on
the same seeded validation split, ranked by a validation metric. Core only: progress goes to a callback and
the best trial's `TrainResult` comes back for the CLI to save exactly as `train` would."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.config import TrainConfig, auto_dense_units, number_problem
from lstm_cli.data import LabeledData
from lstm_cli.errors import DataError

# The search space, in one place: TrainConfig field -> values tried. A field the user fixes (tune --set) is
# not searched, nor is one TrainConfig lacks, so the table can name options before they land.
SPACE: dict[str, tuple[Any, ...]] = {
    "embedding_dim": (64, 128, 256),
    "units": (32, 64, 128),
    "bidirectional": (False, True),
    "dropout": (0.0, 0.2, 0.4),
    "recurrent_dropout": (0.0, 0.2),
    "embedding_dropout": (0.0, 0.2),
    "pooling": (("last",), ("max",), ("mean",), ("max", "mean")),
    "embedding_pooling": ((), ("max",), ("mean",), ("max", "mean")),
    "dense_units": (0, 64, 128),
    "dense_dropout": (0.2, 0.5),
    "learning_rate": (None, 3e-4, 1e-3, 3e-3),  # None: the automatic rate for the batch size
    "optimizer": ("adam", "lazy-adam"),
    "max_length": (500, 2_000),
    "recurrent_length": (100, 300, 600),
    "max_tokens": (20_000, 100_000),
    "min_count": (1, 2),
    "bigram_buckets": (None, 0, 16_384),  # None: the automatic size
    "bigram_min_count": (0, 2),
}
# (switch, value, field): when `switch` has `value`, `field` changes nothing in the model (no bigram table to
# count for, no hidden Dense layer to drop out of). Such draws are one trial, shown with the field's base value.
_MOOT: tuple[tuple[str, Any, str], ...] = (
    ("bigram_buckets", 0, "bigram_min_count"),
    ("dense_units", 0, "dense_dropout"),
)
METRICS = ("accuracy", "macro_f1", "micro_f1")  # micro_f1: multi-label models only
_DRAWS = 1_000  # random draws to find an untried setting before calling the space exhausted


@dataclass
class Trial:
    number: int  # 1-based; trial 1 is the starting configuration (defaults plus what the user fixed)
    settings: dict[str, Any]  # the searched fields' values
    accuracy: float  # on the validation rows, with the trial's best-epoch weights (multi-label: subset accuracy)
    macro_f1: float
    epochs: int
    seconds: float
    cut_by_budget: bool  # the budget ran out during this trial; it kept its best epoch so far
    micro_f1: float | None = None  # multi-label trials: at the thresholds the trial chose on the validation rows

    def score(self, metric: str) -> float:
        return getattr(self, metric)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TuneResult:
    best: Any  # the best trial's TrainResult
    best_trial: int
    trials: list[Trial]
    metric: str
    budget_seconds: float
    space: dict[str, list[Any]]  # what was searched
    seconds: float
    interrupted: bool  # Ctrl-C or SIGTERM ended the search
    warnings: list[str] = field(default_factory=list)

    def metadata(self, trial_cap: int | None) -> dict[str, Any]:
        """The "tuning" section of the saved model's metadata."""
        return {
            "metric": self.metric,
            "budget_seconds": self.budget_seconds,
            "trial_cap": trial_cap,
            "best_trial": self.best_trial,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "space": self.space,
            "trials": [t.to_dict() for t in self.trials],
        }


def search_space(base: TrainConfig, fixed: Collection[str]) -> dict[str, tuple[Any, ...]]:
    """SPACE without the fields the user fixed or TrainConfig does not have."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    space = {name: values for name, values in SPACE.items() if name in known and name not in fixed}
    if base.vectors is not None:
        space.pop("embedding_dim", None)  # the vectors file sets it
    return space


def _candidates(base: TrainConfig, space: dict[str, tuple[Any, ...]], seed: int):
    """The starting configuration first, then untried random draws from `space`, until it runs out.

    Two draws that build the same model (they differ only in a setting another one makes moot) are one."""
    rng = np.random.default_rng(seed)
    seen = set()
    settings = _without_moot(base, {name: getattr(base, name) for name in space})
    while True:
        key = tuple(sorted(settings.items()))
        if key not in seen:
            seen.add(key)
            yield settings
        for _ in range(_DRAWS):
            drawn = {name: values[rng.integers(len(values))] for name, values in space.items()}
            settings = _without_moot(base, drawn)
            if tuple(sorted(settings.items())) not in seen:
                break
        else:
            return


def _without_moot(base: TrainConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with each searched field another setting makes moot (_MOOT) put back to base's value, and an
    automatic --dense-units as the width it becomes (0 with --multi-label: no Dense layer, its dropout moot)."""
    settings = {name: _built(base, name, value) for name, value in settings.items()}
    for switch, value, field_name in _MOOT:
        if field_name in settings and _built(base, switch, settings.get(switch, getattr(base, switch))) == value:
            settings[field_name] = getattr(base, field_name)
    return settings


def _built(base: TrainConfig, name: str, value: Any) -> Any:
    """A setting as the model is built with it: the automatic Dense width depends only on --multi-label (the
    other automatic values depend on the data, known later)."""
    return auto_dense_units(base.multi_label) if name == "dense_units" and value is None else value


def _split(data: LabeledData, config: TrainConfig) -> tuple[LabeledData, LabeledData, list[str]]:
    """One seeded, stratified split shared by every trial (the same one `train` makes for this seed)."""
    from collections import Counter

    from lstm_cli.corpus import ValidationSplit, validation_fraction

    fraction = validation_fraction(config.validation_split, len(data))
    split = ValidationSplit(dict(Counter(data.labels)), fraction, config.seed)
    split.require_rows(data.path)
    held = [split.held(label) for label in data.labels]

    def part(keep: bool, path: str) -> LabeledData:
        rows = [i for i, h in enumerate(held) if h == keep]
        return LabeledData([data.texts[i] for i in rows], [data.labels[i] for i in rows], path,
                           data.sha256, data.delimiter)  # fmt: skip

    warnings = _split_warnings(split.warnings, config)
    return part(False, data.path), part(True, f"{data.path} (validation split)"), warnings


def _split_warnings(warnings: list[str], config: TrainConfig) -> list[str]:
    if config.multi_label and len(warnings) > 1:  # one line, as train says it, not one per rare label set
        return [f"{len(warnings):,} label sets have a single row: kept for training, absent from validation"]
    return warnings


def validation_scores(result, validation: LabeledData) -> dict[str, float]:
    """Accuracy and macro-F1 of a trained network on `validation`, batched by length as training is. A
    multi-label network (validation labels: set keys) gets subset accuracy, macro- and micro-F1 at the
    thresholds it chose on these rows."""
    from lstm_cli.batching import batch_indices
    from lstm_cli.metrics import classification_report
    from lstm_cli.train import encode_texts

    encoded = encode_texts(result.vectorizer, validation.texts, result.config.max_length)
    probabilities = np.zeros((len(validation), len(result.labels)), np.float32)
    for rows in batch_indices(encoded.lengths, 256, None):
        probabilities[rows] = np.asarray(result.network(encoded.padded(rows), training=False))
    if result.config.multi_label:
        from lstm_cli.multilabel import decide, key_labels, report, targets

        truth = targets([key_labels(key) for key in validation.labels], result.labels)
        scores = report(truth, decide(probabilities, result.multi_label["thresholds"]), result.labels)
        return {"accuracy": scores["subset_accuracy"], "macro_f1": scores["macro_f1"], "micro_f1": scores["micro_f1"]}
    index = {label: i for i, label in enumerate(result.labels)}
    truth = np.array([index[label] for label in validation.labels], dtype=np.int64)
    report = classification_report(truth, np.argmax(probabilities, axis=1), result.labels)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def _shared_vectors(base: TrainConfig, space: dict[str, tuple[Any, ...]], texts: list[str]):
    """Read --vectors once for all trials, for every word any trial's vocabulary could hold."""
    if base.vectors is None:
        return None
    from lstm_cli.model import make_vectorizer, tf
    from lstm_cli.train import ENCODE_BATCH
    from lstm_cli.vectors import read_vectors

    largest = max([base.max_tokens, *space.get("max_tokens", ())])
    vectorizer = make_vectorizer(largest, standardize=base.standardization)
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(texts).batch(ENCODE_BATCH))
    vocabulary = {str(w) for w in vectorizer.get_vocabulary()[2:]}
    return read_vectors(Path(base.vectors), vocabulary, base.standardization)


def tune(
    base: TrainConfig,
    data: LabeledData,
    *,
    budget_seconds: float,
    metric: str = "accuracy",
    max_trials: int | None = None,
    fixed: Collection[str] = (),
    validation: LabeledData | None = None,
    on_trial: Callable[[Trial, bool], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    interrupt_requested: Callable[[], bool] = lambda: False,
) -> TuneResult:
    """Train configurations from `base` plus random SPACE settings until the budget or `max_trials` runs out.

    The trial running when the budget ends stops after its current epoch and still counts. Ctrl-C (a
    KeyboardInterrupt) ends the search and returns the best so far, or propagates if no trial finished.
    `interrupt_requested()` true counts as that KeyboardInterrupt (the running trial stops and does not count): a
    signal handler's KeyboardInterrupt can be lost where Python ignores exceptions (a __del__ TensorFlow's
    objects run), its flag cannot. `on_trial(trial, is_best_so_far)` is called as each trial ends."""
    from lstm_cli.train import train

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "micro_f1" and not base.multi_label:
        raise ValueError("micro_f1 ranks multi-label trials (tune --multi-label); a single-label one has accuracy")
    started = time.monotonic()
    deadline = started + budget_seconds
    stage = on_stage or (lambda _: None)
    warnings: list[str] = []
    if validation is None:
        if base.validation_split <= 0:
            raise DataError("tune ranks settings on validation rows: give --validation-split > 0 or --validation-data")
        data, validation, warnings = _split(data, base)
    space = search_space(base, fixed)
    vectors = _shared_vectors(base, space, data.texts)
    stage(f"Searching {', '.join(space) or 'nothing'} for {budget_seconds:g}s: {len(data):,} rows to train on, "
          f"{len(validation):,} to rank by validation {metric}")  # fmt: skip
    trials: list[Trial] = []
    best, best_trial, interrupted = None, 0, False
    try:
        for number, settings in enumerate(_candidates(base, space, base.seed), start=1):
            if (max_trials is not None and number > max_trials) or (trials and time.monotonic() >= deadline):
                break
            config = dataclasses.replace(base, **settings)
            trial_started = time.monotonic()
            result = train(config, data, validation=validation, vectors=vectors,
                           stop=lambda: interrupt_requested() or time.monotonic() >= deadline)  # fmt: skip
            if interrupt_requested():
                raise KeyboardInterrupt
            scores = validation_scores(result, validation)
            trial = Trial(number, settings, scores["accuracy"], scores["macro_f1"], len(result.history),
                          round(time.monotonic() - trial_started, 3), time.monotonic() >= deadline,
                          scores.get("micro_f1"))  # fmt: skip
            trials.append(trial)
            improved = best is None or trial.score(metric) > trials[best_trial - 1].score(metric)
            if improved:
                best, best_trial = result, number
                warnings.extend(w for w in result.warnings if w not in warnings)
            if on_trial:
                on_trial(trial, improved)
    except KeyboardInterrupt:
        if best is None:
            raise
        interrupted = True
    if best is None:
        raise DataError("the search space is empty: every searched setting is fixed; drop a --set")
    return TuneResult(best, best_trial, trials, metric, budget_seconds, {k: list(v) for k, v in space.items()},
                      time.monotonic() - started, interrupted, warnings)  # fmt: skip


def describe(settings: dict[str, Any]) -> str:
    """'units=64 dropout=0.2 pooling=max,mean' (the form --set takes, lists as JSON aside)."""

    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:g}"
        if isinstance(value, (tuple, list)):
            return ",".join(map(str, value)) or "none"
        return "auto" if value is None else str(value)

    return " ".join(f"{name}={shown(value)}" for name, value in settings.items())


def parse_budget(text: str) -> float:
    """'90s', '10m', '1h', '1h30m' or plain seconds ('600', '2.5') -> seconds. Raises ValueError."""
    import re

    units = {"s": 1, "m": 60, "h": 3600}
    cleaned = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        seconds = float(cleaned)
    elif cleaned and re.fullmatch(r"(\d+(\.\d+)?[smh])+", cleaned):
        seconds = sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smh])", cleaned))
    else:
        raise ValueError(f"--budget: {text!r} is not a duration; write e.g. 90s, 10m, 1h, 1h30m or seconds (600)")
    problem = number_problem("--budget", seconds, 0, 366 * 24 * 3600, low_open=True)  # a year at most
    if problem:
        raise ValueError(f"{problem} seconds ({text[:40]!r})")
    return seconds


def parse_setting(text: str) -> tuple[str, Any]:
    """'units=64' -> ('units', 64) for `tune --set`: a TrainConfig field and a JSON value (or a plain word;
    comma-separated for the list fields: 'pooling=max,mean')."""
    from lstm_cli.schema import MAX_OPTION_JSON_BYTES, load_json

    name, sep, raw = text.partition("=")
    name = name.strip().replace("-", "_")
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    if not sep or name not in known:
        raise ValueError(f"--set expects FIELD=VALUE with FIELD one of: {', '.join(known)}; got {text!r}")
    if name in ("multi_label", "label_separator"):  # they decide how the data is read: options, as train's
        raise ValueError(f"--set {name} is not supported; use tune --{name.replace('_', '-')}")
    if name in ("pretrained", "pretrained_rate", "frozen_epochs"):  # the trials train from scratch, no encoder
        raise ValueError(f"tune trains from scratch; --set {name} is not supported (use train --pretrained ENCODER)")
    try:
        value = load_json(raw, max_bytes=MAX_OPTION_JSON_BYTES)
    except ValueError:
        value = raw.strip()
    if value == "auto" and getattr(TrainConfig(), name) is None:  # batch_size=auto, bigram_buckets=auto
        value = None
    if isinstance(getattr(TrainConfig(), name), tuple):  # pooling=max,mean, as the table shows it
        value = tuple(value) if isinstance(value, list) else tuple(v for v in str(value).split(",") if v)
    return name, value
