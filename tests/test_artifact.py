"""Model directories: usable without lstm-cli, self-describing, reproducible, and checked on load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from typer.testing import CliRunner

from lstm_cli.artifact import network_weights
from lstm_cli.cli import app

runner = CliRunner()
TEXTS = ["good great lovely", "bad awful", "", "okay plain " * 40, "émoji 🙂 ok"]


def test_saved_model_serves_raw_strings_in_a_process_without_lstm_cli(trained_model):
    result = runner.invoke(
        app, ["predict", "-m", str(trained_model), "--format", "json", "--all-probabilities", *TEXTS]
    )
    assert result.exit_code == 0, result.output
    ours = [json.loads(line) for line in result.stdout.splitlines()]
    script = textwrap.dedent(
        f"""
        import json, sys
        import tensorflow as tf
        loaded = tf.saved_model.load({str(trained_model)!r})
        out = loaded.signatures["serving_default"](text=tf.constant({TEXTS!r}))
        assert "lstm_cli" not in sys.modules
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}, default=lambda b: b.decode()))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    labels = json.loads((trained_model / "metadata.json").read_text())["labels"]
    for i, record in enumerate(ours):
        np.testing.assert_allclose(theirs["probabilities"][i], [record["probabilities"][x] for x in labels], atol=1e-5)
        assert theirs["label"][i] == record["label"]
        assert theirs["label_names"][i] == labels
        assert theirs["probability"][i] == pytest.approx(record["probability"], abs=1e-5)


