"""How `train` scales: peak memory as the CSV grows, 1 against 2 local workers, and the new loop's speed
against the code before it (issue 8), all in one run.

    python benchmarks/scale.py [--source ../shared/datasets/sst2/train.csv] [--sizes 0.25,1,4]
        [--workdir DIR] [--keep] [--old-src DIR] [--skip sizes,workers,speed] [--json | --markdown]
    python benchmarks/scale.py --from-json scale.json --markdown     # a saved --json result as Markdown

Sizes: a CSV of each size (GB) made by repeating the source's rows; every 8th row of copy k gains the
tokens `w<k>` and `v<k>x<row % 32>`, so the vocabulary keeps growing with the file. Each is trained with
`--max-steps 50 --epochs 1` (fixed work), and the table gives peak RSS, wall and CPU seconds, the time of
each phase (from the arrival of the stage lines on stderr) and the largest size of the token cache.
Workers: `--max-steps 200 --steps-per-epoch 100 --batch-size 256` on the source, as one process and as two
TF_CONFIG workers on 127.0.0.1. Speed: useful tokens/s of epochs 2-3 on the source with the defaults,
measured as bench.py does, for this code and for `--old-src` (a `git archive` of the old lstm_cli, run
with PYTHONPATH). Generated files go in --workdir (a temporary one by default) and are deleted unless
--keep. Nothing here asserts anything."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tables import load_json, render  # noqa: E402

LSTM_CLI = [sys.executable, "-m", "lstm_cli"]
PHASES = [  # (name, stderr line that ends it)
    ("start-up", "Reading the data"),
    ("labels pass", "Read "),
    ("vocabulary pass", "Encoding the train rows"),
    ("train cache", "Encoding the validation rows"),
    ("validation cache", "Training on"),
    ("training", "model "),
]


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def make_csv(source: Path, size: int, path: Path) -> int:
    """Repeat the source's rows until the file reaches `size` bytes; returns the rows written."""
    with source.open(encoding="utf-8-sig", newline="") as f:
        rows = [(r["text"], r["label"]) for r in csv.DictReader(f)]

    def line(text: str, label: str) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow([text, label])
        return out.getvalue()

    plain = [line(t, label) if i % 8 else None for i, (t, label) in enumerate(rows)]
    written, copy = 0, 0
    with path.open("w", encoding="utf-8", newline="", buffering=1 << 24) as f:
        f.write("text,label\n")
        while f.tell() < size:
            block = "".join(
                p if p is not None else line(f"{rows[i][0]} w{copy} v{copy}x{i % 32}", rows[i][1])
                for i, p in enumerate(plain)
            )
            f.write(block)
            written += len(rows)
            copy += 1
    return written


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def measure(args: list[str], *, env: dict | None = None, watch: Path | None = None) -> dict:
    """Run one child: wall and CPU seconds, peak RSS (MiB), the stderr lines with their arrival times,
    and the largest size of `watch` seen while it ran."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    lines: list[tuple[float, str]] = []
    peak_disk = [0]
    done = threading.Event()

    def read():
        for text in proc.stderr:
            lines.append((time.perf_counter() - started, text.rstrip("\n")))

    def poll():
        while watch is not None and not done.wait(1.0):
            try:
                peak_disk[0] = max(peak_disk[0], dir_size(watch))
            except OSError:  # files come and go under us
                pass

    threads = [threading.Thread(target=read), threading.Thread(target=poll)]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    done.set()
    for t in threads:
        t.join()
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"failed ({code}): {' '.join(args)}\n" + "\n".join(text for _, text in lines[-20:]))
    return {"wall_s": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "lines": lines, "cache_bytes": peak_disk[0]}  # fmt: skip


def phases(lines: list[tuple[float, str]], wall: float) -> dict[str, float]:
    out, last = {}, 0.0
    for name, marker in PHASES:
        at = next((t for t, text in lines if text.startswith(marker)), None)
        if at is not None:
            out[name] = at - last
            last = at
    out["save and exit"] = wall - last
    return out


def epoch_seconds(lines: list[tuple[float, str]]) -> list[float]:
    return [float(text.split()[-1].rstrip("s")) for _, text in lines if text.startswith("epoch ")]


def size_rows(args, work: Path) -> list[dict]:
    results = []
    for gb in [float(s) for s in args.sizes.split(",")]:
        big = work / f"big-{gb:g}GB.csv"
        started = time.perf_counter()
        rows = make_csv(args.source, int(gb * 1e9), big)
        made = time.perf_counter() - started
        tmp = work / "tmp"
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp)}
        before = load()
        r = measure(["nice", "-n", "5", *LSTM_CLI, "train", str(big), "-m", str(work / "model"),
                     "--max-steps", "50", "--epochs", "1", "--checkpoint-dir", str(work / "ckpt")],
                    env=env, watch=work / "ckpt")  # fmt: skip
        r.update(gb=gb, rows=rows, bytes=big.stat().st_size, generate_s=made, load_before=before, load_after=load())
        r["phases"] = phases(r.pop("lines"), r["wall_s"])
        results.append(r)
        print(f"# {gb:g} GB: {json.dumps(r)}", file=sys.stderr, flush=True)
        big.unlink()
        shutil.rmtree(work / "model", ignore_errors=True)
        shutil.rmtree(work / "ckpt", ignore_errors=True)
    return results


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


TRAIN_FIXED = ["--max-steps", "200", "--steps-per-epoch", "100", "--batch-size", "256", "--epochs", "2"]


def workers(args, work: Path) -> dict:
    before = load()
    one = measure(["nice", "-n", "5", *LSTM_CLI, "train", str(args.source), "-m", str(work / "one"), *TRAIN_FIXED])
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    results: list[dict] = [{}, {}]

    def worker(i: int):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        results[i] = measure(["nice", "-n", "5", *LSTM_CLI, "train", str(args.source), "-m", str(work / f"two-{i}"),
                              *TRAIN_FIXED], env=env)  # fmt: skip

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = 200 * 256
    out = {"load_before": before, "load_after": load(), "rows": rows}
    for name, r in [("one", one), ("chief", results[0]), ("worker", results[1])]:
        epochs = epoch_seconds(r["lines"])
        out[name] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mib": r["peak_rss_mib"],
                     "epoch_s": epochs, "rows_per_s": rows / sum(epochs) if epochs else None}  # fmt: skip
    return out


def speed(args, work: Path) -> dict:
    from bench import train_figures

    out = {"load_before": load()}
    units = embed = 128
    flops = 3 * 2 * 4 * units * (embed + units)
    extra = ["--epochs", "3", "--patience", "9"]
    sources = [("new", None)] + ([("old", args.old_src)] if args.old_src else [])
    for name, src in sources:
        saved = os.environ.get("PYTHONPATH")
        if src:
            os.environ["PYTHONPATH"] = str(src)
        try:
            where = subprocess.run([*LSTM_CLI[:1], "-c", "import lstm_cli; print(lstm_cli.__file__)"],
                                   capture_output=True, text=True).stdout.strip()  # fmt: skip
            out[name] = {**train_figures(args.source, work / f"speed-{name}", extra, flops), "code": where}
        finally:
            os.environ.pop("PYTHONPATH", None)
            if saved is not None:
                os.environ["PYTHONPATH"] = saved
    out["load_after"] = load()
    return out


def table(r: dict, *, as_markdown: bool = False) -> str:
    parts = []
    if "sizes" in r:
        header = ["CSV", "rows", "peak RSS", "wall", "CPU", "token cache on disk", "phases (s)", "load"]
        rows = [[f"{s['bytes'] / 1e9:.2f} GB", f"{s['rows']:,}", f"{s['peak_rss_mib']:,.0f} MiB",
                 f"{s['wall_s']:.0f} s", f"{s['cpu_s']:.0f} s", f"{s['cache_bytes'] / 1e6:,.0f} MB",
                 ", ".join(f"{k} {v:.0f}" for k, v in s["phases"].items()), str(s["load_before"])]
                for s in r["sizes"]]  # fmt: skip
        parts.append(render(header, rows, as_markdown=as_markdown))
    if "workers" in r:
        w = r["workers"]
        header = ["200 steps of 256 rows", "rows/s (epochs)", "epoch s", "wall", "CPU", "peak RSS"]
        names = {"one": "one process", "chief": "chief of two", "worker": "worker of two"}
        rows = [[label, f"{w[name]['rows_per_s']:,.0f}", ", ".join(f"{e:.1f}" for e in w[name]["epoch_s"]),
                 f"{w[name]['wall_s']:.1f} s", f"{w[name]['cpu_s']:.1f} s", f"{w[name]['peak_rss_mib']:,.0f} MiB"]
                for name, label in names.items()]  # fmt: skip
        parts.append(render(header, rows, as_markdown=as_markdown))
        parts.append(f"load {w['load_before']} before, {w['load_after']} after")
    if "speed" in r:
        sp = r["speed"]
        header = ["code", "useful tokens/s (epochs 2+)", "rows/s", "epoch s (first)", "batch", "wall", "peak RSS"]
        rows = [[name, f"{t['tokens_per_s']:,.0f}", f"{t['rows_per_s']:,.0f}",
                 f"{t['epoch_s']:.1f} ({t['first_epoch_s']:.1f})", str(t["batch_size"]), f"{t['wall_s']:.1f} s",
                 f"{t['peak_rss_mib']:,.0f} MiB"]
                for name, t in ((n, sp[n]) for n in ("old", "new") if n in sp)]  # fmt: skip
        parts.append(render(header, rows, as_markdown=as_markdown))
        parts.append(f"load {sp['load_before']} before, {sp['load_after']} after")
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("../shared/datasets/sst2/train.csv"))
    parser.add_argument("--sizes", default="0.25,1,4", help="CSV sizes in GB, comma-separated")
    parser.add_argument("--workdir", type=Path, help="where the CSVs go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep --workdir's generated files")
    parser.add_argument("--old-src", type=Path, help="a directory holding an older lstm_cli package to compare")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: sizes, workers, speed")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the docs)")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="print the tables of a saved --json result")
    args = parser.parse_args()
    if args.from_json:
        print(table(load_json(args.from_json), as_markdown=args.markdown))
        return
    args.source = args.source.resolve()
    skip = set(filter(None, args.skip.split(",")))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lstm-cli-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    r: dict = {"source": str(args.source), "cpus": os.cpu_count()}
    try:
        if "speed" not in skip:
            r["speed"] = speed(args, work)
        if "workers" not in skip:
            r["workers"] = workers(args, work)
        if "sizes" not in skip:
            r["sizes"] = size_rows(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(r, indent=2) if args.json else table(r, as_markdown=args.markdown))


if __name__ == "__main__":
    main()
