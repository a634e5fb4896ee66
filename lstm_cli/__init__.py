"""lstm-cli: LSTM text classifiers from the command line, and from Python through `load`.

Importing this must stay cheap (the command line imports it for --help): `load` imports the engine when called."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lstm_cli.api import Model

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(path: str | os.PathLike[str], *, engine: str = "numpy") -> Model:
    """A model directory ready to predict and explain on lstm-cli's numpy engine, without TensorFlow.

    >>> model = lstm_cli.load("lstm-model")  # doctest: +SKIP
    >>> model.predict(["refund please"])  # doctest: +SKIP
    [[Prediction(label='negative', probability=0.93)]]

    See lstm_cli.api.load for `engine` and lstm_cli.api.Model for the methods."""
    from lstm_cli.api import load as load_model

    return load_model(path, engine=engine)
