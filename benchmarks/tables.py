"""Tables for the benchmark scripts: aligned text for a terminal, Markdown for the docs, and reading back a
result saved with --json (so `--from-json FILE --markdown` prints a past run's table without re-running it)."""

from __future__ import annotations

import json
from pathlib import Path


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def text(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def render(header: list[str], rows: list[list[str]], *, as_markdown: bool) -> str:
    return markdown(header, rows) if as_markdown else text(header, rows)


def load_json(path: Path):
    """A --json result: one JSON document, or JSON lines (one document per line, returned as a list)."""
    content = path.read_text(encoding="utf-8")
    try:
        return json.loads(content)
    except json.JSONDecodeError:
        return [json.loads(line) for line in content.splitlines() if line.strip()]
