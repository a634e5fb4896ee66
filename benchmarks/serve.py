"""How fast `lstm-cli serve` answers, over loopback, beside the engine's streaming rate in the same run.

Per run: the engine streaming `lstm-cli predict -` over the data's texts (lines/s after load), then a server
started on 127.0.0.1 with a free port and loaded by `wrk` (C, one thread, CONCURRENCY connections) for
DURATION seconds per phase, each phase also stopped after --max-requests responses:
  1. one-text requests, {"instances": [text]}: requests/s, p50 and p99 latency;
  2. 64-text requests: texts/s (requests/s x 64), p50 and p99.
Texts cycle through the data's train.csv (SST-2's: short phrases, as bench.py streams). The load generator
runs on the same cores as the server. Loopback only; no other network target.

    python benchmarks/serve.py --model DIR --data ../shared/datasets/sst2 [--runs 3] [--json] [--markdown]
    python benchmarks/serve.py --from-json run1.json run2.json --markdown   # saved --json results as one table

Needs `wrk` (Debian: apt-get install wrk). Nothing here asserts a speed; targets are printed beside."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LSTM_CLI = [sys.executable, "-m", "lstm_cli"]
HOST = "127.0.0.1"  # loopback only
TARGETS = {"one_rps": 800, "one_p99_ms": 100, "batch_texts_per_s": 20_000}


def read_texts(data: Path, limit: int) -> list[str]:
    with (data / "train.csv").open(newline="", encoding="utf-8") as f:
        texts = [row["text"].replace("\n", " ") for row in csv.DictReader(f)]
    return (texts * (limit // len(texts) + 1))[:limit]


def engine_rate(model: Path, texts: list[str], tmp: Path) -> float:
    """`lstm-cli predict -` lines/s after load: a run over all texts minus a run over one."""

    def timed(lines: list[str]) -> float:
        source = tmp / "lines.txt"
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with source.open("rb") as stdin:
            start = time.perf_counter()
            subprocess.run([*LSTM_CLI, "predict", "-m", str(model), "-"], stdin=stdin, stdout=subprocess.DEVNULL,
                           check=True)  # fmt: skip
            return time.perf_counter() - start

    one = min(timed(texts[:1]) for _ in range(2))
    return len(texts) / (timed(texts) - one)


class Server:
    """`lstm-cli serve` in a child process on a free loopback port."""

    def __init__(self, model: Path, extra: list[str]):
        self.log = tempfile.TemporaryFile()
        args = [*LSTM_CLI, "serve", "-m", str(model), "--name", "bench", "--host", HOST, "--port", "0", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while not (url := self._url()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {self._stderr()}")
            time.sleep(0.05)
        self.url = url
        self.root = url.split("/v1/")[0]

    def _stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def _url(self) -> str | None:
        found = re.search(r"http://\S+/v1/models/bench", self._stderr())
        return found.group(0) if found else None

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.root + "/metrics", timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                values[key] = float(value)
        return values

    def stop(self) -> tuple[int, float]:
        """(exit code, seconds) after SIGTERM."""
        start = time.perf_counter()
        self.proc.terminate()
        code = self.proc.wait(timeout=30)
        return code, time.perf_counter() - start


def lua_script(bodies: list[str], path: str, max_requests: int) -> str:
    """wrk's script: POST the bodies in turn; stop after max_requests responses (each thread counts its own)."""
    quoted = ",\n".join(json.dumps(b) for b in bodies)  # a JSON string is a valid Lua string literal here
    return f"""
local bodies = {{
{quoted}
}}
local i = 0
local answered = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "{path}", {{["Content-Type"] = "application/json"}}, bodies[i])
end
response = function(status, headers, body)
  answered = answered + 1
  if answered >= {max_requests} then wrk.thread:stop() end
end
"""


