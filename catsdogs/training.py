"""Training the documented CNN.

The photos are decoded once and kept on the training device (`catsdogs.loader`). A checkpoint is written after
every epoch; the weights with the best validation accuracy go to the output folder with their config, model
card, metrics and plots.

Under `torchrun` the same code trains with DistributedDataParallel (NCCL on GPUs, gloo on CPUs): `--batch-size`
stays the global batch, each process trains on its own shard of every epoch, validation metrics are summed over
all processes, and only the first process writes files.
"""

import copy
import dataclasses
import os
import shlex
import sys
import time
from contextlib import closing, suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from catsdogs import plots
from catsdogs.allocator import describe_allocator
from catsdogs.autotune import Layout, LayoutChoice, choose_layout, use_layout
from catsdogs.checkpoint import (
    CheckpointError,
    WriteError,
    load_checkpoint,
    save_checkpoint,
)
from catsdogs.config import TrainConfig
from catsdogs.data import CLASS_NAMES, DataError, Split
from catsdogs.device import Precision, Ranks, describe_device, pick_device
from catsdogs.hub import HubError, fetch_weights, is_local_folder, load_model
from catsdogs.loader import PhotoLoader, find_split
from catsdogs.metrics import MIN_PHOTOS, Calibration, calibrate, confusion_matrix
from catsdogs.model import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, CatsDogsCNN, predict_with_features
from catsdogs.notpet import BANK_PER_CLASS, SEED, NotPetScore, bank_indices, fit
from catsdogs.outputs import (
    card_details,
    human_duration,
    interrupts_deferred,
    portable_command,
    portable_config,
    portable_path,
    save_outputs,
)
from catsdogs.preprocess import normalize

WHITENING_PHOTOS = 256  # photos whose 3x3 patches --whiten measures: ~12.6 million patches of 27 values
WHITENING_EPS = 5e-4  # added to each eigenvalue: directions of almost no variance are not blown up (airbench's)


class OutputError(ValueError):
    """The run could not write its results where asked, or would replace an earlier run's; checked before training."""


class TrainingInterrupted(Exception):
    """Training stopped early (Ctrl-C, a kill, a failed process, a full disk): everything up to the last finished
    epoch whose checkpoint was written is saved. `status` is the exit status train.py ends with."""

    def __init__(self, epoch: int, completed: int, reason: str = "interrupted", status: int = 130):
        super().__init__(f"{reason} in epoch {epoch}; {completed} epochs are saved")
        self.epoch, self.completed, self.reason, self.status = epoch, completed, reason, status


@dataclass
class TrainResult:
    model: CatsDogsCNN  # as trained after the last epoch (the best weights are in the output folder)
    summary: dict  # also in metrics.json


@dataclass
class Validation:
    loss: float
    accuracy: float
    confusion: list[list[int]]  # [true class][predicted class] counts
    logits: torch.Tensor  # of this process's share of the photos, in order
    features: torch.Tensor  # the penultimate features of the same pass (what catsdogs.notpet scores)


@dataclass
class EpochRecord:
    """One finished epoch, as metrics.json and the plots show it."""

    epoch: int
    train_loss: float
    train_accuracy: float
    lr: float
    seconds: float
    images_per_s: float
    val_loss: float
    val_accuracy: float
    val_confusion: list[list[int]]

    def line(self, epochs: int) -> str:
        return (f"epoch {self.epoch:>3}/{epochs}  train loss {self.train_loss:.4f} acc {self.train_accuracy:.2%}"
                f"  val loss {self.val_loss:.4f} acc {self.val_accuracy:.2%}  {self.images_per_s:.1f} img/s"
                f"  {self.seconds:.0f}s")


