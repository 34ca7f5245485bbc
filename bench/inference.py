"""Inference speed: one photo end to end through the app's code path, and batched throughput.

    python -m bench.inference                  # CPU, and CUDA too when there is a GPU
    python -m bench.inference --device cpu --runs 300

Single photo: read a full-size JPEG -> preprocess -> forward -> probabilities, exactly as app.py
does it (`Classifier.predict`, in the layout the Classifier chose by measuring), against the
network's work alone on a ready uint8 photo in each memory layout (`predict_logits`: every view of
the photo the weights' TTA asks for, in one batch: with the mirror, the photo and its mirror image),
p50/p95, all taking turns call by call. Batched: images/s of the forward pass in each precision and
layout, with the achieved GFLOP/s as a share of a large matmul's measured GFLOP/s on the same
device. With --onnx, onnxruntime on the weights' model.onnx (catsdogs.export: every view, the
temperature and the "not a pet" score in one graph) gets a row in each table, on the CPU.
"""

import argparse
import copy
import itertools
import resource
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from bench.common import compute_peak, flops_per_photo, percentile, report, timings
from catsdogs.autotune import Layout, use_layout
from catsdogs.device import Precision, cpu_has_native_bf16
from catsdogs.export import INPUT
from catsdogs.hub import ONNX_FILE, SHIPPED_WEIGHTS
from catsdogs.inference import Classifier, keep_freed_memory
from catsdogs.model import CatsDogsCNN, predict_logits, views_per_photo
from catsdogs.preprocess import load_photo, normalize

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-fullres-sample"


def interleaved(calls: dict[str, Callable], runs: int, device: torch.device) -> dict[str, tuple[list[float], float]]:
    """Seconds per call of each function after 10 warm-up calls, taking turns call by call (so load from elsewhere
    hits them all alike), and the minor page faults per call: memory the allocator handed back and the call
    touched again (a count that a busy machine does not blur, unlike the times)."""
    for call in calls.values():
        timings(call, runs=0, warmup=10, device=device)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    faults = dict.fromkeys(calls, 0)
    for _ in range(runs):
        for name, call in calls.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            seconds[name] += timings(call, runs=1, warmup=0, device=device)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return {name: (seconds[name], faults[name] / runs) for name in calls}


def in_layout(model: CatsDogsCNN, layout: Layout) -> CatsDogsCNN:
    return use_layout(copy.deepcopy(model), layout)


def onnx_runner(classifier: Classifier) -> Callable | None:
    """photos (uint8 tensor) -> onnxruntime's outputs of the weights' model.onnx; None without one, or off the CPU."""
    if classifier.device.type != "cpu" or not (classifier.folder / ONNX_FILE).is_file():
        return None
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # Its threads would otherwise spin for a while after each run, taking the cores from the PyTorch calls timed
    # next to it (they measured 10-130% slower).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(classifier.folder / ONNX_FILE, options, providers=["CPUExecutionProvider"])
    return lambda photos: session.run(None, {INPUT: photos.numpy()})


def single_photo(classifier: Classifier, photos: list[Path], runs: int, onnx: Callable | None) -> list[list]:
    device, model, chosen = classifier.device, classifier.model, classifier.layout.layout
    next_photo = itertools.cycle(photos).__next__
    ready = load_photo(photos[0], model.image_size)[None].to(device)
    forwards = {layout: in_layout(model, layout) for layout in Layout}

    def forward(layout: Layout):  # the network's whole work for one photo: every view config.json's TTA asks for
        return forwards[layout].probabilities(predict_logits(forwards[layout], ready))

    calls = {f"photo end to end (app path, {chosen.label})": lambda: classifier.predict([next_photo()]),
             "decode + resize only": lambda: load_photo(next_photo(), model.image_size),
             **{f"forward only, {layout.label}": partial(forward, layout) for layout in Layout},
             **({"forward only, onnxruntime (model.onnx)": partial(onnx, ready)} if onnx else {})}
    measured = interleaved(calls, runs, device)
    p50 = percentile(measured[f"forward only, {chosen.label}"][0], 0.5)
    return [[f"{device.type}: {name}", percentile(t, 0.5) * 1000, percentile(t, 0.95) * 1000,
             f"{percentile(t, 0.5) / p50:.2f}x", faults] for name, (t, faults) in measured.items()]


