"""How results look to people (rich, on stderr or stdout) and to scripts (prediction lines).

Whatever came from the user (labels, paths, column names, texts) reaches rich only as `Text`, never
as markup, and with its control characters written as escapes, so it is shown literally on one line.
rich is imported by the functions that build rich objects, not here: predict and explain writing plain
lines to a pipe never load it (a third of their start-up otherwise; tests/test_engine.py checks)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstm_cli.data import LabeledData, describe_skipped

if TYPE_CHECKING:
    from rich.text import Text

# tsv and label output: a backslash escape for each character that would end a field or a line, and
# for the backslash itself (PostgreSQL's COPY text format), so any label is one unambiguous field.
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# People: every control character (C0, DEL, C1: Unicode category Cc) written as an escape, the rest as is.
_SHOWN = {c: repr(chr(c))[1:-1] for c in [*range(0x20), *range(0x7F, 0xA0)]}


def tsv_field(value: str) -> str:
    """`value` as one field of a tsv/label output line: backslash, tab, newline and carriage return
    become the two characters \\\\, \\t, \\n and \\r."""
    return value.translate(_TSV_ESCAPES)


def shown(value: str) -> str:
    """`value` for people: control characters as escapes (\\n, \\x1b), so it prints literally on one line."""
    return value.translate(_SHOWN)


def literal(value: object, style: str = "") -> Text:
    """User-supplied `value` as rich Text: never parsed as markup or emoji codes."""
    from rich.text import Text

    return Text(shown(str(value)), style=style)


def warning(message: str) -> Text:
    from rich.text import Text

    return Text.assemble(("Warning:", "yellow"), " ", literal(message))


def reading_warnings(*datasets: LabeledData | None) -> list[str]:
    """What the readers noticed about how the files are read (a first row that looks like a header)."""
    return [message for d in datasets if d is not None for message in d.warnings]


def skipped_warnings(*datasets: LabeledData | None) -> list[str]:
    return [
        f"{d.path}: skipped {sum(d.skipped.values()):,} rows ({describe_skipped(d.skipped)})"
        for d in datasets
        if d is not None and d.skipped
    ]


def epoch_line(report) -> str:
    m = report.metrics
    parts = [f"epoch {report.epoch:>{len(str(report.epochs))}}/{report.epochs}"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_micro_f1"):
        if key in m:
            parts.append(f"{key} {m[key]:.4f}")
    parts.append(f"{report.seconds:.1f}s")
    return "  ".join(parts)


def _metrics_text(metrics: dict[str, float]) -> str:
    order = ("loss", "accuracy", "val_loss", "val_accuracy", "val_micro_f1")
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in order if k in metrics)


def calibration_text(section: dict[str, Any]) -> str:
    """A model's calibration in a few words: the temperature and the validation ECE it gave, or why none."""
    if section.get("method") != "temperature":
        return f"none ({section.get('reason')})"
    ece = section.get("validation_ece")
    ece = ece if isinstance(ece, dict) else {}

    def number(value: object, digits: int) -> str:  # the metadata is the user's file: shown, never trusted
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return f"{value:.{digits}f}" if ok else "?"

    bound = ", at the bound of the search" if section.get("at_bound") else ""
    return (f"temperature {number(section.get('temperature'), 3)}{bound}: validation ECE "
            f"{number(ece.get('before'), 4)} -> {number(ece.get('after'), 4)} on "
            f"{number(section.get('validation_rows'), 0)} rows")  # fmt: skip


