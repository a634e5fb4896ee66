"""Few labels and many unlabeled texts: TF-IDF + LR, lstm-cli from scratch and lstm-cli pretrained, side by side.

For each folder holding train.csv and test.csv (text,label columns): `lstm-cli pretrain` once on every training
text without its label (the unlabeled pool: the labeled rows' texts are unlabeled text too), with --budget;
then for each N of --labeled (100, 500, 1000, all; a seeded, stratified sample of N training rows) and each
seed: TF-IDF (word 1-2-grams, min_df 2, sublinear tf) + LogisticRegression(C=10) on the N rows, `lstm-cli
train` on them from scratch, and `lstm-cli train --pretrained ENCODER` on them; every model evaluated on
test.csv. scikit-learn is a benchmark-only dependency (`pip install scikit-learn`).

    python benchmarks/fewshot.py ../shared/datasets/multi_domain_sentiment [--labeled 100 1000 all]
        [--seeds 1337 1] [--budget 20m] [--pretrain-args "--units 128"] [--train-args "--epochs 10"] [--json]
        [--markdown] [--pretrained-args "--pretrained-rate 0.1"]
    (--encoders DIR keeps each encoder, and a later run with other --labeled or --train-args reuses it)
    python benchmarks/fewshot.py --from-json fewshot.jsonl --markdown    # a saved --json result as Markdown

Prints one row per (data set, N): accuracy mean ± std over the seeds for the three, and wall times (the
pretraining's once per data set). Nothing here asserts anything."""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accuracy import read_csv
from tables import load_json, render

LSTM_CLI = [sys.executable, "-m", "lstm_cli"]


def stratified_sample(labels: list[str], n: int, seed: int) -> list[int]:
    """Indices of n rows, each class's share as in the whole (at least one row of each class), seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    rows = {c: rng.permutation([i for i, label in enumerate(labels) if label == c]).tolist() for c in classes}
    quota = {c: max(1, round(n * len(rows[c]) / len(labels))) for c in classes}
    while sum(quota.values()) > n:  # rounding up the small classes: take the excess from the largest
        quota[max(quota, key=quota.get)] -= 1
    return sorted(i for c in classes for i in rows[c][: quota[c]])


def write_rows(path: Path, texts: list[str], labels: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


def tfidf_lr(train_x, train_y, test_x, test_y) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2 if len(train_x) >= 200 else 1, sublinear_tf=True)
    model = LogisticRegression(C=10, max_iter=2000).fit(vectorizer.fit_transform(train_x), train_y)
    predicted = model.predict(vectorizer.transform(test_x))
    return {"accuracy": float(accuracy_score(test_y, predicted)), "seconds": time.perf_counter() - started}


def lstm_cli_run(train_csv: Path, test_csv: Path, seed: int, args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "model")
        started = time.perf_counter()
        subprocess.run([*LSTM_CLI, "train", str(train_csv), "-m", model, "--seed", str(seed), "-q", *args],
                       check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
        seconds = time.perf_counter() - started
        done = subprocess.run([*LSTM_CLI, "evaluate", str(test_csv), "-m", model, "--json"], check=True,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return {"accuracy": json.loads(done.stdout)["accuracy"], "seconds": seconds}


def _figures(training: dict) -> dict:
    """What the table shows of an encoder's training: the objective, the bag phase's and the LM's figures."""
    bag = training.get("bag") or {}
    return {
        "objective": training.get("objective", "lm"),
        "bag_steps": bag.get("steps"),
        "bag_heldout_loss": bag.get("heldout_loss"),
        **{k: training.get(k) for k in ("tokens_seen", "steps", "heldout_perplexity", "unigram_perplexity")},
    }


