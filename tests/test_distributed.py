"""Training under tf.distribute: two workers on loopback ports, MirroredStrategy over two logical CPUs, the
bound on waiting for a worker that never comes, and the loop's --steps-per-epoch, --max-steps, --tensorboard."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from typer.testing import CliRunner

from lstm_cli.cli import app

runner = CliRunner()

# Deterministic updates: without dropout a cluster's steps are the single process's, up to summation order.
EXACT = [*TINY[:-1], "--dropout", "0", "--embedding-dropout", "0", "--dense-dropout", "0", "--max-tokens", "60"]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, **extra}


def _engine_weights(model_dir: Path) -> dict[str, np.ndarray]:
    from lstm_cli.artifact import network_weights

    return network_weights(model_dir)


def test_two_workers_on_loopback_train_one_model_that_matches_a_single_process(data_dir, tmp_path):
    ports = _free_ports(2)
    args = [sys.executable, "-m", "lstm_cli", "train", str(data_dir / "train.csv"), *EXACT, "-m", "model"]
    workers = [
        subprocess.Popen(
            args,
            cwd=tmp_path,
            env=_env(TF_CONFIG=_tf_config(ports, i)),
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=240) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    (chief_out, chief_err), (other_out, other_err) = outputs
    assert chief_out == "model\n" and other_out == ""  # only the chief writes (and names) the model
    assert "worker 1 of 2" in chief_err and "worker/1: training finished" in other_err
    # Nothing else at the target, and no checkpoint left by either worker.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    predicted = subprocess.run([sys.executable, "-m", "lstm_cli", "predict", "-m", "model", "good great lovely"],
                               cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert predicted.returncode == 0 and predicted.stdout.split("\t")[0] == "pos", predicted

    single = runner.invoke(app, ["train", str(data_dir / "train.csv"), *EXACT, "-m", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    cluster, alone = _engine_weights(tmp_path / "model"), _engine_weights(tmp_path / "single")
    assert cluster.keys() == alone.keys()
    # Same global batches and updates; the sum of two replicas' gradients differs from one replica's in
    # the last bits (float32 addition order), which Adam carries through 3 epochs of steps.
    for name in cluster:
        np.testing.assert_allclose(cluster[name], alone[name], atol=1e-5, err_msg=name)


DRIVER = textwrap.dedent(
    """
    import sys, numpy as np
    from lstm_cli.config import TrainConfig
    from lstm_cli.data import read_labeled
    from lstm_cli.train import train
    config = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, epochs=2, batch_size=16,
                         learning_rate=0.02, dropout=0.2, embedding_dropout=0.2, dense_dropout=0.2)
    result = train(config, read_labeled(sys.argv[1]))
    np.savez(sys.argv[2], *result.network.get_weights())
    """
)


@pytest.mark.slow  # a two-process cluster with dropout, ~20 s; the default run keeps the one without dropout
def test_every_worker_ends_with_the_same_weights_even_with_dropout(data_dir, tmp_path):
    """Each worker's copy of the variables: identical to the bit (all-reduced gradients, mirrored updates)."""
    ports = _free_ports(2)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(data_dir / "train.csv"), str(tmp_path / f"w{i}.npz")],
            cwd=tmp_path,
            env=_env(TF_CONFIG=_tf_config(ports, i)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=240) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    with np.load(tmp_path / "w0.npz") as a, np.load(tmp_path / "w1.npz") as b:
        assert len(a.files) == len(b.files) > 0
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])


