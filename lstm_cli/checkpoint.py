"""Per-epoch training checkpoints, so an interrupted `train --resume` ends where an uninterrupted run would.

A checkpoint holds the network's and the optimizer's variables, the best epoch's weights, early stopping's
state, the weights weight averaging keeps (lstm_cli.averaging), the history so far, and a fingerprint of the run
(configuration and data); resuming a different run is refused. Dropout noise and batch order depend only on
(seed, epoch), so a resumed epoch replays exactly.
Arrays are .npz files read with allow_pickle=False. The directory carries lstm-cli's checkpoint marker, and
only a directory with that marker is ever replaced (lstm_cli.owned); it is replaced whole and atomically,
carrying along what lives beside the state (the token cache, `CARRIED`)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.atomic import install, recover, remove_stale_staging, staging_path
from lstm_cli.averaging import EpochWindows
from lstm_cli.errors import LstmCliError
from lstm_cli.owned import check_checkpoint_dir, open_regular, remove_marked_tree, write_checkpoint_marker
from lstm_cli.schema import npz_arrays, read_json

STATE = "state.json"
LATEST = "latest.npz"  # network variables, then optimizer variables
BEST = "best_weights.npz"
AVERAGE = "average_{}.npz"  # one file per epoch whose weights weight averaging keeps: average_epoch_4.npz
CARRIED = ("cache",)  # built once per run, moved into each new checkpoint rather than rewritten


def prepare(directory: Path) -> None:
    """Make the checkpoint directory (with its marker) if there is none, for the token cache to live in."""
    recover(directory)
    with contextlib.suppress(OSError):
        directory.rmdir()  # only if empty: what a removal killed after its last file leaves
    if not directory.exists():
        staging = staging_path(directory)
        staging.mkdir(parents=True)
        write_checkpoint_marker(staging)
        os.rename(staging, directory)


def read_state(directory: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The saved state of `run`, or an error saying why it cannot be resumed."""
    recover(directory)
    path = directory / STATE
    if not path.is_file():
        raise LstmCliError(f"{directory}: no checkpoint to resume from; run without --resume to start afresh")
    try:
        state = read_json(path, follow_symlinks=False)
    except (OSError, ValueError) as e:
        raise LstmCliError(f"{path}: unreadable checkpoint ({e}); run without --resume to start afresh") from None
    problem = _state_problem(state)
    if problem:
        raise LstmCliError(
            f"{path}: not a checkpoint this lstm-cli wrote ({problem}); run without --resume to start afresh"
        )
    if state.get("run") != run:
        raise LstmCliError(
            f"{directory}: the checkpoint is from a run with other data or options; "
            "repeat that run's command with --resume, or drop --resume to start afresh"
        )
    return state


def _state_problem(state: Any) -> str | None:
    """What is wrong with state.json's values, as `train` reads them on --resume (None: nothing)."""
    if not isinstance(state, dict):
        return "not a JSON object"
    number = (int, float)
    stopping = state.get("early_stopping")
    checks = {
        "epoch": type(state.get("epoch")) is int and state["epoch"] >= 0,
        "stopped": isinstance(state.get("stopped"), bool),
        "history": isinstance(state.get("history"), list) and all(isinstance(h, dict) for h in state["history"]),
        "epoch_seconds": isinstance(state.get("epoch_seconds"), list)
        and all(isinstance(s, number) and not isinstance(s, bool) for s in state["epoch_seconds"]),
        "early_stopping": isinstance(stopping, dict)
        and type(stopping.get("wait")) is int
        and isinstance(stopping.get("best"), number)
        and type(stopping.get("best_epoch")) is int,
        "average": state.get("average") is None or isinstance(state.get("average"), dict),
    }
    bad = [key for key, ok in checks.items() if not ok]
    return f"{', '.join(bad)} missing or of the wrong type" if bad else None


def reseed(network, seed: int, epoch: int) -> None:
    """Put every dropout seed generator in a state that depends only on (seed, epoch)."""
    states = [v for v in network.variables if "seed_generator_state" in v.path]
    for i, variable in enumerate(states):
        value = (seed * 1_000_003 + (epoch + 1) * 7_919 + i * 104_729) % (2**31 - 1)
        variable.assign(np.array([value, 0], dtype=variable.dtype))


