"""Peak memory of `train` as the CSV grows (issue 32, item 8): it should stay flat once the vocabulary stops
growing, whatever the file's size.

    python benchmarks/memory.py [--source ../shared/datasets/sst2/train.csv] [--sizes 0.25,1]
        [--workdir DIR] [--keep] [--max-steps 30] [--sentences 3] [--json]

For each size (GB) a CSV is written whose rows are three random source sentences joined by spaces, with a
random binary label (seeded), so the vocabulary barely grows with the size and what grows with the file
is only what lstm-cli keeps per row or per token (`--sentences 60` makes long documents instead). Each is
trained with `--max-steps 30 --epochs 1` in a child process, and its peak RSS (ru_maxrss of that child, as
/usr/bin/time -v reports it) is printed with wall and CPU seconds. Heavy: run it under
`flock /work/cpu.lock`. Nothing here asserts anything."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LSTM_CLI = [sys.executable, "-m", "lstm_cli"]
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sst2" / "train.csv"


def make_csv(source: Path, size: int, path: Path, seed: int = 0, sentences: int = 3) -> int:
    """Rows of `sentences` random source sentences joined, random binary labels, until `size` bytes; returns
    rows."""
    with source.open(encoding="utf-8-sig", newline="") as f:
        pool = [row["text"] for row in csv.DictReader(f)]
    rng = random.Random(seed)
    rows = written = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("text,label\n")
        while written < size:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            for _ in range(4096):
                writer.writerow([" ".join(rng.choices(pool, k=sentences)), rng.choice(("pos", "neg"))])
            block = out.getvalue()
            f.write(block)
            written += len(block.encode("utf-8"))
            rows += 4096
    return rows


def train(csv_path: Path, model: Path, max_steps: int) -> dict:
    """Train in a child process; its own peak RSS (os.wait4's rusage of that child), wall and CPU seconds."""
    start = time.perf_counter()
    command = [*LSTM_CLI, "train", str(csv_path), "-m", str(model), "--epochs", "1",
               "--max-steps", str(max_steps), "--quiet"]  # fmt: skip
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if child.returncode != 0:
            stderr.seek(0)
            sys.exit(f"train failed on {csv_path} ({child.returncode}): {stderr.read().decode()[-2000:]}")
    return {
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # KiB on Linux
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--sizes", default="0.25,1", help="corpus sizes in GB, comma-separated")
    parser.add_argument("--workdir", type=Path, help="where the corpora go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the generated corpora")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--sentences", type=int, default=3, help="source sentences per row (60: long documents)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = sorted(float(s) for s in args.sizes.split(","))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lstm-cli-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for size in sizes:
            path = workdir / (
                f"corpus-{size:g}GB.csv" if args.sentences == 3 else f"corpus-{size:g}GB-{args.sentences}.csv"
            )
            rows = make_csv(args.source, int(size * 1e9), path, sentences=args.sentences) if not path.exists() else None
            figures = train(path, workdir / f"model-{size:g}", args.max_steps)
            results.append({"size_gb": size, "bytes": path.stat().st_size, "rows": rows, **figures})
            if not args.json:
                print(f"{size:>6g} GB  {figures['peak_rss_mib']:>6,} MiB peak RSS  "
                      f"{figures['wall_s']:>7.1f} s wall  {figures['cpu_s']:>7.1f} s CPU", flush=True)  # fmt: skip
            if not args.keep:
                path.unlink()
            shutil.rmtree(workdir / f"model-{size:g}", ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"load": os.getloadavg()[0], "max_steps": args.max_steps, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
