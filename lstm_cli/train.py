"""Training: vocabulary, bucketed batches, `model.fit` with early stopping, reported through callbacks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.batching import EncodedTexts, batch_count, epoch_batches
from lstm_cli.checkpoint import Checkpoint, read_state
from lstm_cli.config import TrainConfig, class_weights
from lstm_cli.data import LabeledData
from lstm_cli.devices import DevicePlan, plan_devices
from lstm_cli.errors import DataError
from lstm_cli.model import OOV_ID, PAD_ID, build_network, dtype_policy, keras, make_vectorizer, tf, token_ids
from lstm_cli.owned import check_checkpoint_dir
from lstm_cli.vectors import WordVectors, embedding_matrix, read_vectors

ENCODE_BATCH = 4096
STEPS_PER_EXECUTION = 4


@dataclass
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]  # loss, accuracy, val_loss, val_accuracy
    seconds: float


@dataclass
class TrainResult:
    network: Any  # keras.Model over token ids
    vectorizer: Any
    vocabulary: list[str]
    labels: list[str]
    config: TrainConfig
    history: list[dict[str, float]]
    epoch_seconds: list[float]  # wall time of each epoch, validation included
    best_epoch: int  # 1-based
    best_metrics: dict[str, float]
    train_rows: int
    validation_rows: int
    seconds: float
    device: DevicePlan
    parameters: int
    warnings: list[str] = field(default_factory=list)
    class_weights: dict[str, float] | None = None  # per label, when --class-weight was given
    vectors: dict[str, Any] | None = None  # file, sha256, dimension, coverage, frozen; when --vectors was given


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train indices, validation indices, warnings): `fraction` of every class held out, seeded.

    A class with a single row cannot be on both sides; it stays in training, with a warning."""
    rng = np.random.default_rng(seed)
    labels_arr = np.array(labels, dtype=object)
    train, validation, warnings = [], [], []
    for label in sorted(set(labels)):
        rows = rng.permutation(np.flatnonzero(labels_arr == label))
        if len(rows) < 2:
            warnings.append(f"class {label!r} has a single row: kept for training, absent from validation")
            train.extend(rows)
            continue
        held = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
        validation.extend(rows[:held])
        train.extend(rows[held:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(validation, dtype=np.int64)), warnings


def encode_texts(vectorizer, texts: list[str], max_length: int) -> EncodedTexts:
    """Token ids of every text, via the same `token_ids` the exported model uses."""
    encode = tf.function(lambda batch: token_ids(vectorizer, batch, max_length), reduce_retracing=True)
    values, lengths = [], []
    for start in range(0, len(texts), ENCODE_BATCH):
        ragged = encode(tf.constant(texts[start : start + ENCODE_BATCH], dtype=tf.string))
        values.append(ragged.flat_values.numpy())
        lengths.append(ragged.row_lengths().numpy())
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    splits = np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64)
    return EncodedTexts(np.concatenate(values).astype(np.int32), splits)


def build_vocabulary(texts: list[str], config: TrainConfig) -> tuple[Any, list[str], EncodedTexts]:
    """(vectorizer, vocabulary, the texts encoded): the most frequent tokens of `texts` seen at least
    `min_count` times, at most `max_tokens` entries with padding and OOV."""
    full = make_vectorizer(None)
    full.adapt(tf.data.Dataset.from_tensor_slices(texts).batch(ENCODE_BATCH))
    every = [str(t) for t in full.get_vocabulary()]  # padding, OOV, then by descending frequency
    encoded = encode_texts(full, texts, config.max_length)
    counts = np.bincount(encoded.values, minlength=len(every))
    kept = [i for i in range(2, len(every)) if counts[i] >= config.min_count][: config.max_tokens - 2]
    # Re-number the kept tokens 2, 3, ...; the others become OOV, as the final vectorizer will make them.
    new_id = np.full(len(every), OOV_ID, dtype=np.int32)
    new_id[PAD_ID] = PAD_ID
    new_id[kept] = np.arange(2, 2 + len(kept), dtype=np.int32)
    vocabulary = every[:2] + [every[i] for i in kept]
    return (
        make_vectorizer(config.max_tokens, vocabulary),
        vocabulary,
        EncodedTexts(new_id[encoded.values], encoded.row_splits),
    )


def _encode(vectorizer, texts: list[str], labels: list[str], index: dict[str, int], max_length: int):
    return encode_texts(vectorizer, texts, max_length), np.array([index[x] for x in labels], dtype=np.int32)


