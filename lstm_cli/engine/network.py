"""A small interpreter for the network description that `engine.export` writes at save time.

The description is plain JSON: the Keras functional graph as a list of nodes (layer type, its Keras
config, the nodes that feed it, the names of its weight arrays). Running it dispatches on the type name
to one numpy function in `layers`; nothing in a model directory is ever executed as code. A type or
setting this module does not know raises `Unsupported`, and lstm-cli serves that model with TensorFlow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lstm_cli.engine import layers

FORMAT = "lstm-cli-engine"
FORMAT_VERSION = 1

# Keras class name -> numpy function (None: the graph's input)
LAYERS = {
    "InputLayer": None,
    "Embedding": layers.embedding,
    "NotEqual": layers.not_equal,
    "LSTM": layers.lstm,
    "GRU": layers.gru,
    "Bidirectional": layers.bidirectional,
    "Dense": layers.dense,
    "Dropout": layers.identity,
    "SpatialDropout1D": layers.identity,
    "Concatenate": layers.concatenate,
    "lstm_cli>TimePooling": layers.time_pooling,
    "lstm_cli>BigramIds": layers.bigram_ids,
    "lstm_cli>BigramVocabulary": layers.bigram_vocabulary,
    "lstm_cli>FirstSteps": layers.first_steps,
}

CACHED = ("LSTM", "GRU", "Bidirectional")  # layers that keep projected token rows between calls


class Unsupported(Exception):
    """The description uses something the numpy engine cannot run exactly as Keras does."""


def _policy(config: dict[str, Any]) -> str | None:
    dtype = config.get("dtype")
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name")
    return dtype


def _check_recurrent(name: str, kind: str, config: dict[str, Any]) -> None:
    if kind not in layers.RECURRENT:
        raise Unsupported(f"layer {name!r} wraps a {kind}, which the numpy engine does not run")
    for key in ("activation", "recurrent_activation"):
        if config.get(key) not in layers.ACTIVATIONS:
            raise Unsupported(f"layer {name!r}: {key} {config.get(key)!r} is not supported")
    if config.get("return_state") or config.get("stateful"):
        raise Unsupported(f"layer {name!r}: return_state/stateful recurrent layers are not supported")
    if kind == "GRU" and not config.get("reset_after", True):
        raise Unsupported(f"layer {name!r}: GRU with reset_after=False is not supported")


def check_node(node: dict[str, Any]) -> None:
    """Raise `Unsupported` unless this node runs in numpy exactly as in Keras."""
    name, kind, config = node["name"], node["type"], node["config"]
    if kind not in LAYERS:
        raise Unsupported(f"layer {name!r} is a {kind}, which the numpy engine does not run")
    if kind not in ("InputLayer", "NotEqual") and _policy(config) not in (None, "float32"):
        raise Unsupported(f"layer {name!r} computes in {_policy(config)}; the numpy engine computes in float32")
    if config.get("lora_rank") or config.get("quantization_config"):
        raise Unsupported(f"layer {name!r} is LoRA-adapted or quantized")
    if kind == "lstm_cli>TimePooling" and config.get("mode") not in ("max", "mean"):
        raise Unsupported(f"layer {name!r}: pooling mode {config.get('mode')!r} is not supported")
    if kind == "lstm_cli>BigramIds" and not (isinstance(config.get("buckets"), int) and config["buckets"] >= 2):
        raise Unsupported(f"layer {name!r}: bigram buckets {config.get('buckets')!r} is not an integer >= 2")
    if kind == "lstm_cli>BigramVocabulary" and not (isinstance(config.get("size"), int) and config["size"] >= 1):
        raise Unsupported(f"layer {name!r}: size {config.get('size')!r} is not an integer >= 1")
    if kind == "lstm_cli>FirstSteps" and not (isinstance(config.get("steps"), int) and config["steps"] >= 1):
        raise Unsupported(f"layer {name!r}: steps {config.get('steps')!r} is not an integer >= 1")
    if kind == "Dense" and config.get("activation") not in layers.ACTIVATIONS:
        raise Unsupported(f"layer {name!r}: activation {config.get('activation')!r} is not supported")
    if kind in layers.RECURRENT:
        _check_recurrent(name, kind, config)
    if kind == "Bidirectional":
        if config.get("merge_mode") not in ("concat", "sum", "ave", "mul"):
            raise Unsupported(f"layer {name!r}: merge_mode {config.get('merge_mode')!r} is not supported")
        for inner in (config["layer"], config["backward_layer"]):
            _check_recurrent(name, inner["class_name"], inner["config"])
    for ref in _refs([node["args"], node["kwargs"]]):
        if ref["index"] != 0:
            raise Unsupported(f"layer {name!r} reads output {ref['index']} of {ref['tensor']!r}")
    if set(node["kwargs"]) - {"mask", "training"}:
        raise Unsupported(f"layer {name!r} is called with {sorted(node['kwargs'])}")


def _check_kept(node: dict[str, Any], arrays: list[np.ndarray]) -> None:
    """A BigramVocabulary's one weight: `size` int32 buckets, strictly increasing from 0 (searchsorted's premise)."""
    kept = arrays[0] if len(arrays) == 1 else None
    if kept is None or kept.dtype != np.int32 or kept.shape != (node["config"]["size"],):
        raise Unsupported(f"layer {node['name']!r}: its kept buckets are not {node['config']['size']} int32 values")
    if kept[0] != 0 or (np.diff(kept) <= 0).any():
        raise Unsupported(f"layer {node['name']!r}: its kept buckets are not increasing from 0")


def _resolve(value, values: dict[str, Any]):
    """`value` with each reference to a node's output replaced by that output.

    A plain function, not a closure inside `Network.__call__`: a closure that calls itself is a reference
    cycle, which kept every batch's intermediate arrays alive until Python's cycle collector ran (measured:
    490 MiB held for 50,000 lines, and ten times the page faults of reusing freed memory)."""
    if isinstance(value, dict) and "tensor" in value:
        return values[value["tensor"]]
    if isinstance(value, list):
        return [_resolve(v, values) for v in value]
    return value


def _refs(value) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value] if "tensor" in value else [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


class Network:
    """The classifier over right-padded token ids: ids [batch, time] int -> probabilities [batch, labels]."""

    def __init__(self, description: dict[str, Any], weights: Mapping[str, np.ndarray]):
        if description.get("format") != FORMAT or description.get("format_version") != FORMAT_VERSION:
            raise Unsupported(
                f"engine description format {description.get('format')!r} v{description.get('format_version')}"
            )
        self.nodes = description["network"]["nodes"]
        self.inputs = description["network"]["inputs"]
        self.outputs = description["network"]["outputs"]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise Unsupported("the network must have one input and one output")
        for node in self.nodes:
            check_node(node)
        self.weights = {}
        for node in self.nodes:
            arrays = [weights[key] for key in node["weights"]]
            if node["type"] == "lstm_cli>BigramVocabulary":
                _check_kept(node, arrays)
            elif any(a.dtype != np.float32 for a in arrays):
                raise Unsupported(f"layer {node['name']!r} has weights that are not float32")
            self.weights[node["name"]] = arrays
        self.caches = {node["name"]: layers.Cache() for node in self.nodes if node["type"] in CACHED}

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        values: dict[str, Any] = {self.inputs[0]: ids}
        # exp overflow in a saturated softmax/sigmoid is harmless (gives 0 or 1); don't warn about it.
        with np.errstate(over="ignore", under="ignore"):
            for node in self.nodes:
                run = LAYERS[node["type"]]
                if run is None:
                    continue
                args = _resolve(node["args"], values)
                mask = _resolve(node["kwargs"].get("mask"), values)
                if node["name"] in self.caches:
                    cache = self.caches[node["name"]]
                    values[node["name"]] = _per_distinct_row(run, node["config"], self.weights[node["name"]], *args,
                                                             mask=mask, cache=cache)  # fmt: skip
                else:
                    values[node["name"]] = run(node["config"], self.weights[node["name"]], *args, mask=mask)
        return values[self.outputs[0]]


# Rows shorter than this run as they are: looking for repeats cost streamed SST-2 sentences 15% (its training
# file repeats phrases, and each batch's search holds the GIL), and a short row costs little to run again.
DISTINCT_ROWS_FROM = 64


def _per_distinct_row(run, config: dict[str, Any], weights: list[np.ndarray], x, mask=None, cache=None) -> np.ndarray:
    """A recurrent layer run once for each distinct row of token ids (and mask), its output copied to repeats.

    Rows repeat when `explain` removes, one at a time, each token past what the recurrent layers read
    (--recurrent-length): all those variants give the LSTM the same input, and only the pooled views differ.
    A vectorised hash finds that no row repeats (the usual case) for a few microseconds a batch; rows shorter
    than DISTINCT_ROWS_FROM time steps are not searched."""
    ids = getattr(x, "token_ids", None)
    if ids is None or len(ids) < 2 or ids.shape[1] < DISTINCT_ROWS_FROM:
        return run(config, weights, x, mask=mask, cache=cache)
    key = ids if mask is None else np.concatenate([ids, mask.astype(ids.dtype)], axis=1)
    key = np.ascontiguousarray(key, dtype=np.int64)
    hashes = key @ _HASH_WEIGHTS[: key.shape[1]] if key.shape[1] <= len(_HASH_WEIGHTS) else None
    if hashes is not None and (np.diff(np.sort(hashes)) != 0).all():
        return run(config, weights, x, mask=mask, cache=cache)
    first: dict[bytes, int] = {}
    inverse = np.fromiter((first.setdefault(row.tobytes(), i) for i, row in enumerate(key)), np.intp, len(key))
    if len(first) == len(key):
        return run(config, weights, x, mask=mask, cache=cache)
    picked = np.fromiter(first.values(), np.intp, len(first))
    distinct = x[picked]
    distinct.token_ids, distinct.table = ids[picked], x.table
    out = run(config, weights, distinct, mask=None if mask is None else mask[picked], cache=cache)
    position = np.empty(len(key), np.intp)
    position[picked] = np.arange(len(picked))
    return out[position[inverse]]


# A row's hash: its ids' sum weighted by these odd 64-bit numbers, wrapping (equal rows, equal hashes).
_HASH_WEIGHTS = (np.arange(1, 8193, dtype=np.int64) * np.int64(-7046029254386353131)) | 1