def _arrays(path: Path) -> list[np.ndarray]:
    """The arrays np.savez wrote to `path`, in order; checked as a model's weights are (lstm_cli.schema)."""
    fix = "run without --resume to start afresh"
    if not os.path.lexists(path):
        raise LstmCliError(f"{path}: missing from the checkpoint; {fix}")
    try:
        with open_regular(path, follow_symlinks=False) as f:  # a link planted in the checkpoint is not followed
            arrays = npz_arrays(f.read())
    except OSError as e:
        raise LstmCliError(f"{path}: cannot read ({e.strerror or e}); {fix}") from None
    except ValueError as e:
        raise LstmCliError(f"{path}: not a checkpoint this lstm-cli wrote ({e}); {fix}") from None
    names = [f"arr_{i}" for i in range(len(arrays))]
    if sorted(arrays) != sorted(names):
        raise LstmCliError(f"{path}: not a checkpoint this lstm-cli wrote (arrays {sorted(arrays)[:3]}...); {fix}")
    return [arrays[name] for name in names]


def restore(directory: Path, network, optimizer) -> list[np.ndarray] | None:
    """Load the network's and optimizer's variables saved by `save`; returns the best weights (or None)."""
    variables = [*network.variables, *optimizer.variables]
    saved = _arrays(directory / LATEST)
    if len(saved) != len(variables) or any(tuple(v.shape) != a.shape for v, a in zip(variables, saved, strict=True)):
        raise LstmCliError(f"{directory}: the checkpoint does not fit this network; run without --resume")
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(value)
    return _arrays(directory / BEST) if (directory / BEST).is_file() else None


def restore_average(directory: Path, state: dict[str, Any]) -> EpochWindows:
    """The epochs' weights weight averaging kept, as `save` saved them (a run with averaging on always does)."""
    counts = state.get("average")
    if (
        not isinstance(counts, dict)
        or not {"count", "best", "kept"} <= counts.keys()
        or not isinstance(counts["kept"], list)
        or not all(type(e) is int for e in counts["kept"])
    ):
        raise LstmCliError(
            f"{directory}: the checkpoint has no weight averaging state this lstm-cli can use; run without --resume"
        )
    arrays = {f"epoch_{e}": _arrays(directory / AVERAGE.format(f"epoch_{e}")) for e in counts["kept"]}
    restored = EpochWindows.restored(counts, arrays)
    restored.stored = set(arrays)  # this checkpoint holds them: the next one carries them
    return restored


def save(
    directory: Path,
    *,
    run: dict[str, Any],
    epoch: int,
    stopped: bool,
    history: list[dict[str, float]],
    epoch_seconds: list[float],
    early_stopping: dict[str, Any],
    network,
    optimizer,
    best_weights: list[np.ndarray] | None,
    average: EpochWindows | None = None,
    model_dir: Path | None = None,
) -> None:
    """Replace the checkpoint with the state after `epoch` epochs, in one step."""
    remove_stale_staging(directory)
    check_checkpoint_dir(directory, model=model_dir)  # still ours (or absent) before replacing it
    staging = staging_path(directory)
    carried = []
    try:
        staging.mkdir(parents=True)
        write_checkpoint_marker(staging)
        np.savez(staging / LATEST, *[np.asarray(v) for v in [*network.variables, *optimizer.variables]])
        if best_weights is not None:
            np.savez(staging / BEST, *best_weights)
        # An epoch's kept weights never change: a file the checkpoint already holds is carried, not rewritten.
        averaged = average.arrays() if average is not None else {}
        stored = [name for name in averaged if name in average.stored and (directory / AVERAGE.format(name)).is_file()]
        for name in averaged.keys() - set(stored):
            np.savez(staging / AVERAGE.format(name), *averaged[name])
        state = {
            "run": run,
            "epoch": epoch,  # epochs finished
            "stopped": stopped,  # training ended here (early stopping, or asked to stop)
            "history": history,
            "epoch_seconds": epoch_seconds,
            "early_stopping": {
                "wait": early_stopping["wait"],
                "best": float(early_stopping["value"]),
                "best_epoch": early_stopping["epoch"],
            },
            "average": average.counts() if average is not None else None,
        }
        (staging / STATE).write_text(json.dumps(state), encoding="utf-8")
        for name in [*(n for n in CARRIED if (directory / n).exists()), *map(AVERAGE.format, stored)]:
            os.rename(directory / name, staging / name)
            carried.append(name)
        install(staging, directory)
        carried = []
        if average is not None:
            average.stored = set(averaged)
    except OSError as e:
        raise LstmCliError(
            f"{directory}: could not write the training checkpoint ({e.strerror or e}); "
            "free some space or choose another place with --checkpoint-dir"
        ) from None
    finally:
        for name in carried:  # the swap failed: what was carried goes back
            try:
                os.rename(staging / name, directory / name)
            except OSError:
                pass
        remove_marked_tree(staging)
