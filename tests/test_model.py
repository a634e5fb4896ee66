"""The network's correctness: masking makes padding irrelevant, and the LSTM computes the textbook gates."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encoded

from lstm_cli.config import TrainConfig


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def numpy_lstm(x: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Textbook LSTM over one sequence x [T, E]; Keras packs the gates as i, f, C~, o. Returns every h."""
    units = recurrent.shape[0]
    h, c, outputs = np.zeros(units), np.zeros(units), []
    for x_t in x:
        z = x_t @ kernel + h @ recurrent + bias
        i = sigmoid(z[:units])  # input gate
        f = sigmoid(z[units : 2 * units])  # forget gate
        c_tilde = np.tanh(z[2 * units : 3 * units])  # candidate cell state
        o = sigmoid(z[3 * units :])  # output gate
        c = f * c + i * c_tilde  # new cell state
        h = o * np.tanh(c)  # new hidden state
        outputs.append(h)
    return np.array(outputs)


@pytest.fixture(scope="module")
def network(trained_model):
    from lstm_cli.artifact import load_network

    return load_network(trained_model)


def test_trained_lstm_layer_matches_numpy_gate_equations(network):
    import keras

    lstm = network.get_layer("lstm_1")
    embed = network.get_layer("embedding")
    hidden = keras.Model(network.input, lstm.output)
    kernel, recurrent, bias = (w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in lstm.weights)
    table = np.asarray(embed.embeddings)
    sequences = [[5, 9, 2, 7, 3], [4, 4, 11], [8]]
    padded = np.zeros((3, 5), dtype=np.int32)
    for row, ids in enumerate(sequences):
        padded[row, : len(ids)] = ids
    got = np.asarray(hidden(padded, training=False))  # padded batch, masked
    for row, ids in enumerate(sequences):
        expected = numpy_lstm(table[ids].astype(np.float64), kernel, recurrent, bias)
        if got.ndim == 3:  # the layer returns every step (pooling over time reads them)
            np.testing.assert_allclose(got[row, : len(ids)], expected, atol=1e-5)
        else:
            np.testing.assert_allclose(got[row], expected[-1], atol=1e-5)


def test_padding_does_not_change_a_prediction(trained_model):
    from lstm_cli.predict import Predictor

    predictor = Predictor(trained_model)
    short = "good great"
    long_text = " ".join(["bad awful okay plain the movie"] * 50)
    alone = predictor.probabilities([short])[0]
    batched = predictor.probabilities([long_text, short, "", "!!! ..."])
    np.testing.assert_allclose(batched[1], alone, atol=1e-6)
    assert np.all(np.isfinite(batched)) and np.allclose(batched.sum(axis=1), 1, atol=1e-5)
    # an empty or all-punctuation text is one unknown token: same prediction, never an all-padding row
    np.testing.assert_allclose(batched[2], batched[3], atol=1e-6)


def test_no_row_is_all_padding_and_truncation_applies():
    import tensorflow as tf

    from lstm_cli.model import OOV_ID, make_vectorizer, token_ids

    vectorizer = make_vectorizer(20, standardize="lower_and_split_punctuation")
    vectorizer.adapt(tf.constant(["a b c", "b c d"]))
    ids = token_ids(vectorizer, tf.constant(["", "?!", "a b c d a b", "zzz"]), 4)
    rows = ids.to_list()
    assert rows[0] == rows[1] == [OOV_ID]
    assert len(rows[2]) == 4 and 0 not in rows[2]
    assert rows[3] == [OOV_ID]


