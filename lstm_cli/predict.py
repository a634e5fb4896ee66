"""Serving a model directory: probabilities for batches of texts, and evaluation against known labels."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.artifact import SAVED_MODEL, SERVING_FILES, SIGNATURE, read_metadata, verify_files
from lstm_cli.atomic import swap_in_progress
from lstm_cli.data import LabeledData, batched, clean_text
from lstm_cli.errors import ArtifactError, DataError
from lstm_cli.graphcheck import check_saved_model
from lstm_cli.metrics import classification_report
from lstm_cli.tf_setup import import_tensorflow

PREDICT_BATCH = 4096  # lines read, predicted and written at a time (sorted by length within)
MODEL_BATCH = 256  # texts per call of the serving function
_ATTEMPTS = 5


def _load(model_dir: Path) -> tuple[dict[str, Any], Any]:
    """Metadata and SavedModel, all read from one directory even if `train` swaps it meanwhile.

    Files are opened through a descriptor of the directory (/proc/self/fd/N), which keeps naming the
    directory that was opened when another takes its place."""
    tf = import_tensorflow()
    read_metadata(model_dir)  # clear errors for a missing or foreign directory
    try:
        fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:  # swapped away since read_metadata looked
        raise ArtifactError(f"{model_dir}: cannot open the model directory ({e.strerror})") from None
    try:
        root = Path(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else model_dir
        try:
            metadata = read_metadata(root)
            verify_files(root, metadata, only=SERVING_FILES)
            check_saved_model(root / SAVED_MODEL, SIGNATURE)
            try:
                loaded = tf.saved_model.load(str(root))
                loaded.signatures[SIGNATURE]
            except Exception as e:  # TensorFlow raises many types for a damaged SavedModel
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ArtifactError(f"{root}: the SavedModel cannot be loaded ({first_line})") from None
        except OSError as e:  # a file vanished: `train` retired this directory while we read it
            raise ArtifactError(f"{model_dir}: could not read the model ({e.strerror or e})") from None
        except ArtifactError as e:
            raise ArtifactError(str(e).replace(str(root), str(model_dir))) from None
    finally:
        os.close(fd)
    return metadata, loaded


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


@dataclass
class Predictions:
    """A batch of predictions: texts (as read, made valid Unicode) and their label probabilities."""

    texts: list[str]
    probabilities: np.ndarray  # [len(texts), labels], in Predictor.labels order

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(label indices, probabilities), each [len(texts), k], most probable first."""
        if k == 1:
            best = self.probabilities.argmax(axis=1)[:, None]
        else:
            best = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return best, np.take_along_axis(self.probabilities, best, axis=1)


class Predictor:
    """A loaded SavedModel and its metadata. Only the serving graph is loaded, not the Keras network."""

    def __init__(self, model_dir: Path):
        self.path = model_dir
        for attempt in range(_ATTEMPTS):
            before = _inode(model_dir)
            try:
                self.metadata, self._loaded = _load(model_dir)
                break
            except ArtifactError:
                # Retry only if `train` swapped the directory while we read it; a damaged model fails at once.
                swapped = _inode(model_dir) != before or swap_in_progress(model_dir)
                if attempt == _ATTEMPTS - 1 or not swapped:
                    raise
                time.sleep(0.05)
        self._serve = self._loaded.signatures[SIGNATURE]
        self.labels: list[str] = self.metadata["labels"]
        self._tf = import_tensorflow()
        self._pool = ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1)))

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """One row of label probabilities per text, in input order."""
        return self._probabilities([clean_text(t) for t in texts])

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        """As `probabilities`, for texts that are valid Unicode already."""
        result = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        # Texts of similar length are run together, so a batch pads little; masking makes the order
        # irrelevant to the results, and they are put back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[start : start + MODEL_BATCH] for start in range(0, len(texts), MODEL_BATCH)]

        def run(rows: list[int]) -> None:
            encoded = [texts[i].encode("utf-8") for i in rows]
            outputs = self._serve(text=self._tf.constant(encoded, dtype=self._tf.string))
            result[rows] = outputs["probabilities"].numpy()

        # The recurrent loop is a chain of small ops that keeps about one core busy; two calls at
        # once (TensorFlow releases the GIL) use the second.
        if len(chunks) > 1:
            list(self._pool.map(run, chunks))
        elif chunks:
            run(chunks[0])
        return result

    def predict(self, texts: Iterable[str], *, batch_size: int = PREDICT_BATCH) -> Iterator[Predictions]:
        """Batches of predictions, in input order; streams, so memory stays flat for any input length."""
        for batch in batched(texts, batch_size):
            cleaned = [clean_text(t) for t in batch]
            yield Predictions(cleaned, self._probabilities(cleaned))


def evaluate(predictor: Predictor, data: LabeledData, *, batch_size: int = PREDICT_BATCH) -> dict[str, Any]:
    """Metrics on rows whose label the model knows; rows with other labels are counted, by label."""
    index = {label: i for i, label in enumerate(predictor.labels)}
    known = [i for i, label in enumerate(data.labels) if label in index]
    unknown = dict(Counter(label for label in data.labels if label not in index))
    if not known:
        seen = ", ".join(repr(label) for label in sorted(unknown)[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{data.path}: no row has a label the model knows (labels here: {seen}; the model's: "
            f"{', '.join(map(repr, predictor.labels[:5]))}{', ...' if len(predictor.labels) > 5 else ''}); "
            "check --label-column and that this is the model's test data"
        )
    texts = [data.texts[i] for i in known]
    truth = np.array([index[data.labels[i]] for i in known], dtype=np.int64)
    predicted = np.concatenate(
        [predictor.probabilities(batch).argmax(axis=1) for batch in batched(texts, batch_size)]
        or [np.zeros(0, np.int64)]
    )
    report = classification_report(truth, predicted, predictor.labels)
    report["rows"] = {
        "read": len(data) + sum(data.skipped.values()),
        "evaluated": len(known),
        "unknown_label": sum(unknown.values()),
        "skipped": dict(data.skipped),
    }
    report["unknown_labels"] = unknown
    report["data"] = data.fingerprint()
    report["model"] = str(predictor.path)
    return report
