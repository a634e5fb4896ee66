"""Forgetting under `train --from`: the old data's accuracy before and after continued training on new data.

For a folder holding train.csv and test.csv (text,label), the labels sorted by name are cut in two halves, old
(A) and new (B). Then, as a user would run them:

    parent   lstm-cli train A.csv                         the old labels only
    child    lstm-cli train B.csv --from parent           the new labels only: forgetting at its worst
    replay   lstm-cli train B+R.csv --from parent         plus a seeded sample of R of A's rows (--replay)
    scratch  lstm-cli train train.csv                     every label at once, for reference

each evaluated on A's test rows (the old data), B's and the whole test set. With --mode rows, the rows are
cut in two seeded random halves instead (every label in both), and the test set is the old data and the new
alike.

    python benchmarks/forgetting.py ../shared/datasets/banking77 [--seed 1337] [--replay 0.2]
        [--mode labels|rows] [--train-args "--epochs 10"] [--no-scratch] [--json]

Nothing here asserts anything."""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LSTM_CLI = [sys.executable, "-m", "lstm_cli"]


def read_rows(path: Path) -> list[tuple[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [(r["text"], r["label"].strip()) for r in csv.DictReader(f) if r["text"].strip() and r["label"].strip()]


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def run(args: list[str]) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run([*LSTM_CLI, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode:
        sys.exit(f"lstm-cli {shlex.join(args)} failed:\n{done.stderr}")
    return done.stdout, time.perf_counter() - started


def accuracy(model: Path, data: Path) -> float:
    out, _ = run(["evaluate", str(data), "-m", str(model), "--format", "json"])
    return json.loads(out)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--replay", type=float, default=0.2, help="fraction of the old rows added to the new")
    parser.add_argument("--mode", choices=("labels", "rows"), default="labels")
    parser.add_argument("--train-args", default="", help="more options for every train command")
    parser.add_argument("--no-scratch", action="store_true", help="skip the model trained on everything")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    train, test = read_rows(options.folder / "train.csv"), read_rows(options.folder / "test.csv")
    rng = random.Random(options.seed)
    if options.mode == "labels":
        labels = sorted({label for _, label in train})
        old_labels = set(labels[: len(labels) // 2])
        old = [r for r in train if r[1] in old_labels]
        new = [r for r in train if r[1] not in old_labels]
        old_test = [r for r in test if r[1] in old_labels]
        new_test = [r for r in test if r[1] not in old_labels]
    else:
        shuffled = rng.sample(train, len(train))
        old, new = shuffled[: len(train) // 2], shuffled[len(train) // 2 :]
        old_test = new_test = test
    extra = shlex.split(options.train_args)
    results = []
    with tempfile.TemporaryDirectory(prefix="lstm-cli-forgetting-") as tmp:
        d = Path(tmp)
        files = {
            "old": write_rows(d / "old.csv", old),
            "new": write_rows(d / "new.csv", new),
            "replay": write_rows(d / "replay.csv", new + rng.sample(old, round(len(old) * options.replay))),
            "old_test": write_rows(d / "old_test.csv", old_test),
            "new_test": write_rows(d / "new_test.csv", new_test),
        }
        seed = ["--seed", str(options.seed), "--quiet", *extra]
        runs = [
            ("parent", ["train", str(files["old"]), "-m", str(d / "parent"), *seed]),
            ("child", ["train", str(files["new"]), "--from", str(d / "parent"), "-m", str(d / "child"), *seed]),
            ("replay", ["train", str(files["replay"]), "--from", str(d / "parent"), "-m", str(d / "replay"), *seed]),
        ]
        if not options.no_scratch:
            runs.append(("scratch", ["train", str(options.folder / "train.csv"), "-m", str(d / "scratch"), *seed]))
        for name, args in runs:
            _, seconds = run(args)
            result = {
                "model": name,
                "command": "lstm-cli " + shlex.join(args).replace(str(d) + "/", ""),
                "train_seconds": round(seconds, 1),
            }
            if options.mode == "labels":
                result["old_test"] = accuracy(d / name, files["old_test"])
            if name != "parent" or options.mode == "rows":  # rows: the test set is the old data and the new
                if options.mode == "labels":
                    result["new_test"] = accuracy(d / name, files["new_test"])
                result["test"] = accuracy(d / name, options.folder / "test.csv")
            results.append(result)
            print(json.dumps(result) if options.json else _line(result), flush=True)


def _line(result: dict) -> str:
    figures = "  ".join(f"{k} {result[k]:.4f}" for k in ("old_test", "new_test", "test") if k in result)
    return f"{result['model']:8} {figures}  ({result['train_seconds']:.0f} s)  {result['command']}"


if __name__ == "__main__":
    main()
