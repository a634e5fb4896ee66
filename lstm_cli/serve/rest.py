"""TF Serving's REST API for an lstm-cli model: predict requests parsed, responses and metadata written as
TensorFlow Serving writes them for the model's SavedModel (tensorflow_serving/util/json_tensor.cc).

Plain functions over bytes and numpy arrays, no web framework: the app (lstm_cli.serve.app) only routes."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

# The SavedModel's signatures (lstm_cli.artifact._write_archive): Keras' ExportArchive writes the endpoint
# as "serve" and again as "serving_default"; TF Serving answers to either name, and "" means the default.
SIGNATURES = ("serving_default", "serve")
INPUT = "text"
# Output tensors in the order TF Serving lists them (the signature's map, sorted by name).
OUTPUTS = ("label", "label_names", "probabilities", "probability")
VERSION = "1"  # the version folder the docs mount the model directory as (/models/NAME/1)


class BadRequest(Exception):
    """A request TF Serving would answer with 400 and this message as {"error": ...}."""


@dataclass
class PredictRequest:
    texts: list[str]
    columnar: bool  # "inputs" (answered as "outputs") rather than "instances" (answered as "predictions")


def parse_predict(body: bytes) -> PredictRequest:
    """The texts of a :predict request body, in row ({"instances": [...]}) or columnar ({"inputs": ...}) form."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" at offset {e.pos}" if isinstance(e, json.JSONDecodeError) else ""
        raise BadRequest(f"JSON Parse error: {getattr(e, 'msg', None) or e.reason}{where}") from None
    except RecursionError:
        raise BadRequest("JSON Parse error: nested too deeply") from None
    if not isinstance(request, dict):
        raise BadRequest(f"JSON Value: {_shown(request)} Is not object")
    signature = request.get("signature_name", "")
    if not isinstance(signature, str):
        raise BadRequest("'signature_name' key must be a string value")
    if signature and signature not in SIGNATURES:
        raise BadRequest(f'Serving signature name: "{signature}" not found in signature def')
    if "instances" in request and "inputs" in request:
        raise BadRequest("expecting only one of 'inputs' or 'instances' keys, not both")
    if "instances" in request:
        return PredictRequest(_instances(request["instances"]), columnar=False)
    if "inputs" in request:
        return PredictRequest(_inputs(request["inputs"]), columnar=True)
    raise BadRequest("Missing 'inputs' or 'instances' key")


def _instances(instances: Any) -> list[str]:
    if not isinstance(instances, list):
        raise BadRequest("Expecting 'instances' to be a list/array")
    if not instances:
        raise BadRequest("No values in 'instances' array")
    # A list of the one input's values, or of objects naming it ({"text": ...}), never a mix.
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    texts = []
    for i, item in enumerate(instances):
        if named:
            if not isinstance(item, dict) or _is_b64(item):
                raise BadRequest(f"Expecting object but got {_json_type(item)} at item {i} of 'instances'")
            if set(item) != {INPUT}:
                raise BadRequest(
                    f"Failed to process element: {i} of 'instances' list. JSON object: {_shown(item)} "
                    f"keys must be equal to: {INPUT}"
                )
            item = item[INPUT]
        elif isinstance(item, dict) and not _is_b64(item):
            raise BadRequest(f"Expecting value/list but got object at item {i} of 'instances'")
        texts.append(_text(item, f"element {i} of 'instances'"))
    return texts


def _inputs(inputs: Any) -> list[str]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        if INPUT not in inputs:
            raise BadRequest(f"Missing named input: {INPUT} in 'inputs' object")
        unknown = sorted(set(inputs) - {INPUT})
        if unknown:
            raise BadRequest(f"'inputs' names {', '.join(map(repr, unknown))}; the model's only input is {INPUT!r}")
        inputs = inputs[INPUT]
    if not isinstance(inputs, list):  # the signature's input is a 1-D batch of strings
        raise BadRequest(f"JSON Value: {_shown(inputs)} is not a list of strings, as input {INPUT!r} must be")
    return [_text(item, f"element {i} of 'inputs'") for i, item in enumerate(inputs)]


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if _is_b64(value):  # binary strings, as TF Serving takes them: {"b64": "..."}
        try:
            data = base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}: unable to base64 decode") from None
        return data.decode("utf-8", "replace")  # as predict reads undecodable bytes
    raise BadRequest(f"{where}: JSON Value: {_shown(value)} Type: {_json_type(value)} is not of expected type: string")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _json_type(value: Any) -> str:
    kinds = {dict: "Object", list: "Array", str: "String", bool: "Bool", type(None): "Null"}
    return kinds.get(type(value), "Number")


