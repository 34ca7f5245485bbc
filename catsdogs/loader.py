"""The one way photos go from `--data` to batches (the loader of Keller Jordan's airbench): find, decode, cache,
place, shard, epoch.

`find` reads what --data names (a local folder or CSV, or a Hub dataset) and `find_split` picks the validation photos
(`catsdogs.data.choose_split`). A `PhotoLoader` then owns one photo list: every photo decoded once to a uint8 tensor
at the input size (kept in the photo cache, `catsdogs.cache`, for later runs), placed on a GPU whole when it fits
(`place_photos`), otherwise left in the mapped cache file, from which each batch reads only its own photos, a batch or
two ahead on a background thread (to the GPU through pinned memory). `epoch(n)` gives this process's shuffled,
augmented, normalised training batches; `logits(model)` scores this process's share in order, the same way for
training's validation and for `catsdogs.evaluate`.
"""

import functools
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from catsdogs.cache import decoded_photos, human_size
from catsdogs.data import HUB_PREFIX, DataError, Found, Photos, Split, choose_split, find_photos
from catsdogs.device import Ranks
from catsdogs.hub_data import fetch, parse, photos_in_snapshot
from catsdogs.model import IMAGENET_MEAN, IMAGENET_STD, CatsDogsCNN, predict_with_features, scoring_batch
from catsdogs.preprocess import normalize


def find(data: str | Path, revision: str | None = None, split: str = "train") -> Found:
    """The labelled photos `--data` names: a local folder or CSV as it is, or a Hub dataset's split fetched
    through the Hub's cache. The one place that tells the two apart; `revision` and `split` only apply to Hub
    datasets."""
    if not str(data).startswith("hf://"):  # hides only a local folder named "hf:"; hf://models/... is refused below
        if revision is not None or split != "train":
            raise DataError(f"--data-revision and --data-split only apply to Hub datasets ({HUB_PREFIX}OWNER/NAME), "
                            f"and {data} is a local path")
        return Found(*find_photos(Path(data).expanduser()), named=str(data))
    snapshot = fetch(parse(str(data), revision, split))
    return Found(photos_in_snapshot(snapshot), None, named=str(snapshot), hub_dataset=snapshot)


def find_split(data: str | Path, val_fraction: float, seed: int, val_data: str | Path | None = None,
               revision: str | None = None, split: str = "train") -> Split:
    """The training and validation photos of a run (see `catsdogs.data.choose_split`)."""
    if val_data is not None and str(val_data).startswith("hf://"):
        raise DataError("--val-data takes a local folder or CSV; a Hub --data is validated on a held-out share "
                        "of its --data-split")
    return choose_split(find(data, revision, split), val_fraction, seed,
                        None if val_data is None else find(val_data))


GPU_SHARE = 0.5  # of the GPU's free memory, the most the photos may take there


@dataclass(frozen=True)
class Placement:
    """Where a photo list lives while training, and why, in words for the log."""

    on_device: bool
    description: str


def place_photos(nbytes: int, device: torch.device, requested: str = "auto") -> Placement:
    """On the GPU when `nbytes` of photos take at most GPU_SHARE of its free memory (the fast path: a batch is
    indexed where it is used), else on the host, streamed a batch or two ahead; `requested` (--photos-on device or
    host) forces one. On the CPU the device is the host: the photos stay in the mapped cache file either way.

    Half, not all: the free memory must still hold the network's training step (its activations at batch 512 take
    gigabytes, cuDNN its workspaces), the validation photos decided next, and the caching allocator's slack; and
    other processes on the GPU count against the same free memory.
    """
    size = human_size(nbytes)
    if device.type != "cuda":
        return Placement(False, f"{size} in host memory, the mapped cache file (on the CPU, device and host are the "
                                "same place)")
    free = torch.cuda.mem_get_info(device)[0]
    if requested == "device" or (requested == "auto" and nbytes <= free * GPU_SHARE):
        return Placement(True, f"{size} copied to the GPU ({human_size(free)} free)")
    why = "--photos-on host" if requested == "host" else f"more than half of the GPU's {human_size(free)} free"
    return Placement(False, f"{size} left in the cache file, streamed to the GPU a batch at a time ({why})")


