"""What lstm-cli checks before it uses anything read from a file, the environment or an option.

- JSON: one loader for all of it, bounded in size and nesting depth (`load_json`).
- .npz archives: every member a plain numeric array stored uncompressed, its shape and dtype read from the .npy
  header inside the zip before any array is made, so a member can never claim more than the file holds
  (`npz_headers`, `npz_arrays`).
- A model directory: metadata.json, vocabulary.json, engine.json and the weights' headers (engine.npz's, or the
  SavedModel's variables index, lstm_cli.tensorbundle) checked as a whole (types, references, shapes and counts
  agree with one another) when it is loaded (`check_metadata`, `check_engine`).
Everything here raises with a message naming the file and what is wrong; nothing here imports TensorFlow."""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from lstm_cli.errors import ArtifactError
from lstm_cli.owned import open_regular

# Deepest nesting of arrays and objects in any JSON lstm-cli reads (its own files nest 8 deep at most).
MAX_JSON_DEPTH = 64
# Largest JSON file in a model or checkpoint directory (a 100,000-token vocabulary is about 1.5 MB).
MAX_JSON_BYTES = 256 << 20
# Largest JSON given in an option or environment variable (--class-weight, TF_CONFIG, tune --set).
MAX_OPTION_JSON_BYTES = 1 << 20

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


class JsonLimit(ValueError):
    """JSON larger or deeper than lstm-cli reads."""


def load_json(data: str | bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads within bounds: raises ValueError (JsonLimit, or json.JSONDecodeError) for anything else."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise JsonLimit(f"{len(raw):,} bytes of JSON, more than the {max_bytes:,} lstm-cli reads")
    # Only text with more opening brackets than the limit can nest deeper: one count answers for most files.
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        depth = _depth(raw)
        if depth > max_depth:
            raise JsonLimit(f"JSON nested {depth} deep, deeper than the {max_depth} lstm-cli reads")
    try:
        return json.loads(data)
    except RecursionError:  # not reached after the check above; kept so no input can end in a traceback
        raise JsonLimit(f"JSON nested deeper than the {max_depth} lstm-cli reads") from None


def _depth(raw: bytes) -> int:
    """The deepest nesting of brackets outside strings (for text that parses; anything else fails to parse)."""
    import numpy as np  # here, not above: --help and option parsing load this module

    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", raw))
    steps = np.frombuffer(brackets, np.uint8)
    opening = (steps == ord("[")) | (steps == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1)).max(initial=0))


def read_json(path: Path, *, max_bytes: int = MAX_JSON_BYTES, follow_symlinks: bool = True) -> Any:
    """A JSON file within bounds (read at most max_bytes + 1 bytes); raises OSError (also for anything but a
    regular file: a FIFO is refused, not waited on; with follow_symlinks=False, a symbolic link) or ValueError."""
    with open_regular(path, follow_symlinks=follow_symlinks) as f:
        raw = f.read(max_bytes + 1)
    return load_json(raw, max_bytes=max_bytes)


# --- .npz archives --------------------------------------------------------------------------------------------


class Member(NamedTuple):
    shape: tuple[int, ...]
    dtype: Any  # numpy.dtype
    fortran_order: bool
    offset: int  # of the array's data in the archive's bytes


