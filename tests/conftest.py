"""Shared fixtures: tiny labeled data, and one tiny trained model reused by the whole session."""

from __future__ import annotations

import csv
import os
import random
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the command line sets it (lstm_cli/cli/__init__.py)

# Small enough to train in a few seconds on 2 CPU cores, big enough to learn the toy task.
TINY = [
    "--embedding-dim", "8", "--units", "6", "--dense-units", "8", "--max-tokens", "60", "--bigram-buckets", "512",
    "--bigram-dim", "4",
    "--epochs", "3", "--batch-size", "16", "--learning-rate", "0.02", "--quiet",
]  # fmt: skip

WORDS = {
    "pos": "good great lovely excellent fine happy superb nice".split(),
    "neg": "bad awful poor terrible sad horrible broken ugly".split(),
    "meh": "okay average plain middling so-so usual ordinary fair".split(),
}
FILLER = "the a it was very really quite movie food service and".split()


def write_csv(path: Path, rows: list[tuple[str, str]], header=("text", "label"), delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def toy_rows(n: int, seed: int = 0, labels: tuple[str, ...] = ("pos", "neg", "meh")) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(WORDS[label]) for _ in range(rng.randint(1, 3))]
        words += [rng.choice(FILLER) for _ in range(rng.randint(0, 4))]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def encoded(rows: list[list[int]]):
    """Token id rows as the EncodedTexts (ids and row splits) that batching and the token cache hold."""
    import numpy as np

    from lstm_cli.batching import EncodedTexts

    lengths = [len(r) for r in rows]
    return EncodedTexts(np.array([x for r in rows for x in r], np.int32), np.cumsum([0, *lengths]))


def unescape_tsv(field: str) -> str:
    """A field of lstm-cli's tsv/label output back to the label: undo the escapes of \\\\ \\t \\n \\r."""
    out, chars = [], iter(field)
    for c in chars:
        out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[next(chars)] if c == "\\" else c)
    return "".join(out)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test runs in its own empty directory with no model set in the environment."""
    monkeypatch.delenv("LSTM_CLI_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_csv(d / "train.csv", toy_rows(120, seed=1))
    write_csv(d / "test.csv", toy_rows(45, seed=2))
    return d


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, data_dir) -> Path:
    from lstm_cli.cli import app

    model = tmp_path_factory.mktemp("models") / "toy-model"
    result = CliRunner().invoke(app, ["train", str(data_dir / "train.csv"), "-m", str(model), *TINY])
    assert result.exit_code == 0, result.output
    return model


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pipe_path(content: bytes) -> Path:
    """A path to a pipe that a writer fills with `content` once, as bash's `<(cat file)` gives: /dev/fd/N of
    this process (read after the writer closed it, a second open finds it empty). The read end stays open
    for the rest of the test session: a few descriptors."""
    read, write = os.pipe()

    def write_once() -> None:
        with open(write, "wb") as pipe:
            pipe.write(content)

    threading.Thread(target=write_once, daemon=True).start()
    return Path(f"/dev/fd/{read}")


def npz_layout(model: Path) -> Path:
    """`model` (a copy) changed in place into the layout lstm-cli wrote when the numpy engine read its weights
    from engine.npz, not from the SavedModel's variables; its metadata.json rehashed."""
    import hashlib
    import json

    import numpy as np

    from lstm_cli.artifact import network_weights

    weights = network_weights(model)
    with (model / "engine.npz").open("wb") as f:
        np.savez(f, **{name: np.array(array) for name, array in weights.items()})
    description = json.loads((model / "engine.json").read_text(encoding="utf-8"))
    description["weights_file"] = "engine.npz"
    del description["weights_keys"]
    (model / "engine.json").write_text(json.dumps(description), encoding="utf-8")
    meta = json.loads((model / "metadata.json").read_text(encoding="utf-8"))
    meta["engine"]["weights"] = "engine.npz"
    meta["files"] = {
        p.relative_to(model).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model.rglob("*"))
        if p.is_file() and p.name != "metadata.json"
    }
    (model / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    return model
