"""Serving a model directory: probabilities for batches of texts, and evaluation against known labels.

Predictions come from the numpy engine (lstm_cli.engine) when it can run the model, else from the SavedModel;
the fast path never imports TensorFlow, and imports what only TensorFlow serving or evaluation needs
(tf_setup, graphcheck, metrics, thread pools) where it is used: a one-off prediction pays for every import."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.artifact import (
    ENGINE_FILE,
    METADATA,
    SAVED_MODEL,
    SERVING_FILES,
    SIGNATURE,
    ModelFiles,
    read_metadata,
    read_model,
    verify_files,
)
from lstm_cli.atomic import swap_in_progress
from lstm_cli.data import LabeledData, batched, clean_text
from lstm_cli.engine import Engine, Tokenizer, Unsupported
from lstm_cli.engine.tokenizer import STRIP_PUNCTUATION
from lstm_cli.errors import ArtifactError, DataError
from lstm_cli.formats import MAX_TEXT_CHARS
from lstm_cli.schema import check_outputs

# Lines read, predicted and written at a time (sorted by length within). Larger batches pad less and wait
# less for the slowest thread: 16,384 SST-2 lines stream 1.2-1.3x as fast as 4,096 (benchmarks/bench.py).
PREDICT_BATCH = 16_384
PREDICT_CHARS = 4_000_000  # ...or fewer lines, when they are long: bounds the memory of a batch's token ids
MODEL_BATCH = 256  # texts per call of the serving function
EVALUATE_CELLS = 16_000_000  # evaluate holds at most this many probabilities at a time (64 MB, at any label count)
# Batches of at least this many texts (two of the engine's batches, as many as two threads would share), or of
# this many characters (long documents: some 80 articles make several of the engine's batches), go to worker
# processes once Predictor.share_out() is called; smaller ones (a line at a time, a short file) run in this
# process, on one thread, without starting any.
WORKER_ROWS = 512
WORKER_CHARS = 200_000
_ATTEMPTS = 5


ENGINES = ("auto", "numpy", "tensorflow")


@dataclass
class Backend:
    """What serves a model: the numpy engine, or the SavedModel through TensorFlow (and why)."""

    name: str  # "numpy" or "tensorflow"
    run: Any  # valid-Unicode texts -> probabilities
    fallback: str | None = None  # why TensorFlow serves when the numpy engine was wanted
    outdated: bool = False  # the model directory predates the engine files
    tokenizer: Tokenizer | None = None
    engine: Engine | None = None  # the numpy engine, when it serves (explain hands it token ids directly)
    vocabulary: list[str] | None = None  # vocabulary.json, checked


def _load(model_dir: Path, engine: str) -> tuple[dict[str, Any], Backend]:
    """Metadata and a backend, all read from one directory even if `train` swaps it meanwhile.

    Files are opened through a descriptor of the directory (/proc/self/fd/N), which keeps naming the
    directory that was opened when another takes its place."""
    read_metadata(model_dir)  # clear errors for a missing or foreign directory
    if engine == "tensorflow":
        from lstm_cli.tf_setup import import_tensorflow

        import_tensorflow()  # seconds, the first time: not while the directory is held open
    try:
        fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:  # swapped away since read_metadata looked
        raise ArtifactError(f"{model_dir}: cannot open the model directory ({e.strerror})") from None
    try:
        root = Path(f"/proc/self/fd/{fd}") if Path("/proc/self/fd").is_dir() else model_dir
        try:
            metadata = read_metadata(root)
            files = read_model(root, metadata)  # every data file, checked as a whole, whichever engine serves
            backend = None if engine == "tensorflow" else _numpy_backend(root, metadata, files, model_dir)
            if backend is None or backend.name != "numpy":
                if engine == "numpy":
                    raise ArtifactError(f"{model_dir}: {backend.fallback}; use --engine tensorflow (or auto)")
                tensorflow = _tensorflow_backend(root, metadata)
                tensorflow.vocabulary = files.vocabulary
                if backend is not None:
                    tensorflow.fallback, tensorflow.outdated = backend.fallback, backend.outdated
                backend = tensorflow
        except OSError as e:  # a file vanished: `train` retired this directory while we read it
            raise ArtifactError(f"{model_dir}: could not read the model ({e.strerror or e})") from None
        except ArtifactError as e:
            raise ArtifactError(str(e).replace(str(root), str(model_dir))) from None
    finally:
        os.close(fd)
    return metadata, backend


def _numpy_backend(root: Path, metadata: dict[str, Any], files: ModelFiles, model_dir: Path) -> Backend:
    """The numpy engine for this model; or, when it cannot serve it, a Backend naming why."""
    if files.description is None:
        reason = (
            f"{model_dir} was saved by an older lstm-cli, without the files of the fast numpy engine; "
            "train it again to get predictions without the TensorFlow start-up"
        )
        return Backend("tensorflow", None, fallback=reason, outdated=True)
    try:
        engine = Engine(files.description, files.weights, files.vocabulary)
        # Shapes the schema cannot see without running the graph (a layer's input width) show on a probe batch.
        probe = engine.probabilities_of_ids([[len(files.vocabulary) - 1, 1, min(2, len(files.vocabulary) - 1)], [1]])
    except Unsupported as e:
        return Backend("tensorflow", None, fallback=f"the numpy engine cannot run this model ({e})")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:  # parses, but does not run
        raise ArtifactError(
            f"{root / ENGINE_FILE}: the network does not run on its weights in {files.weights_file} "
            f"({type(e).__name__}: {str(e)[:200]}); the model directory is damaged, train it again"
        ) from None
    check_outputs(probe, 2, len(metadata["labels"]), root / files.weights_file)
    return Backend("numpy", engine.probabilities, tokenizer=engine.tokenizer, engine=engine,
                   vocabulary=files.vocabulary)  # fmt: skip


def _tensorflow_backend(root: Path, metadata: dict[str, Any]) -> Backend:
    from concurrent.futures import ThreadPoolExecutor

    from lstm_cli.graphcheck import check_saved_model
    from lstm_cli.tf_setup import import_tensorflow

    tf = import_tensorflow()
    verify_files(root, metadata, only=SERVING_FILES)
    check_saved_model(root / SAVED_MODEL, SIGNATURE)
    try:
        loaded = tf.saved_model.load(str(root))
        serve = loaded.signatures[SIGNATURE]
    except Exception as e:  # TensorFlow raises many types for a damaged SavedModel
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{root}: the SavedModel cannot be loaded ({first_line})") from None
    _check_labels(serve, tf, metadata["labels"], root)
    pool = ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1)))

    def run(texts: list[str]) -> np.ndarray:
        result = np.zeros((len(texts), len(metadata["labels"])), dtype=np.float32)
        # Texts of similar length are run together, so a batch pads little; masking makes the order
        # irrelevant to the results, and they are put back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[start : start + MODEL_BATCH] for start in range(0, len(texts), MODEL_BATCH)]

        def run_chunk(rows: list[int]) -> None:
            encoded = [texts[i].encode("utf-8") for i in rows]
            result[rows] = serve(text=tf.constant(encoded, dtype=tf.string))["probabilities"].numpy()

        # The recurrent loop is a chain of small ops that keeps about one core busy; two calls at
        # once (TensorFlow releases the GIL) use the second.
        if len(chunks) > 1:
            list(pool.map(run_chunk, chunks))
        elif chunks:
            run_chunk(chunks[0])
        return result

    run.loaded = loaded  # keeps the SavedModel's resources alive as long as the function
    return Backend("tensorflow", run)


def _check_labels(serve, tf, labels: list[str], root: Path) -> None:
    """The SavedModel's own label names (one call on a probe text) are the metadata's, in the same order."""
    try:
        names = [n.decode("utf-8") for n in serve(text=tf.constant([b"probe"]))["label_names"].numpy()[0]]
    except Exception as e:  # TensorFlow raises many types for a graph that does not run
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{root / SAVED_MODEL}: the SavedModel does not run ({first_line[:200]})") from None
    if names != labels:
        raise ArtifactError(
            f"{root / METADATA}: lists {len(labels)} labels that are not the SavedModel's {len(names)} "
            "(in the same order); the model directory is damaged, train it again"
        )


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
    """A model directory ready to serve: the numpy engine when it can run the model (the default), else the
    SavedModel through TensorFlow (only its serving graph, not the Keras network).

    `engine`: "auto" (numpy, falling back to TensorFlow), "numpy" (or fail) or "tensorflow"."""

    def __init__(self, model_dir: Path, *, engine: str = "auto"):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.path = model_dir
        for attempt in range(_ATTEMPTS):
            before = _inode(model_dir)
            try:
                self.metadata, self.backend = _load(model_dir, engine)
                break
            except ArtifactError:
                # Retry only if `train` swapped the directory while we read it; a damaged model fails at once.
                swapped = _inode(model_dir) != before or swap_in_progress(model_dir)
                if attempt == _ATTEMPTS - 1 or not swapped:
                    raise
                time.sleep(0.05)
        self.labels: list[str] = self.metadata["labels"]
        self._workers = None
        from lstm_cli.multilabel import is_multi_label, saved_thresholds

        # A multi-label model (sigmoid per label) and its saved decision thresholds, one per label.
        self.multi_label = is_multi_label(self.metadata)
        self.thresholds = saved_thresholds(self.metadata, model_dir / METADATA) if self.multi_label else None

    def share_out(self) -> None:
        """From now on, run batches of WORKER_ROWS texts or WORKER_CHARS characters or more on forked worker
        processes, one per core (lstm_cli.engine.workers): for a stream of many lines. Only for the numpy
        engine on two or more cores, and only when forking is safe (no other thread, no TensorFlow in this
        process); otherwise nothing changes. `close()` ends the workers."""
        from lstm_cli.engine import THREADS, _keep_freed_memory
        from lstm_cli.engine.workers import Workers, can_fork

        engine = self.backend.engine
        if engine is None or THREADS < 2 or not can_fork():
            return
        engine.threads = 1  # no thread pool in this process: it would have to exist before the fork
        run_here = self.backend.run

        def run(texts: list[str]) -> np.ndarray:
            if len(texts) < WORKER_ROWS and sum(map(len, texts)) < WORKER_CHARS:
                return run_here(texts)
            if self._workers is None:
                _keep_freed_memory()  # inherited by the workers
                self._workers = Workers(engine, THREADS)
            return self._workers.probabilities(texts)

        self.backend.run = run

    def close(self) -> None:
        """End the worker processes, if any."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    @property
    def engine(self) -> str:
        return self.backend.name

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer in Python (exactly the SavedModel's), whichever engine serves it."""
        if self.backend.tokenizer is None:
            vocabulary = self.backend.vocabulary
            standardize = self.metadata["vectorizer"].get("standardize", STRIP_PUNCTUATION)
            try:
                self.backend.tokenizer = Tokenizer(
                    vocabulary, max_length=self.metadata["config"]["max_length"], standardize=standardize
                )
            except ValueError as e:
                raise ArtifactError(f"{self.path}: {e}; a newer lstm-cli saved this model") from None
        return self.backend.tokenizer

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """One row of label probabilities per text, in input order."""
        return self._probabilities([clean_text(t) for t in texts])

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        """As `probabilities`, for texts that are valid Unicode already."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        # Cut as training cut them (lstm_cli.data): the tokens a model reads, in bounded memory for any text.
        return self.backend.run([t[:MAX_TEXT_CHARS] if len(t) > MAX_TEXT_CHARS else t for t in texts])

    def predict(self, texts: Iterable[str], *, batch_size: int = PREDICT_BATCH) -> Iterator[Predictions]:
        """Batches of predictions, in input order; streams, so memory stays flat for any input length."""
        for batch in batched(texts, batch_size, PREDICT_CHARS):
            cleaned = [clean_text(t) for t in batch]
            yield Predictions(cleaned, self._probabilities(cleaned))


@dataclass
class Scored:
    """The labeled rows whose label the model knows, with what it predicted for each."""

    texts: list[str]
    truth: np.ndarray  # [rows] label indices, in Predictor.labels order
    predicted: np.ndarray  # [rows] the most probable label's index
    probability: np.ndarray  # [rows] its probability (float32)
    probabilities: np.ndarray | None  # [rows, labels], when asked for (score(keep_probabilities=True))
    unknown: dict[str, int]  # rows whose label the model does not know, by label
    uncalibrated: np.ndarray | None = None  # [rows] the top probability before calibration (float64)


def score(
    predictor: Predictor, data: LabeledData, *, batch_size: int = PREDICT_BATCH, keep_probabilities: bool = False
) -> Scored:
    """Predictions for the rows of `data` whose label the model knows; DataError if there are none."""
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
    predicted, probability = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    batch_size = max(1, min(batch_size, EVALUATE_CELLS // len(predictor.labels)))  # rows x labels probabilities
    from lstm_cli.calibration import temperature_of, top_uncalibrated

    kept = [np.zeros((0, len(predictor.labels)), np.float32)]
    temperature, uncalibrated = temperature_of(predictor.metadata), [np.zeros(0)]
    for batch in batched(texts, batch_size, PREDICT_CHARS):
        probabilities = predictor.probabilities(batch)
        predicted.append(probabilities.argmax(axis=1))
        probability.append(probabilities.max(axis=1))
        uncalibrated.append(top_uncalibrated(probabilities, temperature))
        if keep_probabilities:  # else only the top label is kept: memory stays [rows], not [rows, labels]
            kept.append(probabilities)
    kept_probabilities = np.concatenate(kept) if keep_probabilities else None
    return Scored(texts, truth, np.concatenate(predicted), np.concatenate(probability), kept_probabilities, unknown,
                  np.concatenate(uncalibrated))  # fmt: skip


def calibration_report(
    truth: np.ndarray,
    predicted: np.ndarray,
    probability: np.ndarray,
    uncalibrated: np.ndarray | None,
    temperature: float,
) -> dict[str, Any]:
    """The expected calibration error (15 equal-width bins of the top probability) of the model's
    probabilities ("ece") and of the network's before the temperature folded into it ("ece_uncalibrated")."""
    from lstm_cli.calibration import expected_calibration_error
    from lstm_cli.curves import ECE_BINS

    correct = truth == predicted
    after = expected_calibration_error(probability, correct)
    before = after if uncalibrated is None or temperature == 1.0 else expected_calibration_error(uncalibrated, correct)
    return {"temperature": temperature, "bins": ECE_BINS, "ece": after, "ece_uncalibrated": before}


def evaluate(
    predictor: Predictor,
    data: LabeledData,
    *,
    batch_size: int = PREDICT_BATCH,
    misclassified: bool = False,
    scored: Scored | None = None,
    min_probability: float | None = None,
) -> dict[str, Any]:
    """Metrics on rows whose label the model knows; rows with other labels are counted, by label.

    The report is sparse in the number of labels (lstm_cli.metrics): "confusion" holds the non-zero cells as
    [true, predicted, count]; "confusion_matrix", the full grid, only up to metrics.DENSE_LABELS labels.
    With `misclassified`, "misclassified" lists the rows predicted wrongly, in input order, as records of
    text, label, predicted_label and probability (of the predicted label, a float32).
    `scored`: score(predictor, data), if already run. With `min_probability`, "abstention" holds the coverage
    and the accuracy and macro-F1 of the rows answered at it (lstm_cli.abstain.coverage_report)."""
    from lstm_cli.calibration import temperature_of
    from lstm_cli.metrics import DENSE_LABELS, classification_report, dense_confusion

    if scored is None:
        scored = score(predictor, data, batch_size=batch_size)
    texts, truth, predicted, probability, unknown = (
        scored.texts, scored.truth, scored.predicted, scored.probability, scored.unknown
    )  # fmt: skip
    report = classification_report(truth, predicted, predictor.labels)
    if len(predictor.labels) <= DENSE_LABELS:
        report["confusion_matrix"] = dense_confusion(report)
    report["rows"] = {
        "read": len(data) + sum(data.skipped.values()),
        "evaluated": len(truth),
        "unknown_label": sum(unknown.values()),
        "skipped": dict(data.skipped),
    }
    report["unknown_labels"] = unknown
    report["calibration"] = calibration_report(truth, predicted, probability, scored.uncalibrated,
                                               temperature_of(predictor.metadata))  # fmt: skip
    report["data"] = data.fingerprint()
    report["model"] = str(predictor.path)
    if min_probability is not None:
        from lstm_cli.abstain import coverage_report

        report["abstention"] = coverage_report(truth, predicted, probability, predictor.labels, min_probability)
    if misclassified:
        wrong = np.flatnonzero(truth != predicted)
        report["misclassified"] = [
            {
                "text": texts[row],
                "label": predictor.labels[truth[row]],
                "predicted_label": predictor.labels[predicted[row]],
                "probability": probability[row],
            }
            for row in wrong.tolist()
        ]
    return report


def multi_label_probabilities(predictor: Predictor, texts: list[str], *, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """float32 [rows, labels]: every label's probability for each text, all held at once (report's need)."""
    probabilities = np.zeros((len(texts), len(predictor.labels)), np.float32)
    start = 0
    for batch in batched(texts, max(1, min(batch_size, EVALUATE_CELLS // len(predictor.labels))), PREDICT_CHARS):
        probabilities[start : start + len(batch)] = predictor.probabilities(batch)
        start += len(batch)
    return probabilities


def evaluate_multi_label(
    predictor: Predictor, data, *, thresholds=None, batch_size: int = PREDICT_BATCH, probabilities=None
) -> dict[str, Any]:
    """A multi-label model's metrics on `data` (lstm_cli.multilabel.LabeledSets): micro- and macro-F1, subset
    accuracy, hamming loss and per-label precision/recall/F1 (lstm_cli.multilabel.report), at `thresholds` (one
    per label, or one for all; default: the saved ones). Labels the model lacks are left out of the rows' sets
    and counted in "unknown_labels". `probabilities`: multi_label_probabilities(predictor, data.texts), if
    already computed (otherwise they are computed a batch at a time, never all held)."""
    from lstm_cli.multilabel import decide, report, targets

    thresholds = predictor.thresholds if thresholds is None else thresholds
    known = set(predictor.labels)
    unknown = dict(Counter(label for row in data.labels for label in row if label not in known))
    if not any(label in known for row in data.labels for label in row):
        raise DataError(
            f"{data.path}: no row has a label the model knows (the model's: "
            f"{', '.join(map(repr, predictor.labels[:5]))}{', ...' if len(predictor.labels) > 5 else ''}); "
            "check --label-column, --label-separator and that this is the model's test data"
        )
    truth = targets(data.labels, predictor.labels)
    if probabilities is not None:
        chosen = decide(probabilities, thresholds)
    else:
        batch_size = max(1, min(batch_size, EVALUATE_CELLS // len(predictor.labels)))
        chosen = np.zeros(truth.shape, bool)
        start = 0
        for batch in batched(data.texts, batch_size, PREDICT_CHARS):
            chosen[start : start + len(batch)] = decide(predictor.probabilities(batch), thresholds)
            start += len(batch)
    result = report(truth, chosen, predictor.labels)
    given = np.broadcast_to(np.asarray(thresholds, np.float64), (len(predictor.labels),))
    result["thresholds"] = [round(float(t), 6) for t in given]  # 0.37, not float32's 0.3700000047683716
    unknown_rows = sum(any(label not in known for label in row) for row in data.labels)
    result["rows"] = {"read": len(data) + sum(data.skipped.values()), "evaluated": len(data),
                      "unknown_label": unknown_rows, "skipped": dict(data.skipped)}  # fmt: skip
    result["unknown_labels"] = unknown
    result["data"] = data.fingerprint()
    result["model"] = str(predictor.path)
    result["multi_label"] = True
    return result
