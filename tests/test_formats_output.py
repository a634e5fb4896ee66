"""One output switch: predict's JSON shows --top-k labels (every one with --all-probabilities), probabilities
carry float32's digits (the same in tsv and JSON), and explain and tune print JSON with --format json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import toy_rows, write_csv
from typer.testing import CliRunner

from lstm_cli.cli import app

runner = CliRunner()
TEXTS = ["good great lovely", "bad awful", "okay plain", "", "the the the"]


def _predict(model, *args: str) -> list[str]:
    result = runner.invoke(app, ["predict", "-m", str(model), *args, *TEXTS])
    assert result.exit_code == 0 and result.stderr == "", result.output
    return result.stdout.splitlines()


def _float32_digits(p: float, expected: np.float32) -> None:
    """`p` reads back as the model's float32 and has no more digits than float32 needs."""
    assert np.float32(p) == expected
    assert repr(p) == str(expected)  # numpy's shortest round-trip decimal of that float32


@pytest.mark.parametrize("k", [1, 2, 3])
def test_json_lists_top_k_labels_and_every_probability_only_when_asked(trained_model, k):
    from lstm_cli.predict import Predictor

    predictor = Predictor(trained_model)
    expected = predictor.probabilities(TEXTS)
    records = [json.loads(line) for line in _predict(trained_model, "--format", "json", "--top-k", str(k))]
    for record, row in zip(records, expected, strict=True):
        assert "probabilities" not in record
        order = np.argsort(-row, kind="stable")[:k]
        assert record["label"] == predictor.labels[order[0]]
        _float32_digits(record["probability"], row[order[0]])
        if k == 1:
            assert "top" not in record
            continue
        assert [t["label"] for t in record["top"]] == [predictor.labels[i] for i in order]
        for t, i in zip(record["top"], order, strict=True):
            _float32_digits(t["probability"], row[i])
    every = _predict(trained_model, "-f", "json", "--top-k", str(k), "--all-probabilities")
    every = [json.loads(line) for line in every]
    for record, row in zip(every, expected, strict=True):
        assert list(record["probabilities"]) == predictor.labels  # the model's order
        for label, p in record["probabilities"].items():
            _float32_digits(p, row[predictor.labels.index(label)])
        assert len(record.get("top", [None])) == k


def test_probability_digits_are_numpys_shortest_float32_repr():
    from lstm_cli.render import probability_values

    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.random(100_000), 10.0 ** rng.uniform(-45, 0, 100_000), rng.dirichlet(np.ones(77), 500).ravel(),
        [0, 1, 0.5, 0.1, 1e-8, 3.5e-5, np.float32(0.99999994), np.float32(1.4e-45), np.inf, np.nan],
    ]).astype(np.float32)  # fmt: skip
    got = probability_values(values)
    assert [repr(p) for p in got] == values.astype(str).tolist()
    half = len(got) // 2
    assert [list(map(repr, row)) for row in probability_values(values.reshape(2, -1))] == [
        list(map(repr, got[:half])), list(map(repr, got[half:]))
    ]  # fmt: skip
    assert probability_values(np.float32(0.25)) == 0.25


def test_tsv_prints_the_same_digits_as_json(trained_model):
    tsv = _predict(trained_model, "--top-k", "2")
    records = [json.loads(line) for line in _predict(trained_model, "--format", "json", "--top-k", "2")]
    for line, record in zip(tsv, records, strict=True):
        fields = line.split("\t")
        assert fields[0::2] == [t["label"] for t in record["top"]]
        assert fields[1::2] == [repr(t["probability"]) for t in record["top"]]  # the same text, digit for digit
    everything = _predict(trained_model, "--all-probabilities")
    assert all(len(line.split("\t")) == 6 for line in everything)  # all 3 labels, most probable first


def test_explain_json_carries_float32_digits(trained_model):
    from lstm_cli.predict import Predictor

    result = runner.invoke(app, ["explain", "-m", str(trained_model), "--format", "json", "good great", "awful"])
    assert result.exit_code == 0, result.output
    expected = Predictor(trained_model).probabilities(["good great", "awful"])
    for line, row in zip(result.stdout.splitlines(), expected, strict=True):
        record = json.loads(line)
        _float32_digits(record["probability"], row.max())
        for token in record["tokens"]:
            assert repr(token["score"]) == str(np.float32(token["score"]))


def test_tune_format_json_prints_the_search_instead_of_the_path(tmp_path):
    write_csv(tmp_path / "train.csv", toy_rows(60, seed=4))
    tiny = ["--set", "embedding_dim=8", "--set", "units=6", "--set", "dense_units=8", "--set", "max_tokens=60",
            "--set", "epochs=1", "--set", "batch_size=16"]  # fmt: skip
    result = runner.invoke(app, ["tune", "train.csv", "--trials", "1", "-m", "best", "--format", "json", *tiny])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    tuning = json.loads((tmp_path / "best" / "metadata.json").read_text(encoding="utf-8"))["tuning"]
    assert printed == {"model": "best", **tuning}
    assert [t["number"] for t in printed["trials"]] == [1]