@dataclass
class RunState:
    """Everything a training run carries from epoch to epoch: exactly what its checkpoint file holds."""

    model: CatsDogsCNN
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    config: TrainConfig  # its recipe() is saved: a resumed run must repeat it
    precision: Precision
    network: nn.Module  # what a step runs: the model, or its DistributedDataParallel wrapper under torchrun
    data_fingerprint: str  # of the training and validation photo lists
    steps_per_epoch: int
    epoch: int = 0  # epochs finished
    history: list[EpochRecord] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_weights: dict[str, torch.Tensor] | None = None  # a CPU copy of the best epoch's weights
    start_accuracy: float | None = None  # --init-from: the starting weights' validation accuracy, before epoch 1
    seconds: float = 0.0  # training time of the finished epochs, over every launch of the run
    resumed_after: list[int] = field(default_factory=list)  # the epochs after which a launch continued the run
    calibration: Calibration | None = None  # of the best weights, fitted once the last epoch is done (not saved)
    ema: AveragedModel | None = None  # the moving average of the weights (--ema-decay), updated after every step
    layout: LayoutChoice | None = None  # the memory layout the model trains in, and why
    compile_seconds: float | None = None  # how long torch.compile took before the first step; None: not compiled
    not_pet_score: NotPetScore | None = None  # of the best weights, fitted with the calibration (not saved)
    # The best weights' logits and features of every validation photo, from their epoch's validation, when that
    # epoch ran in this launch of a one-process run (not saved): the calibration and the not-a-pet score reuse them.
    best_validation: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def around(cls, config: TrainConfig, model: CatsDogsCNN, precision: Precision, steps_per_epoch: int,
               network: nn.Module | None = None, data_fingerprint: str = "") -> "RunState":
        """A run that trains `model` as it is (its device and layout), through `network` when given."""
        optimizer = make_optimizer(config, model)
        return cls(model, optimizer, make_scheduler(config, optimizer, steps_per_epoch), precision.grad_scaler(),
                   config, precision, model if network is None else network, data_fingerprint, steps_per_epoch,
                   ema=make_ema(config, model))

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and one optimiser step in the device's training precision. Returns (loss, logits)."""
        with self.precision.autocast():
            logits = self.network(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema:
            self.ema.update_parameters(self.model)
        return loss, logits

    @property
    def evaluated(self) -> CatsDogsCNN:
        """The weights that are validated, chosen as best and saved: the moving average when there is one."""
        return self.ema.module if self.ema else self.model

    def finish_epoch(self, record: EpochRecord, seconds: float, validation: Validation | None = None) -> bool:
        """Add a finished epoch; keep its weights, and its `validation` of every photo, if they validate best. True
        when they do."""
        self.epoch, self.seconds = record.epoch, seconds
        self.history.append(record)
        if record.val_accuracy <= self.best_accuracy:
            return False
        self.best_accuracy, self.best_epoch = record.val_accuracy, record.epoch
        weights = self.evaluated.state_dict()
        self.best_weights = {name: w.detach().to("cpu", copy=True).contiguous() for name, w in weights.items()}
        self.best_validation = (validation.logits, validation.features) if validation else None
        return True

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "history": [asdict(r) for r in self.history], "seconds": self.seconds,
            "best": {"accuracy": self.best_accuracy, "epoch": self.best_epoch, "model": self.best_weights},
            "recipe": self.config.recipe(), "data_fingerprint": self.data_fingerprint,
            "steps_per_epoch": self.steps_per_epoch, "ema": self.ema.state_dict() if self.ema else None,
            "resumed_after": self.resumed_after, "start_accuracy": self.start_accuracy,
        }

    def resume_from(self, path: str | Path) -> None:
        """Continue the run saved at `path`, after checking it is this run: same recipe, photos and steps."""
        saved = load_checkpoint(path)
        # A setting newer than the checkpoint was not there to change: that run trained with its default.
        was = {f.name: f.default for f in fields(TrainConfig) if f.metadata["recipe"]} | saved["recipe"]
        changed = [f"--{k.replace('_', '-')} was {was.get(k)!r}, now {v!r}"
                   for k, v in self.config.recipe().items() if was.get(k) != v]
        if changed:
            raise CheckpointError("--resume must repeat the interrupted run's settings: " + "; ".join(changed))
        if saved["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(f"the checkpoint made {saved['steps_per_epoch']} steps per epoch, this launch "
                                  f"would make {self.steps_per_epoch}: resume with the same number of processes")
        if saved["data_fingerprint"] != self.data_fingerprint:
            raise CheckpointError(f"the checkpoint {path} was trained on a different set of photos; resume with "
                                  "the same --data/--val-data, or start afresh without --resume")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema:
            self.ema.load_state_dict(saved["ema"])
        self.epoch, self.seconds = saved["epoch"], saved["seconds"]
        self.resumed_after = [*saved.get("resumed_after", []), saved["epoch"]]  # older checkpoints did not keep it
        self.start_accuracy = saved.get("start_accuracy")  # nor this
        self.history = [EpochRecord(**row) for row in saved["history"]]
        best = saved["best"]
        self.best_accuracy, self.best_epoch, self.best_weights = best["accuracy"], best["epoch"], best["model"]


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def make_ema(config: TrainConfig, model: CatsDogsCNN) -> AveragedModel | None:
    """The moving average of `model`'s weights that --ema-decay asks for (a copy on the same device), or None.

    Every process of a torchrun run keeps its own, identical one: DDP keeps the weights it averages identical.
    """
    if not config.ema_decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)