def batched(classifier: Classifier, batch: int, seconds_per_row: int, compiled: bool,
            onnx: Callable | None) -> list[list]:
    """Images/s of each precision and layout, the layouts taking turns batch by batch; with `compiled`, the
    inference precision's row also compiled (torch.compile), in the Classifier's layout; with `onnx`, the same
    precision's row also run by onnxruntime."""
    device, model = classifier.device, classifier.model
    flops = flops_per_photo(model, training=False)
    images = torch.randint(0, 256, (batch, 3, model.image_size, model.image_size), dtype=torch.uint8, device=device)
    models: dict = {layout: in_layout(model, layout) for layout in Layout}
    if compiled:
        models["compiled"] = torch.compile(models[classifier.layout.layout])
        started = time.perf_counter()
        predict_logits(models["compiled"], images, batch)
        print(f"{device.type}: batch {batch} predictions compiled in {time.perf_counter() - started:.1f} s",
              flush=True)
    rows = []
    for precision in [Precision(device, torch.float32), Precision(device, torch.bfloat16)]:
        if device.type == "cpu" and precision.dtype == torch.bfloat16 and not cpu_has_native_bf16():
            continue
        peak = compute_peak(device, precision.dtype)

        def run(layout: Layout | str):
            if precision == Precision.for_inference(device):
                return predict_logits(models[layout], images, batch)  # the app's own path on this device
            with precision.autocast(), torch.inference_mode():
                return models[layout](normalize(images, model.mean, model.std))

        once = sum(timings(partial(run, Layout.CHANNELS_LAST), runs=1, warmup=1, device=device))
        app_precision = precision == Precision.for_inference(device)
        variants = {variant: partial(run, variant) for variant in
                    [*Layout, *(["compiled"] if compiled and app_precision else [])]}
        if onnx and app_precision:
            variants["onnxruntime"] = partial(onnx, images)
        measured = interleaved(variants, max(3, int(seconds_per_row / once)), device)
        name = precision.name + (" (TF32 convolutions)" if device.type == "cuda" and precision.dtype == torch.float32
                                 else "")
        app_path = precision == Precision.for_inference(device) and model.tta != "none"
        views = views_per_photo(model.tta) if app_path else 1  # the app's path: every view of a photo (its TTA)
        name += f", the app's path ({model.tta} TTA: {views} forwards a photo)" if app_path else ""
        for layout, (seconds, _) in measured.items():
            per_s = batch / percentile(seconds, 0.5)
            label = {"compiled": f"{classifier.layout.layout.label}, torch.compile",
                     "onnxruntime": "onnxruntime (model.onnx)"}.get(layout) or layout.label
            rows.append([f"{device.type} {name}, batch {batch}, {label}", per_s, per_s * views * flops / 1e9,
                         peak / 1e9, f"{per_s * views * flops / peak:.0%}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS))
    parser.add_argument("--device", choices=["cpu", "cuda"], nargs="+",
                        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--runs", type=int, default=200, help="single-photo calls timed per row")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per batched row")
    parser.add_argument("--compile", action="store_true", help="also time the batched predictions compiled "
                        "(torch.compile; a minute or so to compile on a CPU)")
    parser.add_argument("--onnx", action="store_true", help="also time onnxruntime on the weights' model.onnx (CPU)")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="full-size JPEGs for the single-photo rows "
                        "(default: the shared sample)")
    args = parser.parse_args()
    photos = sorted(args.photos.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no full-size photos in {args.photos}: pass --photos FOLDER")

    keep_freed_memory()  # as app.py does
    latency, throughput = [], []
    for device in map(torch.device, args.device):
        classifier = Classifier(args.model, device=device)
        print(f"{device.type}: the Classifier's {classifier.describe()}", flush=True)
        onnx = onnx_runner(classifier) if args.onnx else None
        latency += single_photo(classifier, photos, args.runs, onnx)
        throughput += batched(classifier, 64 if device.type == "cpu" else 512, args.seconds, args.compile, onnx)
    report("Inference: one full-size photo", ["path", "p50 ms", "p95 ms", "p50 vs forward", "page faults per call"],
           latency)
    report("Inference: batched forward throughput",
           ["setting", "images/s", "GFLOP/s", "measured peak GFLOP/s", "share of peak"], throughput)


if __name__ == "__main__":
    main()
