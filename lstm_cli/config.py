"""Every training hyperparameter in one dataclass; CLI options map onto it and it is saved with the model."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

CELLS = ("lstm", "gru")
# --punctuation: how the tokenizer treats ASCII punctuation, and the standardization a model records for it
# (lstm_cli.engine.tokenizer's names; not imported from there: the engine package loads numpy, --help must not)
PUNCTUATION = {"split": "lower_and_split_punctuation", "strip": "lower_and_strip_punctuation"}
POOLS = ("last", "max", "mean")
OPTIMIZERS = ("adam", "lazy-adam")


@dataclass(frozen=True)
class TrainConfig:
    # Tokenization
    # Vocabulary size, including the padding and out-of-vocabulary ids: a cap, min_count decides below it (the
    # words of long topical texts, names and terms, are what tell their classes apart). Adam updates the whole
    # table every step; --optimizer lazy-adam makes a big one cost no more per step than a small one.
    max_tokens: int = 100_000
    min_count: int = 2  # tokens seen fewer times in training are out of vocabulary (one sighting teaches noise)
    # "split": punctuation separates words ('long-term' -> long, term; 'U.S.' -> u, s), apostrophes are deleted
    # ("don't" -> dont), as TF-IDF's tokenizer sees them. "strip": Keras's TextVectorization default, every
    # punctuation character deleted ('long-term' -> longterm): one rare token where there were two common ones.
    punctuation: str = "split"
    max_length: int = 2_000  # tokens kept per text; longer texts are truncated (bucketing: short texts cost no more)
    # The recurrent layers read the first this many tokens (the costly part of a long text); the pooled
    # embeddings and bigrams read all max_length: a whole article's words, at little cost.
    recurrent_length: int = 300
    # Network: the Keras tutorial's Embedding -> LSTM -> Dense, read through pooling over time. Defaults
    # chosen on seven public data sets (benchmarks/accuracy.py); the tutorial's recipe is
    # --pooling last --embedding-pooling none --bigram-buckets 0 --embedding-dropout 0 --recurrent-dropout 0.2
    # --dense-units 64 --no-weight-averaging.
    embedding_dim: int = 128
    units: int = 128  # recurrent units per layer (per direction when bidirectional)
    layers: int = 1  # stacked recurrent layers; all but the last return sequences
    cell: str = "lstm"  # "lstm" or "gru"
    bidirectional: bool = False
    dropout: float = 0.2  # on the recurrent layers' inputs
    recurrent_dropout: float = 0.0  # on the recurrent state; > 0 rules out cuDNN and costs ~1.7x on a CPU
    embedding_dropout: float = 0.2  # spatial dropout of embedding channels
    pooling: tuple[str, ...] = ("max", "mean")  # of the recurrent outputs over time, or ("last",): the final state
    embedding_pooling: tuple[str, ...] = ("max", "mean")  # of the embeddings over time (SWEM), beside the above
    # fastText's bigrams: each pair of adjacent tokens hashed into this many buckets, embedded and mean-pooled
    # beside the rest (word order the pooled embeddings lose). None: automatic (auto_bigram_buckets); 0: none.
    bigram_buckets: int | None = None
    bigram_dim: int = 64
    # > 0: only the buckets seen this many times in the training rows get an embedding row, and the others'
    # bigrams are left out of the mean (as min_count leaves out rare words). 0: every bucket is a row. None:
    # automatic (auto_bigram_min_count: 2 for a corpus with more distinct bigrams than a table holds, else 0).
    bigram_min_count: int | None = None
    dense_units: int | None = None  # hidden Dense(relu) before the output; 0 removes it; None: auto_dense_units
    dense_dropout: float = 0.5
    # Optimisation
    epochs: int = 20  # at most; early stopping usually ends training well before
    batch_size: int | None = None  # None: auto_batch_size(rows)
    learning_rate: float | None = None  # Adam's; None: auto_learning_rate(rows, batch_size)
    # "adam", or "lazy-adam": the embedding tables' rows updated only when a batch uses them (faster with big
    # vocabularies and bigram tables; measured a little less accurate on long reviews)
    optimizer: str = "adam"
    clip_norm: float = 0.0  # clip the global gradient norm to this (0: no clipping)
    l2: float = 0.0  # L2 penalty on the Dense and recurrent kernels
    patience: int = 2  # epochs without val_loss improvement before stopping (best weights kept)
    plateau_factor: float = 0.5  # an epoch without improvement multiplies the learning rate by this (1: constant)
    label_smoothing: float = 0.0  # train towards (1 - e) on the label and e spread over every label
    steps_per_epoch: int | None = None  # an "epoch" of this many steps (validation, checkpoint); None: one pass
    max_steps: int | None = None  # optimizer steps in all, at most; None: epochs * steps per epoch
    validation_split: float = 0.1  # stratified fraction held out when no --validation-data is given
    # The saved weights: the best epoch's, or the mean of a window of epochs around it (one or two epochs back,
    # forward or both) when that validates better (lstm_cli.averaging). Needs validation rows; False: always
    # the best epoch's.
    weight_averaging: bool = True
    # Fit a temperature on the validation rows and fold it into the softmax head, so probabilities match how
    # often the model is right (lstm_cli.calibration). Training itself is unchanged; False: the raw softmax.
    calibrate: bool = True
    seed: int = 1337
    # Imbalance and pretrained vectors
    class_weight: str | dict[str, float] | None = None  # "balanced" or {label: weight} (others weigh 1); None: all 1
    vectors: str | None = None  # word vectors file (text format) that initialises the embedding; its width wins
    freeze_vectors: bool = False  # keep the embedding fixed at the vectors (only with `vectors`)
    pretrained: str | None = None  # an encoder directory (`lstm-cli pretrain`) the embedding and LSTM start from
    # With `pretrained`: the encoder's layers (embedding, LSTM) learn at this fraction of the learning rate, and
    # not at all during the first `frozen_epochs` epochs (ULMFiT's discriminative rates and gradual unfreezing:
    # the new layers first learn to read them). No effect without `pretrained`.
    pretrained_rate: float = 1.0
    frozen_epochs: int = 0
    # Multi-label: a sigmoid per label and binary cross-entropy (lstm_cli.multilabel); a label field holds
    # one or more labels joined by label_separator (fastText lines: one __label__ each)
    multi_label: bool = False
    label_separator: str = ","

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def resolved(self, rows: int, tokens: int, distinct_bigrams: int = 0) -> TrainConfig:
        """This configuration with the automatic batch size, learning rate and bigram view made concrete.
        `distinct_bigrams`: in the training rows, hashed into BIGRAM_HASH_SPACE (see auto_bigram_min_count)."""
        min_count = self.bigram_min_count
        if min_count is None:  # automatic, unless the user sized the table: then every bucket is a row
            min_count = auto_bigram_min_count(distinct_bigrams) if self.bigram_buckets is None else 0
        buckets = self.bigram_buckets
        if buckets is None:
            buckets = BIGRAM_HASH_SPACE if min_count else auto_bigram_buckets(tokens)
        batch = self.batch_size or auto_batch_size(rows)
        rate = self.learning_rate or auto_learning_rate(rows, batch)
        dense = auto_dense_units(self.multi_label) if self.dense_units is None else self.dense_units
        return dataclasses.replace(self, batch_size=batch, learning_rate=rate, bigram_buckets=buckets,
                                   bigram_min_count=min_count, dense_units=dense)  # fmt: skip

    @property
    def standardization(self) -> str:
        """The tokenizer's standardization (lstm_cli.engine.tokenizer), as the model's metadata names it."""
        return PUNCTUATION[self.punctuation]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        # A configuration saved before --punctuation existed was tokenized the Keras way.
        values = {"punctuation": "strip", **values}
        # JSON has no tuples: lists come back as the tuples the fields hold.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def auto_dense_units(multi_label: bool) -> int:
    """The hidden Dense layer's width: 128, or none (0) for a multi-label model. Measured on GoEmotions (28
    labels, dev micro-F1 at the chosen threshold, seed 1337): 0.5094 with 128 units, 0.5469 with none (test
    0.510 -> 0.543); a sigmoid per label reads the pooled features directly better than through a ReLU layer
    with dropout 0.5 that all labels share."""
    return 0 if multi_label else 128


def auto_batch_size(rows: int) -> int:
    """A power of two from 32 to 512 giving an epoch about 100 steps or more: at most rows/100.

    Updates, not passes, are what a model learns from: 1,600 long articles in batches of 128 gave 13
    steps an epoch and starved the model. Large data still gets large batches, which on a CPU cost
    little more per step than small ones (SST-2: 512 trains ~2.5x as many tokens/s as 128). At least 32:
    a step over long texts is hundreds of small sequential operations, whatever the batch, and BBC's
    1,600 articles in batches of 16 trained in 167 s, in batches of 32 (with auto_learning_rate) in 91 s,
    as accurately (0.972 against 0.974, three seeds)."""
    return int(min(512, max(32, 2 ** math.floor(math.log2(max(rows / 100, 1))))))


def auto_learning_rate(rows: int, batch_size: int) -> float:
    """Adam's learning rate: 1e-3, or 2e-3 when an epoch has fewer than 100 steps (small data, or a batch
    size larger than auto_batch_size's), which then take larger ones. Measured: 1e-3 at batch 512 on SST-2
    (twice that lost accuracy); 2e-3 for BBC at batch 32 (1e-3 there: 0.960 against 0.972). Doubling both
    the batch and the rate on every set with fewer than 51,200 rows lost product reviews a point."""
    return 2e-3 if rows / batch_size < 100 else 1e-3


# The automatic buckets with a --bigram-min-count: a hash space, not a table (only buckets seen often enough get
# a row), so wide enough that distinct bigrams rarely share a bucket (a corpus of 300,000 distinct bigrams: ~2%).
BIGRAM_HASH_SPACE = 2**24
# At most this many bigram buckets get a row (the most frequent): the largest table the automatic buckets
# have without a min count, so a big corpus costs no more per step than it did then.
BIGRAM_MAX_ROWS = 131_072


def auto_bigram_buckets(tokens: int) -> int:
    """Without a --bigram-min-count (every bucket a row of the table): a power of two from 4,096 to 131,072,
    about a quarter of the training tokens: few collisions among the bigrams that recur, and a table (buckets
    x bigram_dim floats) that small data keeps small."""
    return int(min(131_072, max(4_096, 2 ** math.ceil(math.log2(max(tokens / 4, 1))))))


# Above this many distinct bigrams in the training rows, the automatic bigram min count is 2.
AUTO_BIGRAM_MIN_COUNT_ABOVE = 200_000


def auto_bigram_min_count(distinct_bigrams: int) -> int:
    """2 when the training rows hold more than AUTO_BIGRAM_MIN_COUNT_ABOVE distinct bigrams (about 1.5 times
    the largest automatic table, BIGRAM_MAX_ROWS), else 0 (every bucket a row).

    Hashing every bigram of a large corpus crowds several into each row of the table, and a bigram seen once
    gets a row that only memorises its text; then the rows go to the bigrams seen twice (the most frequent
    BIGRAM_MAX_ROWS) and the others are left out of the mean. Measured (3 seeds; the corpora's distinct
    bigrams after the validation split, in thousands): product reviews (~285) +0.7 points and BBC News
    (~240) +0.2 over six seeds, both faster (fewer rows); Reuters R8 (~155) lost 2.4 points of macro-F1 on
    its rare classes, SST-2 (~60) 1.5 points of accuracy (its test sentences have half their bigrams unseen
    in its training phrases): below the line, both keep every bigram."""
    return 2 if distinct_bigrams > AUTO_BIGRAM_MIN_COUNT_ABOVE else 0


# (field, lowest allowed, highest allowed, highest is exclusive). Every numeric field is checked for its type
# (a whole number for the int fields), finiteness and range; the highest values bound what a model may
# allocate (a layer of 10**9 units is a MemoryError, not a model).
_RANGES: tuple[tuple[str, float, float | None, bool], ...] = (
    ("max_tokens", 3, 10_000_000, False),
    ("min_count", 1, 2**31 - 1, False),
    ("max_length", 1, 100_000, False),
    ("recurrent_length", 1, 100_000, False),
    ("embedding_dim", 1, 4_096, False),
    ("units", 1, 4_096, False),
    ("layers", 1, 16, False),
    ("dropout", 0.0, 1.0, True),
    ("recurrent_dropout", 0.0, 1.0, True),
    ("embedding_dropout", 0.0, 1.0, True),
    ("bigram_buckets", 0, BIGRAM_HASH_SPACE, False),
    ("bigram_dim", 1, 4_096, False),
    ("bigram_min_count", 0, 2**31 - 1, False),
    ("dense_units", 0, 65_536, False),
    ("dense_dropout", 0.0, 1.0, True),
    ("epochs", 1, 1_000_000, False),
    ("batch_size", 1, 65_536, False),
    ("learning_rate", 0.0, None, False),  # > 0 (see _OPEN_BELOW)
    ("clip_norm", 0.0, None, False),
    ("l2", 0.0, None, False),
    ("patience", 0, 1_000_000, False),
    ("plateau_factor", 0.0, 1.0, False),
    ("label_smoothing", 0.0, 1.0, True),
    ("steps_per_epoch", 1, 2**31 - 1, False),
    ("max_steps", 1, 2**31 - 1, False),
    ("validation_split", 0.0, 1.0, True),
    ("seed", 0, 2**32 - 1, False),
    ("pretrained_rate", 0.0, 1.0, False),
    ("frozen_epochs", 0, 1_000_000, False),
)
_OPEN_BELOW = frozenset({"learning_rate"})  # the lowest value itself is refused


# The fields whose default is None: made concrete from the data (TrainConfig.resolved) or left unset.
AUTOMATIC = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.default is None)
# The fields that hold whole numbers (annotations are strings here: `from __future__ import annotations`).
INTEGERS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.type in ("int", "int | None"))


def number_problem(
    flag: str,
    value: object,
    low: float,
    high: float | None = None,
    *,
    integer: bool = False,
    high_open: bool = False,
    low_open: bool = False,
) -> str | None:
    """What is wrong with `value` as the number `flag` takes (its type, finiteness, range), or None.

    The one check of every numeric option and configuration value: TrainConfig's fields, --worker-timeout,
    tune's --budget, TF_CONFIG's task index."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{flag} must be a number, got {value!r}"
    if integer and not isinstance(value, int):
        return f"{flag} must be a whole number, got {value!r}"
    if not math.isfinite(value):
        return f"{flag} must be a finite number, got {value}"
    if value < low or (low_open and value == low):
        return f"{flag} must be {'>' if low_open else '>='} {low}, got {value}"
    if high is not None and (value >= high if high_open else value > high):
        return f"{flag} must be {'<' if high_open else '<='} {high}, got {value}"
    return None


