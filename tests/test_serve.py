"""`lstm-cli serve`: TF Serving's REST API on the numpy engine, in process (Starlette's TestClient) and, for the
signal and body-limit behaviour, as a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from typer.testing import CliRunner

from lstm_cli.cli import app as cli_app
from lstm_cli.predict import Predictor
from lstm_cli.serve.app import build_app
from lstm_cli.serve.batcher import MicroBatcher
from lstm_cli.serve.metrics import Metrics
from lstm_cli.serve.rest import Responses, decimals

runner = CliRunner()
NAME = "toy"
TEXTS = ["good great", "awful broken", "", "okay plain fair", 'é ü 好 "quoted" \\ back', "the " * 500]


@pytest.fixture(scope="module")
def predictor(trained_model) -> Predictor:
    return Predictor(trained_model)


def client_for(predictor: Predictor, **options) -> TestClient:
    app = build_app([predictor.probabilities], name=NAME, labels=predictor.labels, **options)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(predictor):
    with client_for(predictor) as c:  # `with`: runs the lifespan, which starts the batcher
        yield c


def url(verb: str = "") -> str:
    return f"/v1/models/{NAME}{verb}"


# --- routes ------------------------------------------------------------------------------------------------


def test_model_status_answers_as_tf_serving(client):
    expected = {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for path in (url(), url("/versions/1")):
        response = client.get(path)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json() == expected
    assert client.get("/healthz").json() == {"status": "ok"}


def test_metadata_is_the_saved_models_serving_signatures(client, trained_model):
    """The signatures as TF Serving prints them, read from the model's own saved_model.pb."""
    from google.protobuf.json_format import MessageToDict
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((trained_model / "saved_model.pb").read_bytes())
    options = {"preserving_proto_field_name": True}
    try:
        real = MessageToDict(saved.meta_graphs[0], always_print_fields_with_no_presence=True, **options)
    except TypeError:  # protobuf < 5.26
        real = MessageToDict(saved.meta_graphs[0], including_default_value_fields=True, **options)
    for path in (url("/metadata"), url("/versions/1/metadata")):
        response = client.get(path)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
        ours = body["metadata"]["signature_def"]["signature_def"]
        theirs = real["signature_def"]
        for signature in theirs.values():
            signature.setdefault("defaults", {})  # a newer field: TF Serving prints it empty
        assert ours == theirs