@pytest.mark.parametrize(
    ("options", "layer_names"),
    [
        ({"cell": "gru"}, ["gru_1"]),
        ({"layers": 2}, ["lstm_1", "lstm_2"]),
        ({"bidirectional": True, "layers": 2}, ["bidirectional_1", "bidirectional_2"]),
        ({"dense_units": 0}, ["lstm_1"]),
        ({"pooling": ("last",)}, ["lstm_1"]),
        (
            {"pooling": ("max", "mean"), "embedding_pooling": ("max", "mean")},
            ["max_pool", "mean_pool", "embedding_max_pool", "embedding_mean_pool", "features"],
        ),
        ({"pooling": ("max",), "bidirectional": True, "embedding_dropout": 0.3}, ["max_pool", "embedding_dropout"]),
        ({"pooling": ("mean",), "cell": "gru", "layers": 2, "embedding_pooling": ("max",)}, ["mean_pool", "gru_2"]),
        ({"bigram_buckets": 50, "bigram_dim": 3}, ["bigram_ids", "bigram_embedding", "bigram_mean_pool"]),
        ({"recurrent_length": 2, "bigram_buckets": 50, "bigram_dim": 3}, ["recurrent_steps", "recurrent_ids"]),
        ({"recurrent_length": 2, "layers": 2, "bidirectional": True}, ["recurrent_steps", "bidirectional_2"]),
        ({"bigram_buckets": 50, "bigram_dim": 3, "bigram_min_count": 2}, ["bigram_ids", "bigram_embedding"]),
    ],
)
def test_network_options_build_and_stay_padding_invariant(options, layer_names):
    from lstm_cli.model import bigram_counts, build_network, kept_bigrams

    config = TrainConfig(embedding_dim=4, units=3, dense_units=options.pop("dense_units", 5), **options)
    bigrams = None
    if config.bigram_buckets and config.bigram_min_count:
        # Half the buckets these texts fill get a row (the others are left out): both kinds are in the batch.
        filled = kept_bigrams(bigram_counts([encoded([list(np.arange(1, 61) % 29 + 1)] * 2)], config.bigram_buckets), 1)
        bigrams = filled[::2]
        layer_names = [*layer_names, "bigram_vocabulary"]
    network = build_network(config, vocabulary_size=30, num_classes=4, bigrams=bigrams)
    names = [layer.name for layer in network.layers]
    assert all(name in names for name in layer_names)
    assert ("dense" in names) == (config.dense_units > 0)
    short = np.array([[3, 7, 2]], dtype=np.int32)
    batch = np.zeros((2, 60), dtype=np.int32)
    batch[0, :3] = short[0]
    batch[1, :] = np.arange(1, 61) % 29 + 1
    alone = np.asarray(network(short, training=False))
    together = np.asarray(network(batch, training=False))
    assert alone.shape == (1, 4)
    np.testing.assert_allclose(together[0], alone[0], atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_recurrent_layers_read_the_first_recurrent_length_tokens_and_the_pooled_views_all(cell):
    from lstm_cli.model import build_network

    def network(**options):
        config = TrainConfig(cell=cell, embedding_dim=4, units=3, dense_units=5, max_length=8, recurrent_length=3,
                             **options)  # fmt: skip
        return build_network(config, vocabulary_size=30, num_classes=4)

    texts = np.array([[3, 7, 2, 9, 11], [3, 7, 2, 12, 13]], dtype=np.int32)  # the same first 3 tokens
    recurrent_only = network(embedding_pooling=(), bigram_buckets=0)
    first, second = np.asarray(recurrent_only(texts, training=False))
    np.testing.assert_allclose(first, second, atol=1e-7)  # the tokens after the third are not read
    with_views = network(bigram_buckets=16, bigram_dim=2)
    first, second = np.asarray(with_views(texts, training=False))
    assert np.abs(first - second).max() > 1e-4  # the pooled embeddings and bigrams read them


def _slices(values: np.ndarray, indices: np.ndarray, rows: int):
    from lstm_cli.model import tf

    return tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([rows, values.shape[1]]))


