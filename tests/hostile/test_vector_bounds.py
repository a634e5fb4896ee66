"""--vectors within bounds (issue 32, class 2): a gzip bomb of one endless line, or one line of millions of
dimensions, is one error line, read no further than vectors.MAX_LINE_BYTES, never a MemoryError."""

from __future__ import annotations

import gzip
import resource
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from _forge import invoke, one_error

from lstm_cli.errors import DataError
from lstm_cli.vectors import MAX_DIMENSION, MAX_LINE_BYTES, peek_dimension, read_vectors


def _bomb(path: Path, gib: int = 3) -> Path:
    """A .gz of a few MB inflating to one line of `gib` GiB ("word 0000..."), written without inflating it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    block = compressor.compress(b"0" * (1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    with path.open("wb") as f:
        f.write(compressor.compress(b"word ") + compressor.flush(zlib.Z_FULL_FLUSH))
        for _ in range(gib << 10):
            f.write(block)
        f.write(compressor.flush(zlib.Z_FINISH))  # the CRC is wrong: nothing should read that far
    return path


def _limited(limit: int):
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return cap


def test_a_gzip_bomb_of_one_endless_line_is_one_error_in_bounded_memory(data_dir, tmp_path):
    bomb = _bomb(tmp_path / "vectors.txt.gz")
    assert bomb.stat().st_size < 8 << 20
    # The command line reads the vectors' width first (--embedding-dim given), before TensorFlow is imported...
    command = [sys.executable, "-m", "lstm_cli", "train", str(data_dir / "train.csv"), "--vectors", str(bomb),
               "--embedding-dim", "8", "-m", str(tmp_path / "model"), "--epochs", "1", "--quiet"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=_limited(2 << 30))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "vectors.txt.gz:1" in lines[0] and "longer than" in lines[0], lines[0]
    # ...and training reads them all (the same bounded lines), here without the rest of training.
    script = (
        "from lstm_cli.vectors import read_vectors\n"
        "from lstm_cli.errors import DataError\n"
        f"try: read_vectors({str(bomb)!r}, {{'word'}}, 'lower_and_split_punctuation')\n"
        "except DataError as e: print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          preexec_fn=_limited(1 << 30))  # fmt: skip
    assert done.returncode == 0 and "longer than" in done.stdout, done.stderr


def test_vectors_of_millions_of_dimensions_are_refused(tmp_path):
    wide = tmp_path / "wide.vec"
    wide.write_text("word " + "0.1 " * 2_500_000 + "\n")
    header = tmp_path / "header.vec"
    header.write_text(f"1 {MAX_DIMENSION + 1}\nword {'0.1 ' * 3}\n")
    for path in (wide, header):
        for read in (peek_dimension, lambda p: read_vectors(p, {"word"}, "lower_and_split_punctuation")):
            with pytest.raises(DataError, match="dimensions|longer than"):
                read(path)
    at_limit = tmp_path / "limit.vec"
    at_limit.write_text("word " + " ".join(["0.5"] * MAX_DIMENSION) + "\n")
    assert read_vectors(at_limit, {"word"}, "lower_and_split_punctuation").dimension == MAX_DIMENSION
    assert len(at_limit.read_bytes()) < MAX_LINE_BYTES


def test_a_damaged_gzip_with_an_explicit_width_is_one_error(data_dir, tmp_path):
    damaged = tmp_path / "vectors.gz"
    damaged.write_bytes(gzip.compress(b"word 0.1 0.2\n" * 1000)[:10] + b"\xff" * 64)  # a header, then no deflate
    result = invoke("train", str(data_dir / "train.csv"), "--vectors", str(damaged), "--embedding-dim", "8",
                    "-m", str(tmp_path / "model"), "--epochs", "1", "--quiet")  # fmt: skip
    line = one_error(result)
    assert "vectors.gz" in line, line