def test_predict_row_format_gives_the_engines_probabilities(client, predictor):
    response = client.post(url(":predict"), json={"instances": TEXTS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = predictor.probabilities(TEXTS)
    assert len(predictions) == len(TEXTS)
    for row, probabilities in zip(predictions, expected, strict=True):
        assert list(row) == ["label", "label_names", "probabilities", "probability"]
        assert row["label_names"] == predictor.labels
        np.testing.assert_array_equal(np.float32(row["probabilities"]), probabilities)
        assert row["label"] == predictor.labels[int(probabilities.argmax())]
        assert np.float32(row["probability"]) == probabilities.max()
    # named instances, base64 strings and the signature's name give the same answer
    same = [
        {"instances": [{"text": t} for t in TEXTS]},
        {"instances": [{"b64": base64.b64encode(t.encode()).decode()} for t in TEXTS]},
        {"signature_name": "serving_default", "instances": TEXTS},
        {"signature_name": "serve", "instances": TEXTS},
    ]
    for body in same:
        assert client.post(url("/versions/1:predict"), json=body).json() == {"predictions": predictions}, body


@pytest.mark.parametrize("inputs", [{"text": TEXTS}, TEXTS])
def test_predict_columnar_format(client, predictor, inputs):
    response = client.post(url(":predict"), json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = predictor.probabilities(TEXTS)
    assert list(outputs) == ["label", "label_names", "probabilities", "probability"]
    np.testing.assert_array_equal(np.float32(outputs["probabilities"]), expected)
    np.testing.assert_array_equal(np.float32(outputs["probability"]), expected.max(axis=1))
    assert outputs["label"] == [predictor.labels[i] for i in expected.argmax(axis=1)]
    assert outputs["label_names"] == [predictor.labels] * len(TEXTS)
    empty = client.post(url(":predict"), json={"inputs": []}).json()
    assert empty == {"outputs": {"label": [], "label_names": [], "probabilities": [], "probability": []}}


def test_floats_are_written_as_tf_serving_writes_them():
    """Six significant digits when they read back as the same float32, else nine (absl::StrCat, then %.9g)."""
    values = np.array([0.5, 1.0, 0.2, 1e-05, 1 / 3, 0.0, 2.5e-10, float("nan")], np.float32)
    assert decimals(values) == ["0.5", "1.0", "0.2", "1e-05", "0.333333343", "0.0", "2.5e-10", "NaN"]
    rng = np.random.default_rng(0)
    random = rng.dirichlet(np.ones(3), 500).astype(np.float32)
    np.testing.assert_array_equal(np.array([float(x) for x in decimals(random)], np.float32), random.ravel())


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.text(min_size=1, max_size=12), min_size=2, max_size=5, unique=True),
    seed=st.integers(0, 2**16),
)
def test_any_label_comes_back_exactly_in_valid_json(labels, seed):
    probabilities = np.random.default_rng(seed).dirichlet(np.ones(len(labels)), 3).astype(np.float32)
    responses = Responses(NAME, labels)
    for columnar in (False, True):
        body = responses.predictions(probabilities, columnar=columnar)
        parsed = json.loads(body.decode("utf-8"))  # valid UTF-8 and JSON whatever the labels hold
        rows = parsed["outputs"]["label"] if columnar else [p["label"] for p in parsed["predictions"]]
        assert rows == [labels[i] for i in probabilities.argmax(axis=1)]
        names = parsed["outputs"]["label_names"] if columnar else [p["label_names"] for p in parsed["predictions"]]
        assert names == [labels] * 3


# --- bad requests ------------------------------------------------------------------------------------------

BAD = [
    (b"{bad", "JSON Parse error"),
    (b"", "JSON Parse error"),
    (b"\xff\xfe", "JSON Parse error"),
    (b"[1, 2]", "Is not object"),
    (b'{"instances": [1]}', "Type: Number is not of expected type: string"),
    (b'{"instances": ["a", null]}', "element 1 of 'instances'"),
    (b'{"instances": ["a", ["b"]]}', "Type: Array"),
    (b'{"instances": "a"}', "list/array"),
    (b'{"instances": []}', "No values in 'instances'"),
    (b'{"instances": [{"text": "a", "extra": "b"}]}', "keys must be equal to: text"),
    (b'{"instances": [{"text": "a"}, "b"]}', "Expecting object"),
    (b'{"instances": [{"b64": "not base64!"}]}', "base64"),
    (b'{"inputs": {"txt": ["a"]}}', "Missing named input: text"),
    (b'{"inputs": "a"}', "is not a list of strings"),
    (b'{"inputs": [true]}', "Type: Bool"),
    (b'{"instances": ["a"], "inputs": ["a"]}', "not both"),
    (b'{"signature_name": "other", "instances": ["a"]}', 'signature name: "other" not found'),
    (b'{"signature_name": 3, "instances": ["a"]}', "signature_name"),
    (b"{}", "Missing 'inputs' or 'instances' key"),
    (b'{"instances": [{"x": "\\ud800"}]}', "keys must be equal to"),
]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_a_bad_request_is_a_400_with_an_error_and_harms_no_other(client, body, message):
    response = client.post(url(":predict"), content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"]
    assert message in response.json()["error"]
    assert "Traceback" not in response.text
    assert client.post(url(":predict"), json={"instances": ["good"]}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v1/models/other", 404, "Servable not found for request: Latest(other)"),
        ("POST", "/v1/models/other:predict", 404, "Servable not found"),
        ("GET", url("/versions/2"), 404, f"Specific({NAME}, 2)"),
        ("GET", url("/versions/x"), 400, "to numeric"),
        ("GET", url("/labels/stable"), 404, "Servable not found"),
        ("GET", "/v2/anything", 404, "Malformed request"),
        ("GET", url(":predict"), 405, "Malformed request"),
        ("POST", url(), 405, "Malformed request"),
        ("POST", url(":classify"), 400, "use :predict"),
        ("POST", url(":explode"), 404, "use :predict"),
    ],
)
def test_unknown_models_and_routes(client, method, path, status, message):
    response = client.request(method, path, content=b'{"instances": ["a"]}')
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_a_body_over_the_limit_is_413_before_it_is_read(predictor):
    with client_for(predictor, max_body=1000) as small:
        declared = small.post(url(":predict"), json={"instances": ["x" * 2000]})
        assert declared.status_code == 413
        assert "limit of 1,000 bytes" in declared.json()["error"]

        def chunks():  # no Content-Length: refused while reading
            yield b'{"instances": ["'
            for _ in range(40):
                yield b"x" * 100

        streamed = small.post(url(":predict"), content=chunks())
        assert streamed.status_code == 413
        assert small.post(url(":predict"), json={"instances": ["x" * 900]}).status_code == 200


# --- batching and metrics ----------------------------------------------------------------------------------


def test_micro_batches_give_the_probabilities_of_one_by_one(predictor):
    rng = np.random.default_rng(3)
    words = "good great awful broken okay plain the a movie é 好".split()
    requests = [
        [" ".join(rng.choice(words, rng.integers(0, 30))) for _ in range(rng.integers(1, 4))] for _ in range(40)
    ]
    metrics = Metrics()

    async def all_at_once():
        batcher = MicroBatcher([predictor.probabilities], max_texts=32, max_wait=0.05, metrics=metrics)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(texts) for texts in requests))
        finally:
            await batcher.stop()

    batched = asyncio.run(all_at_once())
    assert metrics.batches.counts != [0] * len(metrics.batches.counts)
    assert sum(metrics.batch_requests.counts) < len(requests)  # requests did share engine calls
    assert max(c for c, n in zip(metrics.batches.buckets, metrics.batches.counts[:-1], strict=True) if n) <= 32
    for texts, rows in zip(requests, batched, strict=True):
        np.testing.assert_allclose(rows, predictor.probabilities(texts), rtol=1e-6, atol=1e-7)
        for text, row in zip(texts, rows, strict=True):
            np.testing.assert_allclose(row, predictor.probabilities([text])[0], rtol=1e-6, atol=1e-7)