def train_summary(result, model_dir: Path) -> Text:
    from rich.text import Text

    rows_per_second = result.train_rows * len(result.history) / max(result.seconds, 1e-9)
    labels = ", ".join(result.labels[:10]) + (" ..." if len(result.labels) > 10 else "")
    rows = [
        ("model", str(model_dir)),
        ("rows", f"{result.train_rows:,} train, {result.validation_rows:,} validation"),
        ("classes", f"{len(result.labels)}: {labels}"),
        ("vocabulary", f"{len(result.vocabulary):,} tokens"),
        ("parameters", f"{result.parameters:,}"),
        ("device", result.device.describe()),
        ("epochs", f"{len(result.history)} run, best {result.best_epoch}"),
        ("best", _metrics_text(result.best_metrics)),
        *(
            [
                (
                    "weights",
                    f"mean of epochs {_span(result.averaging.window)}, "
                    + (
                        f"val_micro_f1 {-result.averaging.val_loss:.4f}"
                        if getattr(result, "multi_label", None)
                        else f"val_loss {result.averaging.val_loss:.4f}"
                    ),
                )
            ]
            if result.averaging and result.averaging.window
            else []
        ),  # fmt: skip
        *([("calibration", calibration_text(result.calibration))] if result.calibration else []),
        ("wall time", f"{result.seconds:.1f}s ({rows_per_second:,.0f} rows/s)"),
    ]
    return Text("\n").join(Text.assemble((f"{key:<11}", "bold"), " ", literal(value)) for key, value in rows)


class TrialTable:
    """tune's table of trials on stderr, one row printed as each trial finishes."""

    def __init__(self, say, metric: str, *, multi_label: bool = False):
        self.say, self.metric, self.started, self.multi_label = say, metric, False, multi_label

    def row(self, trial, best: bool) -> None:
        from rich.text import Text

        from lstm_cli.tune import describe

        if not self.started:
            first = "micro_f1  macro_f1  subset_acc" if self.multi_label else "accuracy  macro_f1"
            self.say(Text(f"trial  {first}  epochs     time  settings", style="bold"))
            self.started = True
        mark = "*" if best else " "
        first = f"{trial.micro_f1:8.4f}  {trial.macro_f1:8.4f}  {trial.accuracy:10.4f}" if self.multi_label else (
            f"{trial.accuracy:8.4f}  {trial.macro_f1:8.4f}")  # fmt: skip
        self.say(Text.assemble(
            f"{trial.number:>4}{mark}  {first}  {trial.epochs:>6}  "
            f"{trial.seconds:>6.1f}s  ", literal(describe(trial.settings)),
            "  (budget ran out)" if trial.cut_by_budget else "",
        ))  # fmt: skip


def tune_summary(result, model_dir: Path) -> Text:
    from rich.text import Text

    best = result.trials[result.best_trial - 1]
    return Text.assemble(
        ("best", "bold"), f"        trial {best.number} of {len(result.trials)}: validation {result.metric} "
        f"{best.score(result.metric):.4f} in {result.seconds:.1f}s\n",
        ("model", "bold"), "       ", literal(str(model_dir)),
    )  # fmt: skip


def probability_values(probabilities) -> list | float:
    """Probabilities (any shape) as Python floats whose repr is the shortest decimal that reads back as the same
    float32: the digits the model's float32 output carries, no more (0.98764235, not 0.9876423478126526).
    tsv and JSON both print these (repr, json.dumps), so they agree digit for digit.

    Vectorised (predict's hot path; numpy's own shortest formatting, `astype(str)`, is 20x slower): for m = 0,
    1, 2, ... decimals, round to m decimals and keep the first that is the same float32. n / 10**m is the double
    nearest that decimal (10**m is exact up to 10**22, division rounds correctly), so its repr is the decimal."""
    import numpy as np

    given = np.asarray(probabilities, dtype=np.float32)
    flat = given.ravel()
    wide = flat.astype(np.float64)
    out = wide.copy()  # 0, 1, inf and nan as they are
    pending = np.flatnonzero(np.isfinite(wide) & (wide != 0))
    for m in range(23):
        if not pending.size:
            break
        scale = 10.0**m
        rounded = np.round(wide[pending] * scale) / scale
        same = rounded.astype(np.float32) == flat[pending]
        out[pending[same]] = rounded[same]
        pending = pending[~same]
    if pending.size:  # below about 1e-14: numpy's shortest digits, one at a time
        out[pending] = [float(text) for text in flat[pending].astype(str).tolist()]
    return out.reshape(given.shape).tolist()


