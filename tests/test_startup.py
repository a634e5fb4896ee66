"""A one-off predict or explain loads only what it uses: no TensorFlow, rich or pydantic when writing plain
lines, and option values converted without pydantic exactly as typer converts them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer.main

from lstm_cli.cli import app
from lstm_cli.cli._coerce import RuntimeParam

LAZY = (
    "tensorflow", "keras", "rich", "pydantic", "starlette", "uvicorn", "anyio", "httptools", "uvloop", "matplotlib",
)  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "good great", "awful"],
        ["predict", "--format", "json", "--top-k", "2", "good great"],
        ["explain", "good great"],
        ["explain", "--format", "json", "good great"],
    ],
)
def test_plain_output_imports_none_of_the_heavy_modules(trained_model, args):
    out = run_reporting_imports([*args, "-m", str(trained_model)])
    assert out.stdout.strip()


def run_reporting_imports(args: list[str]) -> subprocess.CompletedProcess:
    """`lstm-cli ARGS` through the entry point in a fresh interpreter, checked to import none of LAZY."""
    script = textwrap.dedent(f"""
        import sys
        from lstm_cli.cli import main
        sys.argv = ["lstm-cli", *{args!r}]
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
        print("IMPORTED", sorted({{m.split(".")[0] for m in sys.modules}} & {set(LAZY)!r}), file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stderr
    return out


VALUES = ["", "-", "0", "1", "7", "010", "+3", " 3", "3.0", "1e3", "1_000", "9" * 30, "tsv", "TSV", "json", "auto",
          "numpy", "Tensorflow", "occlusion", "integrated-gradients", "neg", "a/b", "./lstm-model", "é", "x\ny",
          "\udcff", 0, 5, -1, True, Path("p"), None]  # fmt: skip


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["predict", "--help"], ["report", "--help"]])
def test_help_imports_none_of_the_heavy_modules(args):
    assert "Usage" in run_reporting_imports(args).stdout


@pytest.mark.skipif(RuntimeParam is None, reason="this typer converts values without pydantic adapters")
@pytest.mark.parametrize("command", ["predict", "explain", "evaluate", "info", "serve", "report"])
def test_values_convert_as_typer_converts_them(command):
    from typer._coercion import build_runtime_param

    group = typer.main.get_command(app)
    cmd = group.commands[command]
    ctx = cmd.make_context(
        command, ["--help"], parent=group.make_context("lstm-cli", [command]), resilient_parsing=True
    )
    params = [p for p in [*cmd.params, cmd.get_help_option(ctx)] if hasattr(p, "type_descriptor")]
    assert {type(p.get_runtime_param()).__name__ for p in params} == {"_PlainParam"}

    def outcome(runtime, value, param):
        try:
            result = runtime.coerce(value, param=param, ctx=ctx)
        except Exception as e:
            return type(e), str(e)
        return type(result), result, [type(x) for x in result] if isinstance(result, list) else None

    if command == "predict":  # and the group's own: --version, --install-completion, --show-completion
        params += [p for p in group.params if hasattr(p, "type_descriptor")]
        assert {type(p.get_runtime_param()).__name__ for p in params} == {"_PlainParam"}
    for param in params:
        typers = build_runtime_param(param.type_descriptor)
        for value in VALUES:
            shaped = [value, value] if param.nargs == -1 and value is not None else value
            assert outcome(param.get_runtime_param(), shaped, param) == outcome(typers, shaped, param), (param, value)


@pytest.mark.parametrize(
    "args",
    [["predict", "--help"], ["explain", "-h"], ["predict", "--top-k", "0", "x"], ["predict", "--nope"], ["info", "-m"]],
)
def test_the_entry_point_building_one_command_answers_as_the_whole_app(args):
    whole_app = "from lstm_cli.cli import app; app(prog_name='python -m lstm_cli')"  # every command built
    whole = subprocess.run([sys.executable, "-c", whole_app, *args], capture_output=True, text=True)
    one = subprocess.run([sys.executable, "-m", "lstm_cli", *args], capture_output=True, text=True)
    assert whole.stdout or whole.stderr
    assert (one.returncode, one.stdout, one.stderr) == (whole.returncode, whole.stdout, whole.stderr)
