"""Training, top to bottom: devices, data, network, then one explicit loop of `tf.function` steps.

The loop is lstm-cli's own (Keras' `model.fit` fails under MultiWorkerMirroredStrategy, keras#20585): every
step runs under `strategy.run`, so one loop serves one CPU, one GPU, several GPUs and several machines.
What happens when is all in `train()`: the seed, the order of the batches (a function of (seed, pass)),
the dropout seeds (a function of (seed, epoch)), each step, validation, early stopping, the checkpoint and
the report, then the choice of the weights saved (the best epoch's, or a mean along the way). That is also
what makes `--resume` end bit-identical to an uninterrupted run on a CPU."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli import checkpoint as ckpt
from lstm_cli import watchdog
from lstm_cli.averaging import Choice, EpochWindows, choose
from lstm_cli.batching import EncodedTexts
from lstm_cli.cache import TokenCache
from lstm_cli.config import BIGRAM_HASH_SPACE, BIGRAM_MAX_ROWS, TrainConfig, class_weights
from lstm_cli.corpus import ValidationSplit, scan, validation_fraction
from lstm_cli.data import LabeledData, LabeledStream
from lstm_cli.devices import DevicePlan, plan_devices, read_cluster
from lstm_cli.encoder import Encoder, encoder_variables, load_into
from lstm_cli.engine.tokenizer import Tokenizer
from lstm_cli.errors import DataError, LstmCliError, UsageError
from lstm_cli.model import (
    OOV_ID,
    PAD_ID,
    bigram_counts,
    build_network,
    dtype_policy,
    kept_bigrams,
    keras,
    make_vectorizer,
    tf,
    token_ids,
)
from lstm_cli.optim import Adam, LazyAdam
from lstm_cli.owned import check_checkpoint_dir
from lstm_cli.parent import Parent, extend_bigrams, extend_labels, extend_vocabulary, inherit_weights, new_words
from lstm_cli.vectors import WordVectors, embedding_matrix, read_vectors

ENCODE_BATCH = 4096
LOG_EVERY = 50  # steps between the training-loss points written to TensorBoard


@dataclass
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    metrics: dict[str, float]  # loss, accuracy, val_loss, val_accuracy
    seconds: float
    steps: int = 0  # optimizer steps so far, all epochs


@dataclass
class StepReport:
    epoch: int  # 1-based
    step: int  # steps done in this epoch
    steps: int  # steps this epoch will take
    rows: int  # training rows seen this epoch
    loss: float  # running mean of this epoch's training loss
    seconds: float  # since the epoch began


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
    steps: int = 0  # optimizer steps taken
    averaging: Choice | None = None  # weight averaging's decision (None: off, or no validation rows)
    parent: dict[str, Any] | None = None  # with --from: the model continued and what was added (Parent.describe)
    pretrained: dict[str, Any] | None = None  # with --pretrained: the encoder started from (Encoder.describe)
    calibration: dict[str, Any] | None = None  # the temperature folded into the head (lstm_cli.calibration.fit)
    multi_label: dict[str, Any] | None = None  # a multi-label model's thresholds (multilabel.choose_thresholds)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the model (False on the other workers of a cluster)."""
        return self.device.is_chief


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
    full = make_vectorizer(None, standardize=config.standardization)
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
        make_vectorizer(config.max_tokens, vocabulary, standardize=config.standardization),
        vocabulary,
        EncodedTexts(new_id[encoded.values], encoded.row_splits),
    )