def test_metrics_are_prometheus_text_counting_requests(predictor):
    from prometheus_client.parser import text_string_to_metric_families

    with client_for(predictor, max_wait=0.05) as c, ThreadPoolExecutor(8) as pool:
        ok = list(pool.map(lambda i: c.post(url(":predict"), json={"instances": [f"good {i}"]}).status_code, range(12)))
        assert ok == [200] * 12
        assert c.post(url(":predict"), content=b"{bad").status_code == 400
        assert c.get("/v1/models/nope").status_code == 404
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {(s.labels["route"], s.labels["code"]): s.value for s in families["lstm_cli_requests"].samples}
    assert requests[("predict", "200")] == 12
    assert requests[("predict", "400")] == 1
    assert requests[("status", "404")] == 1
    errors = {(s.labels["route"], s.labels["code"]) for s in families["lstm_cli_request_errors"].samples}
    assert errors == {("predict", "400"), ("status", "404")}
    latency = families["lstm_cli_request_duration_seconds"]
    counts = {s.labels["route"]: s.value for s in latency.samples if s.name.endswith("_count")}
    assert counts["predict"] == 13
    batches = {s.name: s.value for s in families["lstm_cli_batch_texts"].samples if "le" not in s.labels}
    assert batches["lstm_cli_batch_texts_sum"] == 12
    assert batches["lstm_cli_batch_texts_count"] < 12  # concurrent requests shared batches
    assert families["lstm_cli_texts"].samples[0].value == 12