def config_problems(config: TrainConfig) -> list[str]:
    """Human-readable problems with a configuration, as `--option: reason` strings."""
    problems = []
    for name, low, high, high_open in _RANGES:
        value = getattr(config, name)
        if value is None and name in AUTOMATIC:
            continue  # automatic
        problem = number_problem("--" + name.replace("_", "-"), value, low, high, integer=name in INTEGERS,
                                 high_open=high_open, low_open=name in _OPEN_BELOW)  # fmt: skip
        if problem:
            problems.append(problem)
    if not config.pooling or any(p not in POOLS for p in config.pooling):
        problems.append(f"--pooling takes {', '.join(POOLS)}, got {','.join(config.pooling) or 'nothing'}")
    elif "last" in config.pooling and len(config.pooling) > 1:
        problems.append("--pooling last cannot be combined with max or mean")
    if any(p not in ("max", "mean") for p in config.embedding_pooling):
        problems.append(f"--embedding-pooling takes max, mean, got {','.join(config.embedding_pooling)}")
    if len(set(config.pooling)) != len(config.pooling) or len(set(config.embedding_pooling)) != len(
        config.embedding_pooling
    ):
        problems.append("--pooling and --embedding-pooling take each kind once")
    if config.bigram_buckets == 1:
        problems.append("--bigram-buckets must be 0 (no bigrams) or >= 2, got 1")
    if config.optimizer not in OPTIMIZERS:
        problems.append(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")
    if config.punctuation not in PUNCTUATION:
        problems.append(f"--punctuation must be one of {', '.join(PUNCTUATION)}, got {config.punctuation!r}")
    if config.cell not in CELLS:
        problems.append(f"--cell must be one of {', '.join(CELLS)}, got {config.cell!r}")
    problems.extend(class_weight_problems(config.class_weight))
    if config.freeze_vectors and not config.vectors:
        problems.append("--freeze-vectors needs --vectors FILE")
    if config.pretrained and config.vectors:
        problems.append("--vectors and --pretrained both give the embedding's start; give one")
    if (
        not isinstance(config.label_separator, str)
        or not config.label_separator
        or any(c in config.label_separator for c in "\r\n")
    ):
        problems.append(
            f"--label-separator must be one or more characters, no line break, got {config.label_separator!r}"
        )
    if config.multi_label and config.class_weight is not None:
        problems.append("--class-weight is for single-label models; leave it out with --multi-label")
    return problems


def class_weight_problems(value: object) -> list[str]:
    if value is None or value == "balanced":
        return []
    if not isinstance(value, dict) or not value:
        return [f"--class-weight must be 'balanced' or a JSON object of label weights, got {value!r}"]
    return [
        f"--class-weight: the weight of {label!r} must be a positive number, got {weight!r}"
        for label, weight in value.items()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf
    ]


def parse_class_weight(text: str | None) -> str | dict[str, float] | None:
    """The --class-weight option: 'balanced', or a JSON object such as '{"spam": 4}'. Raises ValueError."""
    if text is None or text.strip() == "balanced":
        return None if text is None else "balanced"
    from lstm_cli.schema import MAX_OPTION_JSON_BYTES, JsonLimit, load_json

    try:
        value = load_json(text, max_bytes=MAX_OPTION_JSON_BYTES)
    except JsonLimit as e:
        raise ValueError(str(e)) from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"--class-weight must be 'balanced' or a JSON object such as '{{\"spam\": 4}}' ({e.msg} at column "
            f"{e.colno})"
        ) from None
    problems = class_weight_problems(value)
    if problems:
        raise ValueError(problems[0])
    return {str(label): float(weight) for label, weight in value.items()}


def class_weights(setting: str | dict[str, float] | None, labels: list[str], counts: dict[str, int]) -> list[float]:
    """One weight per label, in `labels` order. 'balanced' is scikit-learn's n_samples / (n_classes * count)."""
    if setting is None:
        return [1.0] * len(labels)
    if setting == "balanced":
        total = sum(counts[label] for label in labels)
        return [total / (len(labels) * counts[label]) for label in labels]
    return [float(setting.get(label, 1.0)) for label in labels]