def npz_headers(data: bytes) -> dict[str, Member]:
    """Each member's shape and dtype, from the .npy headers inside the zip, without reading any array.

    Raises ValueError unless every member is a .npy array of numbers, stored uncompressed (as np.savez writes
    them), whose header's size is exactly the size the zip gives it: no member can claim more than the file."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as e:
        raise ValueError(f"not a zip archive of arrays ({e})") from None
    found: dict[str, Member] = {}
    for member in members:
        name = member.filename
        if not name.endswith(".npy") or name.removesuffix(".npy") in found:
            raise ValueError(f"member {name!r} is not a numpy array (.npy), or repeats one")
        if member.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"member {name!r} is compressed; lstm-cli writes arrays uncompressed")
        start = member.header_offset
        if data[start : start + 4] != b"PK\x03\x04" or start + 30 > len(data):
            raise ValueError(f"member {name!r}: damaged zip entry")
        name_length, extra_length = struct.unpack_from("<HH", data, start + 26)  # from the local file header
        begin = start + 30 + name_length + extra_length
        if begin + member.file_size > len(data):
            raise ValueError(f"member {name!r} claims {member.file_size:,} bytes, more than the file holds")
        stream = io.BytesIO(data[begin : begin + min(member.file_size, 1 << 16)])
        try:
            shape, fortran_order, dtype = readers[npy.read_magic(stream)](stream)
        except (ValueError, KeyError, TypeError, SyntaxError) as e:
            raise ValueError(f"member {name!r} is not a numpy array ({e or 'unknown .npy version'})") from None
        if dtype.hasobject or dtype.kind not in "biuf" or any(n < 0 for n in shape):
            raise ValueError(f"member {name!r} holds {dtype} values, not numbers")
        if stream.tell() + math.prod(shape) * dtype.itemsize != member.file_size:
            raise ValueError(f"member {name!r}: its shape {shape} does not match its size ({member.file_size:,} bytes)")
        found[name.removesuffix(".npy")] = Member(tuple(shape), dtype, fortran_order, begin + stream.tell())
    return found


def npz_arrays(data: bytes, headers: dict[str, Member] | None = None) -> dict[str, Any]:
    """The arrays of an .npz archive (as np.load(allow_pickle=False) gives them), read in place: read-only
    views of `data`, not copies. Raises ValueError as npz_headers does."""
    import numpy as np

    headers = npz_headers(data) if headers is None else headers
    return {
        name: np.frombuffer(data, m.dtype, count=math.prod(m.shape), offset=m.offset).reshape(
            m.shape, order="F" if m.fortran_order else "C"
        )
        for name, m in headers.items()
    }


# --- model directories ----------------------------------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NUMBER = (int, float)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


class _Checker:
    """Type checks of one JSON file's values, each failure an ArtifactError naming the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, message: str) -> ArtifactError:
        return ArtifactError(f"{self.path}: {message}; the model directory is damaged, train it again")

    def need(self, ok: bool, field: str, wanted: str, value: Any) -> None:
        if not ok:
            raise self.fail(f"{field} must be {wanted}, not {_kind(value)} ({_short(value)})")

    def obj(self, parent: Mapping, key: str, field: str, *, optional: bool = True, null: bool = False) -> dict:
        """parent[key], an object; {} when it is absent (if optional) or null (if null is allowed)."""
        if key not in parent:
            if optional:
                return {}
            raise self.fail(f"{field} is missing")
        value = parent[key]
        if value is None and null:
            return {}
        self.need(isinstance(value, dict), field, "an object", value)
        return value

    def typed(self, parent: Mapping, key: str, field: str, kinds: tuple, wanted: str, *, optional: bool = True):
        if key not in parent:
            if optional:
                return None
            raise self.fail(f"{field} is missing")
        value = parent[key]
        # Any float, NaN and infinities too: what reads these fields prints them, and a run's metrics may be NaN.
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        self.need(ok, field, wanted, value)
        return value


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_metadata(metadata: Any, path: Path, *, format_name: str, newest: int) -> dict[str, Any]:
    """metadata.json's values as lstm-cli uses them (info, predict, evaluate, explain)."""
    c = _Checker(path)
    if not isinstance(metadata, dict) or metadata.get("format") != format_name:
        raise ArtifactError(f'{path}: not lstm-cli model metadata (no "format": "{format_name}")')
    version = metadata.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{path}: format_version is missing or not a positive integer")
    if version > newest:
        return metadata  # the caller says which lstm-cli reads it
    labels = metadata.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f'{path}: "labels" must be a list of at least two strings')
    if len(set(labels)) != len(labels):
        raise c.fail('"labels" lists a label twice')
    for key in ("id", "created_at"):
        c.typed(metadata, key, f'"{key}"', (str,), "a string")
    c.typed(metadata, "parameters", '"parameters"', (int,), "an integer")
    versions = c.obj(metadata, "versions", '"versions"')
    for key in versions:
        c.typed(versions, key, f'"versions.{key}"', (str,), "a string")
    _check_config(c, metadata)
    vectorizer = c.obj(metadata, "vectorizer", '"vectorizer"')
    c.typed(vectorizer, "vocabulary_size", '"vectorizer.vocabulary_size"', (int,), "an integer")
    for key in ("vocabulary_file", "standardize", "split"):
        c.typed(vectorizer, key, f'"vectorizer.{key}"', (str,), "a string")
    c.typed(vectorizer, "max_length", '"vectorizer.max_length"', (int,), "an integer")
    _check_training(c, metadata)
    metrics = c.obj(metadata, "metrics", '"metrics"')
    for key in metrics:
        c.typed(metrics, key, f'"metrics.{key}"', _NUMBER, "a number")
    vectors = c.obj(metadata, "vectors", '"vectors"', null=True)
    c.typed(vectors, "dimension", '"vectors.dimension"', (int,), "an integer")
    c.typed(vectors, "frozen", '"vectors.frozen"', (bool,), "true or false")
    c.obj(metadata, "signature", '"signature"', null=True)
    engine = c.obj(metadata, "engine", '"engine"', null=True)
    for key in engine:
        c.typed(engine, key, f'"engine.{key}"', (str,), "a file name")
    calibration = c.obj(metadata, "calibration", '"calibration"', null=True)
    temperature = c.typed(calibration, "temperature", '"calibration.temperature"', _NUMBER, "a number")
    if temperature is not None:  # evaluate divides by it: a positive, finite number
        c.need(0 < temperature < math.inf, '"calibration.temperature"', "a positive number", temperature)
    c.typed(calibration, "method", '"calibration.method"', (str,), "a string")
    tuning = c.obj(metadata, "tuning", '"tuning"', null=True)
    c.typed(tuning, "trials", '"tuning.trials"', (list,), "a list")
    c.typed(tuning, "metric", '"tuning.metric"', (str,), "a string")
    c.typed(tuning, "budget_seconds", '"tuning.budget_seconds"', _NUMBER, "a number")
    if "files" in metadata:
        files = metadata["files"]
        c.need(isinstance(files, dict), '"files"', "an object", files)
        for name, digest in files.items():
            if not _plain_relative(name):
                raise ArtifactError(f"{path}: file entry {name!r} points outside the model directory")
            c.need(isinstance(digest, str) and bool(_HEX64.fullmatch(digest)), f'"files.{name}"', "a sha256",
                   digest)  # fmt: skip
    return metadata


