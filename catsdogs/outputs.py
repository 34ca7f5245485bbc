"""What a training run writes: the output folder, published as it is by `--push`.

`model.safetensors`, `config.json`, the model card `README.md`, `metrics.json`, the plots and, when one was
fitted, the "not a pet" score `notpet.safetensors` (described in config.json); `model.onnx` where it was exported
(catsdogs.export). The paths these files record are portable (`portable_path`): relative to the working folder the
run started in, or only the last two names of a folder outside it, so a published card never shows the training
machine's folder layout.
"""

import json
import os
import shlex
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from catsdogs.checkpoint import require_room, writing
from catsdogs.config import PATH_SETTINGS, TrainConfig
from catsdogs.hub import ONNX_FILE, onnx_holds
from catsdogs.model import CatsDogsCNN, own_notes, with_notes
from catsdogs.notpet import CONFIG_KEY as NOT_PET_CONFIG_KEY
from catsdogs.notpet import FILE_NAME as NOT_PET_FILE
from catsdogs.notpet import NotPetScore

FIGURE_BYTES = 2**20  # the most a plot's PNG takes
TRAIN_PATH_FLAGS = tuple("--" + name.replace("_", "-") for name in PATH_SETTINGS)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C or a kill (SIGINT; SIGTERM, which train.py turns into the same) while the outputs are made is acted on
    once they are written, by the handler it would have met: raised inside matplotlib's drawing code, a
    KeyboardInterrupt comes out as an unrelated error (a ValueError) and leaves the outputs half made."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return
    received = []
    handlers = {stop: signal.signal(stop, lambda number, frame: received.append(number))
                for stop in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for stop, handler in handlers.items():
            signal.signal(stop, handler)
        for stop in dict.fromkeys(received):
            signal.raise_signal(stop)


def save_outputs(model: CatsDogsCNN, output_dir: str | Path, card: dict[str, Any], metrics: dict[str, Any],
                 figures: dict[str, Figure], not_pet_score: NotPetScore | None = None) -> None:
    """Write weights, config, card, metrics, plots and the "not a pet" score of these weights (a score left from
    other weights is removed, and so is an ONNX file made from other weights: catsdogs.export) into `output_dir`,
    replacing what was there but the notes below the card's NOTES_MARK (`catsdogs.model`).

    Everything is written into a temporary folder first and then moved in file by file, so a run killed mid-save
    never leaves a half-written file behind; a full disk is a WriteError, the earlier files left whole.
    """
    output_dir = Path(output_dir)
    onnx_kept = onnx_holds(output_dir, model, not_pet_score)
    with interrupts_deferred(), writing(f"the weights and their card to {output_dir}/"):
        output_dir.mkdir(parents=True, exist_ok=True)
        weights = sum(p.nbytes for p in model.state_dict().values())
        require_room(output_dir, weights + FIGURE_BYTES * len(figures), f"the weights and their card ({output_dir}/)")
        with tempfile.TemporaryDirectory(dir=output_dir, prefix=".saving-") as tmp:
            # model.safetensors, config.json, README.md
            model.save_pretrained(tmp, model_card_kwargs=card | {"onnx": onnx_kept})
            keep_own_notes(output_dir / "README.md", Path(tmp) / "README.md")
            (Path(tmp) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            for name, figure in figures.items():
                figure.savefig(Path(tmp) / name, dpi=110, bbox_inches="tight")
            if not_pet_score:
                not_pet_score.save(tmp)  # and its entry in config.json
                if not_pet_score.stored_in(output_dir):
                    (Path(tmp) / NOT_PET_FILE).unlink()  # the file there stays byte for byte
            else:
                (output_dir / NOT_PET_FILE).unlink(missing_ok=True)
            for file in Path(tmp).iterdir():
                file.chmod(0o644)  # some writers create 0600 files; weights are meant to be shared
                os.replace(file, output_dir / file.name)
            if not onnx_kept:
                (output_dir / ONNX_FILE).unlink(missing_ok=True)


def keep_own_notes(old_card: Path, new_card: Path) -> None:
    """Carry the notes `old_card` holds below its NOTES_MARK over to the freshly rendered `new_card`."""
    if old_card.is_file() and (notes := own_notes(old_card.read_text(encoding="utf-8"))):
        new_card.write_text(with_notes(new_card.read_text(encoding="utf-8"), notes), encoding="utf-8")


def rewrite_card(folder: str | Path, model: CatsDogsCNN, metrics: dict[str, Any],
                 figures: dict[str, Figure] | None = None) -> None:
    """Write `metrics` (metrics.json) into the weights folder `folder` and render its card from them again, with
    `model` (the folder's weights, or the same weights with a changed config such as a new temperature), the "not a
    pet" score already beside them, and `figures` replacing plots of the same name (the others stay)."""
    folder = Path(folder)
    not_pet_score = NotPetScore.load(folder) if (folder / NOT_PET_FILE).is_file() else None
    metrics = {**metrics, **(not_pet_score.config_entry() if not_pet_score else {})}
    save_outputs(model, folder, card_details(metrics), metrics, figures or {}, not_pet_score)


def portable_path(path: str | Path | None) -> str | None:
    """A path as a card may show it: a Hub dataset or a relative path as named, an absolute one relative to the
    working folder when inside it, else only its last two names below the home folder (e.g. dogs-vs-cats/train)."""
    if path is None or str(path).startswith("hf://"):
        return path
    named = Path(path).expanduser()
    if not named.is_absolute():
        return str(path)
    if named.is_relative_to(Path.cwd()):
        return str(named.relative_to(Path.cwd()))
    below = named.relative_to(Path.home()) if named.is_relative_to(Path.home()) else named
    return "/".join(below.parts[-2:])


def portable_command(command: str, flags: Iterable[str] = TRAIN_PATH_FLAGS) -> str:
    """A launch command with the values of its path `flags` (train.py's --data, --output, ...) made portable."""
    flags = set(flags)
    words = shlex.split(command)
    for i, word in enumerate(words):
        flag, equals, value = word.partition("=")
        if flag in flags and equals:
            words[i] = f"{flag}={portable_path(value)}"
        elif i and words[i - 1] in flags:
            words[i] = portable_path(word)
    return shlex.join(words)


def portable_config(config: TrainConfig) -> dict[str, Any]:
    """The run's settings as metrics.json records them, paths made portable."""
    settings = {name: getattr(config, name) for name in config.__dataclass_fields__}
    return settings | {name: portable_path(settings[name]) for name in PATH_SETTINGS}


def card_details(summary: dict) -> dict:
    """What the model card template shows, from a run's summary (metrics.json): training and a re-calibration
    (python -m catsdogs.calibrate) render the same card."""
    if not summary.get("history"):  # weights that train.py did not write: only what is known
        return {"calibration": summary.get("calibration"), "not_a_pet": summary.get(NOT_PET_CONFIG_KEY)}
    config = summary["config"]
    return {
        "val_accuracy": round(summary["best_val_accuracy"], 4),
        **_dataset_fields(config["data"], summary.get("hub_dataset")),
        "summary": summary,
        "recipe": {name: config[name] for name in TrainConfig(data=config["data"]).recipe()
                   if config.get(name) is not None},  # a setting left unset (no --init-from) has no row
        "base_model": summary.get("base_model"),
        "training_time": human_duration(summary["training_seconds"]),
        "calibration": summary.get("calibration"),
        "not_a_pet": summary.get(NOT_PET_CONFIG_KEY),
        "repo_id": config.get("repo_id"),  # where the weights are published: the card's code fetches them there
    }


def _dataset_fields(data: str, hub_dataset: dict | None) -> dict:
    """How the card names the data: a Hub dataset by id and commit, in its metadata, so the Hub links the model to
    it; local photos by their folder."""
    if hub_dataset is None:
        return {"dataset_name": "/".join(Path(data).parts[-2:])}  # e.g. dogs-vs-cats/train, not just train
    return {"dataset_type": hub_dataset["id"], "dataset_name": hub_dataset["id"],
            "dataset_revision": hub_dataset["revision"], "datasets": [hub_dataset["id"]],
            "dataset_split": hub_dataset["split"]}


def human_duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"
