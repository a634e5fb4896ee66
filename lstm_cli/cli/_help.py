"""Plain-text --help with a command's options under headings (Data, Model, Training, Output, ...).

Typer groups options by their `rich_help_panel` only in its rich help, which lstm-cli turns off (rich_markup_mode
None: rich costs a one-off --help about 0.1 s to import, and draws boxes). `PanelHelp` puts the same grouping
into click's plain help: one section per panel, in the order `@panels` names them, options without a panel under
"Options" last (--help among them). A command names its panels in one place, `@panels(...)` beside its
function, rather than on each of its forty options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OTHER = "Options"


def panels(**groups: tuple[str, ...]) -> Callable:
    """Decorator (below @app.command): panel heading -> the names of the parameters it holds, in the order the
    headings should appear; spaces in a heading are written as underscores (Hardware_and_checkpoints)."""

    def mark(function: Callable) -> Callable:
        function.help_panels = {name: heading.replace("_", " ") for heading, names in groups.items() for name in names}
        return function

    return mark


class PanelHelp:
    """Mixin for a click Command: parameters named by the callback's `@panels` get that `rich_help_panel`, and
    --help lists the options grouped by it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        chosen = getattr(self.callback, "help_panels", {})  # typer's wrapper copies the function's attributes
        for param in self.params:
            if param.name in chosen and getattr(param, "rich_help_panel", None) is None:
                param.rich_help_panel = chosen[param.name]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        grouped: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(record)
            else:
                grouped.setdefault(getattr(param, "rich_help_panel", None) or OTHER, []).append(record)
        declared = list(dict.fromkeys(getattr(self.callback, "help_panels", {}).values()))
        order = sorted(grouped, key=lambda h: (h == OTHER, declared.index(h) if h in declared else len(declared)))
        for heading, records in [("Arguments", arguments), *((h, grouped[h]) for h in order)]:
            if records:
                with formatter.section(heading):
                    formatter.write_dl(records)
