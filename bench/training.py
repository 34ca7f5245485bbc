"""Training speed: whole training steps fed by our data pipeline, vs pre-made tensors, vs the seed project's way.

    python -m bench.training                    # CPU, and CUDA too when there is a GPU
    python -m bench.training --device cpu --seconds 60

Three ways to train the same network on the same real photos, measured in one run, taking turns
(--rounds) so that load from elsewhere hits them all alike:
- ours: photos decoded once and kept in memory (on the GPU when there is one), each batch
  indexed, augmented and normalised with tensor ops, then train.py's optimisation step
  (bf16 autocast where the device has bf16), batch 64 (512 on a GPU), in each memory layout,
  marked with the one train.py's --memory-format auto chooses here;
- the same optimisation step on one pre-made, normalised batch: what the pipeline costs;
- the seed project's approach: a Dataset opening each JPEG with PIL, torchvision
  transforms, a DataLoader with batch 20, fp32, NCHW, Adam at lr 1e-3.
"""

import argparse
import dataclasses
import itertools
import os
from pathlib import Path

if __name__ == "__main__":  # the allocator train.py runs on (jemalloc where installed; CATSDOGS_ALLOCATOR=system: not)
    from catsdogs.allocator import use_jemalloc

    use_jemalloc()

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from bench.common import compute_peak, flops_per_photo, interleaved_rates, report  # noqa: E402
from catsdogs.autotune import Layout  # noqa: E402
from catsdogs.config import TrainConfig  # noqa: E402
from catsdogs.data import CLASS_NAMES, Photos, find_photos  # noqa: E402
from catsdogs.loader import PhotoLoader  # noqa: E402
from catsdogs.model import INPUT_SIZE, CatsDogsCNN  # noqa: E402
from catsdogs.training import start_run  # noqa: E402

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


