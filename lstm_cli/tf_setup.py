"""The one place TensorFlow is imported: quiet by default, on the device asked for.

Importing this module costs the TensorFlow import; the CLI only does it inside commands that need it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings

_verbose = False


def set_verbose(verbose: bool) -> None:
    """Call before the first import of this module's `tf` to let TensorFlow's own logging through."""
    global _verbose
    _verbose = verbose


def _quiet_environment() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not _verbose:
        # C++ logging (oneDNN notices, CPU feature banners, XLA) is read from the environment at import.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # a lost peer is reported in one line of our own


@contextlib.contextmanager
def _stderr_silenced(active: bool):
    """Hold back what native code writes to fd 2 (absl's pre-init banner, CUDA probes) while importing.

    If the import fails, what was held back is replayed, so a broken install still explains itself."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow():
    """Import TensorFlow alone, quietly (serving needs no Keras: that saves ~1 s of start-up)."""
    _quiet_environment()
    if not _verbose:
        warnings.filterwarnings("ignore", module=r"(tensorflow|absl|google)(\.|$)")
    with _stderr_silenced(not _verbose):
        import tensorflow as tf  # noqa: PLC0415

    if not _verbose:
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def import_tf():
    """Import TensorFlow and Keras quietly; returns (tf, keras)."""
    _quiet_environment()
    if not _verbose:
        warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl|google)(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    with _stderr_silenced(not _verbose):
        import keras  # noqa: PLC0415
        import tensorflow as tf  # noqa: PLC0415

    if not _verbose:
        tf.get_logger().setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
        tf.autograph.set_verbosity(0)
    return tf, keras
