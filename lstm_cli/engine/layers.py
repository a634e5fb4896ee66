"""One numpy function per Keras layer type the engine runs, at inference (dropout is the identity).

Shapes: x is [batch, time, features] or [batch, features]; a mask is bool [batch, time], True for real
tokens. Everything is float32 and vectorised over the batch: the only Python loop is over time steps
inside the recurrent layers, each step a whole-batch matmul. Each function takes the layer's Keras config,
its weights in Keras order (`layer.weights`), its inputs, and the mask Keras would pass it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

Config = dict[str, Any]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.tanh(0.5 * x) + 0.5  # = 1 / (1 + e^-x), without overflow for large -x


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": sigmoid,
    "softmax": softmax,
}


class TokenVectors(np.ndarray):
    """An Embedding's output [batch, time, dim] that remembers its token ids and table, so a layer reading it
    can project each distinct token once (`project`) instead of once per occurrence."""

    token_ids: np.ndarray | None = None
    table: np.ndarray | None = None


def embedding(config: Config, weights: list[np.ndarray], ids: np.ndarray, mask=None) -> np.ndarray:
    (table,) = weights
    # Gathered time-major, seen as [batch, time, dim]: pooling over time then adds whole contiguous steps
    # (measured: the pooled views of short texts a quarter faster than from batch-major rows).
    vectors = table[ids.T].transpose(1, 0, 2).view(TokenVectors)
    vectors.token_ids, vectors.table = ids, table
    return vectors


def project(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, cache: Cache | None) -> Callable:
    """x @ kernel + bias for x [batch, time, dim], as a function of the time step t (and optionally a first
    row) -> [batch, out].

    For token vectors, the projection of a token is the same wherever it occurs, so each token id is
    projected once and kept in `cache` (one row per vocabulary entry, filled as tokens are first seen), and
    step t gathers its rows: streaming many texts then costs little more than the recurrent matmuls.
    Otherwise all steps are projected in one 2-D BLAS matmul, stored time-major (each step contiguous)."""
    if isinstance(x, TokenVectors) and x.token_ids is not None and cache is not None:
        with cache.lock:
            if cache.rows is None:
                cache.rows = np.zeros((len(x.table), kernel.shape[1]), np.float32)  # pages stay untouched until used
                cache.done = np.zeros(len(x.table), bool)
            fresh = x.token_ids[~cache.done[x.token_ids]]  # occurrences of tokens not projected yet
            if len(fresh):
                # their distinct ids, sorted; not np.unique, which imports numpy.ma (13 ms of a cold start)
                wanted = np.zeros(len(cache.done), bool)
                wanted[fresh] = True
                new = np.flatnonzero(wanted)
                cache.rows[new] = x.table[new] @ kernel + (0 if bias is None else bias)
                cache.done[new] = True
        rows, ids = cache.rows, np.ascontiguousarray(x.token_ids.T)
        return lambda t, first=0: rows[ids[t, first:]]
    batch, steps, dim = x.shape
    xw = (np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(steps * batch, dim) @ kernel).reshape(steps, batch, -1)
    if bias is not None:
        xw += bias
    return lambda t, first=0: xw[t, first:]


class Cache:
    """Per-layer scratch kept by the Network between calls: projected token rows (see `project`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: np.ndarray | None = None
        self.done: np.ndarray | None = None
        self.weights: tuple | None = None  # weights rearranged for a faster step (see _fused_lstm_weights)
        self.children: dict[str, Cache] = {}

    def child(self, name: str) -> Cache:
        with self.lock:
            return self.children.setdefault(name, Cache())


def first_steps(config: Config, weights: list[np.ndarray], x: np.ndarray, mask=None) -> np.ndarray:
    """lstm_cli.model.FirstSteps: the first `steps` time steps of [batch, time, ...]."""
    first = x[:, : config["steps"]]
    if isinstance(x, TokenVectors) and x.token_ids is not None:  # still token vectors: projections stay cached
        first.token_ids, first.table = x.token_ids[:, : config["steps"]], x.table
    return first


def not_equal(config: Config, weights: list[np.ndarray], a: np.ndarray, b, mask=None) -> np.ndarray:
    return np.not_equal(a, b)  # Keras builds the padding mask with this op: ids != 0


def dense(config: Config, weights: list[np.ndarray], x: np.ndarray, mask=None) -> np.ndarray:
    y = x @ weights[0]
    if config["use_bias"]:
        y = y + weights[1]
    return ACTIVATIONS[config["activation"]](y)


def identity(config: Config, weights: list[np.ndarray], x: np.ndarray, mask=None) -> np.ndarray:
    return x  # Dropout, SpatialDropout1D: nothing happens at inference


def lstm(config: Config, weights: list[np.ndarray], x: np.ndarray, mask=None, cache: Cache | None = None) -> np.ndarray:
    """Keras LSTM (kernel columns in gate order i, f, C~, o)."""
    if config["activation"] == "tanh" and config["recurrent_activation"] == "sigmoid":  # Keras's defaults
        return _lstm_tanh_sigmoid(config, weights, x, mask, cache)
    recurrent_kernel = weights[1]
    activation = ACTIVATIONS[config["activation"]]
    gate = ACTIVATIONS[config["recurrent_activation"]]
    units = recurrent_kernel.shape[0]

    def step(xw_t: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = h @ recurrent_kernel
        z += xw_t
        f = gate(z[:, units : 2 * units])  # forget gate: how much of the old cell to keep
        i = gate(z[:, :units])  # input gate: how much of the candidate to write
        c_candidate = activation(z[:, 2 * units : 3 * units])  # C~
        o = gate(z[:, 3 * units :])  # output gate
        c = f * c + i * c_candidate
        h = o * activation(c)
        return h, c

    zeros = np.zeros((x.shape[0], units), np.float32)
    return _recurrence(config, weights, x, mask, cache, step, (zeros, zeros))


def _fused_lstm_weights(weights: list[np.ndarray], use_bias: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Keras's LSTM kernels and bias rearranged for `_lstm_tanh_sigmoid`'s step: gate columns in the order
    i, f, o, C~, the three sigmoid gates' columns halved (one tanh over a step's pre-activations then gives
    every gate, as sigmoid(x) = (1 + tanh(x / 2)) / 2, the sigmoid gates side by side), and the recurrent
    kernel halved once more, as the step keeps 2h, not h. Halving is exact in float32."""
    units = weights[1].shape[0]
    i, f, c, o = (slice(k * units, (k + 1) * units) for k in range(4))

    def arrange(a: np.ndarray) -> np.ndarray:
        return np.concatenate([0.5 * a[..., i], 0.5 * a[..., f], 0.5 * a[..., o], a[..., c]], axis=-1)

    return arrange(weights[0]), 0.5 * arrange(weights[1]), arrange(weights[2]) if use_bias else None


def _lstm_tanh_sigmoid(config: Config, weights, x: np.ndarray, mask, cache: Cache | None) -> np.ndarray:
    """`lstm` with Keras's default activations, in place: about ten numpy calls a time step instead of twenty
    (on short texts the calls, not the arithmetic, are most of the time).

    The gates are kept as 1 + tanh = 2 sigmoid (one call for all three, not two), so the step computes
    2 (f c + i C~), halves it, and carries 2h into the next step's matmul against a halved recurrent kernel:
    the same float32 numbers as the textbook step (scaling by 2 is exact), halved once at the end.

    Where some texts have ended, only the rows still running are computed when they are the batch's last
    rows (always, as batches are sorted by length and right-padded); any other mask takes a general path."""
    if cache is not None:
        with cache.lock:
            if cache.weights is None:
                cache.weights = _fused_lstm_weights(weights, config["use_bias"])
        kernel, recurrent_kernel, bias = cache.weights
    else:
        kernel, recurrent_kernel, bias = _fused_lstm_weights(weights, config["use_bias"])
    xw = project(x, kernel, bias, cache)
    batch, steps = x.shape[:2]
    units = recurrent_kernel.shape[0]
    if mask is None:
        mask = np.ones((batch, steps), dtype=bool)
    # The rows running at step t: those from first_row[t] on, when they are the last ones (the mask column
    # reads F..F T..T, as in a batch sorted by length), else -1.
    suffix = (mask[1:] >= mask[:-1]).all(axis=0)
    first_row = np.where(suffix, batch - mask.sum(axis=0), -1).tolist()
    sequences = config["return_sequences"]
    outputs = np.empty((steps, batch, units), np.float32) if sequences else None  # time-major: each step contiguous
    h, c = np.zeros((batch, units), np.float32), np.zeros((batch, units), np.float32)  # 2h and c
    z = np.empty((batch, 4 * units), np.float32)
    order = range(steps - 1, -1, -1) if config["go_backwards"] else range(steps)
    for k, t in enumerate(order):
        first = first_row[t]
        new = outputs[k] if sequences else h  # h @ U is done before h is overwritten: the new 2h can take its place
        if first >= 0:  # the rows from `first` on run (all of them when 0)
            if first < batch:
                _lstm_step(z[first:], h[first:], c[first:], new[first:], xw(t, first), recurrent_kernel, units)
            if first and new is not h:  # the others keep their state, and output it (or zeros, below)
                new[:first] = h[:first]
        else:
            keep = mask[:, t, None]
            new_c, new_h = c.copy(), np.empty_like(h)
            _lstm_step(z, h, new_c, new_h, xw(t), recurrent_kernel, units)
            np.copyto(c, new_c, where=keep)
            np.copyto(new, np.where(keep, new_h, h))
        h = new
    if not sequences:
        output = h
        if config["zero_output_for_mask"]:
            output = np.where(mask[:, order[-1], None], h, np.float32(0)) if steps else h
        return output * np.float32(0.5)
    if config["zero_output_for_mask"]:
        outputs[~mask.T[list(order)]] = 0
    outputs *= np.float32(0.5)
    return outputs.transpose(1, 0, 2)


def _lstm_step(
    z: np.ndarray, h: np.ndarray, c: np.ndarray, new_h: np.ndarray, xw_t: np.ndarray, u: np.ndarray, units: int
) -> None:
    """One LSTM time step for the rows given, in place: c becomes the new cell, new_h the new 2h."""
    np.matmul(h, u, out=z)
    z += xw_t
    np.tanh(z, out=z)
    z[:, : 3 * units] += 1  # 2 i, 2 f, 2 o
    candidate = z[:, 3 * units :]
    candidate *= z[:, :units]  # 2 i C~, what is written to the cell
    c *= z[:, units : 2 * units]  # 2 f c
    c += candidate
    c *= 0.5
    np.tanh(c, out=new_h)
    new_h *= z[:, 2 * units : 3 * units]  # 2 o tanh(c) = 2h


def gru(config: Config, weights: list[np.ndarray], x: np.ndarray, mask=None, cache: Cache | None = None) -> np.ndarray:
    """Keras GRU with reset_after=True (its default and the cuDNN form): the reset gate multiplies
    the recurrent projection h @ U_h + b_h after the matmul, and each of input and recurrent side has a bias."""
    recurrent_kernel = weights[1]
    activation = ACTIVATIONS[config["activation"]]
    gate = ACTIVATIONS[config["recurrent_activation"]]
    units = recurrent_kernel.shape[0]
    recurrent_bias = weights[2][1] if config["use_bias"] else np.zeros(3 * units, np.float32)

    def step(xw_t: np.ndarray, h: np.ndarray) -> tuple[np.ndarray]:
        hu = h @ recurrent_kernel
        hu += recurrent_bias
        z = gate(xw_t[:, :units] + hu[:, :units])  # update gate: how much of the old state to keep
        r = gate(xw_t[:, units : 2 * units] + hu[:, units : 2 * units])  # reset gate
        h_candidate = activation(xw_t[:, 2 * units :] + r * hu[:, 2 * units :])
        h = z * h + (1 - z) * h_candidate
        return (h,)

    return _recurrence(config, weights, x, mask, cache, step, (np.zeros((x.shape[0], units), np.float32),))


def _recurrence(config: Config, weights, x, mask, cache, step, state: tuple[np.ndarray, ...]) -> np.ndarray:
    """Run `step` over time as Keras's RNN layer does: a masked step keeps the state unchanged, and
    outputs zeros (zero_output_for_mask) or the last output there; go_backwards reads time reversed."""
    kernel = weights[0]
    bias = weights[2] if config["use_bias"] else None
    if bias is not None and bias.ndim == 2:  # GRU reset_after: [input bias, recurrent bias]
        bias = bias[0]
    # The input projections are computed outside the loop; only h @ U is left inside it.
    xw = project(x, kernel, bias, cache)
    if mask is None:
        mask = np.ones(x.shape[:2], dtype=bool)
    steps = x.shape[1]
    order = range(steps - 1, -1, -1) if config["go_backwards"] else range(steps)
    outputs = []
    for t in order:
        new = step(xw(t), *state)
        if mask[:, t].all():  # no text has ended yet (the usual case: batches are sorted by length)
            state = new
            outputs.append(new[0])
            continue
        keep = mask[:, t, None]
        state = tuple(np.where(keep, n, s) for n, s in zip(new, state, strict=True))
        outputs.append(np.where(keep, new[0], np.float32(0)) if config["zero_output_for_mask"] else state[0])
    return np.stack(outputs, axis=1) if config["return_sequences"] else outputs[-1]


def bidirectional(
    config: Config, weights: list[np.ndarray], x: np.ndarray, mask=None, cache: Cache | None = None
) -> np.ndarray:
    """The wrapped layer forwards, its twin backwards, outputs aligned in time and merged."""
    forward_config, backward_config = config["layer"], config["backward_layer"]
    half = len(weights) // 2
    run_forward = RECURRENT[forward_config["class_name"]]
    run_backward = RECURRENT[backward_config["class_name"]]
    caches = (cache.child("forward"), cache.child("backward")) if cache is not None else (None, None)
    forward = run_forward(_rnn_config(forward_config, config), weights[:half], x, mask, caches[0])
    backward = run_backward(_rnn_config(backward_config, config), weights[half:], x, mask, caches[1])
    if forward_config["config"]["return_sequences"]:
        backward = backward[:, ::-1]  # back to input order
    merge = config["merge_mode"]
    if merge == "concat":
        return np.concatenate([forward, backward], axis=-1)
    if merge == "sum":
        return forward + backward
    if merge == "ave":
        return (forward + backward) / 2
    return forward * backward  # "mul"


def _rnn_config(layer: Config, wrapper: Config) -> Config:
    # Bidirectional forces zero_output_for_mask = return_sequences on both directions.
    inner = dict(layer["config"])
    inner["zero_output_for_mask"] = inner["return_sequences"]
    return inner


def time_pooling(config: Config, weights: list[np.ndarray], x: np.ndarray, mask=None) -> np.ndarray:
    """lstm_cli.model.TimePooling: max or mean over the time steps the mask keeps ([batch, time, d] -> [batch, d]).

    The steps every row keeps (all of them but the tail of the shorter texts, as batches are sorted by
    length) are reduced in one call; only the tail is masked, step by step, each step on the rows that
    still run when they are the batch's last rows (as in a sorted batch), else through the whole mask."""
    x = np.asarray(x)
    batch, steps = x.shape[:2]
    if mask is None:
        mask = np.ones((batch, steps), dtype=bool)
    every_row = mask.all(axis=0)
    whole = steps if every_row.all() else int(np.argmin(every_row))  # leading steps no row masks
    tail = mask[:, whole:]
    starts = np.where((tail[1:] >= tail[:-1]).all(axis=0), batch - tail.sum(axis=0), -1).tolist()
    if config["mode"] == "max":
        pooled = x[:, :whole].max(axis=1) if whole else np.full((batch, x.shape[2]), -1e9, np.float32)
        for t, first in enumerate(starts, whole):
            if first >= 0:
                np.maximum(pooled[first:], x[first:, t], out=pooled[first:])
            else:
                np.maximum(pooled, np.where(mask[:, t, None], x[:, t], np.float32(-1e9)), out=pooled)
        return pooled
    total = x[:, :whole].sum(axis=1) if whole else np.zeros((batch, x.shape[2]), np.float32)
    for t, first in enumerate(starts, whole):
        if first >= 0:
            total[first:] += x[first:, t]
        else:
            total += np.where(mask[:, t, None], x[:, t], np.float32(0))
    return total / np.maximum(mask.sum(axis=1, dtype=np.float32)[:, None], np.float32(1))


# One definition for the SavedModel's BigramIds (lstm_cli.model) and this engine's. A prime above the
# vocabulary sizes lstm-cli uses (at most 100,000 by default): (a, b) -> a * M + b is one-to-one before the mod.
BIGRAM_MULTIPLIER = 1_000_003


def bigram_ids(config: Config, weights: list[np.ndarray], ids: np.ndarray, mask=None) -> np.ndarray:
    """lstm_cli.model.BigramIds: adjacent ids (a, b) -> (a * M + b) mod (buckets - 1) + 1, 0 where either is padding."""
    first, second = ids[:, :-1].astype(np.int64), ids[:, 1:].astype(np.int64)
    hashed = (first * BIGRAM_MULTIPLIER + second) % (config["buckets"] - 1) + 1
    return np.where((first != 0) & (second != 0), hashed, 0).astype(np.int32)


def bigram_vocabulary(config: Config, weights: list[np.ndarray], buckets: np.ndarray, mask=None) -> np.ndarray:
    """lstm_cli.model.BigramVocabulary: the bucket at position k of the sorted `kept` -> k, any other -> 0."""
    kept = weights[0]
    position = np.minimum(np.searchsorted(kept, buckets, side="left"), len(kept) - 1)
    return np.where(kept[position] == buckets, position, 0).astype(np.int32)


def concatenate(config: Config, weights: list[np.ndarray], *inputs: np.ndarray, mask=None) -> np.ndarray:
    tensors = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], list) else inputs
    return np.concatenate(tensors, axis=config["axis"])


RECURRENT = {"LSTM": lstm, "GRU": gru}