def measure(device: torch.device, photos: Photos, seconds: float, rounds: int, compiled: bool) -> list[list]:
    batch = 512 if device.type == "cuda" else 64
    config = TrainConfig(data="", schedule="constant", batch_size=batch, compile="off")
    loader = PhotoLoader.load(photos, INPUT_SIZE, device, "benchmark", workers=os.cpu_count() or 1, verbose=False,
                              batch_size=batch, augment=True)
    epochs = (batches for epoch in itertools.count(1) for batches in loader.epoch(epoch))
    chosen = start_run(config, device, loader.steps, batch).layout  # train.py's own decision
    print(f"{device.type}: train.py would train in {chosen.describe()}", flush=True)

    def ours_in(layout: Layout):  # train.py's own run, loader and step, the model in `layout`
        run = start_run(dataclasses.replace(config, memory_format=layout.value), device, loader.steps, batch)

        def step():
            images, labels = next(epochs)
            run.step(images, labels)
            return len(labels)  # an epoch's last batch may be smaller
        return step, run

    ours = {layout: ours_in(layout) for layout in Layout}
    premade_images, premade_labels = next(epochs)
    chosen_run = ours[chosen.layout][1]
    precision, model = chosen_run.precision, chosen_run.model

    def premade():
        chosen_run.step(premade_images, premade_labels)

    compiled_steps = {}
    if compiled:  # train.py's step under --compile on, in auto's layout; compiled for both of an epoch's batch sizes
        last_batch = len(loader) - (loader.steps - 1) * batch
        compiled_run = start_run(dataclasses.replace(config, memory_format=chosen.layout.value, compile="on"),
                                 device, loader.steps, batch, last_batch=last_batch)
        print(f"{device.type}: the compiled step compiled in {compiled_run.compile_seconds:.1f} s", flush=True)

        def compiled_step():
            images, labels = next(epochs)
            compiled_run.step(images, labels)
            return len(labels)
        compiled_steps[f"ours compiled (torch.compile, --compile on): batch {batch}, {precision.name}, "
                       f"{chosen.layout.label}"] = (compiled_step, batch)

    seed_model = CatsDogsCNN(class_names=CLASS_NAMES).to(device).train()  # NCHW, fp32
    seed_optimizer = torch.optim.Adam(seed_model.parameters(), lr=1e-3)
    seed_loader = DataLoader(SeedStylePhotos(photos), batch_size=20, shuffle=True, drop_last=True,
                        num_workers=min(8, os.cpu_count() or 1), persistent_workers=True,
                        pin_memory=device.type == "cuda")
    seed_batches = iter(())

    def seed_style():
        nonlocal seed_batches
        try:
            images, targets = next(seed_batches)
        except StopIteration:
            seed_batches = iter(seed_loader)
            images, targets = next(seed_batches)
        loss = nn.functional.cross_entropy(seed_model(images.to(device)), targets.to(device))
        seed_optimizer.zero_grad()
        loss.backward()
        seed_optimizer.step()

    names = {layout: f"ours: photos in memory + augmentation, batch {batch}, {precision.name}, {layout.label}"
             + (" (auto's choice)" if layout is chosen.layout else "") for layout in Layout}
    premade_name = f"the same step on one pre-made batch ({batch}, {precision.name}, {chosen.layout.label})"
    seed_name = "seed style: PIL DataLoader, batch 20, fp32, NCHW, Adam"
    steps = {**{names[layout]: (step, batch) for layout, (step, _) in ours.items()}, **compiled_steps,
             premade_name: (premade, batch), seed_name: (seed_style, 20)}
    rates = interleaved_rates(steps, seconds, rounds, device)
    flops = flops_per_photo(model, training=True)
    peak_ours = compute_peak(device, precision.dtype)
    peak_fp32 = compute_peak(device, torch.float32) if precision.dtype != torch.float32 else peak_ours
    peaks = dict.fromkeys(steps, peak_ours) | {seed_name: peak_fp32}
    ours_rate, seed_rate = rates[names[chosen.layout]], rates[seed_name]
    best_fixed = max(rates[names[layout]] for layout in Layout)
    rows = [[f"{device.type}: {name}", rate, rate * flops / 1e9, f"{rate * flops / peaks[name]:.0%}",
             f"{rate / seed_rate:.2f}x"] for name, rate in rates.items()]
    rows.append([f"{device.type}: best fixed layout / auto's choice (target <= 1.1)", "", "", "",
                 f"{best_fixed / ours_rate:.2f}x"])
    rows.append([f"{device.type}: pre-made batch / our pipeline (target <= 1.1)", "", "", "",
                 f"{rates[premade_name] / ours_rate:.2f}x"])
    for name in compiled_steps:
        ratio = f"{rates[name] / ours_rate:.2f}x"
        rows.append([f"{device.type}: compiled / eager, the same layout", "", "", "", ratio])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="labelled photos (default: the shared Kaggle set)")
    parser.add_argument("--photos", type=int, default=2048, help="how many of them to use")
    parser.add_argument("--device", choices=["cpu", "cuda"], nargs="+",
                        default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    parser.add_argument("--seconds", type=float, default=40, help="seconds per row")
    parser.add_argument("--rounds", type=int, default=3, help="turns the rows take, each for seconds/rounds")
    parser.add_argument("--compile", action="store_true", help="also time train.py's step compiled (--compile on; "
                        "compiling takes a minute or so on a GPU, a few on a 2-core CPU)")
    args = parser.parse_args()
    photos, _ = find_photos(args.data)
    photos = photos.subset(torch.randperm(len(photos), generator=torch.Generator().manual_seed(0))[:args.photos]
                           .tolist())
    rows = []
    for device in map(torch.device, args.device):
        rows += measure(device, photos, args.seconds, args.rounds, args.compile)
    report(f"Training throughput, whole steps on {len(photos)} real photos",
           ["pipeline", "images/s", "GFLOP/s", "share of peak", "vs seed style"], rows)


if __name__ == "__main__":
    main()
