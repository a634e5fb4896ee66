"""`lstm-cli serve`: the model over HTTP, answering TensorFlow Serving's REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lstm_cli.artifact import DEFAULT_MODEL_DIR
from lstm_cli.cli._coerce import PlainCommand
from lstm_cli.cli._util import EngineChoice, EngineOpt, ModelOpt, VerboseOpt, _engine_note, _errors, app

_MISSING = "lstm-cli serve needs starlette and uvicorn, which are not installed: pip install 'lstm-cli[serve]'"


@app.command("serve", cls=PlainCommand)
def serve_cli(
    model: ModelOpt = Path(DEFAULT_MODEL_DIR),
    host: Annotated[
        str, typer.Option(envvar="LSTM_CLI_HOST", help="Address to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, envvar="LSTM_CLI_PORT", help="Port (0: any free one).")] = 8501,
    name: Annotated[
        str | None,
        typer.Option(help="Model name in the URLs, /v1/models/NAME [default: the model directory's name]."),
    ] = None,
    max_body: Annotated[
        int, typer.Option(min=1, metavar="BYTES", help="Largest request body; larger ones get 413.")
    ] = 10 * 1024 * 1024,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most texts predicted in one engine call, from concurrent requests.")
    ] = 1024,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long an idle engine waits for more requests to batch with the first.")
    ] = 2.0,
    processes: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Forked engine processes predicting batches side by side (0: in the server's process) "
            "[default: one a core].",
        ),
    ] = None,
    engine: EngineOpt = EngineChoice.auto,
    verbose: VerboseOpt = False,
) -> None:
    """Serve a model over HTTP with TensorFlow Serving's REST API (predict, status, metadata), plus /healthz
    and Prometheus /metrics. SIGTERM or Ctrl-C finishes the requests in flight and exits.

    \b
    Example: lstm-cli serve --name reviews & sleep 3; curl -d '{"instances": ["great phone"]}' localhost:8501/v1/models/reviews:predict
    """  # noqa: E501 (the example is printed verbatim, on one line, to be copied)
    from lstm_cli.config import number_problem

    for flag, value, high in (("--batch-wait-ms", batch_wait_ms, 60_000), ("--processes", processes, 256)):
        if value is not None and (problem := number_problem(flag, value, 0, high)):
            raise typer.BadParameter(problem, param_hint=flag)
    with _errors(verbose):
        try:
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            typer.echo(f"Error: {_MISSING}", err=True)
            raise typer.Exit(1) from None
        import logging

        from lstm_cli.serve import serve

        logging.basicConfig(format="lstm-cli serve: %(message)s")  # stderr, one line a message

        def ready(predictor, url: str, where: str) -> None:
            from lstm_cli.render import shown

            _engine_note(predictor, verbose)
            typer.echo(
                f"Serving {shown(str(model))} at {url} ({predictor.engine} engine, {where}); Ctrl-C to stop", err=True
            )

        serve(
            model,
            host=host,
            port=port,
            name=name,
            engine=engine.value,
            max_body=max_body,
            max_batch=max_batch,
            max_wait=batch_wait_ms / 1000,
            processes=processes,
            on_ready=ready,
        )
