"""Replacing a directory in one step, so readers and crashes see the old one or the new one, never a mix.

Linux swaps two directories atomically (renameat2). Elsewhere two renames do it, with an instant when
nothing is at the target; a process killed then leaves the old directory as `.NAME.old-PID`, and the
next reader or writer of the target puts it back (`recover`), if it carries lstm-cli's marker."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from lstm_cli.errors import LstmCliError, UsageError
from lstm_cli.owned import carries_marker, made_by_lstm_cli, remove_marked_tree


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
        remove_marked_tree(staging)
        return
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, retired)
    # A kill here leaves nothing at `target`: `recover` finds `retired` by its name and puts it back.
    os.rename(staging, target)
    remove_marked_tree(retired)


@contextlib.contextmanager
def replacing_file(path: Path, *, newline: str | None = None) -> Iterator[TextIO]:
    """A UTF-8 text file to write that appears at `path` (replacing what was there) only once it is complete
    and on disk: a crash or an error midway leaves `path` as it was and no temporary file behind.

    A symlink is followed (the file it names is replaced, the link kept). A path that is a device or a pipe
    (`/dev/stdout`, bash's `>(gzip > x.gz)`) has nothing to replace: it is written to directly.
    A path that cannot be written (missing folder, no permission) raises LstmCliError naming it."""
    target = Path(os.path.realpath(path))
    try:
        special = target.exists() and not stat.S_ISREG(os.stat(target).st_mode) and not target.is_dir()
        if special:
            with open(target, "w", encoding="utf-8", newline=newline) as f:
                yield f
            return
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(temporary, "x", encoding="utf-8", newline=newline) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as e:  # a missing folder, no permission, a full disk, a directory at `path`
        if not path.parent.is_dir():  # misuse, as evaluate's early check says it (exit 2)
            raise UsageError(f"{path}: the folder {path.parent} does not exist; create it first") from None
        raise LstmCliError(f"{path}: cannot write this file ({e.strerror or e}); check the folder") from None


def _dead_siblings(target: Path, kind: str) -> list[Path]:
    """Siblings `.NAME.<kind>-PID...` of `target` whose process is gone, most recent first."""
    suffix = r"-[0-9a-f]{8}" if kind == "tmp" else ""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{kind}-(\d+){suffix}$")
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return []
    found = [p for p in siblings if (m := pattern.match(p.name)) and not _alive(int(m.group(1)))]
    return sorted(found, key=_mtime, reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def recover(target: Path) -> bool:
    """If nothing is at `target` because a swap was killed half-way, put the old directory back: only one
    that carries lstm-cli's marker (lstm_cli.owned), never a directory someone else named `.NAME.old-N`.

    Returns True if `target` was restored."""
    if os.path.lexists(target):
        return False
    for retired in _dead_siblings(target, "old"):
        if not made_by_lstm_cli(retired):
            continue
        try:
            os.rename(retired, target)
            return True
        except OSError:  # another process restored it first, or the directory is read-only
            continue
    return False


def swap_in_progress(target: Path) -> bool:
    """Whether a directory retired by a two-rename swap sits beside `target` (the swap may be mid-way)."""
    try:
        return any(p.name.startswith(f".{target.name}.old-") for p in target.parent.iterdir())
    except OSError:
        return False


def staging_path(target: Path) -> Path:
    """A hidden sibling of `target` to build its replacement in (same filesystem, so rename is atomic)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_staging(target: Path) -> None:
    """Tidy what processes that died (kill -9, power loss) left beside `target`: restore a directory a
    half-done swap retired, then delete their staging and retired directories, those that carry lstm-cli's
    marker (anything else is left alone, whatever its name)."""
    recover(target)
    for path in _dead_siblings(target, "tmp"):
        if carries_marker(path):
            remove_marked_tree(path)
    if os.path.lexists(target):
        for path in _dead_siblings(target, "old"):
            if made_by_lstm_cli(path):
                remove_marked_tree(path)
            else:  # a removal killed after its last file leaves the empty directory: nothing in it to lose
                with contextlib.suppress(OSError):
                    os.rmdir(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
