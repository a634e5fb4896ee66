"""The numpy engine against TensorFlow: token ids equal TextVectorization's, probabilities equal the
SavedModel's within 1e-5 for every layer option lstm-cli trains, and the engine runs without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstm_cli.artifact import network_weights
from lstm_cli.config import TrainConfig
from lstm_cli.data import clean_text
from lstm_cli.engine import Engine, Unsupported

PARITY = 1e-5  # max abs difference allowed between engine and SavedModel probabilities

VOCABULARY = ["", "[UNK]", "good", "bad", "the", "café", "ÉtÉ", "été", "a\u00a0good", "🙂", "שלום", "okayish",
              "x\x1cy", "naïve", "e\u0301", "don’t", "«quoted»", "ab", "tab", "日本語", "movie", "dont", "long", "term",
              "o", "longterm"]  # fmt: skip

# Pieces that stress each tokenizer rule: ASCII-only lowercasing, ASCII-only punctuation, ASCII-only
# whitespace, truncation, empty texts; plus controls, lone surrogates, RTL, emoji and combining marks.
PIECES = [*VOCABULARY[2:], "GOOD", "Café ÉTÉ", "CAFÉ", "BAD!!", "g-o-o-d", "(the)", "[UNK]", "'", "--", "...",
          " ", "  ", "\t", "\n", "\r\n", "\v", "\f", "\u00a0", "\u2003", "\u3000", "\x1c", "\x1f", "\x85", "\u2028",
          "\x00", "\x1b[31m", "\u202e", "\u200f", "مرحبا", "👩‍👩‍👧", "\u0301", "\ud800", "\udcff", "İ", "ß", "Σ", "Ǆ",
          "ﬁ", "К", "«", "»", "—", "’", "\\", "_", "^", "`", "|", "~", "long-term", "don't", "U.S.", "a,b",
          "it's", "''"]  # fmt: skip

fuzz_text = st.lists(st.one_of(st.sampled_from(PIECES), st.characters()), max_size=40).map("".join)

# Every layer option lstm-cli trains, in combinations (overrides of TINY_DIMS).
VARIANTS = {
    "lstm": {},
    "lstm-keras-punctuation": {"punctuation": "strip"},
    "gru-stacked-no-dense": {"cell": "gru", "layers": 2, "dense_units": 0},
    "lstm-bidirectional-stacked": {"bidirectional": True, "layers": 2},
    "gru-bidirectional": {"cell": "gru", "bidirectional": True},
    "lstm-max-mean-pool-swem": {"pooling": ("max", "mean"), "embedding_pooling": ("max", "mean")},
    "lstm-max-mean-pool-swem-bigrams": {"bigram_buckets": 7, "bigram_dim": 3},
    "lstm-bigrams-seen-twice": {"bigram_buckets": 7, "bigram_dim": 3, "bigram_min_count": 2},
    "gru-bidirectional-max-pool-spatial-dropout": {
        "cell": "gru", "bidirectional": True, "pooling": ("max",), "embedding_dropout": 0.3,
    },
    # The recurrent layers read the first tokens, the pooled views every one (max_length is 12).
    "lstm-reads-5-of-12-swem-bigrams": {"recurrent_length": 5, "bigram_buckets": 7, "bigram_dim": 3},
    "gru-bidirectional-stacked-last-reads-4-of-12": {
        "cell": "gru", "bidirectional": True, "layers": 2, "pooling": ("last",), "recurrent_length": 4,
    },
    "lstm-bidirectional-stacked-mean-pool-swem-max-no-dense": {
        "bidirectional": True, "layers": 2, "pooling": ("mean",), "embedding_pooling": ("max",), "dense_units": 0,
    },
}  # fmt: skip
# With a bigram min count, the buckets (of 7) that get a row; the others are left out of the bigram mean.
KEPT_BIGRAMS = np.array([0, 2, 3, 5], dtype=np.int32)
TINY_DIMS = {"max_tokens": len(VOCABULARY), "max_length": 12, "embedding_dim": 5, "units": 4, "dense_units": 6}


def tensorflow_token_ids(vectorizer, texts: list[str], max_length: int) -> list[list[int]]:
    from lstm_cli.model import tf, token_ids

    ragged = token_ids(vectorizer, tf.constant([t.encode("utf-8") for t in texts], dtype=tf.string), max_length)
    return ragged.to_list()


STANDARDIZATIONS = ["lower_and_strip_punctuation", "lower_and_split_punctuation"]


@pytest.fixture(scope="module", params=STANDARDIZATIONS)
def vectorizer(request):
    """TextVectorization as a model of each standardization exports it; `.standardize` names which."""
    from lstm_cli.model import make_vectorizer

    layer = make_vectorizer(len(VOCABULARY), VOCABULARY, standardize=request.param)
    layer.standardization = request.param
    return layer


def export_model(config: TrainConfig, directory: Path, *, seed: int = 0) -> Path:
    """A SavedModel and engine files for an untrained network with large random weights (so gates saturate
    and probabilities spread), written by the same code as `lstm-cli train`."""
    from lstm_cli.artifact import _export_saved_model, _write_engine_files
    from lstm_cli.model import build_network, make_vectorizer

    labels = ["a", "b", "c"]
    bigrams = KEPT_BIGRAMS if config.bigram_buckets and config.bigram_min_count else None
    network = build_network(config, vocabulary_size=len(VOCABULARY), num_classes=len(labels), bigrams=bigrams)
    rng = np.random.default_rng(seed)
    # The kept bigram buckets (integers) stay as they are.
    network.set_weights([w if w.dtype.kind == "i" else rng.normal(0, 0.8, w.shape).astype(np.float32)
                         for w in network.get_weights()])  # fmt: skip
    vectorizer = make_vectorizer(len(VOCABULARY), VOCABULARY, standardize=config.standardization)
    vectorizer(["build"])  # export needs a built layer
    result = SimpleNamespace(
        config=config, network=network, vectorizer=vectorizer, vocabulary=VOCABULARY, labels=labels
    )
    directory.mkdir(parents=True)
    _export_saved_model(result, directory)
    _write_engine_files(result, directory)
    (directory / "vocabulary.json").write_text(json.dumps(VOCABULARY, ensure_ascii=False), encoding="utf-8")
    return directory


def engine_parts(directory: Path) -> tuple[bytes, bytes, bytes, bytes | None]:
    """engine.json, its weights, vocabulary.json and (when the weights are the SavedModel's variables) their index:
    Engine.from_bytes's arguments."""
    description = (directory / "engine.json").read_bytes()
    weights_file = json.loads(description)["weights_file"]
    index = None if weights_file == "engine.npz" else (directory / "variables" / "variables.index").read_bytes()
    return description, (directory / weights_file).read_bytes(), (directory / "vocabulary.json").read_bytes(), index


def load_engine(directory: Path) -> Engine:
    return Engine.from_bytes(*engine_parts(directory))


class Pair:
    """The same model as a SavedModel and as an engine."""

    def __init__(self, directory: Path, config: TrainConfig | None = None):
        from lstm_cli.tf_setup import import_tensorflow

        self.config = config
        self.tf = import_tensorflow()
        self.serve = self.tf.saved_model.load(str(directory)).signatures["serving_default"]
        self.engine = load_engine(directory)

    def difference(self, texts: list[str]) -> float:
        cleaned = [clean_text(t) for t in texts]
        expected = self.serve(text=self.tf.constant([t.encode("utf-8") for t in cleaned]))["probabilities"].numpy()
        got = self.engine.probabilities(cleaned)
        assert got.shape == expected.shape
        return float(np.abs(got - expected).max())


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory) -> Pair:
    config = TrainConfig(**{**TINY_DIMS, **VARIANTS[request.param]})
    return Pair(export_model(config, tmp_path_factory.mktemp("engine") / request.param), config)


