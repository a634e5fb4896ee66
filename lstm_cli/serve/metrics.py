"""The server's counters and histograms, written in Prometheus' text exposition format (version 0.0.4).

Updated only on the event loop's thread, so no locks; a dozen series do not need a client library."""

from __future__ import annotations

import bisect
from collections import Counter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # texts


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, total = [], 0
        sep = "," if labels else ""
        for bound, count in zip([*self.buckets, "+Inf"], self.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{_number(bound)}"}} {total}')
        braces = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{braces} {_number(self.sum)}", f"{name}_count{braces} {total}"]
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (route, HTTP status) -> requests
        self.latency: dict[str, Histogram] = {}  # route -> seconds from request to response
        self.batches = Histogram(BATCH_BUCKETS)  # texts per engine batch
        self.batch_requests = Histogram(BATCH_BUCKETS)  # requests whose texts one engine batch carried
        self.texts = 0  # texts predicted

    def request(self, route: str, code: int, seconds: float) -> None:
        self.requests[route, code] += 1
        if route not in self.latency:
            self.latency[route] = Histogram(LATENCY_BUCKETS)
        self.latency[route].observe(seconds)

    def batch(self, texts: int, requests: int) -> None:
        self.batches.observe(texts)
        self.batch_requests.observe(requests)
        self.texts += texts

    def render(self) -> str:
        lines = [
            "# HELP lstm_cli_requests_total HTTP requests answered, by route and status code.",
            "# TYPE lstm_cli_requests_total counter",
        ]
        lines += [
            f'lstm_cli_requests_total{{route="{r}",code="{c}"}} {n}' for (r, c), n in sorted(self.requests.items())
        ]
        lines += [
            "# HELP lstm_cli_request_errors_total Requests answered with an error (4xx or 5xx), by route and code.",
            "# TYPE lstm_cli_request_errors_total counter",
        ]
        lines += [
            f'lstm_cli_request_errors_total{{route="{r}",code="{c}"}} {n}'
            for (r, c), n in sorted(self.requests.items())
            if c >= 400
        ]
        lines += [
            "# HELP lstm_cli_request_duration_seconds Time from a request's arrival to its response, by route.",
            "# TYPE lstm_cli_request_duration_seconds histogram",
        ]
        for route, histogram in sorted(self.latency.items()):
            lines += histogram.lines("lstm_cli_request_duration_seconds", f'route="{route}"')
        lines += [
            "# HELP lstm_cli_batch_texts Texts per engine batch (requests arriving together are predicted together).",
            "# TYPE lstm_cli_batch_texts histogram",
            *self.batches.lines("lstm_cli_batch_texts"),
            "# HELP lstm_cli_batch_requests Requests per engine batch.",
            "# TYPE lstm_cli_batch_requests histogram",
            *self.batch_requests.lines("lstm_cli_batch_requests"),
            "# HELP lstm_cli_texts_total Texts predicted.",
            "# TYPE lstm_cli_texts_total counter",
            f"lstm_cli_texts_total {self.texts}",
        ]
        return "\n".join(lines) + "\n"


def _number(value: float | str) -> str:
    return value if isinstance(value, str) else repr(float(value))
