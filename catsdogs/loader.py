"""The photos on the training device, and the batches cut from them (the loader of Keller Jordan's airbench).

Every photo is decoded once to a uint8 tensor at the input size (and kept in the photo cache, `catsdogs.cache`,
for later runs); the photos are copied whole to the GPU when there is one, and on the CPU stay in the mapped cache
file, from which each batch reads only its own photos. Each batch is indexed, augmented and normalised on the
device with tensor ops, so JPEG decoding never starves the network. `for images, labels in loader.epoch(n)` is
all the training loop sees.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from catsdogs.cache import decoded_photos
from catsdogs.data import DataError, Photos
from catsdogs.device import Ranks
from catsdogs.preprocess import normalize


@dataclass
class DecodedPhotos:
    """Photos decoded to uint8 (N, 3, S, S) on a device, their labels, and the files that could not be read."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list

    def __len__(self) -> int:
        return len(self.labels)

    def shard(self, ranks: Ranks) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share (every world-th photo) as strided views: no copy of the photos."""
        return self.images[ranks.rank::ranks.world], self.labels[ranks.rank::ranks.world]


def load_photos(photos: Photos, size: int, device: torch.device, workers: int, name: str,
                verbose: bool, cache: bool = True, cache_dir: str | Path | None = None) -> DecodedPhotos:
    """`photos` decoded once, from the photo cache (`catsdogs.cache`) or decoded now, and put on `device`.

    On the CPU the photos stay in the mapped cache file: a batch indexed from them reads just its photos (from the
    page cache, shared by every process), so a process's own memory does not grow with the number of photos. On a
    GPU they are copied there whole. `name` says which split they are in messages.
    """
    decoded = decoded_photos(photos, size, workers, name, verbose, cache, cache_dir)
    images, labels, skipped = decoded.images, decoded.labels, decoded.skipped
    if verbose:
        print(f"{name} photos: {decoded.source}")
    if skipped and verbose:
        print(f"skipped {len(skipped)} unreadable {name} files:")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    if len(set(labels.tolist())) < 2:
        raise DataError(f"after skipping unreadable files, the {name} photos hold only one class")
    if device.type == "cpu":
        return DecodedPhotos(images, labels, skipped)
    return DecodedPhotos(_copy_to(images, device), labels.to(device), skipped)


def _copy_to(images: torch.Tensor, device: torch.device, rows: int = 1024) -> torch.Tensor:
    """The photos copied to `device` a slice at a time (a mapped file is never read into memory whole)."""
    on_device = torch.empty(images.shape, dtype=images.dtype, device=device)
    for start in range(0, len(images), rows):
        on_device[start:start + rows].copy_(images[start:start + rows])
    return on_device


def epoch_shard(n: int, epoch: int, seed: int, ranks: Ranks) -> torch.Tensor:
    """This process's photo indices for `epoch`: a fresh shuffle, cut into disjoint equal shards."""
    sampler = DistributedSampler(range(n), num_replicas=ranks.world, rank=ranks.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


class TrainingBatches:
    """This process's training batches of every epoch: shuffled by (seed, epoch), augmented, normalised.

    `batch_size` is the global batch; each of the `ranks.world` processes gets its own equal part of it.
    """

    def __init__(self, photos: DecodedPhotos, batch_size: int, ranks: Ranks, seed: int, augment: bool,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.photos, self.ranks, self.seed, self.augment = photos, ranks, seed, augment
        self.mean, self.std = mean, std
        self.process_batch = batch_size // ranks.world

    def __len__(self) -> int:
        """Steps per epoch."""
        return math.ceil(len(self.photos) // self.ranks.world / self.process_batch)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        shard = epoch_shard(len(self.photos), epoch, self.seed, self.ranks).to(self.photos.labels.device)
        for indices in shard.split(self.process_batch):
            yield self.prepare(gather(self.photos.images, indices)), self.photos.labels[indices]

    def prepare(self, photos: torch.Tensor) -> torch.Tensor:
        """Decoded uint8 photos -> the network's normalised float input, augmented when training asks for it."""
        images = photos.float().div_(255)
        if self.augment:
            images = augment(images)
        return normalize(images, self.mean, self.std)


def gather(images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """images[indices], a copy of just those photos. On the CPU through NumPy: its `take` copies whole photos,
    12x faster than PyTorch's element-wise index kernel for uint8 (bench/cache.py), with the same bytes."""
    if images.device.type == "cpu":
        return torch.from_numpy(images.numpy()[indices.numpy()])
    return images[indices]


def augment(images: torch.Tensor) -> torch.Tensor:
    """Per-photo random mirror, zoom, shift, small rotation and colour jitter on a 0..1 float batch.

    One affine warp (affine_grid + grid_sample) does all geometric changes for the
    whole batch, each photo with its own parameters, on whatever device holds it.
    """
    n, device = images.shape[0], images.device
    uniform = lambda low, high: torch.empty(n, device=device).uniform_(low, high)  # noqa: E731
    mirror = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0)
    scale, angle = uniform(0.85, 1.05), uniform(-0.17, 0.17)  # zoom in up to ~18%, rotate up to ~10 degrees
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([
        torch.stack([cos * mirror, -sin, uniform(-0.1, 0.1)], dim=1),
        torch.stack([sin * mirror, cos, uniform(-0.1, 0.1)], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness, contrast, saturation = (uniform(0.8, 1.2).view(n, 1, 1, 1) for _ in range(3))
    grey = images.mean(dim=1, keepdim=True)
    images = grey + (images - grey) * saturation
    images = images.mean(dim=(1, 2, 3), keepdim=True) * (1 - contrast) + images * contrast
    return (images * brightness).clamp_(0, 1)
