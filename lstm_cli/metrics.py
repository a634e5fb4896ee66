"""Classification metrics from label indices: accuracy, macro-F1, per-class P/R/F1 and the confusion counts.

Everything here is sparse in the number of labels: memory and time grow with the rows and the labels, never
with labels squared (a dense matrix of 100,000 labels would take 80 GB). The confusion counts are the cells
that are not zero, as (true, predicted, count) triples; `dense_confusion` builds the grid for small label sets."""

from __future__ import annotations

from typing import Any

import numpy as np

# Most labels for which the full confusion grid is written (JSON "confusion_matrix", --confusion-csv):
# 1,000 labels are a million cells (a few MB); beyond that only the non-zero triples are.
DENSE_LABELS = 1_000


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of the confusion matrix as three arrays (true index, predicted index, count),
    ordered by true then predicted index."""
    truth = np.asarray(truth, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    cells, counts = np.unique(truth * n + predicted, return_counts=True)  # one code per (true, predicted) pair
    return cells // n, cells % n, counts


def label_scores(labels: list[str], hits: np.ndarray, predicted: np.ndarray, support: np.ndarray, *,
                 count_predicted: bool = False) -> tuple[dict[str, dict[str, Any]], float]:  # fmt: skip
    """Each label's precision, recall, F1 and support (and rows "predicted" with `count_predicted`) from its
    counts of right predictions, predictions and true rows; and macro-F1 over the labels present in the truth
    or the predictions. A label never predicted (never present) has precision (recall) 0, as in scikit-learn."""
    n = len(labels)
    hits = np.asarray(hits, np.float64)
    precision = np.divide(hits, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(n), where=denominator > 0)
    present = (support > 0) | (predicted > 0)
    per_label = {}
    for i, label in enumerate(labels):
        per_label[label] = {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                            "support": int(support[i])}  # fmt: skip
        if count_predicted:
            per_label[label]["predicted"] = int(predicted[i])
    return per_label, float(f1[present].mean()) if present.any() else 0.0


def classification_report(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion triples
    [true label, predicted label, count] (non-zero cells only), for `truth` and `predicted` label indices."""
    n = len(labels)
    truth = np.asarray(truth, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    tp = np.bincount(truth[truth == predicted], minlength=n)
    per_class, macro_f1 = label_scores(labels, tp, np.bincount(predicted, minlength=n), np.bincount(truth, minlength=n))
    total = len(truth)
    true_index, predicted_index, counts = confusion_counts(truth, predicted, n)
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": macro_f1,
        "per_class": per_class,
        "labels": list(labels),
        "confusion": [
            [labels[t], labels[p], c]
            for t, p, c in zip(true_index.tolist(), predicted_index.tolist(), counts.tolist(), strict=True)
        ],
    }


def dense_confusion(report: dict[str, Any]) -> list[list[int]]:
    """The full confusion grid of a report (rows: true label, columns: predicted, in `labels` order).
    Only for at most DENSE_LABELS labels: the caller checks."""
    labels = report["labels"]
    assert len(labels) <= DENSE_LABELS, "dense_confusion on a label set too large for a grid"
    index = {label: i for i, label in enumerate(labels)}
    grid = [[0] * len(labels) for _ in labels]
    for true, predicted, count in report["confusion"]:
        grid[index[true]][index[predicted]] = count
    return grid


def most_confused(report: dict[str, Any], limit: int) -> list[tuple[str, str, int, float]]:
    """The `limit` largest off-diagonal cells: (true label, predicted label, count, share of the true
    label's rows), largest count first (ties: the larger share, then label order)."""
    support = {label: c["support"] for label, c in report["per_class"].items()}
    pairs = [(t, p, c, c / support[t]) for t, p, c in report["confusion"] if t != p]
    pairs.sort(key=lambda x: (-x[2], -x[3]))
    return pairs[:limit]