def build_model(config: TrainConfig, temperature: float = 1.0) -> CatsDogsCNN:
    """The network as this run trains, validates and saves it (its config.json: classes, dropout, TTA, crop)."""
    return CatsDogsCNN(class_names=CLASS_NAMES, dropout=config.dropout, tta=config.tta, crop_pct=config.crop_pct,
                       temperature=temperature)


def load_start(source: str) -> CatsDogsCNN:
    """--init-from: the trained weights a run starts from, a weights folder or a Hub repo id (`hub.fetch_weights`,
    checked by `hub.load_model`), loaded before any photo is decoded. They must be weights of the network this run
    builds: the same classes in the same order and the same normalisation, as every run of train.py writes."""
    start = load_model(fetch_weights(source))
    if start.class_names != list(CLASS_NAMES) or (start.mean, start.std) != (IMAGENET_MEAN, IMAGENET_STD):
        raise HubError(f"the weights {source} answer {start.class_names} for photos normalised with mean "
                       f"{list(start.mean)} and std {list(start.std)}; a run starts only from weights that answer "
                       f"{list(CLASS_NAMES)} with the ImageNet mean and std, as train.py writes them")
    return start


def start_as_identity(model: CatsDogsCNN) -> None:
    """--identity-start: every 3x3 convolution after the first passes its first min(in, out) input channels through
    unchanged (a Dirac filter each), so that a photo's signal reaches the classifier undiminished at the first step;
    a convolution's other filters keep their random start. Draws nothing from the random stream."""
    convolutions = [module for module in model.blocks.modules() if isinstance(module, nn.Conv2d)]
    with torch.no_grad():
        for conv in convolutions[1:]:
            nn.init.dirac_(conv.weight[:min(conv.in_channels, conv.out_channels)])


def whiten_first_convolution(model: CatsDogsCNN, photos: torch.Tensor, seed: int) -> None:
    """--whiten: make the first convolution's filters whiten the 3x3 patches of a seeded sample of `photos` (uint8,
    the training photos): the eigenvectors of the patches' second moments, each scaled to give unit variance, and
    their negatives, so that the ReLU after them passes every direction (airbench's start); the filters left over
    keep their random start. The global random stream is not used: every process starts from the same weights."""
    conv = model.blocks[0][0]
    size = conv.weight[0].numel()  # of one patch: 3 x 3 x 3
    chosen = torch.randperm(len(photos), generator=torch.Generator().manual_seed(seed))[:WHITENING_PHOTOS]
    moments = torch.zeros(size, size, dtype=torch.float64)
    patches = 0
    for indices in chosen.split(8):  # 8 photos' patches at a time: ~90 MB of float64
        images = normalize(photos[indices.to(photos.device)].to(conv.weight.device), model.mean, model.std)
        # float64: float32 sums over 400k patches blur the smallest eigenvalues, whose filters then over-amplify.
        flat = F.unfold(images.contiguous(), conv.kernel_size).transpose(1, 2).reshape(-1, size).double()
        moments += (flat.T @ flat).cpu()
        patches += len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(moments / patches)  # ascending
    filters = (eigenvectors.T / (eigenvalues[:, None] + WHITENING_EPS).sqrt()).flip(0)  # largest variance first
    filters = torch.cat([filters, -filters])[:conv.out_channels].reshape(-1, *conv.weight.shape[1:])
    with torch.no_grad():
        conv.weight[:len(filters)] = filters.to(conv.weight.dtype)
        conv.bias[:len(filters)] = 0


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total_steps = config.epochs * steps_per_epoch
    if config.schedule == "onecycle" and total_steps >= 4:  # fewer steps leave no room for a warm-up
        # Warm up over a quarter of the steps, and over at least two: a zero-length warm-up divides by zero.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=max(0.25, 2 / total_steps))
    if config.schedule in ("constant", "onecycle"):
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown schedule {config.schedule!r}")


