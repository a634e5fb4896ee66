"""Every training hyperparameter in one dataclass; CLI options map onto it and it is saved with the model."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

CELLS = ("lstm", "gru")
POOLS = ("last", "max", "mean")


@dataclass(frozen=True)
class TrainConfig:
    # Tokenization
    max_tokens: int = 20_000  # vocabulary size, including the padding and out-of-vocabulary ids
    max_length: int = 200  # tokens kept per text; longer texts are truncated
    # Network (the Keras tutorial recipe)
    embedding_dim: int = 128
    units: int = 128  # recurrent units per layer (per direction when bidirectional)
    layers: int = 1  # stacked recurrent layers; all but the last return sequences
    cell: str = "lstm"  # "lstm" or "gru"
    bidirectional: bool = False
    dropout: float = 0.2  # on the recurrent layers' inputs
    recurrent_dropout: float = 0.2  # on the recurrent state; > 0 rules out cuDNN on a GPU
    embedding_dropout: float = 0.0  # spatial dropout of embedding channels
    pooling: tuple[str, ...] = ("last",)  # over the recurrent outputs: "last" state, or "max"/"mean" over time
    embedding_pooling: tuple[str, ...] = ()  # "max"/"mean" of the embeddings over time (SWEM), beside the above
    dense_units: int = 64  # hidden Dense(relu) before the output; 0 removes it
    dense_dropout: float = 0.5
    # Optimisation
    epochs: int = 10
    batch_size: int | None = None  # None: auto_batch_size(rows, tokens)
    learning_rate: float = 1e-3  # Adam; measured best at batch 512 too (scaling it up lost accuracy)
    patience: int = 2  # epochs without val_loss improvement before stopping (best weights kept)
    validation_split: float = 0.1  # stratified fraction held out when no --validation-data is given
    seed: int = 1337

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def resolved(self, rows: int, tokens: int) -> TrainConfig:
        """This configuration with the automatic batch size made concrete."""
        return dataclasses.replace(self, batch_size=self.batch_size or auto_batch_size(rows, tokens))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        # JSON has no tuples: lists come back as the tuples the fields hold.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def auto_batch_size(rows: int, tokens: int) -> int:
    """About one batch per 1,024 training tokens, as a power of two from 32 to 512, and at most 1/8 of
    the rows (so an epoch has several updates even for few, long texts).

    Small data wants many updates per epoch; large data wants large batches, which on a CPU cost
    little more per step than small ones (SST-2: 512 trains ~2.5x as many tokens/s as 128)."""
    by_tokens = 2 ** round(math.log2(max(tokens / 1024, 1)))
    by_rows = 2 ** math.floor(math.log2(max(rows / 8, 1)))
    return int(max(32, min(512, by_tokens, by_rows)))


# (field, lowest allowed, highest allowed, highest is exclusive)
_RANGES: tuple[tuple[str, float, float | None, bool], ...] = (
    ("max_tokens", 3, None, False),
    ("max_length", 1, None, False),
    ("embedding_dim", 1, None, False),
    ("units", 1, None, False),
    ("layers", 1, None, False),
    ("dropout", 0.0, 1.0, True),
    ("recurrent_dropout", 0.0, 1.0, True),
    ("embedding_dropout", 0.0, 1.0, True),
    ("dense_units", 0, None, False),
    ("dense_dropout", 0.0, 1.0, True),
    ("epochs", 1, None, False),
    ("batch_size", 1, None, False),
    ("learning_rate", 0.0, None, False),
    ("patience", 0, None, False),
    ("validation_split", 0.0, 1.0, True),
    ("seed", 0, 2**32 - 1, False),
)


def config_problems(config: TrainConfig) -> list[str]:
    """Human-readable problems with a configuration, as `--option: reason` strings."""
    problems = []
    for name, low, high, high_open in _RANGES:
        value = getattr(config, name)
        if value is None and name == "batch_size":
            continue  # automatic
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{flag} must be a number, got {value!r}")
        elif value < low or (name == "learning_rate" and value <= 0):
            problems.append(f"{flag} must be {'> ' if name == 'learning_rate' else '>= '}{low}, got {value}")
        elif high is not None and (value >= high if high_open else value > high):
            problems.append(f"{flag} must be {'<' if high_open else '<='} {high}, got {value}")
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
    if config.cell not in CELLS:
        problems.append(f"--cell must be one of {', '.join(CELLS)}, got {config.cell!r}")
    return problems
