"""Pretraining, top to bottom: the vocabulary of unlabeled texts, their token ids in an on-disk token cache, then
the phases `objective` names: the bag-of-words phase (lstm_cli.pretrain_bag: the embedding, from whole texts),
and/or one loop that trains an LSTM (and the embedding, unless the bag phase made it) as a language model (the
next token of every position).

The language model reads fixed windows cut from the texts laid end to end (no padding, so no mask, and every
position is a prediction), and predicts with a sampled softmax: each step scores the true next tokens and
`samples` tokens drawn from a log-uniform (Zipf) distribution over the vocabulary, which is sorted by
frequency, instead of the whole vocabulary (a full softmax over 30,000 tokens ran at 2,400 tokens/s here, the
sampled one at ~50,000). Held-out perplexity is measured exactly, with the full softmax, on a fixed held-out
part of the texts. The loop keeps the best state (lowest held-out perplexity), checkpoints it every
`eval_steps` steps so `--resume` continues where an interrupted run stopped, and stops at the time budget."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_cli.cache import TokenCache
from lstm_cli.config import PUNCTUATION, number_problem
from lstm_cli.corpus import ValidationSplit, scan
from lstm_cli.encoder import ARRAYS, BAG_ARRAYS
from lstm_cli.engine.tokenizer import Tokenizer
from lstm_cli.errors import DataError, LstmCliError
from lstm_cli.owned import check_checkpoint_dir
from lstm_cli.pretrain_bag import BagReport, BagResult, bag_phase, fresh_lstm
from lstm_cli.schema import npz_arrays, read_json

# Texts held out to measure perplexity: this fraction, at most HELDOUT_ROWS of them, and perplexity is taken
# over their first HELDOUT_TOKENS tokens (the full softmax over a 100,000-token vocabulary costs ~25 MFLOP a
# token: 20,000 tokens take a few seconds).
HELDOUT_FRACTION = 0.05
HELDOUT_ROWS = 2_000
HELDOUT_TOKENS = 20_000
STATE = "pretrain-state.json"  # the language model's; the bag-of-words phase's is bag-state.json
_WEIGHTS = re.compile(r"(pretrain|bag)-(latest|best)-(\d+)\.npz")
OBJECTIVES = ("bag", "lm", "bag+lm")
BAG_SHARE = 0.5  # of --budget, for the bag-of-words phase when the language model follows it


@dataclass(frozen=True)
class PretrainConfig:
    # The tokenizer, as `train` has it (a classifier started from the encoder keeps it)
    max_tokens: int = 100_000
    min_count: int = 2
    punctuation: str = "split"
    max_length: int = 2_000  # tokens kept per text
    # The network a classifier takes over: `train`'s defaults
    embedding_dim: int = 128
    units: int = 128
    # What is learned: "bag" (the bag-of-words phase: the embedding from whole texts; the LSTM stays at a fresh
    # start), "lm" (the language model: embedding and LSTM) or "bag+lm" (the bag phase for BAG_SHARE of the
    # budget, then the language model with the embedding frozen)
    objective: str = "bag"
    bag_steps: int = 20_000  # the bag phase's steps, at most
    bag_targets: int = 32  # words of the other half each text's half predicts
    bag_eval_steps: int = 1_000  # steps between the bag phase's held-out evaluations (and checkpoints)
    # The language model's training (window, epochs, max_steps, dropout, clip_norm, eval_steps: its only)
    window: int = 64  # tokens per training sequence (the LSTM's state starts at zero in each)
    batch_size: int = 128  # windows per step
    samples: int = 256  # sampled softmax: tokens scored against the true ones at each step
    learning_rate: float = 2e-3
    dropout: float = 0.1  # on the LSTM's inputs and outputs
    clip_norm: float = 1.0
    epochs: int = 10  # passes over the texts, at most
    max_steps: int | None = None
    budget: float | None = None  # seconds, from the start of the run; None: no limit
    eval_steps: int = 200  # steps between held-out evaluations (and checkpoints)
    seed: int = 1337

    def __post_init__(self) -> None:
        ranges = {"max_tokens": (3, 10_000_000), "min_count": (1, 2**31 - 1), "max_length": (1, 100_000),
                  "embedding_dim": (1, 4_096), "units": (1, 4_096), "window": (1, 100_000),
                  "batch_size": (1, 65_536), "samples": (1, 1_000_000), "dropout": (0.0, 0.99),
                  "clip_norm": (0.0, None), "epochs": (1, 1_000_000), "max_steps": (1, 2**31 - 1),
                  "eval_steps": (1, 2**31 - 1), "seed": (0, 2**32 - 1), "bag_steps": (0, 2**31 - 1),
                  "bag_targets": (1, 4_096), "bag_eval_steps": (1, 2**31 - 1)}  # fmt: skip
        problems = []
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value is None and name == "max_steps":
                continue
            integer = isinstance(low, int) and name not in ("dropout", "clip_norm")
            flag = "--" + name.replace("_", "-")
            problems.append(number_problem(flag, value, low, high, integer=integer))
        problems.append(number_problem("--learning-rate", self.learning_rate, 0.0, None, low_open=True))
        if self.budget is not None:
            problems.append(number_problem("--budget", self.budget, 0.0, None, low_open=True))
        if self.objective not in OBJECTIVES:
            problems.append(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.punctuation not in PUNCTUATION:
            problems.append(f"--punctuation must be one of {', '.join(PUNCTUATION)}, got {self.punctuation!r}")
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def standardization(self) -> str:
        return PUNCTUATION[self.punctuation]

    def run_identity(self) -> dict[str, Any]:
        """What a resumed run must share (not the budget, the passes or the step limit: those may grow)."""
        grow = ("epochs", "max_steps", "budget", "bag_steps")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in grow}


@dataclass
class EvalReport:
    step: int
    epoch: int  # passes begun, 1-based
    tokens: int  # training tokens predicted so far
    train_loss: float  # mean sampled-softmax loss since the last report
    perplexity: float  # held-out, full softmax
    best: bool
    seconds: float  # since the run began (earlier runs of a resumed one included)
    tokens_per_second: float  # training steps only, wall time
    cpu_tokens_per_second: float  # per second of process CPU time, times the cores used (2): shared machines


@dataclass
class PretrainResult:
    vocabulary: list[str]
    weights: dict[str, np.ndarray]  # lstm_cli.encoder's arrays, the best states'
    config: PretrainConfig
    history: list[dict[str, float]]  # the language model's evaluations
    steps: int  # the language model's (0 without it), as tokens and the perplexities
    tokens: int
    heldout_perplexity: float | None
    unigram_perplexity: float | None  # of the held-out tokens under the training tokens' frequencies: the bar
    rows: int
    heldout_rows: int
    seconds: float
    stopped_by: str  # "budget", "epochs", "max_steps", "bag_steps" or "stop"
    bag: BagResult | None = None
    warnings: list[str] = field(default_factory=list)

    def training(self) -> dict[str, Any]:
        """The encoder's `training` section: the language model's figures at the top level (as encoders before
        the bag phase had them), the bag phase's under `bag`."""
        lm = {} if self.heldout_perplexity is None else {
            "steps": self.steps, "tokens_seen": self.tokens, "heldout_perplexity": round(self.heldout_perplexity, 4),
            "unigram_perplexity": round(self.unigram_perplexity, 4)}  # fmt: skip
        return {"config": dataclasses.asdict(self.config), "objective": self.config.objective, "rows": self.rows,
                "heldout_rows": self.heldout_rows, **lm, **({"bag": self.bag.training()} if self.bag else {}),
                "seconds": round(self.seconds, 1), "stopped_by": self.stopped_by}  # fmt: skip


def _prepare(config: PretrainConfig, texts, cache_root: Path, stage) -> tuple[list[str], TokenCache, TokenCache]:
    """Two passes over the texts: the vocabulary (counted as `train` counts it), then every text encoded once
    into the token caches (training and held-out), unless a resumed run finds them already there."""
    stats = scan(((text, "") for text in texts), max_length=config.max_length, standardize=config.standardization)
    stage(f"Read {stats.rows:,} texts from {texts.name}")
    if stats.rows < 2:
        raise DataError(f"{texts.name}: {stats.rows} text; pretraining needs at least 2 (one is held out)")
    vocabulary = stats.vocabulary(config.max_tokens, config.min_count)
    if len(vocabulary) <= 2:
        raise DataError(
            f"{texts.name}: no word occurs {config.min_count} times, so the vocabulary is empty; lower --min-count "
            "or add texts"
        )
    fraction = min(HELDOUT_FRACTION, HELDOUT_ROWS / stats.rows)
    tokenizer = Tokenizer(vocabulary, max_length=config.max_length, standardize=config.standardization)
    identity = {
        "texts": texts.sha256,
        "reading": texts.reading(),
        "vocabulary": len(vocabulary),
        **{k: getattr(config, k) for k in ("max_tokens", "min_count", "punctuation", "max_length", "seed")},
    }

    def rows(held: bool) -> Iterator[tuple[list[int], int]]:
        split = ValidationSplit({"": stats.rows}, fraction, config.seed)
        return ((tokenizer.ids(text), 0) for text in texts if split.held("") == held)

    caches = []
    for name, held in (("train", False), ("heldout", True)):
        fingerprint = {**identity, "part": name}
        cache = TokenCache.open(cache_root / name, fingerprint)
        if cache is None:
            stage(f"Encoding the {name} texts into {cache_root / name}")
            cache = TokenCache.build(cache_root / name, rows(held), fingerprint=fingerprint, seed=config.seed)
        caches.append(cache)
    return vocabulary, caches[0], caches[1]


