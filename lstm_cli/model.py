"""The classifier: TextVectorization turns strings into token ids, then Embedding -> LSTM/GRU -> Dense.

The network takes right-padded int32 ids (0 = padding) and masks the padding, so a text gets the same
probabilities whatever it is batched with. Token ids are produced by `token_ids` in training and in the
exported SavedModel alike."""

from __future__ import annotations

import contextlib

import numpy as np

from lstm_cli.config import BIGRAM_MAX_ROWS, TrainConfig, auto_dense_units
from lstm_cli.engine.layers import BIGRAM_MULTIPLIER
from lstm_cli.engine.tokenizer import SEPARATORS, SPLIT_PUNCTUATION, STANDARDIZATIONS
from lstm_cli.tf_setup import import_tf

tf, keras = import_tf()
layers = keras.layers

PAD_ID = 0
OOV_ID = 1  # TextVectorization's single out-of-vocabulary id


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras' global dtype policy set to `name` (layers take it when built), then restored."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def split_punctuation(texts):
    """lstm-cli's standardization (SPLIT_PUNCTUATION; engine/tokenizer.py has the rules): ASCII lowercase,
    apostrophes deleted, the rest of TextVectorization's punctuation turned into spaces, which then split."""
    texts = tf.strings.regex_replace(tf.strings.lower(texts), "'", "")
    return tf.strings.regex_replace(texts, _SEPARATORS, " ")


_SEPARATORS = "[" + "".join("\\" + c for c in SEPARATORS) + "]"  # RE2: a backslash makes any punctuation literal


def make_vectorizer(max_tokens: int | None, vocabulary: list[str] | None = None, *, standardize: str):
    """A string -> ragged token ids layer; pass `vocabulary` (with '' and '[UNK]' first) to rebuild one.
    `standardize`: lstm_cli.engine.tokenizer.STRIP_PUNCTUATION (Keras's own) or SPLIT_PUNCTUATION."""
    if standardize not in STANDARDIZATIONS:
        raise ValueError(f"unknown standardization {standardize!r}")
    vectorizer = layers.TextVectorization(
        max_tokens=max_tokens,
        standardize=split_punctuation if standardize == SPLIT_PUNCTUATION else standardize,
        split="whitespace",
        output_mode="int",
        ragged=True,
        name="vectorizer",
    )
    if vocabulary is not None:
        vectorizer.set_vocabulary(vocabulary[2:])  # it adds the padding and OOV entries itself
        vectorizer.build(None)  # ready to export even if it never ran (training without validation)
    return vectorizer


def token_ids(vectorizer, texts, max_length: int):
    """Ragged int32 ids, truncated to `max_length`; an empty text becomes one OOV token.

    No row may be all padding: a fully masked sequence breaks cuDNN kernels on a GPU."""
    ids = tf.cast(vectorizer(texts), tf.int32)[:, :max_length]
    empty = tf.cast(tf.equal(ids.row_lengths(), 0), tf.int64)
    filler = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(empty)], tf.constant(OOV_ID, tf.int32)), empty)
    return tf.concat([ids, filler], axis=1)