def _dataset(encoded: EncodedTexts, targets: np.ndarray, batch_size: int, seed: int | None, first_epoch: int):
    epochs = itertools.count(first_epoch)

    def batches():
        # A new generator per pass: each epoch gets its own (seed, epoch) shuffle.
        yield from epoch_batches(encoded, targets, batch_size, seed=seed, epoch=next(epochs))

    signature = (tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    # A known length lets Keras count steps (and not warn that the generator "ran out of data").
    count = batch_count(len(encoded), batch_size, shuffled=seed is not None)
    return dataset.apply(tf.data.experimental.assert_cardinality(count)).prefetch(2)


class _Reporter(keras.callbacks.Callback):
    def __init__(self, epochs: int, on_epoch: Callable[[EpochReport], None] | None, stop=None):
        super().__init__()
        self.epochs, self.on_epoch, self.history, self.seconds = epochs, on_epoch, [], []
        self.stop = stop

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items() if k in _REPORTED}
        self.history.append(metrics)
        self.seconds.append(round(time.perf_counter() - self.started, 3))
        if self.on_epoch:
            self.on_epoch(EpochReport(epoch + 1, self.epochs, metrics, self.seconds[-1]))
        if self.stop is not None and self.stop():
            self.model.stop_training = True  # early stopping still restores the best epoch's weights

    def on_train_batch_end(self, batch, logs=None):
        if self.stop is not None and self.stop():
            self.model.stop_training = True  # Keras ends the epoch here; it is still validated


_REPORTED = ("loss", "accuracy", "val_loss", "val_accuracy")


def _split(config: TrainConfig, data: LabeledData, validation: LabeledData | None, labels: list[str]):
    """(train texts, train labels, validation texts, validation labels, warnings)."""
    texts, label_list, warnings = data.texts, data.labels, []
    if validation is not None:
        unknown = sorted(set(validation.labels) - set(labels))
        if unknown:
            raise DataError(
                f"{validation.path}: validation labels not in the training data: {', '.join(map(repr, unknown[:5]))}"
            )
        train_texts, train_labels = texts, label_list
        val_texts, val_labels = validation.texts, validation.labels
    elif config.validation_split > 0:
        train_idx, val_idx, warnings = stratified_split(label_list, config.validation_split, config.seed)
        train_texts = [texts[i] for i in train_idx]
        train_labels = [label_list[i] for i in train_idx]
        val_texts = [texts[i] for i in val_idx]
        val_labels = [label_list[i] for i in val_idx]
    else:
        train_texts, train_labels, val_texts, val_labels = texts, label_list, [], []

    return train_texts, train_labels, val_texts, val_labels, warnings


def _class_weights(config: TrainConfig, labels: list[str], train_labels: list[str], path: str):
    """{label: weight} for --class-weight (None without it); a label the data lacks is an error."""
    if config.class_weight is None:
        return None
    if isinstance(config.class_weight, dict):
        unknown = sorted(set(config.class_weight) - set(labels))
        if unknown:
            raise DataError(
                f"--class-weight names labels not in {path}: {', '.join(map(repr, unknown[:5]))}; "
                f"the labels are {', '.join(map(repr, labels[:20]))}"
            )
    return dict(zip(labels, class_weights(config.class_weight, labels, Counter(train_labels)), strict=True))


def _pretrained(config: TrainConfig, vectors: WordVectors | None, vocabulary: list[str], train_enc):
    """(embedding matrix, vectors metadata) for --vectors, or (None, None)."""
    if config.vectors is None:
        return None, None
    vectors = vectors or read_vectors(Path(config.vectors), set(vocabulary[2:]))
    counts = np.bincount(train_enc.values, minlength=len(vocabulary))
    matrix, coverage = embedding_matrix(vectors, vocabulary, counts, seed=config.seed)
    described = {**vectors.describe(), "coverage": coverage.to_dict(), "summary": coverage.describe(),
                 "frozen": config.freeze_vectors, "malformed_lines": vectors.malformed}  # fmt: skip
    return matrix, described


