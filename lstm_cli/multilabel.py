"""Multi-label models: several labels a text, each with its own probability (a sigmoid head) and a decision
threshold chosen on the validation rows.

Reading: a CSV/TSV/JSON Lines label field holds one or more labels joined by the separator (`,` by default);
a fastText line carries one `__label__` per label. Training streams rows keyed by their label *set* (its
sorted labels as JSON, one string), so the token cache and the stratified split stay what they are for
single-label data; the train step turns a set's index into its 0/1 targets. Metrics here are on 0/1 matrices."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_cli.errors import DataError, UsageError
from lstm_cli.metrics import label_scores

DEFAULT_SEPARATOR = ","
# Thresholds tried: 0.01, 0.02, ... 0.99 (a probability is over a threshold when >= it, both as float32).
GRID = np.round(np.arange(1, 100) / 100, 2).astype(np.float32)
# A label with fewer positive validation rows than this keeps the global threshold in per-label mode: its
# own best threshold would be fitted on a handful of rows.
MIN_POSITIVES = 5
# The most label sets x labels the training targets may take (float32): 64 MB.
MAX_TARGET_CELLS = 16_000_000


def check_separator(separator: str) -> str:
    """`separator` if it can join labels in a field: one or more characters, no line break."""
    if not separator or "\n" in separator or "\r" in separator:
        raise UsageError(f"--label-separator must be one or more characters without a line break (got {separator!r})")
    return separator


def check_threshold(value: float, name: str = "--threshold") -> float:
    """`value` if it is a probability from 0 (exclusive: every label would be shown) to 1."""
    import math

    if not (math.isfinite(value) and 0 < value <= 1):
        raise UsageError(f"{name} must be a probability above 0 and at most 1, got {value!r}")
    return float(value)


def split_labels(labels: tuple[str, ...], separator: str) -> tuple[str, ...]:
    """The labels of one row: each field split on `separator`, stripped, empty parts dropped, duplicates once
    (first occurrence order)."""
    seen: dict[str, None] = {}
    for value in labels:
        for part in value.split(separator):
            part = part.strip()
            if part:
                seen.setdefault(part, None)
    return tuple(seen)


def set_key(labels: tuple[str, ...] | list[str]) -> str:
    """A label set as one string (its sorted labels as JSON): what the stream yields as a row's "label"."""
    return json.dumps(sorted(labels), ensure_ascii=False)


def key_labels(key: str) -> list[str]:
    return json.loads(key)


class MultiLabelStream:
    """A LabeledStream read as (text, label-set key) rows: re-iterable, same path/sha256/rows/skipped."""

    def __init__(self, stream, separator: str):
        self._stream = stream
        self.separator = check_separator(separator)

    def __getattr__(self, name: str) -> Any:  # path, sha256, rows, skipped, format, delimiter, warnings, ...
        return getattr(self._stream, name)

    def label_sets(self) -> Iterator[tuple[str, tuple[str, ...]]]:
        """(text, its labels) of every row; a label field of separators only counts as an empty label."""
        empty = 0
        for row in self._stream.labeled_rows():
            labels = row.labels if self._stream.format == "fasttext" else split_labels(row.labels, self.separator)
            if labels:
                yield row.text, labels
            else:
                empty += 1
        if empty:  # the pass is complete: its counts are set
            if empty == self._stream.rows:
                raise DataError(f"{self._stream.path}: has no usable rows ({empty} with empty label)")
            self._stream.rows -= empty
            self._stream.skipped["empty label"] += empty

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for text, labels in self.label_sets():
            yield text, set_key(labels)

    def reading(self) -> dict[str, object]:
        return {**self._stream.reading(), "label_separator": self.separator}


@dataclass
class LabeledSets:
    """A labeled file read whole for evaluation: texts and each one's label set."""

    texts: list[str]
    labels: list[tuple[str, ...]]
    path: str
    sha256: str
    skipped: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> dict[str, object]:
        return {"path": self.path, "rows": len(self), "sha256": self.sha256}


def read_label_sets(path, separator: str, **options) -> LabeledSets:
    """Read a labeled file (options as lstm_cli.data.LabeledStream's) with several labels a row."""
    from lstm_cli.data import stream_labeled

    stream = MultiLabelStream(stream_labeled(path, **options), separator)
    texts, labels = [], []
    for text, row_labels in stream.label_sets():
        texts.append(text)
        labels.append(row_labels)
    return LabeledSets(texts, labels, stream.path, stream.sha256, stream.skipped, stream.warnings)