def prediction_lines(
    batch, labels: list[str], output_format: str, k: int, *, all_probabilities: bool = False,
    abstain: tuple[float, str] | None = None,
) -> list[str]:  # fmt: skip
    """One output line per text of a `Predictions` batch (vectorised: this is predict's hot path).

    tsv and label: the `k` most probable labels (with their probabilities for tsv). json: one object with the
    label and its probability, "top" (the k most probable) when k > 1, and "probabilities" (every label, in the
    model's order) only with `all_probabilities`. `abstain`: (P, unknown label); a text whose top probability is
    below P (lstm_cli.abstain) has the unknown label in place of its label (the first one, with k > 1), its
    probabilities unchanged; json lines then say "abstained": true or false."""
    best, scores = batch.top(k)
    unsure = None
    if abstain is not None:
        from lstm_cli.abstain import abstains

        min_probability, unknown_label = abstain
        unsure = abstains(scores[:, 0], min_probability).tolist()
    if output_format == "json":
        scores = probability_values(scores)
        every = probability_values(batch.probabilities) if all_probabilities else None
        return [_json_line(text, row, s, every[i] if every else None, labels,
                           None if unsure is None else (unsure[i], unknown_label))
                for i, (text, row, s) in enumerate(zip(batch.texts, best.tolist(), scores, strict=True))]  # fmt: skip
    best = best.tolist()
    labels = [tsv_field(label) for label in labels]
    if unsure is not None:  # the unknown label takes the place of the first label: an index past the model's
        labels.append(tsv_field(unknown_label))
        for row, no in zip(best, unsure, strict=True):
            if no:
                row[0] = len(labels) - 1
    if output_format == "label":
        return ["\t".join(labels[i] for i in row) for row in best]
    scores = probability_values(scores)
    if k == 1:
        return [f"{labels[i]}\t{p!r}" for (i,), (p,) in zip(best, scores, strict=True)]
    return [
        "\t".join(f"{labels[i]}\t{p!r}" for i, p in zip(row, s, strict=True))
        for row, s in zip(best, scores, strict=True)
    ]


def multilabel_lines(batch, labels: list[str], output_format: str, thresholds) -> list[str]:
    """A multi-label model's output lines: every label at or over its threshold, most probable first.

    tsv: label<TAB>probability pairs on one line (label, probability, label, probability, ...); label: the
    labels alone, tab-separated; both escape labels as tsv_field does, so tabs split them unambiguously, and a
    text with no label over its threshold gets an empty line (no label is empty). json: "labels" (a list) and
    "probabilities" (every label's, by label)."""
    from lstm_cli.multilabel import picked as multilabel_picked

    probabilities = batch.probabilities
    picked = multilabel_picked(probabilities, thresholds)
    values = probability_values(probabilities)
    if output_format == "json":
        return [
            json.dumps({"text": text, "labels": [labels[i] for i in row],
                        "probabilities": dict(zip(labels, every, strict=True))}, ensure_ascii=False)
            for text, row, every in zip(batch.texts, picked, values, strict=True)
        ]  # fmt: skip
    fields = [tsv_field(label) for label in labels]
    if output_format == "label":
        return ["\t".join(fields[i] for i in row) for row in picked]
    return ["\t".join(f"{fields[i]}\t{every[i]!r}" for i in row) for row, every in zip(picked, values, strict=True)]


def _json_line(text: str, best: list[int], scores: list[float], every: list[float] | None, labels: list[str],
               abstained: tuple[bool, str] | None = None) -> str:  # fmt: skip
    record = {"text": text, "label": labels[best[0]], "probability": scores[0]}
    if abstained is not None:
        record["abstained"] = abstained[0]
        if abstained[0]:
            record["label"] = abstained[1]
    if len(best) > 1:
        record["top"] = [{"label": labels[i], "probability": p} for i, p in zip(best, scores, strict=True)]
    if every is not None:
        record["probabilities"] = dict(zip(labels, every, strict=True))
    return json.dumps(record, ensure_ascii=False)


