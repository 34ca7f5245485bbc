"""The Hugging Face Hub client, and weights loaded back from a folder or a Hub repo.

`snapshot` is the one way anything is fetched from the Hub (weights here, datasets in `catsdogs.hub_data`): a quick
question with a timeout first, the Hub's cache when the Hub cannot be reached, and every error of huggingface_hub
turned into a HubError that says what to do. The push uploads an output folder (`catsdogs.outputs`) as it is. A
model is loaded from a folder of safetensors weights and their config.json, never from anything else.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, constants, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError

from catsdogs.model import (IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, TTA_MODES, CatsDogsCNN, check_crop_pct,
                            own_notes, predict_logits, with_notes)
from catsdogs.notpet import FILE_NAME as NOT_PET_FILE
from catsdogs.notpet import NotPetScore


WEIGHTS_FILES = ("model.safetensors", "config.json")  # what a model needs; the card, metrics and score are optional
ONNX_FILE = "model.onnx"  # the weights as one ONNX graph (catsdogs.export), where there is one
FINGERPRINT_KEY = "catsdogs_weights_sha256"  # its metadata entry naming the weights it holds (weights_fingerprint)
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
# Never published: the temporary folder a save is written into (a killed run may leave one), hidden files, and
# the run's checkpoint folder inside the output folder.
UPLOAD_EXCLUDE = (".saving-*/**", ".*", "checkpoint/**")


class HubError(RuntimeError):
    """Talking to the Hub, or loading weights, failed; the message says why and what to do."""


def token_help(access: str) -> str:
    """What to do about a missing or insufficient token; `access` is "read" or "write"."""
    return (f"run `hf auth login` or set HF_TOKEN to a token with {access} access "
            "(https://huggingface.co/settings/tokens)")


@dataclass(frozen=True)
class Snapshot:
    """Files of a Hub repo at one commit, in the Hub's cache."""

    folder: Path
    commit: str  # the full sha
    source: str  # where they came from, in words, for the log


def snapshot(repo_id: str, repo_type: str, revision: str | None, allow_patterns: list[str], what: str) -> Snapshot:
    """The files of `repo_id` matching `allow_patterns` through the Hub's cache: downloaded when the Hub answers,
    else the cached copy. `what` names them in messages (e.g. "hf://datasets/a/b (split train)")."""
    kwargs = dict(repo_id=repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns)
    try:
        try:  # first a quick question with huggingface_hub's own timeout for metadata (HF_HUB_ETAG_TIMEOUT, 10 s by
            # default): without one, the client waits forever on a network that drops packets
            HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        except (httpx2.TransportError, OfflineModeIsEnabled) as unreachable:
            return _cached(kwargs, what, unreachable)
        folder = Path(snapshot_download(**kwargs))
    except GatedRepoError as error:
        raise HubError(f"{what} is gated: accept its conditions on the Hub, then {token_help('read')}") from error
    except RepositoryNotFoundError as error:
        raise HubError(f"no {repo_type} repo {repo_id} on the Hub at {constants.ENDPOINT} (if it is private or "
                       f"gated, {token_help('read')})") from error
    except RevisionNotFoundError as error:
        raise HubError(f"the {repo_type} repo {repo_id} has no revision '{revision}' (a branch, tag or commit)") \
            from error
    except HFValidationError as error:
        raise HubError(f"{repo_id} is not a valid Hub repo id ({error})") from error
    except (HfHubHTTPError, httpx2.TransportError, OSError) as error:
        raise HubError(f"fetching {what} from the Hub at {constants.ENDPOINT} failed: {error}") from error
    return Snapshot(folder, folder.name, f"downloaded into the Hub's cache {folder}")


def _cached(kwargs: dict, what: str, unreachable: Exception) -> Snapshot:
    try:
        folder = Path(snapshot_download(local_files_only=True, **kwargs))
    except (LocalEntryNotFoundError, OSError) as error:
        cached = "only part of it is" if isinstance(error, IncompleteSnapshotError) else "it is not"
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} ({type(unreachable).__name__}) to fetch "
                       f"{what}, and {cached} in the Hub's cache ({constants.HF_HUB_CACHE}): check the "
                       "connection") from error
    return Snapshot(folder, folder.name, f"the Hub's cache (the Hub at {constants.ENDPOINT} cannot be reached)")


