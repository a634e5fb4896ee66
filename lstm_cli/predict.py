"""Serving a model directory: probabilities for batches of texts, and evaluation against known labels."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.artifact import read_metadata, verify_files
from lstm_cli.data import LabeledData, batched
from lstm_cli.errors import ArtifactError
from lstm_cli.metrics import classification_report

PREDICT_BATCH = 1024


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
        self.metadata: dict[str, Any] = read_metadata(model_dir)
        verify_files(model_dir, self.metadata)
        self.labels: list[str] = self.metadata["labels"]
        from lstm_cli.model import tf

        try:
            loaded = tf.saved_model.load(str(model_dir))
            self._serve = loaded.signatures["serving_default"]
        except Exception as e:  # TensorFlow raises many types for a damaged SavedModel
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{model_dir}: the SavedModel cannot be loaded ({first_line})") from None
        self._loaded = loaded  # keeps the signature's resources alive
        self._tf = tf

    def probabilities(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        outputs = self._serve(text=self._tf.constant(texts, dtype=self._tf.string))
        return outputs["probabilities"].numpy()

    def predict(self, texts: Iterable[str], *, batch_size: int = PREDICT_BATCH) -> Iterator[list[Prediction]]:
        """Batches of predictions, in input order; streams, so memory stays flat for any input length."""
        for batch in batched(texts, batch_size):
            probabilities = self.probabilities(batch)
            yield [Prediction(text, p) for text, p in zip(batch, probabilities, strict=True)]


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
