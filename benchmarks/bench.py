"""How fast lstm-cli is, measured on this machine in one process tree, beside the seeds' Keras recipe.

Reports training useful (non-padding) tokens/s and rows/s, epoch time, test accuracy, the same on long
documents, streaming predict lines/s and tokens/s and cold one-off predict through the numpy engine (the
default) and through TensorFlow (`--engine tensorflow`, the only path before the engine) in the same run,
cold explain, `--help`, peak RSS, and the machine's matmul GFLOP/s with the fraction of it training
reaches. Short measurements are medians; each cold one-off row also gives its CPU seconds (user + system),
which a machine busy with other work inflates far less than wall time, and the report records the load
average at its start and end. `--model DIR` serves an already trained model and skips the training rows.

lstm_cli's bytecode is compiled first (`compileall`, as `pip install` does), so a checkout run with
PYTHONDONTWRITEBYTECODE=1 does not time Python compiling lstm-cli's sources on every start (about 40 ms).

    python benchmarks/bench.py --data ../shared/datasets/sst2 [--json] [--repeats 3] [--model DIR] [--before REV]
    python benchmarks/bench.py --from-json result.json --markdown     # a saved --json result as Markdown

`--before REV` also streams through lstm-cli as it was at that git revision, on a model that revision
trains with its own defaults: the product before a change, measured in the same run.

DATA must hold train.csv and test.csv with text,label columns. Nothing here asserts a speed."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tables import load_json, markdown

HERE = Path(__file__).resolve().parent
LSTM_CLI = [sys.executable, "-m", "lstm_cli"]
_PUNCTUATION = re.compile(r"[!\"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~']")


def tokens(text: str, max_length: int = 200) -> int:
    """Useful tokens of a text as lstm-cli counts them (lowercase, strip punctuation, split, truncate)."""
    return min(max_length, len(_PUNCTUATION.sub("", text.lower()).split()))


LAST_CPU_S = [0.0]  # user + system CPU seconds of the last child run() waited for


def run(args: list[str], *, stdin: Path | None = None, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout) of one child process; its CPU time goes to LAST_CPU_S.

    `env` with PYTHONPATH: the child runs in that directory too, so `python -m lstm_cli` finds the lstm_cli
    there before one in this process's working directory."""
    with open(stdin or os.devnull, "rb") as source, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        cwd = env["PYTHONPATH"] if env and "PYTHONPATH" in env else None
        proc = subprocess.Popen(args, stdin=source, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child and gives its own rusage
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        LAST_CPU_S[0] = usage.ru_utime + usage.ru_stime
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"failed: {' '.join(args)}\n{err.read().decode(errors='replace')}")
        return seconds, usage.ru_maxrss / 1024, out.read().decode()


def median_run(args: list[str], repeats: int, **kwargs) -> float:
    return statistics.median(run(args, **kwargs)[0] for _ in range(repeats))


def cold_run(args: list[str], repeats: int, **kwargs) -> dict[str, float]:
    """Median wall and CPU seconds of a one-off command."""
    wall, cpu = [], []
    for _ in range(repeats):
        wall.append(run(args, **kwargs)[0])
        cpu.append(LAST_CPU_S[0])
    return {"s": statistics.median(wall), "cpu_s": statistics.median(cpu)}