def _check_config(c: _Checker, metadata: dict) -> None:
    import dataclasses

    from lstm_cli.config import TrainConfig

    config = c.obj(metadata, "config", '"config"')
    if not config:
        return
    known = {f.name for f in dataclasses.fields(TrainConfig)}  # a newer lstm-cli's keys are its own business
    try:
        TrainConfig.from_dict({k: v for k, v in config.items() if k in known})
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise c.fail(f'"config" is not a valid configuration ({e})') from None


def _check_training(c: _Checker, metadata: dict) -> None:
    training = c.obj(metadata, "training", '"training"')
    data = c.obj(training, "data", '"training.data"')
    c.typed(data, "rows", '"training.data.rows"', (int,), "an integer")
    for key in ("path", "sha256"):
        if data.get(key) is not None:
            c.typed(data, key, f'"training.data.{key}"', (str,), "a string")
    for key in ("epochs_run", "best_epoch", "averaged_epochs"):
        if training.get(key) is not None:
            c.typed(training, key, f'"training.{key}"', (int,), "an integer")
    c.typed(training, "seconds", '"training.seconds"', _NUMBER, "a number")
    c.typed(training, "device", '"training.device"', (str,), "a string")
    for key in ("history", "epoch_seconds"):
        c.typed(training, key, f'"training.{key}"', (list,), "a list")
    for key in ("rows", "skipped_rows", "validation", "averaging_val_loss"):
        c.obj(training, key, f'"training.{key}"')
    weights = c.obj(training, "class_weights", '"training.class_weights"', null=True)
    for key in weights:
        c.typed(weights, key, f'"training.class_weights.{key}"', _NUMBER, "a number")
    if training.get("averaged_window") is not None:
        window = training["averaged_window"]
        ok = isinstance(window, list) and len(window) == 2 and all(type(e) is int for e in window)
        c.need(ok, '"training.averaged_window"', "two epoch numbers", window)