# --- tokenizer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stripped", "split"),
    [
        ("Café ÉTÉ", ["café", "ÉtÉ"], ["café", "ÉtÉ"]),  # A-Z lowercased, É kept
        (
            "a\u00a0good a\u2003b a\u3000b x\x1cy",
            ["a\u00a0good", "a\u2003b", "a\u3000b", "x\x1cy"],
            ["a\u00a0good", "a\u2003b", "a\u3000b", "x\x1cy"],
        ),  # no split
        (
            "GOOD!!! (bad) «quoted» don’t",
            ["good", "bad", "«quoted»", "don’t"],
            ["good", "bad", "«quoted»", "don’t"],
        ),  # ASCII punctuation only
        (" \t\n\v\f\r ", [], []),
        ("g-o-o-d -- ...", ["good"], ["g", "o", "o", "d"]),
        (
            "Long-term U.S.-based, don't a,b it's ''",
            ["longterm", "usbased", "dont", "ab", "its"],
            ["long", "term", "u", "s", "based", "dont", "a", "b", "its"],
        ),  # the apostrophe never splits
        ("x\\y[z]^w_v`u{t}|s~r", ["xyzwvutsr"], ["x", "y", "z", "w", "v", "u", "t", "s", "r"]),
    ],
)
def test_tokenizer_rules_match_textvectorization(vectorizer, text, stripped, split):
    from lstm_cli.engine import Tokenizer

    tokenizer = Tokenizer(VOCABULARY, max_length=50, standardize=vectorizer.standardization)
    assert tokenizer.words(text) == (stripped if vectorizer.standardization == STANDARDIZATIONS[0] else split)
    assert tokenizer.ids(text) == tensorflow_token_ids(vectorizer, [text], 50)[0]