def start_run(config: TrainConfig, device: torch.device, steps_per_epoch: int, process_batch: int,
              ranks: Ranks = Ranks(), data_fingerprint: str = "", last_batch: int | None = None,
              photos: torch.Tensor | None = None, start: CatsDogsCNN | None = None) -> RunState:
    """A training run ready for its first step: the model built from the run's seed (the same initial weights in
    every process) or holding the trained weights `start` (--init-from, `load_start`), on `device` in the memory
    layout that trains fastest there (--memory-format), wrapped in DistributedDataParallel under torchrun, compiled
    when --compile asks (for the batch sizes an epoch has: `process_batch`, and `last_batch` when its last batch is
    smaller), with its optimiser, schedule, gradient scaler and moving average; with --identity-start, its later
    convolutions start as the identity, and with --whiten, its first convolution whitens `photos` (the training
    photos).
    `train` and the benchmarks start their runs here."""
    precision = Precision.for_training(device)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if start is not None:
        model.load_state_dict(start.state_dict())
    if config.identity_start:
        start_as_identity(model)
    if config.whiten:
        if photos is None:
            raise ValueError("--whiten needs the training photos")
        whiten_first_convolution(model, photos, config.seed)
    layout = choose_training_layout(config, model, precision, process_batch, ranks)
    use_layout(model, layout.layout)
    network = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if ranks.distributed else model
    compiled = compiles(config.compile, device)
    if compiled:
        # DDP first, then compile, as PyTorch recommends: the compiler splits the graph at DDP's gradient buckets.
        # Static shapes: an epoch has at most two batch sizes, each compiled once before the first step.
        network = torch.compile(network, dynamic=False)
    run = RunState.around(config, model, precision, steps_per_epoch, network, data_fingerprint)
    run.layout = layout
    if compiled:
        run.compile_seconds = compile_steps(run, {process_batch, last_batch or process_batch})
    return run


def compiles(requested: str, device: torch.device) -> bool:
    """--compile: auto compiles on CUDA only; on the CPU the compiled step measured slower than the eager one
    (docs/performance.md#compiling-on-a-cpu)."""
    return requested == "on" or (requested == "auto" and device.type == "cuda")


def compile_steps(run: RunState, batch_sizes: set[int]) -> float:
    """Compile `run.network`'s forward and backward for each batch size on random images, leaving the weights, the
    optimiser and the run's random stream as they were. Returns the seconds it took."""
    device = next(run.model.parameters()).device
    generator = torch.Generator(device).manual_seed(0)
    size, classes = run.model.image_size, len(run.model.class_names)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout draws from it
        for batch in sorted(batch_sizes, reverse=True):
            images = torch.randn(batch, 3, size, size, device=device, generator=generator)
            labels = torch.randint(0, classes, (batch,), device=device, generator=generator)
            with run.precision.autocast():
                logits = run.network(images)
            F.cross_entropy(logits.float(), labels).backward()
    run.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def train(config: TrainConfig, command: str | None = None) -> TrainResult:
    """Train, checkpointing every epoch, on one device or, under torchrun, on all of them."""
    ranks = Ranks.from_env()
    device = pick_device(config.device)
    # The main process writes; every process on its machine sees the same folders and checks them too, so that a
    # refusal ends all of them at once (only the main one says why). Were only the main one to check, the others
    # would wait for it inside the process group's rendezvous, where torchrun's stop signal cannot reach Python,
    # until torchrun kills them 30 s later.
    if ranks.node == 0:
        check_outputs(config)
    if ranks.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(config, command or "python train.py " + shlex.join(sys.argv[1:]), ranks, device)
    finally:
        if ranks.distributed and dist.is_initialized():
            # torchrun's stop (SIGTERM: a KeyboardInterrupt) may land here, after a failed peer was already
            # noticed: the run's outcome, with what is saved, must still reach the caller.
            with suppress(KeyboardInterrupt):
                dist.destroy_process_group()


