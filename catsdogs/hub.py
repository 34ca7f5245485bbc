"""Weights on disk and on the Hugging Face Hub: the output folder, the token check, the push.

The output folder is what gets published, file for file: `model.safetensors`,
`config.json`, the model card `README.md`, `metrics.json` and the plots.
"""

import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from matplotlib.figure import Figure

from catsdogs.model import CatsDogsCNN

TOKEN_HELP = "run `hf auth login` or set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)"


class HubError(RuntimeError):
    """Talking to the Hub failed; the message says why and what to do."""


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
            ignore_patterns=[".saving-*/**", ".*"],
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
    """The `hf` CLI command that uploads the output folder again, without retraining."""
    return shlex.join(["hf", "upload", repo_id, str(output_dir), ".", *(["--private"] if private else [])])
