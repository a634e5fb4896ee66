"""Model directories: a SavedModel that takes raw strings, plus plain-JSON metadata, vocabulary and the numpy
engine's network description. Each weight is stored once, in the SavedModel's variables, which the numpy engine
reads too (lstm_cli.tensorbundle; engine.npz in directories saved before); the Keras network, when something
needs one (integrated gradients, continued training), is rebuilt from the metadata's config and those weights
(`load_network`). Written to a temporary sibling, checked, then swapped in atomically (docs/model-directory.md)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any

from lstm_cli import __version__
from lstm_cli.atomic import fsync_tree, install, recover, remove_stale_staging, staging_path
from lstm_cli.errors import ArtifactError
from lstm_cli.owned import (
    MODEL_FORMAT,
    MODEL_METADATA,
    check_model_target,
    mark_model_staging,
    open_regular,
    read_regular,
    remove_marked_tree,
)
from lstm_cli.schema import (
    check_engine,
    check_metadata,
    check_vocabulary,
    load_json,
    npz_arrays,
    npz_headers,
    read_json,
)
from lstm_cli.tensorbundle import DATA as VARIABLES_DATA
from lstm_cli.tensorbundle import INDEX as VARIABLES_INDEX

FORMAT = MODEL_FORMAT
FORMAT_VERSION = 1
METADATA = MODEL_METADATA
VOCABULARY = "vocabulary.json"
KERAS_FILE = "model.keras"  # the Keras network, in model directories saved before it was rebuilt instead
ENGINE_FILE = "engine.json"  # the network as plain JSON, for the numpy engine (lstm_cli.engine)
# Its weights: the SavedModel's variables (engine.json maps each weight's name to its checkpoint key), or, in
# directories saved before and when a weight is not found there, float32 arrays by name in engine.npz.
ENGINE_WEIGHTS = "engine.npz"
SAVED_MODEL = "saved_model.pb"
SIGNATURE = "serving_default"
SERVING_FILES = (SAVED_MODEL, "variables/", "assets/")  # what predict reads
DEFAULT_MODEL_DIR = "lstm-model"
MODEL_ENV = "LSTM_CLI_MODEL"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _artifact_files(root: Path) -> dict[str, str]:
    """sha256 of every file but metadata.json, keyed by '/'-separated relative path."""
    return {
        p.relative_to(root).as_posix(): _sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != METADATA
    }


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """Parse and check a model directory's metadata.json (data only; nothing in it is executed)."""
    if not model_dir.exists() and not recover(Path(os.path.abspath(model_dir))):
        raise ArtifactError(
            f"{model_dir}: no model here; train one with 'lstm-cli train DATA.csv', "
            f"or point to one with --model/-m or ${MODEL_ENV}"
        )
    if not model_dir.is_dir():
        raise ArtifactError(f"{model_dir}: not a directory; --model expects a model directory made by lstm-cli train")
    path = model_dir / METADATA
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {model_dir} is not an lstm-cli model directory (or is incomplete)")
    try:
        metadata = read_json(path)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); the model directory is damaged, train it again") from None
    check_metadata(metadata, path, format_name=FORMAT, newest=FORMAT_VERSION)
    version = metadata["format_version"]
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{model_dir}: model format version {version} is newer than this lstm-cli ({__version__}) reads "
            f"(up to {FORMAT_VERSION}); upgrade with 'pip install -U lstm-cli'"
        )
    return metadata


@dataclasses.dataclass
class ModelFiles:
    """A model directory's data files, each checked against its sha256 and all against one another."""

    vocabulary: list[str]
    description: dict[str, Any] | None = None  # engine.json (None: saved before the numpy engine)
    weights: dict[str, Any] | None = None  # the network's arrays by name (views of the file holding them)
    weights_file: str = ENGINE_WEIGHTS  # that file: variables/variables.data-00000-of-00001 or engine.npz


