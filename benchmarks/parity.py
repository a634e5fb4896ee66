"""Does the numpy engine give the SavedModel's probabilities on real data? One row per data set and layer option.

For every data folder (train.csv, or test.csv alone, for the vocabulary and a short training run) and every
layer option lstm-cli trains, a small model is trained, saved, and its test texts are predicted by both
engines; the table shows the largest absolute difference between their probabilities and how often the
predicted labels differ. Models are small (the question is exactness, not accuracy).

    python benchmarks/parity.py ../shared/datasets/* [--rows 4000] [--json | --markdown]
    python benchmarks/parity.py --from-json parity.json --markdown     # a saved --json result as Markdown

Nothing here asserts anything; tests/test_engine.py holds the 1e-5 bound on tiny models."""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy, as the command line does (lstm_cli/cli)

import numpy as np  # noqa: E402
from tables import load_json, render  # noqa: E402

LSTM_CLI = [sys.executable, "-m", "lstm_cli"]
SMALL = ["--embedding-dim", "32", "--units", "32", "--dense-units", "32", "--epochs", "1", "--max-length", "200", "-q"]
VARIANTS = {
    "lstm": [],
    "gru": ["--cell", "gru"],
    "lstm x2": ["--layers", "2"],
    "bi-lstm": ["--bidirectional"],
    "bi-gru x2, no dense": ["--bidirectional", "--cell", "gru", "--layers", "2", "--dense-units", "0"],
    "max+mean pool, SWEM": ["--pooling", "max,mean", "--embedding-pooling", "max,mean", "--embedding-dropout", "0.2"],
    "bi-gru mean pool, SWEM": ["--bidirectional", "--cell", "gru", "--pooling", "mean", "--embedding-pooling", "max"],
    "bigrams seen twice": ["--bigram-min-count", "2"],
}


def read_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def sample(rows: list[tuple[str, str]], n: int, path: Path) -> Path:
    rows = random.Random(0).sample(rows, min(n, len(rows)))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def compare(model: Path, texts: list[str]) -> dict:
    from lstm_cli.predict import Predictor

    fast, slow = Predictor(model, engine="numpy"), Predictor(model, engine="tensorflow")
    started = time.perf_counter()
    p = fast.probabilities(texts)
    numpy_s = time.perf_counter() - started
    started = time.perf_counter()
    q = slow.probabilities(texts)
    tensorflow_s = time.perf_counter() - started
    return {
        "texts": len(texts),
        "max_abs_diff": float(np.abs(p - q).max()),
        "label_disagreements": int((p.argmax(1) != q.argmax(1)).sum()),
        "numpy_s": numpy_s,
        "tensorflow_s": tensorflow_s,
    }


def per_data_set(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per data set: its largest difference over the layer options, and which option gave it."""
    header = ["data set", "test texts", "layer options compared", "max abs difference (which option)",
              "predicted labels differing"]  # fmt: skip
    rows = []
    for name in dict.fromkeys(r["data"] for r in results):
        mine = [r for r in results if r["data"] == name]
        worst = max(mine, key=lambda r: r["max_abs_diff"])
        rows.append([name, f"{mine[0]['texts']:,}", str(len(mine)), f"{worst['max_abs_diff']:.1e} ({worst['variant']})",
                     str(sum(r["label_disagreements"] for r in mine))])  # fmt: skip
    return header, rows


def table(results: list[dict], *, as_markdown: bool) -> str:
    if as_markdown:
        return render(*per_data_set(results), as_markdown=True)
    header = ["data set", "layers", "texts", "max |numpy - TF|", "labels differ"]
    rows = [[r["data"], r["variant"], f"{r['texts']:,}", f"{r['max_abs_diff']:.2e}", str(r["label_disagreements"])]
            for r in results]  # fmt: skip
    overall = max(r["max_abs_diff"] for r in results)
    return render(header, rows, as_markdown=False) + f"\nlargest difference overall: {overall:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="*", help="data folders with test.csv (and train.csv)")
    parser.add_argument("--rows", type=int, default=4000, help="training rows sampled per model")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="one Markdown row per data set (for the docs)")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="print the table of a saved --json result")
    args = parser.parse_args()
    if args.from_json:
        print(table(load_json(args.from_json), as_markdown=args.markdown))
        return
    if not args.data:
        parser.error("give the data folders (or --from-json FILE)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in args.data:
            test = read_rows(folder / "test.csv")
            train = read_rows(folder / "train.csv") if (folder / "train.csv").exists() else test
            train_csv = sample(train, args.rows, Path(tmp) / f"{folder.name}.csv")
            texts = [t for t, _ in test]
            for variant in args.variants:
                model = Path(tmp) / f"{folder.name}-{variant.replace(' ', '_')}"
                cmd = [*LSTM_CLI, "train", str(train_csv), "-m", str(model), *SMALL, *VARIANTS[variant]]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # stdout: the --json table alone
                row = {"data": folder.name, "variant": variant, **compare(model, texts)}
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results, as_markdown=args.markdown))


if __name__ == "__main__":
    main()
