"""Which device, distribution strategy and kernels training uses: a pure decision, then applying it.

`decide` is plain Python so the GPU logic is unit-tested on machines without a GPU."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from lstm_cli.config import TrainConfig

DEVICES = ("auto", "cpu", "gpu")


@dataclass
class DevicePlan:
    device: str  # "cpu" or "gpu"
    gpus: int  # GPUs used
    strategy: str  # "default" or "mirrored" (one replica per GPU)
    cudnn: bool  # the recurrent layers qualify for the fused cuDNN kernel
    mixed_precision: bool  # float16 compute, float32 variables and output layer
    warnings: list[str] = field(default_factory=list)
    _strategy: Any = None

    def describe(self) -> str:
        if self.device == "cpu":
            return "CPU"
        parts = [f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"]
        if self.strategy == "mirrored":
            parts.append("MirroredStrategy")
        parts.append("cuDNN" if self.cudnn else "no cuDNN")
        if self.mixed_precision:
            parts.append("mixed float16")
        return ", ".join(parts)

    def scope(self):
        return self._strategy.scope() if self._strategy is not None else contextlib.nullcontext()


def cudnn_eligible(config: TrainConfig) -> bool:
    """Keras uses cuDNN for LSTM/GRU with its default activations, a bias, no unrolling and
    recurrent_dropout == 0; right padding with masks (what lstm-cli feeds) is supported."""
    return config.recurrent_dropout == 0


def decide(config: TrainConfig, *, requested: str, gpus_visible: int, mixed_precision: bool = False) -> DevicePlan:
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    warnings = []
    use_gpu = gpus_visible > 0 and requested != "cpu"
    if requested == "gpu" and gpus_visible == 0:
        warnings.append("--device gpu: TensorFlow sees no GPU; training on the CPU")
    if not use_gpu:
        if mixed_precision:
            warnings.append("--mixed-precision needs a GPU (float16 is slower on a CPU); training in float32")
        return DevicePlan("cpu", 0, "default", False, False, warnings)
    cudnn = cudnn_eligible(config)
    if not cudnn:
        warnings.append(
            f"recurrent dropout {config.recurrent_dropout} rules out the fast cuDNN kernel on the GPU; "
            "pass --recurrent-dropout 0 to get it back"
        )
    strategy = "mirrored" if gpus_visible > 1 else "default"
    return DevicePlan("gpu", gpus_visible, strategy, cudnn, mixed_precision, warnings)


def plan_devices(config: TrainConfig, *, requested: str = "auto", mixed_precision: bool = False) -> DevicePlan:
    """Decide, then configure TensorFlow accordingly. Call before any TensorFlow op runs.

    The precision is not set globally: train builds the network under the plan's dtype policy."""
    from lstm_cli.model import tf

    gpus = tf.config.list_physical_devices("GPU")
    plan = decide(config, requested=requested, gpus_visible=len(gpus), mixed_precision=mixed_precision)
    if plan.device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
    if plan.strategy == "mirrored":
        plan._strategy = tf.distribute.MirroredStrategy()
    return plan
