"""Replacing a directory in one step, so readers and crashes see the old one or the new one, never a mix."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import uuid
from pathlib import Path


def fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def install(staging: Path, target: Path) -> None:
    """Put `staging` at `target` in one step: readers see the old model or the new one, never a mix."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def staging_path(target: Path) -> Path:
    """A hidden sibling of `target` to build its replacement in (same filesystem, so rename is atomic)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_staging(target: Path) -> None:
    """Delete staging siblings of `target` left by processes that died (kill -9, power loss)."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.tmp-(\d+)-[0-9a-f]{{8}}$")
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        match = pattern.match(path.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
