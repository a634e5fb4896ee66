"""Continuing training from a model (`train NEW.csv --from MODEL`): the parent's tokenizer, labels and weights,
grown for what NEW brings.

- Words: the parent's vocabulary keeps every id; the words of NEW's training rows seen --min-count times and
  not in it are appended (most frequent first) up to --max-tokens entries in all (`extend_vocabulary`).
  Their embedding rows start at the mean of the parent's word rows plus a fresh layer's small random row.
- Labels: the parent's keep their indices; labels new in NEW are appended (sorted) as new outputs of the
  head: fresh kernel columns, a bias at the mean of the parent's. A multi-label parent's NEW is read as
  multi-label (its --label-separator unless given) and its sigmoid head grows the same way; the decision
  thresholds are chosen again on the validation rows, as for any multi-label model.
- Everything else (recurrent layers, Dense, bigram rows) starts at the parent's values (`inherit_weights`).
- Options: those that shape the tokenizer or the weights are the parent's; giving another value is refused
  (`child_config`). The other options not given on the command line are the parent's too, except the batch
  size and learning rate, which are worked out again for NEW's size unless given.

The optimizer starts afresh (Adam's moments are not kept in a model directory); `--resume` is the other
thing: finishing one interrupted run, same data and options, optimizer state and all."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.config import TrainConfig
from lstm_cli.errors import ArtifactError, UsageError

# The fields that shape the tokenizer or the network's weights: a child has its parent's.
FIXED = (
    "punctuation", "max_length", "recurrent_length", "embedding_dim", "units", "layers", "cell", "bidirectional",
    "pooling", "embedding_pooling", "bigram_buckets", "bigram_dim", "bigram_min_count", "dense_units",
    "multi_label",  # the head's activation and loss (a field of TrainConfig with train --multi-label)
)  # fmt: skip
# Worked out again from NEW unless given (TrainConfig.resolved): the parent's values fit the parent's data.
REDONE = ("batch_size", "learning_rate")
# Layers whose weights grow with the vocabulary, the bigram buckets kept, and the labels (model.build_network).
EMBEDDING, BIGRAMS, BIGRAM_VOCABULARY, HEAD = "embedding", "bigram_embedding", "bigram_vocabulary", "probabilities"


@dataclasses.dataclass
class Parent:
    """A model directory read whole for continuing its training (`read_parent`)."""

    path: Path  # absolute
    metadata: dict[str, Any]
    metadata_sha256: str  # of its metadata.json, which holds the sha256 of every other file
    config: TrainConfig
    labels: list[str]
    vocabulary: list[str]
    weights: dict[str, np.ndarray]  # by Keras variable path ("embedding/embeddings", ...)

    @property
    def id(self) -> str:
        return self.metadata["id"]

    @property
    def bigrams(self) -> np.ndarray | None:
        """The bigram buckets that have a row (with a bigram min count), as model.kept_bigrams gives them."""
        kept = self.weights.get(f"{BIGRAM_VOCABULARY}/kept")
        return None if kept is None else np.asarray(kept, dtype=np.int32)

    def describe(self, vocabulary: list[str], labels: list[str]) -> dict[str, Any]:
        """The "parent" section of the child's metadata: which model it continues, and what it added."""
        earlier = self.metadata.get("parent")
        lineage = earlier.get("lineage") if isinstance(earlier, dict) else None  # metadata is data: checked
        lineage = [x for x in lineage if isinstance(x, str)] if isinstance(lineage, list) else []
        return {
            "id": self.id,
            "path": str(self.path),
            "metadata_sha256": self.metadata_sha256,
            "created_at": self.metadata.get("created_at"),
            "lineage": [*lineage, self.id],  # the oldest ancestor first, this parent last
            "vocabulary_size": len(self.vocabulary),
            "words_added": len(vocabulary) - len(self.vocabulary),
            "labels_added": labels[len(self.labels) :],
        }