# --- the command -------------------------------------------------------------------------------------------


def test_serve_errors_are_one_line(trained_model, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cases = [
            (["-m", str(trained_model), "--port", str(taken.getsockname()[1])], 1, "cannot listen"),
            (["-m", str(trained_model), "--name", "a:b"], 2, "cannot be a model name"),
            (["-m", str(tmp_path / "missing")], 1, "missing"),
        ]
        for args, code, message in cases:
            result = runner.invoke(cli_app, ["serve", *args])
            assert result.exit_code == code, result.output
            assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert result.stdout == ""
    finally:
        taken.close()


def test_serve_without_the_asgi_stack_names_the_install(trained_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    result = runner.invoke(cli_app, ["serve", "-m", str(trained_model)])
    assert result.exit_code == 1
    assert "pip install 'lstm-cli[serve]'" in result.stderr


def start_server(model: Path, *args: str, new_session: bool = False) -> tuple[subprocess.Popen, str, int]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstm_cli", "serve", "-m", str(model), "--port", "0", "--name", NAME, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=new_session,
    )  # fmt: skip
    line = proc.stderr.readline().decode()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert found, line + proc.stderr.read().decode() if proc.poll() is not None else line
    return proc, line, int(found.group(1))


def http_head(port: int, body_length: int | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    length = f"Content-Length: {body_length}\r\n" if body_length is not None else "Transfer-Encoding: chunked\r\n"
    sock.sendall(
        f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n".encode()
    )
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), body


def _length(data: bytes) -> int:
    found = re.search(rb"content-length: (\d+)", data.split(b"\r\n\r\n", 1)[0], re.I)
    return int(found.group(1)) if found else 0


def test_a_real_server_finishes_the_request_in_flight_on_sigterm_and_exits_0(trained_model, predictor):
    proc, line, port = start_server(trained_model, "--max-body", "5000", "--processes", "1")
    try:
        assert "engine process" in line
        # 413 while the body is still coming: the answer arrives before the client has sent it all
        big = http_head(port, None)
        big.sendall(b"800\r\n" + b"x" * 0x800 + b"\r\n")
        big.sendall(b"800\r\n" + b"x" * 0x800 + b"\r\n")
        big.sendall(b"800\r\n" + b"x" * 0x800 + b"\r\n")
        status, body = read_response(big)
        assert status == 413 and b"limit of 5,000 bytes" in body
        big.close()
        # a request whose body is half sent when SIGTERM arrives is still answered; one whose body never
        # comes gets a JSON 503 when the grace time runs out, and the server still exits 0 within 5 s
        body = json.dumps({"instances": ["good great", "awful"]}).encode()
        sock, stalled = http_head(port, len(body)), http_head(port, len(body))
        sock.sendall(body[:10])
        stalled.sendall(body[:10])
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        time.sleep(0.3)
        sock.sendall(body[10:])
        status, answer = read_response(sock)
        assert status == 200, answer
        rows = [p["probabilities"] for p in json.loads(answer)["predictions"]]
        np.testing.assert_array_equal(np.float32(rows), predictor.probabilities(["good great", "awful"]))
        status, answer = read_response(stalled)
        assert status == 503 and list(json.loads(answer)) == ["error"]
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - stopped < 5
        log = proc.stderr.read().decode()
        assert "Traceback" not in log, log
        assert proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_stops_the_server_and_its_engine_processes_with_exit_0(trained_model):
    proc, line, port = start_server(trained_model, "--processes", "2", new_session=True)
    try:
        workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert len(workers) == 2, line
        assert http_get(port, f"/v1/models/{NAME}")[0] == 200
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
        assert proc.wait(timeout=5) == 0
        assert proc.stderr.read() == b""
        for pid in workers:  # reaped by the server, so gone
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def http_get(port: int, path: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return read_response(sock)