def _prepare(config, data, validation, cache_root: Path, stage, on_progress, parent: Parent | None,
             encoder: Encoder | None = None) -> _Prepared:  # fmt: skip
    """Read the data in passes that hold no more than one row at a time: (1) labels and the file's hash,
    (2) the training rows' tokens (the vocabulary), (3) every row encoded once into the on-disk token
    caches, unless they are already there (--resume, or a rerun after an interruption). With a `parent`
    (--from), its labels and vocabulary come first, keeping their indices, and the data's new ones follow."""
    # A multi-label model's rows are keyed by their label set (lstm_cli.multilabel): the split is stratified
    # by set, and the token cache holds a set's index; `labels` are then the labels the sets hold.
    label_counts: Counter[str] = Counter(label for _, label in data)
    stage(f"Read {sum(label_counts.values()):,} rows from {data.path}")
    classes = sorted(label_counts)
    labels = _labels_of(classes) if config.multi_label else classes
    if parent is not None:  # its labels keep their indices, the data's new ones follow
        labels = extend_labels(parent.labels, labels)
        if not config.multi_label:  # what the token cache's indices index (a multi-label model's: the sets)
            classes = labels
    if len(labels) < 2:
        raise DataError(
            f"{data.path}: only one {'label' if config.multi_label else 'class'} ({labels[0]!r}) in the training "
            "data; a classifier needs at least two"
        )
    fraction = validation_fraction(config.validation_split, label_counts.total()) if validation is None else 0.0
    if 0 < fraction < config.validation_split:
        stage(f"Validating on {fraction:.2%} of the rows: a split holds out at most about "
              f"{round(fraction * label_counts.total()):,} (--validation-data FILE validates on more)")  # fmt: skip

    def split():  # the same seeded decisions on every pass
        return ValidationSplit(dict(label_counts), fraction, config.seed)

    split().require_rows(data.path)

    def training_rows():
        held = split().held
        return ((text, label) for text, label in data if not held(label))

    stats = scan(training_rows(), max_length=config.max_length, standardize=config.standardization,
                 on_progress=on_progress)  # fmt: skip
    if encoder is not None:  # --pretrained: the encoder's tokenizer, word for word
        vocabulary = encoder.vocabulary
    elif parent is None:
        vocabulary = stats.vocabulary(config.max_tokens, config.min_count)
    else:
        vocabulary = extend_vocabulary(parent.vocabulary, stats.token_counts, min_count=config.min_count,
                                       max_tokens=config.max_tokens)  # fmt: skip
        words, added = len(vocabulary) - len(parent.vocabulary), labels[len(parent.labels) :]
        stage(f"Continuing {parent.path} (id {parent.id}): {len(parent.vocabulary):,} words and "
              f"{len(parent.labels)} labels, {words:,} new words and {len(added)} new labels added "
              f"({', '.join(map(repr, added[:5])) or 'none'}{', ...' if len(added) > 5 else ''})")  # fmt: skip
    if len(vocabulary) <= 2:  # the padding and out-of-vocabulary ids only
        raise DataError(
            f"{data.path}: no word occurs {config.min_count} times in the training rows, so the vocabulary is "
            "empty; lower --min-count (1 keeps every word) or add rows"
        )
    index = {label: i for i, label in enumerate(classes)}
    tokenizer = Tokenizer(vocabulary, max_length=config.max_length, standardize=config.standardization)
    # How the files are read is part of what the caches hold: the same bytes read with another --text-column
    # or --delimiter are other rows.
    reading = [getattr(d, "reading", lambda: None)() if d is not None else None for d in (data, validation)]
    identity = {"data": data.sha256, "validation": validation.sha256 if validation is not None else None,
                "reading": reading,
                "labels": labels, "vocabulary": len(vocabulary), "parent": parent.id if parent else None,
                "encoder": encoder.metadata["id"] if encoder else None,
                **{k: getattr(config, k)
                   for k in ("max_tokens", "min_count", "punctuation", "max_length", "validation_split",
                             "seed", "multi_label", "label_separator")}}  # fmt: skip

    def cache(name: str, rows: Callable[[], Iterator[tuple[str, str]]], expected: int, tokens: int | None = None):
        fingerprint = {**identity, "part": name}
        found = TokenCache.open(cache_root / name, fingerprint)
        if found is not None:
            return found
        stage(f"Encoding the {name} rows into {cache_root / name}")
        encoded = ((tokenizer.ids(text), index[label]) for text, label in rows())
        return TokenCache.build(cache_root / name, encoded, fingerprint=fingerprint, seed=config.seed,
                                expected_rows=expected, expected_tokens=tokens)  # fmt: skip

    # Shards sized by tokens too: a corpus of long documents gets more of them, each read whole in training.
    train_cache = cache("train", training_rows, stats.rows, sum(stats.token_counts.values()))
    val_cache, warnings = None, split().warnings
    if config.multi_label and len(warnings) > 1:  # one line, not one per rare combination of labels
        warnings = [f"{len(warnings):,} label sets have a single row: kept for training, absent from validation"]
    if validation is not None:
        given = Counter(label for _, label in validation)
        if not given:
            raise DataError(f"{validation.path}: no rows to validate on; give --validation-data a file with rows")
        if config.multi_label:  # sets unseen in training are fine, as long as each of their labels is known
            for key in sorted(set(given) - set(index)):
                index[key] = len(classes)
                classes.append(key)
        unknown = sorted(set(_labels_of(given) if config.multi_label else given) - set(labels))
        if unknown:
            where = "the training data" + (" or the model of --from" if parent else "")
            raise DataError(f"{validation.path}: validation labels not in {where}: {', '.join(map(repr, unknown[:5]))}")
        val_cache = cache("validation", lambda: iter(validation), _row_count(validation))
    elif fraction > 0:

        def held_rows():
            held = split().held
            return ((text, label) for text, label in data if held(label))

        val_cache = cache("validation", held_rows, sum(split().validation_counts.values()))
    # Occurrences of each vocabulary id in training, out-of-vocabulary tokens at id 1 (for --vectors' coverage).
    counts = np.array([0, 0] + [stats.token_counts.get(token, 0) for token in vocabulary[2:]], dtype=np.int64)
    counts[OOV_ID] = sum(stats.token_counts.values()) - counts.sum()
    left_out = new_words(parent.vocabulary, stats.token_counts, config.min_count) - words if parent else 0
    if left_out:
        warnings.append(
            f"{data.path}: {left_out:,} of its words seen at least {config.min_count} times are left out of the "
            f"vocabulary, full at --max-tokens {config.max_tokens:,}; give a larger --max-tokens to add them"
        )
    present = set(_labels_of(label_counts) if config.multi_label else label_counts)
    absent = [label for label in parent.labels if label not in present] if parent else []
    if absent:  # measured on Banking77: the old labels' accuracy fell from 0.93 to 0.002 (docs: --from)
        warnings.append(
            f"{data.path} has no rows of {len(absent)} of the labels of {parent.path} "
            f"({', '.join(map(repr, absent[:3]))}{', ...' if len(absent) > 3 else ''}): the model will forget "
            "them; add some of their rows to the data (see 'Forgetting' in the docs of train --from)"
        )
    return _Prepared(labels, vocabulary, train_cache, val_cache, counts, split().train_counts, warnings, classes)


def _labels_of(keys) -> list[str]:
    """The labels the label sets (keys of lstm_cli.multilabel.set_key) hold, sorted."""
    from lstm_cli.multilabel import key_labels

    return sorted({label for key in keys for label in key_labels(key)})


