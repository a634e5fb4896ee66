"""Model directories: a SavedModel that takes raw strings, plus plain-JSON metadata, vocabulary and the
Keras network (to continue training). Written to a temporary sibling, checked, then swapped in atomically."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import hashlib
import json
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any

from lstm_cli import __version__
from lstm_cli.errors import ArtifactError

FORMAT = "lstm-cli-model"
FORMAT_VERSION = 1
METADATA = "metadata.json"
VOCABULARY = "vocabulary.json"
KERAS_FILE = "model.keras"
SAVED_MODEL = "saved_model.pb"
SIGNATURE = "serving_default"
DEFAULT_MODEL_DIR = "lstm-model"
MODEL_ENV = "LSTM_CLI_MODEL"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
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
    if not model_dir.exists():
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
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); the model directory is damaged, train it again") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ArtifactError(f'{path}: not lstm-cli model metadata (no "format": "{FORMAT}")')
    version = metadata.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{path}: format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{model_dir}: model format version {version} is newer than this lstm-cli ({__version__}) reads "
            f"(up to {FORMAT_VERSION}); upgrade with 'pip install -U lstm-cli'"
        )
    labels = metadata.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f'{path}: "labels" must be a list of at least two strings')
    return metadata


def verify_files(model_dir: Path, metadata: dict[str, Any]) -> None:
    """Check every file listed in the metadata is present and unchanged."""
    expected = metadata.get("files")
    if not isinstance(expected, dict):
        raise ArtifactError(f'{model_dir / METADATA}: "files" is missing; the model directory is incomplete')
    for name, digest in expected.items():
        path = model_dir / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise ArtifactError(f"{model_dir / METADATA}: file entry {name!r} points outside the model directory")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; the model directory is incomplete, train it again")
        if _sha256(path) != digest:
            raise ArtifactError(f"{path}: contents do not match metadata.json (truncated or modified); train it again")


def build_metadata(result, *, data_fingerprint: dict, validation: dict, skipped: dict[str, int]) -> dict[str, Any]:
    from lstm_cli.model import keras, tf

    return {
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
            "standardize": "lower_and_strip_punctuation",
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
            "history": result.history,
        },
        "metrics": result.best_metrics,
    }


def _export_saved_model(result, directory: Path) -> None:
    from lstm_cli.model import keras, tf, token_ids

    network, vectorizer, max_length = result.network, result.vectorizer, result.config.max_length
    names = tf.constant(result.labels)
    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.track(vectorizer)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        probabilities = network(token_ids(vectorizer, text, max_length).to_tensor(), training=False)
        best = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        return {
            "probabilities": probabilities,
            "label": tf.gather(names, best),
            "probability": tf.reduce_max(probabilities, axis=1),
            "label_names": tf.tile(names[tf.newaxis], [tf.shape(text)[0], 1]),
        }

    archive.add_endpoint("serve", serve)
    archive.write_out(str(directory), verbose=False)


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def is_model_dir(path: Path) -> bool:
    return (path / METADATA).is_file() or (path.is_dir() and not any(path.iterdir()))


def _install(staging: Path, target: Path) -> None:
    """Put `staging` at `target` in one step: readers see the old model or the new one, never a mix."""
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)
        return
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, retired)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def save(result, target: Path, *, data_fingerprint: dict, validation: dict, skipped: dict[str, int]) -> dict:
    """Write the model directory at `target` atomically; returns its metadata."""
    target = Path(os.path.abspath(target))
    if target.exists() and not (target.is_dir() and is_model_dir(target)):
        raise ArtifactError(
            f"{target}: exists and is not an lstm-cli model directory; choose another path with --model/-m"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"{target.parent}: cannot create the model's parent directory: {e.strerror}") from None
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir()
        _export_saved_model(result, staging)
        result.network.save(staging / KERAS_FILE)
        (staging / VOCABULARY).write_text(json.dumps(result.vocabulary, ensure_ascii=False), encoding="utf-8")
        metadata = build_metadata(result, data_fingerprint=data_fingerprint, validation=validation, skipped=skipped)
        metadata["files"] = _artifact_files(staging)
        (staging / METADATA).write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync_tree(staging)
        verify_files(staging, read_metadata(staging))
        _install(staging, target)
    except OSError as e:
        raise ArtifactError(
            f"{target}: could not write the model ({e.strerror or e}); the previous model, if any, is untouched"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata
