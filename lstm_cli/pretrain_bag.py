"""The bag-of-words phase of `pretrain`: word embeddings learned from whole texts, before (or instead of) the
language model.

Each step takes a batch of texts from the token cache; every text's tokens are split at random in two halves,
and the mean embedding of one half predicts `bag_targets` tokens drawn from the other (frequent words drawn
less often, as word2vec subsamples them), with a sampled softmax. Words that occur in the same texts end up
near each other: for reviews, sentiment and topic neighbours ("great": awesome, perfect, solid), where the
language model's embedding learns syntax ("great": good, wonderful, bad) and scored 0.590 against 0.784 when a
linear classifier read each text's mean embedding (1,000 labels of multi_domain_sentiment; docs: pretrain).
No LSTM, so no cuDNN question; everything is float32 whatever the dtype policy, so mixed precision cannot
touch it. The held-out bag loss (full softmax, a fixed set of held-out texts and targets) is the phase's
metric (the lowest marked on stderr), but the last state is kept: see bag_phase's end."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from lstm_cli.batching import EncodedTexts
from lstm_cli.cache import TokenCache
from lstm_cli.errors import LstmCliError

CONTEXT = 256  # context tokens per text, at most (a random subset of its half)
SUBSAMPLE = 1e-4  # word2vec's t: a target of frequency f is kept with probability min(1, sqrt(t / f))
HELDOUT_TEXTS = 1_024  # held-out texts the bag loss is measured on
FIRST_ID = 2  # ids 0 (padding) and 1 (out of vocabulary) are neither context nor target
MIN_TOKENS = 4  # texts with fewer in-vocabulary tokens are left out of this phase


@dataclass
class BagReport:
    step: int
    epoch: int  # passes begun, 1-based
    texts: int  # training texts read so far
    train_loss: float  # mean sampled-softmax loss since the last report
    heldout_loss: float  # full softmax, nats per target
    best: bool
    seconds: float  # since the run began (earlier runs of a resumed one included)
    steps_per_second: float


@dataclass
class BagResult:
    weights: dict[str, np.ndarray]  # embedding, bag_weights, bag_bias: the last state's
    history: list[dict[str, float]]
    steps: int
    texts: int
    heldout_loss: float  # the last state's
    unigram_loss: float  # of the held-out targets under the training targets' frequencies: the bar to beat
    seconds: float  # this phase's, earlier runs of a resumed one included
    stopped_by: str  # "budget", "bag_steps" or "stop"

    def training(self) -> dict:
        """The encoder's `training.bag` section."""
        return {"steps": self.steps, "texts_seen": self.texts, "heldout_loss": round(self.heldout_loss, 4),
                "unigram_loss": round(self.unigram_loss, 4),
                "first_heldout_loss": round(self.history[0]["heldout_loss"], 4) if self.history else None,
                "seconds": round(self.seconds, 1), "stopped_by": self.stopped_by}  # fmt: skip


def keep_probabilities(counts: np.ndarray) -> np.ndarray:
    """Per token id, the probability of keeping it as a target (word2vec's subsampling of frequent words)."""
    frequency = counts / max(counts[FIRST_ID:].sum(), 1)
    keep = np.minimum(1.0, np.sqrt(SUBSAMPLE / np.maximum(frequency, 1e-12)))
    keep[:FIRST_ID] = 0.0
    return keep


def bag_batch(texts: EncodedTexts, rows: np.ndarray, keep: np.ndarray, targets: int, rng: np.random.Generator):
    """(context int32 [b, <= CONTEXT] right-padded with 0, targets int64 [b, targets]) for the given rows: each
    row's in-vocabulary tokens shuffled, the first half (at most CONTEXT of it) the context, `targets` draws
    from the second half weighted by `keep`."""
    ids = texts.padded(rows)
    valid = ids >= FIRST_ID
    length = valid.sum(1)
    # A random order of each row's valid tokens first (padding and out-of-vocabulary ids sort last).
    order = np.argsort(np.where(valid, rng.random(ids.shape), 2.0), axis=1, kind="stable")
    shuffled = np.take_along_axis(ids, order, axis=1)
    rank = np.arange(ids.shape[1])[None, :]
    half = length // 2
    width = max(1, min(CONTEXT, int(half.max(initial=1))))
    context = np.where(rank[:, :width] < np.minimum(half, CONTEXT)[:, None], shuffled[:, :width], 0).astype(np.int32)
    # Targets: inverse-CDF draws over the other half, all rows at once on one flat cumulative sum.
    weight = np.where((rank >= half[:, None]) & (rank < length[:, None]), keep[shuffled], 0.0)
    cumulative = np.cumsum(weight.ravel())
    ends = cumulative.reshape(weight.shape)[:, -1]
    starts = ends - weight.sum(1)
    draws = starts[:, None] + (1.0 - rng.random((len(rows), targets))) * (ends - starts)[:, None]
    flat = np.searchsorted(cumulative, draws, side="left")
    first = np.arange(len(rows))[:, None] * ids.shape[1]  # rounding must not carry a draw into the next row
    flat = np.clip(flat, first, first + ids.shape[1] - 1)
    return context, shuffled.ravel()[flat].astype(np.int64)


def _eligible(texts: EncodedTexts, keep: np.ndarray) -> np.ndarray:
    """Rows with at least MIN_TOKENS in-vocabulary tokens, one of the second half's certainly drawable."""
    valid = (texts.values >= FIRST_ID) & (keep[texts.values] > 0)
    counts = np.add.reduceat(valid.astype(np.int64), texts.row_splits[:-1]) if len(texts) else np.zeros(0, np.int64)
    counts[texts.lengths == 0] = 0
    return np.flatnonzero(counts >= MIN_TOKENS)


def batches(cache: TokenCache, keep: np.ndarray, *, batch_size: int, targets: int, seed: int, epoch: int,
            position: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:  # fmt: skip
    """(epoch, batch index, context, targets) from batch `position` of pass `epoch` on, pass after pass: each
    pass reads the cache a shard at a time (flat memory), its eligible rows in an order of (seed, pass, shard).
    Every batch's halves and targets come from (seed, pass, batch index), so a resumed run draws the same."""
    while True:
        index = 0
        for k, texts in enumerate(cache.texts()):
            rows = _eligible(texts, keep)
            rows = rows[np.random.default_rng([seed, epoch, k]).permutation(len(rows))]
            for start in range(0, len(rows), batch_size):
                if index >= position:
                    rng = np.random.default_rng([seed, epoch, index, 1])
                    yield (epoch, index, *bag_batch(texts, rows[start : start + batch_size], keep, targets, rng))
                index += 1
        if index == 0:
            raise LstmCliError(f"no text has {MIN_TOKENS} in-vocabulary words: nothing to learn a bag of words from")
        epoch, position = epoch + 1, 0


def heldout_set(cache: TokenCache, keep: np.ndarray, targets: int, seed: int):
    """The held-out texts and targets the bag loss is measured on: fixed by the seed."""
    texts = next(cache.texts())
    rows = _eligible(texts, keep)[:HELDOUT_TEXTS]
    if len(rows) == 0:
        return None
    return bag_batch(texts, rows, keep, targets, np.random.default_rng([seed, 0, 0, 2]))


def bag_phase(config, vocabulary_size: int, train_cache: TokenCache, heldout_cache: TokenCache, counts: np.ndarray,
              *, checkpoints, deadline: float | None, elapsed: Callable[[], float],
              stage: Callable[[str], None], on_eval: Callable[[BagReport], None] | None,
              stop: Callable[[], bool] | None, state: dict | None) -> BagResult:  # fmt: skip
    """Train the embedding on the bag-of-words objective until config.bag_steps, `deadline` (seconds of
    `elapsed()`) or `stop()`; returns the last state. `checkpoints(step, ...)` saves the state; `state` is a
    checkpoint to continue from (its "latest" and "best" weights read)."""
    from lstm_cli.model import keras, tf

    size, dim, targets = vocabulary_size, config.embedding_dim, config.bag_targets
    keep = keep_probabilities(counts)
    heldout = heldout_set(heldout_cache, keep, targets, config.seed) or heldout_set(train_cache, keep, targets,
                                                                                      config.seed)  # fmt: skip
    if heldout is None:
        raise LstmCliError(f"no text has {MIN_TOKENS} in-vocabulary words: nothing to learn a bag of words from")
    # What a model that ignores the context scores: the targets' frequencies (add-one smoothed) for every text.
    target_counts = (counts + 1) * keep
    target_counts[:FIRST_ID] = 0
    unigram = float(-np.log(target_counts[heldout[1]] / target_counts.sum()).mean())
    # float32 variables and maths whatever the dtype policy: nothing here for mixed precision to round.
    keras.utils.set_random_seed(config.seed)  # the sampled softmax's draws
    rng = np.random.default_rng(config.seed)
    embedding = tf.Variable(rng.uniform(-0.05, 0.05, (size, dim)).astype(np.float32), name="embedding")
    out_w = tf.Variable(np.zeros((size, dim), np.float32), name="bag_weights")
    out_b = tf.Variable(np.zeros(size, np.float32), name="bag_bias")
    variables = [embedding, out_w, out_b]
    optimizer = keras.optimizers.Adam(config.learning_rate)
    optimizer.build(variables)

    def mean_embedding(context):
        mask = tf.cast(context > 0, tf.float32)[..., None]
        total = tf.reduce_sum(tf.gather(embedding, context) * mask, 1)
        return total / tf.maximum(tf.reduce_sum(mask, 1), 1.0)

    context_spec, target_spec = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, targets], tf.int64)

    @tf.function(input_signature=[context_spec, target_spec])
    def train_step(context, target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                tf.nn.sampled_softmax_loss(
                    out_w,
                    out_b,
                    target,
                    mean_embedding(context),
                    num_sampled=min(config.samples, size),
                    num_classes=size,
                    num_true=targets,
                )  # fmt: skip
            )
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    @tf.function(input_signature=[context_spec, target_spec])
    def heldout_sum(context, target):
        logits = tf.matmul(mean_embedding(context), out_w, transpose_b=True) + out_b
        return -tf.reduce_sum(tf.gather(tf.nn.log_softmax(logits), target, batch_dims=1))

    chunk = max(1, (1 << 24) // size)  # texts scored at once: logits of at most 16M floats

    def heldout_loss() -> float:
        context, target = heldout
        total = sum(float(heldout_sum(context[i : i + chunk], target[i : i + chunk]))
                    for i in range(0, len(context), chunk))  # fmt: skip
        return total / target.size

    def current() -> dict[str, np.ndarray]:
        return {v.name.split(":")[0]: v.numpy() for v in variables}

    step, epoch, position, seen, history = 0, 0, 0, 0, []
    best = {"loss": math.inf, "step": 0, "weights": None}
    if state is not None:
        for variable in variables:
            variable.assign(state["latest"]["model"][variable.name.split(":")[0]])
        for variable, value in zip(optimizer.variables, state["latest"]["optimizer"], strict=True):
            variable.assign(value)
        step, epoch, position, seen, history = (state[k] for k in ("step", "epoch", "position", "tokens", "history"))
        best.update(loss=state["best_perplexity"], step=state["best_step"], weights=state["best_weights"])
        if state.get("done"):
            return BagResult(state["latest"]["model"], history, step, seen, history[-1]["heldout_loss"], unigram,
                             state["seconds"],
                             state["done"])  # fmt: skip
        stage(f"Resuming the bag-of-words phase after step {step:,} (held-out loss {best['loss']:.3f})")
    stage(
        f"Bag-of-words phase: batches of {config.batch_size} whole texts, each half's mean embedding predicting "
        f"{targets} words of the other, {config.samples} sampled words a step; held-out loss on "
        f"{len(heldout[0]):,} texts (unigram loss {unigram:.3f}, the bar)"
    )
    stream = batches(train_cache, keep, batch_size=config.batch_size, targets=targets, seed=config.seed,
                     epoch=epoch, position=position)  # fmt: skip
    losses, step_seconds, last_eval, stopped_by = [], 0.0, 0.0, "bag_steps"
    while True:
        finished = (
            "bag_steps" if step >= config.bag_steps
            else "budget" if deadline is not None and elapsed() + last_eval >= deadline
            else "stop" if stop is not None and stop()
            else None
        )  # fmt: skip
        if finished is None:
            epoch, position, context, target = next(stream)
            wall = time.perf_counter()
            losses.append(float(train_step(context, target)))
            step_seconds += time.perf_counter() - wall
            step, position, seen = step + 1, position + 1, seen + len(context)
            if not math.isfinite(losses[-1]):
                raise LstmCliError(f"the bag-of-words phase diverged at step {step}; lower --learning-rate")
            if step % config.bag_eval_steps:
                continue
        else:
            stopped_by = finished
            if not losses and best["weights"] is not None:
                checkpoints(done=stopped_by, step=step, epoch=epoch, position=position, seen=seen, history=history,
                            best=best, model=current(), optimizer=optimizer.variables)  # fmt: skip
                break
        measured = time.perf_counter()
        value = heldout_loss()
        last_eval = time.perf_counter() - measured
        improved = value < best["loss"]
        if improved:
            best.update(loss=value, step=step, weights=current())
        report = BagReport(step, epoch + 1, seen, float(np.mean(losses)) if losses else math.nan, value, improved,
                           elapsed(), len(losses) / max(step_seconds, 1e-9))  # fmt: skip
        history.append({k: v for k, v in dataclasses.asdict(report).items() if k != "best"})
        losses, step_seconds = [], 0.0
        checkpoints(done=finished, step=step, epoch=epoch, position=position, seen=seen, history=history, best=best,
                    model=current(), optimizer=optimizer.variables)  # fmt: skip
        if on_eval is not None:
            on_eval(report)
        if finished:
            break
    # The last state, not the best held-out loss's: that loss flattens (the output layer fits the texts) while
    # the embedding keeps improving for a classifier (multi_domain_sentiment: a linear probe on the mean
    # embedding 0.788 at the lowest held-out loss, step 7,000, and 0.796 at step 11,000).
    return BagResult(current(), history, step, seen, history[-1]["heldout_loss"], unigram, elapsed(), stopped_by)


def fresh_lstm(config) -> dict[str, np.ndarray]:
    """An LSTM at Keras's initialisation (seeded), for an encoder whose language model phase did not run: the
    classifier's LSTM then learns from a fresh start, as it does without --pretrained."""
    from lstm_cli.model import keras

    keras.utils.set_random_seed(config.seed)
    layer = keras.layers.LSTM(config.units)
    layer.build((None, None, config.embedding_dim))
    cell = layer.cell
    names = ("lstm_kernel", "lstm_recurrent_kernel", "lstm_bias")
    return {n: np.asarray(keras.ops.convert_to_numpy(v), np.float32) for n, v in
            zip(names, (cell.kernel, cell.recurrent_kernel, cell.bias), strict=True)}  # fmt: skip