@keras.saving.register_keras_serializable(package="lstm_cli")
class TimePooling(layers.Layer):
    """Max or mean over the time steps a mask keeps: padding never enters the result.

    Keras' GlobalMaxPooling1D ignores masks, so padded positions (zeros) could win a max."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("max", "mean"):
            raise ValueError(f"TimePooling mode must be 'max' or 'mean', got {mode!r}")
        self.mode = mode
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            mask = keras.ops.ones(keras.ops.shape(inputs)[:2], dtype="bool")
        keep = keras.ops.expand_dims(keras.ops.cast(mask, inputs.dtype), -1)
        if self.mode == "max":
            # Every row has at least one unmasked step (token_ids never yields an all-padding row).
            lowest = keras.ops.convert_to_tensor(-1e9, dtype=inputs.dtype)
            return keras.ops.max(keras.ops.where(keras.ops.expand_dims(mask, -1), inputs, lowest), axis=1)
        return keras.ops.sum(inputs * keep, axis=1) / keras.ops.maximum(keras.ops.sum(keep, axis=1), 1.0)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="lstm_cli")
class FirstSteps(layers.Layer):
    """The first `steps` time steps of [batch, time, ...]: all of them when there are fewer.

    Right padding stays right padding, so a text's first steps are the same whatever it is batched with.
    The output carries no mask: the layers reading it are given theirs explicitly (see build_network)."""

    def __init__(self, steps: int, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps
        self.supports_masking = True

    def call(self, inputs):
        return inputs[:, : self.steps]

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        time = input_shape[1]
        return (input_shape[0], None if time is None else min(time, self.steps), *input_shape[2:])

    def get_config(self):
        return {**super().get_config(), "steps": self.steps}


@keras.saving.register_keras_serializable(package="lstm_cli")
class BigramIds(layers.Layer):
    """Each pair of adjacent token ids hashed into buckets 1..buckets-1: [batch, time] -> [batch, time - 1],
    0 (padding, masked by the embedding that reads it) where either token is padding.

    The hash is plain integer arithmetic on the ids, (a * 1,000,003 + b) mod (buckets - 1) + 1, so the
    SavedModel and the numpy engine compute the same buckets."""

    def __init__(self, buckets: int, **kwargs):
        super().__init__(**kwargs)
        self.buckets = buckets

    def call(self, ids):
        first = keras.ops.cast(ids[:, :-1], "int64")
        second = keras.ops.cast(ids[:, 1:], "int64")
        hashed = keras.ops.mod(first * BIGRAM_MULTIPLIER + second, self.buckets - 1) + 1
        both = keras.ops.logical_and(keras.ops.not_equal(first, PAD_ID), keras.ops.not_equal(second, PAD_ID))
        return keras.ops.cast(keras.ops.where(both, hashed, keras.ops.zeros_like(hashed)), "int32")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None)

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets}


@keras.saving.register_keras_serializable(package="lstm_cli")
class BigramVocabulary(layers.Layer):
    """Hashed bigrams -> rows of the bigram embedding: the bucket at position k of `kept` (sorted, kept[0] = 0,
    the padding bucket) -> k; a bucket not kept (seen too rarely in training, or never) -> 0, which the
    embedding masks: the bigram mean is over the pairs the model has rows for.

    `kept` is a weight set after building (see build_network), filled from the training rows by
    `kept_bigrams`; `size` is its length."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = size
        self.kept = self.add_weight(shape=(size,), dtype="int32", initializer="zeros", trainable=False, name="kept")

    def call(self, buckets):
        flat = keras.ops.reshape(buckets, (-1,))
        position = keras.ops.minimum(keras.ops.searchsorted(self.kept, flat, side="left"), self.size - 1)
        position = keras.ops.cast(position, "int32")
        found = keras.ops.equal(keras.ops.take(self.kept, position), flat)
        rows = keras.ops.where(found, position, np.int32(0))
        return keras.ops.reshape(rows, keras.ops.shape(buckets))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def bigram_counts(texts, buckets: int) -> np.ndarray:
    """How many bigrams of `texts` fall in each bucket (index 0, padding's, stays 0): pairs of adjacent
    tokens within a row, hashed as BigramIds hashes them. `texts`: EncodedTexts (token ids and row splits),
    e.g. a token cache's shards, read one at a time. Memory: one uint32 per bucket (64 MiB for the 2^24
    hash space), and arrays for BIGRAM_SLICE pairs at a time, whatever the size of the corpus or of a shard;
    a count saturates at 2^32 - 1."""
    counts = np.zeros(buckets, dtype=np.uint32)
    for encoded in texts:
        starts = encoded.row_splits[1:-1]
        for begin in range(0, len(encoded.values) - 1, BIGRAM_SLICE):
            ids = encoded.values[begin : begin + BIGRAM_SLICE + 1].astype(np.int64)
            within = np.ones(len(ids) - 1, dtype=bool)  # pairs that do not straddle two rows
            first = np.searchsorted(starts, begin, side="right")  # row starts inside this slice, after its first id
            last = np.searchsorted(starts, begin + len(ids) - 1, side="right")
            within[starts[first:last] - begin - 1] = False
            hashed = (ids[:-1] * BIGRAM_MULTIPLIER + ids[1:]) % (buckets - 1) + 1
            seen, slice_counts = np.unique(hashed[within], return_counts=True)
            counts[seen] = np.minimum(counts[seen] + slice_counts, np.iinfo(np.uint32).max)
    return counts


# Token pairs bigram_counts hashes and sorts at once: its arrays stay near 150 MB, not a shard's whole size.
BIGRAM_SLICE = 1 << 22


def kept_bigrams(counts: np.ndarray, min_count: int, max_rows: int = BIGRAM_MAX_ROWS) -> np.ndarray:
    """The buckets of `bigram_counts` filled at least `min_count` times, the most frequent max_rows of them
    (ties: the lower bucket), sorted after 0, the padding bucket: what BigramVocabulary keeps."""
    kept = np.flatnonzero(counts >= max(min_count, 1))
    if len(kept) > max_rows:
        kept = np.sort(kept[np.lexsort((kept, -counts[kept].astype(np.int64)))[:max_rows]])
    return np.concatenate([[0], kept]).astype(np.int32)


def _l2(config: TrainConfig):
    return keras.regularizers.L2(config.l2) if config.l2 else None


