"""Temperature scaling: the fit finds a known temperature, folding it into the head gives softmax(logits / T)
in the SavedModel and the numpy engine alike (parity), evaluate's calibration errors before and after match a
hand-computed case, --no-calibrate trains the same network without it, and small or absent validation
splits leave T = 1 and say why."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import TINY, toy_rows, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import PARITY, Pair
from typer.testing import CliRunner

from lstm_cli.calibration import (
    BOUNDS,
    MIN_ROWS,
    fit,
    fit_temperature,
    fold,
    nll,
    temperature_of,
    top_uncalibrated,
)
from lstm_cli.cli import app
from lstm_cli.parent import raw_head
from lstm_cli.predict import calibration_report

runner = CliRunner()


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("true_temperature", [0.4, 1.0, 2.5])
def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with(true_temperature):
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (20_000, 5))
    p = softmax(logits / true_temperature)
    labels = (p.cumsum(axis=1) < rng.random((len(p), 1))).sum(axis=1)  # one draw per row from p
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    section = fit(logits, labels)
    assert section["method"] == "temperature" and section["temperature"] == fitted
    assert section["validation_nll"]["after"] <= section["validation_nll"]["before"]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(2, 60),
    classes=st.integers(2, 6),
    scale=st.floats(0.01, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_fit_is_the_lowest_likelihood_within_the_bounds(rows, classes, scale, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (rows, classes))
    labels = rng.integers(0, classes, rows)
    fitted = fit_temperature(logits, labels)
    assert BOUNDS[0] <= fitted <= BOUNDS[1]
    grid = np.exp(np.linspace(np.log(BOUNDS[0]), np.log(BOUNDS[1]), 400))
    best_on_grid = min(nll(logits, labels, t) for t in grid)
    assert nll(logits, labels, fitted) <= best_on_grid + 1e-9


def test_top_uncalibrated_undoes_the_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, (50, 7))
    for temperature in (0.3, 1.0, 3.7):
        calibrated = softmax(logits / temperature).astype(np.float32)
        np.testing.assert_allclose(top_uncalibrated(calibrated, temperature), softmax(logits).max(axis=1), rtol=1e-5)


def test_evaluate_calibration_errors_by_hand():
    # Calibrated probabilities of a model whose temperature is 2; before calibration each top probability was
    # 1 / (1 + (p_other / p_top) ** 2): 0.75 -> 0.9, 0.5 -> 0.5, 0.7 -> 49/58. Row A is right, B and C wrong,
    # and each falls in its own bin of 1/15, before and after.
    p = np.array([[0.75, 0.25], [0.5, 0.5], [0.3, 0.7]], np.float32)
    truth, predicted = np.array([0, 1, 0]), p.argmax(axis=1)
    report = calibration_report(truth, predicted, p.max(axis=1), top_uncalibrated(p, 2.0), 2.0)
    assert report["ece"] == pytest.approx((0.25 + 0.5 + 0.7) / 3)
    assert report["ece_uncalibrated"] == pytest.approx((0.1 + 0.5 + 49 / 58) / 3)
    assert report["bins"] == 15 and report["temperature"] == 2.0
    same = calibration_report(truth, predicted, p.max(axis=1), top_uncalibrated(p, 1.0), 1.0)
    assert same["ece"] == same["ece_uncalibrated"] == pytest.approx((0.25 + 0.5 + 0.7) / 3)


def test_too_few_rows_or_none_wrong_leave_the_temperature_at_one():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (MIN_ROWS - 1, 3))
    small = fit(logits, logits.argmax(axis=1) ^ 1)
    assert small["method"] == "none" and small["temperature"] == 1.0 and not small["enough_rows"]
    assert f"fewer than the {MIN_ROWS}" in small["reason"]
    logits = rng.normal(0, 2, (MIN_ROWS * 2, 3))
    perfect = fit(logits, logits.argmax(axis=1))
    assert perfect["method"] == "none" and perfect["temperature"] == 1.0 and perfect["enough_rows"]
    assert "predicted right" in perfect["reason"]


def test_folding_divides_the_logits_and_unfolding_restores_the_head():
    from lstm_cli.config import TrainConfig
    from lstm_cli.model import build_network, keras

    network = build_network(TrainConfig(embedding_dim=4, units=3, dense_units=5, bigram_buckets=0),
                            vocabulary_size=20, num_classes=4)  # fmt: skip
    ids = np.random.default_rng(3).integers(1, 20, (6, 9)).astype(np.int32)
    head = network.get_layer("probabilities")
    features = np.asarray(keras.Model(network.inputs, head.input)(ids), np.float64)
    raw = [w.copy() for w in head.get_weights()]
    logits = features @ raw[0] + raw[1]
    fold(network, 2.5)
    np.testing.assert_allclose(np.asarray(network(ids)), softmax(logits / 2.5), atol=1e-6)
    folded = {f"probabilities/{v.name}": np.asarray(v.numpy()) for v in head.weights}
    restored = raw_head(folded, {"calibration": {"temperature": 2.5}})  # what train --from starts from
    for name, original in zip(("probabilities/kernel", "probabilities/bias"), raw, strict=True):
        np.testing.assert_allclose(restored[name], original, rtol=1e-6)
        assert restored[name].dtype == np.float32
    assert temperature_of({}) == 1.0 and temperature_of({"calibration": None}) == 1.0


@pytest.fixture(scope="module")
def calibrated_pair(tmp_path_factory):
    """The same tiny model trained twice on noisy data (a fifth of the labels shuffled, so the validation
    split has errors to fit on), with and without calibration; and its test data."""
    folder = tmp_path_factory.mktemp("calibration")
    rng = random.Random(4)
    rows = [(text, rng.choice(["pos", "neg", "meh"]) if rng.random() < 0.2 else label)
            for text, label in toy_rows(420, seed=3)]  # fmt: skip
    train = write_csv(folder / "train.csv", rows)
    test = write_csv(folder / "test.csv", toy_rows(90, seed=5))
    common = ["train", str(train), *TINY, "--validation-split", "0.3"]
    for name, extra in (("calibrated", []), ("raw", ["--no-calibrate"])):
        done = runner.invoke(app, [*common, "-m", str(folder / name), *extra])
        assert done.exit_code == 0, done.output
    return folder / "calibrated", folder / "raw", test


def _metadata(model) -> dict:
    return json.loads((model / "metadata.json").read_text(encoding="utf-8"))


def test_training_fits_a_temperature_that_the_saved_model_and_engine_apply_alike(calibrated_pair):
    calibrated, raw, _ = calibrated_pair
    section = _metadata(calibrated)["calibration"]
    assert section["method"] == "temperature" and section["enough_rows"] and section["validation_rows"] >= MIN_ROWS
    temperature = section["temperature"]
    assert temperature != 1.0 and BOUNDS[0] <= temperature <= BOUNDS[1]
    assert section["validation_nll"]["after"] <= section["validation_nll"]["before"]
    texts = ["good great", "awful movie", "okay", "", "the the the", "fair but broken service", "nice bad plain"]
    pair = Pair(calibrated)
    assert pair.difference(texts) <= PARITY
    # Same seed, same data: the --no-calibrate model is the same network; its softmax at 1/T is the calibrated.
    raw_pair = Pair(raw)
    raw_p = raw_pair.engine.probabilities(texts).astype(np.float64)
    expected = softmax(np.log(raw_p) / temperature)
    np.testing.assert_allclose(pair.engine.probabilities(texts), expected, atol=1e-5)
    assert (pair.engine.probabilities(texts).argmax(axis=1) == raw_p.argmax(axis=1)).all()
    info = runner.invoke(app, ["info", "-m", str(calibrated)])
    assert f"temperature {temperature:.3f}" in " ".join(info.stdout.split())


def test_no_calibrate_saves_the_raw_softmax_and_says_so(calibrated_pair):
    _, raw, _ = calibrated_pair
    section = _metadata(raw)["calibration"]
    assert section["method"] == "none" and section["temperature"] == 1.0 and section["reason"] == "--no-calibrate"
    assert _metadata(raw)["config"]["calibrate"] is False
    info = runner.invoke(app, ["info", "-m", str(raw)])
    assert "none (--no-calibrate)" in " ".join(info.stdout.split())


def test_evaluate_reports_the_error_before_and_after(calibrated_pair):
    calibrated, raw, test = calibrated_pair
    reports = {}
    for model in (calibrated, raw):
        done = runner.invoke(app, ["evaluate", str(test), "-m", str(model), "--json"])
        assert done.exit_code == 0, done.output
        reports[model.name] = json.loads(done.stdout)["calibration"]
    after, before = reports["calibrated"], reports["raw"]
    assert after["temperature"] == _metadata(calibrated)["calibration"]["temperature"]
    # Before calibration is what the raw twin measures; it has no temperature to undo.
    assert after["ece_uncalibrated"] == pytest.approx(before["ece"], abs=1e-6)
    assert before["ece_uncalibrated"] == before["ece"] and before["temperature"] == 1.0
    table = runner.invoke(app, ["evaluate", str(test), "-m", str(calibrated)])
    assert f"before calibration {after['ece_uncalibrated']:.4f}" in table.stdout
    assert f"calibration error {after['ece']:.4f}" in table.stdout


def test_a_small_or_absent_validation_split_keeps_the_network_s_probabilities(trained_model, tmp_path):
    section = _metadata(trained_model)["calibration"]  # TINY's toy data: 12 validation rows
    assert section["method"] == "none" and section["temperature"] == 1.0 and not section["enough_rows"]
    train = write_csv(tmp_path / "train.csv", toy_rows(60, seed=1))
    done = runner.invoke(app, ["train", str(train), "-m", str(tmp_path / "m"), *TINY, "--validation-split", "0"])
    assert done.exit_code == 0, done.output
    section = _metadata(tmp_path / "m")["calibration"]
    assert section["temperature"] == 1.0 and "no validation rows" in section["reason"]


@pytest.mark.parametrize("temperature", [0, -1.5, "2", None, 1e400])
def test_a_temperature_that_is_not_a_positive_number_is_refused(trained_model, tmp_path, temperature):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_model, copy)
    metadata = _metadata(copy)
    metadata["calibration"]["temperature"] = temperature
    (copy / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    done = runner.invoke(app, ["predict", "-m", str(copy), "hello"])
    assert done.exit_code == 1 and done.stdout == ""
    assert '"calibration.temperature" must be' in done.stderr and "Traceback" not in done.stderr


def test_continuing_a_calibrated_model_starts_from_its_raw_head(calibrated_pair, tmp_path):
    """train --from undoes the folded temperature: with a learning rate of 1e-9 (no weight moves) and no
    calibration of its own, the child's head is the parent's times T, the raw twin's."""
    calibrated, raw, test = calibrated_pair
    args = ["train", str(test), "--from", str(calibrated), "-m", str(tmp_path / "child"), "--epochs", "1",
            "--learning-rate", "1e-9", "--no-calibrate", "--quiet"]  # fmt: skip
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    from lstm_cli.artifact import network_weights  # whatever file holds them (the SavedModel's variables)

    child, twin = network_weights(tmp_path / "child"), network_weights(raw)
    for name in ("probabilities/kernel", "probabilities/bias"):
        np.testing.assert_allclose(child[name], twin[name], rtol=1e-5, atol=1e-6)


