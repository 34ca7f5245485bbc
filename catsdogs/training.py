"""Training the documented CNN.

Every photo is decoded once to a uint8 tensor at the input size and kept in
memory (on the GPU when there is one); each batch is augmented there with
tensor ops, so JPEG decoding never starves the network. A checkpoint is written
after every epoch; the weights with the best validation accuracy go to the
output folder with their config, model card, metrics and plots.

Under `torchrun` the same code trains with DistributedDataParallel (NCCL on
GPUs, gloo on CPUs): `--batch-size` stays the global batch, each process
trains on its own shard of every epoch, validation metrics are summed over all
processes, and only the first process writes files.
"""

import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from catsdogs import plots
from catsdogs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from catsdogs.data import CLASS_NAMES, DataError, Photos, decode_photos, find_photos, split_photos
from catsdogs.hub import save_outputs
from catsdogs.inference import autocast, cpu_has_native_bf16, predict_logits
from catsdogs.model import CatsDogsCNN
from catsdogs.preprocess import normalize


@dataclass
class TrainConfig:
    data: str
    val_data: str | None = None
    val_fraction: float = 0.1
    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    optimizer: str = "adamw"  # adamw | adam | sgd
    schedule: str = "onecycle"  # onecycle | constant
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    dropout: float = 0.0
    augment: bool = True
    device: str = "auto"
    output: str = "weights"
    checkpoint: str = "checkpoints/last.safetensors"
    resume: bool = False
    workers: int = min(8, os.cpu_count() or 1)


# A resumed run must continue the same recipe on the same photos.
RECIPE_FIELDS = ("epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay",
                 "label_smoothing", "dropout", "augment", "seed", "val_fraction")


class TrainingInterrupted(Exception):
    """Training stopped early (Ctrl-C, a kill, a failed process): everything up to the last finished epoch is saved."""

    def __init__(self, epoch: int, completed: int, reason: str = "interrupted"):
        super().__init__(f"{reason} in epoch {epoch}; {completed} epochs are saved")
        self.epoch, self.completed, self.reason = epoch, completed, reason


@dataclass
class Ranks:
    """Where this process stands in a `torchrun` launch (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Ranks":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


@dataclass
class TrainResult:
    model: CatsDogsCNN  # as trained after the last epoch (the best weights are in the output folder)
    summary: dict  # also in metrics.json


def resolve_device(name: str) -> torch.device:
    """The device this process trains on; under torchrun each process takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return f"{torch.cuda.get_device_name(device)}, {precision} mixed precision"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    precision = "bf16 mixed precision" if cpu_has_native_bf16() else "fp32"
    return f"CPU: {cpu}, {torch.get_num_threads()} threads, {precision}"


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


