"""--help as documentation: every command's example is printed verbatim and runs as printed (against a tiny model
of sample_data in a scratch directory), options are grouped under headings, and shell completion is on."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstm_cli.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [c.name for c in app.registered_commands]
# Examples that train or search (seconds to minutes with the default sizes) run only with --slow, and serve's,
# which starts a server on port 8501 and leaves it running.
SLOW = {"train", "tune", "serve", "pretrain"}


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


def example(command: str) -> str:
    """The command's `Example:` line from its --help, as printed."""
    lines = [line.strip() for line in _help(command).splitlines() if line.strip().startswith("Example: ")]
    assert len(lines) == 1, f"{command} --help has {len(lines)} 'Example:' lines"
    return lines[0].removeprefix("Example: ")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_one_example_printed_verbatim(command):
    text = example(command)
    assert text.startswith(("lstm-cli ", "printf ")) and "lstm-cli " + command in text
    # printed as written in the docstring, not rewrapped or with its escapes turned into line breaks
    source = (ROOT / "lstm_cli" / "cli" / f"{command}.py").read_text(encoding="utf-8")
    assert "Example: " + text.replace("\\", "\\\\") in source


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, data_dir, trained_model) -> Path:
    """A directory laid out as the examples expect: sample_data/{train,test}.csv (the session's toy data, whose
    labels the session's tiny model knows) and that model as ./lstm-model; and `lstm-cli` on PATH running this
    checkout."""
    d = tmp_path_factory.mktemp("examples")
    shutil.copytree(data_dir, d / "sample_data")
    shutil.copytree(trained_model, d / "lstm-model")
    bin_dir = d / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "lstm-cli"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lstm_cli "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return d


def _run_example(command: str, scratch: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The example run by bash in `scratch` (pipefail: every command in a pipe must succeed); background jobs it
    starts are stopped when it ends."""
    text = example(command)
    tools = set(re.findall(r"(?:^|[|&;]\s*)([a-z][\w-]*)", text)) - {"lstm-cli", "printf"}
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the example needs {', '.join(missing)}")
    env = {**os.environ, "PATH": f"{scratch / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    env.pop("LSTM_CLI_MODEL", None)
    process = subprocess.Popen(["bash", "-o", "pipefail", "-c", text], cwd=scratch, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout) if "&" not in text.replace("&&", "") else _first(process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the example's background jobs too
    return subprocess.CompletedProcess(process.args, process.wait(), stdout, stderr)


def _first(process: subprocess.Popen) -> tuple[str, str]:
    """Output of a shell whose background job keeps the pipes open: read until the foreground part exits."""
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGTERM)
    return process.communicate(timeout=30)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in SLOW])
def test_each_example_runs_as_printed(command, scratch):
    out = _run_example(command, scratch)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() or command == "report", out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(SLOW))
def test_the_slow_examples_run_as_printed(command, scratch, tmp_path):
    shutil.copytree(scratch, tmp_path / "run")
    out = _run_example(command, tmp_path / "run", timeout=600)
    assert out.returncode == 0, out.stderr


def test_train_help_groups_its_options_under_headings_each_once():
    text = _help("train")
    headings = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Z][a-z ]+:", line)]
    assert headings == ["Arguments", "Data", "Tokens", "Model", "Training", "Hardware and checkpoints", "Options"]
    sections = dict(zip(headings, re.split(r"^[A-Z][a-z ]+:$", text, flags=re.M)[1:], strict=True))
    shown = re.findall(r"^  (-[-\w]+|-\w, --[-\w]+)", text, flags=re.M)
    assert len(shown) == len(set(shown)) and len(shown) > 40  # every option once
    assert "--epochs" in sections["Training"] and "--units " in sections["Model"] and "--delimiter" in sections["Data"]
    assert "--help" in sections["Options"] and "--quiet" in sections["Options"]


def _entry_point() -> str:
    script = Path(sys.executable).parent / "lstm-cli"
    if not script.exists():
        pytest.skip("lstm-cli is not installed beside this Python")
    return str(script)


def test_shell_completion_completes_commands_options_and_choices(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "_LSTM_CLI_COMPLETE": "complete_bash"}

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        out = subprocess.run([_entry_point()], env={**env, "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert complete("lstm-cli pred") == ["predict"]
    assert complete("lstm-cli train --epo") == ["--epochs"]
    assert complete("lstm-cli explain --unit ") == ["log-odds", "probability"]


def test_show_and_install_completion(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "SHELL": "/bin/bash"}
    shown = subprocess.run([_entry_point(), "--show-completion", "bash"], env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "_LSTM_CLI_COMPLETE=complete_bash" in shown.stdout
    (tmp_path / ".bashrc").write_text("# the user's own\n", encoding="utf-8")
    installed = subprocess.run([_entry_point(), "--install-completion", "bash"], env=env, capture_output=True,
                               text=True)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "lstm-cli.sh"
    assert "_LSTM_CLI_COMPLETE" in script.read_text(encoding="utf-8")
    bashrc = (tmp_path / ".bashrc").read_text(encoding="utf-8")
    assert bashrc.startswith("# the user's own\n") and str(script) in bashrc  # added to, never replaced
