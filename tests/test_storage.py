"""How a model directory stores its weights: once, in the SavedModel's variables, which the numpy engine reads
too; the Keras network rebuilt from them when something needs one (lstm_cli.artifact.load_network); and older
layouts (engine.npz, model.keras) still read."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, npz_layout
from typer.testing import CliRunner

from lstm_cli.cli import app
from lstm_cli.errors import ArtifactError

runner = CliRunner()
TEXTS = ["good great lovely", "bad awful", "", "okay plain " * 40, "émoji 🙂 ok"]


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _parameters(model: Path) -> int:
    return json.loads((model / "metadata.json").read_text(encoding="utf-8"))["parameters"]


def _rehash(model: Path) -> None:
    meta = json.loads((model / "metadata.json").read_text(encoding="utf-8"))
    meta["files"] = {
        p.relative_to(model).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model.rglob("*"))
        if p.is_file() and p.name != "metadata.json"
    }
    (model / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")


def test_each_more_parameter_costs_one_float32(trained_model, data_dir, tmp_path):
    """A tiny model's directory is mostly the SavedModel's graph, whatever its weights; what grows with the
    parameters is the weights' storage: 4 bytes for each parameter more, at most 1.1 x 4 (the issue's bound is
    2.1 x 4; it was 4 x 4: the SavedModel's variables twice, model.keras and engine.npz)."""
    wider = tmp_path / "wider"
    # --bigram-dim 4 -> 68: 512 x 64 more parameters in the bigram table
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), "-m", str(wider), *TINY, "--bigram-dim", "68"])
    assert result.exit_code == 0, result.output
    more = _parameters(wider) - _parameters(trained_model)
    assert more >= 512 * 64  # and the dense layer reads 64 more features
    assert _size(wider) - _size(trained_model) <= 1.1 * 4 * more
    # and the SavedModel's variables hold each weight once, the only copy
    variables = wider / "variables" / "variables.data-00000-of-00001"
    assert 4 * _parameters(wider) <= variables.stat().st_size <= 4 * _parameters(wider) + 4096
    assert not (wider / "model.keras").exists() and not (wider / "engine.npz").exists()


def test_load_network_rebuilds_the_trained_network_with_its_weights(trained_model):
    import tensorflow as tf

    from lstm_cli.artifact import load_network, network_weights
    from lstm_cli.engine import Engine

    network = load_network(trained_model)
    weights = network_weights(trained_model)
    assert {v.path for v in network.weights} == set(weights)
    for variable in network.weights:
        np.testing.assert_array_equal(variable.numpy(), weights[variable.path])
    config = json.loads((trained_model / "metadata.json").read_text(encoding="utf-8"))["config"]
    assert network.get_layer("lstm_1").dropout == config["dropout"]  # the training network, dropout included
    description = json.loads((trained_model / "engine.json").read_text(encoding="utf-8"))
    vocabulary = json.loads((trained_model / "vocabulary.json").read_text(encoding="utf-8"))
    engine = Engine(description, weights, vocabulary)
    ids = [engine.tokenizer.ids(text) for text in TEXTS]
    padded = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for row, sequence in enumerate(ids):
        padded[row, : len(sequence)] = sequence
    keras_p = network(padded, training=False).numpy()
    np.testing.assert_allclose(keras_p, engine.probabilities_of_ids(ids), atol=1e-5)
    with tf.GradientTape() as tape:  # and it trains: what `train --from` does with it
        loss = -tf.reduce_mean(tf.math.log(network(padded, training=True)[:, 0]))
    gradients = tape.gradient(loss, network.trainable_variables)
    assert all(g is not None and np.isfinite(np.asarray(tf.convert_to_tensor(g))).all() for g in gradients)