def windows(cache: TokenCache, window: int, batch_size: int, *, seed: int, epoch: int) -> Iterator[tuple]:
    """One pass of (inputs, targets) batches, int32 [rows, window] each: every shard's texts in an order of
    (seed, epoch), laid end to end and cut into windows (targets: the inputs one token on), windows shuffled.
    A shard's last few tokens (fewer than a window) are left out of this pass."""
    for k, encoded in enumerate(cache.texts()):
        rng = np.random.default_rng([seed, epoch, k])
        stream = encoded.take(rng.permutation(len(encoded))).values
        n = (len(stream) - 1) // window
        if n == 0:
            continue
        inputs = stream[: n * window].reshape(n, window)
        targets = stream[1 : n * window + 1].reshape(n, window)
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            yield inputs[rows], targets[rows]


def _heldout(cache: TokenCache, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out windows perplexity is measured on: the first HELDOUT_TOKENS tokens, in a fixed order."""
    stream = next(cache.texts()).values[: HELDOUT_TOKENS + 1]
    n = max(1, (len(stream) - 1) // window)
    width = min(window, len(stream) - 1)
    return stream[: n * width].reshape(n, width), stream[1 : n * width + 1].reshape(n, width)


def token_counts(cache: TokenCache, vocabulary_size: int) -> np.ndarray:
    """How often each token id occurs in the cache's texts (float64), a shard at a time."""
    counts = np.zeros(vocabulary_size, dtype=np.float64)
    for encoded in cache.texts():
        counts += np.bincount(encoded.values, minlength=vocabulary_size)[:vocabulary_size]
    return counts


def unigram_perplexity(train: TokenCache, heldout: np.ndarray, vocabulary_size: int) -> float:
    """The held-out tokens' perplexity under the training tokens' frequencies (add-one smoothed): what a model
    that ignores context scores, the bar a language model has to beat."""
    counts = token_counts(train, vocabulary_size) + 1
    log_p = np.log(counts / counts.sum())
    return float(np.exp(-log_p[heldout.ravel()].mean()))


def pretrain(
    config: PretrainConfig,
    texts,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    device: str = "auto",
    mixed_precision: bool = False,
    on_stage: Callable[[str], None] | None = None,
    on_eval: Callable[[EvalReport], None] | None = None,
    on_bag_eval: Callable[[BagReport], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> PretrainResult:
    """Train an embedding on the bag-of-words objective and/or an LSTM as a language model on `texts`
    (lstm_cli.texts.Texts), as `config.objective` says; returns the best states' weights. With
    `checkpoint_dir` the state is kept there at every evaluation, and `resume` continues from it. `stop()` is
    asked after every step: True ends the run (measured and kept like the end)."""
    started = time.perf_counter()
    stage = on_stage or (lambda _: None)
    if checkpoint_dir is not None:
        check_checkpoint_dir(checkpoint_dir)
    with contextlib.ExitStack() as cleanup:
        if checkpoint_dir is not None:
            from lstm_cli import checkpoint as ckpt

            ckpt.prepare(checkpoint_dir)
            cache_root = checkpoint_dir / "cache"
        else:
            cache_root = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="lstm-cli-pretrain-")))
        vocabulary, train_cache, heldout_cache = _prepare(config, texts, cache_root, stage)
        plan = _device_plan(device, mixed_precision)
        run = json.loads(json.dumps({"config": config.run_identity(), "texts": texts.sha256,
                                     "reading": texts.reading()}))  # fmt: skip
        if checkpoint_dir is not None and not resume:
            _clear(checkpoint_dir)
        bag = None
        if config.objective != "lm":
            bag = _bag(config, run, len(vocabulary), train_cache, heldout_cache, checkpoint_dir, resume, started,
                       stage, on_bag_eval, stop)  # fmt: skip
            if config.objective == "bag" or (stop is not None and stop()):
                weights = {"embedding": bag.weights["embedding"], **fresh_lstm(config),
                           **{k: bag.weights[k] for k in BAG_ARRAYS}}  # fmt: skip
                return PretrainResult(
                    vocabulary=vocabulary, weights=weights, config=config, history=[], steps=0, tokens=0,
                    heldout_perplexity=None, unigram_perplexity=None, rows=train_cache.rows,
                    heldout_rows=heldout_cache.rows, seconds=bag.seconds, stopped_by=bag.stopped_by,
                    bag=bag,
                )  # fmt: skip
            # The language model goes on from where the bag phase's clock stands (earlier runs included).
            if not (resume and checkpoint_dir is not None and (checkpoint_dir / STATE).exists()):
                started, resume = time.perf_counter() - bag.seconds, False
        result = _loop(config, run, vocabulary, train_cache, heldout_cache, checkpoint_dir, resume, plan, started,
                       stage, on_eval, stop,
                       frozen=bag.weights["embedding"] if bag else None)  # fmt: skip
        if bag is not None:
            result.weights.update({k: bag.weights[k] for k in BAG_ARRAYS})
            result.bag = bag
        return result