def read_model(model_dir: Path, metadata: dict[str, Any]) -> ModelFiles:
    """vocabulary.json, engine.json and the weights, validated as a whole (lstm_cli.schema) before any is used:
    a damaged or forged directory fails here with one message naming the file, whichever engine serves it."""
    vocabulary = check_vocabulary(_json_file(model_dir, metadata, VOCABULARY), model_dir / VOCABULARY, metadata)
    if ENGINE_FILE not in metadata.get("files", {}):
        return ModelFiles(vocabulary)
    description = _json_file(model_dir, metadata, ENGINE_FILE)
    if not isinstance(description, dict):
        check_engine(description, {}, vocabulary, metadata, path=model_dir / ENGINE_FILE, weights_path=model_dir)
    name, data, headers = _engine_weights(model_dir, metadata, description)
    check_engine(description, headers, vocabulary, metadata, path=model_dir / ENGINE_FILE,
                 weights_path=model_dir / name)  # fmt: skip
    return ModelFiles(vocabulary, description, npz_arrays(data, headers), name)


def _engine_weights(model_dir: Path, metadata: dict[str, Any], description: dict) -> tuple[str, bytes, dict]:
    """(file name, its bytes, each weight's shape, dtype and offset in it by name) for the numpy engine."""
    from lstm_cli.schema import Member
    from lstm_cli.tensorbundle import entries

    name = description.get("weights_file", ENGINE_WEIGHTS)
    if name == ENGINE_WEIGHTS:
        data = read_verified(model_dir, metadata, ENGINE_WEIGHTS)
        try:
            return name, data, npz_headers(data)
        except ValueError as e:
            raise ArtifactError(f"{model_dir / name}: {e}; the model directory is damaged, train it again") from None
    keys = description.get("weights_keys")
    if name != VARIABLES_DATA or not isinstance(keys, dict) or not all(isinstance(k, str) for k in keys.values()):
        raise ArtifactError(
            f'{model_dir / ENGINE_FILE}: "weights_file" and "weights_keys" must name {ENGINE_WEIGHTS}, or '
            f"{VARIABLES_DATA} and each weight's checkpoint key; the model directory is damaged, train it again"
        )
    index = read_verified(model_dir, metadata, VARIABLES_INDEX)
    data = read_verified(model_dir, metadata, VARIABLES_DATA)
    try:
        found = entries(index, len(data), keys)
    except ValueError as e:
        raise ArtifactError(
            f"{model_dir / VARIABLES_INDEX}: {e}; the model directory is damaged, train it again"
        ) from None
    import numpy as np

    return name, data, {k: Member(found[k][0], np.dtype(found[k][1]), False, found[k][2]) for k in keys}  # in order


def network_weights(model_dir: Path, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The network's weights by Keras variable path ("lstm_1/lstm_cell/kernel": float32 array), from a model
    directory checked as predict checks it, whatever stores them; without importing TensorFlow, except for a
    directory saved before the numpy engine (its weights are only in model.keras)."""
    metadata = read_metadata(model_dir) if metadata is None else metadata
    files = read_model(model_dir, metadata)
    if files.weights is not None:
        return dict(files.weights)
    return {variable.path: variable.numpy() for variable in _old_keras_network(model_dir, metadata).weights}


def load_network(model_dir: Path, metadata: dict[str, Any] | None = None):
    """The model's Keras network, as `lstm_cli.model.build_network` builds it from the model's configuration
    (dropout included, float32), with its saved weights: for integrated gradients and continued training.
    Raises ArtifactError when the directory is damaged or its weights do not fit that network."""
    from lstm_cli.config import TrainConfig
    from lstm_cli.model import build_network, dtype_policy

    metadata = read_metadata(model_dir) if metadata is None else metadata
    files = read_model(model_dir, metadata)
    if files.weights is None:
        return _old_keras_network(model_dir, metadata)
    try:
        config = TrainConfig.from_dict(metadata["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise ArtifactError(
            f"{model_dir / METADATA}: its configuration cannot rebuild the network ({e}); it was saved by another "
            "lstm-cli version: use that one, or train the model again"
        ) from None
    weights = files.weights
    kept = next((a for name, a in weights.items() if name.startswith("bigram_vocabulary/")), None)
    with dtype_policy("float32"):
        network = build_network(config, vocabulary_size=len(files.vocabulary), num_classes=len(metadata["labels"]),
                                trainable_embeddings=not config.freeze_vectors, bigrams=kept)  # fmt: skip
    variables = {variable.path: variable for variable in network.weights}
    if variables.keys() != weights.keys() or any(tuple(v.shape) != weights[k].shape for k, v in variables.items()):
        raise ArtifactError(
            f"{model_dir / files.weights_file}: its weights do not fit the network its configuration describes; it was "
            "saved by another lstm-cli version: use that one, or train the model again"
        )
    for name, variable in variables.items():
        variable.assign(weights[name])
    return network


def _old_keras_network(model_dir: Path, metadata: dict[str, Any]):
    """model.keras of a directory saved before the numpy engine, checked against its sha256 first."""
    from lstm_cli.model import keras  # also registers lstm-cli's own layers for loading

    if KERAS_FILE not in metadata.get("files", {}):
        raise ArtifactError(f"{model_dir}: holds no network weights lstm-cli can read; train the model again")
    verify_files(model_dir, metadata, only=(KERAS_FILE,))
    try:
        # safe_mode: a model file can describe layers but never carry code to run.
        return keras.saving.load_model(model_dir / KERAS_FILE, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises many types for a damaged file
        raise ArtifactError(f"{model_dir / KERAS_FILE}: cannot be loaded ({str(e)[:200]}); train it again") from None


def _json_file(model_dir: Path, metadata: dict[str, Any], name: str) -> Any:
    try:
        return load_json(read_verified(model_dir, metadata, name))
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(
            f"{model_dir / name}: not valid JSON ({e}); the model directory is damaged, train it again"
        ) from None


def verify_files(model_dir: Path, metadata: dict[str, Any], *, only: tuple[str, ...] | None = None) -> None:
    """Check the files listed in the metadata (those starting with a prefix in `only`) are unchanged."""
    expected = metadata.get("files")
    if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
        raise ArtifactError(f'{model_dir / METADATA}: "files" is missing; the model directory is incomplete')
    for required in (SAVED_MODEL, VOCABULARY):
        if required not in expected:
            raise ArtifactError(f'{model_dir / METADATA}: "files" does not list {required}')
    for name, digest in expected.items():
        if only is not None and not name.startswith(only):
            continue
        path = model_dir / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; the model directory is incomplete, train it again")
        if _sha256(path) != digest:
            raise ArtifactError(f"{path}: contents do not match metadata.json (truncated or modified); train it again")


def build_metadata(result, *, data_fingerprint: dict, validation: dict, skipped: dict[str, int]) -> dict[str, Any]:
    from lstm_cli.model import keras, tf

    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "id": uuid.uuid4().hex,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {
            "lstm_cli": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
        },
        "labels": result.labels,
        "config": result.config.to_dict(),
        "vectorizer": {
            "vocabulary_size": len(result.vocabulary),
            "vocabulary_file": VOCABULARY,
            "standardize": result.config.standardization,
            "split": "whitespace",
            "max_length": result.config.max_length,
        },
        "parameters": result.parameters,
        "signature": {
            "name": SIGNATURE,
            "input": "text: string[batch]",
            "outputs": {
                "probabilities": 'float32[batch, labels] in the order of "labels"',
                "label": "string[batch]",
                "probability": "float32[batch]",
                "label_names": "string[batch, labels]",
            },
        },
        "training": {
            "data": data_fingerprint,
            "validation": validation,
            "rows": {"train": result.train_rows, "validation": result.validation_rows},
            "skipped_rows": dict(skipped),
            "device": result.device.describe(),
            "seconds": round(result.seconds, 3),
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            # The saved weights: the mean of epochs [first, last], or (None) the best epoch's own; and the
            # validation loss of each window's mean that weight averaging tried ({"4-6": 0.21, ...}).
            "averaged_window": list(result.averaging.window) if result.averaging and result.averaging.window else None,
            "averaging_val_loss": {f"{first}-{last}": loss for (first, last), loss in result.averaging.tried.items()}
            if result.averaging
            else {},
            "history": result.history,
            "epoch_seconds": result.epoch_seconds,
            "class_weights": result.class_weights,
        },
        "vectors": result.vectors,
        "metrics": result.best_metrics,
        # The temperature folded into the softmax head (lstm_cli.calibration): the raw logits are the saved
        # head's times it. None: saved by code that does not calibrate.
        "calibration": getattr(result, "calibration", None),
        # A multi-label model's separator and decision thresholds (lstm_cli.multilabel); None: single-label.
        "multi_label": getattr(result, "multi_label", None),
    }
    if metadata["multi_label"] is not None:
        metadata["signature"]["outputs"].update(
            probabilities='float32[batch, labels] in the order of "labels", each label\'s own (sigmoid)',
            label="string[batch]: the most probable label",
            selected='bool[batch, labels]: probabilities at or over the saved thresholds ("multi_label")',
        )
    return metadata


def _recurrent_layers(network) -> list:
    found = []
    for layer in network.layers:
        inner = [layer.forward_layer, layer.backward_layer] if hasattr(layer, "forward_layer") else [layer]
        found.extend(x for x in inner if hasattr(x, "use_cudnn"))
    return found


def _export_saved_model(result, directory: Path) -> None:
    from lstm_cli.model import bigrams_of, build_network, dtype_policy, tf

    # Serve a twin of the network without dropout: same weights, same outputs at inference, but Keras
    # fuses the four gate matmuls only when recurrent_dropout is 0 (about 1.5x faster predictions).
    # Its recurrent layers trace the portable loop, not cuDNN, so a model trained on a GPU serves on a CPU.
    # float32 whatever the training policy: --mixed-precision is a training speed-up, not a serving format.
    config = dataclasses.replace(result.config, dropout=0.0, recurrent_dropout=0.0, dense_dropout=0.0)
    with dtype_policy("float32"):
        serving = build_network(config, vocabulary_size=len(result.vocabulary), num_classes=len(result.labels),
                                trainable_embeddings=not config.freeze_vectors,
                                bigrams=bigrams_of(result.network))  # fmt: skip
    serving.set_weights(result.network.get_weights())
    for layer in _recurrent_layers(serving):
        layer.use_cudnn = False
    names = tf.constant(result.labels)
    multi_label = getattr(result, "multi_label", None)
    thresholds = multi_label["thresholds"] if multi_label else None
    _write_archive(serving, result.vectorizer, result.config.max_length, names, directory, thresholds)


def _write_archive(network, vectorizer, max_length: int, names, directory: Path, thresholds=None) -> None:
    """`thresholds`: a multi-label model's, one per label; its signature adds "selected"."""
    from lstm_cli.model import keras, tf, token_ids

    archive = keras.export.ExportArchive()
    # Only the vectorizer is tracked (for its lookup table): the endpoint's own trace tracks every variable it
    # uses. Tracking the network too stores each weight twice, once per Python object that holds it (Keras'
    # variable and TensorFlow's inside it; keras-team/keras#23553): 13.7 MB of variables for the SMS model's
    # 1.7 million parameters instead of 6.8.
    archive.track(vectorizer)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        probabilities = network(token_ids(vectorizer, text, max_length).to_tensor(), training=False)
        best = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        outputs = {
            "probabilities": probabilities,
            "label": tf.gather(names, best),
            "probability": tf.reduce_max(probabilities, axis=1),
            "label_names": tf.tile(names[tf.newaxis], [tf.shape(text)[0], 1]),
        }
        if thresholds is not None:
            outputs["selected"] = probabilities >= tf.constant(thresholds, tf.float32)
        return outputs

    archive.add_endpoint("serve", serve)
    archive.write_out(str(directory), verbose=False)


def _write_engine_files(result, directory: Path) -> None:
    import numpy as np

    from lstm_cli.engine.export import describe

    description, weights = describe(
        result.network,
        vocabulary_file=VOCABULARY,
        max_length=result.config.max_length,
        standardize=result.config.standardization,
    )
    keys = _checkpoint_keys(directory, weights)
    if keys is not None:  # every weight is in the SavedModel's variables: the engine reads them there
        description["weights_file"], description["weights_keys"] = VARIABLES_DATA, keys
    else:
        description["weights_file"] = ENGINE_WEIGHTS
        with (directory / ENGINE_WEIGHTS).open("wb") as f:
            np.savez(f, **weights)
    (directory / ENGINE_FILE).write_text(json.dumps(description, indent=1, ensure_ascii=False), encoding="utf-8")
    return description["weights_file"]


def _checkpoint_keys(directory: Path, weights: dict[str, Any]) -> dict[str, str] | None:
    """Each weight's key in the SavedModel's variables, found by its value (equal values are interchangeable,
    so a tie is no ambiguity); None when one is not there."""
    import numpy as np

    from lstm_cli.tensorbundle import numeric_entries

    data = (directory / VARIABLES_DATA).read_bytes()
    stored = numeric_entries((directory / VARIABLES_INDEX).read_bytes(), len(data))
    keys = {}
    for name, array in weights.items():
        wanted = np.ascontiguousarray(array)
        raw = wanted.astype(wanted.dtype.newbyteorder("<")).tobytes()
        keys[name] = next((key for key, (shape, dtype, offset) in stored.items()
                           if shape == wanted.shape and np.dtype(dtype) == wanted.dtype
                           and data[offset : offset + len(raw)] == raw), None)  # fmt: skip
        if keys[name] is None:
            return None
    return keys


def read_verified(model_dir: Path, metadata: dict[str, Any], name: str) -> bytes:
    """The contents of file `name`, checked against its sha256 in the metadata as read (no time-of-check gap)."""
    digest = metadata.get("files", {}).get(name)
    if not isinstance(digest, str):
        raise ArtifactError(f'{model_dir / METADATA}: "files" does not list {name}; the model directory is incomplete')
    try:
        data = read_regular(model_dir / name)
    except OSError as e:
        raise ArtifactError(f"{model_dir / name}: cannot read ({e.strerror}); train the model again") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ArtifactError(
            f"{model_dir / name}: contents do not match metadata.json (truncated or modified); train it again"
        )
    return data


def _last_clause(message: str) -> str:
    """'path/file.tmp123; No space left on device' -> 'No space left on device'."""
    return message.strip().splitlines()[0].rsplit("; ", 1)[-1]


def check_writable(target: Path) -> None:
    """Fail before training, not after, when the model could not be saved at `target`."""
    target = Path(os.path.abspath(target))
    recover(target)
    check_model_target(target)  # only what lstm-cli can prove it made is ever replaced
    probe = staging_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise ArtifactError(
            f"{target.parent}: cannot write the model here ({e.strerror}); choose another path with --model/-m"
        ) from None


def _check_export(staging: Path, target: Path) -> None:
    """Run the check predict runs before loading, so a model it would refuse is never installed."""
    from lstm_cli.graphcheck import check_saved_model

    try:
        check_saved_model(staging / SAVED_MODEL, SIGNATURE)
    except ArtifactError as e:
        reason = str(e).split(": ", 1)[-1]
        raise ArtifactError(
            f"{target}: the exported SavedModel fails the check predict runs before loading ({reason}); "
            "this is a bug in lstm-cli, please report it. The previous model, if any, is untouched"
        ) from None


def save(
    result,
    target: Path,
    *,
    data_fingerprint: dict,
    validation: dict,
    skipped: dict[str, int],
    extra: dict[str, Any] | None = None,
) -> dict:
    """Write the model directory at `target` atomically; returns its metadata. `extra`: more top-level
    metadata sections (e.g. "tuning")."""
    from lstm_cli.model import tf

    target = Path(os.path.abspath(target))
    check_writable(target)
    remove_stale_staging(target)
    staging = staging_path(target)
    try:
        staging.mkdir()
        mark_model_staging(staging)  # so a staging directory left by a kill is known as lstm-cli's
        _export_saved_model(result, staging)
        (staging / VOCABULARY).write_text(json.dumps(result.vocabulary, ensure_ascii=False), encoding="utf-8")
        weights_file = _write_engine_files(result, staging)
        metadata = build_metadata(result, data_fingerprint=data_fingerprint, validation=validation, skipped=skipped)
        metadata.update(extra or {})
        metadata["engine"] = {"description": ENGINE_FILE, "weights": weights_file, "vocabulary": VOCABULARY}
        metadata["files"] = _artifact_files(staging)
        # written aside, then renamed over the provisional marker: a kill never leaves a half-written one
        aside = staging / f".{METADATA}.new"
        aside.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(aside, staging / METADATA)
        fsync_tree(staging)
        verify_files(staging, read_metadata(staging))
        _check_export(staging, target)
        install(staging, target)
    except (OSError, tf.errors.OpError) as e:
        reason = getattr(e, "strerror", None) or _last_clause(getattr(e, "message", None) or str(e))
        raise ArtifactError(
            f"{target}: could not write the model ({reason}); the previous model, if any, is untouched"
        ) from None
    finally:
        remove_marked_tree(staging)
    return metadata