def read_parent(model_dir: Path) -> Parent:
    """The model at `model_dir` with its weights; a directory that is not a usable model is a UsageError
    (the option names it), as is a model --from cannot grow."""
    from lstm_cli.artifact import METADATA, read_metadata, read_model

    try:
        metadata = read_metadata(model_dir)
        files = read_model(model_dir, metadata)
        weights = parent_weights(model_dir, metadata, files)
        with (model_dir / METADATA).open("rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        config = TrainConfig.from_dict(metadata["config"])
    except (ArtifactError, ValueError) as e:
        raise UsageError(f"--from {model_dir}: {_reason(e, model_dir)}") from None
    except OSError as e:
        raise UsageError(f"--from {model_dir}: cannot read it ({e.strerror or e})") from None
    return Parent(Path(os.path.abspath(model_dir)), metadata, digest, config, list(metadata["labels"]),
                  files.vocabulary, weights)  # fmt: skip


def _reason(error: Exception, model_dir: Path) -> str:
    message = str(error)
    return message[len(str(model_dir)) + 2 :] if message.startswith(f"{model_dir}: ") else message


def parent_weights(model_dir: Path, metadata: dict[str, Any], files) -> dict[str, np.ndarray]:
    """The network's weights by Keras variable path, as training left them: the engine's arrays, which
    artifact.save writes from the trained network itself (the one place to change if the layout changes),
    with the softmax head's raw logits back (`raw_head`)."""
    if files.weights is None:
        raise ArtifactError(f"{model_dir}: saved by an lstm-cli without the numpy engine's files; train it again")
    return raw_head({name: np.asarray(value) for name, value in files.weights.items()}, metadata)


def raw_head(weights: dict[str, np.ndarray], metadata: dict[str, Any]) -> dict[str, np.ndarray]:
    """The weights with the head as training left it: a calibrated model's head was divided by the temperature
    its metadata records ("calibration.temperature", folded in at save time); training goes on from the raw
    logits, and the continued model gets a temperature of its own."""
    section = metadata.get("calibration")
    temperature = section.get("temperature") if isinstance(section, dict) else None
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or temperature in (0, 1):
        return weights
    scale = np.float32(temperature)
    return {name: value * scale if name.startswith(f"{HEAD}/") else value for name, value in weights.items()}


def child_config(parent: TrainConfig, given: Mapping[str, Any], *, vocabulary_size: int) -> TrainConfig:
    """The configuration of a model continuing `parent`: the options `given` on the command line, the
    parent's for the rest (batch size and learning rate: automatic again). A given option that would change
    the tokenizer or the weights' shapes, or a --max-tokens below the parent's vocabulary, is a UsageError."""
    given = dict(given)
    if given.get("multi_label") and not parent.multi_label:
        raise UsageError(
            "--multi-label: the model of --from is single-label, and continuing keeps its head, a softmax whose "
            "scores are shares of one total, not each label's own probability; drop --multi-label, or train a "
            "new multi-label model without --from"
        )
    if "label_separator" in given and not parent.multi_label:
        raise UsageError(
            "--label-separator is for multi-label models and the model of --from is single-label; "
            "drop --label-separator"
        )
    if parent.multi_label and given.get("class_weight") is not None:
        raise UsageError(
            "--class-weight is for single-label models and the model of --from is multi-label; drop --class-weight"
        )
    for name in FIXED:
        kept = getattr(parent, name)
        if name in given and given[name] != kept:
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} {_shown(given[name])} conflicts with the model of --from ({_shown(kept)}): "
                f"continuing keeps its tokenizer and layers; drop {flag}, or train a new model without --from"
            )
    if given.get("vectors") is not None:
        raise UsageError(
            "--vectors cannot be combined with --from: the embedding starts from the model's; drop --vectors"
        )
    max_tokens = given.get("max_tokens", parent.max_tokens)
    if max_tokens < vocabulary_size:
        raise UsageError(
            f"--max-tokens {max_tokens} is below the vocabulary of the model of --from ({vocabulary_size:,} "
            f"entries), which continuing keeps whole; give --max-tokens {vocabulary_size} or more"
        )
    # The embedding starts from the parent's, not from the --vectors or --pretrained encoder it started from.
    origins = {"vectors": None, "freeze_vectors": False, "pretrained": None, "pretrained_rate": 1.0, "frozen_epochs": 0}
    values = {**parent.to_dict(), **dict.fromkeys(REDONE), **origins}
    values.update({k: v for k, v in given.items() if k not in origins})
    try:
        return dataclasses.replace(parent, **values)
    except ValueError as e:  # TrainConfig's own checks, on the parent's values with the options given
        raise UsageError(str(e)) from None


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def extend_vocabulary(
    vocabulary: list[str], counts: Mapping[str, int], *, min_count: int, max_tokens: int
) -> list[str]:
    """`vocabulary` unchanged (every id keeps its word), then the words of `counts` it lacks that were seen
    at least `min_count` times, by descending count (ties by word, as CorpusStats.vocabulary orders them),
    up to `max_tokens` entries in all."""
    known = set(vocabulary)
    new = sorted((-count, word) for word, count in counts.items() if count >= min_count and word not in known)
    room = max(0, max_tokens - len(vocabulary))
    return [*vocabulary, *(word for _, word in new[:room])]