def _plain_relative(name: Any) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def check_vocabulary(vocabulary: Any, path: Path, metadata: dict[str, Any]) -> list[str]:
    """vocabulary.json: distinct strings, padding and out-of-vocabulary first, as many as the metadata says."""
    c = _Checker(path)
    c.need(isinstance(vocabulary, list), "the vocabulary", "a list of strings", vocabulary)
    bad = next((v for v in vocabulary if not isinstance(v, str)), None) if vocabulary else None
    if bad is not None or not all(isinstance(v, str) for v in vocabulary):
        raise c.fail(f"the vocabulary must hold only strings, not {_kind(bad)} ({_short(bad)})")
    if len(vocabulary) < 2 or vocabulary[0] != "" or vocabulary[1] != "[UNK]":
        raise c.fail('the vocabulary must start with the padding "" and out-of-vocabulary "[UNK]" entries')
    if len(set(vocabulary)) != len(vocabulary):
        raise c.fail("the vocabulary lists a token twice")
    expected = metadata.get("vectorizer", {}).get("vocabulary_size")
    if expected is not None and expected != len(vocabulary):
        raise c.fail(f"it holds {len(vocabulary):,} tokens, metadata.json says {expected:,}")
    return vocabulary


# Per engine.json layer type: the config keys the numpy engine reads, and their JSON types.
_BOOL, _STR, _INT = (bool,), (str,), (int,)
_RECURRENT = {"activation": _STR, "recurrent_activation": _STR, "use_bias": _BOOL, "return_sequences": _BOOL,
              "go_backwards": _BOOL, "zero_output_for_mask": _BOOL}  # fmt: skip
_CONFIG_TYPES: dict[str, dict[str, tuple]] = {
    "Dense": {"activation": _STR, "use_bias": _BOOL},
    "LSTM": _RECURRENT,
    "GRU": {**_RECURRENT, "reset_after": _BOOL},
    "Bidirectional": {"merge_mode": (str, type(None))},
    "Concatenate": {"axis": _INT},
    "lstm_cli>TimePooling": {"mode": _STR},
    "lstm_cli>BigramIds": {"buckets": _INT},
    "lstm_cli>BigramVocabulary": {"size": _INT},
    "lstm_cli>FirstSteps": {"steps": _INT},
}


def check_engine(
    description: Any,
    headers: dict[str, Member],
    vocabulary: list[str],
    metadata: dict[str, Any],
    *,
    path: Path,
    weights_path: Path,
) -> dict[str, Any]:
    """engine.json against itself, its weights' headers (before any array is read), the vocabulary and the
    metadata: every field of the type the engine reads, every reference to an earlier node, every weight
    present, embedding tables as long as the ids they look up, and the output as wide as the labels."""
    c = _Checker(path)
    c.need(isinstance(description, dict), "the engine description", "an object", description)
    tokenizer = c.obj(description, "tokenizer", '"tokenizer"', optional=False)
    max_length = c.typed(tokenizer, "max_length", '"tokenizer.max_length"', _INT, "an integer", optional=False)
    c.typed(tokenizer, "standardize", '"tokenizer.standardize"', _STR, "a string")
    config_length = metadata.get("config", {}).get("max_length")
    if max_length < 1 or (config_length is not None and max_length != config_length):
        raise c.fail(f'"tokenizer.max_length" is {max_length}, metadata.json says {config_length}')
    network = c.obj(description, "network", '"network"', optional=False)
    nodes = c.typed(network, "nodes", '"network.nodes"', (list,), "a list", optional=False)
    for key in ("inputs", "outputs"):
        names = c.typed(network, key, f'"network.{key}"', (list,), "a list of node names", optional=False)
        c.need(all(isinstance(n, str) for n in names), f'"network.{key}"', "a list of node names", names)
    seen: dict[str, dict] = {}
    for i, node in enumerate(nodes):
        where = f'"network.nodes[{i}]"'
        c.need(isinstance(node, dict), where, "an object", node)
        name = c.typed(node, "name", f"{where}.name", _STR, "a string", optional=False)
        kind = c.typed(node, "type", f"{where}.type", _STR, "a string", optional=False)
        config = c.obj(node, "config", f"{where}.config", optional=False)
        c.typed(node, "args", f"{where}.args", (list,), "a list", optional=False)
        c.obj(node, "kwargs", f"{where}.kwargs", optional=False)
        weights = c.typed(node, "weights", f"{where}.weights", (list,), "a list of weight names", optional=False)
        if name in seen:
            raise c.fail(f"node {name!r} is defined twice")
        for key, kinds in _CONFIG_TYPES.get(kind, {}).items():
            c.typed(config, key, f"{where}.config.{key}", kinds, _wanted(kinds))
        if kind == "Bidirectional":
            for key in ("layer", "backward_layer"):
                inner = c.obj(config, key, f"{where}.config.{key}", optional=False)
                c.typed(inner, "class_name", f"{where}.config.{key}.class_name", _STR, "a string", optional=False)
                inner_config = c.obj(inner, "config", f"{where}.config.{key}.config", optional=False)
                for k, kinds in _CONFIG_TYPES.get(inner["class_name"], {}).items():
                    c.typed(inner_config, k, f"{where}.config.{key}.config.{k}", kinds, _wanted(kinds))
        for ref in _refs([node["args"], node["kwargs"]]):
            target, index = ref.get("tensor"), ref.get("index")
            if not isinstance(target, str) or target not in seen or type(index) is not int:
                raise c.fail(f"node {name!r} refers to {_short(ref)}, which is not an earlier node's output")
        for weight in weights:
            if not isinstance(weight, str) or weight not in headers:
                raise ArtifactError(f"{weights_path}: has no array {_short(weight)}, which {path.name} node {name!r} "
                                    "uses; the model directory is damaged, train it again")  # fmt: skip
        seen[name] = node
    for key in ("inputs", "outputs"):
        for name in network[key]:
            if name not in seen:
                raise c.fail(f'"network.{key}" names {name!r}, which is not a node')
    _check_shapes(c, seen, network, headers, vocabulary, metadata, weights_path)
    return description


