"""Encoder directories (`lstm-cli pretrain -o DIR`): a tokenizer's vocabulary and the weights of an embedding
(trained on a bag-of-words objective, or as a language model) and an LSTM, as plain files a classifier can start
from (`train --pretrained`).

Layout: `vocabulary.json` (the tokens, padding and out-of-vocabulary first, as a model's), `weights.npz`
(float32 arrays by name, read with allow_pickle=False) and `encoder.json`, written last: the format marker,
the tokenizer and network settings, how it was trained, and the sha256 of every other file. Written to a
hidden sibling and swapped in atomically; only a directory lstm-cli can prove it made is ever replaced
(lstm_cli.owned)."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli import __version__
from lstm_cli.atomic import fsync_tree, install, recover, remove_stale_staging, staging_path
from lstm_cli.errors import ArtifactError, UsageError
from lstm_cli.owned import (
    ENCODER_FORMAT,
    ENCODER_METADATA,
    check_encoder_target,
    mark_encoder_staging,
    read_regular,
    remove_marked_tree,
)
from lstm_cli.schema import load_json, npz_arrays, read_json

FORMAT_VERSION = 1
VOCABULARY = "vocabulary.json"
WEIGHTS = "weights.npz"
# The arrays of weights.npz: the classifier's `embedding` and `lstm_1` layers take the first four (Keras's
# layout: kernel [embedding_dim, 4 units], recurrent kernel [units, 4 units], bias [4 units], gates i f c o);
# the language model's output layer (softmax over the vocabulary) is there when the language model was trained,
# the bag-of-words phase's (BAG_ARRAYS, [vocabulary, embedding_dim] and [vocabulary]) when that phase ran: kept
# for inspection, a classifier reads neither.
ARRAYS = ("embedding", "lstm_kernel", "lstm_recurrent_kernel", "lstm_bias", "softmax_weights", "softmax_bias")
BAG_ARRAYS = ("bag_weights", "bag_bias")
REQUIRED = ARRAYS[:4]
# The TrainConfig fields an encoder fixes: a classifier started from it tokenizes and embeds as it does.
TOKENIZER_FIELDS = ("max_tokens", "min_count", "punctuation")
NETWORK_FIELDS = ("embedding_dim", "units")


@dataclass
class Encoder:
    path: Path
    metadata: dict[str, Any]
    vocabulary: list[str]
    weights: dict[str, np.ndarray]

    @property
    def settings(self) -> dict[str, Any]:
        """The TrainConfig fields the encoder fixes (TOKENIZER_FIELDS, NETWORK_FIELDS, one LSTM layer)."""
        return {**self.metadata["tokenizer"], **self.metadata["network"]}

    def describe(self) -> dict[str, Any]:
        """What a model trained from it records: where it was, its id and its language model's figures."""
        training = self.metadata["training"]
        bag = training.get("bag") if isinstance(training.get("bag"), dict) else {}
        return {"path": str(self.path), "id": self.metadata["id"], "vocabulary_size": len(self.vocabulary),
                **{k: training.get(k) for k in ("tokens_seen", "heldout_perplexity")},
                **{f"bag_{k}": bag.get(k) for k in ("steps", "heldout_loss")}}  # fmt: skip


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_encoder(
    target: Path, *, vocabulary: list[str], weights: dict[str, np.ndarray], settings: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Write the encoder directory at `target` atomically; returns its metadata."""
    target = Path(os.path.abspath(target))
    check_encoder_target(target)
    remove_stale_staging(target)
    staging = staging_path(target)
    try:
        staging.mkdir()
        mark_encoder_staging(staging)  # a staging directory a kill leaves is known as lstm-cli's
        files = {
            VOCABULARY: json.dumps(vocabulary, ensure_ascii=False).encode(),
            WEIGHTS: _npz(
                {
                    name: np.asarray(weights[name], dtype=np.float32)
                    for name in (*ARRAYS, *BAG_ARRAYS)
                    if name in REQUIRED or name in weights
                }
            ),
        }
        for name, data in files.items():
            (staging / name).write_bytes(data)
        metadata = {
            "format": ENCODER_FORMAT,
            "format_version": FORMAT_VERSION,
            "id": uuid.uuid4().hex,
            "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "lstm_cli_version": __version__,
            "tokenizer": {k: settings[k] for k in TOKENIZER_FIELDS} | {"max_length": settings["max_length"]},
            "network": {**{k: settings[k] for k in NETWORK_FIELDS}, "cell": "lstm", "layers": 1},
            "training": training,
            "files": {name: _sha256(data) for name, data in files.items()},
        }
        aside = staging / f".{ENCODER_METADATA}.new"
        aside.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(aside, staging / ENCODER_METADATA)
        fsync_tree(staging)
        install(staging, target)
    except OSError as e:
        raise ArtifactError(
            f"{target}: could not write the encoder ({e.strerror or e}); the previous one, if any, is untouched"
        ) from None
    finally:
        remove_marked_tree(staging)
    return metadata


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_encoder(path: Path) -> Encoder:
    """The encoder at `path`, every file checked against its sha256; ArtifactError (UsageError for a path
    that is no encoder directory at all) saying what is wrong."""
    path = Path(path)
    recover(path)
    fix = "give --pretrained the folder `lstm-cli pretrain -o` wrote"
    if not path.is_dir():
        raise UsageError(f"{path}: no such encoder directory; {fix}")
    try:
        metadata = read_json(path / ENCODER_METADATA)
    except (OSError, ValueError):
        raise UsageError(f"{path}: not an lstm-cli encoder (no readable {ENCODER_METADATA}); {fix}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != ENCODER_FORMAT:
        marker = f'"format": "{ENCODER_FORMAT}"'
        raise UsageError(f"{path}: not an lstm-cli encoder ({ENCODER_METADATA} has no {marker}); {fix}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: encoder format version {metadata.get('format_version')!r}; this lstm-cli reads version "
            f"{FORMAT_VERSION}: run `lstm-cli pretrain` again with this version"
        )
    try:
        data = {}
        for name in (VOCABULARY, WEIGHTS):
            data[name] = read_regular(path / name)
            if _sha256(data[name]) != metadata["files"][name]:
                raise ArtifactError(
                    f"{path / name}: changed since pretrain wrote it (its sha256 differs); run pretrain again"
                )
        vocabulary = load_json(data[VOCABULARY])
        weights = {k: np.array(v) for k, v in npz_arrays(data[WEIGHTS]).items()}
        settings = {**metadata["tokenizer"], **metadata["network"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path}: incomplete or unreadable encoder ({e}); run `lstm-cli pretrain` again") from None
    vocab_size, dim, units = len(vocabulary), settings["embedding_dim"], settings["units"]
    shapes = {"embedding": (vocab_size, dim), "lstm_kernel": (dim, 4 * units),
              "lstm_recurrent_kernel": (units, 4 * units), "lstm_bias": (4 * units,)}  # fmt: skip
    for name, shape in shapes.items():
        if name not in weights or weights[name].shape != shape:
            raise ArtifactError(f"{path / WEIGHTS}: {name} is not {shape}; run `lstm-cli pretrain` again")
    return Encoder(path, metadata, [str(t) for t in vocabulary], weights)


# A classifier started from an encoder has its tokenizer and its embedding and LSTM: these options are the
# encoder's (another value given: refused), and the network is one forward LSTM layer.
FIXED = {"max_tokens": "--max-tokens", "min_count": "--min-count", "punctuation": "--punctuation",
         "embedding_dim": "--embedding-dim", "units": "--units", "cell": "--cell", "layers": "--layers",
         "bidirectional": "--bidirectional"}  # fmt: skip


def classifier_config(config, given: dict[str, Any], encoder: Encoder):
    """`config` (a TrainConfig) with the encoder's tokenizer and network; UsageError (exit 2) for an option
    given with another value than the encoder's, or for --vectors (the encoder's embedding is the start)."""
    import dataclasses

    fixed = {**encoder.settings, "cell": "lstm", "layers": 1, "bidirectional": False}
    for name, flag in FIXED.items():
        if name in given and given[name] != fixed[name]:
            raise UsageError(
                f"{flag} {given[name]} conflicts with --pretrained {encoder.path} (its {flag.lstrip('-')} is "
                f"{fixed[name]}); drop {flag}, or pretrain an encoder with it"
            )
    if config.vectors is not None:
        raise UsageError(f"--vectors and --pretrained {encoder.path} both give the embedding's start; give one")
    return dataclasses.replace(config, **{k: fixed[k] for k in FIXED}, pretrained=str(encoder.path))


def encoder_variables(network) -> list:
    """The variables of a classifier's layers an encoder sets (load_into): the embedding's and the LSTM's."""
    cell = network.get_layer("lstm_1").cell
    return [network.get_layer("embedding").embeddings, cell.kernel, cell.recurrent_kernel, cell.bias]


def load_into(network, encoder: Encoder) -> None:
    """Set a classifier's `embedding` and `lstm_1` layers (lstm_cli.model.build_network) to the encoder's."""
    network.get_layer("embedding").embeddings.assign(encoder.weights["embedding"])
    cell = network.get_layer("lstm_1").cell
    cell.kernel.assign(encoder.weights["lstm_kernel"])
    cell.recurrent_kernel.assign(encoder.weights["lstm_recurrent_kernel"])
    cell.bias.assign(encoder.weights["lstm_bias"])
