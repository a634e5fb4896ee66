"""The on-disk token cache: every row once per pass, shuffles that depend only on (seed, epoch), resuming
mid-pass, per-worker slices of global batches, and memory that stays flat as the file grows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from lstm_cli.cache import MANIFEST, Batch, TokenCache
from lstm_cli.engine.tokenizer import OOV_ID

FINGERPRINT = {"path": "/data/train.csv", "rows": 1000, "sha256": "ab" * 32}


def random_rows(n: int, seed: int = 0, labels: int = 3, sort_by_label: bool = False) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    rows = [
        ([int(x) for x in rng.integers(2, 500, size=rng.integers(1, 12))], int(rng.integers(labels))) for _ in range(n)
    ]
    return sorted(rows, key=lambda row: row[1]) if sort_by_label else rows


def build(tmp_path, rows, shard_rows: int = 200, seed: int = 0, **kwargs) -> TokenCache:
    return TokenCache.build(tmp_path / "cache", iter(rows), fingerprint=FINGERPRINT, seed=seed, shard_rows=shard_rows,
                            expected_rows=len(rows), **kwargs)  # fmt: skip


def real_rows(batch: Batch) -> list[tuple[tuple[int, ...], int]]:
    """(ids without padding, label) of the rows of a batch that are not fillers."""
    out = []
    for ids, label, weight in zip(batch.ids, batch.labels, batch.weights, strict=True):
        if weight:
            out.append((tuple(int(i) for i in ids[ids != 0]), int(label)))
    return out


def as_multiset(rows) -> Counter:
    return Counter((tuple(ids), label) for ids, label in rows)


@pytest.mark.parametrize("seed", [7, None])
def test_every_row_once_per_pass_and_batch_count_is_exact(tmp_path, seed):
    rows = random_rows(1000)
    cache = build(tmp_path, rows)
    assert (cache.rows, cache.tokens) == (1000, sum(len(ids) for ids, _ in rows))
    assert len(cache.shard_rows) == 5 and sum(cache.shard_rows) == 1000
    assert cache.label_counts().tolist() == [Counter(label for _, label in rows)[i] for i in range(3)]
    batches = list(cache.batches(32, seed=seed, epoch=0))
    assert len(batches) == cache.batch_count(32, shuffled=seed is not None)
    assert Counter(row for b in batches for row in real_rows(b)) == as_multiset(rows)
    for b in batches:
        assert b.ids.dtype == np.int32 and b.labels.dtype == np.int32 and b.weights.dtype == np.float32
        assert b.global_rows == len(b.ids) <= 32 and b.weights.all()
        assert b.ids.shape[1] == max(len(ids) for ids, _ in real_rows(b))  # padded to this batch's longest row
        assert (b.ids[:, 0] != 0).all()  # no row is all padding


def test_rows_without_ids_become_one_out_of_vocabulary_id(tmp_path):
    cache = build(tmp_path, [([], 0), ([5, 6], 1), (np.array([], dtype=np.int32), 1), (np.array([9]), 0)])
    rows = [row for b in cache.batches(8, seed=None, epoch=0) for row in real_rows(b)]
    assert Counter(rows) == Counter({((OOV_ID,), 0): 1, ((5, 6), 1): 1, ((OOV_ID,), 1): 1, ((9,), 0): 1})


def order(cache: TokenCache, **kwargs) -> list[list[tuple]]:
    return [real_rows(b) for b in cache.batches(16, **kwargs)]


def test_shuffle_depends_only_on_seed_and_epoch(tmp_path):
    cache = build(tmp_path, random_rows(800))
    again = TokenCache.open(tmp_path / "cache", FINGERPRINT)
    assert order(cache, seed=1, epoch=0) == order(again, seed=1, epoch=0)
    assert order(cache, seed=1, epoch=0) != order(cache, seed=1, epoch=1)
    assert order(cache, seed=1, epoch=0) != order(cache, seed=2, epoch=0)
    assert order(cache, seed=None, epoch=0) == order(cache, seed=None, epoch=5)
    # sorted by length within each pool of POOL_BATCHES batches: little padding
    padding = [(b.ids == 0).sum() / b.ids.size for b in cache.batches(16, seed=1, epoch=0)]
    assert np.mean(padding) < 0.15


@pytest.mark.parametrize("seed", [3, None])
def test_start_skips_exactly_the_first_batches(tmp_path, seed):
    cache = build(tmp_path, random_rows(700), shard_rows=150)
    full = order(cache, seed=seed, epoch=2)
    for start in (0, 1, 9, 10, 11, 25, len(full) - 1, len(full), len(full) + 3):
        assert order(cache, seed=seed, epoch=2, start=start) == full[start:]


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_parts_slice_every_global_batch(tmp_path, parts):
    rows = random_rows(203)  # batches of 16 with ragged ends: some have fewer rows than some parts get
    cache = build(tmp_path, rows, shard_rows=60)
    whole = list(cache.batches(16, seed=4, epoch=1))
    sliced = [list(cache.batches(16, seed=4, epoch=1, part=p, parts=parts)) for p in range(parts)]
    count = cache.batch_count(16, shuffled=True)
    assert len(whole) == count and all(len(s) == count for s in sliced)
    for i, batch in enumerate(whole):
        pieces = [s[i] for s in sliced]
        assert Counter(row for piece in pieces for row in real_rows(piece)) == Counter(real_rows(batch))
        assert len({len(piece.ids) for piece in pieces}) == 1  # every worker gets the same batch size
        for piece in pieces:
            assert piece.global_rows == batch.global_rows == len(batch.ids)
            fillers = piece.weights == 0
            assert (piece.ids[fillers, 0] == OOV_ID).all() and (piece.ids[fillers, 1:] == 0).all()
            assert (piece.ids[:, 0] != 0).all()
        assert sum(piece.weights.sum() for piece in pieces) == batch.global_rows


def test_fillers_when_a_global_batch_is_smaller_than_the_parts(tmp_path):
    cache = build(tmp_path, random_rows(3), shard_rows=10)
    pieces = [next(cache.batches(8, seed=0, epoch=0, part=p, parts=5)) for p in range(5)]
    assert [piece.weights.tolist() for piece in pieces] == [[1.0], [1.0], [1.0], [0.0], [0.0]]
    assert [piece.ids.tolist() for piece in pieces[3:]] == [[[OOV_ID]], [[OOV_ID]]]
    assert all(piece.global_rows == 3 for piece in pieces)


def test_a_file_sorted_by_label_still_gives_batches_that_mix_labels(tmp_path):
    rows = random_rows(4000, labels=2, sort_by_label=True)
    cache = build(tmp_path, rows, shard_rows=1000)
    batches = list(cache.batches(32, seed=0, epoch=0))
    assert all(len(set(b.labels.tolist())) == 2 for b in batches if len(b.labels) >= 16)
    start = np.concatenate([b.labels for b in batches[:20]])
    assert 0.35 < start.mean() < 0.65  # the first batches of a pass are not all of the first label


def test_open_refuses_a_missing_stale_or_damaged_cache(tmp_path):
    assert TokenCache.open(tmp_path / "cache", FINGERPRINT) is None
    build(tmp_path, random_rows(300), shard_rows=100, seed=5)
    directory = tmp_path / "cache"
    assert TokenCache.open(directory, FINGERPRINT).rows == 300
    assert TokenCache.open(directory, {**FINGERPRINT, "sha256": "cd" * 32}) is None
    assert TokenCache.open(directory, FINGERPRINT, seed=6) is None
    assert TokenCache.open(directory, FINGERPRINT, seed=5) is not None
    shard = directory / "shard-00001.ids"
    shard.write_bytes(shard.read_bytes()[:-4])  # truncated
    assert TokenCache.open(directory, FINGERPRINT) is None
    (directory / MANIFEST).write_text("{not json", encoding="utf-8")
    assert TokenCache.open(directory, FINGERPRINT) is None
    (directory / MANIFEST).unlink()
    assert TokenCache.open(directory, FINGERPRINT) is None


def test_rebuild_replaces_its_own_files_only(tmp_path):
    directory = tmp_path / "cache"
    build(tmp_path, random_rows(500), shard_rows=100)
    (directory / "notes.txt").write_text("the caller's", encoding="utf-8")
    cache = build(tmp_path, random_rows(150, seed=1), shard_rows=100)
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["cache.json", "notes.txt", "shard-00000.ids", "shard-00000.rows", "shard-00001.ids",
                     "shard-00001.rows"]  # fmt: skip
    assert cache.rows == 150 and json.loads((directory / MANIFEST).read_text())["rows"] == 150


def test_rows_of_unknown_count_are_spooled_then_dealt(tmp_path):
    rows = random_rows(900)
    cache = TokenCache.build(tmp_path / "c", (row for row in rows), fingerprint=FINGERPRINT, seed=0, shard_rows=300)
    assert len(cache.shard_rows) == 3 and sorted(p.name for p in (tmp_path / "c").iterdir())[0] == "cache.json"
    assert not list((tmp_path / "c").glob("incoming.*"))
    assert Counter(r for b in cache.batches(64, seed=0, epoch=0) for r in real_rows(b)) == as_multiset(rows)


# --- memory ------------------------------------------------------------------------------------------------

CHILD = """
import resource, sys
from pathlib import Path
from lstm_cli.cache import TokenCache
from lstm_cli.corpus import scan
from lstm_cli.data import stream_labeled
from lstm_cli.engine.tokenizer import Tokenizer

