"""The classifier: TextVectorization turns strings into token ids, then Embedding -> LSTM/GRU -> Dense.

The network takes right-padded int32 ids (0 = padding) and masks the padding, so a text gets the same
probabilities whatever it is batched with. Token ids are produced by `token_ids` in training and in the
exported SavedModel alike."""

from __future__ import annotations

import contextlib

from lstm_cli.config import TrainConfig
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


def make_vectorizer(max_tokens: int, vocabulary: list[str] | None = None):
    """A string -> ragged token ids layer; pass `vocabulary` (with '' and '[UNK]' first) to rebuild one."""
    vectorizer = layers.TextVectorization(
        max_tokens=max_tokens,
        standardize="lower_and_strip_punctuation",
        split="whitespace",
        output_mode="int",
        ragged=True,
        name="vectorizer",
    )
    if vocabulary is not None:
        vectorizer.set_vocabulary(vocabulary[2:])  # it adds the padding and OOV entries itself
    return vectorizer


def token_ids(vectorizer, texts, max_length: int):
    """Ragged int32 ids, truncated to `max_length`; an empty text becomes one OOV token.

    No row may be all padding: a fully masked sequence breaks cuDNN kernels on a GPU."""
    ids = tf.cast(vectorizer(texts), tf.int32)[:, :max_length]
    empty = tf.cast(tf.equal(ids.row_lengths(), 0), tf.int64)
    filler = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(empty)], tf.constant(OOV_ID, tf.int32)), empty)
    return tf.concat([ids, filler], axis=1)


def _recurrent_layer(config: TrainConfig, index: int, *, last: bool):
    cell = layers.LSTM if config.cell == "lstm" else layers.GRU
    rnn = cell(
        config.units,
        dropout=config.dropout,
        recurrent_dropout=config.recurrent_dropout,
        return_sequences=not last,  # stacked layers read the whole sequence below them
        name=f"{config.cell}_{index + 1}",
    )
    return layers.Bidirectional(rnn, name=f"bidirectional_{index + 1}") if config.bidirectional else rnn


def build_network(config: TrainConfig, *, vocabulary_size: int, num_classes: int):
    """Embedding -> recurrent layer(s) -> Dense(relu) -> Dropout -> softmax over the labels."""
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    # mask_zero: padding positions are skipped by the recurrent layers, not read as tokens.
    x = layers.Embedding(vocabulary_size, config.embedding_dim, mask_zero=True, name="embedding")(ids)
    for index in range(config.layers):
        x = _recurrent_layer(config, index, last=index == config.layers - 1)(x)
    if config.dense_units:
        x = layers.Dense(config.dense_units, activation="relu", name="dense")(x)
        x = layers.Dropout(config.dense_dropout, name="dense_dropout")(x)
    # Softmax even for two classes: users see one probability per label, summing to 1.
    # float32 so the output stays exact under a mixed-precision policy.
    probabilities = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(ids, probabilities, name="lstm_cli_classifier")
