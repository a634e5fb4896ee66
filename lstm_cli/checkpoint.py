"""Per-epoch training checkpoints, so an interrupted `train --resume` ends where an uninterrupted run would.

A checkpoint holds the weights with optimizer state, early-stopping state, the history so far, and a
fingerprint of the run (configuration and data); resuming a different run is refused. Dropout noise
and batch order depend only on (seed, epoch), so a resumed epoch replays exactly. The directory carries
lstm-cli's checkpoint marker, and only a directory with that marker is ever replaced (lstm_cli.owned)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.atomic import install, recover, remove_stale_staging, staging_path
from lstm_cli.errors import LstmCliError
from lstm_cli.model import keras
from lstm_cli.owned import check_checkpoint_dir, write_checkpoint_marker

STATE = "state.json"
WEIGHTS = "latest.weights.h5"
BEST = "best_weights.npz"


def read_state(directory: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The saved state of `run`, or an error saying why it cannot be resumed."""
    recover(directory)
    path = directory / STATE
    if not path.is_file():
        raise LstmCliError(f"{directory}: no checkpoint to resume from; run without --resume to start afresh")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LstmCliError(f"{path}: unreadable checkpoint ({e}); run without --resume to start afresh") from None
    if state.get("run") != run:
        raise LstmCliError(
            f"{directory}: the checkpoint is from a run with other data or options; "
            "repeat that run's command with --resume, or drop --resume to start afresh"
        )
    return state


def reseed(model, seed: int, epoch: int) -> None:
    """Put every dropout seed generator in a state that depends only on (seed, epoch)."""
    states = [v for v in model.variables if "seed_generator_state" in v.path]
    for i, variable in enumerate(states):
        value = (seed * 1_000_003 + (epoch + 1) * 7_919 + i * 104_729) % (2**31 - 1)
        variable.assign(np.array([value, 0], dtype=variable.dtype))


class Checkpoint(keras.callbacks.Callback):
    """Writes the run's state at the end of every epoch (atomically); restores it on train begin."""

    def __init__(
        self,
        directory: Path,
        run: dict[str, Any],
        seed: int,
        stopper,
        reporter,
        resume_state=None,
        *,
        model: Path | None = None,
    ):
        super().__init__()
        self.directory, self.run, self.seed, self.model_dir = directory, run, seed, model
        self.stopper, self.reporter, self.resume_state = stopper, reporter, resume_state

    def on_train_begin(self, logs=None):
        state = self.resume_state
        if state is None:
            return
        self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.directory / WEIGHTS)
        early = state["early_stopping"]
        self.stopper.wait, self.stopper.best = early["wait"], early["best"]
        self.stopper.best_epoch = early["best_epoch"]
        if (self.directory / BEST).is_file():
            with np.load(self.directory / BEST, allow_pickle=False) as saved:
                self.stopper.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        self.reporter.history[:] = state["history"]
        self.reporter.seconds[:] = state["epoch_seconds"]

    def restore_finished(self, model) -> None:
        """Load a run whose training had ended: its best weights, as early stopping would have left them."""
        self.set_model(model)
        self.on_train_begin()
        if self.stopper.best_weights is not None:
            model.set_weights(self.stopper.best_weights)

    def on_epoch_begin(self, epoch, logs=None):
        reseed(self.model, self.seed, epoch)

    def on_epoch_end(self, epoch, logs=None):
        remove_stale_staging(self.directory)
        check_checkpoint_dir(self.directory, model=self.model_dir)  # still ours (or absent) before replacing it
        staging = staging_path(self.directory)
        try:
            staging.mkdir(parents=True)
            write_checkpoint_marker(staging)
            self.model.save_weights(staging / WEIGHTS)
            if self.stopper.best_weights is not None:
                np.savez(staging / BEST, *self.stopper.best_weights)
            state = {
                "run": self.run,
                "epoch": epoch + 1,  # epochs finished
                "stopped": bool(self.model.stop_training),  # early stopping ended the run here
                "history": self.reporter.history,
                "epoch_seconds": self.reporter.seconds,
                "early_stopping": {
                    "wait": self.stopper.wait,
                    "best": float(self.stopper.best),
                    "best_epoch": self.stopper.best_epoch,
                },
            }
            (staging / STATE).write_text(json.dumps(state), encoding="utf-8")
            install(staging, self.directory)
        except OSError as e:
            raise LstmCliError(
                f"{self.directory}: could not write the training checkpoint ({e.strerror or e}); "
                "free some space or choose another place with --checkpoint-dir"
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
