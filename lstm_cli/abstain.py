"""Abstaining: an answer of "unknown" where the model is not sure enough.

A text abstains when its top probability is below the threshold P (`predict --min-probability P`): its
label becomes the unknown label (default "unknown", never one of the model's labels, so it stays
unambiguous), and its probabilities stay what they were. predict, the Python API and evaluate all decide
with `abstains`; evaluate reports the coverage (the share of rows answered) and the metrics of the answered
rows with `coverage_report`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lstm_cli.errors import UsageError

UNKNOWN_LABEL = "unknown"
# evaluate --min-probability also reports coverage and accuracy at these thresholds (JSON "thresholds").
THRESHOLDS = (0.5, 0.7, 0.9, 0.95, 0.99)


def check_min_probability(value: float, name: str = "--min-probability") -> float:
    """`value` if it is a finite number from 0 to 1; UsageError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise UsageError(f"{name} must be a probability from 0 to 1, got {value!r}")
    return float(value)


def check_unknown_label(label: str, labels: list[str], name: str = "--unknown-label") -> str:
    """`label` if no label of the model equals it (an answer must never pass for an abstention)."""
    if not isinstance(label, str):
        raise TypeError(f"{name} must be a str, got {type(label).__name__}")
    if label in labels:
        raise UsageError(
            f"{name} {label!r} is one of the model's labels, so abstentions would pass for answers; pass another {name}"
        )
    return label


def abstains(top_probability, min_probability: float) -> np.ndarray:
    """True where the top probability is below `min_probability`: the texts that get the unknown label.

    Both are compared as float32, the precision the model computes in and the digits predict prints: a text
    printed with probability 0.7 is answered at --min-probability 0.7."""
    return np.asarray(top_probability, dtype=np.float32) < np.float32(min_probability)


def _answered_metrics(truth: np.ndarray, predicted: np.ndarray, answered: np.ndarray, labels: list[str],
                      min_probability: float) -> dict[str, Any]:  # fmt: skip
    from lstm_cli.metrics import classification_report

    n = int(answered.sum())
    metrics = classification_report(truth[answered], predicted[answered], labels) if n else None
    return {
        "min_probability": min_probability,
        "answered": n,
        "coverage": n / len(truth) if len(truth) else 0.0,
        "accuracy": metrics["accuracy"] if metrics else None,  # None: no row answered
        "macro_f1": metrics["macro_f1"] if metrics else None,
    }


def coverage_report(truth, predicted, top_probability, labels: list[str], min_probability: float,
                    thresholds=THRESHOLDS) -> dict[str, Any]:  # fmt: skip
    """At `min_probability`: rows answered, coverage (answered / rows), and accuracy and macro-F1 on the
    answered rows (None when none is); "thresholds" holds the same at each of `thresholds`."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    report = _answered_metrics(truth, predicted, ~abstains(top_probability, min_probability), labels,
                               min_probability)  # fmt: skip
    report["thresholds"] = [
        _answered_metrics(truth, predicted, ~abstains(top_probability, t), labels, t) for t in thresholds
    ]
    return report
