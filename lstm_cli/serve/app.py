"""The ASGI app (Starlette): TF Serving's REST routes for one model, plus /healthz and /metrics.

Every answer is JSON, errors as {"error": "..."} as TF Serving writes them; nothing a client sends can raise
out of a handler, so no traceback reaches the client or the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from lstm_cli.serve.batcher import MicroBatcher
from lstm_cli.serve.metrics import CONTENT_TYPE, Metrics
from lstm_cli.serve.rest import VERSION, BadRequest, Responses, parse_predict

log = logging.getLogger("lstm_cli.serve")

# /v1/models/NAME[/versions/N | /labels/LABEL][/metadata | :predict | :classify | :regress]
_MODEL_PATH = re.compile(
    r"(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?(?P<verb>/metadata|:[a-z]+)?"
)


class _Answer(Exception):
    """Stop handling a request and answer with this status and {"error": message}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _json(status: int, content: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    # ASCII escapes: a message quoting a client's lone surrogate ("\ud800") is still valid UTF-8
    body = content if isinstance(content, bytes) else json.dumps(content).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to pass `limit` bytes: from Content-Length before
    reading anything, else while reading, never holding more than `limit` bytes of it."""
    declared = request.headers.get("content-length", "")
    too_large = _Answer(413, f"request body over the server's limit of {limit:,} bytes", {"connection": "close"})
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    slots: Sequence[Callable[[list[str]], np.ndarray]],
    *,
    name: str,
    labels: list[str],
    max_body: int = 10 * 1024 * 1024,
    max_batch: int = 1024,
    max_wait: float = 0.002,
    on_startup: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    thresholds: np.ndarray | None = None,
) -> Starlette:
    """An app serving model `name`, TF Serving's way, with `slots` predicting batches (each a function
    texts -> probabilities [texts, labels], called by one thread at a time; lstm_cli.serve.engines).
    `thresholds`: a multi-label model's (answers add "selected", as its SavedModel's signature does)."""
    metrics = Metrics()
    batcher = MicroBatcher(slots, max_texts=max_batch, max_wait=max_wait, metrics=metrics)
    responses = Responses(name, labels, thresholds)

    def answered(route: str, handler: Callable[[Request], Awaitable[Response]]):
        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except _Answer as e:
                response = _error(e.status, e.message, e.headers)
            except BadRequest as e:
                response = _error(400, str(e))
            except ClientDisconnect:
                response = Response(status_code=499)  # nobody to answer; counted as nginx counts it
            except asyncio.CancelledError:  # still unfinished when the grace time after SIGTERM ran out
                response = _error(503, "the server stopped before this request was complete; send it again")
            except Exception as e:  # a bug in lstm-cli: one line in the log, a 500 for this request only
                log.error("error answering %s %r: %s: %r", request.method, request.url.path, type(e).__name__, str(e))
                response = _error(500, f"internal error ({type(e).__name__}); see the server's log")
            metrics.request(
                request.scope.get("lstm_cli.route", route), response.status_code, time.perf_counter() - start
            )
            return response

        return endpoint

    async def models(request: Request) -> Response:
        match = _MODEL_PATH.fullmatch(request.path_params["path"])
        if match is None:
            raise _Answer(404, f"Malformed request: {request.method} {request.url.path}")
        version, label, verb = match["version"], match["label"], match["verb"]
        # a fixed set of route names: a client's made-up verbs must not add series to /metrics
        request.scope["lstm_cli.route"] = {None: "status", "/metadata": "metadata", ":predict": "predict"}.get(
            verb, "other"
        )
        if version is not None and not version.isdigit():
            raise _Answer(400, f"Failed to convert version: {version} to numeric.")
        wanted = f"Specific({match['name']}, {version})" if version else f"Latest({match['name']})"
        if label is not None:
            wanted = f"Labeled({match['name']}, {label})"
        if match["name"] != name or (version is not None and int(version) != int(VERSION)) or label is not None:
            raise _Answer(404, f"Servable not found for request: {wanted}")
        method = "POST" if verb and verb.startswith(":") else "GET"
        if request.method != method:
            raise _Answer(405, f"Malformed request: {request.method} {request.url.path}", {"allow": method})
        if verb is None:
            return _json(200, responses.status())
        if verb == "/metadata":
            return _json(200, responses.metadata())
        if verb != ":predict":
            raise _Answer(
                400 if verb in (":classify", ":regress") else 404,
                f"{verb[1:]} is not supported: the model has a predict signature; use :predict",
            )
        parsed = parse_predict(await _body(request, max_body))
        if parsed.texts:
            probabilities = await batcher.predict(parsed.texts)
        else:  # columnar input may be an empty batch, as a [0]-shaped tensor is to TF Serving
            probabilities = np.zeros((0, len(labels)), np.float32)
        return _json(200, responses.predictions(probabilities, columnar=parsed.columnar))

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        response = _error(status, f"Malformed request: {request.method} {request.url.path}")
        metrics.request("other", status, 0.0)
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        if on_startup is not None:
            on_startup()
        try:
            yield
        finally:
            await batcher.stop()
            if on_shutdown is not None:
                on_shutdown()

    routes = [
        Route("/v1/models/{path:path}", answered("models", models), methods=["GET", "POST"]),
        Route("/healthz", answered("healthz", healthz), methods=["GET"]),
        Route("/metrics", answered("metrics", prometheus), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.metrics = metrics
    return app
