"""Training speed: whole training steps fed by our data pipeline, vs pre-made tensors, vs the seed project's way.

    python -m bench.training                    # CPU, and CUDA too when there is a GPU
    python -m bench.training --device cpu --seconds 60

Three ways to train the same network on the same real photos, measured in one run:
- ours: photos decoded once and kept in memory (on the GPU when there is one), each batch
  indexed, augmented and normalised with tensor ops, then train.py's optimisation step
  (bf16 autocast where the device has bf16, channels_last), batch 64 (512 on a GPU);
- the same optimisation step on one pre-made, normalised batch: what the pipeline costs;
- the seed project's approach: a Dataset opening each JPEG with PIL, torchvision
  transforms, a DataLoader with batch 20, fp32, NCHW, Adam at lr 1e-3.
"""

import argparse
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from bench.common import compute_peak, flops_per_photo, report, synchronize
from catsdogs.data import CLASS_NAMES, Photos, decode_photos, find_photos
from catsdogs.inference import cpu_has_native_bf16
from catsdogs.model import CatsDogsCNN
from catsdogs.training import TrainConfig, make_optimizer, make_scheduler, optimization_step, prepare_batch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-200" / "train"


class SeedStylePhotos(Dataset):
    """One PIL decode and transform per photo per step, as the seed project (and most tutorials) do it."""

    def __init__(self, photos: Photos):
        self.photos = photos
        self.transform = v2.Compose([v2.ToImage(), v2.Resize((224, 224)), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(CatsDogsCNN().mean, CatsDogsCNN().std)])

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.photos.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.photos.labels[i]


def images_per_s(step, batch: int, seconds: float, device: torch.device) -> float:
    """Run `step()` (one batch each) for about `seconds` after two warm-up steps; images per second."""
    for _ in range(2):
        step()
    synchronize(device)
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < seconds or steps < 3:
        step()
        steps += 1
    synchronize(device)
    return steps * batch / (time.perf_counter() - started)


def measure(device: torch.device, photos: Photos, seconds: float) -> list[list]:
    batch = 512 if device.type == "cuda" else 64
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    config = TrainConfig(data="", schedule="constant")

    torch.manual_seed(0)
    model = CatsDogsCNN(class_names=CLASS_NAMES).to(device, memory_format=torch.channels_last).train()
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch=1)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    decoded, labels, _ = decode_photos(photos, model.image_size, progress=False)
    decoded, labels = decoded.to(device), labels.to(device)

    def ours():
        indices = torch.randint(0, len(labels), (batch,), device=device)
        images = prepare_batch(decoded[indices], model, augment_photos=True)
        optimization_step(model, images, labels[indices], criterion, optimizer, scheduler, scaler)

    premade_images = prepare_batch(decoded[:batch], model, augment_photos=False)
    premade_labels = labels[:batch]

    def premade():
        optimization_step(model, premade_images, premade_labels, criterion, optimizer, scheduler, scaler)

    seed_model = CatsDogsCNN(class_names=CLASS_NAMES).to(device).train()  # NCHW, fp32
    seed_optimizer = torch.optim.Adam(seed_model.parameters(), lr=1e-3)
    loader = DataLoader(SeedStylePhotos(photos), batch_size=20, shuffle=True, drop_last=True,
                        num_workers=min(8, os.cpu_count() or 1), persistent_workers=True,
                        pin_memory=device.type == "cuda")
    seed_batches = iter(())

    def seed_style():
        nonlocal seed_batches
        try:
            images, targets = next(seed_batches)
        except StopIteration:
            seed_batches = iter(loader)
            images, targets = next(seed_batches)
        loss = nn.functional.cross_entropy(seed_model(images.to(device)), targets.to(device))
        seed_optimizer.zero_grad()
        loss.backward()
        seed_optimizer.step()

    flops = flops_per_photo(model, training=True)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_has_native_bf16()
    precision = "bf16 autocast" if bf16 else "fp32"
    peak_ours = compute_peak(device, torch.bfloat16 if bf16 else torch.float32)
    peak_fp32 = peak_ours if not bf16 else compute_peak(device, torch.float32)
    figures = {
        f"ours: photos in memory + augmentation, batch {batch}, {precision}, channels_last":
            (images_per_s(ours, batch, seconds, device), peak_ours),
        f"the same step on one pre-made batch ({batch}, {precision}, channels_last)":
            (images_per_s(premade, batch, seconds, device), peak_ours),
        "seed style: PIL DataLoader, batch 20, fp32, NCHW, Adam":
            (images_per_s(seed_style, 20, seconds, device), peak_fp32),
    }
    ours_rate, premade_rate, seed_rate = (rate for rate, _ in figures.values())
    rows = [[f"{device.type}: {name}", rate, rate * flops / 1e9, f"{rate * flops / peak:.0%}",
             f"{rate / seed_rate:.2f}x"] for name, (rate, peak) in figures.items()]
    rows.append([f"{device.type}: pre-made batch / our pipeline (target <= 1.1)", "", "", "",
                 f"{premade_rate / ours_rate:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="labelled photos (default: the shared Kaggle set)")
    parser.add_argument("--photos", type=int, default=2048, help="how many of them to use")
    parser.add_argument("--device", choices=["cpu", "cuda"], nargs="+",
                        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--seconds", type=float, default=40, help="seconds per row")
    args = parser.parse_args()
    photos, _ = find_photos(args.data)
    photos = photos.subset(torch.randperm(len(photos), generator=torch.Generator().manual_seed(0))[:args.photos]
                           .tolist())
    rows = []
    for device in map(torch.device, args.device):
        rows += measure(device, photos, args.seconds)
    report(f"Training throughput, whole steps on {len(photos)} real photos",
           ["pipeline", "images/s", "GFLOP/s", "share of peak", "vs seed style"], rows)


if __name__ == "__main__":
    main()