def pretrain(texts: list[str], encoder: Path, budget: str, args: list[str]) -> dict:
    """`lstm-cli pretrain` on the texts (one a line), unless `encoder` already holds an encoder (--encoders)."""
    if (encoder / "encoder.json").is_file():
        training = json.loads((encoder / "encoder.json").read_text(encoding="utf-8"))["training"]
        return {"seconds": training["seconds"], "reused": str(encoder), **_figures(training)}
    encoder.parent.mkdir(parents=True, exist_ok=True)
    corpus = encoder.parent / f"{encoder.name}.txt"
    corpus.write_text("".join(" ".join(t.split()) + "\n" for t in texts), encoding="utf-8")  # one text a line
    started = time.perf_counter()
    subprocess.run([*LSTM_CLI, "pretrain", str(corpus), "-o", str(encoder), "--budget", budget, *args],
                   check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
    training = json.loads((encoder / "encoder.json").read_text(encoding="utf-8"))["training"]
    return {"seconds": time.perf_counter() - started, **_figures(training)}


def measure(folder: Path, sizes: list[str], seeds: list[int], budget: str, pretrain_args, train_args,
            encoders: Path | None, pretrained_args=()) -> list[dict]:  # fmt: skip
    train_x, train_y = read_csv(folder / "train.csv")
    test_x, test_y = read_csv(folder / "test.csv")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        encoder = (encoders or Path(tmp)) / f"{folder.name}-encoder"
        pretrained = pretrain(train_x, encoder, budget, pretrain_args)
        print(f"{folder.name} pretrain: {json.dumps(pretrained)}", file=sys.stderr, flush=True)
        for size in sizes:
            n = len(train_x) if size == "all" else min(int(size), len(train_x))
            runs = []
            for seed in seeds:
                picked = stratified_sample(train_y, n, seed) if n < len(train_x) else list(range(len(train_x)))
                x, y = [train_x[i] for i in picked], [train_y[i] for i in picked]
                labeled = write_rows(Path(tmp) / "labeled.csv", x, y)
                run = {"seed": seed, "tfidf_lr": tfidf_lr(x, y, test_x, test_y),
                       "scratch": lstm_cli_run(labeled, folder / "test.csv", seed, train_args),
                       "pretrained": lstm_cli_run(labeled, folder / "test.csv", seed,
                                                  ["--pretrained", str(encoder), *train_args,
                                                   *pretrained_args])}  # fmt: skip
                runs.append(run)
                print(f"{folder.name} N={n} seed {seed}: {json.dumps(run)}", file=sys.stderr, flush=True)
            rows.append({"data": folder.name, "labeled": n, "unlabeled": len(train_x), "seeds": seeds,
                         "budget": budget, "pretraining": pretrained, "pretrained_args": list(pretrained_args),
                         "runs": runs,
                         **{f"{k}_{stat}": fn([r[k][m] for r in runs]) for k in ("tfidf_lr", "scratch", "pretrained")
                            for stat, m, fn in (("mean", "accuracy", statistics.fmean), ("std", "accuracy", _std),
                                                ("seconds", "seconds", statistics.fmean))}})  # fmt: skip
    return rows


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(rows: list[dict], *, as_markdown: bool) -> str:
    header = ["data", "labeled", "TF-IDF + LR", "lstm-cli scratch", "lstm-cli pretrained", "pretrained - LR",
              "train s (scratch / pretrained)", "pretraining"]  # fmt: skip
    lines = []
    for r in rows:
        p = r["pretraining"]
        lines.append([
            r["data"], f"{r['labeled']:,}", f"{r['tfidf_lr_mean']:.3f} ± {r['tfidf_lr_std']:.3f}",
            f"{r['scratch_mean']:.3f} ± {r['scratch_std']:.3f}",
            f"{r['pretrained_mean']:.3f} ± {r['pretrained_std']:.3f}",
            f"{r['pretrained_mean'] - r['tfidf_lr_mean']:+.3f}",
            f"{r['scratch_seconds']:.0f} / {r['pretrained_seconds']:.0f}",
            f"{r['budget']}, {_pretraining(p)}",
        ])  # fmt: skip
    return render(header, lines, as_markdown=as_markdown)


def _pretraining(p: dict) -> str:
    parts = []
    if p.get("bag_steps") is not None:
        parts.append(f"bag {p['bag_steps']:,} steps (loss {p['bag_heldout_loss']:.2f})")
    if p.get("heldout_perplexity") is not None:
        parts.append(f"LM {p['tokens_seen'] / 1e6:.1f}M tokens, ppl {p['heldout_perplexity']:.0f} "
                     f"(unigram {p['unigram_perplexity']:.0f})")  # fmt: skip
    return " then ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, help="folders holding train.csv and test.csv")
    parser.add_argument("--labeled", nargs="+", default=["100", "500", "1000", "all"], help="labeled rows: N or all")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337, 1])
    parser.add_argument("--budget", default="20m", help="lstm-cli pretrain --budget")
    parser.add_argument("--pretrain-args", default="", help="extra options for lstm-cli pretrain")
    parser.add_argument("--train-args", default="", help="extra options for both lstm-cli train runs")
    parser.add_argument(
        "--pretrained-args", default="", help="extra options for the pretrained run only (e.g. '--pretrained-rate 0.1')"
    )
    parser.add_argument(
        "--encoders",
        type=Path,
        metavar="DIR",
        help="keep each data set's encoder in DIR/NAME-encoder, and reuse one found there",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of a table")
    parser.add_argument("--markdown", action="store_true", help="the table as Markdown (for the docs)")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="print the table of a saved --json result")
    args = parser.parse_args()
    if args.from_json:
        saved = load_json(args.from_json)
        print(table(saved if isinstance(saved, list) else [saved], as_markdown=args.markdown))
        return
    if not args.folders:
        parser.error("give the data folders (or --from-json FILE)")
    if any(size != "all" and not (size.isdigit() and int(size) > 0) for size in args.labeled):
        parser.error("--labeled takes row counts and 'all'")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        parser.error("the baseline needs scikit-learn, a benchmark-only dependency: pip install scikit-learn")
    rows = []
    for folder in args.folders:
        if not (folder / "train.csv").is_file() or not (folder / "test.csv").is_file():
            print(f"skipping {folder}: no train.csv and test.csv", file=sys.stderr)
            continue
        found = measure(folder, args.labeled, args.seeds, args.budget, shlex.split(args.pretrain_args),
                        shlex.split(args.train_args), args.encoders, shlex.split(args.pretrained_args))  # fmt: skip
        rows.extend(found)
        if args.json:
            for row in found:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(table(rows, as_markdown=args.markdown))


if __name__ == "__main__":
    main()
