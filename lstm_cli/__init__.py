"""lstm-cli: LSTM text classifiers from the command line. Importing this must stay cheap (no TensorFlow)."""

__version__ = "0.1.0"