def _bag(config, run, size, train_cache, heldout_cache, checkpoint_dir, resume, started, stage, on_eval,
         stop) -> BagResult:  # fmt: skip
    """The bag-of-words phase (lstm_cli.pretrain_bag), its checkpoints in `checkpoint_dir` (bag-state.json)."""
    state, earlier = None, 0.0
    if resume and checkpoint_dir is not None:
        state = _read_state(checkpoint_dir, run, prefix="bag")
        latest, best = _read_weights(checkpoint_dir, state, prefix="bag")
        state = {**state, "latest": latest, "best_weights": best}
        earlier = state["seconds"]

    def elapsed() -> float:
        return earlier + time.perf_counter() - started

    def checkpoints(*, done, step, epoch, position, seen, history, best, model, optimizer) -> None:
        if checkpoint_dir is not None:
            from lstm_cli.model import keras

            _save_state(checkpoint_dir, run=run, step=step, epoch=epoch, position=position, tokens=seen,
                        seconds=elapsed(), history=history, prefix="bag", extra={"done": done},
                        best={"perplexity": best["loss"], "step": best["step"], "weights": best["weights"]},
                        model=model, optimizer=[keras.ops.convert_to_numpy(v) for v in optimizer])  # fmt: skip

    counts = token_counts(train_cache, size)
    share = 1.0 if config.objective == "bag" else BAG_SHARE
    deadline = None if config.budget is None else config.budget * share
    return bag_phase(config, size, train_cache, heldout_cache, counts, checkpoints=checkpoints, deadline=deadline,
                     elapsed=elapsed, stage=stage, on_eval=on_eval, stop=stop, state=state)  # fmt: skip


def _device_plan(device: str, mixed_precision: bool):
    """Where both phases run (lstm_cli.devices.decide): the language model's LSTM has Keras's defaults and no
    recurrent dropout, so it qualifies for cuDNN; the bag phase has no LSTM. GPUs are hidden for "cpu"."""
    from lstm_cli.config import TrainConfig
    from lstm_cli.devices import decide
    from lstm_cli.model import tf

    plan = decide(
        TrainConfig(recurrent_dropout=0.0),
        requested=device,
        gpus_visible=len(tf.config.list_physical_devices("GPU")),
        mixed_precision=mixed_precision,
    )
    if plan.device == "cpu" and tf.config.list_physical_devices("GPU"):
        tf.config.set_visible_devices([], "GPU")
    return plan