def _row_count(data: LabeledData | LabeledStream) -> int:
    return len(data) if isinstance(data, LabeledData) else int(data.rows or 0)


@dataclass
class _Prepared:
    labels: list[str]
    vocabulary: list[str]
    train: TokenCache
    validation: TokenCache | None
    token_counts: np.ndarray  # per vocabulary id, in the training rows
    train_label_counts: dict[str, int]
    warnings: list[str]
    classes: list[str]  # what the token caches' label indices index: the labels, or a multi-label model's sets


def _class_weights(config: TrainConfig, labels: list[str], train_counts: dict[str, int], path: str):
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
    present = [label for label in labels if train_counts.get(label)]  # --from: the parent's may have no rows
    weights = dict(zip(present, class_weights(config.class_weight, present, train_counts), strict=True))
    return {label: weights.get(label, 1.0) for label in labels}


def _pretrained(config: TrainConfig, vectors: WordVectors | None, vocabulary: list[str], counts: np.ndarray):
    """(embedding matrix, vectors metadata) for --vectors, or (None, None)."""
    if config.vectors is None:
        return None, None
    vectors = vectors or read_vectors(Path(config.vectors), set(vocabulary[2:]), config.standardization)
    matrix, coverage = embedding_matrix(vectors, vocabulary, counts, seed=config.seed)
    described = {**vectors.describe(), "coverage": coverage.to_dict(), "summary": coverage.describe(),
                 "frozen": config.freeze_vectors, "malformed_lines": vectors.malformed}  # fmt: skip
    return matrix, described


def _batch_stream(strategy, source, batch_size: int, seed: int, first_step: int):
    """Every replica's part of the global batches, from global step `first_step` on, pass after pass.

    Each input pipeline (one per worker) serves its own replicas' parts; the parts of one global batch
    are cut from the same seeded order on every worker, so the cluster takes the steps a single process
    would with the same global batch."""
    per_pass = source.batch_count(batch_size, shuffled=True)
    signature = (
        tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.float32),
        tf.TensorSpec([], tf.float32),
    )

    def pipeline(context: tf.distribute.InputContext):
        parts = context.num_replicas_in_sync
        local = parts // context.num_input_pipelines
        first_part = context.input_pipeline_id * local

        def generate():
            passes, start = divmod(first_step, per_pass)
            while True:  # the loop takes what it needs
                streams = [
                    source.batches(batch_size, seed=seed, epoch=passes, start=start, part=first_part + r, parts=parts)
                    for r in range(local)
                ]
                for pieces in zip(*streams, strict=True):
                    for piece in pieces:  # replicas take consecutive elements
                        yield piece.ids, piece.labels, piece.weights, np.float32(piece.global_rows)
                passes, start = passes + 1, 0

        # No autotuning: the pipeline has nothing to tune, and its optimisation thread, asleep for up to a
        # minute between rounds, made the iterator's release at the end of training wait for it (0-40 s).
        options = tf.data.Options()
        options.autotune.enabled = False
        return tf.data.Dataset.from_generator(generate, output_signature=signature).prefetch(2).with_options(options)

    return iter(strategy.distribute_datasets_from_function(pipeline))


def _make_train_step(strategy, network, optimizer, row_weights: np.ndarray, clip_norm: float, smoothing: float,
                     set_targets: np.ndarray | None = None):  # fmt: skip
    """One optimizer step on the next global batch: (loss, correct rows, tokens, rows), summed over replicas.

    Each replica's loss is its rows' weighted cross-entropy divided by the rows of the whole global batch,
    so the gradients the optimizer sums across replicas are those of the global batch's mean loss.
    `set_targets`: a multi-label model's 0/1 targets of each label set [sets, labels] (the batches' label
    indices are sets); its loss is the binary cross-entropy averaged over the labels, and a row is correct
    when every label is on the right side of 0.5."""
    replicas = strategy.num_replicas_in_sync
    weights_by_label = tf.constant(row_weights, tf.float32)
    multi = set_targets is not None
    targets_of_set = tf.constant(set_targets if multi else np.zeros((1, 1)), tf.float32)
    # Clipping is done here, not by the optimizer: Keras clips each replica's part before the replicas are
    # summed, and takes the norm of the embedding's gradient slices before repeated tokens are merged.

    def replica_step(ids, labels, weights, global_rows):
        with tf.GradientTape() as tape:
            probabilities = network(ids, training=True)
            if multi:  # label smoothing as Keras': targets pulled towards 0.5
                per_row = keras.losses.binary_crossentropy(tf.gather(targets_of_set, labels), probabilities,
                                                           label_smoothing=smoothing)  # fmt: skip
            else:
                per_row = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            if smoothing > 0 and not multi:  # (1 - e) * CE(label) + e * mean over labels of CE(that label)
                spread = -tf.reduce_mean(tf.math.log(tf.clip_by_value(probabilities, 1e-7, 1.0)), axis=-1)
                per_row = (1 - smoothing) * per_row + smoothing * spread
            weighted = per_row * weights * tf.gather(weights_by_label, labels)
            loss = tf.reduce_sum(weighted) / global_rows
            if network.losses:  # L2 penalties: counted once across the replicas
                loss += tf.add_n(network.losses) / replicas
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, network.trainable_variables)
        if clip_norm > 0:
            dense = [tf.convert_to_tensor(g) for g in gradients]  # the embedding's gradient comes as slices
            if replicas > 1:
                dense = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, dense)
            gradients, _ = tf.clip_by_global_norm(dense, clip_norm * _loss_scale(optimizer))
            gradients = [g / replicas for g in gradients]  # the optimizer sums the replicas' copies again
        optimizer.apply(gradients, network.trainable_variables)
        if multi:
            chosen = tf.cast(probabilities >= 0.5, tf.float32)
            right = tf.reduce_all(tf.equal(chosen, tf.gather(targets_of_set, labels)), axis=-1)
        else:
            right = tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), labels)
        correct = tf.reduce_sum(weights * tf.cast(right, tf.float32))
        tokens = tf.reduce_sum(tf.cast(ids != PAD_ID, tf.float32) * weights[:, None])
        return loss, correct, tokens, tf.reduce_sum(weights)

    @tf.function(reduce_retracing=True)
    def train_step(iterator):
        results = strategy.run(replica_step, args=next(iterator))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    return train_step


