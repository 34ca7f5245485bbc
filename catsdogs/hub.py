"""Weights on disk and on the Hugging Face Hub: the output folder, the push, and loading weights back.

The output folder is what gets published, file for file: `model.safetensors`,
`config.json`, the model card `README.md`, `metrics.json` and the plots. A
model is loaded from such a folder, local or a Hub repo fetched through the
Hub's cache, never from anything but safetensors.
"""

import contextlib
import io
import json
import math
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import httpx2
import yaml
from huggingface_hub import HfApi, ModelCard, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from matplotlib.figure import Figure
from safetensors import SafetensorError

from catsdogs.config import TrainConfig
from catsdogs.model import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, TTA_MODES, CatsDogsCNN

TOKEN_HELP = "run `hf auth login` or set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)"


WEIGHTS_FILES = ("model.safetensors", "config.json")  # what a model needs; the card and metrics are optional
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
# Never published: the temporary folder a save is written into (a killed run may leave one), hidden files, and
# the run's checkpoint folder inside the output folder.
UPLOAD_EXCLUDE = (".saving-*/**", ".*", "checkpoint/**")


class HubError(RuntimeError):
    """Talking to the Hub, or loading weights, failed; the message says why and what to do."""


def save_outputs(
    model: CatsDogsCNN,
    output_dir: str | Path,
    card: dict[str, Any],
    metrics: dict[str, Any],
    figures: dict[str, Figure],
) -> None:
    """Write weights, config, card, metrics and plots into `output_dir`, replacing what was there.

    Everything is written into a temporary folder first and then moved in file by
    file, so a run killed mid-save never leaves a half-written file behind.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".saving-") as tmp:
        model.save_pretrained(tmp, model_card_kwargs=card)  # model.safetensors, config.json, README.md
        (Path(tmp) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for name, figure in figures.items():
            figure.savefig(Path(tmp) / name, dpi=110, bbox_inches="tight")
        for file in Path(tmp).iterdir():
            file.chmod(0o644)  # some writers create 0600 files; weights are meant to be shared
            os.replace(file, output_dir / file.name)


def card_details(summary: dict) -> dict:
    """What the model card template shows, from a run's summary (metrics.json): training and a re-calibration
    (python -m catsdogs.calibrate) render the same card."""
    if not summary.get("history"):  # weights that train.py did not write: only what is known
        return {"calibration": summary.get("calibration")}
    config = summary["config"]
    return {
        "val_accuracy": round(summary["best_val_accuracy"], 4),
        **_dataset_fields(config["data"], summary.get("hub_dataset")),
        "summary": summary,
        "recipe": {name: config[name] for name in TrainConfig(data=config["data"]).recipe() if name in config},
        "training_time": human_duration(summary["training_seconds"]),
        "calibration": summary.get("calibration"),
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


def check_write_access(repo_id: str, token: str | None = None) -> str:
    """Fail fast, before any training, if the push at the end could not succeed. Returns the user name."""
    try:
        who = HfApi(token=token).whoami()
    except LocalTokenNotFoundError as error:
        raise HubError(f"no Hugging Face token found: {TOKEN_HELP}") from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise HubError(f"the Hub rejected the token (HTTP {status}); it is invalid or expired: {TOKEN_HELP}") from error
    except httpx2.TransportError as error:
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} ({error}); check the connection") from error
    role = who.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubError(f"the token of '{who['name']}' is read-only and cannot push: {TOKEN_HELP}")
    namespace = repo_id.split("/")[0] if "/" in repo_id else who["name"]
    writable = {who["name"], *(org.get("name") for org in who.get("orgs", []))}
    if namespace not in writable:
        raise HubError(f"'{who['name']}' cannot write to '{namespace}/': use --repo-id {who['name']}/NAME")
    return who["name"]


def push_outputs(output_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload the output folder as it is to the model repo `repo_id`. Returns the commit URL."""
    retry = retry_command(output_dir, repo_id, private)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=output_dir, commit_message="Upload catsdogs weights",
            ignore_patterns=list(UPLOAD_EXCLUDE),
        )
    except LocalTokenNotFoundError as error:
        raise HubError(f"no Hugging Face token found: {TOKEN_HELP}. Then retry the upload: {retry}") from error
    except (HfHubHTTPError, httpx2.TransportError, OSError) as error:
        raise HubError(
            f"the push to {repo_id} failed ({type(error).__name__}: {error}). The weights are safe in "
            f"{output_dir}; retry only the upload with: {retry}"
        ) from error
    return commit.commit_url