@dataclass
class Split:
    """Decoded photos of one split, ready on the training device."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list


def load_split(photos: Photos, size: int, device: torch.device, workers: int, name: str, verbose: bool) -> Split:
    images, labels, skipped = decode_photos(photos, size, workers, desc=f"decoding {name} photos", progress=verbose)
    if skipped and verbose:
        print(f"skipped {len(skipped)} unreadable {name} files:")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    if len(set(labels.tolist())) < 2:
        raise DataError(f"after skipping unreadable files, the {name} photos hold only one class")
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    return Split(images.to(device, non_blocking=True), labels.to(device, non_blocking=True), skipped)


def find_splits(config: TrainConfig) -> tuple[Photos, Photos, str]:
    """The training and validation photos, and one line saying where validation comes from."""
    photos, layout_val = find_photos(config.data)
    if config.val_data:
        val, val_val = find_photos(config.val_data)
        if val_val is not None:
            val = Photos(val.paths + val_val.paths, val.labels + val_val.labels)
        shared = {p.resolve() for p in photos.paths} & {p.resolve() for p in val.paths}
        if shared:
            print(f"warning: {len(shared)} of the --val-data photos are also training photos; "
                  "the validation accuracy will be optimistic")
        return photos, val, f"all photos in `{config.val_data}` (--val-data)"
    if layout_val is not None:
        return photos, layout_val, "the labelled test/validation folder beside train/ in the data folder"
    train, val = split_photos(photos, config.val_fraction, config.seed)
    return train, val, (f"a deterministic stratified {config.val_fraction:.0%} of the photos "
                        f"(seed {config.seed})")


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total_steps = config.epochs * steps_per_epoch
    if config.schedule == "onecycle" and total_steps >= 4:  # fewer steps leave no room for a warm-up
        # Warm up over a quarter of the steps, and over at least two: a zero-length warm-up divides by zero.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=max(0.25, 2 / total_steps))
    if config.schedule in ("constant", "onecycle"):
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown schedule {config.schedule!r}")


def validate(model: CatsDogsCNN, split: Split, ranks: Ranks) -> dict:
    """Loss, accuracy and confusion matrix on the validation photos, each process scoring its share."""
    labels = split.labels[ranks.rank::ranks.world]  # strided views: no copy of the photos
    logits = predict_logits(model, split.images[ranks.rank::ranks.world])
    predicted = logits.argmax(dim=1)
    classes = len(model.class_names)
    totals = torch.cat([
        torch.stack([F.cross_entropy(logits, labels, reduction="sum"), (predicted == labels).sum().float()]),
        torch.bincount(labels * classes + predicted, minlength=classes * classes).float(),
    ])
    if ranks.world > 1:
        dist.all_reduce(totals)
    n = len(split.labels)
    return {"loss": totals[0].item() / n, "accuracy": totals[1].item() / n,
            "confusion": totals[2:].view(classes, classes).long().tolist()}


def epoch_shard(n: int, epoch: int, seed: int, ranks: Ranks) -> torch.Tensor:
    """This process's training photos for `epoch`: a fresh shuffle, cut into disjoint equal shards."""
    sampler = DistributedSampler(range(n), num_replicas=ranks.world, rank=ranks.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


def train(config: TrainConfig, command: str | None = None) -> TrainResult:
    """Train, checkpointing every epoch, on one device or, under torchrun, on all of them."""
    ranks = Ranks.from_env()
    device = resolve_device(config.device)
    if ranks.world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(config, command, ranks, device)
    finally:
        if ranks.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, command: str | None, ranks: Ranks, device: torch.device) -> TrainResult:
    log = print if ranks.is_main else (lambda *args, **kwargs: None)
    if config.batch_size % ranks.world:
        raise DataError(f"--batch-size {config.batch_size} must be divisible by the {ranks.world} processes")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(config.seed)  # the same initial weights in every process
    model = CatsDogsCNN(class_names=CLASS_NAMES, dropout=config.dropout)
    train_photos, val_photos, val_source = find_splits(config)
    log(f"training photos: {train_photos.counts()}; validation photos: {val_photos.counts()} ({val_source})")
    if ranks.world > 1:
        log(f"{ranks.world} processes, {config.batch_size // ranks.world} photos each per step of "
            f"{config.batch_size}, on {device.type}")
    train_split = load_split(train_photos, model.image_size, device, config.workers, "training", ranks.is_main)
    val_split = load_split(val_photos, model.image_size, device, config.workers, "validation", ranks.is_main)
    fingerprint = f"{train_photos.fingerprint()}-{val_photos.fingerprint()}"

    model = model.to(device, memory_format=torch.channels_last)
    stepper = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if ranks.world > 1 else model
    optimizer = make_optimizer(config, model)
    steps_per_epoch = math.ceil(len(train_split.labels) // ranks.world / (config.batch_size // ranks.world))
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())

    if not config.resume and Path(config.checkpoint).exists():
        log(f"note: {config.checkpoint} from an earlier run will be replaced after the first epoch "
            "(stop now and add --resume to continue that run instead)")
    if not config.resume and (Path(config.output) / "model.safetensors").exists():
        log(f"note: the weights in {config.output}/ will be replaced after the first epoch "
            "(stop now and pass --output DIR to keep them)")
    history, best = [], {"accuracy": -1.0, "epoch": 0, "model": None}
    start_epoch, seconds_before = 1, 0.0
    if config.resume:
        state = load_checkpoint(config.checkpoint)  # every process resumes from the same file
        _check_resumable(state, config, fingerprint, steps_per_epoch)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best, seconds_before = state["history"], state["best"], state["seconds"]
        start_epoch = state["epoch"] + 1
        log(f"resuming from {config.checkpoint} after epoch {state['epoch']} "
            f"(best validation accuracy so far {best['accuracy']:.2%})")

    summary = {
        "command": command or "python train.py " + shlex.join(sys.argv[1:]),
        "config": asdict(config),
        "device": describe_device(device) + (f" x {ranks.world} processes" if ranks.world > 1 else ""),
        "n_train": len(train_split.labels),
        "n_val": len(val_split.labels),
        "train_counts": train_photos.counts(),
        "val_counts": val_photos.counts(),
        "validation_source": val_source,
        "skipped_files": [[str(p), r] for p, r in train_split.skipped + val_split.skipped],
        "epochs_completed": start_epoch - 1, "best_epoch": best["epoch"], "best_val_accuracy": best["accuracy"],
        "training_seconds": seconds_before, "history": history,
    }
    if start_epoch > config.epochs:
        log(f"the checkpoint already holds all {config.epochs} epochs; nothing to train")
        return TrainResult(model, summary)
    epoch, started = start_epoch, time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            # Reseeded from (seed, epoch, rank): a resumed run continues the exact random stream in every process.
            torch.manual_seed(config.seed * 1_000_003 + epoch * 1_009 + ranks.rank)
            shard = epoch_shard(len(train_split.labels), epoch, config.seed, ranks)
            row = _train_one_epoch(model, stepper, train_split, shard, optimizer, scheduler, scaler, config, epoch,
                                   ranks)
            val = validate(model, val_split, ranks)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"], val_confusion=val["confusion"])
            history.append(row)
            improved = val["accuracy"] > best["accuracy"]
            if improved:
                weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
                best = {"accuracy": val["accuracy"], "epoch": epoch, "model": weights}
            if ranks.is_main:
                tqdm.write(
                    f"epoch {epoch:>3}/{config.epochs}  train loss {row['train_loss']:.4f}"
                    f" acc {row['train_accuracy']:.2%}  val loss {val['loss']:.4f} acc {val['accuracy']:.2%}"
                    f"  {row['images_per_s']:.1f} img/s  {row['seconds']:.0f}s{'  (best)' if improved else ''}")
            summary.update(epochs_completed=epoch, best_epoch=best["epoch"], best_val_accuracy=best["accuracy"],
                           training_seconds=seconds_before + time.perf_counter() - started)
            if ranks.is_main:
                _write_outputs(config, best["model"], summary)
                save_checkpoint({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "epoch": epoch, "history": history, "best": best, "seconds": summary["training_seconds"],
                    "recipe": {k: getattr(config, k) for k in RECIPE_FIELDS}, "data_fingerprint": fingerprint,
                    "steps_per_epoch": steps_per_epoch,
                }, config.checkpoint)
    except KeyboardInterrupt:
        # Under torchrun a SIGTERM usually means the launcher is stopping the run because a peer failed.
        reason = "interrupted" if ranks.world == 1 else "the run was stopped (a process failed, or it was killed)"
        raise TrainingInterrupted(epoch, epoch - 1, reason) from None
    except dist.DistError as error:  # another process of the run died: its peers cannot go on
        raise TrainingInterrupted(epoch, epoch - 1, f"another process of the run failed ({error})") from None
    return TrainResult(model, summary)