def load(server: Server, bodies: list[str], *, concurrency: int, seconds: float, max_requests: int, tmp: Path) -> dict:
    script = tmp / "bodies.lua"
    script.write_text(lua_script(bodies, "/v1/models/bench:predict", max_requests), encoding="utf-8")
    before = server.metrics()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), server.root],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    after = server.metrics()
    batches = after["lstm_cli_batch_texts_count"] - before["lstm_cli_batch_texts_count"]
    texts = after["lstm_cli_batch_texts_sum"] - before["lstm_cli_batch_texts_sum"]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)),
        "p99_ms": _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "mean_batch_texts": texts / batches if batches else 0.0,
    }


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def one_run(args, texts: list[str], tmp: Path) -> dict:
    r = {"load_average_start": load_average()}
    r["engine_lines_per_s"] = engine_rate(args.model, texts[: args.stream_lines], tmp)
    server = Server(args.model, args.server_args)
    try:
        one = [json.dumps({"instances": [t]}) for t in texts[: args.bodies]]
        many = [json.dumps({"instances": texts[i : i + 64]}) for i in range(0, 64 * args.bodies, 64)]
        warm = {"concurrency": args.concurrency, "seconds": 1, "max_requests": args.max_requests, "tmp": tmp}
        load(server, one, **warm)
        r["one"] = load(server, one, concurrency=args.concurrency, seconds=args.duration,
                        max_requests=args.max_requests, tmp=tmp)  # fmt: skip
        load(server, many, **warm)
        r["batch64"] = load(server, many, concurrency=args.concurrency, seconds=args.duration,
                            max_requests=args.max_requests, tmp=tmp)  # fmt: skip
        r["batch64"]["texts_per_s"] = r["batch64"]["requests_per_s"] * 64
    finally:
        r["exit_code"], r["stop_s"] = server.stop()
    r["load_average_end"] = load_average()
    return r


def table(runs: list[dict], markdown: bool) -> str:
    header = ["run", "engine lines/s", "1-text req/s", "p50 ms", "p99 ms", "batch", "64-text texts/s",
              "p50 ms ", "p99 ms ", "batch ", "errors", "SIGTERM", "load"]  # fmt: skip
    rows = []
    for i, r in enumerate(runs, 1):
        one, many = r["one"], r["batch64"]
        errors = one["non_2xx"] + many["non_2xx"]
        rows.append([str(i), f"{r['engine_lines_per_s']:,.0f}", f"{one['requests_per_s']:,.0f}",
                     f"{one['p50_ms']:.1f}", f"{one['p99_ms']:.1f}", f"{one['mean_batch_texts']:.1f}",
                     f"{many['texts_per_s']:,.0f}", f"{many['p50_ms']:.1f}", f"{many['p99_ms']:.1f}",
                     f"{many['mean_batch_texts']:.0f}", str(errors), f"{r['exit_code']} in {r['stop_s']:.1f}s",
                     f"{r['load_average_start']:.1f}-{r['load_average_end']:.1f}"])  # fmt: skip
    targets = (f"targets: >= {TARGETS['one_rps']} one-text requests/s with p99 <= {TARGETS['one_p99_ms']} ms; "
               f">= {TARGETS['batch_texts_per_s']:,} texts/s in 64-text requests")  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n\n" + targets
    widths = [max(len(h), *(len(row[k]) for row in rows)) for k, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines) + "\n" + targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a trained model directory")
    parser.add_argument("--data", type=Path, help="a folder with train.csv (text,label)")
    parser.add_argument("--from-json", type=Path, nargs="+", metavar="FILE", help="print saved --json results")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per phase")
    parser.add_argument("--bodies", type=int, default=500, help="distinct request bodies per phase")
    parser.add_argument("--stream-lines", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("server_args", nargs="*", help="more `lstm-cli serve` options, after --")
    args = parser.parse_args()
    if args.from_json:
        runs = [run for path in args.from_json for run in json.loads(path.read_text(encoding="utf-8"))]
        print(table(runs, args.markdown))
        return
    if args.model is None or args.data is None:
        parser.error("--model and --data are required (or --from-json FILE...)")
    if shutil.which("wrk") is None:
        raise SystemExit("benchmarks/serve.py needs wrk: apt-get install wrk")
    texts = read_texts(args.data, max(args.stream_lines, 64 * args.bodies))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            runs.append(one_run(args, texts, Path(tmp)))
            print(table(runs[-1:], False).splitlines()[1], file=sys.stderr, flush=True)
    print(json.dumps(runs, indent=2) if args.json else table(runs, args.markdown))


if __name__ == "__main__":
    main()