def test_a_worker_that_never_arrives_stops_the_other_with_one_line(data_dir, tmp_path):
    ports = _free_ports(2)
    started = time.monotonic()
    alone = subprocess.run(
        [sys.executable, "-m", "lstm_cli", "train", str(data_dir / "train.csv"), *TINY, "-m", "model",
         "--worker-timeout", "3"],
        cwd=tmp_path, env=_env(TF_CONFIG=_tf_config(ports, 0)), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert alone.returncode == 1, alone.stderr
    lines = alone.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: worker/0: ") and "TF_CONFIG" in lines[0], lines
    assert "--worker-timeout" in lines[0] and "Traceback" not in alone.stderr
    assert time.monotonic() - started < 60  # bounded: start-up plus the 3 s wait
    assert not (tmp_path / "model").exists()


def test_a_broken_tf_config_is_a_usage_error(data_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lstm_cli", "train", str(data_dir / "train.csv"), *TINY],
        cwd=tmp_path, env=_env(TF_CONFIG='{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief"}}'),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "TF_CONFIG" in result.stderr and "Traceback" not in result.stderr


MIRRORED = textwrap.dedent(
    """
    import sys, numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from lstm_cli.config import TrainConfig
    from lstm_cli.data import read_labeled
    from lstm_cli.train import train
    config = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, epochs=2, batch_size=16,
                         learning_rate=0.02, dropout=0, embedding_dropout=0, dense_dropout=0, clip_norm=0.5)
    data = read_labeled(sys.argv[1])
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two = train(config, data, strategy=mirrored)
    one = train(config, data)
    assert two.history and mirrored.num_replicas_in_sync == 2
    for a, b in zip(two.network.get_weights(), one.network.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    print("ok", two.history[-1]["val_accuracy"])
    """
)


def test_mirrored_strategy_over_two_logical_cpus_matches_one_replica(data_dir):
    """Two replicas in one process (as Keras' distribute tests run them), with gradient clipping, which
    must see the summed gradient: the same weights as one replica."""
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(data_dir / "train.csv")], env=_env(),
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


def test_steps_per_epoch_max_steps_and_tensorboard(data_dir, tmp_path):
    from lstm_cli.artifact import read_metadata

    result = runner.invoke(app, ["train", str(data_dir / "train.csv"), *TINY[:-1], "-m", str(tmp_path / "m"),
                                 "--steps-per-epoch", "4", "--max-steps", "10", "--epochs", "9", "--patience", "9",
                                 "--tensorboard", str(tmp_path / "tb")])  # fmt: skip
    assert result.exit_code == 0, result.output
    training = read_metadata(tmp_path / "m")["training"]
    assert training["epochs_run"] == 3  # 4 + 4 + 2 steps: --max-steps cuts the third epoch short
    assert "epoch 3/3" in result.stderr and "4 steps an epoch" in result.stderr

    import tensorflow as tf

    points: dict[str, list[tuple[int, float]]] = {}
    for path in (tmp_path / "tb").iterdir():
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                points.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    assert {"epoch/loss", "epoch/accuracy", "epoch/val_loss", "epoch/val_accuracy", "epoch/learning_rate",
            "epoch/tokens_per_second", "epoch/rows_per_second"} <= points.keys()  # fmt: skip
    assert [step for step, _ in points["epoch/val_loss"]] == [4, 8, 10]
    history = training["history"]
    np.testing.assert_allclose([v for _, v in points["epoch/val_loss"]], [h["val_loss"] for h in history], rtol=1e-6)
    assert all(v == pytest.approx(0.02) for _, v in points["epoch/learning_rate"])


RESUMABLE = textwrap.dedent(
    """
    import json, shutil, sys, numpy as np
    from pathlib import Path
    from lstm_cli.config import TrainConfig
    from lstm_cli.data import read_labeled
    from lstm_cli.errors import LstmCliError
    from lstm_cli.train import train
    mode, data, checkpoints, out = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    config = TrainConfig(embedding_dim=8, units=6, dense_units=8, max_tokens=60, epochs=3, batch_size=16,
                         learning_rate=0.02, patience=9)

    def crash_after_two(report):  # a cluster that goes down once epoch 2's checkpoint is written
        shutil.copytree(checkpoints, f"{checkpoints}-epoch{report.epoch}")
        if report.epoch == 2:
            raise SystemExit(3)

    try:
        if mode == "interrupted":
            train(config, read_labeled(data), checkpoint_dir=checkpoints, on_epoch=crash_after_two)
        result = train(config, read_labeled(data), checkpoint_dir=checkpoints, resume=True)
    except LstmCliError as e:
        print(e, file=sys.stderr)
        raise SystemExit(1)
    np.savez(out, *result.network.get_weights())
    Path(out + ".json").write_text(json.dumps(result.history))
    """
)


def _cluster(mode: str, data: Path, tmp_path: Path, checkpoints: list[str]) -> list[tuple[int, str]]:
    ports = _free_ports(2)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RESUMABLE,
                mode,
                str(data),
                str(tmp_path / checkpoints[i]),
                str(tmp_path / f"w{i}.npz"),
            ],
            cwd=tmp_path,
            env=_env(TF_CONFIG=_tf_config(ports, i)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    return [(w.wait(timeout=240), w.communicate()[1]) for w in workers]


@pytest.mark.slow  # three two-process clusters, ~40 s
def test_a_cluster_resumes_from_its_checkpoints_and_refuses_workers_at_different_epochs(data_dir, tmp_path):
    import shutil

    data = data_dir / "train.csv"
    # Both workers stop after epoch 2 (checkpoints written); their epoch-1 checkpoints are kept aside.
    assert [code for code, _ in _cluster("interrupted", data, tmp_path, ["c0", "c1"])] == [3, 3]
    shutil.copytree(tmp_path / "c0", tmp_path / "c0-kept")

    # Worker 1 comes back with an older checkpoint: every worker refuses, with one line, before any step.
    outcomes = _cluster("resume", data, tmp_path, ["c0-kept", "c1-epoch1"])
    assert [code for code, _ in outcomes] == [1, 1], outcomes
    for i, (_, err) in enumerate(outcomes):
        assert f"worker/{i}: the workers' checkpoints end at different epochs" in err, err
        assert f"after epoch {2 if i == 0 else 1}" in err and "Traceback" not in err

    # Both come back at epoch 2: the cluster trains epoch 3 only, and the workers agree to the bit.
    outcomes = _cluster("resume", data, tmp_path, ["c0", "c1"])
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    histories = [json.loads((tmp_path / f"w{i}.npz.json").read_text()) for i in range(2)]
    assert histories[0] == histories[1] and len(histories[0]) == 3
    before = json.loads((tmp_path / "c0-epoch2" / "state.json").read_text())["history"]
    assert histories[0][:2] == before  # epochs 1-2 come from the checkpoint, not from training again
    with np.load(tmp_path / "w0.npz") as a, np.load(tmp_path / "w1.npz") as b:
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