def retry_command(output_dir: str | Path, repo_id: str, private: bool) -> str:
    """The `hf` CLI command that uploads the output folder again, without retraining (and without leftovers)."""
    excludes = [arg for pattern in UPLOAD_EXCLUDE for arg in ("--exclude", pattern)]
    return shlex.join(["hf", "upload", repo_id, str(output_dir), ".", *excludes, *(["--private"] if private else [])])


def fetch_weights(source: str | Path, revision: str | None = None) -> Path:
    """A local weights folder as it is, or a Hub repo id's weights through the Hub's cache. Returns the folder.

    A repo fetched once keeps working offline: the cached snapshot is used when the Hub cannot be reached.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        if revision:
            raise HubError(f"--revision only applies to Hub repos, and {source} is a local folder")
    elif folder.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise HubError(f"{source} is neither a weights folder nor a Hub repo id like user/catsdogs")
    else:
        where = f"{source}@{revision}" if revision else str(source)
        try:
            folder = Path(snapshot_download(str(source), revision=revision,
                                            allow_patterns=[*WEIGHTS_FILES, "README.md", "metrics.json"]))
        except HFValidationError as error:
            raise HubError(f"{source} is not a valid Hub repo id ({error})") from error
        except RevisionNotFoundError as error:
            raise HubError(f"the Hub repo {source} has no revision '{revision}'") from error
        except RepositoryNotFoundError as error:
            raise HubError(f"no model repo {source} on the Hub at {constants.ENDPOINT} "
                           "(if it is private, set HF_TOKEN to a token that can read it)") from error
        except LocalEntryNotFoundError as error:
            raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} to fetch {where}, "
                           "and it is not in the local cache") from error
        except (HfHubHTTPError, httpx2.TransportError) as error:
            raise HubError(f"fetching {where} from the Hub at {constants.ENDPOINT} failed: {error}") from error
    missing = [name for name in WEIGHTS_FILES if not (folder / name).is_file()]
    if missing:
        raise HubError(f"{source} has no {' or '.join(missing)}: it does not hold catsdogs weights")
    return folder


def load_model(folder: str | Path) -> CatsDogsCNN:
    """The model in a weights folder (see `fetch_weights`), on the CPU, in eval mode.

    Every way the folder can be wrong (unreadable files, a config.json with values the network cannot run with,
    weights of another shape) is a HubError that says what is wrong.
    """
    try:
        problem = config_problem(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"it cannot be read ({type(error).__name__}: {error})"
    if problem:
        raise HubError(f"the config.json in {folder} is not a catsdogs config: {problem}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints "Loading weights from local directory"
            return CatsDogsCNN.from_pretrained(folder).eval()
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError, json.JSONDecodeError) as error:
        raise HubError(f"the weights in {folder} cannot be loaded ({type(error).__name__}: {error})") from error


def config_problem(config: Any) -> str | None:
    """What is wrong with a model's config.json (see CatsDogsCNN's arguments), or None when nothing is."""
    def numbers(value: Any, count: int) -> bool:
        return (isinstance(value, list) and len(value) == count
                and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value))

    if not isinstance(config, dict):
        return f"it holds a {type(config).__name__}, not an object of settings"
    names = config.get("class_names", ["cat", "dog"])
    if not (isinstance(names, list) and len(names) >= 2 and len(set(names)) == len(names)
            and all(isinstance(n, str) and n.strip() for n in names)):
        return f"class_names must be a list of at least two different names, not {names!r}"
    size = config.get("image_size", INPUT_SIZE)
    if not isinstance(size, int) or isinstance(size, bool) or size != INPUT_SIZE:
        return f"image_size must be {INPUT_SIZE} (the network's input size), not {size!r}"
    mean, std = config.get("mean", list(IMAGENET_MEAN)), config.get("std", list(IMAGENET_STD))
    if not numbers(mean, 3):
        return f"mean must be three finite numbers (one per colour channel), not {mean!r}"
    if not numbers(std, 3) or min(std) <= 0:
        return f"std must be three finite numbers above zero (one per colour channel), not {std!r}"
    dropout = config.get("dropout", 0.0)
    if not (isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        return f"dropout must be a number from 0 to below 1, not {dropout!r}"
    temperature = config.get("temperature", 1.0)
    if not (isinstance(temperature, int | float) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature > 0):
        return f"temperature must be a number above zero, not {temperature!r}"
    if config.get("tta", "none") not in TTA_MODES:
        return f"tta must be one of {', '.join(map(repr, TTA_MODES))}, not {config['tta']!r}"
    return None


def card_metric(folder: str | Path, metric: str) -> float | None:
    """A validation figure the folder's model card states ("accuracy", "expected_calibration_error"), if it does."""
    try:
        results = ModelCard.load(Path(folder) / "README.md").data.eval_results or []
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return next((r.metric_value for r in results if r.metric_type == metric), None)