def load_average() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def matmul_gflops() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(10))
    return 2 * 2048**3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def read_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def long_documents(rows: list[tuple[str, str]], path: Path, seed: int = 0) -> int:
    """Join same-label texts into 150-300 token documents; returns the number written."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    for text, label in rows:
        by_label.setdefault(label, []).append(text)
    docs = []
    for label, texts in by_label.items():
        current, length, goal = [], 0, rng.integers(150, 301)
        for text in texts:
            current.append(text)
            length += tokens(text, 10_000)
            if length >= goal:
                docs.append((" ".join(current), label))
                current, length, goal = [], 0, rng.integers(150, 301)
    rng.shuffle(docs)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(docs)
    return len(docs)


def train_figures(data: Path, model: Path, extra: list[str], flops_per_token: float) -> dict:
    seconds, rss, _ = run([*LSTM_CLI, "train", str(data), "-m", str(model), "-q", *extra])
    meta = json.loads((model / "metadata.json").read_text())
    rows = read_rows(data)
    total_tokens = sum(tokens(t, meta["config"]["max_length"]) for t, _ in rows)
    train_rows = meta["training"]["rows"]["train"]
    train_tokens = total_tokens * train_rows / len(rows)  # the split is stratified and random
    epochs = meta["training"]["epoch_seconds"]
    steady = statistics.median(epochs[1:]) if len(epochs) > 1 else epochs[0]
    return {
        "wall_s": seconds,
        "epochs_run": len(epochs),
        "first_epoch_s": epochs[0],
        "epoch_s": steady,
        "train_rows": train_rows,
        "tokens_per_s": train_tokens / steady,
        "rows_per_s": train_rows / steady,
        "wall_rows_per_s": train_rows * len(epochs) / seconds,
        "mean_tokens": total_tokens / len(rows),
        "peak_rss_mib": rss,
        "batch_size": meta["config"]["batch_size"],
        "val_accuracy": meta["metrics"].get("val_accuracy"),
        "gflops": train_tokens / steady * flops_per_token / 1e9,
    }


def stream_figures(
    predict: list[str], lines: list[str], stream: Path, one: Path, repeats: int, env: dict[str, str] | None = None
) -> dict:
    """Cold one-off and streaming runs of a `predict` command line, as separate processes."""
    cold, cold_cpu = [], []
    for _ in range(repeats):
        cold.append(run([*predict, "-"], stdin=one, env=env)[0])
        cold_cpu.append(LAST_CPU_S[0])  # CPU time: what a busy machine does not inflate much
    cold = statistics.median(cold)
    argument = cold_run([*predict, lines[0]], repeats, env=env)
    full, cpu = [], []
    for _ in range(repeats):
        full.append(run([*predict, "-"], stdin=stream, env=env))
        cpu.append(LAST_CPU_S[0])
    stream_s = statistics.median(s for s, _, _ in full) - cold
    return {
        "cold_one_line_s": cold,
        "cold_one_line_cpu_s": statistics.median(cold_cpu),
        "cold_argument_s": argument["s"],
        "cold_argument_cpu_s": argument["cpu_s"],
        "stream_lines": len(lines),
        "stream_s_after_load": stream_s,
        "lines_per_s": len(lines) / stream_s,
        "tokens_per_s": sum(tokens(t) for t in lines) / stream_s,
        "cpu_s": statistics.median(cpu),
        "peak_rss_mib": max(rss for _, rss, _ in full),
        "output_lines_ok": all(len(out.splitlines()) == len(lines) for _, _, out in full),
    }


def predict_figures(r: dict, args, model: Path, train_csv: Path, tmp: Path) -> None:
    """predict through the numpy engine (the default) and through TensorFlow (before: the only path),
    explain, and --help; all in this run, on the same model and lines."""
    texts = [t for t, _ in read_rows(train_csv)]
    lines = (texts * (args.stream_lines // len(texts) + 1))[: args.stream_lines]
    stream = tmp / "stream.txt"
    stream.write_text("\n".join(t.replace("\n", " ") for t in lines) + "\n", encoding="utf-8")
    one = tmp / "one.txt"
    one.write_text(lines[0] + "\n", encoding="utf-8")
    predict = [*LSTM_CLI, "predict", "-m", str(model), "--engine"]
    r["predict_tensorflow"] = stream_figures([*predict, "tensorflow"], lines, stream, one, args.repeats)
    r["predict"] = stream_figures([*predict, "numpy"], lines, stream, one, args.repeats)
    r["predict"]["speedup_lines_per_s"] = r["predict"]["lines_per_s"] / r["predict_tensorflow"]["lines_per_s"]
    if args.before:
        r["before"] = before_figures(args, train_csv, lines, stream, one, tmp)
        r["predict"]["speedup_vs_before"] = r["predict"]["lines_per_s"] / r["before"]["lines_per_s"]
    explain = [*LSTM_CLI, "explain", "-m", str(model), lines[0]]
    occlusion = cold_run(explain, args.repeats)
    r["explain_cold_s"], r["explain_cold_cpu_s"] = occlusion["s"], occlusion["cpu_s"]
    r["explain_ig_cold_s"] = median_run([*explain, "--method", "integrated-gradients"], args.repeats)


def before_figures(args, train_csv: Path, lines: list[str], stream: Path, one: Path, tmp: Path) -> dict:
    """`predict` as lstm-cli was at git revision `args.before`, on a model it trained with its own defaults
    (or `args.before_model`): the product before, on the same lines in the same run. A model trained by
    today's defaults is no use to it (older lstm-cli refuses graph operations it never exported)."""
    source = tmp / "before"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", args.before, "lstm_cli"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(source / "lstm_cli")], check=True)
    env = {**os.environ, "PYTHONPATH": str(source)}
    model = args.before_model.resolve() if args.before_model else tmp / "before-model"
    if not args.before_model:
        run([*LSTM_CLI, "train", str(train_csv.resolve()), "-m", str(model), "-q"], env=env)
    figures = stream_figures([*LSTM_CLI, "predict", "-m", str(model)], lines, stream, one, args.repeats, env=env)
    figures["revision"] = args.before
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="directory with train.csv and test.csv")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-lines", type=int, default=100_000)
    parser.add_argument("--recipe-steps", type=int, default=150)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the docs)")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="print the table of a saved --json result")
    parser.add_argument("--model", type=Path, help="serve this trained model; skips the training and recipe rows")
    parser.add_argument("--before", metavar="REV", help="also stream through lstm-cli as it was at this git "
                        "revision (809977e: the last before the engine), on a model it trains itself")  # fmt: skip
    parser.add_argument("--before-model", type=Path, help="with --before: serve this model, trained by that revision")
    args = parser.parse_args()
    if args.from_json:
        print(table(load_json(args.from_json), as_markdown=args.markdown))
        return
    if not args.data:
        parser.error("--data is required (or --from-json FILE)")
    train_csv, test_csv = args.data / "train.csv", args.data / "test.csv"
    r = {"data": str(args.data), "cpus": os.cpu_count(), "load_average_start": load_average()}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "lstm_cli")], check=True)
    # FLOPs per useful training token: forward 2 x 4U(E+U) for the LSTM gates, backward about twice that.
    units = embed = 128
    flops_per_token = 3 * 2 * 4 * units * (embed + units)

    r["matmul_gflops"] = matmul_gflops()
    help_run = cold_run([*LSTM_CLI, "--help"], max(5, args.repeats))
    r["help_s"], r["help_cpu_s"] = help_run["s"], help_run["cpu_s"]
    r["tf_import_s"] = median_run([sys.executable, "-c", "import tensorflow"], args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or tmp / "model"
        if args.model:  # only the serving rows: predict, explain, --help
            predict_figures(r, args, model, train_csv, tmp)
            r["load_average_end"] = load_average()
            print(json.dumps(r, indent=2) if args.json else table(r, as_markdown=args.markdown))
            return
        r["train"] = train_figures(train_csv, model, [], flops_per_token)
        _, _, out = run([*LSTM_CLI, "evaluate", str(test_csv), "-m", str(model), "--json"])
        r["test_accuracy"] = json.loads(out)["accuracy"]
        r["test_macro_f1"] = json.loads(out)["macro_f1"]

        docs = long_documents(read_rows(train_csv), tmp / "long.csv")
        r["long"] = train_figures(
            tmp / "long.csv", tmp / "long-model", ["--epochs", "3", "--patience", "9"], flops_per_token
        )
        r["long"]["documents"] = docs

        predict_figures(r, args, model, train_csv, tmp)
    _, _, out = run([sys.executable, str(HERE / "keras_recipe.py"), str(train_csv), "--steps", str(args.recipe_steps)])
    r["keras_recipe"] = json.loads(out.strip().splitlines()[-1])
    r["fraction_of_matmul_peak"] = r["train"]["gflops"] / r["matmul_gflops"]
    r["speedup_vs_recipe"] = r["train"]["tokens_per_s"] / r["keras_recipe"]["tokens_per_s"]
    r["long_speedup_vs_recipe"] = r["long"]["tokens_per_s"] / r["keras_recipe"]["tokens_per_s"]
    r["load_average_end"] = load_average()
    print(json.dumps(r, indent=2) if args.json else table(r, as_markdown=args.markdown))


def before_rows(r: dict) -> list[tuple[str, str]]:
    if "before" not in r:
        return []
    b, p = r["before"], r["predict"]
    return [
        (f"  before ({b['revision']}): streaming lines/s",
         f"{b['lines_per_s']:,.0f}  (now {p['speedup_vs_before']:.1f}x; CPU {b['cpu_s']:.1f} s, "
         f"peak RSS {b['peak_rss_mib']:,.0f} MiB)"),
        (f"  before ({b['revision']}): cold one-off", f"{b['cold_one_line_s']:.2f} s / {b['cold_argument_s']:.2f} s"),
    ]  # fmt: skip


def table(r: dict, *, as_markdown: bool = False) -> str:
    p, pt = r["predict"], r["predict_tensorflow"]
    rows = [
        ("machine: fp32 matmul (numpy, 2048^2)", f"{r['matmul_gflops']:.0f} GFLOP/s on {r['cpus']} CPUs"),
        ("machine: load average (1 min), start/end", f"{r['load_average_start']} / {r['load_average_end']}"),
    ]
    if "train" in r:
        t, lg, k = r["train"], r["long"], r["keras_recipe"]
        rows += [
            ("train: useful tokens/s (epochs 2+)", f"{t['tokens_per_s']:,.0f}  ({r['speedup_vs_recipe']:.1f}x recipe)"),
            ("train: rows/s (epochs 2+)", f"{t['rows_per_s']:,.0f}"),
            ("train: epoch time, first epoch", f"{t['epoch_s']:.1f} s, {t['first_epoch_s']:.1f} s (with tracing)"),
            ("train: wall time (load, fit, save)", f"{t['wall_s']:.1f} s, {t['epochs_run']} epochs, batch {t['batch_size']}"),  # noqa: E501
            ("train: fraction of matmul peak", f"{r['fraction_of_matmul_peak']:.1%} ({t['gflops']:.1f} GFLOP/s)"),
            ("train: peak RSS", f"{t['peak_rss_mib']:,.0f} MiB"),
            ("test accuracy / macro-F1", f"{r['test_accuracy']:.4f} / {r['test_macro_f1']:.4f}"),
            ("long docs: useful tokens/s", f"{lg['tokens_per_s']:,.0f}  ({r['long_speedup_vs_recipe']:.1f}x the recipe; "  # noqa: E501
                                           f"{lg['documents']:,} docs, {lg['mean_tokens']:.0f} tokens avg)"),
        ]  # fmt: skip
    rows += [
        ("predict: streaming lines/s (after load)", f"{p['lines_per_s']:,.0f}  (TensorFlow {pt['lines_per_s']:,.0f}: "
                                                    f"{p['speedup_lines_per_s']:.1f}x; {p['stream_lines']:,} lines)"),
        ("predict: streaming tokens/s", f"{p['tokens_per_s']:,.0f}  (TensorFlow {pt['tokens_per_s']:,.0f})"),
        ("predict: CPU seconds for the stream", f"{p['cpu_s']:.1f} s  (TensorFlow {pt['cpu_s']:.1f} s)"),
        *before_rows(r),
        ("predict: cold one-off (stdin / argument)", f"{p['cold_one_line_s']:.2f} s / {p['cold_argument_s']:.2f} s  "
                                                    f"(TensorFlow {pt['cold_one_line_s']:.2f} s / "
                                                    f"{pt['cold_argument_s']:.2f} s; its import alone "
                                                    f"{r['tf_import_s']:.2f} s)"),
        ("predict: cold one-off, CPU time", f"{p['cold_one_line_cpu_s']:.2f} s / {p['cold_argument_cpu_s']:.2f} s  "
                                           f"(TensorFlow {pt['cold_one_line_cpu_s']:.2f} s / "
                                           f"{pt['cold_argument_cpu_s']:.2f} s)"),
        ("predict: peak RSS", f"{p['peak_rss_mib']:,.0f} MiB  (TensorFlow {pt['peak_rss_mib']:,.0f} MiB)"),
        ("explain: cold one-off (occlusion / IG)", f"{r['explain_cold_s']:.2f} s / {r['explain_ig_cold_s']:.2f} s  "
                                                  f"(occlusion CPU time {r['explain_cold_cpu_s']:.2f} s)"),
        ("--help", f"{r['help_s']:.3f} s  (CPU time {r['help_cpu_s']:.3f} s)"),
    ]  # fmt: skip
    if "train" in r:
        k = r["keras_recipe"]
        rows.append(
            ("Keras recipe: useful tokens/s", f"{k['tokens_per_s']:,.0f}  (pad 200, batch 32, {k['rows']:,} rows)")
        )
    if as_markdown:
        return markdown(["measure", Path(r["data"]).name], [[a.strip(), b] for a, b in rows])
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


if __name__ == "__main__":
    main()