def _shown(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decimals(values: np.ndarray) -> list[str]:
    """float32 values as TF Serving writes them: six significant digits when that reads back as the same float32
    ("%g"), else nine; ".0" after a whole number; NaN and Infinity as words."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    if not np.isfinite(flat).all():
        return [_decimal(float(v)) for v in flat]
    short = [f"{v:g}" for v in flat.tolist()]
    exact = np.array(short, dtype=np.float64).astype(np.float32) == flat
    out = []
    for text, ok, v in zip(short, exact.tolist(), flat.tolist(), strict=True):
        if not ok:
            text = f"{v:.9g}"
        out.append(text if "." in text or "e" in text else text + ".0")
    return out


def _decimal(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "Infinity" if v > 0 else "-Infinity"
    return decimals(np.array([v], dtype=np.float32))[0]


class Responses:
    """JSON bodies for one model: its labels quoted once, numbers written per request. `thresholds`: a
    multi-label model's, one per label; its SavedModel's signature adds "selected" (probabilities at or over
    them), and so do these answers."""

    def __init__(self, name: str, labels: list[str], thresholds: np.ndarray | None = None):
        self.name = name
        self.labels = labels
        self.thresholds = thresholds
        self._quoted = [json.dumps(label) for label in labels]  # ASCII escapes: valid UTF-8 whatever a label holds
        self._names = "[" + ",".join(self._quoted) + "]"

    def predictions(self, probabilities: np.ndarray, *, columnar: bool) -> bytes:
        """The :predict response: {"predictions": [one object per text]} or {"outputs": {one list per output}}."""
        rows, width = probabilities.shape if probabilities.ndim == 2 else (0, len(self.labels))
        best = probabilities.argmax(axis=1) if rows else np.zeros(0, np.int64)
        numbers = decimals(probabilities)
        top = decimals(probabilities[np.arange(rows), best]) if rows else []
        vectors = ["[" + ",".join(numbers[r * width : (r + 1) * width]) + "]" for r in range(rows)]
        labels = [self._quoted[i] for i in best.tolist()]
        selected = [""] * rows
        if self.thresholds is not None:
            chosen = np.asarray(probabilities, np.float32) >= self.thresholds
            selected = ["[" + ",".join("true" if x else "false" for x in row) + "]" for row in chosen.tolist()]
        if columnar:
            more = f',"selected":[{",".join(selected)}]' if self.thresholds is not None else ""
            body = (
                f'{{"outputs":{{"label":[{",".join(labels)}],"label_names":[{",".join([self._names] * rows)}],'
                f'"probabilities":[{",".join(vectors)}],"probability":[{",".join(top)}]{more}}}}}'
            )
        else:
            items = (
                f'{{"label":{label},"label_names":{self._names},"probabilities":{vector},"probability":{p}'
                + (f',"selected":{chosen}' if self.thresholds is not None else "")
                + "}"
                for label, vector, p, chosen in zip(labels, vectors, top, selected, strict=True)
            )
            body = f'{{"predictions":[{",".join(items)}]}}'
        return body.encode("utf-8")

    def status(self) -> dict[str, Any]:
        """GET /v1/models/NAME: GetModelStatusResponse, one version, loaded and serving."""
        return {
            "model_version_status": [
                {"version": VERSION, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }

    def metadata(self) -> dict[str, Any]:
        """GET /v1/models/NAME/metadata: GetModelMetadataResponse, the SavedModel's signatures as TF Serving
        prints them (tensor names as lstm-cli's export writes them; tests/test_serve.py reads the real ones)."""

        def tensor(dtype: str, dims: list[int] | None, name: str) -> dict[str, Any]:
            shape = {"dim": [{"size": str(d), "name": ""} for d in dims or []], "unknown_rank": dims is None}
            return {"dtype": dtype, "tensor_shape": shape, "name": name}

        def signature(input_name: str, call: str) -> dict[str, Any]:
            n = len(self.labels)
            return {
                "inputs": {INPUT: tensor("DT_STRING", [-1], input_name)},
                "outputs": {
                    "label": tensor("DT_STRING", [-1], f"{call}:0"),
                    "label_names": tensor("DT_STRING", [-1, n], f"{call}:1"),
                    "probabilities": tensor("DT_FLOAT", [-1, n], f"{call}:2"),
                    "probability": tensor("DT_FLOAT", [-1], f"{call}:3"),
                    **({"selected": tensor("DT_BOOL", [-1, n], f"{call}:4")} if self.thresholds is not None else {}),
                },
                "method_name": "tensorflow/serving/predict",
                "defaults": {},
            }

        init = {
            "inputs": {},
            "outputs": {"__saved_model_init_op": tensor("DT_INVALID", None, "NoOp")},
            "method_name": "",
            "defaults": {},
        }
        signatures = {
            "__saved_model_init_op": init,
            "serve": signature("serve_text:0", "StatefulPartitionedCall"),
            "serving_default": signature("serving_default_text:0", "StatefulPartitionedCall_1"),
        }
        return {
            "model_spec": {"name": self.name, "signature_name": "", "version": VERSION},
            "metadata": {"signature_def": {"signature_def": signatures}},
        }