def train(
    config: TrainConfig,
    data: LabeledData,
    *,
    validation: LabeledData | None = None,
    device: str = "auto",
    mixed_precision: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    vectors: WordVectors | None = None,
    stop: Callable[[], bool] | None = None,
    model_dir: Path | None = None,
) -> TrainResult:
    """Fit a classifier on `data`; validate on `validation` or on a stratified split of `data`.

    With `checkpoint_dir`, the state after every epoch is kept there; `resume` continues from it.
    `vectors`: the file of `config.vectors` already read (for words including the vocabulary's), to read it
    once for many runs. `stop()` is asked after every step; True ends training after validating the epoch so
    far (the best epoch's weights are kept). `model_dir` is where the model will be saved (the checkpoint
    directory may not be or contain it). Keras' global dtype policy is left as it was, whatever the plan's
    precision."""
    started = time.perf_counter()
    stage = on_stage or (lambda _: None)
    if checkpoint_dir is not None:
        check_checkpoint_dir(checkpoint_dir, model=model_dir)
    plan = plan_devices(config, requested=device, mixed_precision=mixed_precision)
    labels = sorted(set(data.labels))
    if len(labels) < 2:
        raise DataError(
            f"{data.path}: only one class ({labels[0]!r}) in the training data; a classifier needs at least two"
        )
    train_texts, train_labels, val_texts, val_labels, warnings = _split(config, data, validation, labels)
    keras.utils.set_random_seed(config.seed)

    stage("Building the vocabulary")
    vectorizer, vocabulary, train_enc = build_vocabulary(train_texts, config)
    index = {label: i for i, label in enumerate(labels)}
    train_y = np.array([index[x] for x in train_labels], dtype=np.int32)
    config = config.resolved(len(train_texts))
    weights = _class_weights(config, labels, train_labels, data.path)
    embeddings, vectors_meta = _pretrained(config, vectors, vocabulary, train_enc)
    if vectors_meta is not None:
        config = dataclasses.replace(config, embedding_dim=vectors_meta["dimension"])  # the file's width wins
        stage(f"Vectors from {vectors_meta['file']}, {vectors_meta['dimension']} dimensions: {vectors_meta['summary']}")
        if vectors_meta["malformed_lines"]:
            skipped = vectors_meta["malformed_lines"]
            warnings.append(f"{config.vectors}: skipped {skipped:,} malformed line{'s' if skipped > 1 else ''}")
    run = {
        "config": config.to_dict(),
        "data": data.sha256,
        "validation": validation.sha256 if validation is not None else None,
        "labels": labels,
        "vectors": vectors_meta["sha256"] if vectors_meta else None,
    }
    run = json.loads(json.dumps(run))  # as the checkpoint stores it: tuples (pooling) come back as lists
    resume_state = read_state(checkpoint_dir, run) if resume and checkpoint_dir is not None else None
    first_epoch = resume_state["epoch"] if resume_state else 0

    with plan.scope(), dtype_policy("mixed_float16" if plan.mixed_precision else "float32"):
        network = build_network(config, vocabulary_size=len(vocabulary), num_classes=len(labels),
                                embeddings=embeddings, trainable_embeddings=not config.freeze_vectors)  # fmt: skip
        network.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate, global_clipnorm=config.clip_norm or None),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            # No XLA: batches vary in length, and XLA compiles once per shape (measured: 141 s of
            # compiling in the first SST-2 epoch, no faster afterwards).
            jit_compile=False,
            # Several steps per call of the training function: less Python between steps (+4% at batch 512).
            steps_per_execution=STEPS_PER_EXECUTION,
        )
    train_ds = _dataset(train_enc, train_y, config.batch_size, config.seed, first_epoch)
    val_ds = None
    if val_texts:
        val_enc, val_y = _encode(vectorizer, val_texts, val_labels, index, config.max_length)
        val_ds = _dataset(val_enc, val_y, config.batch_size, None, 0).cache()

    monitor = "val_loss" if val_ds is not None else "loss"
    reporter = _Reporter(config.epochs, on_epoch, stop)
    stopper = keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience, restore_best_weights=True)
    callbacks = [reporter, stopper]
    if checkpoint_dir is not None:
        # After the stopper in the list: its epoch-end state is what gets saved.
        checkpoint = Checkpoint(checkpoint_dir, run, config.seed, stopper, reporter, resume_state, model=model_dir)
        callbacks.append(checkpoint)
    resuming = f", resuming after epoch {first_epoch}" if resume_state else ""
    stage(
        f"Training on {plan.describe()}: {len(train_texts):,} rows, {len(val_texts):,} for validation, "
        f"batch {config.batch_size}, learning rate {config.learning_rate:g}{resuming}"
    )
    if resume_state and (first_epoch >= config.epochs or resume_state.get("stopped")):
        callbacks[-1].restore_finished(network)  # training had ended; only saving was cut short
    else:
        network.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=first_epoch,
            callbacks=callbacks,
            # Index-keyed, applied to the training loss only: val_loss stays comparable across settings.
            class_weight={i: weights[label] for i, label in enumerate(labels)} if weights else None,
            verbose=0,
        )

    history = reporter.history
    best = int(np.argmin([h[monitor] for h in history]))
    return TrainResult(
        network=network,
        vectorizer=vectorizer,
        vocabulary=vocabulary,
        labels=labels,
        config=config,
        history=history,
        epoch_seconds=reporter.seconds,
        best_epoch=best + 1,
        best_metrics=history[best],
        train_rows=len(train_texts),
        validation_rows=len(val_texts),
        seconds=time.perf_counter() - started,
        device=plan,
        parameters=int(network.count_params()),
        warnings=warnings + plan.warnings,
        class_weights=weights,
        vectors=vectors_meta,
    )
