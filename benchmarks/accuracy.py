"""Accuracy with default settings, beside a TF-IDF + logistic regression baseline, on any labeled data.

For each folder holding train.csv and test.csv (text,label columns), trains lstm-cli exactly as a user
would (`lstm-cli train train.csv --seed S && lstm-cli evaluate test.csv --json`) over several seeds, and
fits the baseline in the same run: scikit-learn TfidfVectorizer (word 1-2-grams, min_df 2, sublinear tf)
+ LogisticRegression(C=10). scikit-learn is a benchmark-only dependency (`pip install scikit-learn`).

    python benchmarks/accuracy.py ../shared/datasets/* [--seeds 1337 1 2] [--json] [--markdown]
        [--train-args "--epochs 5"]
    python benchmarks/accuracy.py --from-json accuracy.jsonl --markdown    # a saved --json result as Markdown

Prints one row per data set: accuracy mean ± std over the seeds, macro-F1, the expected calibration error
(15 bins; before -> after the temperature `train` fits, and the temperature), training wall time (and CPU
time, steadier on a shared machine), and the baseline's accuracy and macro-F1. Nothing here asserts anything.

Multi-label folders (a dev.csv beside them, labels joined by commas, or --multi-label) are trained with
`--multi-label` (and `--validation-data dev.csv` when there is one) and measured by micro- and macro-F1; their
baseline is one-vs-rest logistic regression (C=10) on the same TF-IDF features, with one decision threshold
for every label tuned on dev.csv (else on a seeded 10% of train.csv) for micro-F1, as lstm-cli's global one."""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import load_json, render

LSTM_CLI = [sys.executable, "-m", "lstm_cli"]


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = [(r["text"], r["label"].strip()) for r in csv.DictReader(f) if r["text"].strip() and r["label"].strip()]
    return [t for t, _ in rows], [label for _, label in rows]


def multi_label_folder(folder: Path) -> bool:
    """A data set with several labels a row: it has a dev split (GoEmotions' layout), or a label with a comma."""
    if (folder / "dev.csv").is_file():
        return True
    return any("," in label for label in read_csv(folder / "train.csv")[1])


def multi_label_baseline(folder: Path) -> dict[str, float]:
    """TF-IDF (as `baseline`) + one-vs-rest logistic regression (C=10), one threshold for all labels tuned on
    dev for micro-F1 (0.01 to 0.99)."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    def sets(labels: list[str]) -> list[list[str]]:
        return [[part.strip() for part in label.split(",") if part.strip()] for label in labels]

    train_x, train_y = read_csv(folder / "train.csv")
    test_x, test_y = read_csv(folder / "test.csv")
    if (folder / "dev.csv").is_file():
        dev_x, dev_y = read_csv(folder / "dev.csv")
    else:  # a seeded tenth of train
        held = set(np.random.default_rng(0).permutation(len(train_x))[: len(train_x) // 10].tolist())
        dev_x, dev_y = [train_x[i] for i in sorted(held)], [train_y[i] for i in sorted(held)]
        train_x = [t for i, t in enumerate(train_x) if i not in held]
        train_y = [y for i, y in enumerate(train_y) if i not in held]
    started = time.perf_counter()
    binarizer = MultiLabelBinarizer().fit(sets(train_y))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = OneVsRestClassifier(LogisticRegression(C=10, max_iter=2000))
    model.fit(vectorizer.fit_transform(train_x), binarizer.transform(sets(train_y)))
    dev_truth = binarizer.transform(sets(dev_y))
    dev_p = model.predict_proba(vectorizer.transform(dev_x))
    grid = np.round(np.arange(1, 100) / 100, 2)
    threshold = max(grid, key=lambda t: f1_score(dev_truth, dev_p >= t, average="micro", zero_division=0))
    truth = binarizer.transform(sets(test_y))
    predicted = model.predict_proba(vectorizer.transform(test_x)) >= threshold
    return {
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "threshold": float(threshold),
        "seconds": time.perf_counter() - started,
    }


def baseline(folder: Path) -> dict[str, float]:
    """TF-IDF (word 1-2-grams, min_df 2, sublinear tf) + logistic regression (C=10): the ten-line script."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    train_x, train_y = read_csv(folder / "train.csv")
    test_x, test_y = read_csv(folder / "test.csv")
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(C=10, max_iter=2000).fit(vectorizer.fit_transform(train_x), train_y)
    predicted = model.predict(vectorizer.transform(test_x))
    return {
        "accuracy": float(accuracy_score(test_y, predicted)),
        "macro_f1": float(f1_score(test_y, predicted, average="macro")),
        "seconds": time.perf_counter() - started,
    }


