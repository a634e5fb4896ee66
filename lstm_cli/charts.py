"""The report's charts as inline SVG, drawn with matplotlib's SVG backend (imported only by `report`).

Text becomes glyph outlines (svg.fonttype "path"), so a chart looks the same in every browser and printer
with no font to load; labels are never read as mathtext (parse_math=False), so a '$' in a label stays one."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from lstm_cli.curves import BinaryCurves, Reliability

STYLE = {
    "svg.fonttype": "path",
    "svg.hashsalt": None,  # random ids: clip paths of several inline SVGs never collide
    "font.family": ["DejaVu Sans"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "figure.dpi": 100,
}
COLORS = {"precision": "#4c78a8", "recall": "#f58518", "f1": "#54a24b", "train": "#4c78a8", "val": "#e45756"}
LABEL_CHARS = 32  # longer labels are cut with an ellipsis on the charts (the tables show them whole)


def short(label: str, limit: int = LABEL_CHARS) -> str:
    label = " ".join(label.split()) or repr(label)  # one line; a blank label still shows something
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # drawn as boxes instead
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})  # laid out: constrained
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # no XML prologue or DOCTYPE inside HTML


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def per_class_bars(labels: Sequence[str], per_class: dict[str, dict[str, float]]) -> str:
    """Precision, recall and F1 per class, side by side; with many classes, F1 alone, worst first."""
    with matplotlib.rc_context(STYLE):
        many = len(labels) > 15
        order = sorted(labels, key=lambda x: per_class[x]["f1"]) if many else list(labels)
        fig = _figure(7.5, max(1.6, 0.19 * len(order) + 0.8) if many else max(1.8, 0.42 * len(order) + 0.9))
        ax = fig.add_subplot()
        y = np.arange(len(order))[::-1]
        metrics = ["f1"] if many else ["precision", "recall", "f1"]
        height = 0.8 / len(metrics)
        for k, metric in enumerate(metrics):
            values = [per_class[label][metric] for label in order]
            offset = (1 - k) * height if not many else 0
            ax.barh(y + offset, values, height=height * 0.92, color=COLORS[metric], label=metric.upper() if
                    metric == "f1" else metric)  # fmt: skip
        ax.set_yticks(y, [short(x) for x in order], parse_math=False)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.7, len(order) - 0.3)
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0, labelsize=7 if many else 9)
        if not many:
            ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncols=3, frameon=False)
        else:
            ax.set_xlabel("F1 (worst first)")
        return _svg(fig)


def confusion_heatmap(
    labels: Sequence[str], matrix: np.ndarray, *, support: Sequence[int] | None = None, title: str = ""
) -> str:
    """Rows: true label, columns: predicted; the number is the count, the colour its share of the true label's
    rows (`support`: each row's total, when the matrix shows only some of the labels)."""
    matrix = np.asarray(matrix)
    n = len(labels)
    with matplotlib.rc_context({**STYLE, "axes.grid": False}):
        side = min(9.0, max(3.2, 0.42 * n + 1.8))
        fig = _figure(side + 1.0, side)
        ax = fig.add_subplot()
        rows = matrix.sum(axis=1, keepdims=True) if support is None else np.asarray(support)[:, None]
        share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
        # Vector cells (not imshow's embedded bitmap): crisp when zoomed or printed.
        image = ax.pcolormesh(share, cmap="Blues", vmin=0, vmax=1, edgecolors="white", linewidth=0.5)
        ax.set_xlim(0, n)
        ax.set_ylim(n, 0)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if share[i, j] > 0.55 else "black"
                    size = 8 if n <= 10 else 6
                    ax.text(j + 0.5, i + 0.5, f"{matrix[i, j]:,}", ha="center", va="center", size=size, color=colour)
        names = [short(x, 24) for x in labels]
        ax.set_xticks(np.arange(n) + 0.5, names, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center",
                      rotation_mode="anchor", parse_math=False)  # fmt: skip
        ax.set_yticks(np.arange(n) + 0.5, names, parse_math=False)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if title:
            ax.set_title(title, parse_math=False)
        fig.colorbar(image, ax=ax, shrink=0.6, label="share of the true label's rows")
        return _svg(fig)


def reliability_diagram(bins: Reliability, *, what: tuple[str, str, str] = ("accuracy", "top probability", "rows")
                        ) -> str:  # fmt: skip
    """Accuracy against mean confidence per bin over the diagonal, and how many predictions each bin holds.
    `what`: the names of the share that was right, of the probability binned and of what is counted."""
    right, binned, counted = what
    with matplotlib.rc_context(STYLE):
        fig = _figure(4.6, 4.6)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        centers = (bins.edges[:-1] + bins.edges[1:]) / 2
        width = bins.edges[1] - bins.edges[0]
        filled = bins.count > 0
        top.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1, label="perfect calibration")
        top.bar(centers[filled], bins.accuracy[filled], width=width * 0.95, color=COLORS["precision"], alpha=0.85,
                label=f"{right} in the bin")  # fmt: skip
        # Each bin's mean confidence as a tick across its bar: the gap between the two is what ECE averages.
        left = centers[filled] - width * 0.475
        top.hlines(bins.confidence[filled], left, left + width * 0.95, color="#d62728", linewidth=2,
                   label="mean confidence in the bin")  # fmt: skip
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel(right)
        # Above the axes: inside, it would cover bars wherever the model is confident or not.
        top.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncols=2, frameon=False, fontsize=8)
        bottom.bar(centers, bins.count, width=width * 0.95, color="#999999")
        bottom.set_yscale("log" if bins.count.max(initial=0) > 50 * max(1, np.median(bins.count[filled])) else
                          "linear")  # fmt: skip
        bottom.set_ylabel(counted)
        bottom.set_xlabel(binned)
        return _svg(fig)


