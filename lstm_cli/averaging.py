"""Weight averaging along the training path: the mean of the weights the first n epochs ended with.

Training adds each epoch's weights to a running sum and keeps a copy of the sum at the best epoch b (the
lowest validation loss so far) and at the epoch after it. When training ends, the means of epochs 1..b and
1..b+1 are validated beside epoch b's own weights, and the lowest validation loss wins. A mean over the
path smooths out the noise of the last steps (Polyak averaging; SWA, Izmailov et al. 2018, averages the same
way): where the best epoch comes early, as on short sentences and reviews, it often validates better than
any single epoch; where it comes late, as on long articles, the early epochs are far worse and the best
epoch's own weights win. Memory: three copies of the weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Weights = list[np.ndarray]


def _averaged(total: Weights, count: int) -> Weights:
    """Float arrays divided by `count`; others (a bigram vocabulary's int32 list, the same every epoch) as they are."""
    return [t / np.float32(count) if t.dtype.kind == "f" else t.copy() for t in total]


@dataclass
class PathAverage:
    total: Weights | None = None  # sum of the weights of epochs 1..count
    count: int = 0
    at_best: Weights | None = None  # the sum at the best epoch so far (epochs 1..best_count)
    best_count: int = 0
    after_best: Weights | None = None  # the sum one epoch after it (epochs 1..best_count + 1)

    def add(self, weights: Sequence[np.ndarray], *, best: bool) -> None:
        """One epoch's weights; `best`: they are the best so far (lowest validation loss)."""
        if self.total is None:
            self.total = [np.array(w) for w in weights]
        else:
            for t, w in zip(self.total, weights, strict=True):
                if t.dtype.kind == "f":
                    t += w
                else:
                    t[...] = w
        self.count += 1
        if best:
            self.at_best, self.best_count, self.after_best = [t.copy() for t in self.total], self.count, None
        elif self.at_best is not None and self.after_best is None and self.count == self.best_count + 1:
            self.after_best = [t.copy() for t in self.total]

    def candidates(self) -> list[tuple[int, Weights]]:
        """(n, mean of the weights of epochs 1..n) for n = best epoch and the one after, when n > 1."""
        found = []
        if self.at_best is not None and self.best_count > 1:
            found.append((self.best_count, _averaged(self.at_best, self.best_count)))
        if self.after_best is not None:
            found.append((self.best_count + 1, _averaged(self.after_best, self.best_count + 1)))
        return found

    # What a checkpoint keeps, so a resumed run averages what an uninterrupted one would.
    def arrays(self) -> dict[str, Weights]:
        named = {"total": self.total, "at_best": self.at_best, "after_best": self.after_best}
        return {name: arrays for name, arrays in named.items() if arrays is not None}

    def counts(self) -> dict[str, int]:
        return {"count": self.count, "best_count": self.best_count}

    @classmethod
    def restored(cls, counts: dict[str, int], arrays: dict[str, Weights]) -> PathAverage:
        return cls(arrays.get("total"), counts["count"], arrays.get("at_best"), counts["best_count"],
                   arrays.get("after_best"))  # fmt: skip


@dataclass
class Choice:
    epochs: int  # the weights are the mean of epochs 1..epochs; 0: the best epoch's own weights
    weights: Weights | None  # the mean chosen (None: the best epoch's)
    val_loss: float  # of the weights chosen
    metrics: dict[str, float] = field(default_factory=dict)  # the mean's validation metrics ({}: the best epoch's)
    tried: dict[int, float] = field(default_factory=dict)  # n -> validation loss of the mean of epochs 1..n


def choose(
    best_loss: float, candidates: list[tuple[int, Weights]], validate: Callable[[Weights], dict[str, float]]
) -> Choice:
    """The candidate mean with the lowest validation loss if it is below the best epoch's, else the best epoch.

    `validate` returns the validation metrics of weights, "val_loss" among them."""
    choice = Choice(0, None, best_loss)
    for n, weights in candidates:
        metrics = validate(weights)
        choice.tried[n] = metrics["val_loss"]
        if metrics["val_loss"] < choice.val_loss:
            choice.epochs, choice.weights, choice.val_loss, choice.metrics = n, weights, metrics["val_loss"], metrics
    return choice
