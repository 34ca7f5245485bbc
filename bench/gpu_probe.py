"""What bounds the network on a GPU: precision, torch.compile and CUDA graphs, and how busy the GPU is in a step.

    python -m bench.gpu_probe --device cuda --seconds 4     # about 3 minutes on an H100, compile included

Every row runs on one pre-made batch of 512 random photos (--batch) (the data pipeline is bench.training's business), in
channels_last, and prints as soon as it is measured (a row per line, JSON), so a run cut short still says what it
measured. Rows: training steps (train.py's `RunState.step`, AdamW) and batched predictions, each
- eager with bf16 autocast (what train.py and the app run), eager fp32 with TF32 convolutions, eager with the
  weights themselves in bf16 (no autocast casts);
- `torch.compile` (default mode: fused elementwise kernels) and `mode="reduce-overhead"` (CUDA graphs: no
  kernel launches from Python), both with bf16 autocast.
Then one eager bf16 training step under the profiler: the GPU's busy time against the step's wall time (near 100%:
bound by the kernels themselves; far below: by launching them), and the kernels that take the most time.
"""

import argparse
import copy
import json
import time

import torch

from bench.common import synchronize
from catsdogs.autotune import Layout, use_layout
from catsdogs.config import TrainConfig
from catsdogs.data import CLASS_NAMES
from catsdogs.device import Precision, pick_device
from catsdogs.model import CatsDogsCNN
from catsdogs.training import RunState

BATCH = 512  # bench.training and train.py sweeps use 512 on a GPU


def rate(step, batch: int, seconds: float, device: torch.device) -> float:
    """Images/s of `step` (one batch a call) after 3 warm-up calls (compilation happens there)."""
    for _ in range(3):
        step()
    synchronize(device)
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        calls += 1
    synchronize(device)
    return calls * batch / (time.perf_counter() - started)


def emit(row: dict) -> None:
    print("JSON " + json.dumps(row), flush=True)


def variants(model: CatsDogsCNN, device: torch.device):
    """(name, model to run, precision) of every row."""
    bf16, fp32 = Precision(device, torch.bfloat16), Precision(device, torch.float32)
    yield "eager, bf16 autocast (ours)", model, bf16
    yield "eager, fp32 (TF32 convolutions)", model, fp32
    yield "eager, weights in bf16, no autocast", copy.deepcopy(model).to(torch.bfloat16), fp32
    yield "torch.compile, bf16 autocast", torch.compile(model), bf16
    graphed = torch.compile(model, mode="reduce-overhead")
    yield "torch.compile reduce-overhead (CUDA graphs), bf16 autocast", graphed, bf16


def training_rows(device: torch.device, batch: int, seconds: float) -> None:
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch,), device=device)
    config = TrainConfig(data="", schedule="constant", batch_size=batch)
    for name, candidate, precision in variants(fresh_model(device), device):
        inputs = images.to(next(candidate.parameters()).dtype)
        run = RunState.around(config, getattr(candidate, "_orig_mod", candidate), precision, steps_per_epoch=1000,
                              network=candidate)
        try:
            speed = rate(lambda: run.step(inputs, labels), batch, seconds, device)
            emit({"what": "training step", "variant": name, "images_per_s": round(speed)})
        except Exception as error:  # one variant failing (a compiler error) must not lose the others' rows
            emit({"what": "training step", "variant": name, "error": f"{type(error).__name__}: {error}"[:300]})


def inference_rows(device: torch.device, batch: int, seconds: float) -> None:
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    for name, candidate, precision in variants(fresh_model(device).eval(), device):
        inputs = images.to(next(candidate.parameters()).dtype)

        def predict():
            with torch.inference_mode(), precision.autocast():
                candidate(inputs)
        try:
            emit({"what": "prediction", "variant": name, "images_per_s": round(rate(predict, batch, seconds, device))})
        except Exception as error:
            emit({"what": "prediction", "variant": name, "error": f"{type(error).__name__}: {error}"[:300]})


def fresh_model(device: torch.device) -> CatsDogsCNN:
    torch.manual_seed(0)
    return use_layout(CatsDogsCNN(class_names=CLASS_NAMES).to(device), Layout.CHANNELS_LAST)


def profile_step(device: torch.device, batch: int) -> None:
    """One eager bf16 training step (after warm-up) under the profiler: GPU busy share and the top kernels."""
    model = fresh_model(device)
    precision = Precision(device, torch.bfloat16)
    run = RunState.around(TrainConfig(data="", schedule="constant", batch_size=batch), model, precision, 1000)
    images = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch,), device=device)
    step = lambda: run.step(images, labels)  # noqa: E731
    for _ in range(5):
        step()
    synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profiler:
        started = time.perf_counter()
        for _ in range(5):
            step()
        synchronize(device)
        wall = (time.perf_counter() - started) / 5
    kernels = [e for e in profiler.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in kernels) / 5 / 1e6
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:10]
    emit({"what": "profile of one eager bf16 training step", "wall_ms": round(wall * 1000, 2),
          "gpu_busy_ms": round(busy * 1000, 2), "gpu_busy_share": round(busy / wall, 3),
          "kernel_launches": sum(e.count for e in kernels) // 5,
          "top_kernels_ms": {e.key[:90]: round(e.self_device_time_total / 5 / 1000, 3) for e in top}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=4, help="per row")
    parser.add_argument("--batch", type=int, default=BATCH, help="photos per step (a CPU dry run: a few)")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.set_float32_matmul_precision("high")
    emit({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
          "torch": torch.__version__, "batch": args.batch})
    profile_step(device, args.batch)
    training_rows(device, args.batch, args.seconds)
    inference_rows(device, args.batch, args.seconds)


if __name__ == "__main__":
    main()
