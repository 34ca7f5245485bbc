"""Scoring many photos at each batch size: photos per second and the process's peak memory.

    python -m bench.scoring
    python -m bench.scoring --photos 512 --batches 256 64 32 --device cpu

Each batch size runs in a process of its own (so its peak memory is its own), on random uint8 photos through
`predict_with_features` with the shipped weights (their mirror TTA: two images a photo), after one warm-up pass.
The last column is how far its logits are from the first batch size's.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from bench.common import report
from catsdogs.hub import SHIPPED_WEIGHTS, load_model
from catsdogs.model import predict_with_features


def one_batch_size(batch: int, photos: int, device: str) -> dict:
    model = load_model(SHIPPED_WEIGHTS).to(device, memory_format=torch.channels_last)
    images = torch.randint(0, 256, (photos, 3, model.image_size, model.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    predict_with_features(model, images[:batch], batch)  # warm-up: kernels chosen and built
    started = time.perf_counter()
    logits = predict_with_features(model, images, batch)[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return {"photos_per_s": photos / (time.perf_counter() - started),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "logits": logits.cpu().tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 64, 32], help="images a pass")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one batch size, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_batch_size(args.one, args.photos, args.device)))
        return
    results = {}
    for batch in args.batches:
        child = subprocess.run([sys.executable, "-m", "bench.scoring", "--one", str(batch), "--photos",
                                str(args.photos), "--device", args.device], capture_output=True, text=True, check=True)
        results[batch] = json.loads(child.stdout.splitlines()[-1])
    first = torch.tensor(results[args.batches[0]]["logits"])
    rows = [[batch, r["photos_per_s"], r["peak_gb"], (torch.tensor(r["logits"]) - first).abs().max().item()]
            for batch, r in results.items()]
    report(f"Scoring {args.photos} photos on the {args.device.upper()}",
           ["images a pass", "photos/s", "peak GB", "max logit difference"], rows)


if __name__ == "__main__":
    main()