def evaluation_warnings(report: dict[str, Any]) -> list[str]:
    warnings = []
    unknown = report["unknown_labels"]
    if unknown:
        listed = ", ".join(f"{label!r} ({n})" for label, n in sorted(unknown.items())[:10])
        warnings.append(
            f"{report['rows']['unknown_label']:,} rows have labels the model was not trained on and are not "
            f"in the metrics: {listed}"
        )
    skipped = report["rows"]["skipped"]
    if skipped:
        warnings.append(
            f"{report['data']['path']}: skipped {sum(skipped.values()):,} rows ({describe_skipped(skipped)})"
        )
    return warnings


# evaluate's tables: the confusion grid up to this many classes (and only if it fits the width), else a table
# of the most-confused pairs; beyond PER_CLASS_ALL classes the per-class table lists the weakest by F1.
GRID_CLASSES = 15
CONFUSED_PAIRS = 20
PER_CLASS_ALL = 100
PER_CLASS_WEAKEST = 30


def print_report(report: dict[str, Any], console=None) -> None:
    """evaluate's tables, every line within the console's width (COLUMNS; 80 when not a terminal)."""
    from rich.console import Console, Group
    from rich.text import Text

    console = console or Console(highlight=False, emoji=False)
    summary = Text.assemble(
        ("accuracy ", "bold"), f"{report['accuracy']:.4f}   ",
        ("macro-F1 ", "bold"), f"{report['macro_f1']:.4f}   ",
        ("rows ", "bold"), f"{report['rows']['evaluated']:,}   ",
        ("classes ", "bold"), f"{len(report['labels']):,}",
        *_calibration_text(report.get("calibration")),
    )  # fmt: skip
    fits = len(report["labels"]) <= GRID_CLASSES and "confusion_matrix" in report and _grid_fits(report, console.width)
    confusion = _confusion_grid(report) if fits else _most_confused_table(report)
    abstention = _abstention_table(report)
    console.print(Group(summary, *([abstention] if abstention else []), _per_class_table(report), confusion))


def _calibration_text(calibration: dict[str, Any] | None) -> tuple:
    """evaluate's second summary line: the expected calibration error, before and after the temperature."""
    if not calibration:
        return ()
    if calibration["temperature"] == 1.0:
        after = f"{calibration['ece']:.4f}   (no temperature: the network's own probabilities)"
    else:
        after = (f"{calibration['ece']:.4f}   (before calibration {calibration['ece_uncalibrated']:.4f}, "
                 f"temperature {calibration['temperature']:.3f})")  # fmt: skip
    return ("\n", ("calibration error ", "bold"), after)


def print_multilabel_report(report: dict[str, Any], console=None) -> None:
    """evaluate's tables for a multi-label model: the summary, the thresholds, and per-label P/R/F1."""
    from rich.console import Console, Group
    from rich.text import Text

    console = console or Console(highlight=False, emoji=False)
    summary = Text.assemble(
        ("micro-F1 ", "bold"), f"{report['micro_f1']:.4f}   ",
        ("macro-F1 ", "bold"), f"{report['macro_f1']:.4f}   ",
        ("subset accuracy ", "bold"), f"{report['subset_accuracy']:.4f}   ",
        ("hamming loss ", "bold"), f"{report['hamming_loss']:.4f}\n",
        ("rows ", "bold"), f"{report['rows']['evaluated']:,}   ",
        ("labels ", "bold"), f"{len(report['labels']):,}   ",
        ("thresholds ", "bold"), _thresholds_text(report["thresholds"]),
    )  # fmt: skip
    console.print(Group(summary, _per_class_table(report)))


def _thresholds_text(thresholds: list[float]) -> str:
    low, high = min(thresholds), max(thresholds)
    return f"{low:g}" if low == high else f"{low:g} to {high:g} (per label, in --format json)"