def _train(config: TrainConfig, command: str, ranks: Ranks, device: torch.device) -> TrainResult:
    log = print if ranks.is_main else (lambda *args, **kwargs: None)
    if config.batch_size % ranks.world:  # before the photos are decoded: that can take minutes
        raise DataError(f"--batch-size {config.batch_size} must be divisible by the {ranks.world} processes")
    # --init-from, checked before the photos are decoded; a resumed run takes its weights from its checkpoint.
    start = load_start(config.init_from) if config.init_from and not config.resume else None
    split, train_photos, val_photos = _load_photos(config, ranks, device, log)
    fingerprint = f"{split.train.fingerprint()}-{split.val.fingerprint()}"
    last_batch = len(train_photos) // ranks.world - (train_photos.steps - 1) * train_photos.process_batch
    run = start_run(config, device, train_photos.steps, train_photos.process_batch, ranks, fingerprint, last_batch,
                    train_photos.images, start)
    _log_start(config, run, ranks, device, train_photos.process_batch, log)
    if start is not None:  # what fine-tuning has to beat
        run.start_accuracy = validate(run.evaluated, val_photos).accuracy
        log(f"--init-from {config.init_from}: the starting weights score {run.start_accuracy:.2%} on the validation "
            "photos before training")
    if config.resume:
        run.resume_from(config.checkpoint)  # every process resumes from the same file
        log(f"resuming from {config.checkpoint} after epoch {run.epoch} "
            f"(best validation accuracy so far {run.best_accuracy:.2%})")
    describe = lambda: _summary(config, command, describe_device(device, run.precision), ranks, split,  # noqa: E731
                                train_photos, val_photos, run)
    if run.epoch >= config.epochs:
        log(f"the checkpoint already holds all {config.epochs} epochs; nothing to train")

    seconds_before, started, epoch, saved = run.seconds, time.perf_counter(), run.epoch + 1, run.epoch
    first_of_launch = epoch  # its first steps give the estimate of the run's time
    try:
        for epoch in range(run.epoch + 1, config.epochs + 1):
            # Reseeded from (seed, epoch, rank): a resumed run continues the exact random stream in every process.
            torch.manual_seed(config.seed * 1_000_003 + epoch * 1_009 + ranks.rank)
            loss, accuracy, seconds, per_s = train_one_epoch(
                run, train_photos, epoch, ranks, estimate_epochs=config.epochs - epoch + 1 if epoch == first_of_launch
                else 0)
            val = validate(run.evaluated, val_photos)
            record = EpochRecord(epoch, loss, accuracy, run.optimizer.param_groups[0]["lr"], seconds, per_s,
                                 val.loss, val.accuracy, val.confusion)
            improved = run.finish_epoch(record, seconds_before + time.perf_counter() - started,
                                        None if ranks.distributed else val)  # under torchrun, a share of the photos
            if ranks.is_main:
                tqdm.write(record.line(config.epochs) + ("  (best)" if improved else ""))
                save_checkpoint(run.state_dict(), config.checkpoint)  # first: what a resume needs
                saved = epoch
                _write_outputs(config, run, describe())
        if ranks.is_main:  # inside the try: a Ctrl-C here says what is saved, and --resume calibrates again
            _calibrate_outputs(config, run, train_photos, val_photos, log, describe)
    except KeyboardInterrupt:
        # Under torchrun a SIGTERM usually means the launcher is stopping the run because a peer failed.
        reason = "interrupted" if ranks.world == 1 else "the run was stopped (a process failed, or it was killed)"
        raise TrainingInterrupted(epoch, saved, reason) from None
    except dist.DistError as error:  # another process of the run died: its peers cannot go on
        raise TrainingInterrupted(epoch, saved, f"another process of the run failed ({error})") from None
    except WriteError as error:  # a full or read-only disk: the last checkpoint written stays whole
        raise TrainingInterrupted(epoch, saved, str(error), status=1) from None
    return TrainResult(run.model, describe())


