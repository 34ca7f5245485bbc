"""Which device and which precision: decided here, once, for training, evaluation, the app and the benchmarks.

Training computes in bf16 where the hardware has it (fp16 with a gradient scaler on older GPUs). Predictions
use the GPU's mixed precision too, but stay fp32 on the CPU, so a model scores the same on every CPU.
"""

import os
import platform
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch


# Every caller runs the network on 224x224 photos, so cuDNN may time its kernels once per batch shape and keep the
# fastest. Its untimed pick for bf16 convolutions runs batched predictions at half the speed.
torch.backends.cudnn.benchmark = True


class DeviceError(ValueError):
    """The device asked for is not available here; the message says what to use instead."""


def pick_device(name: str = "auto") -> torch.device:
    """The device named (auto: CUDA when present); under torchrun a bare `cuda` is the GPU of this LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"--device {name}: not a device name (use auto, cpu, cuda or cuda:N)") from error
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} GPUs")
    return device


# oneDNN's ISA names below AVX512_CORE_BF16: with ONEDNN_MAX_CPU_ISA capped at one, oneDNN runs no bf16 instructions
ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_isa_cap() -> str | None:
    """The instruction set oneDNN is limited to (ONEDNN_MAX_CPU_ISA, e.g. AVX2 to run as an AVX2-only CPU would)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return cap.upper() if cap and cap.upper() not in ("ALL", "DEFAULT") else None


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX) that oneDNN may use: there bf16 convolutions are
    fast. Without them (or with oneDNN capped below them) bf16 is emulated, slower than fp32."""
    if onednn_isa_cap() in ISAS_WITHOUT_BF16:
        return False
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


@dataclass(frozen=True)
class Precision:
    """The dtype a device computes the network in, for training or for predictions (fp32: no autocast)."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def for_training(cls, device: torch.device) -> "Precision":
        if device.type == "cuda":
            return cls(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        return cls(device, torch.bfloat16 if cpu_has_native_bf16() else torch.float32)

    @classmethod
    def for_inference(cls, device: torch.device) -> "Precision":
        return cls.for_training(device) if device.type == "cuda" else cls(device, torch.float32)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16 mixed precision", torch.float16: "fp16 mixed precision"}.get(self.dtype, "fp32")

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none (a disabled scaler)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)


def describe_device(device: torch.device, precision: Precision | None = None) -> str:
    """The hardware in words, and the precision it runs in (training's, unless another is given)."""
    precision = precision or Precision.for_training(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {precision.name}"
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux, or no model name: platform's word will do
        pass
    cap = f", oneDNN capped at {onednn_isa_cap()}" if onednn_isa_cap() else ""
    return f"CPU: {cpu}, {torch.get_num_threads()} threads{cap}, {precision.name}"


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in a `torchrun` launch (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    torchrun: bool = False  # launched by torchrun: a process group and DDP even for one process
    node: int = 0  # torchrun's GROUP_RANK: the machine, 0 being the main process's

    @property
    def is_main(self) -> bool:
        """The one process that logs, writes files and pushes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Train with a process group and DistributedDataParallel. Under torchrun always, so that one process on
        one GPU (`--nproc-per-node 1`) already runs the NCCL path a multi-GPU run takes."""
        return self.torchrun or self.world > 1

    @classmethod
    def from_env(cls) -> "Ranks":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   "LOCAL_WORLD_SIZE" in os.environ, int(os.environ.get("GROUP_RANK", 0)))