def _train_one_epoch(model, stepper, split, shard, optimizer, scheduler, scaler, config, epoch, ranks) -> dict:
    """One pass over this process's shard; returns the epoch's training metrics, summed over all processes."""
    device = split.labels.device
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    model.train()
    batches = shard.to(device).split(config.batch_size // ranks.world)
    totals = torch.zeros(3, device=device)  # loss sum, correct, photos
    started = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False, dynamic_ncols=True,
               disable=not ranks.is_main, mininterval=0.1 if sys.stderr.isatty() else 30)  # log files: every 30 s
    for step, indices in enumerate(bar):
        labels = split.labels[indices]
        images = prepare_batch(split.images[indices], model, config.augment)
        loss, logits = optimization_step(stepper, images, labels, criterion, optimizer, scheduler, scaler)
        totals += torch.stack([loss.detach() * len(labels), (logits.argmax(dim=1) == labels).sum(),
                               torch.tensor(len(labels), device=device)])
        if ranks.is_main and (step % 10 == 0 or step == len(batches) - 1):  # .item() waits for the GPU
            loss_sum, correct, seen = totals.tolist()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}",
                            img_s=f"{seen * ranks.world / (time.perf_counter() - started):.1f}")
    if ranks.world > 1:
        dist.all_reduce(totals)
    elapsed = time.perf_counter() - started
    loss_sum, correct, seen = totals.tolist()
    return {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
            "lr": optimizer.param_groups[0]["lr"], "seconds": elapsed, "images_per_s": seen / elapsed}


