"""`report`'s core: one self-contained HTML page about a model on labeled data (metrics beside a baseline,
per-class scores, confusions, calibration, ROC/PR for two classes, training curves, the most confident
errors explained, a model card). Charts are inline SVG, CSS is inline, nothing is loaded at view time; every
string from the user (labels, texts, paths, settings) is HTML-escaped."""

from __future__ import annotations

import datetime
import html
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli import __version__
from lstm_cli.errors import LstmCliError, UsageError

ERRORS = 10  # most confident errors shown, each explained
MANY_CLASSES = 15  # past this, the confusion view is the most-confused pairs and the classes in them
CONFUSED_PAIRS = 20
TEXT_CHARS = 1_500  # an error's text is cut here on the page
THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
GENERATOR = "lstm-cli report"  # <meta name="generator">: how `report -o` knows a file it may replace


class MissingDependency(LstmCliError):
    """An optional dependency the command needs is not installed."""


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "the report draws its charts with matplotlib, which is not installed: pip install 'lstm-cli[report]'"
        ) from None


@dataclass
class ReportInput:
    """Everything the page shows; `build` gathers it from a model and data, tests may fill it by hand."""

    labels: list[str]
    texts: list[str]  # the evaluated rows (labels the model knows)
    truth: np.ndarray  # [rows] label indices
    probabilities: np.ndarray  # [rows, labels]
    evaluation: dict[str, Any]  # predict.evaluate's report
    metadata: dict[str, Any]  # the model's metadata.json
    explanations: dict[int, Any] = field(default_factory=dict)  # row -> explain.Explanation of its prediction
    created: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))


def build(predictor, data, *, errors: int = ERRORS, explain: Callable | None = None) -> str:
    """The HTML page for `predictor` (predict.Predictor) on `data` (data.LabeledData). `explain(predictor,
    text)` -> explain.Explanation of the predicted label (default: explain's occlusion)."""
    require_matplotlib()
    from lstm_cli import explain as explaining
    from lstm_cli.data import clean_text
    from lstm_cli.predict import evaluate, score

    scored = score(predictor, data, keep_probabilities=True)
    evaluation = evaluate(predictor, data, scored=scored)
    explain = explain or (lambda p, text: explaining.occlusion(p, text))
    rows = confident_errors(scored.truth, scored.probabilities, errors)
    explanations = {i: explain(predictor, clean_text(scored.texts[i])) for i in rows}
    return render(ReportInput(list(predictor.labels), scored.texts, scored.truth, scored.probabilities, evaluation,
                              predictor.metadata, explanations))  # fmt: skip


def confident_errors(truth: np.ndarray, probabilities: np.ndarray, k: int) -> list[int]:
    """Rows predicted wrongly, most confident first, at most `k`."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    top = probabilities[wrong, predicted[wrong]]
    return [int(i) for i in wrong[np.argsort(-top, kind="stable")[:k]]]


# ---------------------------------------------------------------- the page


def e(value: object) -> str:
    """`value` for HTML text or an attribute: escaped, control characters written as escapes."""
    from lstm_cli.render import shown

    return html.escape(shown(str(value)), quote=True)


def render(report: ReportInput) -> str:
    require_matplotlib()
    sections = [
        ("summary", "Summary", _summary(report)),
        ("per-class", "Per class", _per_class(report)),
        ("confusion", "Confusions", _confusion(report)),
        ("calibration", "Calibration", _calibration(report)),
    ]
    if len(report.labels) == 2:
        sections.append(("two-classes", "ROC and precision-recall", _two_classes(report)))
    sections += [
        ("training", "Training", _training(report)),
        ("errors", "Most confident errors", _errors(report)),
        ("model-card", "Model card", _model_card(report)),
    ]
    return page(report, sections)


def page(report, sections: list[tuple[str, str, str]]) -> str:
    """The whole HTML document: a header naming `report`'s model and data, a link to each (id, title, content)
    section, then the sections."""
    body = "\n".join(
        f'<section id="{key}">\n<h2>{title}</h2>\n{content}\n</section>' for key, title, content in sections
    )
    model = report.evaluation.get("model", "")
    data = report.evaluation.get("data", {}).get("path", "")
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{GENERATOR}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(model)} on {e(data)}: lstm-cli report</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>Model report</h1>
<p class="sub"><b>{e(model)}</b> on <b>{e(data)}</b> &middot; {report.created:%Y-%m-%d %H:%M} UTC &middot;
lstm-cli {e(__version__)}</p>
<nav>{" &middot; ".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)}</nav>
</header>
{body}
</body>
</html>
"""
    return document.encode("utf-8", "replace").decode("utf-8")  # text read with surrogate escapes: '?', not a crash


CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1b1b1b;
  background: #fff; max-width: 1000px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 10px; padding-bottom: 4px; border-bottom: 2px solid #4c78a8; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: #555; margin: 0 0 6px; overflow-wrap: anywhere; }
nav { margin: 0 0 22px; font-size: 13px; }
nav a { color: #2f5d8a; text-decoration: none; }
section { margin: 0 0 30px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e3e3e3; text-align: right; vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; }
td.l, th.l { text-align: left; overflow-wrap: anywhere; max-width: 420px; }
tr.mark td { font-weight: 600; background: #fff6dc; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 10px; }
.card { border: 1px solid #d7dde5; border-radius: 6px; padding: 8px 14px; min-width: 140px; }
.card .v { font-size: 24px; font-weight: 600; }
.card .b { color: #555; font-size: 12px; }
.chart svg { max-width: 100%; height: auto; display: block; }
.note { color: #444; }
.error { border-left: 4px solid #e45756; padding: 4px 12px; margin: 0 0 14px; }
.error .head { font-size: 13px; color: #333; margin-bottom: 3px; overflow-wrap: anywhere; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 14px; }
.tok { border-radius: 3px; padding: 0 1px; }
.legend span { padding: 0 4px; border-radius: 3px; }
b.fp { color: #c0392b; }
b.fn { color: #8a5a00; text-decoration: underline dashed; }
dl.card-list { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
dl.card-list dt { font-weight: 600; }
dl.card-list dd { margin: 0; overflow-wrap: anywhere; }
code { font: 12px/1.4 "DejaVu Sans Mono", ui-monospace, monospace; }
* { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
@media print {
  nav { display: none; }
  body { max-width: none; padding: 0; font-size: 11pt; }
  @page { margin: 14mm; }
  h2, h3 { break-after: avoid; }
  .chart, table, .error, .cards { break-inside: avoid; }
}
"""


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{x:.1%}"  # x != x: nan


def _num(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _table(header: list[str], rows: list[list[str]], *, left: int = 1, marked: set[int] = frozenset()) -> str:
    """An HTML table of already-escaped cells; the first `left` columns left-aligned."""
    head = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f'<tr class="mark">{cells}</tr>' if r in marked else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _chart(svg: str) -> str:
    return f'<div class="chart">{svg}</div>'


def majority_baseline(truth: np.ndarray, labels: list[str]) -> tuple[str, dict[str, Any]]:
    """The most frequent true label, and the metrics of always predicting it."""
    from lstm_cli.metrics import classification_report

    majority = int(np.bincount(truth, minlength=len(labels)).argmax())
    return labels[majority], classification_report(truth, np.full_like(truth, majority), labels)


def _summary(report: ReportInput) -> str:
    from lstm_cli.curves import reliability

    ev = report.evaluation
    majority, baseline = majority_baseline(report.truth, report.labels)
    predicted = report.probabilities.argmax(axis=1)
    ece = reliability(report.probabilities.max(axis=1), predicted == report.truth).ece
    cards = [("accuracy", _pct(ev["accuracy"]), f"baseline {_pct(baseline['accuracy'])}"),
             ("macro-F1", _num(ev["macro_f1"]), f"baseline {_num(baseline['macro_f1'])}"),
             ("calibration error", _num(ece), "ECE, 15 bins" + _uncalibrated(report, ", before calibration {}")),
             ("rows", f"{ev['rows']['evaluated']:,}", f"{len(report.labels):,} labels")]  # fmt: skip
    if len(report.labels) == 2:
        from lstm_cli.curves import binary_curves

        positive = _positive(report)
        curves = binary_curves(report.probabilities[:, positive], report.truth == positive)
        cards.insert(2, ("ROC AUC", _num(curves.roc_auc), f"positive: {e(report.labels[positive])}"))
    baseline = f"Baseline: always predicting <b>{e(majority)}</b>, the most frequent label in this data."
    return summary_cards(cards, [baseline], ev, unknown="have labels the model was not trained on and are left out")


def summary_cards(cards: list[tuple[str, str, str]], notes: list[str], evaluation: dict[str, Any], *,
                  unknown: str) -> str:  # fmt: skip
    """The summary's cards (name, value, note; HTML) and notes below them: `notes`, then the rows the metrics
    left out (`unknown` says what became of rows with labels the model does not know) or skipped."""
    html_cards = "".join(f'<div class="card"><div>{name}</div><div class="v">{value}</div><div class="b">{note}</div>'
                         "</div>" for name, value, note in cards)  # fmt: skip
    notes = list(notes)
    rows = evaluation["rows"]
    if rows["unknown_label"]:
        listed = ", ".join(f"{e(label)} ({n:,})" for label, n in sorted(evaluation["unknown_labels"].items())[:10])
        notes.append(f"{rows['unknown_label']:,} rows {unknown}: {listed}.")
    if rows["skipped"]:
        notes.append(f"{sum(rows['skipped'].values()):,} malformed or empty rows were skipped.")
    return f'<div class="cards">{html_cards}</div>\n' + "".join(f'<p class="note">{n}</p>' for n in notes)


def _per_class(report: ReportInput) -> str:
    from lstm_cli import charts

    per_class = report.evaluation["per_class"]
    rows = [[e(label), _num(c["precision"]), _num(c["recall"]), _num(c["f1"]), f"{c['support']:,}"]
            for label, c in ((label, per_class[label]) for label in report.labels)]  # fmt: skip
    return _chart(charts.per_class_bars(report.labels, per_class)) + _table(
        ["label", "precision", "recall", "F1", "support"], rows
    )


def _grid(evaluation: dict[str, Any], labels: list[str]) -> np.ndarray:
    """The confusion counts among `labels` (rows: true, columns: predicted), from the report's non-zero cells."""
    index = {label: i for i, label in enumerate(labels)}
    grid = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for true, predicted, count in evaluation["confusion"]:
        if true in index and predicted in index:
            grid[index[true], index[predicted]] = count
    return grid


def _confusion(report: ReportInput) -> str:
    from lstm_cli import charts
    from lstm_cli.metrics import most_confused

    labels, evaluation = report.labels, report.evaluation
    if len(labels) <= MANY_CLASSES:
        return _chart(charts.confusion_heatmap(labels, _grid(evaluation, labels)))
    pairs = most_confused(evaluation, CONFUSED_PAIRS)
    if not pairs:
        return '<p class="note">No confusions: every row was predicted right.</p>'
    rows = [[e(true), e(predicted), f"{count:,}", _pct(share)] for true, predicted, count, share in pairs]
    position = {label: i for i, label in enumerate(labels)}
    involved: list[str] = []
    for true, predicted, _, _ in pairs:
        involved += [x for x in (true, predicted) if x not in involved]
    involved = sorted(involved[:MANY_CLASSES], key=position.get)
    support = [evaluation["per_class"][label]["support"] for label in involved]
    heatmap = charts.confusion_heatmap(
        involved, _grid(evaluation, involved), support=support, title=f"the {len(involved)} labels in those pairs"
    )
    return (
        f'<p class="note">{len(labels):,} labels: the {len(pairs)} most-confused pairs, then the confusion matrix '
        "of the labels in them (the colour is the share of the true label's rows).</p>"
        + _table(["true", "predicted as", "rows", "share of the true label"], rows, left=2)
        + _chart(heatmap)
    )


def _calibration(report: ReportInput) -> str:
    from lstm_cli import charts
    from lstm_cli.curves import ECE_BINS, reliability

    predicted = report.probabilities.argmax(axis=1)
    bins = reliability(report.probabilities.max(axis=1), predicted == report.truth)
    return (
        f'<p class="note">Predictions grouped into {ECE_BINS} equal-width bins of their top probability. A '
        "calibrated model is right as often as it is confident (bars on the diagonal). The expected calibration "
        f"error is the rows-weighted mean gap between the two: <b>{bins.ece:.3f}</b>"
        + _uncalibrated(report, " ({} before the temperature training fitted, " + _temperature(report) + ")")
        + ".</p>"
        + _chart(charts.reliability_diagram(bins))
    )


def _temperature(report: ReportInput) -> str:
    calibration = report.evaluation.get("calibration") or {}
    return f"T = {calibration.get('temperature', 1.0):.3f}"


def _uncalibrated(report: ReportInput, template: str) -> str:
    """`template` filled with the expected calibration error before calibration, or "" for a model without a
    temperature (lstm_cli.calibration)."""
    calibration = report.evaluation.get("calibration") or {}
    if calibration.get("temperature", 1.0) == 1.0 or "ece_uncalibrated" not in calibration:
        return ""
    return template.format(_num(calibration["ece_uncalibrated"]))


def _positive(report: ReportInput) -> int:
    """The class whose probability the two-class curves sweep: the rarer one in the truth (the second on a tie)."""
    counts = np.bincount(report.truth, minlength=2)
    return 0 if counts[0] < counts[1] else 1


def _two_classes(report: ReportInput) -> str:
    from lstm_cli import charts
    from lstm_cli.curves import binary_curves, threshold_table

    positive = _positive(report)
    scores = report.probabilities[:, positive]
    is_positive = report.truth == positive
    curves = binary_curves(scores, is_positive)
    table = threshold_table(scores, is_positive, THRESHOLDS)
    rows = [[f"{r['threshold']:.2f}", f"{r['flagged']:,}", _num(r["precision"]), _num(r["recall"]), _num(r["f1"]),
             _num(r["false_positive_rate"])] for r in table]  # fmt: skip
    name = e(report.labels[positive])
    return (
        f'<p class="note">Positive class: <b>{name}</b> (the rarer label here). ROC AUC <b>{_num(curves.roc_auc)}'
        f"</b>, average precision (the area under the precision-recall curve) <b>{_num(curves.average_precision)}"
        "</b>; dashed: chance.</p>"
        + _chart(charts.roc_pr(curves))
        + f"<h3>Thresholds: predict {name} when its probability is at least</h3>"
        + _table(
            ["threshold", "flagged", "precision", "recall", "F1", "false-positive rate"],
            rows,
            marked={THRESHOLDS.index(0.5)},
        )  # fmt: skip
        + '<p class="note">Highlighted: 0.5, what predict and evaluate use with two classes.</p>'
    )


def _training(report, *, metric: str = "accuracy", best_means: str = "the lowest validation loss") -> str:
    """The training curves: loss and `metric` per epoch (training and validation, where the history has them)."""
    from lstm_cli import charts

    training = report.metadata.get("training", {})
    history = training.get("history") or []
    if not history:
        return '<p class="note">The model\'s metadata holds no training history.</p>'
    window = training.get("averaged_window")
    best = training.get("best_epoch")
    if isinstance(window, list) and len(window) == 2:
        kept = f"the mean of the weights of epochs {window[0]}-{window[1]} (weight averaging)"
    else:
        kept = f"epoch {e(best)}'s, {best_means}" if best else "the last epoch's"
        window = None
    seconds = training.get("seconds")
    rows = training.get("rows", {})
    note = (f"{len(history)} epochs on {rows.get('train', 0):,} training and {rows.get('validation', 0):,} "
            f"validation rows, {e(training.get('device', '?'))}, {e(seconds)} s. Weights kept: {kept}.")  # fmt: skip
    curves = charts.training_curves(history, best_epoch=best, window=window, metric=metric)
    return f'<p class="note">{note}</p>' + _chart(curves)


def _highlighted(explanation) -> str:
    """The text with each token's background showing its score: orange pushed towards the explained label,
    blue away, stronger for a larger share of the largest score."""
    text = explanation.text
    largest = max((abs(t.score) for t in explanation.tokens), default=0.0) or 1.0
    pieces, position = [], 0
    for t in explanation.tokens:
        if t.start >= TEXT_CHARS:
            break
        alpha = 0.12 + 0.78 * abs(t.score) / largest
        colour = f"rgba(245,133,24,{alpha:.2f})" if t.score >= 0 else f"rgba(76,120,168,{alpha:.2f})"
        pieces.append(html.escape(text[position : t.start]))
        pieces.append(f'<span class="tok" style="background:{colour}" title="{t.score:+.4f}">'
                      f"{html.escape(text[t.start : t.end])}</span>")  # fmt: skip
        position = t.end
    rest = text[position:TEXT_CHARS]
    pieces.append(html.escape(rest) + ("…" if len(text) > TEXT_CHARS else ""))
    return "".join(pieces)


def _errors(report: ReportInput) -> str:
    if not report.explanations:
        wrong = int(np.sum(report.probabilities.argmax(axis=1) != report.truth))
        if wrong:
            return f'<p class="note">{wrong:,} rows were predicted wrongly; none is shown (--show-errors 0).</p>'
        return '<p class="note">No errors: every row was predicted right.</p>'
    unit = getattr(next(iter(report.explanations.values())), "unit", "probability")
    legend = (
        '<p class="note legend">The rows predicted wrongly with the highest probability. Each token is shaded by '
        f"how much it pushed the prediction (occlusion: the {e(unit)} of the predicted label lost when the token is "
        'removed): <span style="background:rgba(245,133,24,.7)">towards the wrong label</span>, '
        '<span style="background:rgba(76,120,168,.6)">away from it</span>.</p>'
    )
    blocks = []
    for i, explanation in report.explanations.items():
        truth = report.labels[int(report.truth[i])]
        predicted = int(report.probabilities[i].argmax())
        head = (f"predicted <b>{e(report.labels[predicted])}</b> ({report.probabilities[i, predicted]:.1%}), "
                f"true <b>{e(truth)}</b> ({report.probabilities[i, report.truth[i]]:.1%})")  # fmt: skip
        blocks.append(f'<div class="error"><div class="head">{head}</div>'
                      f'<div class="text">{_highlighted(explanation)}</div></div>')  # fmt: skip
    return legend + "\n".join(blocks)


def _model_card(report: ReportInput) -> str:
    import matplotlib

    meta, ev = report.metadata, report.evaluation
    training = meta.get("training", {})
    trained_on = training.get("data", {})
    data = ev.get("data", {})
    rows = ev.get("rows", {})
    versions = dict(meta.get("versions", {}))
    config = meta.get("config", {})
    items = [
        ("model", f"<code>{e(ev.get('model', ''))}</code>"),
        ("model id", f"<code>{e(meta.get('id', '?'))}</code>, trained {e(meta.get('created_at', '?'))}"),
        ("evaluated on", f"<code>{e(data.get('path', ''))}</code>: {rows.get('read', 0):,} rows read, "
                         f"{rows.get('evaluated', 0):,} evaluated"),
        ("its sha256", f"<code>{e(data.get('sha256', ''))}</code>"),
        ("trained on", f"<code>{e(trained_on.get('path', '?'))}</code>: {e(trained_on.get('rows', '?'))} rows, "
                       f"sha256 <code>{e(trained_on.get('sha256', '?'))}</code>"),
        ("labels", f"{len(report.labels):,}: " + ", ".join(e(x) for x in report.labels[:40])
                   + (", …" if len(report.labels) > 40 else "")),
        ("size", f"{meta.get('parameters', 0):,} parameters, vocabulary of "
                 f"{meta.get('vectorizer', {}).get('vocabulary_size', 0):,} tokens"),
        ("settings", ", ".join(f"{e(k)}=<code>{e(v)}</code>" for k, v in config.items())),
        ("trained with", ", ".join(f"{e(k)} {e(v)}" for k, v in versions.items())),
        ("report by", f"lstm-cli {e(__version__)}, numpy {e(np.__version__)}, matplotlib "
                      f"{e(matplotlib.__version__)}, Python {e(platform.python_version())}, "
                      f"{report.created:%Y-%m-%d %H:%M:%S} UTC"),
    ]  # fmt: skip
    return '<dl class="card-list">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def check_output(path: Path) -> None:
    """Fail before any work when the page could not be written at `path`. lstm-cli replaces only a file it
    wrote (an earlier report, known by its generator tag) or an empty one."""
    if path.is_dir():  # misuse (exit 2), as for every -o
        raise UsageError(f"{path}: is a directory; give -o a file name such as {path / 'report.html'}")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory for -o; create it first")
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(2048)
        except OSError as err:
            raise LstmCliError(f"{path}: cannot read the existing file ({err.strerror})") from None
        if head and f'<meta name="generator" content="{GENERATOR}">'.encode() not in head:
            raise UsageError(f"{path}: exists and is not an lstm-cli report; choose another -o, or remove it first")


def write(path: Path, page: str) -> None:
    """Write the page at `path` atomically (a reader never sees half of it)."""
    from lstm_cli.atomic import replacing_file

    check_output(path)
    with replacing_file(path) as f:
        f.write(page)