def test_lazy_adam_updates_the_rows_a_batch_used_and_leaves_the_others_alone():
    from lstm_cli.model import keras
    from lstm_cli.optim import LazyAdam

    start = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    table = keras.Variable(start)
    lazy = LazyAdam(0.05)
    lazy.build([table])
    rng = np.random.default_rng(1)
    expected, velocity = start.astype(np.float64), np.zeros((6, 3))
    for t in range(1, 5):
        values = rng.normal(size=(5, 3)).astype(np.float32)
        indices = np.array([0, 1, 2, 3, 0])  # row 0 twice (its slices add up); rows 4 and 5 not at all
        lazy.apply([_slices(values, indices, 6)], [table])
        summed = np.zeros((6, 3))
        np.add.at(summed, indices, values)
        used = np.array([True] * 4 + [False] * 2)
        velocity[used] = 0.999 * velocity[used] + 0.001 * summed[used] ** 2
        expected[used] -= 0.05 * np.sqrt(1 - 0.999**t) * summed[used] / (np.sqrt(velocity[used]) + 1e-7)
        np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(table.numpy()[4:], start[4:])


def test_lazy_adam_moves_a_rare_row_as_far_as_adam_does_and_is_adam_on_dense_gradients():
    from lstm_cli.model import keras, tf
    from lstm_cli.optim import LazyAdam

    lazy_table, dense_table = keras.Variable(np.zeros((2, 1), np.float32)), keras.Variable(np.zeros((2, 1), np.float32))
    lazy, dense = LazyAdam(0.01), keras.optimizers.Adam(0.01)
    lazy.build([lazy_table])
    dense.build([dense_table])
    for t in range(200):  # row 0 in every batch; row 1, a rare word, in the 100th only
        indices = np.array([0, 1]) if t == 100 else np.array([0])
        values = np.ones((len(indices), 1), np.float32)
        lazy.apply([_slices(values, indices, 2)], [lazy_table])
        dense.apply([tf.convert_to_tensor(_slices(values, indices, 2))], [dense_table])
    # Adam's momentum keeps moving row 1 for dozens of steps after its batch; the lazy update moves it once,
    # as far in all (a momentum updated lazily would move it a tenth of that).
    np.testing.assert_allclose(lazy_table.numpy(), dense_table.numpy(), rtol=0.1)

    weights = [keras.Variable(np.ones((3, 2), np.float32)) for _ in range(2)]
    lazy, dense = LazyAdam(0.01), keras.optimizers.Adam(0.01)
    lazy.build([weights[0]])
    dense.build([weights[1]])
    for t in range(3):
        gradient = tf.constant(np.full((3, 2), t + 1.0, np.float32))
        lazy.apply([gradient], [weights[0]])
        dense.apply([gradient], [weights[1]])
    np.testing.assert_array_equal(weights[0].numpy(), weights[1].numpy())


@pytest.mark.parametrize(("min_count", "max_tokens"), [(1, 100), (2, 100), (2, 5), (3, 100)])
def test_vocabulary_keeps_frequent_tokens_and_training_ids_match_the_saved_tokenizer(min_count, max_tokens):
    from lstm_cli.model import OOV_ID, tf, token_ids
    from lstm_cli.train import build_vocabulary

    # Counted as training sees them, after truncation to 6 tokens: a 5, f 4, b 3, c 1, d 1, e 1 (g is cut).
    texts = ["a a a b b c g", "b a d", "e? A!", "", "f f f f"]
    config = TrainConfig(min_count=min_count, max_tokens=max_tokens, max_length=6)
    vectorizer, vocabulary, encoded = build_vocabulary(texts, config)
    counts = {"a": 5, "f": 4, "b": 3, "c": 1, "d": 1, "e": 1}
    expected = [w for w, n in sorted(counts.items(), key=lambda x: -x[1]) if n >= min_count][: max_tokens - 2]
    assert vocabulary[:2] == ["", "[UNK]"] and sorted(vocabulary[2:]) == sorted(expected)
    # What training sees is exactly what the exported tokenizer produces, truncation and OOV included.
    from_layer = token_ids(vectorizer, tf.constant(texts), 6).to_list()
    assert [
        encoded.values[a:b].tolist() for a, b in zip(encoded.row_splits, encoded.row_splits[1:], strict=False)
    ] == from_layer
    assert from_layer[3] == [OOV_ID]