def check_write_access(repo_id: str, token: str | None = None) -> str:
    """Fail fast, before any training, if the push at the end could not succeed. Returns the user name."""
    try:
        who = HfApi(token=token).whoami()
    except LocalTokenNotFoundError as error:
        raise HubError(f"no Hugging Face token found: {token_help('write')}") from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise HubError(f"the Hub rejected the token (HTTP {status}); it is invalid or expired: "
                       f"{token_help('write')}") from error
    except httpx2.TransportError as error:
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} ({error}); check the connection") from error
    role = who.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubError(f"the token of '{who['name']}' is read-only and cannot push: {token_help('write')}")
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
        keep_hub_notes(api, repo_id, Path(output_dir) / "README.md")
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=output_dir, commit_message="Upload catsdogs weights",
            ignore_patterns=list(UPLOAD_EXCLUDE),
        )
    except LocalTokenNotFoundError as error:
        raise HubError(f"no Hugging Face token found: {token_help('write')}. Then retry the upload: {retry}") from error
    except (HfHubHTTPError, httpx2.TransportError, OSError) as error:
        raise HubError(
            f"the push to {repo_id} failed ({type(error).__name__}: {error}). The weights are safe in "
            f"{output_dir}; retry only the upload with: {retry}"
        ) from error
    return commit.commit_url


def keep_hub_notes(api: HfApi, repo_id: str, card: Path) -> None:
    """Notes written below the mark of the card already on the Hub (e.g. in the Hub's editor) go into the local
    `card` before it replaces that one, unless the local card has notes of its own."""
    if not card.is_file() or own_notes(card.read_text(encoding="utf-8")).strip():
        return
    try:
        hub_card = Path(api.hf_hub_download(repo_id, "README.md")).read_text(encoding="utf-8")
    except (EntryNotFoundError, RevisionNotFoundError):  # a new repo, or one without a card
        return
    if (notes := own_notes(hub_card)).strip():
        written = card.with_name(f".{card.name}.with-notes")  # moved in whole: a full disk leaves the card as it was
        try:
            written.write_text(with_notes(card.read_text(encoding="utf-8"), notes), encoding="utf-8")
            os.replace(written, card)
        finally:
            written.unlink(missing_ok=True)


def retry_command(output_dir: str | Path, repo_id: str, private: bool) -> str:
    """The `hf` CLI command that uploads the output folder again, without retraining (and without leftovers)."""
    excludes = [arg for pattern in UPLOAD_EXCLUDE for arg in ("--exclude", pattern)]
    return shlex.join(["hf", "upload", repo_id, str(output_dir), ".", *excludes, *(["--private"] if private else [])])


def is_local_folder(source: str | Path) -> bool:
    """Whether a weights source names a folder on this machine (else it can only be a Hub repo id): the one test
    that every command and the app share."""
    return Path(source).expanduser().is_dir()


def fetch_weights(source: str | Path, revision: str | None = None) -> Path:
    """A local weights folder as it is, or a Hub repo id's weights through the Hub's cache. Returns the folder.

    A repo fetched once keeps working offline: the cached snapshot is used when the Hub cannot be reached.
    """
    folder = Path(source).expanduser()
    if is_local_folder(folder):
        if revision:
            raise HubError(f"--revision only applies to Hub repos, and {source} is a local folder")
    elif folder.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise HubError(f"{source} is neither a weights folder nor a Hub repo id like user/catsdogs")
    else:
        where = f"{source}@{revision}" if revision else str(source)
        folder = snapshot(str(source), "model", revision,
                          [*WEIGHTS_FILES, "README.md", "metrics.json", NOT_PET_FILE], where).folder
    missing = [name for name in WEIGHTS_FILES if not (folder / name).is_file()]
    if missing:
        raise HubError(f"{source} has no {' or '.join(missing)}: it does not hold catsdogs weights")
    return folder


