"""Classification metrics from label indices: accuracy, macro-F1, per-class P/R/F1, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_report(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, Any]:
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)  # rows: true label, columns: predicted label
    np.add.at(confusion, (truth, predicted), 1)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    # A class never predicted (or never present) has precision (recall) 0 by convention, as in scikit-learn.
    precision = np.divide(tp, predicted_count, out=np.zeros(n), where=predicted_count > 0)
    recall = np.divide(tp, support, out=np.zeros(n), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(n), where=denominator > 0)
    total = int(confusion.sum())
    # Averaged over labels that occur in the truth or the predictions, as scikit-learn does.
    present = (support > 0) | (predicted_count > 0)
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": confusion.tolist(),
    }