def new_words(vocabulary: list[str], counts: Mapping[str, int], min_count: int) -> int:
    """How many words of `counts` seen at least `min_count` times `vocabulary` lacks (extend_vocabulary adds
    them while there is room)."""
    known = set(vocabulary)
    return sum(1 for word, count in counts.items() if count >= min_count and word not in known)


def extend_labels(labels: list[str], seen: list[str]) -> list[str]:
    """`labels` unchanged (every label keeps its index), then those of `seen` it lacks, sorted."""
    return [*labels, *sorted(set(seen) - set(labels))]


def extend_bigrams(kept: np.ndarray, counts: np.ndarray, *, min_count: int, max_rows: int) -> np.ndarray:
    """The parent's kept bigram buckets (`kept`, sorted, 0 first) and the buckets of `counts` (model.bigram_counts
    over NEW) seen at least `min_count` times, the most frequent first up to `max_rows` in all; sorted."""
    fresh = np.setdiff1d(np.flatnonzero(counts >= max(min_count, 1)), kept)
    room = max(0, max_rows - (len(kept) - 1))
    if len(fresh) > room:
        fresh = fresh[np.lexsort((fresh, -counts[fresh].astype(np.int64)))[:room]]
    return np.sort(np.concatenate([kept, fresh])).astype(np.int32)


def grown_rows(old: np.ndarray, fresh: np.ndarray, rows: np.ndarray, reference: slice) -> np.ndarray:
    """A table shaped like `fresh` (a newly built layer's): old row i at rows[i]; every other row the mean of
    `old[reference]` (the rows of real words or buckets) plus the fresh layer's small random row there, so
    a new word starts as an average word, told apart from the others by training."""
    grown = np.asarray(fresh, dtype=np.float32).copy()
    new = np.ones(len(grown), dtype=bool)
    new[rows] = False
    mean = old[reference].mean(axis=0) if len(old[reference]) else np.zeros(old.shape[1:], np.float32)
    grown[new] += mean
    grown[rows] = old
    return grown


def inherit_weights(network, parent: Parent, *, bigrams: np.ndarray | None) -> dict[str, int]:
    """Set `network` (model.build_network's, for the grown vocabulary, labels and bigrams) to the parent's
    weights: grown tables for the embedding, the bigram rows and the head, the others as they are. Returns
    how many weights were copied, grown and left to their fresh values (for the tests and the report)."""
    old_vocabulary = len(parent.vocabulary)
    counts = {"copied": 0, "grown": 0}
    for variable in network.weights:
        name = variable.path
        fresh = np.asarray(variable.numpy())
        if name == f"{BIGRAM_VOCABULARY}/kept":
            continue  # build_network set it from `bigrams`
        if name not in parent.weights:
            raise ArtifactError(f"{parent.path}: has no weight {name!r} although its options say it should")
        old = parent.weights[name]
        if name == f"{EMBEDDING}/embeddings":
            value = grown_rows(old, fresh, np.arange(old_vocabulary), slice(2, None))
        elif name == f"{BIGRAMS}/embeddings" and bigrams is not None and parent.bigrams is not None:
            value = grown_rows(old, fresh, np.searchsorted(bigrams, parent.bigrams), slice(1, None))
        elif name == f"{HEAD}/kernel":
            value = fresh.copy()
            value[:, : old.shape[1]] = old  # new labels: fresh columns
        elif name == f"{HEAD}/bias":
            value = np.full_like(fresh, old.mean())  # new labels: an average label's bias
            value[: len(old)] = old
        else:
            value = old
        if value.shape != fresh.shape:
            raise ArtifactError(
                f"{parent.path}: weight {name!r} is {old.shape}, the network continuing it needs {fresh.shape}"
            )
        variable.assign(value.astype(fresh.dtype))
        counts["grown" if value is not old else "copied"] += 1
    return counts
