"""The `lstm-cli` command: a thin Typer layer, one module per command (spaCy's cli/ layout).

Each command parses options, imports the core lazily, calls it and renders the result, so `--help` and usage
errors answer without importing TensorFlow. Importing the command modules registers them on `app`, in the
order `--help` lists them."""

import copy
import errno
import os
import sys

# Before numpy is first imported: BLAS on one thread per caller, since the numpy engine runs batches on
# threads of its own (lstm_cli.engine.THREADS). A user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from lstm_cli.cli._util import app  # noqa: E402

# The import order is the order --help lists the commands in.
# isort: off
from lstm_cli.cli.train import train_cli  # noqa: E402
from lstm_cli.cli.tune import tune_cli
from lstm_cli.cli.pretrain import pretrain_cli
from lstm_cli.cli.predict import predict_cli
from lstm_cli.cli.evaluate import evaluate_cli
from lstm_cli.cli.explain import explain_cli
from lstm_cli.cli.info import info_cli
from lstm_cli.cli.report import report_cli
from lstm_cli.cli.serve import serve_cli

# isort: on

__all__ = [
    "app", "evaluate_cli", "explain_cli", "info_cli", "main", "predict_cli", "pretrain_cli", "report_cli", "serve_cli",
    "train_cli", "tune_cli",
]  # fmt: skip


def main() -> None:
    """The `lstm-cli` entry point. Typer turns every command's options into click objects on each run (the
    other five commands' took 20 ms of a 250 ms predict, train's 40 options most of it); when the first
    argument names a command, only that command is built, which is all click would look at."""
    chosen = [c for c in app.registered_commands if len(sys.argv) > 1 and c.name == sys.argv[1]]
    only = app
    if chosen:
        only = copy.copy(app)
        only.registered_commands = chosen  # the group callback (--version) stays, so it is still a group
    try:
        only()
    except OSError as e:  # stdout on a full disk (`> /dev/full`) or a device that fails; click handles EPIPE
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            raise
        # What is still buffered for stdout would fail again at exit, with a message of Python's own.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.stderr.write(f"Error: could not write the output ({e.strerror}); free some space or write it elsewhere\n")
        sys.exit(1)