@dataclass
class PhotoLoader:
    """One photo list decoded to uint8 (N, 3, S, S), placed for the training device, and served as batches.

    `batch_size` is the global batch of a training epoch; each of the `ranks.world` processes gets its own equal
    part of it. Every process scores its own share of the photos (every world-th one).
    """

    images: torch.Tensor  # on the device, or in the mapped cache file (`place_photos`)
    labels: torch.Tensor  # always on the device
    skipped: list = field(default_factory=list)  # (file, why) of the photos that could not be read
    batch_size: int = 64  # a loader that only scores never serves an epoch
    ranks: Ranks = field(default_factory=Ranks)
    seed: int = 0
    augment: bool = False
    flip: str = "random"  # how augmentation mirrors: FLIPS
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def load(cls, photos: Photos, size: int, device: torch.device, name: str, workers: int, verbose: bool,
             cache: bool = True, cache_dir: str | Path | None = None, photos_on: str = "auto",
             **batching) -> "PhotoLoader":
        """`photos` decoded once, from the photo cache or decoded now, and placed for `device` (`photos_on`:
        --photos-on). `name` says which split they are in messages; `batching` sets the dataclass's other fields.

        Images left in the mapped cache file are read a batch at a time (from the page cache, shared by every
        process), so a process's own memory does not grow with the number of photos.
        """
        decoded = decoded_photos(photos, size, workers, name, verbose, cache, cache_dir)
        if verbose:
            print(f"{name} photos: {decoded.source}")
            if decoded.skipped:
                print(f"skipped {len(decoded.skipped)} unreadable {name} files:")
                for path, reason in decoded.skipped:
                    print(f"  {path}: {reason}")
        if not len(decoded.labels):
            raise DataError(f"none of the {len(photos)} {name} photos could be read")
        placement = place_photos(decoded.images.nbytes, device, photos_on)
        if verbose:
            print(f"{name} photos: {placement.description}")
        images = _copy_to(decoded.images, device) if placement.on_device else decoded.images
        return cls(images, decoded.labels.to(device), decoded.skipped, **batching)

    def __len__(self) -> int:
        return len(self.labels)

    def require_both_classes(self, name: str) -> None:
        """Training and validating need photos of every class."""
        if len(set(self.labels.tolist())) < 2:
            raise DataError(f"after skipping unreadable files, the {name} photos hold only one class")

    @property
    def device(self) -> torch.device:
        """The training device: the labels are always there; the images may stay on the host (`place_photos`)."""
        return self.labels.device

    @property
    def process_batch(self) -> int:
        return self.batch_size // self.ranks.world

    @property
    def steps(self) -> int:
        """Training steps per epoch."""
        return math.ceil(len(self) // self.ranks.world / self.process_batch)

    def shard(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share (every world-th photo) as strided views: no copy of the photos."""
        return self.images[self.ranks.rank::self.ranks.world], self.labels[self.ranks.rank::self.ranks.world]

    def logits(self, model: CatsDogsCNN, progress: bool = False) -> torch.Tensor:
        """The logits of this process's share, in order, on the model's device."""
        return self.logits_and_features(model, progress)[0]

    def logits_and_features(self, model: CatsDogsCNN, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits of this process's share and the penultimate features of the same pass (what catsdogs.notpet
        scores), in order, catsdogs.model.scoring_batch photos at a time, on the model's device."""
        images = self.shard()[0].split(scoring_batch(next(model.parameters()).device))
        batches = tqdm(images, desc="scoring", unit="batch", leave=False, disable=not progress)
        outputs = [predict_with_features(model, batch) for batch in batches]
        return torch.cat([logits for logits, _ in outputs]), torch.cat([features for _, features in outputs])

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's training batches of `epoch`: shuffled by (seed, epoch), augmented, normalised."""
        shard = epoch_shard(len(self), epoch, self.seed, self.ranks)
        on_device = shard.to(self.device).split(self.process_batch)
        if self.images.is_cuda:  # resident on the GPU: indexing there takes microseconds, nothing to fetch ahead
            fetched = (gather(self.images, indices) for indices in on_device)
        elif self.device.type == "cuda":
            fetched = streamed(self.images, shard.split(self.process_batch), self.device)
        else:  # the CPU: gathering a batch (~1 ms) overlaps the step before it
            fetched = prefetched(partial(gather, self.images), shard.split(self.process_batch), depth=1)
        with closing(fetched):
            for indices, photos in zip(on_device, fetched, strict=True):
                mirror = self.alternate_mirror(indices, epoch) if self.flip == "alternate" else None
                yield self.prepare(photos, mirror), self.labels[indices]

    def alternate_mirror(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """--flip alternate (airbench's alternating flip): each photo mirrored in every other epoch, which of the
        two drawn once per photo from the seed, so that any two epochs in a row show every photo both ways."""
        return self._mirrored_first.to(indices.device)[indices] ^ (epoch % 2 == 0)

    @functools.cached_property
    def _mirrored_first(self) -> torch.Tensor:
        """Which photos --flip alternate mirrors in odd epochs: drawn once, from the seed."""
        return torch.rand(len(self), generator=torch.Generator().manual_seed(self.seed)) < 0.5

    def prepare(self, photos: torch.Tensor, mirror: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded uint8 photos -> the network's normalised float input, augmented when training asks for it
        (`mirror`: which photos to mirror; None: each at random)."""
        images = photos.float().div_(255)
        if self.augment:
            images = augment(images, mirror)
        return normalize(images, self.mean, self.std)


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


def gather(images: torch.Tensor, indices: torch.Tensor, pin: bool = False) -> torch.Tensor:
    """images[indices], a copy of just those photos (in pinned memory with `pin`, for non-blocking copies to a GPU).

    On the CPU through NumPy: its `take` copies whole photos, 12x faster than PyTorch's element-wise index kernel
    for uint8 (bench/cache.py), with the same bytes."""
    if images.device.type != "cpu":
        return images[indices]
    out = torch.empty((len(indices), *images.shape[1:]), dtype=images.dtype, pin_memory=pin)
    np.take(images.numpy(), indices.numpy(), axis=0, out=out.numpy(), mode="clip")  # clip: no buffer; all in range
    return out


def streamed(images: torch.Tensor, batches: Iterable[torch.Tensor], device: torch.device,
             depth: int = 2) -> Iterator[torch.Tensor]:
    """Each batch of host `images` on the GPU, copied `depth` batches ahead: gathered into pinned memory and copied
    without blocking on a stream of its own, so the copies overlap the training steps. The step's stream waits for
    its batch's copy (an event), and the batch is marked as used there, so that its memory is not reused by a later
    copy while the step still reads it: correct however the threads are timed."""
    copies = torch.cuda.Stream(device)

    def copy_ahead(indices: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event]:
        pinned = gather(images, indices, pin=True)  # the host allocator keeps it until the copy is done
        with torch.cuda.stream(copies):
            on_device = pinned.to(device, non_blocking=True)
        return on_device, copies.record_event()

    compute = torch.cuda.current_stream(device)
    with closing(prefetched(copy_ahead, batches, depth)) as ready:
        for on_device, copied in ready:
            compute.wait_event(copied)
            on_device.record_stream(compute)
            yield on_device


_END = object()  # what the prefetch thread queues after the last item


def prefetched(fetch: Callable, items: Iterable, depth: int) -> Iterator:
    """`fetch(item)` for each item, run on a background thread up to `depth` items ahead of the consumer.

    Closing the generator (the consumer breaks, raises, or is interrupted) stops the thread and waits for it; an
    exception in `fetch` is raised in the consumer."""
    ready, stop = queue.Queue(maxsize=depth), threading.Event()

    def offer(entry) -> bool:  # False once the consumer has gone
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set() or not offer((fetch(item), None)):
                    return
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, raised there)
            offer((None, error))
            return
        offer(_END)

    # Daemon, so that a consumer that never closes this generator cannot keep the process alive; but a daemon thread
    # still inside PyTorch's C++ code when the interpreter exits aborts the process ("terminate called without an
    # active exception"), so every way out of here stops it and, once it is running, waits for it.
    thread = threading.Thread(target=produce, name="catsdogs-prefetch", daemon=True)
    try:
        thread.start()  # inside the try: a kill while it starts (a wait for the new thread) stops it too
        while (entry := ready.get()) is not _END:
            value, error = entry
            if error is not None:
                raise error
            yield value
    finally:
        stop.set()
        with suppress(RuntimeError):  # interrupted before it had started: it sees `stop` before its first fetch
            thread.join()


def augment(images: torch.Tensor, mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Per-photo mirror (`mirror` says which, else at random), random zoom, shift, small rotation and colour jitter
    on a 0..1 float batch.

    One affine warp (affine_grid + grid_sample) does all geometric changes for the
    whole batch, each photo with its own parameters, on whatever device holds it.
    """
    n, device = images.shape[0], images.device
    uniform = lambda low, high: torch.empty(n, device=device).uniform_(low, high)  # noqa: E731
    mirror = torch.where(torch.rand(n, device=device) < 0.5 if mirror is None else mirror, -1.0, 1.0)
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
