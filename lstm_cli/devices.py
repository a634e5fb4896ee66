"""Which device, distribution strategy and kernels training uses: a pure decision, then applying it.

`decide` is plain Python so the GPU and cluster logic is unit-tested on machines without either.

Several machines: when TF_CONFIG (the variable Kubernetes operators, Vertex AI and SageMaker set) names a
cluster of more than one task, every worker runs the same `lstm-cli train` command under
MultiWorkerMirroredStrategy. The chief (task "chief", or worker 0 when no chief is listed) is the only one
that writes the model."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from lstm_cli.config import TrainConfig, number_problem
from lstm_cli.schema import MAX_OPTION_JSON_BYTES, load_json

DEVICES = ("auto", "cpu", "gpu")


@dataclass
class DevicePlan:
    device: str  # "cpu" or "gpu"
    gpus: int  # GPUs used
    strategy: str  # "default", "mirrored" (one replica per GPU) or "multi-worker" (TF_CONFIG)
    cudnn: bool  # the recurrent layers qualify for the fused cuDNN kernel
    mixed_precision: bool  # float16 compute, float32 variables and output layer
    warnings: list[str] = field(default_factory=list)
    cluster: Cluster | None = None  # this process's place in a TF_CONFIG cluster
    _strategy: Any = None

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    def describe(self) -> str:
        where = f"worker {self.cluster.index + 1} of {self.cluster.workers}, " if self.cluster else ""
        if self.device == "cpu":
            return f"{where}CPU"
        parts = [f"{where}{self.gpus} GPU{'s' if self.gpus > 1 else ''}"]
        if self.strategy == "mirrored":
            parts.append("MirroredStrategy")
        parts.append("cuDNN" if self.cudnn else "no cuDNN")
        if self.mixed_precision:
            parts.append("mixed float16")
        return ", ".join(parts)

    def scope(self):
        return self._strategy.scope() if self._strategy is not None else contextlib.nullcontext()

    @property
    def strategy_object(self):
        """The tf.distribute strategy training runs under (TensorFlow's default one when none was made)."""
        from lstm_cli.model import tf

        return self._strategy if self._strategy is not None else tf.distribute.get_strategy()


@dataclass(frozen=True)
class Cluster:
    workers: int  # tasks that train: the chief and the workers
    index: int  # this task's rank among them, 0 for the chief
    task: str  # "chief/0", "worker/1", ... as TF_CONFIG names it

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def _address(value: object) -> bool:
    """'host:port' (a name or an IP address, [IPv6] too, and a port number)."""
    if not isinstance(value, str):
        return False
    host, _, port = value.rpartition(":")
    return bool(host.strip()) and port.isascii() and port.isdigit() and 0 < int(port) < 65_536


def read_cluster(environ=os.environ) -> Cluster | None:
    """This process's place in the TF_CONFIG cluster, or None without one (or with a one-task cluster).

    Raises ValueError naming what is wrong with a TF_CONFIG that cannot be used."""
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    example = ('expected e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
               '"task": {"type": "worker", "index": 0}}')  # fmt: skip
    try:
        config = load_json(raw, max_bytes=MAX_OPTION_JSON_BYTES)  # bounded in size and nesting depth
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({str(e)[:100]}); {example}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(f'TF_CONFIG needs a "cluster" object and a "task" object; {example}')
    jobs = {}
    for name in ("chief", "worker"):
        if name not in cluster:
            continue
        addresses = cluster[name]
        if not isinstance(addresses, list) or not all(map(_address, addresses)):
            raise ValueError(
                f'TF_CONFIG: cluster "{name}" must be a list of "host:port" strings, got {addresses!r:.80}'
            )
        jobs[name] = addresses
    kind, index = task.get("type"), task.get("index")
    if isinstance(index, str) and index.isascii() and index.isdigit():
        index = int(index)  # "1": as TensorFlow reads it
    problem = number_problem('TF_CONFIG task "index"', index, 0, integer=True)
    if not isinstance(kind, str) or problem:
        raise ValueError(problem or f'TF_CONFIG: task "type" must be a string such as "worker", got {kind!r:.80}')
    if kind not in jobs or index >= len(jobs[kind]):
        raise ValueError(f"TF_CONFIG: task {kind}/{index} is not in its cluster (jobs: {', '.join(jobs) or 'none'})")
    order = [("chief", i) for i in range(len(jobs.get("chief", [])))] + [
        ("worker", i) for i in range(len(jobs.get("worker", [])))
    ]
    if len(order) < 2:
        return None  # one task: an ordinary single-process run
    return Cluster(workers=len(order), index=order.index((kind, index)), task=f"{kind}/{index}")


def cudnn_eligible(config: TrainConfig) -> bool:
    """Keras uses cuDNN for LSTM/GRU with its default activations, a bias, no unrolling and
    recurrent_dropout == 0; right padding with masks (what lstm-cli feeds) is supported."""
    return config.recurrent_dropout == 0


def decide(
    config: TrainConfig,
    *,
    requested: str,
    gpus_visible: int,
    mixed_precision: bool = False,
    cluster: Cluster | None = None,
) -> DevicePlan:
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    warnings = []
    use_gpu = gpus_visible > 0 and requested != "cpu"
    if requested == "gpu" and gpus_visible == 0:
        warnings.append("--device gpu: TensorFlow sees no GPU; training on the CPU")
    if not use_gpu:
        if mixed_precision:
            warnings.append("--mixed-precision needs a GPU (float16 is slower on a CPU); training in float32")
        return DevicePlan("cpu", 0, "multi-worker" if cluster else "default", False, False, warnings, cluster)
    cudnn = cudnn_eligible(config)
    if not cudnn:
        warnings.append(
            f"recurrent dropout {config.recurrent_dropout} rules out the fast cuDNN kernel on the GPU; "
            "pass --recurrent-dropout 0 to get it back"
        )
    strategy = "multi-worker" if cluster else "mirrored" if gpus_visible > 1 else "default"
    return DevicePlan("gpu", gpus_visible, strategy, cudnn, mixed_precision, warnings, cluster)


def plan_devices(config: TrainConfig, *, requested: str = "auto", mixed_precision: bool = False) -> DevicePlan:
    """Decide, then configure TensorFlow accordingly. Call before any TensorFlow op runs.

    The precision is not set globally: train builds the network under the plan's dtype policy."""
    from lstm_cli.model import tf

    cluster = read_cluster()
    gpus = tf.config.list_physical_devices("GPU")
    plan = decide(config, requested=requested, gpus_visible=len(gpus), mixed_precision=mixed_precision, cluster=cluster)
    if plan.device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
    if plan.strategy == "mirrored":
        plan._strategy = tf.distribute.MirroredStrategy()
    elif plan.strategy == "multi-worker":
        # Blocks until every task of TF_CONFIG has started (the caller bounds the wait).
        try:
            plan._strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except tf.errors.OpError as e:
            from lstm_cli.errors import LstmCliError

            raise LstmCliError(
                f"{cluster.task}: could not join the cluster of TF_CONFIG ({type(e).__name__}: "
                f"{str(e).strip()[:160]}); check that this task's address in TF_CONFIG is free and its own"
            ) from None
    return plan
