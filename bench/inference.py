"""Inference speed: one photo end to end through the app's code path, and batched throughput.

    python -m bench.inference                  # CPU, and CUDA too when there is a GPU
    python -m bench.inference --device cpu --runs 300

Single photo: read a full-size JPEG -> preprocess -> forward -> probabilities,
exactly as app.py does it (`Classifier.predict`), against the forward pass
alone on a ready tensor, p50/p95. Batched: images/s of the forward pass in each
precision, with the achieved GFLOP/s as a share of a large matmul's measured
GFLOP/s on the same device.
"""

import argparse
import itertools
import resource
from pathlib import Path

import torch

from bench.common import compute_peak, flops_per_photo, percentile, report, timings
from catsdogs.hub import SHIPPED_WEIGHTS
from catsdogs.device import Precision, cpu_has_native_bf16
from catsdogs.inference import Classifier, keep_freed_memory, predict_logits
from catsdogs.preprocess import load_photo, normalize

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-fullres-sample"


def timings_and_faults(fn, runs: int, device: torch.device) -> tuple[list[float], float]:
    """Seconds per call after 10 warm-up calls, and the minor page faults per call: memory the allocator handed
    back and the call touched again (a count that a busy machine does not blur, unlike the times)."""
    timings(fn, runs=0, warmup=10, device=device)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = timings(fn, runs, warmup=0, device=device)
    return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / runs


def single_photo(classifier: Classifier, photos: list[Path], runs: int) -> list[list]:
    device, model = classifier.device, classifier.model
    next_photo = itertools.cycle(photos).__next__
    end_to_end = timings_and_faults(lambda: classifier.predict([next_photo()]), runs, device)
    decode = timings_and_faults(lambda: load_photo(next_photo(), model.image_size), runs, device)
    ready = normalize(load_photo(photos[0], model.image_size)[None], model.mean, model.std).to(device)
    with torch.inference_mode(), Precision.for_inference(device).autocast():  # the precision the app's path runs in
        forward = timings_and_faults(lambda: model.probabilities(model(ready)), runs, device)
    p50 = percentile(forward[0], 0.5)
    return [[f"{device.type}: {name}", percentile(t, 0.5) * 1000, percentile(t, 0.95) * 1000,
             f"{percentile(t, 0.5) / p50:.2f}x", faults]
            for name, (t, faults) in [("photo end to end (app path)", end_to_end),
                                      ("decode + resize only", decode), ("forward only", forward)]]


def batched(classifier: Classifier, batch: int, seconds_per_row: int) -> list[list]:
    device, model = classifier.device, classifier.model
    flops = flops_per_photo(model, training=False)
    images = torch.randint(0, 256, (batch, 3, model.image_size, model.image_size), dtype=torch.uint8, device=device)
    precisions = [Precision(device, torch.float32), Precision(device, torch.bfloat16)]
    rows = []
    for precision in precisions:
        if device.type == "cpu" and precision.dtype == torch.bfloat16 and not cpu_has_native_bf16():
            continue
        peak = compute_peak(device, precision.dtype)

        def run():
            if precision == Precision.for_inference(device):
                return predict_logits(model, images, batch)  # the app's own path on this device
            with precision.autocast(), torch.inference_mode():
                return model(normalize(images, model.mean, model.std))

        once = sum(timings(run, runs=1, warmup=1, device=device))
        seconds = timings(run, runs=max(3, int(seconds_per_row / once)), warmup=0, device=device)
        per_s = batch / percentile(seconds, 0.5)
        name = precision.name + (" (TF32 convolutions)" if device.type == "cuda" and precision.dtype == torch.float32
                                 else "")
        rows.append([f"{device.type} {name}, batch {batch}, channels_last", per_s, per_s * flops / 1e9,
                     peak / 1e9, f"{per_s * flops / peak:.0%}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS))
    parser.add_argument("--device", choices=["cpu", "cuda"], nargs="+",
                        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--runs", type=int, default=200, help="single-photo calls timed per row")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per batched row")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="full-size JPEGs for the single-photo rows "
                        "(default: the shared sample)")
    args = parser.parse_args()
    photos = sorted(args.photos.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no full-size photos in {args.photos} (see README: Set-up)")

    keep_freed_memory()  # as app.py does
    latency, throughput = [], []
    for device in map(torch.device, args.device):
        classifier = Classifier(args.model, device=device)
        latency += single_photo(classifier, photos, args.runs)
        throughput += batched(classifier, 64 if device.type == "cpu" else 512, args.seconds)
    report("Inference: one full-size photo", ["path", "p50 ms", "p95 ms", "p50 vs forward", "page faults per call"],
           latency)
    report("Inference: batched forward throughput",
           ["setting", "images/s", "GFLOP/s", "measured peak GFLOP/s", "share of peak"], throughput)


if __name__ == "__main__":
    main()
