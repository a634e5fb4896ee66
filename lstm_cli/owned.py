"""What lstm-cli may replace, restore or remove: only what it can prove it made; and how it opens its own files.

A model directory carries metadata.json with lstm-cli's format marker, its version and the list of every
other file in it; a checkpoint directory carries a marker file of its own. A path given to --model or
--checkpoint-dir that exists and is not such a directory (or holds files the listing does not name) is
refused before any work, and left as it is.

Files lstm-cli reads from its own directories (metadata, engine files, checkpoints) are opened with
`open_regular`: a FIFO or a device planted in their place is refused instead of blocking forever."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, BinaryIO

from lstm_cli.errors import UsageError

CHECKPOINT_MARKER = "lstm-cli-checkpoint.json"
CHECKPOINT_FORMAT = "lstm-cli-checkpoint"
MODEL_METADATA = "metadata.json"
MODEL_FORMAT = "lstm-cli-model"
ENCODER_METADATA = "encoder.json"  # an encoder directory's (`lstm-cli pretrain`) metadata and marker
ENCODER_FORMAT = "lstm-cli-encoder"


def _marker_text(format: str) -> bytes:
    return (json.dumps({"format": format, "format_version": 1}) + "\n").encode()


_MARKERS = {
    MODEL_METADATA: _marker_text(MODEL_FORMAT),
    CHECKPOINT_MARKER: _marker_text(CHECKPOINT_FORMAT),
    ENCODER_METADATA: _marker_text(ENCODER_FORMAT),
}


class NotRegularFile(OSError):
    """A path lstm-cli expected to be a regular file is a FIFO, a device, a socket or a directory."""


def open_regular(path: Path | str, *, follow_symlinks: bool = True) -> BinaryIO:
    """Open `path` for reading in binary if it is a regular file (after symlinks, unless follow_symlinks is
    False: then a symbolic link fails with ELOOP), without ever blocking.

    O_NONBLOCK makes opening a FIFO return at once (instead of waiting for a writer); fstat on the open
    descriptor then decides, so nothing can be swapped in between a check and the open."""
    nofollow = 0 if follow_symlinks else os.O_NOFOLLOW
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | nofollow)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(0, f"not a regular file ({_kind(mode)})", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path | str) -> bytes:
    """The contents of the regular file `path` (see open_regular); OSError for anything else."""
    with open_regular(path) as f:
        return f.read()


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a file"))  # fmt: skip


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def _json_object(path: Path) -> dict[str, Any] | None:
    from lstm_cli.schema import read_json  # bounded in size and depth; imports this module

    try:
        value = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_checkpoint_marker(directory: Path) -> None:
    (directory / CHECKPOINT_MARKER).write_bytes(_MARKERS[CHECKPOINT_MARKER])


def is_checkpoint_dir(directory: Path) -> bool:
    marker = _json_object(directory / CHECKPOINT_MARKER)
    return marker is not None and marker.get("format") == CHECKPOINT_FORMAT


def is_encoder_dir(directory: Path) -> bool:
    """Whether `directory` is an encoder directory `lstm-cli pretrain` wrote: as is_model_dir, with
    encoder.json and its own format marker."""
    return _is_listed_dir(directory, ENCODER_METADATA, ENCODER_FORMAT)


def is_model_dir(directory: Path) -> bool:
    """Whether `directory` is a model directory lstm-cli wrote (any version): its metadata.json carries the
    format marker, an integer format version and the listing of the other files, and nothing else is in it.

    Every lstm-cli release has written all three. A foreign metadata.json, or a model directory into which
    someone put files of their own, does not qualify: replacing it would lose what lstm-cli did not make."""
    return _is_listed_dir(directory, MODEL_METADATA, MODEL_FORMAT)


def _is_listed_dir(directory: Path, metadata_name: str, format: str) -> bool:
    if os.path.islink(directory) or not directory.is_dir():
        return False
    metadata = _json_object(directory / metadata_name)
    if metadata is None or metadata.get("format") != format:
        return False
    version, files = metadata.get("format_version"), metadata.get("files")
    if isinstance(version, bool) or not isinstance(version, int) or not isinstance(files, dict):
        return False
    return _only_listed(directory, set(files), metadata_name)


def _only_listed(root: Path, listed: set[str], metadata_name: str = MODEL_METADATA) -> bool:
    """Every file under `root` is the metadata file or a listed regular file, and no symbolic link is in it.
    (Directories may be empty: a SavedModel's assets/ is.)"""

    def unreadable(error: OSError) -> None:
        raise error

    try:
        return _walk_listed(root, listed, unreadable, metadata_name)
    except OSError:
        return False


def _walk_listed(root: Path, listed: set[str], onerror, metadata_name: str = MODEL_METADATA) -> bool:
    for folder, dirs, names in os.walk(root, onerror=onerror):
        relative = Path(folder).relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        if any(os.path.islink(os.path.join(folder, name)) for name in dirs):
            return False
        for name in names:
            if prefix + name not in listed and not (prefix == "" and name == metadata_name):
                return False
            if not stat.S_ISREG(os.lstat(os.path.join(folder, name)).st_mode):
                return False
    return True


def made_by_lstm_cli(directory: Path) -> bool:
    """A whole model, encoder or checkpoint directory lstm-cli made (what a killed swap may have retired)."""
    return (
        is_model_dir(directory)
        or is_encoder_dir(directory)
        or (not os.path.islink(directory) and directory.is_dir() and is_checkpoint_dir(directory))
    )


def carries_marker(directory: Path) -> bool:
    """A directory lstm-cli began to build (a staging directory a killed process left): it writes a marker
    first (a checkpoint's, or a provisional metadata.json), so it holds one, or is empty, or holds only the
    start of a marker (killed while writing it)."""
    if os.path.islink(directory) or not directory.is_dir():
        return False
    metadata = _json_object(directory / MODEL_METADATA)
    if (metadata is not None and metadata.get("format") == MODEL_FORMAT) or is_checkpoint_dir(directory):
        return True
    encoder = _json_object(directory / ENCODER_METADATA)
    if encoder is not None and encoder.get("format") == ENCODER_FORMAT:
        return True
    try:
        entries = list(directory.iterdir())
        if not entries:
            return True
        (only,) = entries
        start = read_regular(only) if only.name in _MARKERS else None
    except (OSError, ValueError):
        return False
    return start is not None and _MARKERS[only.name].startswith(start)


def mark_model_staging(directory: Path) -> None:
    """The provisional metadata.json of a model being built in `directory` (the real one replaces it)."""
    (directory / MODEL_METADATA).write_bytes(_MARKERS[MODEL_METADATA])


def mark_encoder_staging(directory: Path) -> None:
    """The provisional encoder.json of an encoder being built in `directory` (the real one replaces it)."""
    (directory / ENCODER_METADATA).write_bytes(_MARKERS[ENCODER_METADATA])


def check_encoder_target(target: Path) -> None:
    """Refuse an encoder path (`pretrain -o`) that saving would replace although lstm-cli did not make it (exit
    2): nothing there, an empty directory, or an encoder directory lstm-cli wrote may be replaced."""
    fix = "choose another path with -o (lstm-cli creates it), or move it out of the way"
    if not os.path.lexists(target):
        return
    refused = f"{target}: exists and is not an lstm-cli encoder directory"
    if os.path.islink(target) or not target.is_dir():
        kind = "a symbolic link" if os.path.islink(target) else _kind(target.stat().st_mode)
        raise UsageError(f"{refused} (it is {kind}), so lstm-cli will not replace it; {fix}")
    if not _empty_directory(target) and not is_encoder_dir(target):
        raise UsageError(
            f'{refused} (no {ENCODER_METADATA} with "format": "{ENCODER_FORMAT}", a version and a listing of '
            f"every file in it), so lstm-cli will not replace it; {fix}"
        )


def check_model_target(target: Path) -> None:
    """Refuse a --model path that saving would replace although lstm-cli did not make it (exit 2).

    Nothing there, an empty directory, or a model directory lstm-cli wrote may be replaced."""
    fix = "choose another path with --model/-m (lstm-cli creates it), or move it out of the way"
    if not os.path.lexists(target):
        return
    refused = f"{target}: exists and is not an lstm-cli model directory"
    if os.path.islink(target):
        raise UsageError(f"{refused} (it is a symbolic link), so lstm-cli will not replace it; {fix}")
    if not target.is_dir():
        raise UsageError(f"{refused} (it is {_kind(target.stat().st_mode)}), so lstm-cli will not replace it; {fix}")
    try:
        empty = not any(target.iterdir())
    except OSError as e:
        raise UsageError(f"{refused} (cannot list it: {e.strerror}), so lstm-cli will not replace it; {fix}") from None
    if not empty and not is_model_dir(target):
        raise UsageError(
            f'{refused} (no {MODEL_METADATA} with "format": "{MODEL_FORMAT}", a version and a listing of every '
            f"file in it), so lstm-cli will not replace it; {fix}"
        )


def check_checkpoint_dir(directory: Path, *, model: Path | None = None) -> None:
    """Refuse a --checkpoint-dir that lstm-cli would have to replace without having made it."""
    directory = Path(os.path.abspath(directory))
    model = Path(os.path.abspath(model)) if model is not None else None
    fix = "give --checkpoint-dir a path that does not exist yet (lstm-cli creates it)"
    if os.path.lexists(directory):
        if not directory.is_dir() or directory.is_symlink():
            raise UsageError(f"{directory}: exists and is not a directory lstm-cli made; {fix}")
        if not is_checkpoint_dir(directory) and not _empty_directory(directory):
            raise UsageError(
                f"{directory}: exists and is not an lstm-cli checkpoint directory (no {CHECKPOINT_MARKER}), "
                f"so lstm-cli will not replace it; {fix}"
            )
    if model is not None and (directory == model or directory in model.parents):
        raise UsageError(f"{directory}: --checkpoint-dir cannot be the model directory or contain it; {fix}")


def _empty_directory(directory: Path) -> bool:
    """An empty directory (what a removal killed after its last file leaves): replacing it loses nothing."""
    try:
        return not any(directory.iterdir())
    except OSError:
        return False


def remove_checkpoint_dir(directory: Path) -> None:
    """Delete a finished run's checkpoint directory, if it is one lstm-cli made."""
    if directory.is_dir() and not directory.is_symlink() and is_checkpoint_dir(directory):
        remove_marked_tree(directory)


def remove_marked_tree(directory: Path) -> None:
    """Delete a directory lstm-cli made, its marker file last: a process killed midway leaves a directory
    that still carries the marker, so the next run can prove it is lstm-cli's and finish the job (a plain
    rmtree may delete the marker first and strand the rest, which no later run may touch)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in sorted(entries, key=lambda e: e.name in _MARKERS):
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
    shutil.rmtree(directory, ignore_errors=True)