def _wanted(kinds: tuple) -> str:
    return {_BOOL: "true or false", _STR: "a string", _INT: "an integer"}.get(kinds, "a string or null")


def _refs(value) -> list[dict]:
    if isinstance(value, dict):
        return [value] if "tensor" in value else [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _check_shapes(c, nodes: dict, network: dict, headers: dict[str, Member], vocabulary, metadata, weights_path):
    """Shapes that the declared headers must have, checked before the arrays are read."""

    def largest_id(name: str, depth: int = 0) -> int | None:
        """The largest id node `name` can output, when it is a chain of ids from the input (else None)."""
        node = nodes[name]
        if name in network["inputs"]:
            return len(vocabulary) - 1
        sources = [r["tensor"] for r in _refs(node["args"])]
        if depth > len(nodes) or len(sources) != 1:
            return None
        if node["type"] == "lstm_cli>BigramIds" and isinstance(node["config"].get("buckets"), int):
            return node["config"]["buckets"] - 1
        if node["type"] == "lstm_cli>BigramVocabulary" and isinstance(node["config"].get("size"), int):
            return node["config"]["size"] - 1
        if node["type"] == "lstm_cli>FirstSteps":
            return largest_id(sources[0], depth + 1)
        return None

    for name, node in nodes.items():
        shapes = [headers[w].shape for w in node["weights"]]
        if node["type"] == "Embedding":
            sources = [r["tensor"] for r in _refs(node["args"])]
            top = largest_id(sources[0]) if len(sources) == 1 else None
            if len(shapes) != 1 or len(shapes[0]) != 2 or (top is not None and shapes[0][0] <= top):
                raise ArtifactError(
                    f"{weights_path}: the table of {c.path.name} node {name!r} has shape {shapes}, not "
                    f"[{'more than ' + str(top) if top is not None else 'rows'}, width]; the model directory "
                    "is damaged, train it again"
                )
    labels = len(metadata["labels"])
    output = nodes[network["outputs"][0]] if len(network["outputs"]) == 1 else None
    if output is not None and output["type"] == "Dense":
        shapes = [headers[w].shape for w in output["weights"]]
        if not shapes or len(shapes[0]) != 2 or shapes[0][1] != labels:
            width = shapes[0][1] if shapes and len(shapes[0]) == 2 else "?"
            raise ArtifactError(
                f"{weights_path}: the network has {width} outputs, but metadata.json lists {labels} labels; "
                "the model directory is damaged, train it again"
            )


def check_outputs(probabilities, rows: int, labels: int, path: Path) -> None:
    """The network's outputs (a numpy array) on a probe batch: `rows` rows of `labels` finite probabilities."""
    import numpy as np

    if probabilities.shape != (rows, labels):
        raise ArtifactError(
            f"{path}: the network gives {probabilities.shape[-1] if probabilities.ndim == 2 else '?'} outputs, "
            f"but metadata.json lists {labels} labels; the model directory is damaged, train it again"
        )
    if not np.isfinite(probabilities).all():
        raise ArtifactError(f"{path}: the network's weights give non-finite outputs; train the model again")
