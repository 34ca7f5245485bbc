"""Training the documented CNN.

Every photo is decoded once to a uint8 tensor at the input size and kept in
memory (on the GPU when there is one); each batch is augmented there with
tensor ops, so JPEG decoding never starves the network. A checkpoint is written
after every epoch; the weights with the best validation accuracy go to the
output folder with their config, model card, metrics and plots.
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
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from catsdogs import plots
from catsdogs.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from catsdogs.data import CLASS_NAMES, DataError, Photos, decode_photos, find_photos, split_photos
from catsdogs.hub import save_outputs
from catsdogs.inference import autocast, predict_logits
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
    """Ctrl-C or SIGTERM during training: everything up to the last finished epoch is saved."""

    def __init__(self, epoch: int, completed: int):
        super().__init__(f"interrupted in epoch {epoch}; {completed} epochs are saved")
        self.epoch, self.completed = epoch, completed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {cpu}, {torch.get_num_threads()} threads"


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
    photos: Photos
    skipped: list


def load_split(photos: Photos, size: int, device: torch.device, workers: int, name: str) -> Split:
    images, labels, skipped = decode_photos(photos, size, workers, desc=f"decoding {name} photos")
    if skipped:
        print(f"skipped {len(skipped)} unreadable {name} files:")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    if len(set(labels.tolist())) < 2:
        raise DataError(f"after skipping unreadable files, the {name} photos hold only one class")
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    return Split(images.to(device, non_blocking=True), labels.to(device, non_blocking=True), photos, skipped)


def find_splits(config: TrainConfig) -> tuple[Photos, Photos, str]:
    """The training and validation photos, and one line saying where validation comes from."""
    photos, layout_val = find_photos(config.data)
    if config.val_data:
        val, val_val = find_photos(config.val_data)
        if val_val is not None:
            val = Photos(val.paths + val_val.paths, val.labels + val_val.labels)
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
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.25)
    if config.schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown schedule {config.schedule!r}")


def validate(model: CatsDogsCNN, split: Split, criterion: nn.Module) -> dict:
    logits = predict_logits(model, split.images)
    loss = criterion(logits, split.labels).item()
    predicted = logits.argmax(dim=1)
    classes = len(model.class_names)
    confusion = torch.bincount(split.labels * classes + predicted, minlength=classes * classes)
    return {
        "loss": loss,
        "accuracy": (predicted == split.labels).float().mean().item(),
        "confusion": confusion.view(classes, classes).tolist(),
    }


def train(config: TrainConfig, command: str | None = None) -> dict:
    """Train, checkpointing every epoch; returns the summary that also goes into metrics.json."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    model = CatsDogsCNN(class_names=CLASS_NAMES, dropout=config.dropout)
    train_photos, val_photos, val_source = find_splits(config)
    print(f"training photos: {train_photos.counts()}; validation photos: {val_photos.counts()} ({val_source})")
    train_split = load_split(train_photos, model.image_size, device, config.workers, "training")
    val_split = load_split(val_photos, model.image_size, device, config.workers, "validation")
    fingerprint = f"{train_photos.fingerprint()}-{val_photos.fingerprint()}"

    model = model.to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    steps_per_epoch = math.ceil(len(train_split.labels) / config.batch_size)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()

    if not config.resume and Path(config.checkpoint).exists():
        print(f"note: {config.checkpoint} from an earlier run will be replaced after the first epoch "
              "(stop now and add --resume to continue that run instead)")
    history, best = [], {"accuracy": -1.0, "epoch": 0, "model": None}
    start_epoch, seconds_before = 1, 0.0
    if config.resume:
        state = load_checkpoint(config.checkpoint)
        _check_resumable(state, config, fingerprint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        history, best, seconds_before = state["history"], state["best"], state["seconds"]
        start_epoch = state["epoch"] + 1
        print(f"resuming from {config.checkpoint} after epoch {state['epoch']} "
              f"(best validation accuracy so far {best['accuracy']:.2%})")

    summary_base = {
        "command": command or "python train.py " + shlex.join(sys.argv[1:]),
        "config": asdict(config),
        "device": describe_device(device),
        "n_train": len(train_split.labels),
        "n_val": len(val_split.labels),
        "train_counts": train_photos.counts(),
        "val_counts": val_photos.counts(),
        "validation_source": val_source,
        "skipped_files": [[str(p), r] for p, r in train_split.skipped + val_split.skipped],
    }
    if start_epoch > config.epochs:
        print(f"the checkpoint already holds all {config.epochs} epochs; nothing to train")
        return {**summary_base, "epochs_completed": config.epochs, "best_epoch": best["epoch"],
                "best_val_accuracy": best["accuracy"], "training_seconds": seconds_before, "history": history}
    epoch, summary = start_epoch, {}
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            row = _train_one_epoch(model, train_split, optimizer, scheduler, scaler, criterion, config, epoch, device)
            val = validate(model, val_split, eval_criterion)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"], val_confusion=val["confusion"])
            history.append(row)
            improved = val["accuracy"] > best["accuracy"]
            if improved:
                best = {"accuracy": val["accuracy"], "epoch": epoch,
                        "model": {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}}
            tqdm.write(
                f"epoch {epoch:>3}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.2%}"
                f"  val loss {val['loss']:.4f} acc {val['accuracy']:.2%}  {row['images_per_s']:.1f} img/s"
                f"  {row['seconds']:.0f}s{'  (best)' if improved else ''}"
            )
            seconds = seconds_before + time.perf_counter() - started
            summary = {**summary_base, "epochs_completed": epoch, "best_epoch": best["epoch"],
                       "best_val_accuracy": best["accuracy"], "training_seconds": seconds, "history": history}
            _write_outputs(config, best["model"], summary)
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "epoch": epoch, "history": history, "best": best, "seconds": seconds,
                "recipe": {k: getattr(config, k) for k in RECIPE_FIELDS}, "data_fingerprint": fingerprint,
            }, config.checkpoint)
    except KeyboardInterrupt:
        raise TrainingInterrupted(epoch, epoch - 1) from None
    return summary