def _loop(config, run, vocabulary, train_cache, heldout_cache, checkpoint_dir, resume, plan, started, stage, on_eval,
          stop, *, frozen: np.ndarray | None = None) -> PretrainResult:  # fmt: skip
    """The language model; with `frozen`, its embedding is that (the bag phase's) and stays so."""
    from lstm_cli.model import dtype_policy, keras, tf
    from lstm_cli.optim import LazyAdam

    # 1. The device (decided before any phase, by _device_plan).
    window = min(config.window, max(1, train_cache.tokens // max(1, len(train_cache.shard_rows)) - 1))
    heldout_x, heldout_y = _heldout(heldout_cache, window)
    unigram = unigram_perplexity(train_cache, heldout_y, len(vocabulary))
    state = _read_state(checkpoint_dir, run) if resume and checkpoint_dir is not None else None

    # 2. The language model: the classifier's embedding and LSTM layers, then a softmax over the vocabulary.
    keras.utils.set_random_seed(config.seed)
    size, units = len(vocabulary), config.units
    with dtype_policy("mixed_float16" if plan.mixed_precision else "float32"):
        network = language_model(config, size)
        if frozen is not None:
            network.get_layer("embedding").embeddings.assign(frozen)
            network.get_layer("embedding").trainable = False  # so out of trainable_variables
        # float32 whatever the policy: the softmax's logits and its loss stay exact under mixed precision.
        softmax_w = keras.Variable(np.random.default_rng(config.seed).normal(0, 0.05, (size, units)).astype(np.float32),
                                   name="softmax_weights")  # fmt: skip
        softmax_b = keras.Variable(np.zeros(size, np.float32), name="softmax_bias")
        variables = [*network.trainable_variables, softmax_w, softmax_b]
        # LazyAdam: the embedding's and the softmax's gradients touch the rows of a batch's tokens only.
        optimizer = LazyAdam(config.learning_rate)
        if plan.mixed_precision:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(variables)
    scale = optimizer.dynamic_scale if plan.mixed_precision else 1.0
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec])
    def train_step(inputs, targets):
        with tf.GradientTape() as tape:
            hidden = tf.cast(tf.reshape(network(inputs, training=True), [-1, units]), tf.float32)
            labels = tf.reshape(tf.cast(targets, tf.int64), [-1, 1])
            loss = tf.reduce_mean(
                tf.nn.sampled_softmax_loss(
                    softmax_w, softmax_b, labels, hidden, num_sampled=min(config.samples, size), num_classes=size
                )  # fmt: skip
            )
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        if config.clip_norm > 0:
            gradients, _ = tf.clip_by_global_norm(gradients, config.clip_norm * scale)
        optimizer.apply(gradients, variables)
        return loss

    chunk = max(1, (1 << 24) // (size * window))  # windows scored at once: logits of at most 16M floats

    @tf.function(input_signature=[spec, spec])
    def heldout_loss(inputs, targets):
        hidden = tf.cast(tf.reshape(network(inputs, training=False), [-1, units]), tf.float32)
        logits = tf.matmul(hidden, softmax_w, transpose_b=True) + softmax_b
        labels = tf.reshape(targets, [-1])
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))

    def perplexity() -> float:
        total = sum(float(heldout_loss(heldout_x[i : i + chunk], heldout_y[i : i + chunk]))
                    for i in range(0, len(heldout_x), chunk))  # fmt: skip
        return math.exp(min(total / heldout_y.size, 700.0))

    def current() -> dict[str, np.ndarray]:
        lstm = network.get_layer("lstm_1").cell
        values = [network.get_layer("embedding").embeddings, lstm.kernel, lstm.recurrent_kernel, lstm.bias,
                  softmax_w, softmax_b]  # fmt: skip
        pairs = zip(ARRAYS, values, strict=True)
        return {name: np.array(keras.ops.convert_to_numpy(v), np.float32) for name, v in pairs}

    def assign(weights: dict[str, np.ndarray]) -> None:
        lstm = network.get_layer("lstm_1").cell
        targets = [network.get_layer("embedding").embeddings, lstm.kernel, lstm.recurrent_kernel, lstm.bias,
                   softmax_w, softmax_b]  # fmt: skip
        for name, variable in zip(ARRAYS, targets, strict=True):
            variable.assign(weights[name])

    # 3. Where the run left off.
    step, epoch, position, tokens, spent, history = 0, 0, 0, 0, 0.0, []
    best = {"perplexity": math.inf, "step": 0, "weights": None}
    if state is not None:
        latest, best_weights = _read_weights(checkpoint_dir, state)
        assign(latest["model"])
        for variable, value in zip(optimizer.variables, latest["optimizer"], strict=True):
            variable.assign(value)
        step, epoch, position, tokens = state["step"], state["epoch"], state["position"], state["tokens"]
        spent, history = state["seconds"], state["history"]
        best.update(perplexity=state["best_perplexity"], step=state["best_step"], weights=best_weights)
        stage(f"Resuming after step {step:,} (held-out perplexity {best['perplexity']:.1f} at step {best['step']:,})")

    def elapsed() -> float:
        return spent + time.perf_counter() - started

    stage(
        f"Language model on {plan.describe()}{', embedding frozen' * (frozen is not None)}: "
        f"{train_cache.rows:,} texts ({train_cache.tokens:,} tokens), "
        f"{heldout_cache.rows:,} held out; vocabulary {size:,}, windows of {window} tokens, batch {config.batch_size}, "
        f"{config.samples} sampled tokens a step; unigram perplexity {unigram:.1f}"
    )

    # 4. The loop: steps; every eval_steps steps (and at the end) held-out perplexity, the best state, a checkpoint.
    stopped_by, losses, step_seconds, step_cpu, step_tokens, last_eval = "epochs", [], 0.0, 0.0, 0, 0.0
    batches = _batches(train_cache, window, config, epoch, position)
    while True:
        finished = (
            "max_steps" if config.max_steps is not None and step >= config.max_steps
            else "budget" if config.budget is not None and elapsed() + last_eval >= config.budget
            else "stop" if stop is not None and stop()
            else None
        )  # fmt: skip
        batch = None if finished else next(batches, None)
        if batch is not None:
            epoch, position, (inputs, targets) = batch
            wall, cpu = time.perf_counter(), time.process_time()
            losses.append(float(train_step(inputs, targets)))
            step_seconds += time.perf_counter() - wall
            step_cpu += time.process_time() - cpu
            step, position = step + 1, position + 1
            tokens, step_tokens = tokens + targets.size, step_tokens + targets.size
            if not math.isfinite(losses[-1]):
                raise LstmCliError(f"pretraining diverged at step {step} (loss {losses[-1]}); lower --learning-rate")
            if step % config.eval_steps:
                continue
        else:
            stopped_by = finished or "epochs"
            if not losses and best["weights"] is not None:
                break  # nothing new since the last evaluation
        measured = time.perf_counter()
        value = perplexity()
        last_eval = time.perf_counter() - measured
        improved = value < best["perplexity"]
        if improved:
            best.update(perplexity=value, step=step, weights=current())
        report = EvalReport(step, epoch + 1, tokens, float(np.mean(losses)) if losses else math.nan, value, improved,
                            elapsed(), step_tokens / max(step_seconds, 1e-9),
                            step_tokens / max(step_cpu, 1e-9) * min(os.cpu_count() or 1, 2))  # fmt: skip
        history.append({k: v for k, v in dataclasses.asdict(report).items() if k != "best"})
        losses, step_seconds, step_cpu, step_tokens = [], 0.0, 0.0, 0
        if checkpoint_dir is not None:
            _save_state(checkpoint_dir, run=run, step=step, epoch=epoch, position=position, tokens=tokens,
                        seconds=elapsed(), history=history, best=best, model=current(),
                        optimizer=[keras.ops.convert_to_numpy(v) for v in optimizer.variables])  # fmt: skip
        if on_eval is not None:
            on_eval(report)
        if batch is None:
            break
    return PretrainResult(
        vocabulary=vocabulary, weights=best["weights"], config=dataclasses.replace(config, window=window),
        history=history, steps=step, tokens=tokens, heldout_perplexity=best["perplexity"], unigram_perplexity=unigram,
        rows=train_cache.rows, heldout_rows=heldout_cache.rows, seconds=time.perf_counter() - started,
        stopped_by=stopped_by,
    )  # fmt: skip