def _loss_scale(optimizer):
    return optimizer.dynamic_scale if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else 1.0


def _make_evaluate(network, source, batch_size: int, set_targets: np.ndarray | None = None):
    """Mean cross-entropy and accuracy of the network on every row of `source` (unweighted).

    Every worker evaluates the whole validation set on its own copy of the (identical) weights, so all
    take the same early-stopping decision without talking to each other. `set_targets`: as _make_train_step's
    (multi-label: binary cross-entropy, subset accuracy at 0.5, and micro-F1 at the best global threshold)."""
    from lstm_cli.multilabel import fit_thresholds, micro_f1

    probabilities_of = tf.function(lambda ids: network(ids, training=False), reduce_retracing=True)

    def evaluate() -> dict[str, float]:
        if set_targets is not None:
            probabilities, truth = validation_probabilities(probabilities_of, source, batch_size, set_targets)
            clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)  # as Keras' cross-entropy
            loss = -(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped)).mean(axis=1)
            chosen = probabilities >= 0.5
            fitted = fit_thresholds(probabilities, truth)["global"]
            return {"val_loss": float(loss.mean()), "val_accuracy": float((chosen == (truth > 0)).all(axis=1).mean()),
                    "val_micro_f1": micro_f1(probabilities, truth, fitted)}  # fmt: skip
        loss, correct, rows = 0.0, 0, 0
        for batch in source.batches(batch_size, seed=None, epoch=0):
            probabilities = probabilities_of(tf.constant(batch.ids)).numpy()
            picked = probabilities[np.arange(len(batch.labels)), batch.labels].astype(np.float64)
            loss += float(-np.log(np.clip(picked, 1e-7, 1.0)).sum())  # clipped as Keras' cross-entropy is
            correct += int((probabilities.argmax(axis=1) == batch.labels).sum())
            rows += len(batch.labels)
        return {"val_loss": loss / rows, "val_accuracy": correct / rows}

    return evaluate


def _calibrate(config: TrainConfig, network, source, batch_size: int) -> dict[str, Any]:
    """Fit the temperature on the validation rows (`source`) and fold it into `network`'s head, in place;
    returns the metadata "calibration" section (lstm_cli.calibration)."""
    from lstm_cli import calibration

    if not config.calibrate:
        return calibration.skipped("--no-calibrate", validation_rows=source.rows if source is not None else 0)
    if not calibration.is_softmax_head(network):
        return calibration.skipped("the head is not a softmax over the labels")
    if source is None:
        return calibration.skipped("no validation rows (--validation-split 0): nothing to fit a temperature on")
    # The head's inputs in float32 through the network, then its logits in float64: no probability rounded
    # to 0 or 1 before the fit (taking logs of the softmax would lose those rows).
    head = network.get_layer(calibration.HEAD)
    features = keras.Model(network.inputs, head.input)
    features_of = tf.function(lambda ids: features(ids, training=False), reduce_retracing=True)
    kernel, bias = (np.asarray(w, np.float64) for w in head.get_weights())
    logits, labels = [], []
    for batch in source.batches(batch_size, seed=None, epoch=0):
        logits.append(np.asarray(features_of(tf.constant(batch.ids)), np.float64) @ kernel + bias)
        labels.append(np.asarray(batch.labels, np.int64))
    fitted = calibration.fit(np.concatenate(logits), np.concatenate(labels))
    if fitted["temperature"] != 1.0:
        calibration.fold(network, fitted["temperature"])
    return fitted


def validation_probabilities(probabilities_of, source, batch_size: int, set_targets: np.ndarray):
    """(probabilities, 0/1 targets), each [rows, labels], of a multi-label model on every row of `source`."""
    outputs, truth = [], []
    for batch in source.batches(batch_size, seed=None, epoch=0):
        outputs.append(probabilities_of(tf.constant(batch.ids)).numpy())
        truth.append(set_targets[batch.labels])
    return np.concatenate(outputs), np.concatenate(truth)


def _summaries(directory: Path | None, plan: DevicePlan):
    """TensorBoard's writer for --tensorboard (the chief's only), or None."""
    if directory is None or not plan.is_chief:
        return None
    return tf.summary.create_file_writer(str(directory))


