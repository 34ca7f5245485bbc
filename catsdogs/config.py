"""A training run's settings: one list, from which `train.py`'s flags, their help and the resume check are built.

Each field carries its flag's help text and group; fields marked `recipe` decide what is learnt, so a resumed
run must repeat them exactly.
"""

import argparse
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import get_args

from catsdogs.autotune import CHOICES
from catsdogs.model import TTA_MODES, check_crop_pct

COMPILE = ("auto", "on", "off")  # --compile
FLIPS = ("random", "alternate")  # --flip
PHOTOS_ON = ("auto", "device", "host")  # --photos-on: where the decoded photos live while training on a GPU
CHECKPOINT_IN_OUTPUT = "checkpoint/last.safetensors"  # relative to --output; the push leaves checkpoint/ out


def setting(default, help: str, group: str, recipe: bool = False, choices: tuple | None = None):  # noqa: A002
    return field(default=default, metadata={"help": help, "group": group, "recipe": recipe, "choices": choices})


# The settings that are paths, made portable (outputs.portable_path) wherever a run records them.
PATH_SETTINGS = ("data", "val_data", "cache_dir", "output", "checkpoint", "init_from")
GROUPS = ("data", "recipe", "run", "hub")  # the headings of --help, in this order


@dataclass
class TrainConfig:
    data: str = setting(MISSING, "folder of photos (Kaggle's cat.<id>.jpg files, or cat/ and dog/ sub-folders, "
                        "optionally under train/), a CSV of (image path, label), or a Hugging Face Hub dataset "
                        "hf://datasets/OWNER/NAME (e.g. hf://datasets/microsoft/cats_vs_dogs)", "data")
    data_revision: str | None = setting(None, "branch, tag or commit of a Hub --data (default: its main branch)",
                                        "data")
    data_split: str = setting("train", "which split of a Hub --data to train and validate on", "data")
    val_data: str | None = setting(None, "a separate labelled folder or CSV to validate on (default: split --data)",
                                   "data")
    val_fraction: float = setting(0.1, "share of --data held out for validation", "data", recipe=True)
    seed: int = setting(0, "seed of the initial weights, the shuffling and the augmentation, and of the split unless "
                        "--split-seed is given", "data", recipe=True)
    split_seed: int | None = setting(None, "seed of the split alone (default: --seed): runs of different --seed "
                                     "with the same --split-seed validate on the same photos", "data", recipe=True)
    workers: int = setting(min(8, os.cpu_count() or 1), "threads decoding photos", "data")
    cache: bool = setting(True, "keep the decoded photos in a file under --cache-dir that later runs and every "
                          "torchrun process map instead of decoding again", "data")
    cache_dir: str | None = setting(None, "where the decoded-photo cache lives (default: $CATSDOGS_CACHE_DIR, else "
                                    "$XDG_CACHE_HOME/catsdogs or ~/.cache/catsdogs); python -m catsdogs.cache lists "
                                    "and clears it", "data")

    epochs: int = setting(40, "passes over the training photos", "recipe", recipe=True)
    batch_size: int = setting(64, "photos per step, over all processes", "recipe", recipe=True)
    lr: float = setting(2e-3, "(peak) learning rate", "recipe", recipe=True)
    optimizer: str = setting("adamw", "optimiser", "recipe", recipe=True, choices=("adamw", "adam", "sgd"))
    schedule: str = setting("onecycle", "learning-rate schedule", "recipe", recipe=True,
                            choices=("onecycle", "constant"))
    weight_decay: float = setting(0.05, "weight decay", "recipe", recipe=True)
    label_smoothing: float = setting(0.1, "label smoothing of the loss", "recipe", recipe=True)
    dropout: float = setting(0.0, "dropout after each 512-unit layer (adds no parameters)", "recipe", recipe=True)
    augment: bool = setting(True, "random mirror, zoom, shift, rotation and colour jitter", "recipe", recipe=True)
    flip: str = setting("random", "how augmentation mirrors photos: random = each with probability 1/2 in every "
                        "epoch; alternate = each in every other epoch (airbench's alternating flip: any two epochs "
                        "in a row show every photo both ways)", "recipe", recipe=True, choices=FLIPS)
    init_from: str | None = setting(None, "start from these trained weights instead of a random start "
                                    "(fine-tuning): a weights folder (weights/, another run's --output) or a Hub "
                                    "model repo id OWNER/NAME; a lower --lr and fewer --epochs suit it",
                                    "recipe", recipe=True)
    whiten: bool = setting(False, "start the first convolution as a whitening of the training photos' 3x3 "
                           "patches (airbench's patch-whitening start: 27 filters the eigenvectors of the patches' "
                           "second moments scaled to unit variance, 27 their negatives); it trains on from there",
                           "recipe", recipe=True)
    identity_start: bool = setting(False, "start each 3x3 convolution after the first as the identity on its "
                                   "first channels (airbench's identity start: PyTorch's default start leaves this "
                                   "deep network without normalisation almost deaf to its input); it trains on from "
                                   "there", "recipe", recipe=True)
    ema_decay: float = setting(0.0, "keep an exponential moving average of the weights, updated after every step "
                               "with this decay (e.g. 0.999; 0 = off): validation, the best epoch and the saved "
                               "weights are the average's", "recipe", recipe=True)
    tta: str = setting("none", "test-time augmentation, recorded in config.json so that validation, evaluate and "
                       "the app all apply it: mirror = average the logits of each photo and its mirror image "
                       "(twice the compute per photo); mirror-zoom = those and both zoomed in 5%% further (four "
                       "times the compute)", "recipe", recipe=True, choices=TTA_MODES)
    crop_pct: float = setting(1.0, "the centred share of each photo's width and height the network sees when it "
                              "predicts (timm's crop_pct; 1 = the whole photo), recorded in config.json so that "
                              "validation, evaluate and the app all apply it: training's random zoom (0.85 to 1.05 "
                              "of the photo) shows pets larger than the whole photo does; 0.95 shows them at its "
                              "average size",
                              "recipe", recipe=True)

    device: str = setting("auto", "auto (CUDA if present), cpu, cuda or cuda:N", "run")
    memory_format: str = setting("auto", "the layout the network trains in: auto measures both on this machine at "
                                 "start (seconds) and keeps the faster; the result is the same but for rounding",
                                 "run", choices=CHOICES)
    compile: str = setting("auto", "torch.compile the network the training steps run (its weights, checkpoints and "
                           "moving average stay the plain module's): auto = on on CUDA, off on the CPU, where "
                           "compiling takes minutes for no clear gain (docs/performance.md); the log says how long "
                           "compiling took", "run", choices=COMPILE)
    photos_on: str = setting("auto", "where the decoded photos live while training on a GPU: auto = on the GPU when "
                             "they take at most half of its free memory, else on the host, streamed from the cache "
                             "file through pinned memory a batch or two ahead; device or host forces one. The same "
                             "batches either way. On the CPU, device and host are the same place (the mapped cache "
                             "file)", "run", choices=PHOTOS_ON)
    output: str = setting("runs/catsdogs", "where the best weights, their card, metrics and plots go", "run")
    checkpoint: str | None = setting(None, "written after every epoch (default: OUTPUT/checkpoint/last.safetensors;"
                                     " not uploaded by --push)", "run")
    resume: bool = setting(False, "continue from --checkpoint; repeat the same settings", "run")
    overwrite: bool = setting(False, "replace the weights and checkpoint that an earlier run left in --output "
                              "(without it, such a run is refused)", "run")
    onnx: bool = setting(False, "after training, also write the weights as one ONNX file for onnxruntime "
                         "(model.onnx in --output, pushed with them; python -m catsdogs.export)", "run")

    push: bool = setting(False, "upload --output to the Hugging Face Hub after training", "hub")
    repo_id: str | None = setting(None, "the model repo, e.g. you/catsdogs (needed with --push; the model card "
                                  "names it)", "hub")
    private: bool = setting(False, "create the repo as private", "hub")

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be at least 0 and below 1 (0 turns the average off), "
                             f"not {self.ema_decay}")
        check_crop_pct(self.crop_pct, "--crop-pct")
        if self.init_from and (self.whiten or self.identity_start):
            raise ValueError("--init-from starts from trained weights, --whiten and --identity-start are random "
                             "starts: give one or the other")
        if self.push and not self.repo_id:
            raise ValueError("--push needs --repo-id NAME (e.g. --repo-id you/catsdogs)")
        if self.checkpoint is None:  # the checkpoint lives with the run it belongs to
            self.checkpoint = str(Path(self.output) / CHECKPOINT_IN_OUTPUT)

    def validation_seed(self) -> int:
        """The seed that draws the validation photos (`catsdogs.data.choose_split`)."""
        return self.seed if self.split_seed is None else self.split_seed

    def recipe(self) -> dict:
        """The settings a resumed run must repeat (and the card lists)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["recipe"]}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def recorded_split(trained_with: dict) -> tuple[float, int]:
    """The validation share and seed of the split a run recorded (metrics.json's "config"), so that it can be drawn
    again; a run that recorded none: 10%, seed 0 (train.py's defaults)."""
    seed = trained_with.get("split_seed")
    return trained_with.get("val_fraction", 0.1), trained_with.get("seed", 0) if seed is None else seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, in its group, with its default in the help."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in fields(TrainConfig):
        flag, group = "--" + f.name.replace("_", "-"), groups[f.metadata["group"]]
        if f.default is MISSING:
            group.add_argument(flag, required=True, help=f.metadata["help"])
        elif f.default is True:
            group.add_argument("--no-" + flag[2:], dest=f.name, action="store_false",
                               help=f"turn off: {f.metadata['help']}")
        elif f.default is False:
            group.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            kind = type(f.default) if f.default is not None else next(  # `int | None`: int
                t for t in get_args(f.type) if t is not type(None))
            shown = "" if f.default is None else " (default %(default)s)"
            group.add_argument(flag, type=kind, default=f.default, choices=f.metadata["choices"],
                               help=f.metadata["help"] + shown)
