"""Hostile input, bounded: endless or newline-free streams, huge lines and fields, and input options that are
not what they claim. Each ends in one `Error:` line with the right exit code (or, for a long but legal line,
in its answer), never a traceback, a MemoryError, a dead worker or a full disk."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

import lstm_cli.data
from lstm_cli.cli import app
from lstm_cli.data import spool
from lstm_cli.errors import DataError
from lstm_cli.formats import MAX_LINE_CHARS

runner = CliRunner()


def one_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.count("Error:") == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr


def test_a_200000_character_line_gets_its_answer(trained_model, tmp_path):
    """It used to kill a prediction worker (a batch of one text left the other worker an empty share)."""
    (tmp_path / "long.txt").write_text("good great " * 20_000 + "\nbad\n", encoding="utf-8")
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "long.txt"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_dev_zero_as_data_stops_with_the_limit(tmp_path, trained_model, command):
    """/dev/zero has no line break: the spool copy stops at 64 MiB instead of filling the disk."""
    model = trained_model if command == "evaluate" else tmp_path / "m"
    result = runner.invoke(app, [command, "/dev/zero", "-m", str(model)])
    one_error(result, 1, "/dev/zero: no line break in 64 MiB", f"{MAX_LINE_CHARS:,} characters")


@pytest.mark.parametrize("extra", [[], ["--input-format", "csv"], ["--input-format", "jsonl"]])
def test_dev_zero_as_predict_input_stops_with_the_limit(trained_model, extra):
    result = runner.invoke(app, ["predict", "-m", str(trained_model), "--input", "/dev/zero", *extra])
    one_error(result, 1, "/dev/zero:1: a line", f"{MAX_LINE_CHARS:,}")


def test_an_endless_stream_stops_before_the_disk_is_full(monkeypatch):
    """`yes | lstm-cli train -` would fill the disk through the spool: it stops when little space is left
    (here any disk counts as nearly full)."""
    monkeypatch.setattr(lstm_cli.data, "_SPOOL_BYTES", 1 << 16)
    monkeypatch.setattr(lstm_cli.data, "_SPOOL_FREE_BYTES", 1 << 62)
    with pytest.raises(DataError, match="less than .* GiB left on .*TMPDIR"):
        spool(io.BytesIO(b"a,b\n" * 100_000), "<stdin>")


def test_a_line_over_the_limit_names_its_line(tmp_path):
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("text,label\nfine,a\n")
        f.write('"' + "x" * (MAX_LINE_CHARS + 10) + '",b\n')
    result = runner.invoke(app, ["train", str(path), "-m", str(tmp_path / "m")])
    one_error(result, 1, "big.csv:3: a line or row longer than")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--delimiter", "ab"], "--delimiter must be one character"),
        (["--encoding", "base64"], "not a text encoding"),
        (["--encoding", "utf-16"], "no byte-order mark"),
    ],
)
@pytest.mark.parametrize("command", ["train", "evaluate", "tune"])
def test_input_options_that_cannot_work_are_misuse(data_dir, tmp_path, command, args, needle):
    result = runner.invoke(app, [command, str(data_dir / "train.csv"), "-m", str(tmp_path / "m"), *args])
    one_error(result, 2, needle)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_a_100_mb_field_does_not_take_many_times_its_size(tmp_path):
    """It took 19-28x its size in RSS; now reading stops at the line limit, in a few times the limit."""
    path = tmp_path / "huge.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write('text,label\nfine,a\nother,b\n"')
        for _ in range(100):
            f.write("word " * 200_000)
        f.write('",a\n')
    # VmHWM, not ru_maxrss: Linux carries a parent's peak over fork and exec into the child's ru_maxrss.
    code = textwrap.dedent(f"""
        import re, sys
        from lstm_cli.data import read_labeled
        try:
            read_labeled({str(path)!r})
        except Exception as e:
            print(type(e).__name__, e, file=sys.stderr)
        print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "a line or row longer than" in done.stderr
    assert int(done.stdout) * 1024 < 150 * 2**20  # peak RSS: under 150 MiB for a 100 MB field