def prepare_batch(photos: torch.Tensor, model: CatsDogsCNN, augment_photos: bool) -> torch.Tensor:
    """Decoded uint8 photos -> the network's normalised float input, augmented for training when asked."""
    images = photos.float().div_(255)
    if augment_photos:
        images = augment(images)
    return normalize(images, model.mean, model.std)


def optimization_step(stepper: nn.Module, images: torch.Tensor, labels: torch.Tensor, criterion: nn.Module,
                      optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler):
    """Forward, backward and one optimiser step in the device's training precision. Returns (loss, logits)."""
    with autocast(images.device, cpu_bf16=True):
        logits = stepper(images)
    loss = criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss, logits


def _check_resumable(state: dict, config: TrainConfig, fingerprint: str, steps_per_epoch: int) -> None:
    recipe = {k: getattr(config, k) for k in RECIPE_FIELDS}
    changed = [f"--{k.replace('_', '-')} was {state['recipe'][k]!r}, now {recipe[k]!r}"
               for k in RECIPE_FIELDS if state["recipe"].get(k) != recipe[k]]
    if changed:
        raise CheckpointError("--resume must repeat the interrupted run's settings: " + "; ".join(changed))
    if state["steps_per_epoch"] != steps_per_epoch:
        raise CheckpointError(f"the checkpoint made {state['steps_per_epoch']} steps per epoch, this launch would make "
                              f"{steps_per_epoch}: resume with the same number of processes as before")
    if state["data_fingerprint"] != fingerprint:
        raise CheckpointError(f"the checkpoint {config.checkpoint} was trained on a different set of photos; "
                              "resume with the same --data/--val-data, or start afresh without --resume")


def _write_outputs(config: TrainConfig, best_model_state: dict, summary: dict) -> None:
    model = CatsDogsCNN(class_names=CLASS_NAMES, dropout=config.dropout)
    model.load_state_dict(best_model_state)
    best_row = next(row for row in summary["history"] if row["epoch"] == summary["best_epoch"])
    figures = {
        "training_curves.png": plots.training_curves(summary["history"]),
        "confusion_matrix.png": plots.confusion_matrix(
            best_row["val_confusion"], model.class_names,
            f"Validation, epoch {best_row['epoch']} ({summary['best_val_accuracy']:.2%})"),
    }
    card = {
        "val_accuracy": round(summary["best_val_accuracy"], 4),
        "dataset_name": "/".join(Path(config.data).parts[-2:]),  # e.g. dogs-vs-cats/train, not just train
        "summary": summary,
        "recipe": {k: getattr(config, k) for k in RECIPE_FIELDS},
        "training_time": _human_duration(summary["training_seconds"]),
    }
    save_outputs(model, config.output, card, summary, figures)


def _human_duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"