def train(
    config: TrainConfig,
    data: LabeledData,
    *,
    validation: LabeledData | None = None,
    device: str = "auto",
    mixed_precision: bool = False,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    vectors: WordVectors | None = None,
    stop: Callable[[], bool] | None = None,
    model_dir: Path | None = None,
    tensorboard: Path | None = None,
    worker_timeout: float = 300.0,
    on_progress: Callable[[int], None] | None = None,
    strategy: Any = None,
    parent: Parent | None = None,
    encoder: Encoder | None = None,
) -> TrainResult:
    """Fit a classifier on `data`; validate on `validation` or on a stratified split of `data`.

    With `checkpoint_dir`, the state after every epoch is kept there; `resume` continues from it.
    `vectors`: the file of `config.vectors` already read (for words including the vocabulary's), to read it
    once for many runs. `stop()` is asked after every step; True ends training after validating the epoch so
    far (the best epoch's weights are kept). `model_dir` is where the model will be saved (the checkpoint
    directory may not be or contain it). `tensorboard`: a directory for TensorBoard's event files.
    `strategy`: a tf.distribute strategy to train under instead of the planned one (e.g. MirroredStrategy
    over logical CPU devices). `on_progress(rows)`: rows read so far while the vocabulary is counted.
    `worker_timeout`: in a cluster, the longest wait for the other workers (at start-up and at any step)
    before this process gives up (enforced by the supervisor `lstm-cli train` runs cluster workers under).
    `parent` (lstm_cli.parent.read_parent, --from): continue that model; `config` is then its child's
    (lstm_cli.parent.child_config). `encoder` (lstm_cli.encoder.read_encoder, --pretrained): start the
    embedding and LSTM from it; `config` is then lstm_cli.encoder.classifier_config's.
    Keras' global dtype policy is left as it was, whatever the plan's precision."""
    started = time.perf_counter()
    stage = on_stage or (lambda _: None)
    if checkpoint_dir is not None:
        check_checkpoint_dir(checkpoint_dir, model=model_dir)
    if tensorboard is not None:
        _check_tensorboard_dir(tensorboard)

    # 1. Where to train: CPU, GPU(s), or one worker of a cluster (TF_CONFIG), whose waits are bounded.
    try:
        cluster = read_cluster()
    except ValueError as e:
        raise UsageError(str(e)) from None
    guard = watchdog.for_this_process(worker_timeout) if cluster is not None else watchdog.Unbounded()
    if cluster is not None:
        stage(f"Waiting for the {cluster.workers - 1} other worker(s) of TF_CONFIG (this is {cluster.task})")
    with guard.waiting(f"{cluster.task if cluster else ''}: no word from the other workers of TF_CONFIG"):
        plan = plan_devices(config, requested=device, mixed_precision=mixed_precision)
    if strategy is not None:
        plan._strategy = strategy
    strategy = plan.strategy_object

    # 2. The data, streamed: labels, a stratified seeded validation split, the vocabulary of the training
    #    rows, and every row encoded once into token caches on disk (in the checkpoint directory, so
    #    --resume reuses them); memory does not grow with the file.
    stage("Reading the data: labels, vocabulary, token cache")
    with contextlib.ExitStack() as cleanup:
        if checkpoint_dir is not None:
            ckpt.prepare(checkpoint_dir)
            cache_root = checkpoint_dir / "cache"
        else:
            cache_root = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="lstm-cli-cache-")))
        prepared = _prepare(config, data, validation, cache_root, stage, on_progress, parent, encoder)
        return _train(config, data, validation, prepared, plan, strategy, guard, cluster, started, stage,
                      on_epoch, on_step, checkpoint_dir, resume, vectors, stop, model_dir, tensorboard,
                      parent, encoder)  # fmt: skip