def lstm_cli_run(folder: Path, seed: int, train_args: list[str], multi_label: bool = False) -> dict[str, float]:
    if multi_label:
        dev = folder / "dev.csv"
        train_args = ["--multi-label", *(["--validation-data", str(dev)] if dev.is_file() else []), *train_args]
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "model")
        started, cpu_before = time.perf_counter(), _children_cpu()
        subprocess.run(
            [*LSTM_CLI, "train", str(folder / "train.csv"), "-m", model, "--seed", str(seed), "-q", *train_args],
            check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        seconds, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
        done = subprocess.run(
            [*LSTM_CLI, "evaluate", str(folder / "test.csv"), "-m", model, "--json"],
            check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        report = json.loads(done.stdout)
        info = json.loads(subprocess.run([*LSTM_CLI, "info", "-m", model, "--json"], check=True,
                                         capture_output=True, text=True).stdout)  # fmt: skip
    calibration = report.get("calibration", {})
    scores = {"micro_f1": report["micro_f1"]} if multi_label else {"accuracy": report["accuracy"]}
    return {
        **scores,
        "macro_f1": report["macro_f1"],
        "ece": calibration.get("ece"),
        "ece_uncalibrated": calibration.get("ece_uncalibrated"),
        "temperature": calibration.get("temperature"),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "epochs": info["training"]["epochs_run"],
    }


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished child processes: steadier than wall time on a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(folder: Path, seeds: list[int], train_args: list[str], multi_label: bool = False) -> dict:
    # The baseline first: a missing scikit-learn fails before any long training.
    reference = multi_label_baseline(folder) if multi_label else baseline(folder)
    runs = []
    for seed in seeds:
        runs.append(lstm_cli_run(folder, seed, train_args, multi_label))
        print(f"{folder.name} seed {seed}: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
    if multi_label:
        micro = [r["micro_f1"] for r in runs]
        return {
            "data": folder.name, "multi_label": True, "seeds": seeds,
            "micro_f1_mean": statistics.fmean(micro),
            "micro_f1_std": statistics.stdev(micro) if len(micro) > 1 else 0.0,
            "macro_f1_mean": statistics.fmean(r["macro_f1"] for r in runs),
            "train_seconds_mean": statistics.fmean(r["seconds"] for r in runs),
            "train_cpu_seconds_mean": statistics.fmean(r["cpu_seconds"] for r in runs),
            "runs": runs,
            "baseline": reference,
        }  # fmt: skip
    accuracies = [r["accuracy"] for r in runs]
    return {
        "data": folder.name,
        "seeds": seeds,
        "accuracy_mean": statistics.fmean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "macro_f1_mean": statistics.fmean(r["macro_f1"] for r in runs),
        "ece_mean": _mean(runs, "ece"),
        "ece_uncalibrated_mean": _mean(runs, "ece_uncalibrated"),
        "temperature_mean": _mean(runs, "temperature"),
        "train_seconds_mean": statistics.fmean(r["seconds"] for r in runs),
        "train_cpu_seconds_mean": statistics.fmean(r["cpu_seconds"] for r in runs),
        "runs": runs,
        "baseline": reference,
    }


def _mean(runs: list[dict], key: str) -> float | None:
    """The mean of a figure over the runs; None when a run lacks it (an lstm-cli without calibration)."""
    values = [r.get(key) for r in runs]
    return statistics.fmean(values) if values and None not in values else None


def _ece(r: dict) -> str:
    """'before -> after' ECE, or '-' for a saved result from before calibration."""
    before, after = r.get("ece_uncalibrated_mean"), r.get("ece_mean")
    return "-" if before is None or after is None else f"{before:.3f} → {after:.3f}"


def multi_label_table(rows: list[dict], *, as_markdown: bool) -> str:
    header = ["data (multi-label)", "lstm-cli micro-F1", "macro-F1", "train wall time (CPU)",
              "TF-IDF + OvR LR micro-F1", "macro-F1", "gap"]  # fmt: skip
    lines = [
        [r["data"], f"{r['micro_f1_mean']:.3f} ± {r['micro_f1_std']:.3f}", f"{r['macro_f1_mean']:.3f}",
         f"{r['train_seconds_mean']:.0f} s ({r['train_cpu_seconds_mean']:.0f} s)",
         f"{r['baseline']['micro_f1']:.3f}", f"{r['baseline']['macro_f1']:.3f}",
         f"{r['micro_f1_mean'] - r['baseline']['micro_f1']:+.3f}"]
        for r in rows
    ]  # fmt: skip
    return render(header, lines, as_markdown=as_markdown)


def tables(rows: list[dict], *, as_markdown: bool) -> str:
    """The single-label table, then the multi-label one (each only when it has rows)."""
    single = [r for r in rows if not r.get("multi_label")]
    multi = [r for r in rows if r.get("multi_label")]
    parts = ([table(single, as_markdown=as_markdown)] if single else []) + (
        [multi_label_table(multi, as_markdown=as_markdown)] if multi else []
    )
    return "\n\n".join(parts)


def table(rows: list[dict], *, as_markdown: bool) -> str:
    header = ["data", "lstm-cli accuracy", "macro-F1", "ECE before → after", "T", "train wall time (CPU)",
              "TF-IDF + LR accuracy", "macro-F1", "gap"]  # fmt: skip
    lines = []
    for r in rows:
        b = r["baseline"]
        temperature = r.get("temperature_mean")
        lines.append([
            r["data"], f"{r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f}", f"{r['macro_f1_mean']:.3f}",
            _ece(r), "-" if temperature is None else f"{temperature:.2f}",
            f"{r['train_seconds_mean']:.0f} s ({r['train_cpu_seconds_mean']:.0f} s)",
            f"{b['accuracy']:.3f}", f"{b['macro_f1']:.3f}",
            f"{r['accuracy_mean'] - b['accuracy']:+.3f}",
        ])  # fmt: skip
    return render(header, lines, as_markdown=as_markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="folders holding train.csv and test.csv")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337, 1, 2])
    parser.add_argument("--train-args", default="", help="extra options for lstm-cli train, e.g. '--epochs 5'")
    parser.add_argument("--json", action="store_true", help="one JSON object per data set instead of a table")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown (for the docs)")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="print the table of a saved --json result")
    parser.add_argument("--multi-label", action="store_true", help="treat every folder as multi-label")
    args = parser.parse_args()
    if args.from_json:
        saved = load_json(args.from_json)
        print(tables(saved if isinstance(saved, list) else [saved], as_markdown=args.markdown))
        return
    if not args.folders:
        parser.error("give the data folders (or --from-json FILE)")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        parser.error("the baseline needs scikit-learn, a benchmark-only dependency: pip install scikit-learn")
    rows = []
    for folder in args.folders:
        if not (folder / "train.csv").is_file() or not (folder / "test.csv").is_file():
            print(f"skipping {folder}: no train.csv and test.csv", file=sys.stderr)
            continue
        multi = args.multi_label or multi_label_folder(folder)
        row = measure(folder, args.seeds, shlex.split(args.train_args), multi)
        rows.append(row)
        print(json.dumps(row) if args.json else f"done: {folder.name}", file=sys.stdout if args.json else sys.stderr,
              flush=True)  # fmt: skip
    if not args.json:
        print(tables(rows, as_markdown=args.markdown))


if __name__ == "__main__":
    main()
