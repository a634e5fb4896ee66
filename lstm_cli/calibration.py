"""Calibrated probabilities by temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

One scalar T is fitted on the validation rows so that softmax(logits / T) has the lowest negative
log-likelihood there; T > 1 softens an overconfident model, T < 1 sharpens an underconfident one, and the
predicted label never changes (dividing every logit by the same T > 0 keeps their order). Training folds 1/T
into the softmax head's kernel and bias, so every consumer of the weights (the SavedModel, TF Serving, the
numpy engine, serve, explain) gives the calibrated probabilities by construction; the metadata records T,
and the head times T gives the raw logits back (lstm_cli.parent.raw_head: `train --from` starts from them).
numpy only: evaluate and report use it without TensorFlow."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lstm_cli.curves import reliability

HEAD = "probabilities"  # the name of the softmax output layer (lstm_cli.model.build_network)
# Fewer validation rows than this: no temperature is fitted (T = 1). One scalar is cheap to estimate, but on
# a handful of rows, often all predicted right, the likelihood keeps rising as T falls and the fit would only
# make the model more confident.
MIN_ROWS = 100
BOUNDS = (0.05, 20.0)  # the temperatures searched; a fit at a bound is reported as such
_ITERATIONS = 64  # bisections of log(1/T) over BOUNDS: far below float64's resolution of T at the end


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` ([n] indices) under softmax(logits / temperature), float64."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_z - scaled[np.arange(len(labels)), labels]))


def _slope(z: np.ndarray, labels: np.ndarray, beta: float) -> float:
    """d NLL / d beta at inverse temperature beta: the mean over rows of E_softmax(beta z)[z] - z[label].
    NLL is convex in beta (a log-sum-exp of beta z minus a linear term), so this never decreases."""
    scaled = beta * z
    p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return float(np.mean((p * z).sum(axis=1) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = BOUNDS) -> float:
    """The temperature in `bounds` minimising nll(logits, labels, T): the root of the convex NLL's slope in
    beta = 1/T, found by bisection on log beta in float64 (no step size to tune, no divergence; the bound
    nearest the minimum when it lies outside)."""
    z = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        raise ValueError("no rows to fit a temperature on")
    z = z - z.max(axis=1, keepdims=True)  # shifts each row; changes neither softmax nor the slope
    low, high = math.log(1 / bounds[1]), math.log(1 / bounds[0])  # log beta
    if _slope(z, labels, math.exp(low)) >= 0:
        return bounds[1]
    if _slope(z, labels, math.exp(high)) <= 0:
        return bounds[0]
    for _ in range(_ITERATIONS):
        middle = (low + high) / 2
        if _slope(z, labels, math.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return 1 / math.exp((low + high) / 2)


def top_uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The top probability ([n], float64) each row had before calibration, from calibrated `probabilities`
    ([n, labels]) = softmax(z / T): softmax(z)'s top is 1 / sum_j (p_j / p_top) ** T."""
    p = np.asarray(probabilities, np.float64)
    if temperature == 1.0 or len(p) == 0:
        return p.max(axis=1) if len(p) else np.zeros(0)
    ratio = p / p.max(axis=1, keepdims=True)
    return 1.0 / (ratio**temperature).sum(axis=1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    """ECE of top probabilities `confidence` whose predictions were `correct`: 15 equal-width bins
    (lstm_cli.curves.reliability, which the HTML report's diagram uses)."""
    return reliability(confidence, correct).ece


def fit(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The metadata "calibration" section for validation `logits` ([n, labels]) and `labels` ([n]): the
    temperature fitted, or T = 1 when the rows are too few to fit one, and the validation NLL and ECE
    before and after."""
    rows = len(labels)
    if rows < MIN_ROWS:
        return skipped(f"{rows} validation rows, fewer than the {MIN_ROWS} a temperature is fitted on",
                       validation_rows=rows)  # fmt: skip
    z = np.asarray(logits, np.float64)
    correct = z.argmax(axis=1) == labels
    if correct.all():
        return skipped(f"all {rows} validation rows predicted right: the likelihood rises without end as T "
                       "falls, so no temperature is fitted", validation_rows=rows)  # fmt: skip
    temperature = fit_temperature(z, labels)

    def top(t: float) -> np.ndarray:
        scaled = z / t
        scaled -= scaled.max(axis=1, keepdims=True)
        return 1.0 / np.exp(scaled).sum(axis=1)  # the top label's probability: exp(0) / sum

    return {
        "method": "temperature",
        "temperature": temperature,
        "at_bound": temperature in BOUNDS,
        "validation_rows": rows,
        "enough_rows": True,
        "reason": None,
        "validation_nll": {"before": nll(z, labels), "after": nll(z, labels, temperature)},
        "validation_ece": {
            "before": expected_calibration_error(top(1.0), correct),
            "after": expected_calibration_error(top(temperature), correct),
        },
    }


def skipped(reason: str, *, validation_rows: int = 0) -> dict[str, Any]:
    """The "calibration" section of a model whose probabilities are the network's own (T = 1), and why."""
    return {
        "method": "none",
        "temperature": 1.0,
        "at_bound": False,
        "validation_rows": validation_rows,
        "enough_rows": validation_rows >= MIN_ROWS,
        "reason": reason,
        "validation_nll": None,
        "validation_ece": None,
    }


def temperature_of(metadata: dict[str, Any]) -> float:
    """The temperature folded into a model's head (1.0 for a model saved without calibration)."""
    section = metadata.get("calibration")
    return float(section["temperature"]) if isinstance(section, dict) else 1.0


def is_softmax_head(network) -> bool:
    """Whether `network` ends in the softmax head a temperature applies to (a sigmoid multi-label head does
    not: its outputs are independent probabilities, calibrated, if at all, otherwise)."""
    try:
        head = network.get_layer(HEAD)
    except ValueError:
        return False
    return getattr(getattr(head, "activation", None), "__name__", "") == "softmax"


def fold(network, temperature: float) -> None:
    """Divide the softmax head's kernel and bias by `temperature`, in place: the network's probabilities
    become softmax(logits / temperature). Multiplying them back by it undoes it (lstm_cli.parent.raw_head)."""
    head = network.get_layer(HEAD)
    head.set_weights([w / np.float32(temperature) for w in head.get_weights()])
