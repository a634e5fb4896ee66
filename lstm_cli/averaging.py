"""Weight averaging around the best epoch: the mean of the weights a few consecutive epochs ended with.

Training keeps the weights of the epochs around the best one b (the lowest validation loss so far) and of
the last two. When training ends, six windows of consecutive epochs around b, reaching one or two epochs
back ([b-1..b], [b-2..b]), forward ([b..b+1], [b..b+2]) or both ways ([b-1..b+1], [b-2..b+2]), are
averaged and validated beside epoch b's own weights, and the lowest validation loss is saved. A window
that would reach before epoch 1 or past the last epoch is not tried. A mean of nearby points of the path
smooths out the noise of the last steps (Polyak averaging; SWA, Izmailov et al. 2018): it often validates
better than any one epoch. The windows stay near the best epoch because, on long articles, the early
epochs are far worse than the late ones, and a mean from epoch 1 loses to the best epoch alone. Memory: at
most seven copies of the weights (five around the best epoch, the last two)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

Weights = list[np.ndarray]
Window = tuple[int, int]  # first and last epoch, counted from 1

REACH = 2  # epochs either side of the best one that a window may take in
WINDOWS = ((1, 0), (2, 0), (0, 1), (0, 2), (1, 1), (2, 2))  # (epochs back, epochs forward) from the best


def mean_of(epochs: Sequence[Weights]) -> Weights:
    """The float weights summed in epoch order and divided by their number; others (a bigram vocabulary's
    int32 list, the same every epoch) as the last epoch has them."""
    total = [np.array(w) for w in epochs[0]]
    for weights in epochs[1:]:
        for t, w in zip(total, weights, strict=True):
            if t.dtype.kind == "f":
                t += w
            else:
                t[...] = w
    count = np.float32(len(epochs))
    return [t / count if t.dtype.kind == "f" else t for t in total]


@dataclass
class EpochWindows:
    kept: dict[int, Weights] = field(default_factory=dict)  # epoch (from 1) -> the weights it ended with
    count: int = 0  # epochs added
    best: int = 0  # the best epoch so far (0: none yet)
    # Names (arrays()' keys) of the epochs the checkpoint on disk already holds, written by this run
    # (lstm_cli.checkpoint carries those files into the next checkpoint instead of writing them again).
    stored: set[str] = field(default_factory=set)

    def add(self, weights: Weights, *, best: bool) -> None:
        """One epoch's weights, kept as given (not copied); `best`: they are the best so far."""
        self.count += 1
        self.kept[self.count] = weights
        if best:
            self.best = self.count
        # Around the best epoch, and the last two: the two before a next best epoch, should one come.
        wanted = {*range(self.best - REACH, self.best + REACH + 1), *range(self.count - 1, self.count + 1)}
        for epoch in [e for e in self.kept if e not in wanted]:
            del self.kept[epoch]

    def windows(self) -> list[Window]:
        """The windows around the best epoch that lie within the epochs run."""
        spans = [(self.best - back, self.best + forward) for back, forward in WINDOWS]
        return [(first, last) for first, last in spans if self.best and first >= 1 and last <= self.count]

    def candidates(self) -> Iterator[tuple[Window, Weights]]:
        """(window, mean of its epochs' weights), one mean at a time."""
        for first, last in self.windows():
            yield (first, last), mean_of([self.kept[e] for e in range(first, last + 1)])

    # What a checkpoint keeps, so a resumed run averages what an uninterrupted one would.
    def arrays(self) -> dict[str, Weights]:
        return {f"epoch_{epoch}": weights for epoch, weights in sorted(self.kept.items())}

    def counts(self) -> dict[str, object]:
        return {"count": self.count, "best": self.best, "kept": sorted(self.kept)}

    @classmethod
    def restored(cls, counts: dict[str, object], arrays: dict[str, Weights]) -> EpochWindows:
        kept = {int(epoch): arrays[f"epoch_{epoch}"] for epoch in counts["kept"]}
        return cls(kept, int(counts["count"]), int(counts["best"]))


@dataclass
class Choice:
    window: Window | None  # the epochs whose mean was saved; None: the best epoch's own weights
    weights: Weights | None  # the mean chosen (None: the best epoch's)
    val_loss: float  # of the weights chosen
    metrics: dict[str, float] = field(default_factory=dict)  # the mean's validation metrics ({}: the best epoch's)
    tried: dict[Window, float] = field(default_factory=dict)  # window -> validation loss of its mean


def choose(
    best_loss: float,
    candidates: Iterator[tuple[Window, Weights]],
    validate: Callable[[Weights], dict[str, float]],
    monitor: Callable[[dict[str, float]], float] = lambda metrics: metrics["val_loss"],
) -> Choice:
    """The candidate mean with the lowest validation loss if it is below the best epoch's, else the best epoch.

    `validate` returns the validation metrics of weights, "val_loss" among them. `monitor`: what is lowest
    (a multi-label model's: minus its validation micro-F1); `best_loss` and `val_loss` are then its values."""
    choice = Choice(None, None, best_loss)
    for window, weights in candidates:
        metrics = validate(weights)
        choice.tried[window] = monitor(metrics)
        if choice.tried[window] < choice.val_loss:
            choice = Choice(window, weights, choice.tried[window], metrics, choice.tried)
    return choice
