"""The GPU feed rate: training batches delivered into GPU memory, with the photos resident there or streamed.

    python -m bench.feed --device cuda --data .data/photos/dogs-vs-cats-200/train --seconds 5
    python -m bench.feed --device cpu --seconds 1 --photos 500

The photos come from the photo cache (built at the first run, in ~/.cache/catsdogs or $CATSDOGS_CACHE_DIR), the
rows taking turns (--rounds), batch 512, images/s:
- resident: the photos copied to the GPU whole (--photos-on device), each batch indexed and augmented there;
- streamed: the photos left in the mapped cache file (--photos-on host), each batch gathered into pinned memory
  and copied without blocking, two batches ahead on a background thread, then augmented on the GPU (as training);
- the same copies alone, uint8, not augmented: what the host-to-GPU path delivers by itself;
- plain copies: each batch gathered and copied with a plain `.to(device)` in the loop, no pinning, no thread;
- whole training steps (the network, train.py's precision, channels_last) fed resident and streamed: whether
  streaming slows training.
On the CPU there is one place for the photos (the mapping), so resident and streamed are the same path there.
"""

import argparse
import itertools
import os
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import torch

from bench.common import interleaved_rates, report
from catsdogs.autotune import Layout
from catsdogs.config import TrainConfig
from catsdogs.data import find_photos
from catsdogs.device import Ranks, pick_device
from catsdogs.loader import PhotoLoader, epoch_shard, gather, streamed
from catsdogs.model import INPUT_SIZE
from catsdogs.training import start_run

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-200" / "train"


def forever(loader: PhotoLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, epoch after epoch."""
    for epoch in itertools.count(1):
        with closing(loader.epoch(epoch)) as batches:
            yield from batches


def host_batches(loader: PhotoLoader) -> Iterator[torch.Tensor]:
    """The index batches of every epoch, on the host."""
    for epoch in itertools.count(1):
        yield from epoch_shard(len(loader), epoch, loader.seed, Ranks()).split(loader.process_batch)


def plain_copies(loader: PhotoLoader, device: torch.device) -> Iterator[torch.Tensor]:
    """Each batch gathered and copied in the loop with a plain `.to(device)`, then augmented: no pinning, no thread."""
    for indices in host_batches(loader):
        yield loader.prepare(gather(loader.images, indices).to(device))


RESIDENT = "resident on the device, indexed + augmented there"
STEP = "training step, photos {}"


def training_steps(loaders: dict[str, PhotoLoader], device: torch.device, stack: ExitStack) -> dict[str, tuple]:
    """A whole training step of train.py's own run (`start_run`: optimiser, loss, precision, channels_last) per
    call, fed by each loader, on one model."""
    some_loader = next(iter(loaders.values()))
    config = TrainConfig(data="", batch_size=some_loader.batch_size, memory_format=Layout.CHANNELS_LAST.value)
    run = start_run(config, device, some_loader.steps, some_loader.process_batch)

    def step_from(batches: Iterator[tuple[torch.Tensor, torch.Tensor]]):
        def step() -> int:
            images, labels = next(batches)
            run.step(images, labels)
            return len(labels)
        return step

    return {STEP.format(name): (step_from(stack.enter_context(closing(forever(loader)))), 0)
            for name, loader in loaders.items()}


def measure(device: torch.device, data: Path, photos: int, batch: int, seconds: float, rounds: int) -> list[list]:
    found, _ = find_photos(data)
    if photos:  # the same random ones every time: both classes
        found = found.subset(torch.randperm(len(found), generator=torch.Generator().manual_seed(0))[:photos].tolist())
    resident, host = (PhotoLoader.load(found, INPUT_SIZE, device, "benchmark", os.cpu_count() or 1, False,
                                       photos_on=where, batch_size=batch, augment=True)
                      for where in ("device", "host"))
    copies_alone = streamed(host.images, host_batches(host), device) if device.type == "cuda" else \
        (gather(host.images, indices) for indices in host_batches(host))
    with ExitStack() as stack:  # every generator closed at the end: no prefetch thread outlives the benchmark
        feeds = {
            RESIDENT: (images for images, _ in forever(resident)),
            "streamed: pinned, non-blocking, prefetch thread, augmented on the device":
                (images for images, _ in forever(host)),
            "streamed copies alone (uint8, not augmented)": copies_alone,
            "plain .to(device) in the loop, no pinning or prefetch, augmented": plain_copies(host, device),
        }
        steps = {name: (lambda feed=stack.enter_context(closing(feed)): len(next(feed)), 0)
                 for name, feed in feeds.items()}
        steps |= training_steps({"resident": resident, "streamed": host}, device, stack)
        rates = interleaved_rates(steps, seconds, rounds, device)
    reference = lambda name: rates[STEP.format("resident") if name.startswith("training") else RESIDENT]  # noqa: E731
    return [[f"{device.type}: {name}", rate, f"{rate / reference(name):.2f}x"] for name, rate in rates.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--data", type=Path, default=DATA, help="labelled photos (default: the shared Kaggle set)")
    parser.add_argument("--photos", type=int, default=0, help="use only PHOTOS of them, drawn at random (default: all)")
    parser.add_argument("--batch", type=int, default=512, help="photos per batch")
    parser.add_argument("--seconds", type=float, default=5, help="seconds per row")
    parser.add_argument("--rounds", type=int, default=2, help="turns the rows take, each for seconds/rounds")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    rows = measure(device, args.data, args.photos, args.batch, args.seconds, args.rounds)
    report(f"Feed rate into {device.type} memory, batch {args.batch}, real photos from the cache",
           ["feed", "images/s", "vs resident"], rows)


if __name__ == "__main__":
    main()
