"""What the hostile tests of errors, ownership, hangs and values share: one check of the one-line error,
and a fingerprint of a folder's contents."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def assert_one_error(code: int, exit_code: int, stderr: str, stdout: str = "") -> str:
    """Exit status `code`, exactly one line on stderr, `Error: ...`, no traceback; returns the line."""
    lines = stderr.strip().splitlines()
    assert exit_code == code, (exit_code, stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr and stdout == "", (stderr, stdout)
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (itself included) by relative path: file contents' sha256, or the kind."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names, *([""] if folder == str(root) else [])]:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            key = path.relative_to(root).as_posix()
            if stat.S_ISREG(mode):
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(mode):
                found[key] = "link -> " + os.readlink(path)
            else:
                found[key] = f"mode {stat.S_IFMT(mode):o}"
    return found


def dead_pid() -> int:
    """The id of a process that has just ended (as a killed lstm-cli's would be)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid
