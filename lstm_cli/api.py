"""lstm-cli from Python: `lstm_cli.load(path)` gives a `Model` that predicts and explains on the numpy engine,
without importing TensorFlow.

    import lstm_cli

    model = lstm_cli.load("lstm-model")
    model.labels                              # ['neg', 'pos'], the order of predict_proba's columns
    model.predict(["refund please"], k=2)     # [[Prediction(label='neg', probability=0.97), ...]]
    model.predict_proba(["refund please"])    # np.ndarray float32 [1, 2]
    model.explain("refund please")            # lstm_cli.explain.Explanation: a score per token

The engine runs in the calling process: on one thread, or on two when OPENBLAS_NUM_THREADS=1 is set before
numpy is imported (as the command line sets it). `close()` (or a `with` block) stops those threads.

Model directories are checked as the command line checks them, and their problems raise
`lstm_cli.errors.ArtifactError`; argument values lstm-cli refuses raise `lstm_cli.errors.UsageError`
(both `LstmCliError`s); arguments of the wrong type raise TypeError."""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import compress
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lstm_cli.abstain import UNKNOWN_LABEL, abstains, check_min_probability, check_unknown_label
from lstm_cli.errors import ArtifactError, UsageError
from lstm_cli.explain import UNITS, Explanation, occlusion
from lstm_cli.predict import Predictor

ENGINES = ("numpy", "auto", "tensorflow")


class Prediction(NamedTuple):
    """One label and its probability (a tuple: `label, probability = prediction` works too)."""

    label: str
    probability: float


class Model:
    """A model directory loaded for predictions (see `load`). Also a context manager, which closes it."""

    def __init__(self, predictor: Predictor):
        self._predictor = predictor
        self.path = Path(predictor.path)
        self.labels: list[str] = list(predictor.labels)  # the columns of predict_proba, in order
        # A multi-label model's decision thresholds, one per label (None: a single-label model): a label is
        # predicted where predict_proba is at or over its threshold.
        self.thresholds: list[float] | None = None
        if predictor.thresholds is not None:
            self.thresholds = [float(t) for t in predictor.metadata["multi_label"]["thresholds"]]

    @property
    def engine(self) -> str:
        """What runs the network: "numpy", or "tensorflow" for a model the numpy engine cannot run."""
        return self._predictor.engine

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Every label's probability for each text: float32 [len(texts), len(labels)], columns in `labels`
        order; the same numbers as `lstm-cli predict --all-probabilities` prints."""
        return self._predictor.probabilities(_texts(texts))

    def predict(
        self, texts: Sequence[str], k: int = 1, *, min_probability: float | None = None,
        unknown_label: str = UNKNOWN_LABEL, threshold: float | None = None,
    ) -> list[list[Prediction]]:  # fmt: skip
        """For each text, a list of its `k` most probable labels (all of them if k is larger, as `lstm-cli
        predict --top-k` gives), most probable first, ties in `labels` order.

        `min_probability` (0 to 1): where the top probability is below it, the first Prediction's label is
        `unknown_label` (never one of `labels`), its probability unchanged, as `lstm-cli predict
        --min-probability` prints.

        A multi-label model gives, for each text, every label at or over its threshold (`thresholds`, or
        `threshold` for every label, as `lstm-cli predict --threshold`), most probable first: possibly none.
        `k` and `min_probability` are for single-label models (UsageError), `threshold` for multi-label ones."""
        if self.thresholds is not None:
            return self._labels_over_thresholds(texts, k, min_probability, threshold)
        if threshold is not None:
            raise UsageError(f"threshold is for multi-label models, and {self.path} is single-label: use k or "
                             "min_probability")  # fmt: skip
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        if min_probability is not None:
            check_min_probability(min_probability, "min_probability")
            check_unknown_label(unknown_label, self.labels, "unknown_label")
        probabilities = self.predict_proba(texts)
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        predictions = [
            [Prediction(self.labels[j], float(row[j])) for j in columns]
            for row, columns in zip(probabilities, best, strict=True)
        ]
        if min_probability is not None:
            unsure = abstains([p[0].probability for p in predictions], min_probability)
            for p in compress(predictions, unsure):
                p[0] = p[0]._replace(label=unknown_label)
        return predictions

    def explain(self, text: str, *, label: str | None = None, unit: str = "log-odds") -> Explanation:
        """How much each token pushed `label` (default: the predicted one): occlusion on the numpy engine, as
        `lstm-cli explain` computes it. `unit`: "log-odds" (default) or "probability"."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if label is not None and label not in self.labels:
            raise UsageError(f"{label!r} is not one of the model's labels ({', '.join(map(repr, self.labels[:20]))})")
        if unit not in UNITS:
            raise UsageError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
        return occlusion(self._predictor, text, label=label, unit=unit)

    def _labels_over_thresholds(self, texts: Sequence[str], k: int, min_probability: float | None,
                                threshold: float | None) -> list[list[Prediction]]:  # fmt: skip
        from lstm_cli.multilabel import check_threshold, picked

        refused = ((k != 1, "k", "every label over its threshold is given"),
                   (min_probability is not None, "min_probability", "the thresholds decide"))  # fmt: skip
        for given, name, why in refused:
            if given:
                raise UsageError(f"{name} is for single-label models, and {self.path} is multi-label: {why}")
        thresholds = self.thresholds if threshold is None else check_threshold(threshold, "threshold")
        probabilities = self.predict_proba(texts)
        return [
            [Prediction(self.labels[j], float(row[j])) for j in columns]
            for row, columns in zip(probabilities, picked(probabilities, thresholds), strict=True)
        ]

    def close(self) -> None:
        """Stop the engine's threads, if it started any; the model still predicts afterwards (and starts them
        again when a batch is large enough)."""
        self._predictor.close()
        if self._predictor.backend.engine is not None:
            self._predictor.backend.engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<lstm_cli.Model {str(self.path)!r}: {len(self.labels)} labels, {self.engine} engine>"


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be a sequence of str, not a single str: pass [text]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is not a str but {type(text).__name__}")
    return texts


def load(path: str | os.PathLike[str], *, engine: str = "numpy") -> Model:
    """The model directory at `path`, ready to predict.

    engine: "numpy" (default) runs it on lstm-cli's numpy engine and never imports TensorFlow; a model the
    engine cannot run (saved by an older lstm-cli, or with a layer it does not know) raises ArtifactError.
    "auto" serves such a model through its SavedModel instead, importing TensorFlow (seconds); "tensorflow"
    always does (the two agree to float precision)."""
    if engine not in ENGINES:
        raise UsageError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    try:
        predictor = Predictor(Path(path), engine=engine)
    except ArtifactError as e:
        hint = "; use --engine tensorflow (or auto)"
        if not str(e).endswith(hint):
            raise
        raise ArtifactError(f"{str(e).removesuffix(hint)}; or load it with engine='auto' (TensorFlow)") from None
    return Model(predictor)