def multilabel_warnings(report: dict[str, Any]) -> list[str]:
    """What evaluate says about a multi-label report's rows: labels the model lacks, rows skipped."""
    warnings = []
    if report["unknown_labels"]:
        listed = ", ".join(f"{label!r} ({n})" for label, n in sorted(report["unknown_labels"].items())[:10])
        warnings.append(
            f"{report['rows']['unknown_label']:,} rows have labels the model was not trained on, left out of the "
            f"metrics: {listed}"
        )
    skipped = report["rows"]["skipped"]
    if skipped:
        warnings.append(
            f"{report['data']['path']}: skipped {sum(skipped.values()):,} rows ({describe_skipped(skipped)})"
        )
    return warnings


def _per_class_table(report: dict[str, Any]):
    """Precision, recall, F1 and support by label; beyond PER_CLASS_ALL labels, the weakest by F1."""
    labels, title = report["labels"], "Per class"
    if len(labels) > PER_CLASS_ALL:
        present = [label for label in labels if report["per_class"][label]["support"]]
        labels = sorted(present, key=lambda label: report["per_class"][label]["f1"])[:PER_CLASS_WEAKEST]
        title = f"Per class: the {len(labels)} lowest F1 of {len(report['labels']):,} (all in --format json)"
    rows = [
        (label, *(f"{c[k]:.4f}" for k in ("precision", "recall", "f1")), f"{c['support']:,}")
        for label in labels
        for c in [report["per_class"][label]]
    ]
    return _filled(_table(title), ["label"], ["precision", "recall", "f1", "support"], rows)


def _confusion_grid(report: dict[str, Any]):
    """The grid, labels as column headers folded to fit (_grid_fits checked that they can), counts whole."""
    table = _table("Confusion matrix (rows: true, columns: predicted)")
    cells = [[f"{n:,}" for n in row] for row in report["confusion_matrix"]]
    widest = max(len(cell) for row in cells for cell in row)
    table.add_column("", overflow="fold")
    for label in report["labels"]:
        table.add_column(literal(label), justify="right", overflow="fold", min_width=widest)
    for label, row in zip(report["labels"], cells, strict=True):
        table.add_row(literal(label), *row)
    return table


def _most_confused_table(report: dict[str, Any]):
    """The CONFUSED_PAIRS largest off-diagonal cells: true label, predicted label, count, share of the true label."""
    from lstm_cli.metrics import most_confused

    pairs = most_confused(report, CONFUSED_PAIRS)
    wrong = sum(c for t, p, c in report["confusion"] if t != p)
    table = _table(
        f"Most confused: {len(pairs)} largest of {wrong:,} errors (full matrix: --format json, --confusion-csv)"
    )
    rows = [(true, predicted, f"{count:,}", f"{share:.1%}") for true, predicted, count, share in pairs]
    return _filled(table, ["true", "predicted"], ["count", "of true"], rows or [("(none)", "", "", "")])


def _filled(table, text_columns: list[str], number_columns: list[str], rows: list[tuple[str, ...]]):
    """`table` with columns of user text (folded to fit, shown literally) then of numbers, and `rows`.
    A number column is never narrower than its widest number: on a narrow terminal text and headers fold
    or shorten, and a number is never cut (rich would crop "40" to "4" to fit)."""
    for header in text_columns:
        table.add_column(literal(header), overflow="fold")
    for i, header in enumerate(number_columns, start=len(text_columns)):
        widest = max(len(row[i]) for row in rows)
        table.add_column(literal(header), justify="right", no_wrap=True, min_width=widest)
    for row in rows:
        table.add_row(*(literal(cell) for cell in row))
    return table


def _abstention_table(report: dict[str, Any]):
    """evaluate --min-probability's table: coverage (rows answered), and accuracy and macro-F1 on those rows."""
    a = report.get("abstention")
    if a is None:
        return None

    def value(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"  # "-": no row answered

    row = (f"{a['coverage']:.4f}", f"{a['answered']:,} of {report['rows']['evaluated']:,}", value(a["accuracy"]),
           value(a["macro_f1"]))  # fmt: skip
    title = f"At --min-probability {a['min_probability']:g}"
    return _filled(_table(title), [], ["coverage", "answered", "accuracy", "macro-F1"], [row])


def _table(title: str):
    from rich import box
    from rich.table import Table

    # min_width: the title stays on one line above a narrow table (rich wraps a title to the table's width)
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, min_width=len(title))