def _with_model_keras(trained_model: Path, target: Path, *, engine_files: bool) -> Path:
    """A copy of the model as lstm-cli wrote it when directories held model.keras and engine.npz (or, with
    engine_files=False, before the numpy engine existed)."""
    from lstm_cli.artifact import load_network

    shutil.copytree(trained_model, target)
    npz_layout(target)
    load_network(trained_model).save(target / "model.keras")
    meta = json.loads((target / "metadata.json").read_text(encoding="utf-8"))
    if not engine_files:
        for name in ("engine.json", "engine.npz"):
            (target / name).unlink()
        del meta["engine"]
        (target / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    _rehash(target)
    return target


@pytest.mark.parametrize("engine_files", [True, False], ids=["with-engine-files", "before-the-engine"])
def test_an_older_directory_with_model_keras_still_predicts_and_explains(trained_model, tmp_path, engine_files):
    old = _with_model_keras(trained_model, tmp_path / "old", engine_files=engine_files)
    if engine_files:  # the numpy engine reads the same weights from engine.npz
        from lstm_cli.artifact import network_weights

        ours, theirs = network_weights(trained_model), network_weights(old)
        assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    for command in (["predict", "--all-probabilities"], ["explain", "--method", "integrated-gradients"]):
        new = runner.invoke(app, [*command, "-m", str(trained_model), "good great awful"])
        result = runner.invoke(app, [*command, "-m", str(old), "good great awful"])
        assert new.exit_code == 0 and result.exit_code == 0, result.output
        if engine_files or command[0] == "explain":
            assert result.stdout == new.stdout
        else:  # TensorFlow serves it: equal to float precision
            ours, theirs = (np.array(r.stdout.split("\t")[1::2], dtype=float) for r in (new, result))
            np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_directory_without_any_weights_lstm_cli_reads_is_refused_in_one_line(trained_model, tmp_path):
    from lstm_cli.artifact import load_network

    old = _with_model_keras(trained_model, tmp_path / "old", engine_files=False)
    (old / "model.keras").unlink()
    _rehash(old)
    with pytest.raises(ArtifactError, match="no network weights lstm-cli can read; train the model again"):
        load_network(old)
    result = runner.invoke(app, ["explain", "-m", str(old), "--method", "integrated-gradients", "good"])
    assert result.exit_code == 1 and result.stdout == "" and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "train the model again" in errors[0]  # after a note on the older directory


def test_the_checkpoint_reader_agrees_with_tensorflows(trained_model):
    import tensorflow as tf

    from lstm_cli.tensorbundle import DATA, INDEX, arrays, numeric_entries

    prefix = str(trained_model / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    index, data = (trained_model / INDEX).read_bytes(), (trained_model / DATA).read_bytes()
    ours = numeric_entries(index, len(data))
    theirs = {k for k, dtype in reader.get_variable_to_dtype_map().items() if dtype in (tf.float32, tf.int32)}
    assert theirs <= set(ours)
    read = arrays(index, data, {key: key for key in ours})
    for key in ours:
        np.testing.assert_array_equal(read[key], reader.get_tensor(key))
    assert read[next(iter(ours))].flags.writeable is False  # views of the file's bytes, not copies


def test_a_weight_not_found_in_the_checkpoint_goes_to_engine_npz(data_dir, tmp_path, monkeypatch):
    from lstm_cli import artifact

    monkeypatch.setattr(artifact, "_checkpoint_keys", lambda directory, weights: None)
    model = tmp_path / "m"
    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), "-m", str(model), *TINY, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    description = json.loads((model / "engine.json").read_text(encoding="utf-8"))
    assert description["weights_file"] == "engine.npz" and "weights_keys" not in description
    assert json.loads((model / "metadata.json").read_text(encoding="utf-8"))["engine"]["weights"] == "engine.npz"
    outputs = {}
    for engine in ("numpy", "tensorflow"):
        done = runner.invoke(app, ["predict", "-m", str(model), "--engine", engine, "--all-probabilities", *TEXTS[:3]])
        assert done.exit_code == 0, done.output
        outputs[engine] = np.array([line.split("\t")[1::2] for line in done.stdout.splitlines()], dtype=float)
    np.testing.assert_allclose(outputs["numpy"], outputs["tensorflow"], atol=1e-5)
