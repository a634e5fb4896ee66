"""`lstm-cli serve`'s core: a model directory served over HTTP with TF Serving's REST API, on uvicorn.

Only this package imports the ASGI stack (starlette, uvicorn), so predict and --help never load it."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from lstm_cli.errors import LstmCliError, UsageError

DEFAULT_PORT = 8501  # TF Serving's REST port
MAX_BODY = 10 * 1024 * 1024
# Texts per engine call. Larger batches cost less CPU a text (SST-2 phrases on one thread: 22,000 texts per CPU
# second in batches of 256, 28,000 in 512, 34,000 in 1,024), and sixteen clients of 64 texts fill 1,024.
MAX_BATCH = 1024
MAX_WAIT = 0.002  # seconds an idle engine waits for more requests to join the first
GRACE = 3.0  # seconds in-flight requests get to finish after SIGTERM or Ctrl-C (exit well within 5)
_NAME = re.compile(r"[^/:\s]+")


def check_name(name: str, *, option: str = "--name") -> str:
    """A model name usable in /v1/models/NAME: no '/', ':' or whitespace."""
    if not _NAME.fullmatch(name):
        raise UsageError(f"{name!r} cannot be a model name in /v1/models/NAME (no '/', ':' or spaces); set {option}")
    return name


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: any free port), bound here so a taken port is one clear error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not an address this machine can listen on ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise LstmCliError(f"{host}:{port}: cannot listen ({e.strerror}); choose another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def serve(
    model_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    name: str | None = None,
    engine: str = "auto",
    max_body: int = MAX_BODY,
    max_batch: int = MAX_BATCH,
    max_wait: float = MAX_WAIT,
    processes: int | None = None,
    on_ready: Callable[[object, str, str], None] | None = None,
) -> None:
    """Serve the model until SIGTERM or Ctrl-C, then finish the requests in flight and return.

    `processes`: forked engine processes predicting batches side by side (None: one a core, 0: none, batches
    run in this process). `on_ready(predictor, url, where)` is called once the model is loaded and the port
    listens; `where` says where batches run."""
    import uvicorn

    from lstm_cli.predict import Predictor
    from lstm_cli.serve.app import build_app
    from lstm_cli.serve.engines import EnginePool, default_processes

    name = check_name(name if name is not None else model_dir.resolve().name, option="--name")
    predictor = Predictor(model_dir, engine=engine)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}/v1/models/{name}"
    # SIGINT/SIGTERM: uvicorn's handlers stop it, it finishes what is in flight, then raises the signal again
    # for the handler it found; this one notes it, so `serve` returns and the process exits 0.
    _signalled.clear()
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    pool = None
    try:
        # Forked before uvicorn starts a thread or an event loop: a fork copies only the calling thread.
        pool = EnginePool(predictor, default_processes() if processes is None else processes)
        app = build_app(
            pool.slots,
            name=name,
            labels=predictor.labels,
            thresholds=predictor.thresholds,
            max_body=max_body,
            max_batch=max_batch,
            max_wait=max_wait,
            on_startup=None if on_ready is None else lambda: on_ready(predictor, url, pool.where),
            on_shutdown=pool.close,
        )
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=GRACE,
            log_config=None,  # the CLI's logging: one plain line per message on stderr
        )
        _server_class()(config).run(sockets=[sock])
    finally:
        if pool is not None:
            pool.close()  # again, in case uvicorn stopped before its lifespan ended
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


_signalled: list[int] = []


def _stopped(signum, frame) -> None:
    """A stop before uvicorn listens for it (it is then told at once), or the signal it raises again after its
    graceful shutdown (the server has stopped: nothing left to do)."""
    _signalled.append(signum)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                if _signalled:  # SIGTERM or Ctrl-C while the model loaded: stop as soon as started
                    self.should_exit = True
                yield

    return Server
