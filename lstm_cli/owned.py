"""Which checkpoint directories lstm-cli may replace or remove: only those it can prove it made.

A checkpoint directory carries a marker file with its own format (as a model directory carries
metadata.json); any other existing path given to --checkpoint-dir is refused before training."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lstm_cli.errors import UsageError

CHECKPOINT_MARKER = "lstm-cli-checkpoint.json"
CHECKPOINT_FORMAT = "lstm-cli-checkpoint"


def write_checkpoint_marker(directory: Path) -> None:
    marker = {"format": CHECKPOINT_FORMAT, "format_version": 1}
    (directory / CHECKPOINT_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def is_checkpoint_dir(directory: Path) -> bool:
    try:
        marker = json.loads((directory / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == CHECKPOINT_FORMAT


def check_checkpoint_dir(directory: Path, *, model: Path | None = None) -> None:
    """Refuse a --checkpoint-dir that lstm-cli would have to replace without having made it."""
    directory = Path(os.path.abspath(directory))
    model = Path(os.path.abspath(model)) if model is not None else None
    fix = "give --checkpoint-dir a path that does not exist yet (lstm-cli creates it)"
    if os.path.lexists(directory):
        if not directory.is_dir() or directory.is_symlink():
            raise UsageError(f"{directory}: exists and is not a directory lstm-cli made; {fix}")
        if not is_checkpoint_dir(directory):
            raise UsageError(
                f"{directory}: exists and is not an lstm-cli checkpoint directory (no {CHECKPOINT_MARKER}), "
                f"so lstm-cli will not replace it; {fix}"
            )
    if model is not None and (directory == model or directory in model.parents):
        raise UsageError(f"{directory}: --checkpoint-dir cannot be the model directory or contain it; {fix}")


def remove_checkpoint_dir(directory: Path) -> None:
    """Delete a finished run's checkpoint directory, if it is one lstm-cli made."""
    if directory.is_dir() and not directory.is_symlink() and is_checkpoint_dir(directory):
        shutil.rmtree(directory, ignore_errors=True)
