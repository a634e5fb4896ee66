"""The token cache and the checkpoint do not trust their files (issue 32, class 6): whatever is planted under a
checkpoint directory (a manifest naming files elsewhere, a symbolic link to a user's folder, a dangling link),
lstm-cli reads and writes only inside it, and anything odd means "rebuild the cache"."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _forge import invoke, kept_checkpoint, train_args

from lstm_cli.cache import TokenCache


@pytest.fixture
def checkpoint(tmp_path_factory, data_dir, tmp_path) -> Path:
    copy = tmp_path / "ck"
    shutil.copytree(kept_checkpoint(tmp_path_factory.getbasetemp(), data_dir / "train.csv"), copy, symlinks=True)
    return copy


def _user_folder(path: Path) -> Path:
    """A user's folder holding their notes and a file that happens to have a shard's name."""
    path.mkdir()
    (path / "notes.txt").write_text("my notes")
    (path / "shard-00000.ids").write_bytes(b"my own file, not lstm-cli's")
    return path


def _contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _rebuild(train: Path) -> None:
    """What `train` does with a cache it cannot use: build it again, here from a few rows."""
    TokenCache.build(train, [([2, 3], 0), ([4], 1)] * 5, fingerprint={"rows": 10}, seed=1)


def test_a_symlinked_cache_directory_is_not_written_through_by_train(checkpoint, data_dir, tmp_path):
    user = _user_folder(tmp_path / "user")
    before = _contents(user)
    shutil.rmtree(checkpoint / "cache" / "train")
    (checkpoint / "cache" / "train").symlink_to(user, target_is_directory=True)
    result = invoke(*train_args(data_dir / "train.csv", checkpoint, tmp_path / "model"))
    assert result.exit_code == 0, result.output
    assert _contents(user) == before  # nothing written, nothing removed


@pytest.mark.parametrize("linked", ["cache/train", "cache"])
def test_a_symlinked_cache_directory_is_replaced_not_followed(checkpoint, tmp_path, linked):
    user = _user_folder(tmp_path / "user")
    before = _contents(user)
    shutil.rmtree(checkpoint / linked)
    (checkpoint / linked).symlink_to(user, target_is_directory=True)
    train = checkpoint / "cache" / "train"
    assert TokenCache.open(train, {"rows": 10}) is None
    _rebuild(train)
    assert _contents(user) == before  # nothing written, nothing removed
    assert not train.is_symlink() and not (checkpoint / "cache").is_symlink()
    assert TokenCache.open(train, {"rows": 10}).rows == 10


def test_a_dangling_symlink_in_the_cache_creates_nothing_outside(checkpoint, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    train = checkpoint / "cache" / "train"
    (train / "cache.json").unlink()  # an incomplete cache: lstm-cli rebuilds it
    for name in ("shard-00000.ids", "shard-00000.rows", "incoming.rows", "cache.json.tmp", "cache.json"):
        if os.path.lexists(train / name):
            (train / name).unlink()
        (train / name).symlink_to(outside / f"created-{name}")
    _rebuild(train)
    assert list(outside.iterdir()) == []
    assert TokenCache.open(train, {"rows": 10}).rows == 10


def test_a_manifest_naming_files_outside_the_cache_is_rebuilt_not_read(checkpoint, tmp_path):
    train = checkpoint / "cache" / "train"
    manifest = json.loads((train / "cache.json").read_text())
    outside = tmp_path / "outside"
    outside.mkdir()
    for shard in manifest["shards"]:  # same sizes, but every label index out of range: reading them would show
        name = shard["name"]
        shutil.copy(train / f"{name}.ids", outside / f"{name}.ids")
        rows = np.fromfile(train / f"{name}.rows", dtype="<i4").reshape(-1, 2)
        rows[:, 1] = 99
        rows.tofile(outside / f"{name}.rows")
        shard["name"] = os.path.relpath(outside / name, train)
    (train / "cache.json").write_text(json.dumps(manifest))
    assert TokenCache.open(train, manifest["fingerprint"]) is None
    for link in ("cache.json", "shard-00000.rows"):  # a link to a file with the right contents is not followed
        fresh = tmp_path / f"linked-{link}"
        shutil.copytree(checkpoint, fresh, symlinks=True)
        moved = tmp_path / f"elsewhere-{link}"
        (fresh / "cache" / "train" / link).rename(moved)
        (fresh / "cache" / "train" / link).symlink_to(moved)
        fingerprint = json.loads(moved.read_text())["fingerprint"] if link == "cache.json" else manifest["fingerprint"]
        assert TokenCache.open(fresh / "cache" / "train", fingerprint) is None, link


def test_a_cache_changed_after_it_was_written_is_rebuilt(checkpoint, tmp_path):
    train = checkpoint / "cache" / "train"
    manifest = json.loads((train / "cache.json").read_text())
    fingerprint = manifest["fingerprint"]
    assert TokenCache.open(train, fingerprint) is not None
    for change in ({"rows": manifest["rows"] + 1}, {"tokens": "many"}, {"label_counts": [-1, 1]}):
        (train / "cache.json").write_text(json.dumps({**manifest, **change}))
        assert TokenCache.open(train, fingerprint) is None, change