def language_model(config: PretrainConfig, vocabulary_size: int):
    """Token ids -> the LSTM's output at every position: the layers (names, shapes) a classifier has."""
    from lstm_cli.model import keras

    layers = keras.layers
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = layers.Embedding(vocabulary_size, config.embedding_dim, name="embedding")(ids)
    # Keras's default activations, a bias, no recurrent dropout: the fused cuDNN kernel on a GPU.
    x = layers.LSTM(config.units, return_sequences=True, dropout=config.dropout, name="lstm_1")(x)
    x = layers.Dropout(config.dropout, name="output_dropout")(x)
    return keras.Model(ids, x, name="lstm_cli_language_model")


def _batches(cache: TokenCache, window: int, config: PretrainConfig, epoch: int, position: int):
    """(epoch, batch index, batch) from batch `position` of pass `epoch` on, for at most config.epochs passes."""
    for current in range(epoch, config.epochs):
        for index, batch in enumerate(windows(cache, window, config.batch_size, seed=config.seed, epoch=current)):
            if current == epoch and index < position:
                continue
            yield current, index, batch
        position = 0


# --- checkpoints: pretrain-state.json names the weight files it goes with, and is written last --------------


def _clear(directory: Path) -> None:
    """Every phase's checkpoint files: a run that does not resume starts from nothing."""
    for prefix in ("pretrain", "bag"):
        (directory / f"{prefix}-state.json").unlink(missing_ok=True)
    for path in directory.iterdir():
        if _WEIGHTS.fullmatch(path.name):
            path.unlink()


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def _save_state(directory: Path, *, run, step, epoch, position, tokens, seconds, history, best, model, optimizer,
                prefix: str = "pretrain", extra: dict | None = None):  # fmt: skip
    latest = f"{prefix}-latest-{step}.npz"
    _write_npz(directory / latest, {**{f"model/{k}": v for k, v in model.items()},
                                    **{f"optimizer/{i:04d}": v for i, v in enumerate(optimizer)}})  # fmt: skip
    best_name = f"{prefix}-best-{best['step']}.npz"
    if not (directory / best_name).exists():
        _write_npz(directory / best_name, best["weights"])
    state = {"run": run, "step": step, "epoch": epoch, "position": position, "tokens": tokens, "seconds": seconds,
             "history": history, "best_perplexity": best["perplexity"], "best_step": best["step"],
             "latest": latest, "best": best_name, **(extra or {})}  # fmt: skip
    name = f"{prefix}-state.json"
    temporary = directory / f".{name}.tmp"
    temporary.write_text(json.dumps(state), encoding="utf-8")
    os.replace(temporary, directory / name)
    for path in directory.iterdir():  # the files of earlier states
        if (match := _WEIGHTS.fullmatch(path.name)) and match[1] == prefix and path.name not in (latest, best_name):
            path.unlink()