def _load_photos(config: TrainConfig, ranks: Ranks, device: torch.device,
                 log) -> tuple[Split, PhotoLoader, PhotoLoader]:
    """The run's split (`find_split`) and its training and validation photos, decoded onto their device."""
    split = find_split(config.data, config.val_fraction, config.validation_seed(), config.val_data,
                       config.data_revision, config.data_split)
    if split.hub_dataset:
        log(f"data: {split.hub_dataset}, {split.hub_dataset.source}")
    log(f"training photos: {split.train.counts()}; validation photos: {split.val.counts()} ({split.source})")
    decoding = dict(device=device, workers=config.workers, verbose=ranks.is_main, cache=config.cache,
                    cache_dir=config.cache_dir, photos_on=config.photos_on, ranks=ranks)
    train_photos = PhotoLoader.load(split.train, INPUT_SIZE, name="training", batch_size=config.batch_size,
                                    seed=config.seed, augment=config.augment, flip=config.flip, **decoding)
    val_photos = PhotoLoader.load(split.val, INPUT_SIZE, name="validation", **decoding)
    train_photos.require_both_classes("training")
    val_photos.require_both_classes("validation")
    return split, train_photos, val_photos


def _log_start(config: TrainConfig, run: RunState, ranks: Ranks, device: torch.device, process_batch: int,
               log) -> None:
    """How the run trains: device, precision, processes, allocator, memory layout, compilation."""
    log(f"training on {describe_device(device, run.precision)}" + (
        f", {ranks.world} processes of {process_batch} photos per step, DDP over {dist.get_backend()}"
        if ranks.distributed else "")
        + (f"; memory allocator: {describe_allocator()}" if device.type == "cpu" else ""))
    log(run.layout.describe())
    log(f"torch.compile (--compile {config.compile}): " + (
        "off" if run.compile_seconds is None else f"the training step compiled in {run.compile_seconds:.1f} s"))


TUNING_BATCH = 8  # photos per timed step when choosing the layout: enough to rank them, cheap on a slow CPU


