"""Serving a model directory: probabilities for batches of texts, and evaluation against known labels."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.artifact import SAVED_MODEL, SERVING_FILES, SIGNATURE, read_metadata, verify_files
from lstm_cli.data import LabeledData, batched, clean_text
from lstm_cli.errors import ArtifactError
from lstm_cli.graphcheck import check_serving_graph
from lstm_cli.metrics import classification_report

PREDICT_BATCH = 1024
_ATTEMPTS = 5


def _load(model_dir: Path) -> tuple[dict[str, Any], Any]:
    """Metadata and SavedModel, all read from one directory even if `train` swaps it meanwhile.

    Files are opened through a descriptor of the directory (/proc/self/fd/N), which keeps naming the
    directory that was opened when another takes its place."""
    from lstm_cli.model import tf

    read_metadata(model_dir)  # clear errors for a missing or foreign directory
    fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        root = Path(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else model_dir
        try:
            metadata = read_metadata(root)
            verify_files(root, metadata, only=SERVING_FILES)
            check_serving_graph(root / SAVED_MODEL, SIGNATURE)
            try:
                loaded = tf.saved_model.load(str(root))
                loaded.signatures[SIGNATURE]
            except Exception as e:  # TensorFlow raises many types for a damaged SavedModel
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ArtifactError(f"{root}: the SavedModel cannot be loaded ({first_line})") from None
        except ArtifactError as e:
            raise ArtifactError(str(e).replace(str(root), str(model_dir))) from None
    finally:
        os.close(fd)
    return metadata, loaded


@dataclass
class Prediction:
    text: str
    probabilities: np.ndarray  # one per label, in Predictor.labels order

    def top(self, labels: list[str], k: int) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(labels[i], float(self.probabilities[i])) for i in order]


class Predictor:
    """A loaded SavedModel and its metadata. Only the serving graph is loaded, not the Keras network."""

    def __init__(self, model_dir: Path):
        self.path = model_dir
        for attempt in range(_ATTEMPTS):
            try:
                self.metadata, self._loaded = _load(model_dir)
                break
            except ArtifactError:
                # `train` may have swapped the directory while we read it: try the new one.
                if attempt == _ATTEMPTS - 1:
                    raise
                time.sleep(0.05)
        self._serve = self._loaded.signatures[SIGNATURE]
        self.labels: list[str] = self.metadata["labels"]
        from lstm_cli.model import tf

        self._tf = tf

    def probabilities(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        encoded = [clean_text(t).encode("utf-8") for t in texts]
        outputs = self._serve(text=self._tf.constant(encoded, dtype=self._tf.string))
        return outputs["probabilities"].numpy()

    def predict(self, texts: Iterable[str], *, batch_size: int = PREDICT_BATCH) -> Iterator[list[Prediction]]:
        """Batches of predictions, in input order; streams, so memory stays flat for any input length."""
        for batch in batched(texts, batch_size):
            probabilities = self.probabilities(batch)
            yield [Prediction(clean_text(text), p) for text, p in zip(batch, probabilities, strict=True)]


def evaluate(predictor: Predictor, data: LabeledData, *, batch_size: int = PREDICT_BATCH) -> dict[str, Any]:
    """Metrics on rows whose label the model knows; rows with other labels are counted, by label."""
    index = {label: i for i, label in enumerate(predictor.labels)}
    known = [i for i, label in enumerate(data.labels) if label in index]
    unknown: dict[str, int] = {}
    for label in data.labels:
        if label not in index:
            unknown[label] = unknown.get(label, 0) + 1
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