def test_the_report_shows_the_error_before_calibration():
    pytest.importorskip("matplotlib")
    from test_report import synthetic

    from lstm_cli.report import render

    report = synthetic(["a", "b", "c"])
    assert "before calibration" not in render(report) and "before the temperature" not in render(report)
    report.evaluation["calibration"] = {"temperature": 2.0, "bins": 15, "ece": 0.05, "ece_uncalibrated": 0.123}
    page = render(report)
    assert "before calibration 0.123" in page and "0.123 before the temperature training fitted, T = 2.000" in page


def test_resume_fits_the_same_temperature_and_serves_a_run_with_or_without_it(calibrated_pair, tmp_path):
    """The checkpoints hold the raw weights: a finished run resumed fits the same temperature to the same
    weights, and a checkpoint written with calibration serves --no-calibrate (calibrate is not part of
    the run's identity), which saves the raw head."""
    import dataclasses

    from lstm_cli.config import TrainConfig
    from lstm_cli.data import read_labeled
    from lstm_cli.train import train

    data = read_labeled(calibrated_pair[0].parent / "train.csv")
    config = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, bigram_buckets=512, bigram_dim=4,
                         epochs=2, batch_size=16, learning_rate=0.02, validation_split=0.3)  # fmt: skip
    checkpoints = tmp_path / "checkpoints"
    first = train(config, data, checkpoint_dir=checkpoints)
    again = train(config, data, checkpoint_dir=checkpoints, resume=True)
    assert first.calibration["method"] == "temperature" and again.calibration == first.calibration
    for a, b in zip(first.network.get_weights(), again.network.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    raw = train(dataclasses.replace(config, calibrate=False), data, checkpoint_dir=checkpoints, resume=True)
    assert raw.calibration["method"] == "none"
    temperature = first.calibration["temperature"]
    for folded, unfolded in zip(first.network.get_layer("probabilities").get_weights(),
                                raw.network.get_layer("probabilities").get_weights(), strict=True):  # fmt: skip
        np.testing.assert_allclose(folded * temperature, unfolded, rtol=1e-5, atol=1e-7)