def roc_pr(curves: BinaryCurves) -> str:
    """The ROC curve and the precision-recall curve of the positive class's probability, side by side."""
    with matplotlib.rc_context(STYLE):
        fig = _figure(7.5, 3.5)
        roc, pr = fig.subplots(1, 2)
        roc.plot([0, 1], [0, 1], color="#888888", linestyle="--", linewidth=1)
        roc.plot(curves.fpr, curves.tpr, color=COLORS["precision"], linewidth=1.6, drawstyle="default")
        roc.set_title(f"ROC, AUC {curves.roc_auc:.3f}")
        roc.set_xlabel("false-positive rate")
        roc.set_ylabel("true-positive rate (recall)")
        recall = np.concatenate([[0.0], curves.recall])
        precision = np.concatenate([[curves.precision[0] if len(curves.precision) else 1.0], curves.precision])
        base = curves.positives / max(curves.positives + curves.negatives, 1)
        pr.axhline(base, color="#888888", linestyle="--", linewidth=1)
        pr.step(recall, precision, where="pre", color=COLORS["recall"], linewidth=1.6)
        pr.set_title(f"precision-recall, average precision {curves.average_precision:.3f}")
        pr.set_xlabel("recall")
        pr.set_ylabel("precision")
        for ax in (roc, pr):
            ax.set_xlim(0, 1.01)
            ax.set_ylim(0, 1.02)
        return _svg(fig)


def training_curves(history: list[dict[str, float]], *, best_epoch: int | None, window: list[int] | None,
                    metric: str = "accuracy") -> str:  # fmt: skip
    """Loss and `metric` per epoch (training and validation, those the history has); the kept weights marked."""
    epochs = np.arange(1, len(history) + 1)
    with matplotlib.rc_context(STYLE):
        fig = _figure(7.5, 3.0)
        axes = fig.subplots(1, 2)
        for ax, shown in zip(axes, ("loss", metric), strict=True):
            for prefix, name, color in (("", "training", COLORS["train"]), ("val_", "validation", COLORS["val"])):
                values = [h.get(prefix + shown, np.nan) for h in history]
                if not np.all(np.isnan(values)):
                    ax.plot(epochs, values, "o-", color=color, markersize=3, linewidth=1.4, label=name)
            if window:
                ax.axvspan(window[0] - 0.3, window[1] + 0.3, color="#54a24b", alpha=0.15, label="weights averaged")
            elif best_epoch:
                ax.axvline(best_epoch, color="#54a24b", linestyle=":", linewidth=1.4, label="weights kept")
            ax.set_xlabel("epoch")
            ax.set_title(shown.replace("_", "-"))
            ax.set_xticks(epochs if len(epochs) <= 20 else np.linspace(1, len(epochs), 10).round().astype(int))
            ax.legend(frameon=False, fontsize=8)
        return _svg(fig)


def threshold_sweep(grid: np.ndarray, precision: np.ndarray, recall: np.ndarray, f1: np.ndarray, *,
                    used: float | None) -> str:  # fmt: skip
    """Micro precision, recall and F1 of one threshold for every label, across thresholds; `used` marked."""
    with matplotlib.rc_context(STYLE):
        fig = _figure(6.0, 2.8)
        ax = fig.add_subplot()
        for values, metric in ((precision, "precision"), (recall, "recall"), (f1, "f1")):
            ax.plot(grid, values, color=COLORS[metric], linewidth=1.6, label=f"micro-{metric.upper()}" if
                    metric == "f1" else f"micro {metric}")  # fmt: skip
        if used is not None:
            ax.axvline(used, color="#333333", linestyle=":", linewidth=1.4, label=f"in use: {used:g}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("one threshold for every label")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncols=4, frameon=False, fontsize=8)
        return _svg(fig)