def test_training_without_validation_saves_a_working_model(data_dir, tmp_path):
    from conftest import TINY
    from typer.testing import CliRunner

    from lstm_cli.cli import app

    model = tmp_path / "m"
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", str(data_dir / "train.csv"), "-m", str(model), *TINY, "--validation-split", "0"]
    )
    assert result.exit_code == 0, result.output
    predicted = runner.invoke(app, ["predict", "-m", str(model), "good great", "bad awful"])
    assert predicted.exit_code == 0 and len(predicted.stdout.splitlines()) == 2


def _toy_train(tmp_path, rows: int = 96, **options):
    from conftest import toy_rows, write_csv

    from lstm_cli.data import read_labeled
    from lstm_cli.train import train

    data = read_labeled(write_csv(tmp_path / "train.csv", toy_rows(rows, seed=7)))
    config = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, batch_size=16, **options)
    return train(config, data), data


def test_a_plateau_multiplies_the_learning_rate_and_an_improvement_keeps_it(tmp_path):
    result, _ = _toy_train(tmp_path, epochs=8, patience=8, learning_rate=0.05, plateau_factor=0.5)
    history, best, cuts = result.history, float("inf"), 0
    for before, after in zip(history, history[1:], strict=False):
        improved = before["val_loss"] < best
        best = min(best, before["val_loss"])
        expected = before["learning_rate"] * (1 if improved else 0.5)
        assert after["learning_rate"] == pytest.approx(expected, rel=1e-6), history
        cuts += not improved
    assert history[0]["learning_rate"] == pytest.approx(0.05) and cuts >= 1, history  # the rule was exercised


def test_label_smoothing_caps_the_confidence_training_aims_for(tmp_path):
    """With smoothing e over K labels the loss is lowest at probability 1 - e + e/K on the label (0.6 for
    e = 0.6, K = 3); without it, confident predictions keep lowering the loss."""
    from lstm_cli.model import tf, token_ids

    def confidence(smoothing: float) -> float:
        result, data = _toy_train(tmp_path, epochs=12, patience=12, learning_rate=0.03, dropout=0,
                                  embedding_dropout=0, dense_dropout=0, label_smoothing=smoothing)  # fmt: skip
        ids = token_ids(result.vectorizer, tf.constant(data.texts), result.config.max_length).to_tensor()
        probabilities = result.network(ids, training=False).numpy()
        return float(probabilities.max(axis=1).mean())

    assert confidence(0.6) < 0.7 < 0.85 < confidence(0.0)


def test_bigram_vocabulary_keeps_the_buckets_seen_min_count_times_within_rows_over_every_shard():
    from lstm_cli.engine.layers import BIGRAM_MULTIPLIER
    from lstm_cli.model import bigram_counts, kept_bigrams

    rng = np.random.default_rng(5)
    buckets = 97
    shards = [[list(rng.integers(1, 40, rng.integers(0, 9))) for _ in range(rng.integers(1, 30))] for _ in range(4)]
    counts: dict[int, int] = {}
    for row in (r for shard in shards for r in shard):  # pairs of adjacent ids within a row, never across rows
        for a, b in zip(row, row[1:], strict=False):
            bucket = (int(a) * BIGRAM_MULTIPLIER + int(b)) % (buckets - 1) + 1
            counts[bucket] = counts.get(bucket, 0) + 1
    counted = bigram_counts((encoded(shard) for shard in shards), buckets)
    assert counted.tolist() == [counts.get(bucket, 0) for bucket in range(buckets)]  # every shard's, added up
    for min_count in (1, 2, 3):
        kept = kept_bigrams(counted, min_count)
        expected = sorted(bucket for bucket, n in counts.items() if n >= min_count)
        assert kept.dtype == np.int32 and kept.tolist() == [0, *expected]
    assert len(expected) < len(counts)  # the threshold left some out
    # A cap on the rows keeps the most frequent buckets (ties: the lower bucket), in sorted order.
    by_count = sorted(counts, key=lambda bucket: (-counts[bucket], bucket))
    capped = kept_bigrams(counted, 1, max_rows=6)
    assert capped.tolist() == [0, *sorted(by_count[:6])]
    # A bigram split across two rows or two shards is two unigrams, not a bigram.
    straddle = kept_bigrams(bigram_counts([encoded([[3], [4]]), encoded([[3], [4]])], buckets), 1)
    assert straddle.tolist() == [0]
    assert kept_bigrams(bigram_counts([], buckets), 2).tolist() == [0]