def keyed_data(path, separator: str, **options):
    """A labeled file read whole (options as lstm_cli.data.LabeledStream's) as lstm_cli.data.LabeledData whose
    labels are the rows' label-set keys: what tune splits and trains on, as train streams them."""
    from lstm_cli.data import LabeledData

    sets = read_label_sets(path, separator, **options)
    return LabeledData(sets.texts, [set_key(labels) for labels in sets.labels], sets.path, sets.sha256, None,
                       sets.skipped, warnings=sets.warnings)  # fmt: skip


def targets(label_sets: list[tuple[str, ...]] | list[list[str]], labels: list[str]) -> np.ndarray:
    """0/1 float32 [rows, labels]: row i has a 1 for each of its labels (labels the model lacks are ignored)."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(label_sets), len(labels)), np.float32)
    for row, row_labels in enumerate(label_sets):
        for label in row_labels:
            if label in index:
                matrix[row, index[label]] = 1.0
    return matrix


def set_targets(keys: list[str], labels: list[str]) -> np.ndarray:
    """The targets of each label set (by key), for the train step to gather by set index."""
    if len(keys) * len(labels) > MAX_TARGET_CELLS:
        raise DataError(
            f"{len(keys):,} distinct label sets of {len(labels):,} labels: more than lstm-cli's multi-label "
            f"training holds ({MAX_TARGET_CELLS:,} cells); merge rare labels"
        )
    return targets([key_labels(key) for key in keys], labels)


def decide(probabilities: np.ndarray, thresholds) -> np.ndarray:
    """bool [rows, labels]: each probability at or over its label's threshold, compared as float32 (the digits
    predict prints: a label printed with probability 0.3 is shown at --threshold 0.3)."""
    return np.asarray(probabilities, np.float32) >= np.asarray(thresholds, np.float32)


def picked(probabilities, thresholds) -> list[list[int]]:
    """For each row of probabilities [rows, labels], the indices of the labels at or over their thresholds, most
    probable first (ties: the model's label order)."""
    chosen = decide(probabilities, thresholds)
    order = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")
    return [[i for i in row if keep[i]] for row, keep in zip(order.tolist(), chosen.tolist(), strict=True)]


def _grid_counts(probabilities: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true positives), each [labels, len(GRID)]: at each grid threshold, per label, the rows
    predicted (probability >= threshold) and those of them that are true. One pass over the cells."""
    rows, n = probabilities.shape
    k = len(GRID)
    # How many grid thresholds each probability reaches: it is predicted at the first `reached` of them.
    reached = np.searchsorted(GRID, np.asarray(probabilities, np.float32).ravel(), side="right").reshape(rows, n)
    flat = (reached + (k + 1) * np.arange(n)[None, :]).ravel()
    every = np.bincount(flat, minlength=n * (k + 1)).reshape(n, k + 1)
    true = np.bincount(flat, weights=np.asarray(truth, np.float64).ravel(), minlength=n * (k + 1)).reshape(n, k + 1)
    # Predicted at grid index j: the probabilities that reach more than j thresholds.
    predicted = np.cumsum(every[:, ::-1], axis=1)[:, ::-1][:, 1:]
    hits = np.cumsum(true[:, ::-1], axis=1)[:, ::-1][:, 1:]
    return predicted.astype(np.float64), hits


def _f1(hits, predicted, positives):
    denominator = predicted + positives
    return np.divide(2 * hits, denominator, out=np.zeros_like(hits, dtype=np.float64), where=denominator > 0)


def fit_thresholds(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The global threshold (best micro-F1) and per-label ones (each label's best F1; the global one for a
    label with under MIN_POSITIVES positive rows), fitted on these rows."""
    predicted, hits = _grid_counts(probabilities, truth)
    positives = truth.sum(axis=0).astype(np.float64)
    micro = _f1(hits.sum(axis=0), predicted.sum(axis=0), positives.sum())
    best = int(np.argmax(micro))  # ties: the lowest threshold
    per_label = np.argmax(_f1(hits, predicted, positives[:, None]), axis=1)
    per_label = np.where(positives >= MIN_POSITIVES, per_label, best)
    return {"global": _grid(best), "per_label": [_grid(j) for j in per_label]}


def sweep(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Micro precision, recall and F1 of each GRID threshold used for every label: "threshold", "precision",
    "recall", "f1", each [len(GRID)]."""
    predicted, hits = _grid_counts(probabilities, truth)
    predicted, hits = predicted.sum(axis=0), hits.sum(axis=0)
    positives = float(np.asarray(truth).sum())
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = hits / positives if positives else np.zeros_like(hits)
    return {"threshold": GRID, "precision": precision, "recall": recall, "f1": _f1(hits, predicted, positives)}


def _grid(j) -> float:
    return round(float(GRID[j]), 2)  # 0.37, not float32's 0.3700000047683716


def micro_f1(probabilities: np.ndarray, truth: np.ndarray, thresholds) -> float:
    chosen = decide(probabilities, thresholds)
    hits = float((chosen & (truth > 0)).sum())
    denominator = float(chosen.sum() + (truth > 0).sum())
    return 2 * hits / denominator if denominator else 0.0


def choose_thresholds(probabilities: np.ndarray, truth: np.ndarray, seed: int) -> dict[str, Any]:
    """The thresholds a multi-label model is saved with, from its validation rows: global or per label,
    whichever has the better micro-F1 on rows it was not fitted on (two-fold cross-validation over the
    validation rows: per-label thresholds always win on the rows they are fitted on), then fitted on them all.

    Returns the metadata's "multi_label" section (without the separator): mode, thresholds (one a label) and
    the cross-validated micro-F1 of each mode."""
    rows, n = probabilities.shape
    if rows < 2 or not truth.any():
        return {"mode": "default", "thresholds": [0.5] * n, "validation_rows": rows,
                "reason": "no validation rows with labels: 0.5 for every label"}  # fmt: skip
    order = np.random.default_rng(seed).permutation(rows)
    folds = [order[: rows // 2], order[rows // 2 :]]
    scores = {"global": [], "per_label": []}
    for fit, held in (folds, folds[::-1]):
        fitted = fit_thresholds(probabilities[fit], truth[fit])
        scores["global"].append(micro_f1(probabilities[held], truth[held], [fitted["global"]] * n))
        scores["per_label"].append(micro_f1(probabilities[held], truth[held], fitted["per_label"]))
    cross = {mode: float(np.mean(values)) for mode, values in scores.items()}
    mode = "per_label" if cross["per_label"] > cross["global"] else "global"
    fitted = fit_thresholds(probabilities, truth)
    thresholds = fitted["per_label"] if mode == "per_label" else [fitted["global"]] * n
    return {
        "mode": mode,
        "thresholds": thresholds,
        "global_threshold": fitted["global"],
        "cross_validated_micro_f1": cross,
        "validation_micro_f1": micro_f1(probabilities, truth, thresholds),
        "validation_rows": rows,
    }


def report(truth: np.ndarray, chosen: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Micro- and macro-F1, subset accuracy, hamming loss and per-label precision/recall/F1/support, for 0/1
    truth and predictions [rows, labels]. A label never predicted (never present) has precision (recall) 0,
    as in scikit-learn; macro-F1 averages the labels present in the truth or the predictions."""
    truth = np.asarray(truth) > 0
    chosen = np.asarray(chosen) > 0
    rows, n = truth.shape
    hits = (truth & chosen).sum(axis=0).astype(np.float64)
    support = truth.sum(axis=0)
    predicted = chosen.sum(axis=0)
    per_label, macro_f1 = label_scores(labels, hits, predicted, support, count_predicted=True)
    denominator = float(predicted.sum() + support.sum())
    return {
        "micro_f1": 2 * float(hits.sum()) / denominator if denominator else 0.0,
        "macro_f1": macro_f1,
        "subset_accuracy": float((truth == chosen).all(axis=1).mean()) if rows else 0.0,
        "hamming_loss": float((truth != chosen).mean()) if rows and n else 0.0,
        "micro_precision": float(hits.sum() / predicted.sum()) if predicted.sum() else 0.0,
        "micro_recall": float(hits.sum() / support.sum()) if support.sum() else 0.0,
        "per_class": per_label,
        "labels": list(labels),
    }


def is_multi_label(metadata: dict[str, Any]) -> bool:
    return bool(metadata.get("config", {}).get("multi_label"))


def saved_thresholds(metadata: dict[str, Any], path) -> np.ndarray:
    """A multi-label model's thresholds from its metadata, one per label, checked (ArtifactError otherwise)."""
    import math

    from lstm_cli.errors import ArtifactError

    section = metadata.get("multi_label")
    values = section.get("thresholds") if isinstance(section, dict) else None
    ok = isinstance(values, list) and len(values) == len(metadata["labels"]) and all(
        type(v) in (int, float) and math.isfinite(v) and 0 < v <= 1 for v in values
    )  # fmt: skip
    if not ok:
        raise ArtifactError(
            f'{path}: "multi_label.thresholds" must list one probability (above 0, at most 1) per label; the model '
            "directory is damaged, train it again (or pass --threshold)"
        )
    return np.array(values, np.float32)