def test_the_config_names_every_standardization_the_engine_knows():
    from lstm_cli.config import PUNCTUATION
    from lstm_cli.engine.tokenizer import STANDARDIZATIONS as KNOWN
    from lstm_cli.engine.tokenizer import Tokenizer

    assert sorted(PUNCTUATION.values()) == sorted(KNOWN) == sorted(STANDARDIZATIONS)
    assert TrainConfig().standardization == "lower_and_split_punctuation"
    with pytest.raises(ValueError, match="unknown standardization"):
        Tokenizer(VOCABULARY, max_length=5, standardize="lower")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(fuzz_text, min_size=1, max_size=20), max_length=st.integers(1, 15))
def test_token_ids_equal_textvectorization_on_fuzzed_text(vectorizer, texts, max_length, monkeypatch):
    from lstm_cli.engine import Tokenizer
    from lstm_cli.engine import tokenizer as module

    cleaned = [clean_text(t) for t in texts]
    tokenizer = Tokenizer(VOCABULARY, max_length=max_length, standardize=vectorizer.standardization)
    expected = tensorflow_token_ids(vectorizer, cleaned, max_length)
    assert [tokenizer.ids(t) for t in cleaned] == expected
    monkeypatch.setattr(module, "JOINED_FROM", 1)  # every batch as one string (text by text if one holds a NUL)
    assert batch_rows(tokenizer.batch_ids(cleaned)) == expected