def _grid_fits(report: dict[str, Any], width: int) -> bool:
    """Whether the confusion grid fits `width` with counts unbroken and headers folded to at most 3 lines."""
    from rich.cells import cell_len

    labels = report["labels"]
    count_width = max(len(f"{n:,}") for row in report["confusion_matrix"] for n in row)
    longest = min(max(cell_len(shown(label)) for label in labels), 24)
    column = max(count_width, -(-longest // 3))
    return longest + len(labels) * (column + 2) <= width


def _span(window) -> str:
    return f"{window[0]}-{window[1]}"


def _averaged_text(training: dict) -> str:
    window = training.get("averaged_window")
    if isinstance(window, list) and len(window) == 2 and all(isinstance(e, int) for e in window):
        return f"; weights: mean of epochs {_span(window)}"
    epochs = training.get("averaged_epochs")  # models of lstm-cli before the windows: epochs 1..n
    return f"; weights: mean of epochs 1-{epochs}" if isinstance(epochs, int) and epochs > 1 else ""


def _extra_info(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """info rows for what only some models have: pretrained vectors, class weights, a parent, an encoder, a
    tuning search."""
    rows = []
    vectors = metadata.get("vectors")
    if isinstance(vectors, dict):
        frozen = ", frozen" if vectors.get("frozen") else ""
        rows.append(("vectors", f"{vectors.get('file')} ({vectors.get('dimension')} dimensions, sha256 "
                                f"{str(vectors.get('sha256'))[:12]}{frozen}): {vectors.get('summary')}"))  # fmt: skip
    weights = metadata.get("training", {}).get("class_weights")
    if isinstance(weights, dict):
        shown = (f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in weights.items())
        rows.append(("class weights", ", ".join(shown)))
    parent = metadata.get("parent")
    if isinstance(parent, dict):  # train --from
        added = parent.get("labels_added") if isinstance(parent.get("labels_added"), list) else []
        lineage = parent.get("lineage") if isinstance(parent.get("lineage"), list) else []
        older = f"; {len(lineage) - 1} earlier in its lineage" if len(lineage) > 1 else ""
        rows.append(("continues", f"{parent.get('id')} ({parent.get('path')}): {parent.get('words_added')} words "
                                  f"and {len(added)} labels added{older}"))  # fmt: skip
    encoder = metadata.get("pretrained")
    if isinstance(encoder, dict):  # train --pretrained
        figures = []
        if isinstance(encoder.get("bag_steps"), int) and isinstance(encoder.get("bag_heldout_loss"), (int, float)):
            figures.append(
                f"bag of words {encoder['bag_steps']:,} steps, held-out loss {encoder['bag_heldout_loss']:.3f}"
            )
        if isinstance(encoder.get("tokens_seen"), int):
            figures.append(f"language model trained on {encoder['tokens_seen']:,} tokens")
        if isinstance(encoder.get("heldout_perplexity"), (int, float)):
            figures.append(f"held-out perplexity {encoder['heldout_perplexity']:.1f}")
        rows.append(("pretrained", f"{encoder.get('path')} (id {encoder.get('id')})" + ": " * bool(figures)
                     + ", ".join(figures)))  # fmt: skip
    calibration = metadata.get("calibration")
    if isinstance(calibration, dict):
        rows.append(("calibration", calibration_text(calibration)))
    tuning = metadata.get("tuning")
    if isinstance(tuning, dict):
        trials = tuning.get("trials", [])
        rows.append(("tuning", f"best of {len(trials)} trials by validation {tuning.get('metric')} "
                               f"(budget {tuning.get('budget_seconds')}s)"))  # fmt: skip
    return rows


INFO_LABELS = 40  # info lists this many labels, then says how many more (all of them: --format json)


def _labels_text(labels: list[str]) -> str:
    more = f", ... ({len(labels) - INFO_LABELS:,} more; all: --format json)" if len(labels) > INFO_LABELS else ""
    return f"{len(labels):,}: " + ", ".join(labels[:INFO_LABELS]) + more


def print_info(metadata: dict[str, Any], model_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    training = metadata.get("training", {})
    data = training.get("data", {})
    versions = metadata.get("versions", {})
    vectorizer = metadata.get("vectorizer", {})
    table = Table(show_header=False, box=None, padding=(0, 2))
    rows = [
        ("model", str(model_dir)),
        ("format", f"{metadata.get('format')} v{metadata.get('format_version')}"),
        ("created", str(metadata.get("created_at"))),
        ("labels", _labels_text(metadata["labels"])),
        ("vocabulary", f"{vectorizer.get('vocabulary_size', 0):,} tokens, standardized "
                       f"{vectorizer.get('standardize', 'lower_and_strip_punctuation')}"),  # fmt: skip
        ("parameters", f"{metadata.get('parameters', 0):,}"),
        ("config", ", ".join(f"{k}={v}" for k, v in metadata.get("config", {}).items())),
        ("trained on", f"{data.get('path')} ({data.get('rows', 0):,} rows, sha256 {str(data.get('sha256'))[:12]})"),
        ("training", f"{training.get('epochs_run')} epochs (best {training.get('best_epoch')}"
                     f"{_averaged_text(training)}) on {training.get('device')} in {training.get('seconds')}s"),
        ("metrics", _metrics_text(metadata.get("metrics", {}))),
        *_extra_info(metadata),
        ("engine", f"numpy (engine.json, {metadata['engine'].get('weights', 'engine.npz')}) or TensorFlow"
                   if metadata.get("engine")
                   else "TensorFlow only (saved before the numpy engine; train again for the fast path)"),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
    ]  # fmt: skip
    for key, value in rows:
        table.add_row(Text(key, style="bold"), literal(value))
    Console(highlight=False, emoji=False).print(table)


def explanation_line(explanation) -> str:
    """One line per explained text: label, probability, then every token the model saw with its score, and
    the scores' unit."""
    digits = 2 if explanation.unit == "log-odds" else 4  # log-odds that matter are tenths and up
    tokens = "  ".join(f"{t.token} {t.score:+.{digits}f}" for t in explanation.tokens)
    extra = [f"scores in {explanation.unit}"]
    if explanation.unseen_tokens:
        extra.append(f"{explanation.unseen_tokens:,} tokens past --max-length not read")
    if explanation.completeness_gap is not None:
        extra.append(f"completeness gap {explanation.completeness_gap:.2g}")
    return f"{tsv_field(explanation.label)}\t{explanation.probability:.4f}\t{tsv_field(tokens)}  ({'; '.join(extra)})"


def explanation_record(explanation) -> dict[str, Any]:
    """An explanation as a JSON-ready record, its probability and scores to the digits float32 carries."""
    record = explanation.to_dict()
    record["probability"] = probability_values(record["probability"])
    scores = probability_values([t["score"] for t in record["tokens"]])
    for token, score in zip(record["tokens"], scores, strict=True):
        token["score"] = score
    return record


def explanation_text(explanation) -> Text:
    """The original text with each token coloured by its score (green: pushed towards the label, red: away;
    stronger colour, larger share of the largest score), then the plain line. For a terminal."""
    from rich.text import Text

    largest = max((abs(t.score) for t in explanation.tokens), default=0) or 1
    pieces, position = [], 0
    for t in explanation.tokens:
        strength = int(80 + 175 * abs(t.score) / largest)
        colour = f"rgb(0,{strength},0)" if t.score >= 0 else f"rgb({strength},0,0)"
        pieces += [literal(explanation.text[position : t.start]), literal(explanation.text[t.start : t.end],
                   f"bold white on {colour}")]  # fmt: skip
        position = t.end
    pieces.append(literal(explanation.text[position:]))
    how = f"{explanation.method}, {explanation.unit}"
    header = Text.assemble(literal(explanation.label, "bold"), f" {explanation.probability:.4f} ({how}): ")
    return Text.assemble(header, *pieces, "\n", literal(explanation_line(explanation).replace("\t", "  ")))