def load_model(folder: str | Path) -> CatsDogsCNN:
    """The model in a weights folder (see `fetch_weights`), on the CPU, in eval mode: the one check of weights that
    the app and every command share.

    Every way the folder can be wrong (unreadable files, a config.json with values the network cannot run with,
    weights of another shape, values that make its answers meaningless) is a HubError that says what is wrong.
    """
    try:
        problem = config_problem(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        problem = f"it cannot be read ({type(error).__name__}: {error})"
    if problem:
        raise HubError(f"the config.json in {folder} is not a catsdogs config: {problem}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints "Loading weights from local directory"
            model = CatsDogsCNN.from_pretrained(folder).eval()
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError, json.JSONDecodeError) as error:
        raise HubError(f"the weights in {folder} cannot be loaded ({type(error).__name__}: {error})") from error
    problem = answer_problem(model)
    if problem:
        raise HubError(f"the weights in {folder} load but {problem}")
    return model


def probe_photos(size: int = INPUT_SIZE) -> torch.Tensor:
    """Three different uint8 pictures: black, white, and a colour gradient."""
    ramp = torch.linspace(0, 255, size).round().to(torch.uint8)
    gradient = torch.stack([ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size),
                            ramp.flip(0).view(1, -1).expand(size, size)])
    return torch.stack([torch.zeros_like(gradient), torch.full_like(gradient, 255), gradient])


def answer_problem(model: CatsDogsCNN) -> str | None:
    """Why the model's answers are meaningless (NaN or infinite probabilities, the same logits for different
    pictures: degenerate weights, or a temperature, mean or std that swamps everything), or None."""
    logits = predict_logits(model, probe_photos(model.image_size))
    probabilities = model.probabilities(logits)
    if not torch.isfinite(probabilities).all():
        return ("give NaN or infinite probabilities (check config.json's temperature, mean and std, and the "
                "weights for NaN)")
    if torch.equal(logits[0], logits[1]) and torch.equal(logits[1], logits[2]):
        return "give the same answer to every picture (degenerate weights)"
    return None


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
    try:
        check_crop_pct(config.get("crop_pct", 1.0))
    except ValueError as error:
        return str(error)
    return None


def read_metrics(folder: str | Path) -> dict:
    """What training recorded beside the weights (split settings, counts, accuracy); {} where nothing was."""
    try:
        return json.loads((Path(folder) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def weights_fingerprint(model: CatsDogsCNN, not_pet_score: NotPetScore | None) -> str:
    """A digest of all that an ONNX export of the weights holds (catsdogs.export): the weights, the settings its graph
    applies (preprocessing, temperature, test-time augmentation, class names) and the "not a pet" score."""
    digest = hashlib.sha256(json.dumps([model.class_names, model.image_size, model.mean, model.std, model.temperature,
                                        model.tta, model.crop_pct]).encode())
    tensors = sorted(model.state_dict().items())
    if not_pet_score is not None:
        digest.update(json.dumps([not_pet_score.k, not_pet_score.threshold]).encode())
        tensors.append(("not_pet_bank", not_pet_score.bank.half()))  # as notpet.safetensors holds it
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def onnx_holds(folder: str | Path, model: CatsDogsCNN, not_pet_score: NotPetScore | None) -> bool:
    """Whether the folder's ONNX file was exported from these weights and this score (False where there is none)."""
    recorded = onnx_fingerprint(folder)
    return recorded is not None and recorded == weights_fingerprint(model, not_pet_score)


def onnx_fingerprint(folder: str | Path) -> str | None:
    """The `weights_fingerprint` the folder's ONNX file was exported from; None where there is no readable one."""
    path = Path(folder) / ONNX_FILE
    if not path.is_file():
        return None
    import onnx  # here: only a folder with an ONNX file needs it
    from google.protobuf.message import DecodeError

    try:
        metadata = {entry.key: entry.value for entry in onnx.load(path, load_external_data=False).metadata_props}
    except (OSError, DecodeError):  # not an ONNX file: it holds no weights of these
        return None
    return metadata.get(FINGERPRINT_KEY)


def card_metric(folder: str | Path, metric: str) -> float | None:
    """A validation figure the folder's model card states ("accuracy", "expected_calibration_error"), if it does."""
    try:
        results = ModelCard.load(Path(folder) / "README.md").data.eval_results or []
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return next((r.metric_value for r in results if r.metric_type == metric), None)
