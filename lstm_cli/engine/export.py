"""Describe a Keras functional network for the numpy engine: plain JSON plus named float32 (and int32) arrays.

Called at save time with the live Keras model; it only reads the model (get_config, weights), so this
module imports neither Keras nor TensorFlow."""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_cli.engine.network import FORMAT, FORMAT_VERSION
from lstm_cli.engine.tokenizer import OOV_ID, PAD_ID, SPLIT


def _plain(value) -> Any:
    """Keras config -> JSON: tuples become lists, tensor references become {"tensor", "index"}."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            name, node_index, tensor_index = value["config"]["keras_history"]
            return {"tensor": name if node_index == 0 else f"{name}#{node_index}", "index": tensor_index}
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(
    network, *, vocabulary_file: str, max_length: int, standardize: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(engine description, weights by name) for a Keras functional `network` over token ids, whose texts are
    standardized by `standardize` (lstm_cli.engine.tokenizer.STANDARDIZATIONS)."""
    config = network.get_config()
    operations = {op.name: op for op in network.operations}
    nodes, weights = [], {}
    for layer in config["layers"]:
        if len(layer["inbound_nodes"]) > 1:
            raise ValueError(f"layer {layer['name']!r} is shared; the engine describes each layer once")
        inbound = layer["inbound_nodes"][0] if layer["inbound_nodes"] else {"args": [], "kwargs": {}}
        names = []
        for variable in getattr(operations[layer["name"]], "weights", []):
            value = np.asarray(variable.numpy())
            # Integer weights (BigramVocabulary's buckets) stay integers; every other one is float32.
            weights[variable.path] = value.astype(np.int32 if value.dtype.kind in "iu" else np.float32)
            names.append(variable.path)
        nodes.append(
            {
                "name": layer["name"],
                # Keras' own layers by class name; registered ones (lstm-cli's) as "package>Name".
                "type": layer.get("registered_name") or layer["class_name"],
                "config": _plain(layer["config"]),
                "args": _plain(inbound["args"]),
                "kwargs": _plain(inbound["kwargs"]),
                "weights": names,
            }
        )
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer": {
            "vocabulary_file": vocabulary_file,
            "standardize": standardize,
            "split": SPLIT,
            "max_length": max_length,
            "pad_id": PAD_ID,
            "oov_id": OOV_ID,
            "empty_text": "one out-of-vocabulary token",
        },
        "network": {
            "inputs": [name for name, _, _ in config["input_layers"]] if _nested(config["input_layers"])
            else [config["input_layers"][0]],
            "outputs": [name for name, _, _ in config["output_layers"]] if _nested(config["output_layers"])
            else [config["output_layers"][0]],
            "nodes": nodes,
        },
    }  # fmt: skip
    return description, weights


def _nested(value) -> bool:
    return bool(value) and isinstance(value[0], list | tuple)
