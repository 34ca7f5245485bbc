"""What every benchmark prints beside its figures: the hardware, the versions and the command."""

import copy
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from catsdogs.allocator import describe_allocator
from catsdogs.device import describe_device


def environment() -> dict:
    return {
        "cpu": f"{describe_device(torch.device('cpu'))}, {os.cpu_count()} cores, allocator: {describe_allocator()}",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": shlex.join(["python", *sys.orig_argv[1:]]),
    }


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def report(title: str, columns: list[str], rows: list[list], extra: dict | None = None) -> None:
    """Print the figures as a Markdown table, then everything as one JSON line."""
    env = environment()
    print(f"## {title}\n")
    for key, value in env.items():
        print(f"- {key}: {value}")
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(format_cell(v) for v in row) + " |")
    print("\nJSON " + json.dumps({"title": title, **env, "rows": [dict(zip(columns, r)) for r in rows],
                                  **(extra or {})}))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(fn, runs: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds per call of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def interleaved_rates(steps: dict[str, tuple[Callable[[], int | None], int]], seconds: float, rounds: int,
                      device: torch.device) -> dict[str, float]:
    """Images/s of each step (one batch per call; it may return the batch's size, else `batch` counts) after two
    warm-up calls each, the steps taking turns for `seconds / rounds` at a time, so that load from elsewhere
    hits them all alike."""
    for step, _ in steps.values():
        for _ in range(2):
            step()
    synchronize(device)
    images, took = dict.fromkeys(steps, 0), dict.fromkeys(steps, 0.0)
    for _ in range(rounds):
        for name, (step, batch) in steps.items():
            started, calls = time.perf_counter(), 0
            while time.perf_counter() - started < seconds / rounds or calls < 1:
                images[name] += step() or batch
                calls += 1
            synchronize(device)
            took[name] += time.perf_counter() - started
    return {name: images[name] / took[name] for name in steps}


def percentile(values: list[float], q: float) -> float:
    return float(torch.tensor(values).quantile(q))


def flops_per_photo(model: torch.nn.Module, training: bool) -> float:
    """Floating-point operations per 224x224 photo, counted by PyTorch: forward, or forward + backward."""
    x = torch.randn(1, 3, model.image_size, model.image_size)
    model = copy.deepcopy(model).cpu().float()
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if training:
            out.sum().backward()
    return counter.get_total_flops()


def compute_peak(device: torch.device, dtype: torch.dtype, seconds: float = 3.0) -> float:
    """The measured FLOP/s ceiling the network's figures are compared with: the faster of a large square matmul
    and a large 3x3 convolution (on AMD CPUs, MKL's fp32 matmul runs below what oneDNN's convolutions reach).

    fp32 on CUDA is measured with TF32 allowed, as cuDNN runs fp32 convolutions by default.
    """
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    c = torch.empty_like(a)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, dtype, memory_format=torch.channels_last)
    x = torch.randn(64 if device.type == "cuda" else 8, 256, 56, 56, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    kernels = {2 * size ** 3: lambda: torch.mm(a, b, out=c),
               2 * x.shape[0] * 256 * 256 * 9 * 56 * 56: lambda: conv(x)}
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if device.type == "cuda" else "highest")
    try:
        best = 0.0
        with torch.inference_mode():
            for flops, kernel in kernels.items():
                def repeat():  # a loop, not a list: each output is freed before the next call (a GPU runs 1000s)
                    for _ in range(calls):
                        kernel()
                calls = 1
                while sum(timings(repeat, 1, 1, device)) < seconds / 3:
                    calls *= 2
                took = min(timings(repeat, runs=3, warmup=0, device=device))
                best = max(best, flops * calls / took)
    finally:
        torch.set_float32_matmul_precision(previous)
    return best
