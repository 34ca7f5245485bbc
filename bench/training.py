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
from collections.abc import Callable, Iterator
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


SEED_NAME = "seed style: PIL DataLoader, batch 20, fp32, NCHW, Adam"
Step = Callable[[], int | None]  # one timed training step; returns the photos it took when not the full batch


def feed(loader: PhotoLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, epoch after epoch, as train.py draws them."""
    return (batches for epoch in itertools.count(1) for batches in loader.epoch(epoch))


def our_step(run, batches: Iterator) -> Step:
    """train.py's own step (`RunState.step`) on the loader's next batch."""
    def step() -> int:
        images, labels = next(batches)
        run.step(images, labels)
        return len(labels)  # an epoch's last batch may be smaller
    return step


def seed_style_step(photos: Photos, device: torch.device) -> Step:
    """The seed project's step: a PIL DataLoader of batch 20, fp32, NCHW, Adam at lr 1e-3."""
    model = CatsDogsCNN(class_names=CLASS_NAMES).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(SeedStylePhotos(photos), batch_size=20, shuffle=True, drop_last=True,
                        num_workers=min(8, os.cpu_count() or 1), persistent_workers=True,
                        pin_memory=device.type == "cuda")
    batches = iter(())

    def step() -> None:
        nonlocal batches
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        loss = nn.functional.cross_entropy(model(images.to(device)), targets.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def measure(device: torch.device, photos: Photos, seconds: float, rounds: int, compiled: bool) -> list[list]:
    batch = 512 if device.type == "cuda" else 64
    config = TrainConfig(data="", schedule="constant", batch_size=batch, compile="off")
    loader = PhotoLoader.load(photos, INPUT_SIZE, device, "benchmark", workers=os.cpu_count() or 1, verbose=False,
                              batch_size=batch, augment=True)
    batches = feed(loader)
    chosen = start_run(config, device, loader.steps, batch).layout  # train.py's own decision
    print(f"{device.type}: train.py would train in {chosen.describe()}", flush=True)
    runs = {layout: start_run(dataclasses.replace(config, memory_format=layout.value), device, loader.steps, batch)
            for layout in Layout}  # train.py's own run, loader and step, the model in each layout
    chosen_run = runs[chosen.layout]
    precision = chosen_run.precision
    names = {layout: f"ours: photos in memory + augmentation, batch {batch}, {precision.name}, {layout.label}"
             + (" (auto's choice)" if layout is chosen.layout else "") for layout in Layout}
    steps = {names[layout]: (our_step(run, batches), batch) for layout, run in runs.items()}
    if compiled:  # train.py's step under --compile on, in auto's layout; compiled for both of an epoch's batch sizes
        last_batch = len(loader) - (loader.steps - 1) * batch
        compiled_run = start_run(dataclasses.replace(config, memory_format=chosen.layout.value, compile="on"),
                                 device, loader.steps, batch, last_batch=last_batch)
        print(f"{device.type}: the compiled step compiled in {compiled_run.compile_seconds:.1f} s", flush=True)
        steps[f"ours compiled (torch.compile, --compile on): batch {batch}, {precision.name}, "
              f"{chosen.layout.label}"] = (our_step(compiled_run, batches), batch)
    premade = next(batches)

    def premade_step() -> None:  # always the full batch
        chosen_run.step(*premade)
    steps[f"the same step on one pre-made batch ({batch}, {precision.name}, {chosen.layout.label})"] = (
        premade_step, batch)
    steps[SEED_NAME] = (seed_style_step(photos, device), 20)
    rates = interleaved_rates(steps, seconds, rounds, device)
    return table(device, rates, names[chosen.layout], [names[layout] for layout in Layout],
                 flops_per_photo(chosen_run.model, training=True), precision.dtype)


def table(device: torch.device, rates: dict[str, float], ours: str, layouts: list[str], flops: float,
          dtype: torch.dtype) -> list[list]:
    """A row per step (images/s, GFLOP/s, share of the device's peak in its precision, speed against the seed
    style), then the ratios the targets are about."""
    peak_ours = compute_peak(device, dtype)
    peaks = dict.fromkeys(rates, peak_ours) | {SEED_NAME: compute_peak(device, torch.float32)}
    rows = [[f"{device.type}: {name}", rate, rate * flops / 1e9, f"{rate * flops / peaks[name]:.0%}",
             f"{rate / rates[SEED_NAME]:.2f}x"] for name, rate in rates.items()]
    premade = next(name for name in rates if name.startswith("the same step on one pre-made batch"))
    rows.append([f"{device.type}: best fixed layout / auto's choice (target <= 1.1)", "", "", "",
                 f"{max(rates[name] for name in layouts) / rates[ours]:.2f}x"])
    rows.append([f"{device.type}: pre-made batch / our pipeline (target <= 1.1)", "", "", "",
                 f"{rates[premade] / rates[ours]:.2f}x"])
    for name in (name for name in rates if name.startswith("ours compiled")):
        ratio = f"{rates[name] / rates[ours]:.2f}x"
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
