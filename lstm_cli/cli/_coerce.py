"""Option values without pydantic, for the commands a one-off call should start quickly (predict, explain).

Typer (0.2x and later) converts every parameter value through a pydantic TypeAdapter; importing pydantic and
building the adapters was about a quarter of a cold `lstm-cli predict "text"` (measured with -X importtime).
`PlainCommand` gives its parameters a converter that returns what typer's would for the plain values these
options take (a str, a list of str, a decimal int within its range, an Enum choice, a Path) by calling the
same pydantic-free helpers typer's adapters call. Anything else (an error, another type, a parser, clamping)
goes to typer's own conversion, built only then, so error messages stay typer's word for word. With a typer
whose internals differ, the command is a plain TyperCommand. tests/test_startup.py compares the two."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from typer.core import TyperCommand, TyperGroup

from lstm_cli.cli._help import PanelHelp

try:
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_choice, coerce_cli_path, routes_to_path
except ImportError:  # a typer without pydantic adapters (or with other internals): nothing to do
    RuntimeParam = None

_UNSURE = object()  # "let typer decide"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,17}")  # what int() and pydantic read alike


def _leaf(annotation: Any, info: Any, value: Any, param: Any, ctx: Any) -> Any:
    """typer's value for one CLI value of a non-list annotation, or _UNSURE."""
    if info.parser is not None:
        return _UNSURE
    if annotation is str:
        return value if type(value) is str else _UNSURE
    if annotation is bool:  # flags (--install-completion's default is None)
        return value if value is None or type(value) is bool else _UNSURE
    if annotation is int:
        if type(value) is int:
            number = value
        elif type(value) is str and _DECIMAL.fullmatch(value):
            number = int(value)
        else:
            return _UNSURE
        if info.clamp or (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
            return _UNSURE
        return number
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return coerce_cli_choice(value, choices=list(annotation), case_sensitive=info.case_sensitive, ctx=ctx)
    if isinstance(annotation, type) and issubclass(annotation, Path) and routes_to_path(annotation, info):
        if info.path_type is not None or not isinstance(value, str | Path) or value in ("", "-"):
            return _UNSURE
        path = value if isinstance(value, annotation) else annotation(value)  # pydantic's str -> Path
        return coerce_cli_path(path, info, path_type=annotation, param=param, ctx=ctx)
    return _UNSURE


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _PlainParam(RuntimeParam):
        descriptor: Any = None
        _typer: list = field(default_factory=list)  # typer's own converter, once something needs it

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if get_origin(self.annotation) is list:
                    (item,) = get_args(self.annotation)
                    items = value if isinstance(value, list | tuple) else [value]
                    result = [_leaf(item, self.parameter_info, v, param, ctx) for v in items]
                    if all(r is not _UNSURE for r in result):
                        return result
                else:
                    result = _leaf(self.annotation, self.parameter_info, value, param, ctx)
                    if result is not _UNSURE:
                        return result
            except Exception:  # typer's conversion raises the error, in typer's words
                pass
            if not self._typer:
                self._typer.append(build_runtime_param(self.descriptor))
            return self._typer[0]._coerce_value(value, param=param, ctx=ctx)


def _plain(params: list) -> None:
    if RuntimeParam is None:
        return
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        known = descriptor is not None and getattr(param, "_runtime_param", False) is None
        if not known or descriptor.file_annotation is not None:
            continue  # not a typer parameter as this module knows them, or files (typer opens them)
        param._runtime_param = _PlainParam(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, descriptor=descriptor
        )


class _PlainParams:
    """Mixin: the command's parameters, and its --help option (made on first use), convert without pydantic."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain(self.params)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        _plain(self.params)  # typer appends the group's --install-completion and --show-completion after __init__
        return super().parse_args(ctx, args)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _plain([option] if option is not None else [])
        return option


class PlainCommand(_PlainParams, PanelHelp, TyperCommand):
    """A TyperCommand whose parameters convert plain values without pydantic (see the module docstring), and
    whose --help groups its options (lstm_cli.cli._help)."""


class PlainGroup(_PlainParams, TyperGroup):
    """The same for the `lstm-cli` group itself (its --version and --help), which parses before any command."""