def _recurrent_layer(config: TrainConfig, index: int, *, sequences: bool):
    cell = layers.LSTM if config.cell == "lstm" else layers.GRU
    rnn = cell(
        config.units,
        kernel_regularizer=_l2(config),
        recurrent_regularizer=_l2(config),
        dropout=config.dropout,
        recurrent_dropout=config.recurrent_dropout,
        return_sequences=sequences,  # stacked layers and pooling read the whole sequence
        name=f"{config.cell}_{index + 1}",
    )
    return layers.Bidirectional(rnn, name=f"bidirectional_{index + 1}") if config.bidirectional else rnn


def build_network(
    config: TrainConfig,
    *,
    vocabulary_size: int,
    num_classes: int,
    embeddings=None,
    trainable_embeddings: bool = True,
    bigrams: np.ndarray | None = None,
):
    """Embedding -> recurrent layer(s) -> pooling -> Dense(relu) -> Dropout -> softmax over the labels (a sigmoid
    per label with config.multi_label).

    `embeddings`: a [vocabulary_size, embedding_dim] matrix to start the embedding from (pretrained vectors).
    `bigrams`: with bigram_min_count, the buckets that get a row (`kept_bigrams`); None: none does."""
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    # mask_zero: padding positions are skipped by the recurrent layers, not read as tokens.
    embedding = layers.Embedding(
        vocabulary_size, config.embedding_dim, mask_zero=True, trainable=trainable_embeddings, name="embedding"
    )
    embedded = embedding(ids)
    if embeddings is not None:
        embedding.embeddings.assign(embeddings)  # assigned, not an initializer: no matrix in the model's config
    x, mask = embedded, None
    if config.recurrent_length < config.max_length:
        # The recurrent layers read the first recurrent_length tokens; the pooled views below read them all.
        # Their mask is given explicitly: the padding of the first steps of the ids.
        x = FirstSteps(config.recurrent_length, name="recurrent_steps")(embedded)
        mask = keras.ops.not_equal(FirstSteps(config.recurrent_length, name="recurrent_ids")(ids), PAD_ID)
    if config.embedding_dropout:
        # Drops whole embedding channels (the same ones at every step): words cannot be memorised by one unit.
        x = layers.SpatialDropout1D(config.embedding_dropout, name="embedding_dropout")(x)
    pooled = config.pooling != ("last",)
    for index in range(config.layers):
        last = index == config.layers - 1
        rnn = _recurrent_layer(config, index, sequences=not last or pooled)
        x = rnn(x) if mask is None else rnn(x, mask=mask)
    features = [x] if not pooled else [TimePooling(mode, name=f"{mode}_pool")(x) for mode in config.pooling]
    # SWEM: the embeddings pooled over the whole text, a bag-of-words view beside the recurrent one.
    features += [TimePooling(mode, name=f"embedding_{mode}_pool")(embedded) for mode in config.embedding_pooling]
    if config.bigram_buckets:
        buckets, rows = BigramIds(config.bigram_buckets, name="bigram_ids")(ids), config.bigram_buckets
        if config.bigram_min_count:
            kept = np.zeros(1, np.int32) if bigrams is None else bigrams
            keep = BigramVocabulary(len(kept), name="bigram_vocabulary")
            buckets, rows = keep(buckets), len(kept)
            keep.kept.assign(kept)
        bag = layers.Embedding(rows, config.bigram_dim, mask_zero=True, name="bigram_embedding")
        features.append(TimePooling("mean", name="bigram_mean_pool")(bag(buckets)))
    x = features[0] if len(features) == 1 else layers.Concatenate(name="features")(features)
    dense_units = auto_dense_units(config.multi_label) if config.dense_units is None else config.dense_units
    if dense_units:
        x = layers.Dense(dense_units, activation="relu", kernel_regularizer=_l2(config), name="dense")(x)
        x = layers.Dropout(config.dense_dropout, name="dense_dropout")(x)
    # Softmax even for two classes: users see one probability per label, summing to 1. Multi-label: a sigmoid
    # per label, each its own yes or no. float32 so the output stays exact under a mixed-precision policy.
    probabilities = layers.Dense(
        num_classes, activation="sigmoid" if config.multi_label else "softmax", dtype="float32",
        kernel_regularizer=_l2(config), name="probabilities",
    )(x)  # fmt: skip
    return keras.Model(ids, probabilities, name="lstm_cli_classifier")


def bigrams_of(network) -> np.ndarray | None:
    """The kept bigram buckets of a network build_network made (None when it has no BigramVocabulary)."""
    for layer in network.layers:
        if isinstance(layer, BigramVocabulary):
            return np.asarray(layer.kept.numpy(), dtype=np.int32)
    return None