def test_saved_model_cli_shows_the_string_signature(trained_model):
    exe = Path(sys.executable).with_name("saved_model_cli")
    done = subprocess.run([str(exe), "show", "--dir", str(trained_model), "--all"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "serving_default" in done.stdout and "DT_STRING" in done.stdout and "probabilities" in done.stdout


def test_metadata_is_plain_json_describing_everything(trained_model):
    files = sorted(p.name for p in trained_model.iterdir())
    assert {"saved_model.pb", "variables", "metadata.json", "vocabulary.json"} <= set(files)
    assert "engine.json" in files and "engine.npz" not in files  # the engine reads the SavedModel's variables
    assert not list(trained_model.rglob("*.pkl")) and not list(trained_model.rglob("*.pickle"))
    meta = json.loads((trained_model / "metadata.json").read_text())
    assert meta["format"] == "lstm-cli-model" and meta["format_version"] == 1
    assert set(meta["config"]) >= {"max_tokens", "max_length", "units", "dropout", "recurrent_dropout", "seed"}
    vocabulary = json.loads((trained_model / "vocabulary.json").read_text())
    assert vocabulary[:2] == ["", "[UNK]"] and len(vocabulary) == meta["vectorizer"]["vocabulary_size"]
    assert "created_at" in meta and meta["training"]["validation"] == {"split": 0.1, "seed": 1337}
    assert {"engine.json", "vocabulary.json", "variables/variables.index"} <= set(meta["files"])  # hashed
    engine = json.loads((trained_model / "engine.json").read_text())
    assert engine["tokenizer"]["max_length"] == meta["config"]["max_length"]
    assert engine["weights_file"] == meta["engine"]["weights"] == "variables/variables.data-00000-of-00001"
    named = {key for node in engine["network"]["nodes"] for key in node["weights"]}
    assert named == set(engine["weights_keys"])  # each weight's key in the SavedModel's checkpoint
    weights = network_weights(trained_model)
    assert named == set(weights) and all(weights[k].dtype == np.float32 for k in weights)


def _weights(model_dir: Path) -> list[np.ndarray]:
    from lstm_cli.artifact import network_weights

    return list(network_weights(model_dir).values())


def test_same_seed_same_model_and_other_seed_differs(data_dir, tmp_path):
    paths = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        args = ["train", str(data_dir / "train.csv"), "-m", str(tmp_path / name), *TINY, "--epochs", "2"]
        result = runner.invoke(app, [*args, "--seed", seed])
        assert result.exit_code == 0, result.output
        paths[name] = _weights(tmp_path / name)
    for a, b in zip(paths["a"], paths["b"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(paths["a"], paths["c"], strict=True))


def test_labels_keep_their_mapping_across_save_and_load(tmp_path):
    from conftest import write_csv

    # labels that sort differently as strings and as numbers, and that look numeric
    rows = [(f"alpha word{i % 3}", "10") for i in range(20)] + [(f"beta word{i % 3}", "9") for i in range(20)]
    rows += [(f"gamma word{i % 3}", "0") for i in range(20)]
    path = write_csv(tmp_path / "num.csv", rows)
    args = ["train", str(path), "-m", str(tmp_path / "m"), *TINY, "--epochs", "12", "--validation-split", "0"]
    assert runner.invoke(app, args).exit_code == 0
    out = runner.invoke(app, ["predict", "-m", str(tmp_path / "m"), "--format", "label", "alpha", "beta", "gamma"])
    assert out.stdout.splitlines() == ["10", "9", "0"]


@pytest.fixture()
def model_copy(trained_model, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(trained_model, copy)
    return copy


def _predict_error(model_dir: Path, *options: str) -> str:
    result = runner.invoke(app, ["predict", "-m", str(model_dir), "hello", *options])
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    return lines[0]


def test_newer_format_version_asks_to_upgrade(model_copy):
    meta_path = model_copy / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    assert "upgrade" in _predict_error(model_copy)


@pytest.mark.parametrize(
    "damage",
    ["truncate-variables", "delete-saved-model", "truncate-engine-weights", "tamper-engine", "delete-vocabulary",
     "tamper-metadata", "delete-metadata"],
)  # fmt: skip
def test_damaged_model_directory_names_the_file(model_copy, damage):
    if damage == "truncate-variables":
        target = next((model_copy / "variables").glob("variables.data*"))
        target.write_bytes(target.read_bytes()[:10])
        assert target.name in _predict_error(model_copy, "--engine", "tensorflow")
    elif damage == "delete-saved-model":
        (model_copy / "saved_model.pb").unlink()
        assert "saved_model.pb" in _predict_error(model_copy, "--engine", "tensorflow")
    elif damage == "truncate-engine-weights":  # the numpy engine reads the SavedModel's variables too
        for name in ("variables.index", "variables.data-00000-of-00001"):
            target = model_copy / "variables" / name
            kept = target.read_bytes()
            target.write_bytes(kept[:100])
            assert name in _predict_error(model_copy)
            target.write_bytes(kept)
    elif damage == "tamper-engine":
        description = json.loads((model_copy / "engine.json").read_text())
        description["network"]["nodes"][1]["type"] = "Lambda"
        (model_copy / "engine.json").write_text(json.dumps(description))
        assert "engine.json" in _predict_error(model_copy)
    elif damage == "delete-vocabulary":
        (model_copy / "vocabulary.json").unlink()
        assert "vocabulary.json" in _predict_error(model_copy)
    elif damage == "tamper-metadata":
        (model_copy / "metadata.json").write_text("{not json")
        assert "metadata.json" in _predict_error(model_copy)
    else:
        (model_copy / "metadata.json").unlink()
        assert "metadata.json" in _predict_error(model_copy)


def test_missing_model_explains_how_to_get_one(tmp_path):
    message = _predict_error(tmp_path / "nowhere")
    assert "lstm-cli train" in message and "--model" in message


def test_mixed_precision_training_exports_a_float32_model(data_dir, tmp_path, monkeypatch):
    import keras
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    from lstm_cli import artifact, devices

    def mixed_on_cpu(config, **kwargs):  # what a GPU machine decides for --mixed-precision, here on the CPU
        return devices.DevicePlan("cpu", 0, "default", False, True)

    monkeypatch.setattr(devices, "decide", mixed_on_cpu)
    policies = []
    save = artifact.save

    def saving(result, *args, **kwargs):
        policies.append(result.network.get_layer("lstm_1").dtype_policy.name)
        return save(result, *args, **kwargs)

    monkeypatch.setattr(artifact, "save", saving)
    args = ["train", str(data_dir / "train.csv"), "-m", str(tmp_path / "m"), *TINY, "--epochs", "1"]
    result = runner.invoke(app, [*args, "--mixed-precision"])
    assert result.exit_code == 0, result.output
    assert policies == ["mixed_float16"]  # training did run in float16
    assert keras.config.dtype_policy().name == "float32"  # and left the global policy as it found it
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "m" / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    half = [
        n.name
        for n in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
        for value in n.attr.values()
        if value.type == types_pb2.DT_HALF or types_pb2.DT_HALF in value.list.type
    ]
    assert half == []  # the serving network computes in float32
    predicted = runner.invoke(
        app, ["predict", "-m", str(tmp_path / "m"), "--format", "json", "--all-probabilities", "good great"]
    )
    assert predicted.exit_code == 0, predicted.output
    assert sum(json.loads(predicted.stdout)["probabilities"].values()) == pytest.approx(1, abs=1e-6)