def _read_state(directory: Path, run: dict, prefix: str = "pretrain") -> dict:
    try:
        state = read_json(directory / f"{prefix}-state.json", follow_symlinks=False)
    except (OSError, ValueError):
        raise LstmCliError(f"{directory}: no pretraining checkpoint to resume from; run without --resume") from None
    if not isinstance(state, dict) or state.get("run") != run:
        raise LstmCliError(
            f"{directory}: the checkpoint is from a run with other texts or options; repeat that run's command "
            "with --resume, or drop --resume to start afresh"
        )
    return state


def _read_weights(directory: Path, state: dict, prefix: str = "pretrain") -> tuple[dict, dict]:
    from lstm_cli.owned import read_regular

    try:
        names = [state["latest"], state["best"]]
        if not all(isinstance(n, str) and (m := _WEIGHTS.fullmatch(n)) and m[1] == prefix for n in names):
            raise ValueError("bad file names")
        latest, best = (npz_arrays(read_regular(directory / n)) for n in names)
    except (OSError, ValueError, KeyError) as e:
        raise LstmCliError(f"{directory}: unreadable pretraining checkpoint ({e}); run without --resume") from None
    model = {k.split("/", 1)[1]: v for k, v in latest.items() if k.startswith("model/")}
    optimizer = [latest[k] for k in sorted(k for k in latest if k.startswith("optimizer/"))]
    return {"model": model, "optimizer": optimizer}, dict(best)
