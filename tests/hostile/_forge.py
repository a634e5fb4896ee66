"""What the hostile tests of model directories share: a forger (copy a model, change its files, then rewrite
the sha256 of each in metadata.json, as someone who knows the format would) and the check of one error line."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

runner = CliRunner()


def rehash(model: Path) -> None:
    """metadata.json's "files" made to match the files as they are now (what a forger does last)."""
    metadata = json.loads((model / "metadata.json").read_text(encoding="utf-8"))
    if isinstance(metadata, dict) and isinstance(metadata.get("files"), dict):
        metadata["files"] = {
            p.relative_to(model).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(model.rglob("*"))
            if p.is_file() and p.name != "metadata.json"
        }
        (model / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")


# Files edited as bytes: fn(bytes) returns the new contents.
FILES = {"variables_index": "variables/variables.index", "variables_data": "variables/variables.data-00000-of-00001"}


def forge(model: Path, target: Path, **edits: Callable) -> Path:
    """A copy of `model` at `target` with each file edited (`engine_json=fn`: fn(parsed JSON) changes it in
    place or returns the new value; `engine_npz=fn`: fn(dict of arrays) likewise, or returns raw bytes, on the
    copy changed into the layout with engine.npz; `variables_index=fn`: fn(bytes) returns the new bytes), then
    rehashed. metadata.json is edited after rehashing, so its own edits survive."""
    shutil.copytree(model, target)
    if "engine_npz" in edits and not (target / "engine.npz").exists():
        from conftest import npz_layout

        npz_layout(target)  # the layout of directories saved when the engine read engine.npz: still read
    for key, edit in edits.items():
        if key == "metadata_json":
            continue
        name = FILES.get(key, key.replace("_", ".", 1))
        path = target / name
        if key in FILES:
            path.write_bytes(edit(path.read_bytes()))
        elif name.endswith(".json"):
            value = json.loads(path.read_text(encoding="utf-8"))
            new = edit(value)
            path.write_text(
                new if isinstance(new, str) else json.dumps(value if new is None else new), encoding="utf-8"
            )
        else:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {k: saved[k] for k in saved.files}
            new = edit(arrays)
            if isinstance(new, bytes):
                path.write_bytes(new)
            else:
                buffer = io.BytesIO()
                np.savez(buffer, **(arrays if new is None else new))
                path.write_bytes(buffer.getvalue())
    rehash(target)
    if "metadata_json" in edits:
        path = target / "metadata.json"
        value = json.loads(path.read_text(encoding="utf-8"))
        new = edits["metadata_json"](value)
        path.write_text(new if isinstance(new, str) else json.dumps(value if new is None else new), encoding="utf-8")
    return target


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A version 1.0 .npy header for an array of `shape` (its data not included)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], *, deflate_zeros: dict[str, int] | None = None) -> bytes:
    """A zip of stored `members`, plus members whose content is a .npy header followed by N MiB of zeros,
    deflated (a few KB on disk, N MiB inflated), written by hand: zipfile cannot store pre-compressed data."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    if not deflate_zeros:
        return buffer.getvalue()
    out = bytearray(buffer.getvalue()[: _central_directory_offset(buffer.getvalue())])
    central = bytearray(buffer.getvalue()[_central_directory_offset(buffer.getvalue()) : -22])
    count = len(members)
    for name, mib in deflate_zeros.items():
        header = npy_header((mib * (1 << 18),))
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        first = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
        block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
        data = first + block * mib + compressor.flush(zlib.Z_FINISH)
        crc = zlib.crc32(header)
        zero_mib = bytes(1 << 20)
        for _ in range(mib):
            crc = zlib.crc32(zero_mib, crc)
        size = len(header) + mib * (1 << 20)
        encoded = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(encoded), 0)
        out += encoded + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                               len(encoded), 0, 0, 0, 0, 0, offset) + encoded  # fmt: skip
        count += 1
    start = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), start, 0)
    return bytes(out)


def _central_directory_offset(data: bytes) -> int:
    return struct.unpack_from("<I", data, len(data) - 22 + 16)[0]


def one_error(result, code: int = 1) -> str:
    """A CliRunner result that is exit `code` with exactly one `Error:` line on stderr and no traceback (an
    exception the command did not turn into an exit would show as result.exception); returns the line.
    Misuse of an option (exit 2) is Click's: its usage lines, then the one `Error:` line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.stderr)
    if code == 2 and lines and lines[0].startswith("Usage: "):
        lines = [line for line in lines[1:] if line and not line.startswith("Try ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == "", (result.stderr, result.stdout)
    return lines[0]


def invoke(*args: str, input: str | None = None):
    from lstm_cli.cli import app

    return runner.invoke(app, list(args), input=input)


_checkpoints: dict[Path, Path] = {}


def kept_checkpoint(base: Path, train_csv: Path) -> Path:
    """A checkpoint directory (state, weights and token cache) left by a tiny run whose save failed (the export
    check made to refuse Softmax, as in test_reliability), made once per session under `base`."""
    import pytest
    from conftest import TINY

    from lstm_cli import graphcheck

    if base not in _checkpoints:
        target = base / "kept-checkpoint"
        args = ["train", str(train_csv), *TINY[:-1], "--epochs", "1", "-m", str(base / "no-model"),
                "--checkpoint-dir", str(target)]  # fmt: skip
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(graphcheck, "ALLOWED_OPS", graphcheck.ALLOWED_OPS - {"Softmax"})
            failed = invoke(*args)
        assert failed.exit_code == 1 and (target / "state.json").is_file(), failed.output
        _checkpoints[base] = target
    return _checkpoints[base]


def train_args(train_csv: Path, checkpoint: Path, model: Path) -> list[str]:
    """The arguments of the run that made kept_checkpoint (add --resume to continue it)."""
    from conftest import TINY

    return ["train", str(train_csv), *TINY[:-1], "--epochs", "1", "-m", str(model), "--checkpoint-dir",
            str(checkpoint), "--quiet"]  # fmt: skip
