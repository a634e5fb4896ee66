"""Scores of predicted probabilities beyond the confusion matrix: calibration (reliability bins and the
expected calibration error) and, for two classes, the ROC and precision-recall curves, their areas and a
threshold table. numpy only; ties between scores are handled as one step, as scikit-learn does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15  # equal-width bins of the top probability, as Guo et al. (2017) and most reports use


@dataclass
class Reliability:
    """Equal-width bins of the top probability: how often the prediction was right in each."""

    edges: np.ndarray  # [bins + 1], 0 .. 1
    count: np.ndarray  # [bins] predictions whose top probability falls in the bin
    confidence: np.ndarray  # [bins] their mean top probability (nan for an empty bin)
    accuracy: np.ndarray  # [bins] the share of them that was right (nan for an empty bin)
    ece: float  # sum over bins of count/total * |accuracy - confidence|


def reliability(confidence: np.ndarray, correct: np.ndarray, *, bins: int = ECE_BINS) -> Reliability:
    """Reliability bins and the expected calibration error of top probabilities `confidence` ([n]) whose
    predictions were `correct` ([n] bools). Bins are (lo, hi], the first [0, hi]."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / count
    filled = count > 0
    total = max(int(count.sum()), 1)
    ece = float(np.sum(count[filled] / total * np.abs(accuracy[filled] - mean_confidence[filled])))
    return Reliability(edges, count, mean_confidence, accuracy, ece)


@dataclass
class BinaryCurves:
    """ROC and precision-recall curves of one class's probability, swept from the highest score down."""

    thresholds: np.ndarray  # [k] distinct scores, descending: "positive" means score >= threshold
    true_positives: np.ndarray  # [k]
    false_positives: np.ndarray  # [k]
    positives: int
    negatives: int

    @property
    def tpr(self) -> np.ndarray:
        """Recall; ROC's y axis, starting at (0, 0)."""
        return np.concatenate([[0.0], self.true_positives / max(self.positives, 1)])

    @property
    def fpr(self) -> np.ndarray:
        return np.concatenate([[0.0], self.false_positives / max(self.negatives, 1)])

    @property
    def precision(self) -> np.ndarray:
        return self.true_positives / (self.true_positives + self.false_positives)

    @property
    def recall(self) -> np.ndarray:
        return self.true_positives / max(self.positives, 1)

    @property
    def roc_auc(self) -> float:
        """Area under the ROC curve (trapezoids): the chance a random positive outscores a random negative,
        ties counting half. nan without both classes."""
        if not self.positives or not self.negatives:
            return float("nan")
        fpr, tpr = self.fpr, self.tpr
        return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))

    @property
    def average_precision(self) -> float:
        """The area under the precision-recall curve as a step function (no optimistic interpolation):
        the sum over thresholds of precision times the recall gained there. nan without positives."""
        if not self.positives:
            return float("nan")
        recall = np.concatenate([[0.0], self.recall])
        return float(np.sum(np.diff(recall) * self.precision))


def binary_curves(scores: np.ndarray, positive: np.ndarray) -> BinaryCurves:
    """Curves of `scores` ([n], higher: more likely positive) against `positive` ([n] bools)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # The last row of each run of equal scores: a threshold lets all of them through or none.
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1] if len(scores) else np.zeros(0, np.int64)
    true_positives = np.cumsum(positive)[last].astype(np.float64)
    false_positives = (last + 1) - true_positives
    n_positive = int(positive.sum())
    return BinaryCurves(scores[last], true_positives, false_positives, n_positive, len(positive) - n_positive)


def threshold_table(scores: np.ndarray, positive: np.ndarray, thresholds: list[float]) -> list[dict[str, float]]:
    """Precision, recall, F1 and false-positive rate when "positive" means score >= each threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    rows = []
    for threshold in thresholds:
        flagged = scores >= threshold
        tp = int(np.sum(flagged & positive))
        fp = int(np.sum(flagged & ~positive))
        fn = int(np.sum(~flagged & positive))
        negatives = int(np.sum(~positive))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        rows.append({
            "threshold": float(threshold),
            "flagged": tp + fp,
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "false_positive_rate": fp / negatives if negatives else 0.0,
        })  # fmt: skip
    return rows