def choose_training_layout(config: TrainConfig, model: CatsDogsCNN, precision: Precision, process_batch: int,
                           ranks: Ranks) -> LayoutChoice:
    """--memory-format; with auto, timed training steps (this run's optimiser, loss and precision) of a copy of
    the model in each layout, on random images. Under torchrun every process takes the first one's choice."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(0)  # the run's own random stream stays untouched
    batch = min(process_batch, TUNING_BATCH)
    images = torch.randn(batch, 3, model.image_size, model.image_size, device=device, generator=generator)
    labels = torch.randint(0, len(model.class_names), (batch,), device=device, generator=generator)
    timing_config = dataclasses.replace(config, schedule="constant")  # a schedule sized for these few steps

    def step_in(layout: Layout):
        run = RunState.around(timing_config, use_layout(copy.deepcopy(model), layout), precision, steps_per_epoch=1)
        return lambda: run.step(images, labels)

    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # dropout in the timed steps draws from the global stream
        choice = choose_layout(config.memory_format, device, step_in)
    if ranks.world > 1:  # the processes' copies of the model must share one layout: the first process's
        chosen = torch.tensor([list(Layout).index(choice.layout)], device=device)
        dist.broadcast(chosen, src=0)
        choice = dataclasses.replace(choice, layout=list(Layout)[int(chosen.item())])
    return choice


def train_one_epoch(run: RunState, loader: PhotoLoader, epoch: int, ranks: Ranks,
                    estimate_epochs: int = 0) -> tuple[float, float, float, float]:
    """One pass over this process's shard. Returns loss, accuracy, seconds and images/s, over all processes.

    With `estimate_epochs`, the main process says after a few steps how long that many epochs will take.
    """
    run.model.train()
    device = loader.device
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    started = time.perf_counter()
    bar = tqdm(total=loader.steps, desc=f"epoch {epoch}/{run.config.epochs}", unit="batch",
               leave=False, dynamic_ncols=True, disable=not ranks.is_main,
               mininterval=0.1 if sys.stderr.isatty() else 30)  # log files: a line every 30 s
    with closing(loader.epoch(epoch)) as batches:  # closed however the epoch ends: its prefetch thread stops
        for step, (images, labels) in enumerate(batches):
            loss, logits = run.step(images, labels)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(labels)
            if ranks.is_main and (step % 10 == 0 or step == loader.steps - 1):  # .item() waits for the GPU
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.2%}",
                                img_s=f"{seen * ranks.world / (time.perf_counter() - started):.1f}",
                                refresh=False)  # shown with the step's count, at the bar's next refresh
            if step == 1:  # the first step warms up kernels: time from the end of it
                warm = time.perf_counter()
            if ranks.is_main and estimate_epochs and step == min(11, loader.steps - 1) and step > 1:
                per_epoch = (time.perf_counter() - warm) / (step - 1) * loader.steps
                tqdm.write(f"estimate: about {human_duration(per_epoch)} per epoch of training steps, "
                           f"{human_duration(per_epoch * estimate_epochs)} for the {estimate_epochs} epochs to go")
            bar.update()  # a manual count: tqdm's iterator shows a stale one when the bar is redrawn between refreshes
    bar.close()
    totals = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=device)])
    if ranks.distributed:
        dist.all_reduce(totals)
    loss_sum, correct, seen = totals.tolist()
    elapsed = time.perf_counter() - started
    return loss_sum / seen, correct / seen, elapsed, seen / elapsed


def validate(model: CatsDogsCNN, photos: PhotoLoader) -> Validation:
    """Loss, accuracy and confusion matrix on the validation photos, each process scoring its share."""
    (logits, features), labels = photos.logits_and_features(model), photos.shard()[1]
    loss_sum = F.cross_entropy(logits, labels, reduction="sum")
    confusion = confusion_matrix(labels, logits.argmax(dim=1), len(model.class_names)).float()
    if photos.ranks.distributed:
        for total in (loss_sum, confusion):
            dist.all_reduce(total)
    return Validation(loss_sum.item() / len(photos), confusion.trace().item() / len(photos),
                      confusion.long().tolist(), logits, features)


def check_outputs(config: TrainConfig) -> None:
    """Before any photo is decoded: the run can write where it will write, and replaces nothing it did not write."""
    earlier = [path for path in (Path(config.output) / "model.safetensors", Path(config.checkpoint)) if path.exists()]
    if earlier and not (config.resume or config.overwrite):
        raise OutputError(f"{earlier[0]} is from an earlier run and this run would replace it. Pass --output "
                          "NEW_FOLDER to keep it, --resume to continue that run, or --overwrite to replace it")
    for folder in (Path(config.output), Path(config.checkpoint).parent):
        existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())  # created when first written
        if not existing.is_dir():
            raise OutputError(f"cannot create {folder}/: {existing} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to {existing}/ (read-only, or not yours): pass --output or "
                              "--checkpoint a folder you can write to")


def _summary(config: TrainConfig, command: str, device: str, ranks: Ranks, split: Split,
             train_photos: PhotoLoader, val_photos: PhotoLoader, run: RunState) -> dict:
    """What metrics.json and the model card say about the run so far."""
    return {
        "command": portable_command(command), "config": portable_config(config),
        "device": device + (f" x {ranks.world} processes" if ranks.distributed else ""),
        "n_train": len(train_photos), "n_val": len(val_photos),
        "train_counts": split.train.counts(), "val_counts": split.val.counts(), "validation_source": split.source,
        **({"hub_dataset": {"id": split.hub_dataset.dataset.repo_id, "revision": split.hub_dataset.commit,
                            "split": split.hub_dataset.dataset.split}} if split.hub_dataset else {}),
        "skipped_files": [[portable_path(str(p)), r.replace(str(p), portable_path(str(p)))]
                          for p, r in train_photos.skipped + val_photos.skipped],
        "epochs_completed": run.epoch, "best_epoch": run.best_epoch, "best_val_accuracy": run.best_accuracy,
        **({"start_val_accuracy": run.start_accuracy} if run.start_accuracy is not None else {}),
        "training_seconds": run.seconds, "compile_seconds": run.compile_seconds, "resumed_after": run.resumed_after,
        "torch": torch.__version__,
        # a Hub repo id: the card's metadata links the model to the one it was fine-tuned from
        **({"base_model": config.init_from} if config.init_from and not is_local_folder(config.init_from) else {}),
        "history": [asdict(r) for r in run.history],
        **({"calibration": run.calibration.summary()} if run.calibration else {}),
        **(run.not_pet_score.config_entry() if run.not_pet_score else {}),
    }


def _write_outputs(config: TrainConfig, run: RunState, summary: dict) -> None:
    with interrupts_deferred():  # the plots are drawn here and in save_outputs
        _draw_and_save_outputs(config, run, summary)


def _draw_and_save_outputs(config: TrainConfig, run: RunState, summary: dict) -> None:
    model = build_model(config, run.calibration.temperature if run.calibration else 1.0)
    model.load_state_dict(run.best_weights)
    best = next(r for r in run.history if r.epoch == run.best_epoch)
    figures = {
        "training_curves.png": plots.training_curves(summary["history"]),
        "confusion_matrix.png": plots.confusion_matrix(
            best.val_confusion, model.class_names, f"Validation, epoch {best.epoch} ({run.best_accuracy:.2%})"),
    }
    if run.calibration:
        figures["reliability.png"] = plots.reliability_diagram(
            run.calibration.bins_before, run.calibration.bins_after,
            f"{run.calibration.photos} validation photos, epoch {best.epoch} (T = {run.calibration.temperature:.3f})")
    save_outputs(model, config.output, card_details(summary), summary, figures, run.not_pet_score)


def _calibrate_outputs(config: TrainConfig, run: RunState, train_photos: PhotoLoader, val_photos: PhotoLoader,
                       log, describe) -> None:
    """The best epoch is chosen: make its probabilities honest (a temperature, `catsdogs.metrics`), fit its "not a
    pet" score (`catsdogs.notpet`), and write them out."""
    if len(val_photos) < MIN_PHOTOS:
        log(f"calibration and the not-a-pet score: skipped, {len(val_photos)} validation photos are too few to "
            f"fit them (at least {MIN_PHOTOS}); the probabilities are the plain softmax")
        return
    best = build_model(run.config).to(val_photos.device, memory_format=torch.channels_last)
    best.load_state_dict(run.best_weights)
    # One pass for both fits: the best epoch's own validation, or (resumed, or under torchrun) a pass now.
    val_logits, val_features = run.best_validation or predict_with_features(best, val_photos.images)
    run.calibration = calibration = calibrate(val_logits, val_photos.labels)
    # The temperature minimises the log likelihood; the binned calibration error of a few hundred photos can still
    # rise, so the log gives both.
    log(f"calibration: temperature {calibration.temperature:.3f}, fitted on the {calibration.photos} validation "
        f"photos; the expected calibration error goes from {calibration.ece_before:.2%} to "
        f"{calibration.ece_after:.2%}, the negative log likelihood from {calibration.nll_before:.4f} to "
        f"{calibration.nll_after:.4f}")
    run.not_pet_score = _fit_not_pet_score(best, train_photos, val_features)
    log(f"not-a-pet score: {run.not_pet_score.fitted_on}; {run.not_pet_score.rule}")
    _write_outputs(config, run, describe())


def _fit_not_pet_score(best: CatsDogsCNN, train_photos: PhotoLoader, val_features: torch.Tensor) -> NotPetScore:
    """The best weights' "not a pet" score: a bank of a seeded sample of the training photos, the threshold on the
    validation photos' features (as `python -m catsdogs.fit_notpet` fits it for existing weights)."""
    chosen = bank_indices(train_photos.labels.tolist(), BANK_PER_CLASS)
    bank = train_photos.images[torch.tensor(chosen, device=train_photos.images.device)]
    fitted_on = (f"{len(chosen)} training photos ({BANK_PER_CLASS} of each class at most, seed {SEED}); threshold "
                 f"on the {len(val_features)} validation photos")
    return fit(predict_with_features(best, bank)[1], val_features, best.tta, fitted_on, crop_pct=best.crop_pct)