def batch_rows(batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[list[int]]:
    flat, starts, lengths = batch
    return [flat[start : start + length].tolist() for start, length in zip(starts, lengths, strict=True)]


@pytest.mark.parametrize("standardize", STANDARDIZATIONS)
def test_a_joined_batch_gives_each_text_its_own_ids(standardize):
    from lstm_cli.engine import Tokenizer
    from lstm_cli.engine.tokenizer import JOINED_FROM

    tokenizer = Tokenizer(VOCABULARY, max_length=4, standardize=standardize)
    texts = ["good bad", "", "!!! --", "GOOD the café ÉTÉ good bad", "\ud800 x\x1cy", "a\u00a0good 🙂", "don't"]
    texts = (texts * JOINED_FROM)[:JOINED_FROM]  # just enough texts to be joined
    joined = batch_rows(tokenizer.batch_ids(texts))
    assert joined == [tokenizer.ids(t) for t in texts]
    assert joined[1] == joined[2] == [1]  # no tokens: one out-of-vocabulary token
    assert joined[3] == [2, 4, 5, 6]  # truncated
    with_nul = [*texts, "good\x00bad"]  # a NUL inside a text: the batch goes text by text
    assert batch_rows(tokenizer.batch_ids(with_nul)) == [tokenizer.ids(t) for t in with_nul]
    assert tokenizer.ids("good\x00bad") == [1]  # one token, as TextVectorization reads it


def test_token_ids_of_a_ten_megabyte_text(vectorizer):
    from lstm_cli.engine import Tokenizer

    text = ("Café ÉTÉ good,bad\u00a0the 🙂 long-term don't " * 300_000)[: 10 * 2**20]
    tokenizer = Tokenizer(VOCABULARY, max_length=200, standardize=vectorizer.standardization)
    assert tokenizer.ids(text) == tensorflow_token_ids(vectorizer, [text], 200)[0]


@settings(max_examples=100, deadline=None)
@given(text=fuzz_text, standardize=st.sampled_from(STANDARDIZATIONS))
def test_token_positions_point_into_the_original_text(text, standardize):
    from lstm_cli.engine import Tokenizer

    text = clean_text(text)
    tokenizer = Tokenizer(VOCABULARY, max_length=10, standardize=standardize)
    tokens = tokenizer.tokens(text)
    assert [t.id for t in tokens] == (tokenizer.ids(text) if tokens else [])
    for token in tokens:
        assert tokenizer.words(text[token.start : token.end]) == [token.text]


# --- network parity ----------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(fuzz_text, min_size=1, max_size=40))
def test_engine_equals_saved_model_on_fuzzed_text(pair, texts):
    assert pair.difference(texts) <= PARITY


def test_engine_equals_saved_model_on_named_cases(pair):
    texts = ["", " ", "good", "GOOD!!!", "Café ÉTÉ", "a\u00a0good", "🙂 שלום 日本語", "the " * 40, "x\x1cy e\u0301",
             "\ud800 lone surrogate", "[UNK] [unk]", "good bad " * 6]  # fmt: skip
    assert pair.difference(texts) <= PARITY
    # The same text alone or in a batch of other lengths: padding never changes a probability.
    alone = pair.engine.probabilities(["good bad the"])
    batched = pair.engine.probabilities(["good bad the", "the " * 12, "x"])[:1]
    np.testing.assert_allclose(alone, batched, atol=1e-6)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_repeated_rows_go_through_the_recurrent_layers_once_with_the_same_probabilities(pair, data):
    """Explain's variants past --recurrent-length give the recurrent layers identical rows: each distinct row
    is run once (counted), and every row still gets the probabilities it gets alone."""
    from lstm_cli.engine import network

    words = st.lists(st.integers(1, len(VOCABULARY) - 1), min_size=1, max_size=TINY_DIMS["max_length"])
    distinct = data.draw(st.lists(words, min_size=1, max_size=6))
    rows = data.draw(st.lists(st.sampled_from(distinct), min_size=1, max_size=30))
    first = next(node for node in pair.engine.network.nodes if node["type"] in network.CACHED)
    seen: list[int] = []
    real = network.LAYERS[first["type"]]

    def counted(config, weights, x, mask=None, cache=None):
        if config["name"] == first["name"]:
            seen.append(len(x))
        return real(config, weights, x, mask=mask, cache=cache)

    network.LAYERS[first["type"]], threshold = counted, network.DISTINCT_ROWS_FROM
    network.DISTINCT_ROWS_FROM = 1  # these rows are at most 12 tokens long
    try:
        together = pair.engine.probabilities_of_ids(rows)
    finally:
        network.LAYERS[first["type"]], network.DISTINCT_ROWS_FROM = real, threshold
    alone = np.concatenate([pair.engine.probabilities_of_ids([row]) for row in rows])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    read = pair.config.recurrent_length
    assert sum(seen) == len({tuple(row[:read]) for row in rows})  # one batch: at most 30 rows of 12 tokens


def test_engine_equals_saved_model_on_a_ten_megabyte_text(pair):
    assert pair.difference([("good café 🙂 " * 1_000_000)[: 10 * 2**20], "bad"]) <= PARITY


def test_engine_equals_saved_model_of_a_trained_model(trained_model):
    texts = ["good great", "awful movie", "okay", "", "the the the", "fair but broken service"]
    assert Pair(trained_model).difference(texts) <= PARITY


@pytest.mark.parametrize("how", ["--bigram-min-count 2", "automatic"])
def test_a_model_trained_with_a_bigram_min_count_keeps_the_bigrams_seen_that_often(
    how, data_dir, tmp_path, monkeypatch
):
    """Training counts the bigrams of its rows (here all of them: no validation split): the engine's kept
    buckets are exactly those the training texts fill twice, and engine and SavedModel agree on texts with
    kept, unkept and unseen bigrams. Automatic: the sample data holds more distinct bigrams than a lowered
    line, so the min count is 2 and the buckets are the hash space."""
    import csv

    from conftest import TINY
    from typer.testing import CliRunner

    import lstm_cli.config
    from lstm_cli.cli import app
    from lstm_cli.config import BIGRAM_HASH_SPACE
    from lstm_cli.engine import Tokenizer
    from lstm_cli.engine.layers import BIGRAM_MULTIPLIER

    model = tmp_path / "m"
    tiny = list(TINY)
    if how == "automatic":
        monkeypatch.setattr(lstm_cli.config, "AUTO_BIGRAM_MIN_COUNT_ABOVE", 50)
        del tiny[tiny.index("--bigram-buckets") : tiny.index("--bigram-buckets") + 2]
        tiny.remove("--quiet")  # the stage line says how many distinct bigrams it counted
    buckets = BIGRAM_HASH_SPACE if how == "automatic" else 512  # TINY's --bigram-buckets 512
    args = ["train", str(data_dir / "train.csv"), *tiny, "--epochs", "1", "--validation-split", "0",
            *how.split()[: 2 if how != "automatic" else 0], "-m", str(model)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((model / "metadata.json").read_text(encoding="utf-8"))["config"]
    assert (config["bigram_min_count"], config["bigram_buckets"]) == (2, buckets)
    with (data_dir / "train.csv").open(newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]
    vocabulary = json.loads((model / "vocabulary.json").read_text(encoding="utf-8"))
    standardize = json.loads((model / "metadata.json").read_text(encoding="utf-8"))["vectorizer"]["standardize"]
    tokenizer = Tokenizer(vocabulary, max_length=2_000, standardize=standardize)
    counts: dict[int, int] = {}
    for ids in map(tokenizer.ids, texts):
        for a, b in zip(ids, ids[1:], strict=False):
            bucket = (a * BIGRAM_MULTIPLIER + b) % (buckets - 1) + 1
            counts[bucket] = counts.get(bucket, 0) + 1
    weights = network_weights(model)
    (kept,) = [weights[name] for name in weights if "bigram_vocabulary" in name]
    assert kept.dtype == np.int32
    assert kept.tolist() == [0, *sorted(b for b, n in counts.items() if n >= 2)]
    assert 0 < len(kept) - 1 < len(counts)  # some kept, some seen once and left out
    if how == "automatic":  # the line was crossed by the count of distinct bigrams, not by chance
        assert f"the training rows hold {len(counts):,} distinct bigrams" in result.output
    assert Pair(model).difference([*texts[:40], "good great", "zzz qqq good", "", "great " * 30]) <= PARITY


def _textbook_lstm(x, mask, kernel, recurrent_kernel, bias, *, backwards, sequences, zero_output):
    """Keras's LSTM written out per text and per step in float64: the oracle for the engine's in-place one."""
    units = recurrent_kernel.shape[0]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    results = []
    for row, keep in zip(x.astype(np.float64), mask, strict=True):
        h, c, outputs = np.zeros(units), np.zeros(units), []
        for t in reversed(range(len(row))) if backwards else range(len(row)):
            z = row[t] @ kernel + h @ recurrent_kernel + bias
            i, f, g, o = (z[k * units : (k + 1) * units] for k in range(4))
            if keep[t]:
                c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
                h = sigmoid(o) * np.tanh(c)
            outputs.append(h if keep[t] or not zero_output else np.zeros(units))
        results.append(np.stack(outputs) if sequences else outputs[-1])
    return np.stack(results)


# Masks of right-padded texts: in the engine's own order (sorted by length, so the rows still running at a step
# are the last ones, which the engine computes alone), in any order, and with holes (no text has those).
MASKS = {
    "sorted": np.arange(9)[None, :] < np.array([1, 4, 7, 9, 9, 9])[:, None],
    "unsorted": np.arange(9)[None, :] < np.array([9, 9, 7, 4, 1, 9])[:, None],
    "holes": np.random.default_rng(11).random((6, 9)) < 0.6,
}


@pytest.mark.parametrize("backwards", [False, True])
@pytest.mark.parametrize("sequences", [False, True])
@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("layout", MASKS)
def test_lstm_step_in_place_equals_the_textbook_lstm(backwards, sequences, zero_output, layout):
    from lstm_cli.engine import layers

    rng = np.random.default_rng(7)
    batch, steps, dim, units = 6, 9, 5, 4
    x = rng.normal(0, 1, (batch, steps, dim)).astype(np.float32)
    mask = MASKS[layout]
    weights = [rng.normal(0, 0.9, s).astype(np.float32) for s in ((dim, 4 * units), (units, 4 * units), (4 * units,))]
    config = {"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True, "go_backwards": backwards,
              "return_sequences": sequences, "zero_output_for_mask": zero_output}  # fmt: skip
    expected = _textbook_lstm(x, mask, *weights, backwards=backwards, sequences=sequences, zero_output=zero_output)
    for cache in (None, layers.Cache()):
        np.testing.assert_allclose(layers.lstm(config, weights, x, mask=mask, cache=cache), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("layout", ["sorted", "unsorted"])
def test_time_pooling_ignores_masked_steps(mode, layout):
    from lstm_cli.engine import layers

    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (6, 9, 3)).astype(np.float32)
    mask = MASKS[layout]
    x[~mask] = 1e6  # padding that would win a max or swamp a mean
    expected = [getattr(np, mode)(row[keep], axis=0) for row, keep in zip(x, mask, strict=True)]
    np.testing.assert_allclose(layers.time_pooling({"mode": mode}, [], x, mask=mask), expected, rtol=1e-6)
    whole = np.ones((6, 9), dtype=bool)
    np.testing.assert_allclose(layers.time_pooling({"mode": mode}, [], x, mask=whole), getattr(np, mode)(x, axis=1),
                               rtol=1e-6)  # fmt: skip


def test_a_batch_leaves_no_reference_cycles(pair):
    """Each batch's arrays must be freed when the call returns, not when the cycle collector next runs:
    a cycle held hundreds of megabytes on a long stream."""
    import gc

    texts = ["good bad the", "the " * 12, "x", ""] * 100
    pair.engine.probabilities(texts)  # the first call fills caches and may start the thread pool
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        pair.engine.probabilities(texts)
        found = gc.collect()
        assert found == 0, [repr(o)[:120] for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


# --- safety and independence ------------------------------------------------------------------------------


def test_engine_package_runs_with_tensorflow_blocked(trained_model):
    script = textwrap.dedent(f"""
        import sys
        for name in ("tensorflow", "keras", "tf_keras", "jax", "torch"):
            sys.modules[name] = None  # any import of these now raises ImportError
        from pathlib import Path
        from lstm_cli.engine import Engine
        import lstm_cli.engine.export
        m = Path({str(trained_model)!r})
        index = (m / "variables" / "variables.index").read_bytes()
        data = (m / "variables" / "variables.data-00000-of-00001").read_bytes()
        parts = [(m / n).read_bytes() for n in ("engine.json", "vocabulary.json")]
        engine = Engine.from_bytes(parts[0], data, parts[1], index=index)
        print(engine.probabilities(["good great", "awful"]).shape)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 3)"


def test_weights_are_read_without_pickle(trained_model):
    import io

    buffer = io.BytesIO()
    np.savez(buffer, planted=np.array([{"a": 1}], dtype=object))
    parts = [(trained_model / n).read_bytes() for n in ("engine.json", "vocabulary.json")]
    with pytest.raises(ValueError, match="object values, not numbers"):
        Engine.from_bytes(parts[0], buffer.getvalue(), parts[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda n: n.update(type="Conv1D"), "is a Conv1D"),
        (lambda n: n["config"].update(activation="gelu"), "activation 'gelu'"),
        (lambda n: n["config"].update(dtype="mixed_float16"), "mixed_float16"),
    ],
)
def test_unknown_layers_and_settings_are_refused(trained_model, change, message):
    description = json.loads((trained_model / "engine.json").read_text(encoding="utf-8"))
    dense = next(n for n in description["network"]["nodes"] if n["type"] == "Dense")
    change(dense)
    _, *parts = engine_parts(trained_model)
    with pytest.raises(Unsupported, match=message):
        Engine.from_bytes(json.dumps(description).encode(), *parts)


def test_a_standardization_the_engine_does_not_know_is_refused_and_a_missing_one_is_keras(trained_model):
    description = json.loads((trained_model / "engine.json").read_text(encoding="utf-8"))
    _, *parts = engine_parts(trained_model)
    description["tokenizer"]["standardize"] = "lower_and_fold_accents"  # say, from a newer lstm-cli
    with pytest.raises(Unsupported, match="lower_and_fold_accents"):
        Engine.from_bytes(json.dumps(description).encode(), *parts)
    del description["tokenizer"]["standardize"]  # as no lstm-cli wrote it, but read as the first engines meant
    assert Engine.from_bytes(json.dumps(description).encode(), *parts).tokenizer.words("a-b") == ["ab"]


# --- the command line ---------------------------------------------------------------------------------------


def _old_model(trained_model: Path, tmp_path: Path) -> Path:
    """A copy of the model as lstm-cli wrote it before the engine existed."""
    import shutil

    old = tmp_path / "old-model"
    shutil.copytree(trained_model, old)
    meta = json.loads((old / "metadata.json").read_text(encoding="utf-8"))
    for name in ("engine.json", "engine.npz"):  # engine.npz: in directories saved when the engine read it
        if name in meta["files"]:
            (old / name).unlink()
            del meta["files"][name]
    del meta["engine"]
    (old / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    return old


def test_predict_uses_the_engine_and_agrees_with_tensorflow(trained_model):
    from typer.testing import CliRunner

    from lstm_cli.cli import app

    runner = CliRunner()
    texts = ["good great lovely", "", "bad awful", "Café ÉTÉ 🙂", "okay plain " * 50]
    outputs = {}
    for engine in ("numpy", "tensorflow", "auto"):
        result = runner.invoke(app, ["predict", "-m", str(trained_model), "--format", "json", "--all-probabilities",
                                     "--engine", engine, "--verbose", *texts])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"predicting with the {'numpy' if engine == 'auto' else engine} engine" in result.stderr
        outputs[engine] = [json.loads(line) for line in result.stdout.splitlines()]
    for fast, slow in zip(outputs["numpy"], outputs["tensorflow"], strict=True):
        assert fast["label"] == slow["label"]
        for label, p in fast["probabilities"].items():
            assert abs(p - slow["probabilities"][label]) <= PARITY
    assert outputs["auto"] == outputs["numpy"]


def test_an_older_model_directory_still_predicts_through_tensorflow_and_says_how_to_speed_up(trained_model, tmp_path):
    from typer.testing import CliRunner

    from lstm_cli.cli import app

    old = _old_model(trained_model, tmp_path)
    runner = CliRunner()
    new = runner.invoke(app, ["predict", "-m", str(trained_model), "good great"])
    result = runner.invoke(app, ["predict", "-m", str(old), "good great"])
    assert result.exit_code == 0, result.output
    assert result.stdout == new.stdout
    assert result.stderr.count("older lstm-cli") == 1 and "train it again" in result.stderr
    refused = runner.invoke(app, ["predict", "-m", str(old), "--engine", "numpy", "good"])
    assert refused.exit_code == 1 and refused.stdout == ""
    assert "--engine tensorflow" in refused.stderr and "Traceback" not in refused.stderr


def test_a_layer_the_engine_cannot_run_falls_back_to_tensorflow_quietly(trained_model, tmp_path):
    """Simulates a model from a newer lstm-cli: engine.json names a layer this engine does not know."""
    import hashlib
    import shutil

    from typer.testing import CliRunner

    from lstm_cli.cli import app

    model = tmp_path / "newer"
    shutil.copytree(trained_model, model)
    description = json.loads((model / "engine.json").read_text(encoding="utf-8"))
    next(n for n in description["network"]["nodes"] if n["type"] == "Dropout")["type"] = "AlphaDropout"
    (model / "engine.json").write_text(json.dumps(description), encoding="utf-8")
    meta = json.loads((model / "metadata.json").read_text(encoding="utf-8"))
    meta["files"]["engine.json"] = hashlib.sha256((model / "engine.json").read_bytes()).hexdigest()
    (model / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    runner = CliRunner()
    quiet = runner.invoke(app, ["predict", "-m", str(model), "good great"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and quiet.stdout.startswith("pos\t")
    verbose = runner.invoke(app, ["predict", "-m", str(model), "good great", "--verbose"])
    assert "AlphaDropout" in verbose.stderr and "predicting with TensorFlow" in verbose.stderr


@pytest.mark.parametrize("command", ["predict", "explain", "evaluate"])
def test_the_fast_path_never_imports_tensorflow(trained_model, data_dir, command):
    args = [command, "-m", str(trained_model)]
    args += [str(data_dir / "test.csv"), "--json"] if command == "evaluate" else ["good great", "awful"]
    script = textwrap.dedent(f"""
        import sys
        from lstm_cli.cli import app
        try:
            app({args!r})
        except SystemExit as e:
            assert not e.code, e.code
        print("IMPORTED", sorted(m for m in ("tensorflow", "keras") if m in sys.modules), file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stderr
    assert out.stdout.strip()


@pytest.mark.parametrize(
    "arrays",
    [
        {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.float32(2.5), "empty": np.zeros((0, 4))},
        {"fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "big_endian": np.arange(3, dtype=">i4")},
    ],
)
def test_weights_read_in_place_equal_what_np_load_reads(arrays):
    import io

    from lstm_cli.engine import npz_arrays

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    expected = dict(np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False))
    got = npz_arrays(buffer.getvalue())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].flags.f_contiguous == value.flags.f_contiguous, key
        np.testing.assert_array_equal(got[key], value)
    compressed = io.BytesIO()
    np.savez_compressed(compressed, **arrays)  # lstm-cli never writes these: a member could inflate to anything
    with pytest.raises(ValueError, match="compressed"):
        npz_arrays(compressed.getvalue())


@given(lengths=st.lists(st.integers(1, 5_000), max_size=2_000))
def test_engine_batches_bound_rows_and_token_positions_and_keep_every_row_once(lengths):
    from lstm_cli.engine import BATCH, BATCH_TOKENS, _chunks

    sorted_lengths = np.sort(np.array(lengths, dtype=np.int64))
    order = np.arange(len(lengths))
    chunks = _chunks(order, sorted_lengths)
    assert [int(i) for chunk in chunks for i in chunk] == list(range(len(lengths)))
    for chunk in chunks:
        assert 1 <= len(chunk) <= BATCH
        assert len(chunk) == 1 or len(chunk) * sorted_lengths[chunk].max() <= BATCH_TOKENS
    # as full as allowed: the next row would not have fitted
    for chunk, following in zip(chunks, chunks[1:], strict=False):
        assert len(chunk) == BATCH or (len(chunk) + 1) * sorted_lengths[following[0]] > BATCH_TOKENS