@pytest.mark.parametrize("pairs", [1, 2, 7, 100])
def test_bigram_counts_are_the_same_whatever_the_slice_of_pairs_counted_at_once(monkeypatch, pairs):
    from lstm_cli import model

    rng = np.random.default_rng(pairs)
    shards = [[list(rng.integers(1, 40, rng.integers(0, 9))) for _ in range(rng.integers(1, 30))] for _ in range(3)]
    whole = model.bigram_counts((encoded(shard) for shard in shards), 97)
    monkeypatch.setattr(model, "BIGRAM_SLICE", pairs)  # a shard counted a few pairs at a time, as a big one is
    assert model.bigram_counts((encoded(shard) for shard in shards), 97).tolist() == whole.tolist()


def test_bigram_vocabulary_layer_maps_kept_buckets_to_their_rows_and_the_rest_to_padding():
    from lstm_cli.engine.layers import bigram_vocabulary as engine_bigram_vocabulary
    from lstm_cli.model import BigramVocabulary

    kept = np.array([0, 3, 8, 20, 21], dtype=np.int32)
    layer = BigramVocabulary(len(kept))
    layer.kept.assign(kept)
    buckets = np.array([[3, 4, 21, 0, 22], [20, 8, 1, 0, 0]], dtype=np.int32)
    # kept -> its position; padding (0) and not kept (4, 22, 1: between, above and below the kept) -> 0
    expected = [[1, 0, 4, 0, 0], [3, 2, 0, 0, 0]]
    assert np.asarray(layer(buckets)).tolist() == expected
    assert engine_bigram_vocabulary({"size": len(kept)}, [kept], buckets).tolist() == expected


def test_bigrams_seen_too_rarely_do_not_count_in_the_mean():
    """A text with a bigram that has no row predicts as if that pair were not there: the bigram mean of
    [5, 6, 7] with (6, 7) left out equals that of [5, 6] (no recurrent layer reads past the first token, no
    SWEM); with (6, 7) given a row, they differ."""
    from lstm_cli.model import bigram_counts, build_network, kept_bigrams

    config = TrainConfig(embedding_dim=4, units=3, dense_units=5, embedding_pooling=(), max_length=8,
                         recurrent_length=1, bigram_buckets=101, bigram_dim=3, bigram_min_count=1)  # fmt: skip

    def outputs(seen: list[int]) -> np.ndarray:
        """[5, 6, 7] and [5, 6] through a network whose bigram rows are those of the text `seen`."""
        bigrams = kept_bigrams(bigram_counts([encoded([seen])], config.bigram_buckets), 1)
        network = build_network(config, vocabulary_size=30, num_classes=4, bigrams=bigrams)
        rng = np.random.default_rng(1)
        network.set_weights([w if w.dtype.kind == "i" else rng.normal(0, 1, w.shape).astype(np.float32)
                             for w in network.get_weights()])  # fmt: skip
        return np.asarray(network(np.array([[5, 6, 7], [5, 6, 0]], dtype=np.int32), training=False))

    with_rare, without = outputs([5, 6])  # (5, 6) gets a row, (6, 7) does not
    np.testing.assert_allclose(with_rare, without, atol=1e-6)
    first, second = outputs([5, 6, 7])
    assert np.abs(first - second).max() > 1e-4  # with a row, (6, 7) counts
