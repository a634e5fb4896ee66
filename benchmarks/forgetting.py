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

With --multi-label (a label field holds labels joined by ','; GoEmotions), every model is trained with
--multi-label, A's data is the rows holding one of A's labels with only those, B's likewise, and the figures
are micro-F1 at each model's own thresholds on the whole test set, over A's labels, B's and all of them.

    python benchmarks/forgetting.py ../shared/datasets/banking77 [--seed 1337] [--replay 0.2]
        [--mode labels|rows] [--multi-label] [--train-args "--epochs 10"] [--no-scratch] [--json]
        [--work DIR [--models parent,child]]

--work keeps the data and models in DIR (a model already there is evaluated, not trained again), so the
runs can be spread over several invocations; --models picks which to train or evaluate this time.

Nothing here asserts anything."""

from __future__ import annotations

import argparse
import contextlib
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


def label_set(label: str) -> set[str]:
    """A multi-label field's labels (joined by ',', as train --multi-label reads them by default)."""
    return {part.strip() for part in label.split(",") if part.strip()}


def keep_labels(rows: list[tuple[str, str]], labels: set[str]) -> list[tuple[str, str]]:
    """The rows holding one of `labels`, with only those (a multi-label data set annotated for them alone)."""
    kept = ((text, sorted(label_set(label) & labels)) for text, label in rows)
    return [(text, ",".join(held)) for text, held in kept if held]


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


def micro_f1s(model: Path, data: Path, groups: dict[str, set[str]]) -> dict[str, float]:
    """A multi-label model's micro-F1 at its thresholds over each group of labels it has, from evaluate's
    per-label counts on `data` (its labels the model lacks are left out, as evaluate leaves them)."""
    out, _ = run(["evaluate", str(data), "-m", str(model), "--format", "json"])
    per_label = json.loads(out)["per_class"]
    scores = {}
    for name, labels in groups.items():
        counted = [per_label[label] for label in sorted(labels) if label in per_label]
        if not counted:
            continue
        hits = sum(round(c["recall"] * c["support"]) for c in counted)
        denominator = sum(c["predicted"] + c["support"] for c in counted)
        scores[name] = 2 * hits / denominator if denominator else 0.0
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--replay", type=float, default=0.2, help="fraction of the old rows added to the new")
    parser.add_argument("--mode", choices=("labels", "rows"), default="labels")
    parser.add_argument("--train-args", default="", help="more options for every train command")
    parser.add_argument("--no-scratch", action="store_true", help="skip the model trained on everything")
    parser.add_argument("--multi-label", action="store_true", help="label fields hold labels joined by ','")
    parser.add_argument("--work", type=Path, help="keep data and models here; models already there are reused")
    parser.add_argument("--models", default="parent,child,replay,scratch", help="which of them, comma-separated")
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    train, test = read_rows(options.folder / "train.csv"), read_rows(options.folder / "test.csv")
    rng = random.Random(options.seed)
    labels_of = label_set if options.multi_label else (lambda label: {label})
    labels = sorted({label for _, field in train for label in labels_of(field)})
    old_labels = set(labels[: len(labels) // 2]) if options.mode == "labels" else set(labels)
    if options.mode == "labels" and options.multi_label:
        old, new = keep_labels(train, old_labels), keep_labels(train, set(labels) - old_labels)
        old_test = new_test = test  # scored over each half's labels (micro_f1s)
    elif options.mode == "labels":
        old = [r for r in train if r[1] in old_labels]
        new = [r for r in train if r[1] not in old_labels]
        old_test = [r for r in test if r[1] in old_labels]
        new_test = [r for r in test if r[1] not in old_labels]
    else:
        shuffled = rng.sample(train, len(train))
        old, new = shuffled[: len(train) // 2], shuffled[len(train) // 2 :]
        old_test = new_test = test
    extra = shlex.split(options.train_args) + (["--multi-label"] if options.multi_label else [])
    chosen = set(options.models.split(","))
    with contextlib.ExitStack() as stack:
        d = options.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lstm-cli-forgetting-")))
        d.mkdir(parents=True, exist_ok=True)
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
            if name not in chosen:
                continue
            seconds = None if (d / name / "metadata.json").is_file() else run(args)[1]
            result = {
                "model": name,
                "command": "lstm-cli " + shlex.join(args).replace(str(d) + "/", ""),
                "train_seconds": round(seconds, 1) if seconds is not None else None,  # None: trained before
            }
            if options.multi_label:
                groups = {"old_test": old_labels, "new_test": set(labels) - old_labels, "test": set(labels)}
                if options.mode == "rows":
                    groups = {"test": set(labels)}
                result.update(micro_f1s(d / name, options.folder / "test.csv", groups))
                if name == "parent" and options.mode == "labels":
                    result.pop("test", None)  # the old labels only: the same figure as old_test
            else:
                if options.mode == "labels":
                    result["old_test"] = accuracy(d / name, files["old_test"])
                if name != "parent" or options.mode == "rows":  # rows: the test set is the old data and the new
                    if options.mode == "labels":
                        result["new_test"] = accuracy(d / name, files["new_test"])
                    result["test"] = accuracy(d / name, options.folder / "test.csv")
            print(json.dumps(result) if options.json else _line(result), flush=True)


def _line(result: dict) -> str:
    figures = "  ".join(f"{k} {result[k]:.4f}" for k in ("old_test", "new_test", "test") if k in result)
    seconds = "trained before" if result["train_seconds"] is None else f"{result['train_seconds']:.0f} s"
    return f"{result['model']:8} {figures}  ({seconds})  {result['command']}"


if __name__ == "__main__":
    main()
