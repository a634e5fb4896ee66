"""`report` on a multi-label model: the page of lstm_cli.report with a multi-label model's metrics (evaluate's,
lstm_cli.predict.evaluate_multi_label), the thresholds in use and how they were chosen, calibration of every
(row, label) probability, and the worst errors shown as predicted against true label sets, explained."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_cli.report import (
    ERRORS,
    _chart,
    _highlighted,
    _model_card,
    _num,
    _pct,
    _table,
    _training,
    e,
    page,
    summary_cards,
)


@dataclass
class MultiLabelInput:
    """Everything the page shows; `build` gathers it from a model and data, tests may fill it by hand."""

    labels: list[str]
    texts: list[str]
    truth: np.ndarray  # [rows, labels] 0/1
    probabilities: np.ndarray  # [rows, labels]
    thresholds: np.ndarray  # [labels], those in use
    evaluation: dict[str, Any]  # predict.evaluate_multi_label's report
    metadata: dict[str, Any]  # the model's metadata.json
    explanations: dict[int, Any] = field(default_factory=dict)  # row -> explain.Explanation of its wrongest label
    overridden: float | None = None  # --threshold, when it replaced the saved thresholds
    created: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    @property
    def chosen(self) -> np.ndarray:
        from lstm_cli.multilabel import decide

        return decide(self.probabilities, self.thresholds)


def build(predictor, data, *, threshold: float | None = None, errors: int = ERRORS,
          explain: Callable | None = None) -> str:  # fmt: skip
    """The HTML page for a multi-label `predictor` on `data` (lstm_cli.multilabel.LabeledSets), at `threshold`
    for every label (default: the saved thresholds). `explain(predictor, text, label)` -> explain.Explanation
    of that label (default: explain's occlusion)."""
    from lstm_cli import explain as explaining
    from lstm_cli.data import clean_text
    from lstm_cli.multilabel import targets
    from lstm_cli.predict import evaluate_multi_label, multi_label_probabilities
    from lstm_cli.report import require_matplotlib

    require_matplotlib()
    probabilities = multi_label_probabilities(predictor, data.texts)
    evaluation = evaluate_multi_label(predictor, data, thresholds=threshold, probabilities=probabilities)
    thresholds = np.array(evaluation["thresholds"], np.float32)
    report = MultiLabelInput(list(predictor.labels), data.texts, targets(data.labels, predictor.labels),
                             probabilities, thresholds, evaluation, predictor.metadata,
                             overridden=threshold)  # fmt: skip
    explain = explain or (lambda p, text, label: explaining.occlusion(p, text, label=label))
    for row in worst_errors(report.truth, probabilities, report.chosen, errors):
        label = report.labels[wrongest_label(report.truth[row], probabilities[row], report.chosen[row])]
        report.explanations[row] = explain(predictor, clean_text(data.texts[row]), label)
    return render(report)


def _wrong_confidence(truth: np.ndarray, probabilities: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """How sure each wrong decision was (a label shown but not true: its probability; true but not shown: one
    minus it); 0 where the decision was right. Same shape as the inputs."""
    truth = np.asarray(truth) > 0
    sure = np.where(chosen, probabilities, 1.0 - np.asarray(probabilities, np.float64))
    return np.where(chosen != truth, sure, 0.0)


def worst_errors(truth: np.ndarray, probabilities: np.ndarray, chosen: np.ndarray, k: int) -> list[int]:
    """Rows whose predicted label set is not their true one, the surest wrong decision first, at most `k`."""
    confidence = _wrong_confidence(truth, probabilities, chosen)
    wrong = np.flatnonzero((chosen != (np.asarray(truth) > 0)).any(axis=1))
    surest = confidence[wrong].max(axis=1) if len(wrong) else np.zeros(0)
    return [int(i) for i in wrong[np.argsort(-surest, kind="stable")[:k]]]


def wrongest_label(truth: np.ndarray, probabilities: np.ndarray, chosen: np.ndarray) -> int:
    """The label of a row's surest wrong decision (arrays of one row)."""
    return int(_wrong_confidence(truth[None], probabilities[None], chosen[None])[0].argmax())


def majority_set(truth: np.ndarray, labels: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The most frequent true label set (ties: the first seen), and the metrics of always predicting it."""
    from lstm_cli.multilabel import report

    rows = [tuple(np.flatnonzero(row).tolist()) for row in np.asarray(truth) > 0]
    common = Counter(rows).most_common(1)[0][0] if rows else ()
    chosen = np.zeros(np.shape(truth), bool)
    chosen[:, list(common)] = True
    return [labels[i] for i in common], report(truth, chosen, labels)


# ---------------------------------------------------------------- the page


def render(report: MultiLabelInput) -> str:
    from lstm_cli.report import require_matplotlib

    require_matplotlib()
    return page(report, [
        ("summary", "Summary", _summary(report)),
        ("per-label", "Per label", _per_label(report)),
        ("thresholds", "Thresholds", _thresholds(report)),
        ("calibration", "Calibration", _calibration(report)),
        ("training", "Training", _training(report, metric="micro_f1", best_means="the best validation micro-F1")),
        ("errors", "Worst errors", _errors(report)),
        ("model-card", "Model card", _model_card(report)),
    ])  # fmt: skip


def _set(labels: list[str]) -> str:
    return "{" + ", ".join(e(x) for x in labels) + "}" if labels else "no label"


def _summary(report: MultiLabelInput) -> str:
    ev = report.evaluation
    common, baseline = majority_set(report.truth, report.labels)
    cards = [("micro-F1", _num(ev["micro_f1"]), f"baseline {_num(baseline['micro_f1'])}"),
             ("macro-F1", _num(ev["macro_f1"]), f"baseline {_num(baseline['macro_f1'])}"),
             ("subset accuracy", _pct(ev["subset_accuracy"]), f"baseline {_pct(baseline['subset_accuracy'])}"),
             ("hamming loss", _num(ev["hamming_loss"]), f"baseline {_num(baseline['hamming_loss'])}"),
             ("thresholds", _threshold_range(report.thresholds), _mode(report)),
             ("rows", f"{ev['rows']['evaluated']:,}", f"{len(report.labels):,} labels")]  # fmt: skip
    baseline = (
        f"Baseline: always predicting {_set(common)}, the most frequent label set in this data. Subset accuracy: "
        "the share of rows whose predicted set is exactly the true one; hamming loss: the share of (row, label) "
        "decisions that are wrong (lower is better)."
    )
    unknown = "have labels the model was not trained on; those labels are left out of their sets"
    return summary_cards(cards, [baseline], ev, unknown=unknown)


def _threshold_range(thresholds: np.ndarray) -> str:
    low, high = float(np.min(thresholds)), float(np.max(thresholds))
    return f"{low:g}" if low == high else f"{low:g}–{high:g}"


def _mode(report: MultiLabelInput) -> str:
    if report.overridden is not None:
        return "--threshold, for every label"
    mode = (report.metadata.get("multi_label") or {}).get("mode")
    return {"global": "one for every label", "per_label": "one per label"}.get(mode, "the default, 0.5")


def _per_label(report: MultiLabelInput) -> str:
    from lstm_cli import charts

    per_class = report.evaluation["per_class"]
    rows = [[e(label), f"{float(t):g}", _num(c["precision"]), _num(c["recall"]), _num(c["f1"]), f"{c['support']:,}",
             f"{c['predicted']:,}"]
            for label, t, c in ((x, t, per_class[x]) for x, t in zip(report.labels, report.thresholds, strict=True))
            ]  # fmt: skip
    return (
        _chart(charts.per_class_bars(report.labels, per_class))
        + _table(["label", "threshold", "precision", "recall", "F1", "support", "predicted"], rows)
        + '<p class="note">A label is predicted when its probability is at least its threshold. Support: the rows '
        "that have the label; predicted: the rows it was predicted for.</p>"
    )


def _thresholds(report: MultiLabelInput) -> str:
    from lstm_cli import charts
    from lstm_cli.multilabel import sweep

    section = report.metadata.get("multi_label") or {}
    cross = section.get("cross_validated_micro_f1") or {}
    rows = section.get("validation_rows", 0)
    if report.overridden is not None:
        how = (f"<b>--threshold {report.overridden:g}</b> replaces, for every label, the thresholds the model was "
               f"saved with ({e(_saved(section))}).")  # fmt: skip
    elif section.get("mode") in ("global", "per_label"):
        chosen, other = ("one threshold per label", "one for every label") if section["mode"] == "per_label" else (
            "one threshold for every label", "one per label")  # fmt: skip
        mine, theirs = (cross.get("per_label"), cross.get("global"))[:: 1 if section["mode"] == "per_label" else -1]
        how = (f"Training chose <b>{chosen}</b> on its {rows:,} validation rows: its micro-F1 on rows it was not "
               f"fitted on (two-fold cross-validation) was {_num(_float(mine))}, against {_num(_float(theirs))} with "
               f"{other}. Then fitted on all of them: validation micro-F1 "
               f"{_num(_float(section.get('validation_micro_f1')))}.")  # fmt: skip
    else:
        how = "The model had no validation rows with labels to choose thresholds on: 0.5 for every label."
    curve = sweep(report.probabilities, report.truth)
    best = int(np.argmax(curve["f1"]))
    used = float(report.thresholds[0]) if np.all(report.thresholds == report.thresholds[0]) else None
    return (
        f'<p class="note">{how}</p>'
        + _chart(
            charts.threshold_sweep(curve["threshold"], curve["precision"], curve["recall"], curve["f1"], used=used)
        )  # fmt: skip
        + f'<p class="note">On this data, with one threshold for every label: the best micro-F1 is '
        f"{_num(float(curve['f1'][best]))}, at {float(curve['threshold'][best]):g}"
        + (
            f"; at the threshold in use, {_num(report.evaluation['micro_f1'])}."
            if used is not None
            else f"; the per-label thresholds in use give {_num(report.evaluation['micro_f1'])}."
        )  # fmt: skip
        + " Choosing a threshold on test data overstates how well it does on new data.</p>"
    )


def _saved(section: dict[str, Any]) -> str:
    values = section.get("thresholds") or []
    kind = {"global": "one for every label", "per_label": "one per label"}.get(section.get("mode"), "the default")
    return f"{kind}: {_threshold_range(np.array(values))}" if values else kind


def _float(value) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _calibration(report: MultiLabelInput) -> str:
    from lstm_cli import charts
    from lstm_cli.curves import ECE_BINS, reliability

    bins = reliability(report.probabilities.ravel(), report.truth.ravel() > 0)
    return (
        f'<p class="note">Every label\'s probability on every row, grouped into {ECE_BINS} equal-width bins. A '
        "calibrated model's label of probability p is true a share p of the time (bars on the diagonal). The "
        f"expected calibration error is the pairs-weighted mean gap between the two: <b>{bins.ece:.3f}</b> (most "
        "pairs are labels a row does not have, near 0).</p>"
        + _chart(charts.reliability_diagram(bins, what=("share true", "label probability", "(row, label) pairs")))
    )


def _labels_shown(report: MultiLabelInput, row: int) -> str:
    """The row's predicted and true sets, each label with its probability, most probable first: a label shown
    but not true marked "extra", a true one not shown "missed"."""
    p, truth, chosen = report.probabilities[row], report.truth[row] > 0, report.chosen[row]
    order = np.argsort(-p, kind="stable")

    def one(i: int) -> str:
        mark = "fp" if chosen[i] and not truth[i] else "fn" if truth[i] and not chosen[i] else "ok"
        return f'<b class="{mark}">{e(report.labels[i])}</b> {p[i]:.1%}'

    predicted = ", ".join(one(i) for i in order if chosen[i]) or "no label"
    true = ", ".join(one(i) for i in order if truth[i]) or "no label"
    return f"predicted {predicted} &middot; true {true}"


def _errors(report: MultiLabelInput) -> str:
    wrong = int((report.chosen != (report.truth > 0)).any(axis=1).sum())
    if not report.explanations:
        if wrong:
            return f'<p class="note">{wrong:,} rows got a wrong label set; none is shown (--show-errors 0).</p>'
        return '<p class="note">No errors: every row got exactly its label set.</p>'
    unit = getattr(next(iter(report.explanations.values())), "unit", "log-odds")
    legend = (
        f'<p class="note legend">{wrong:,} rows got a wrong label set; these are those whose wrong decision was '
        'surest: a label shown though not true (<b class="fp">extra</b>, by its probability) or true though not '
        'shown (<b class="fn">missed</b>, by one minus it). Each is explained for that label by occlusion (its '
        f"{e(unit)} lost when a token is removed): tokens that "
        '<span style="background:rgba(245,133,24,.7)">raised it</span> or '
        '<span style="background:rgba(76,120,168,.6)">lowered it</span>, stronger for more.</p>'
    )
    blocks = []
    for row, explanation in report.explanations.items():
        k = report.labels.index(explanation.label)
        mark, why = ("fp", "extra") if report.chosen[row, k] else ("fn", "missed")
        head = (f'{_labels_shown(report, row)} &middot; explained: <b class="{mark}">{e(explanation.label)}</b> '
                f"({why})")  # fmt: skip
        blocks.append(f'<div class="error"><div class="head">{head}</div>'
                      f'<div class="text">{_highlighted(explanation)}</div></div>')  # fmt: skip
    return legend + "\n".join(blocks)
