"""The local test Hub (tests/hub_server.py) against the real huggingface_hub client.

These tests pin down how huggingface_hub 2.4.0 reports each failure (exception
class and HTTP status), which is what the app turns into user-facing messages.
"""

import httpx2
import pytest
import torch
from conftest import BAD_TOKEN, READ_TOKEN, USER, WRITE_TOKEN
from huggingface_hub import HfApi, PyTorchModelHubMixin, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = f"{USER}/m"
WEIGHTS = bytes(range(256)) * 40 + b"\x00\xff\r\n"  # binary, with NULs and CR/LF
CONFIG = b'{"num_classes": 2}'
README = b"---\nlicense: mit\ntags:\n- image-classification\n---\n# Cats vs dogs\n"


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "upload"
    d.mkdir()
    (d / "weights.bin").write_bytes(WEIGHTS)
    (d / "config.json").write_bytes(CONFIG)
    (d / "README.md").write_bytes(README)
    return d


def read(path):
    with open(path, "rb") as f:
        return f.read()


def test_whoami_tokens(hub):
    me = HfApi(token=WRITE_TOKEN).whoami()
    assert me["name"] == USER and me["auth"]["accessToken"]["role"] == "write"
    assert HfApi(token=READ_TOKEN).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(LocalTokenNotFoundError):  # raised by the client, no request sent
        HfApi().whoami()
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(token=BAD_TOKEN).whoami()
    assert e.value.response.status_code == 401


def test_push_and_pull_round_trip(hub, folder):
    api = HfApi(token=WRITE_TOKEN)
    assert api.create_repo(REPO).repo_id == REPO
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo(REPO)
    assert e.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO

    first = api.upload_folder(repo_id=REPO, folder_path=folder).oid
    assert len(first) == 40 and api.model_info(REPO).sha == first
    for name, data in [("weights.bin", WEIGHTS), ("config.json", CONFIG), ("README.md", README)]:
        assert read(hf_hub_download(REPO, name)) == data  # public: no token needed
        assert (hub.repo_dir(REPO) / name).read_bytes() == data
    assert api.list_repo_files(REPO) == [".gitattributes", "README.md", "config.json", "weights.bin"]
    snapshot = snapshot_download(REPO)
    assert read(f"{snapshot}/weights.bin") == WEIGHTS

    # Unchanged files: the client skips the commit and reports the current one.
    assert api.upload_folder(repo_id=REPO, folder_path=folder).oid == first
    (folder / "weights.bin").write_bytes(WEIGHTS[::-1])
    second = api.upload_folder(repo_id=REPO, folder_path=folder).oid
    assert second != first and api.model_info(REPO).sha == second
    assert read(hf_hub_download(REPO, "weights.bin")) == WEIGHTS[::-1]
    assert read(hf_hub_download(REPO, "weights.bin", revision=first)) == WEIGHTS


def test_push_needs_a_write_token(hub, folder):
    for token, status in [(READ_TOKEN, 403), (BAD_TOKEN, 401), (None, 401)]:
        with pytest.raises(HfHubHTTPError) as e:
            HfApi(token=token).create_repo(REPO, exist_ok=True)
        assert e.value.response.status_code == status, token

    HfApi(token=WRITE_TOKEN).create_repo(REPO)
    for token, status in [(READ_TOKEN, 403), (BAD_TOKEN, 401), (None, 401)]:
        with pytest.raises(HfHubHTTPError) as e:
            HfApi(token=token).upload_folder(repo_id=REPO, folder_path=folder)
        assert e.value.response.status_code == status, token
    assert HfApi().list_repo_files(REPO) == [".gitattributes"]


def test_bad_token_fails_even_on_public_repo(hub, folder):
    HfApi(token=WRITE_TOKEN).create_repo(REPO)
    HfApi(token=WRITE_TOKEN).upload_folder(repo_id=REPO, folder_path=folder)
    with pytest.raises(HfHubHTTPError) as e:  # like the real Hub: 401, not "repo not found"
        hf_hub_download(REPO, "config.json", token=BAD_TOKEN)
    assert e.value.response.status_code == 401 and not isinstance(e.value, RepositoryNotFoundError)
    with pytest.raises(HfHubHTTPError) as e:
        snapshot_download(REPO, token=BAD_TOKEN)
    assert e.value.response.status_code == 401


def test_missing_repo_file_and_revision(hub, folder):
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{USER}/nope", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{USER}/nope", "config.json", token=READ_TOKEN)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(f"{USER}/nope")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=WRITE_TOKEN).upload_folder(repo_id=f"{USER}/nope", folder_path=folder)

    HfApi(token=WRITE_TOKEN).create_repo(REPO)
    with pytest.raises(RemoteEntryNotFoundError) as e:
        hf_hub_download(REPO, "model.safetensors")
    assert isinstance(e.value, EntryNotFoundError)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="v1")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info(REPO, revision="0" * 40)


def test_private_repo_needs_a_token(hub, folder):
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(REPO, private=True)
    api.upload_folder(repo_id=REPO, folder_path=folder)
    assert api.model_info(REPO).private is True
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info(REPO)
    assert read(hf_hub_download(REPO, "config.json", token=READ_TOKEN)) == CONFIG


def test_hub_dies_during_push(hub, folder):
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(REPO)
    before = api.model_info(REPO).sha
    hub.die_on_next_commit()
    with pytest.raises(httpx2.RemoteProtocolError):  # not an OSError, not an HfHubHTTPError
        api.upload_folder(repo_id=REPO, folder_path=folder)
    assert hub.wait_dead() == 1 and not hub.alive()
    with pytest.raises(httpx2.ConnectError):
        api.upload_folder(repo_id=REPO, folder_path=folder)

    hub.start()  # the Hub comes back, with its data, and nothing was committed
    assert api.model_info(REPO).sha == before
    assert api.upload_folder(repo_id=REPO, folder_path=folder).oid != before


class TinyNet(torch.nn.Module, PyTorchModelHubMixin):
    def __init__(self, n_in: int = 4, n_out: int = 2):
        super().__init__()
        self.fc = torch.nn.Linear(n_in, n_out)


def test_pytorch_model_hub_mixin_round_trip(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a local folder named like the repo would shadow the Hub
    model = TinyNet(n_in=3)
    model.push_to_hub(REPO, token=WRITE_TOKEN)
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in hub.repo_dir(REPO).iterdir()}

    loaded = TinyNet.from_pretrained(REPO)
    assert loaded.fc.in_features == 3
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