def _train_one_epoch(model, split, optimizer, scheduler, scaler, criterion, config, epoch, device) -> dict:
    model.train()
    order = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
    batches = order.to(split.labels.device).split(config.batch_size)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, started = 0, time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False, dynamic_ncols=True)
    for step, indices in enumerate(bar):
        images = split.images[indices].float().div_(255)
        if config.augment:
            images = augment(images)
        images = normalize(images, model.mean, model.std)
        labels = split.labels[indices]
        with autocast(device):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        if step % 10 == 0 or step == len(batches) - 1:  # .item() waits for the GPU: not every step
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.2%}",
                            img_s=f"{seen / elapsed:.1f}")
    elapsed = time.perf_counter() - started
    return {"epoch": epoch, "train_loss": loss_sum.item() / seen, "train_accuracy": correct.item() / seen,
            "lr": optimizer.param_groups[0]["lr"], "seconds": elapsed, "images_per_s": seen / elapsed}


def _check_resumable(state: dict, config: TrainConfig, fingerprint: str) -> None:
    recipe = {k: getattr(config, k) for k in RECIPE_FIELDS}
    changed = [f"--{k.replace('_', '-')} was {state['recipe'][k]!r}, now {recipe[k]!r}"
               for k in RECIPE_FIELDS if state["recipe"].get(k) != recipe[k]]
    if changed:
        raise CheckpointError("--resume must repeat the interrupted run's settings: " + "; ".join(changed))
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
        "dataset_name": Path(config.data).name,
        "summary": summary,
        "recipe": {k: getattr(config, k) for k in RECIPE_FIELDS},
        "training_time": _human_duration(summary["training_seconds"]),
    }
    save_outputs(model, config.output, card, summary, figures)


def _human_duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"