stream = stream_labeled(sys.argv[1])
stats = scan(stream, max_length=64, standardize="lower_and_split_punctuation")
tokenizer = Tokenizer(stats.vocabulary(5000, 1), max_length=64, standardize="lower_and_split_punctuation")
index = {label: i for i, label in enumerate(stats.labels)}
rows = ((tokenizer.ids(text), index[label]) for text, label in stream)
cache = TokenCache.build(Path(sys.argv[2]), rows, fingerprint=stream.fingerprint(), seed=0, shard_rows=4096,
                         expected_rows=stats.rows)
assert sum(len(b.ids) for b in cache.batches(64, seed=0, epoch=0)) == stats.rows
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_corpus(path, megabytes: int) -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(3000)]
    pool = [f'"{" ".join(rng.choice(words, size=rng.integers(3, 30)))}",{rng.choice(["pos", "neg", "meh"])}\n'
            for _ in range(2000)]  # fmt: skip
    block = "".join(pool[i] for i in rng.integers(len(pool), size=5000)).encode()
    with path.open("wb") as f:
        f.write(b"text,label\n")
        for _ in range(-(-megabytes * 2**20 // len(block))):
            f.write(block)


def peak_rss_mb(tmp_path, megabytes: int) -> float:
    path = tmp_path / f"{megabytes}.csv"
    write_corpus(path, megabytes)
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(tmp_path / f"cache{megabytes}")],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout) / 1024  # ru_maxrss is in KiB on Linux


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and allocator behaviour are Linux's")
@pytest.mark.parametrize(
    ("small", "large", "bound"),
    [(3, 12, 10), pytest.param(20, 80, 30, marks=pytest.mark.slow)],
    ids=["3-12MB", "20-80MB"],
)
def test_peak_memory_stays_flat_as_the_file_grows(tmp_path, small, large, bound):
    """Reading all of the larger file would cost at least its size in bytes, and as much again as str."""
    growth = peak_rss_mb(tmp_path, large) - peak_rss_mb(tmp_path, small)
    assert growth < bound, f"peak RSS grew by {growth:.1f} MB from {small} MB to {large} MB of CSV"


def test_the_data_layer_does_not_import_tensorflow():
    code = (
        "import sys, lstm_cli.data, lstm_cli.corpus, lstm_cli.cache, lstm_cli.batching; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_shards_are_bounded_in_tokens_as_well_as_rows(tmp_path):
    """Long documents make more shards (training reads one whole shard at a time), spooled or not."""
    rows = [(list(range(2, 2 + 50)), i % 2) for i in range(400)]  # 20,000 tokens
    for expected in ({"expected_rows": 400, "expected_tokens": 20_000}, {}):
        cache = TokenCache.build(tmp_path / f"c{len(expected)}", iter(rows), fingerprint=FINGERPRINT, seed=0,
                                 shard_rows=10_000, shard_tokens=1_000, **expected)  # fmt: skip
        assert len(cache.shard_rows) == 20 and sum(cache.shard_rows) == 400, expected
        assert max(shard["tokens"] for shard in cache.manifest["shards"]) < 2_000