def _train(config, data, validation, prepared, plan, strategy, guard, cluster, started, stage, on_epoch,
           on_step, checkpoint_dir, resume, vectors, stop, model_dir, tensorboard, parent,
           encoder=None) -> TrainResult:  # fmt: skip
    labels, vocabulary, warnings = prepared.labels, prepared.vocabulary, list(prepared.warnings)
    train_source, val_source = prepared.train, prepared.validation
    vectorizer = make_vectorizer(config.max_tokens, vocabulary, standardize=config.standardization)
    # The automatic bigram min count depends on how many distinct bigrams the training rows hold: counted
    # here once, in the hash space that min count uses, and reused below for the buckets that get a row.
    bigram_counted = None
    if config.bigram_min_count is None and config.bigram_buckets is None:
        bigram_counted = bigram_counts(train_source.texts(), BIGRAM_HASH_SPACE)
    distinct_bigrams = 0 if bigram_counted is None else int(np.count_nonzero(bigram_counted))
    config = config.resolved(train_source.rows, train_source.tokens, distinct_bigrams)
    weights = _class_weights(config, labels, prepared.train_label_counts, data.path)
    embeddings, vectors_meta = _pretrained(config, vectors, vocabulary, prepared.token_counts)
    if vectors_meta is not None:
        config = dataclasses.replace(config, embedding_dim=vectors_meta["dimension"])  # the file's width wins
        stage(f"Vectors from {vectors_meta['file']}, {vectors_meta['dimension']} dimensions: {vectors_meta['summary']}")
        if vectors_meta["malformed_lines"]:
            skipped = vectors_meta["malformed_lines"]
            warnings.append(f"{config.vectors}: skipped {skipped:,} malformed line{'s' if skipped > 1 else ''}")

    # 3. What one epoch is: a pass over the data, or --steps-per-epoch steps; --max-steps caps the whole run.
    steps_per_pass = train_source.batch_count(config.batch_size, shuffled=True)
    steps_per_epoch = config.steps_per_epoch or steps_per_pass
    total_steps = min(config.epochs * steps_per_epoch, config.max_steps or math.inf)
    epochs = math.ceil(total_steps / steps_per_epoch)

    # 4. The run's identity (a checkpoint of another run is refused) and where it left off.
    run = {
        # Calibration comes after the loop (step 8): a checkpoint serves a run with or without it.
        "config": {k: v for k, v in config.to_dict().items() if k != "calibrate"},
        "data": data.sha256,
        "validation": validation.sha256 if validation is not None else None,
        "labels": labels,
        "vectors": vectors_meta["sha256"] if vectors_meta else None,
        "workers": plan.cluster.workers if plan.cluster else 1,
        "parent": parent.id if parent else None,
        "encoder": encoder.metadata["id"] if encoder else None,
    }
    run = json.loads(json.dumps(run))  # as the checkpoint stores it: tuples (pooling) come back as lists
    state = ckpt.read_state(checkpoint_dir, run) if resume and checkpoint_dir is not None else None

    # 5. The network and its optimizer, made under the strategy (variables mirrored on every replica). The
    #    bigrams that get an embedding row: those of the training rows seen --bigram-min-count times.
    bigrams = None
    if config.bigram_buckets and config.bigram_min_count:
        if bigram_counted is None:
            bigram_counted = bigram_counts(train_source.texts(), config.bigram_buckets)
        if parent is None:
            bigrams = kept_bigrams(bigram_counted, config.bigram_min_count)
        else:  # the parent's buckets keep their rows; NEW's frequent ones join them
            bigrams = extend_bigrams(parent.bigrams, bigram_counted, min_count=config.bigram_min_count,
                                     max_rows=BIGRAM_MAX_ROWS)  # fmt: skip
        why = (f" (automatic: the training rows hold {distinct_bigrams:,} distinct bigrams; --bigram-min-count 0 "
               "gives every one a row)" if distinct_bigrams else "")  # fmt: skip
        stage(f"Bigrams: {len(bigrams) - 1:,} hash buckets seen at least {config.bigram_min_count} times get an "
              f"embedding row; the rest are left out{why}")  # fmt: skip
    bigram_counted = None  # a count per bucket of the hash space (64 MiB): not kept through training
    keras.utils.set_random_seed(config.seed)
    with strategy.scope(), dtype_policy("mixed_float16" if plan.mixed_precision else "float32"):
        network = build_network(config, vocabulary_size=len(vocabulary), num_classes=len(labels),
                                embeddings=embeddings, trainable_embeddings=not config.freeze_vectors,
                                bigrams=bigrams)  # fmt: skip
        if parent is not None:  # its weights, grown for the new words, bigrams and labels
            inherit_weights(network, parent, bigrams=bigrams)
        if encoder is not None:  # the language model's embedding and LSTM
            load_into(network, encoder)
        adam = LazyAdam if config.optimizer == "lazy-adam" else Adam
        optimizer = inner = adam(config.learning_rate)  # clipping: in the train step
        if plan.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(network.trainable_variables)
        encoder_rate = None  # --pretrained: the encoder's layers' share of the learning rate, set every epoch
        if encoder is not None:
            encoder_rate = tf.Variable(1.0, trainable=False, name="encoder_rate")
            inner.scale_rate(encoder_variables(network), encoder_rate)
    row_weights = np.array([weights[label] for label in labels] if weights else [1.0] * len(prepared.classes))
    set_targets = None
    if config.multi_label:
        from lstm_cli.multilabel import set_targets as targets_of

        set_targets = targets_of(prepared.classes, labels)
    train_step = _make_train_step(strategy, network, optimizer, row_weights, config.clip_norm, config.label_smoothing,
                                  set_targets)  # fmt: skip
    evaluate = _make_evaluate(network, val_source, config.batch_size, set_targets) if val_source is not None else None
    monitor = "val_loss" if evaluate is not None else "loss"
    # What early stopping (and weight averaging) minimise: the loss; for a multi-label model with validation
    # rows, minus the micro-F1 at the best threshold (the loss, dominated by the many easy "no"s, bottomed out
    # epochs before the labels did on GoEmotions)
    objective = (lambda m: -m["val_micro_f1"]) if set_targets is not None and evaluate is not None else None
    watched = objective or (lambda m: m[monitor])

    history: list[dict[str, float]] = []
    epoch_seconds: list[float] = []
    best = {"value": math.inf, "epoch": 0, "weights": None, "wait": 0}  # early stopping's memory
    path = EpochWindows() if config.weight_averaging and evaluate is not None else None  # weight averaging's epochs
    first_epoch, stopped = 0, False
    if state is not None:
        best["weights"] = ckpt.restore(checkpoint_dir, network, optimizer)
        path = ckpt.restore_average(checkpoint_dir, state) if path is not None else None
        history, epoch_seconds = state["history"], state["epoch_seconds"]
        best.update(value=state["early_stopping"]["best"], epoch=state["early_stopping"]["best_epoch"],
                    wait=state["early_stopping"]["wait"])  # fmt: skip
        first_epoch, stopped = state["epoch"], state["stopped"]
    if cluster is not None and resume:  # all workers resume at one epoch, or their steps would not pair up
        with guard.waiting(f"{cluster.task}: resuming, waited for the other workers' checkpoints"):
            _check_same_epoch(strategy, cluster, first_epoch)
    resuming = f", resuming after epoch {first_epoch}" if state else ""
    stage(
        f"Training on {plan.describe()}: {train_source.rows:,} rows, {val_source.rows if val_source else 0:,} "
        f"for validation, batch {config.batch_size}, {steps_per_epoch:,} steps an epoch, "
        f"learning rate {config.learning_rate:g}{resuming}"
    )
    writer = _summaries(tensorboard, plan)
    batches = _batch_stream(strategy, train_source, config.batch_size, config.seed, first_epoch * steps_per_epoch)

    # 6. The loop: steps, then validation, early stopping, a checkpoint and a report, epoch after epoch.
    step = first_epoch * steps_per_epoch
    for epoch in range(first_epoch, epochs):
        if stopped:
            break
        epoch_started = time.perf_counter()
        ckpt.reseed(network, config.seed, epoch)  # dropout noise depends on (seed, epoch) only
        if encoder_rate is not None:  # the encoder's layers: frozen for the first epochs, then slower
            encoder_rate.assign(0.0 if epoch < config.frozen_epochs else config.pretrained_rate)
        steps = min(steps_per_epoch, total_steps - step)
        loss_sum, correct, rows, tokens = 0.0, 0.0, 0, 0.0
        for i in range(steps):
            with guard.waiting(f"{cluster.task if cluster else ''}: step {step + 1} waited for the other workers"):
                loss, right, real_tokens, real_rows = _run_step(train_step, batches, cluster, step)
            step += 1
            _stop_if_diverged({"loss": loss}, config, epoch, step)
            loss_sum, correct, tokens, rows = (
                loss_sum + loss,
                correct + right,
                tokens + real_tokens,
                rows + int(real_rows),
            )
            if on_step is not None:
                seconds = time.perf_counter() - epoch_started
                on_step(StepReport(epoch + 1, i + 1, steps, rows, loss_sum / (i + 1), seconds))
            if writer is not None and step % LOG_EVERY == 0:
                _scalars(writer, step, {"batch/loss": loss})
            if stop is not None and stop():
                stopped = True  # this epoch is still validated; the best epoch's weights are kept
                break
        metrics = {"loss": loss_sum / max(i + 1, 1) if steps else math.nan, "accuracy": correct / max(rows, 1),
                   "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate))}  # fmt: skip
        if evaluate is not None:
            metrics.update(evaluate())
            _stop_if_diverged(metrics, config, epoch, step)
        seconds = round(time.perf_counter() - epoch_started, 3)
        history.append(metrics)
        epoch_seconds.append(seconds)

        # Early stopping on val_loss (loss without validation data); the best epoch's weights are kept, and
        # weight averaging keeps those around the best epoch.
        improved = watched(metrics) < best["value"]
        epoch_weights = network.get_weights() if improved or path is not None else None
        if improved:
            best.update(value=watched(metrics), epoch=epoch, weights=epoch_weights, wait=0)
        else:
            best["wait"] += 1
            stopped = stopped or best["wait"] > config.patience
            if config.plateau_factor < 1 and not stopped:  # a plateau: smaller steps from here on
                optimizer.learning_rate.assign(optimizer.learning_rate * config.plateau_factor)
        if path is not None:
            path.add(epoch_weights, best=improved)
        if checkpoint_dir is not None:
            ckpt.save(checkpoint_dir, run=run, epoch=epoch + 1, stopped=stopped, history=history,
                      epoch_seconds=epoch_seconds, early_stopping={k: best[k] for k in ("value", "epoch", "wait")},
                      network=network, optimizer=optimizer, best_weights=best["weights"], average=path,
                      model_dir=model_dir)  # fmt: skip
        if writer is not None:
            _write_epoch(writer, step, metrics, tokens, rows, seconds)
        if on_epoch:
            on_epoch(EpochReport(epoch + 1, epochs, metrics, seconds, step))
    if writer is not None:
        writer.close()

    # 7. The weights saved: the best epoch's, or the mean of a few epochs around it when that mean has the
    #    lower validation loss (lstm_cli.averaging).
    averaging = None
    if path is not None and best["weights"] is not None:

        def validate(averaged: list[np.ndarray]) -> dict[str, float]:
            network.set_weights(averaged)
            return evaluate()

        averaging = choose(best["value"], path.candidates(), validate, *([objective] if objective else []))
        if averaging.window is not None:
            first, last = averaging.window
            what = "micro-F1" if objective else "loss"
            sign = -1 if objective else 1
            stage(f"Weights: the mean of epochs {first}-{last}, validation {what} {sign * averaging.val_loss:.4f} "
                  f"(epoch {best['epoch'] + 1} alone: {sign * best['value']:.4f})")  # fmt: skip
    if best["weights"] is not None:
        network.set_weights(best["weights"] if averaging is None or averaging.weights is None else averaging.weights)

    # 8. Calibration: one temperature fitted on the validation rows and folded into the softmax head, so
    #    every consumer of these weights gives calibrated probabilities (lstm_cli.calibration). The
    #    checkpoints keep the raw weights: --resume fits it again, to the same value.
    calibration = _calibrate(config, network, val_source, config.batch_size)
    if calibration["method"] == "temperature":
        ece = calibration["validation_ece"]
        stage(f"Calibration: temperature {calibration['temperature']:.3f} fitted on {val_source.rows:,} validation "
              f"rows (expected calibration error {ece['before']:.4f} -> {ece['after']:.4f})")  # fmt: skip

    # 9. A multi-label model's decision thresholds, chosen on the validation rows (lstm_cli.multilabel).
    multi_label = None
    if config.multi_label:
        from lstm_cli.multilabel import choose_thresholds

        probabilities, truth = np.zeros((0, len(labels)), np.float32), np.zeros((0, len(labels)), np.float32)
        if val_source is not None:
            probabilities_of = tf.function(lambda ids: network(ids, training=False), reduce_retracing=True)
            probabilities, truth = validation_probabilities(probabilities_of, val_source, config.batch_size,
                                                            set_targets)  # fmt: skip
        multi_label = {"separator": config.label_separator, **choose_thresholds(probabilities, truth, config.seed)}
        stage(_describe_thresholds(multi_label))

    best_index = int(np.argmin([watched(h) for h in history]))
    return TrainResult(
        network=network,
        vectorizer=vectorizer,
        vocabulary=vocabulary,
        labels=labels,
        config=config,
        history=history,
        epoch_seconds=epoch_seconds,
        best_epoch=best_index + 1,
        # The saved weights' validation metrics: a mean's, when averaging chose one.
        best_metrics={**history[best_index], **(averaging.metrics if averaging else {})},
        train_rows=train_source.rows,
        validation_rows=val_source.rows if val_source else 0,
        seconds=time.perf_counter() - started,
        device=plan,
        parameters=int(network.count_params()),
        warnings=warnings + plan.warnings,
        class_weights=weights,
        vectors=vectors_meta,
        steps=step,
        averaging=averaging,
        parent=parent.describe(vocabulary, labels) if parent else None,
        pretrained=encoder.describe() if encoder else None,
        calibration=calibration,
        multi_label=multi_label,
    )


def _describe_thresholds(chosen: dict[str, Any]) -> str:
    if chosen["mode"] == "default":
        return f"Thresholds: {chosen['reason']}"
    cross = chosen["cross_validated_micro_f1"]
    if chosen["mode"] == "global":
        what = f"one for every label, {chosen['thresholds'][0]:g}"
    else:
        what = f"one per label, {min(chosen['thresholds']):g} to {max(chosen['thresholds']):g}"
    return (f"Thresholds: {what} (validation micro-F1 {chosen['validation_micro_f1']:.4f}; cross-validated on the "
            f"validation rows: global {cross['global']:.4f}, per label {cross['per_label']:.4f})")  # fmt: skip


def _check_tensorboard_dir(path: Path) -> None:
    """Make the --tensorboard directory now (TensorFlow would, once the data is read), or say why it cannot be."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "a file is there" if Path(path).is_file() else e.strerror or str(e)
        raise UsageError(f"{path}: cannot make the --tensorboard directory ({reason}); give a folder path") from None


def _check_same_epoch(strategy, cluster, epoch: int) -> None:
    """Fail on every worker unless all resume from the same epoch: the sums over the replicas of 1, epoch and
    epoch squared tell every worker alike whether the epochs differ (their variance is 0 or not)."""
    moments = tf.constant([1.0, epoch, epoch * epoch], tf.float32)  # exact below 2**12 epochs

    @tf.function
    def summed():
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(moments)), axis=None)

    try:
        n, total, squares = (float(x) for x in summed().numpy())
    except tf.errors.OpError as e:
        raise LstmCliError(f"{cluster.task}: lost the other workers while resuming ({type(e).__name__})") from None
    if n * squares != total * total:
        raise LstmCliError(
            f"{cluster.task}: the workers' checkpoints end at different epochs (this one after epoch {epoch}, the "
            f"mean {total / n:g}; a worker stopped while saving?); drop --resume on every worker to start afresh"
        )


def _stop_if_diverged(metrics: dict[str, float], config: TrainConfig, epoch: int, step: int) -> None:
    """Stop with an error (the saved model, if any, stays as it was) once a loss is NaN or infinite: no later
    step can recover, and a model of NaN weights predicts NaN for every text."""
    for name in ("loss", "val_loss"):
        value = metrics.get(name, 0.0)
        if not math.isfinite(value):
            raise LstmCliError(
                f"training diverged: {name} became {value} in epoch {epoch + 1} (step {step}); the previous model, "
                f"if any, is unchanged. Lower --learning-rate (it was {config.learning_rate:g}) or clip gradients "
                "with --clip-norm 1"
            )


def _run_step(train_step, batches, cluster, step: int) -> list[float]:
    if cluster is None:
        return [float(x) for x in train_step(batches)]
    try:
        return [float(x) for x in train_step(batches)]
    except tf.errors.OpError as e:  # a peer that died: the collective fails (or hangs: see the watchdog)
        raise LstmCliError(
            f"{cluster.task}: lost the other workers at step {step + 1} ({type(e).__name__}); restart every worker "
            "with --resume to continue from the last finished epoch"
        ) from None


def _write_epoch(writer, step: int, metrics: dict[str, float], tokens: float, rows: int, seconds: float):
    rates = {
        "epoch/tokens_per_second": tokens / max(seconds, 1e-9),
        "epoch/rows_per_second": rows / max(seconds, 1e-9),
    }
    _scalars(writer, step, {**{f"epoch/{name}": value for name, value in metrics.items()}, **rates})


def _scalars(writer, step: int, values: dict[str, float]) -> None:
    """TensorBoard scalars through TensorFlow's own summary ops: `tf.summary.scalar` lives in the
    tensorboard package, which lstm-cli does not need; this writes the same records (plugin "scalars")."""
    metadata = tf.compat.v1.SummaryMetadata(plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
    with writer.as_default(step=step):
        for tag, value in values.items():
            tf.summary.write(tag, tf.constant(value, tf.float32), metadata=metadata.SerializeToString())
    writer.flush()
