"""Training and evaluating from a dataset on the Hub (`--data hf://datasets/OWNER/NAME`), against the Hub-compatible
server on 127.0.0.1 (tests/hub_server.py) and the real huggingface_hub client: generated dataset repos laid out as
the Hub lays them out (parquet with an image column, as microsoft/cats_vs_dogs; an image folder)."""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import EASY_TASK, READ_TOKEN, WRITE_TOKEN
from huggingface_hub import HfApi
from imagegen import jpeg_bytes, write_hub_image_folder, write_hub_parquet

from catsdogs.cache import cache_key, decoded_photos
from catsdogs.data import DataError, ParquetPhoto, choose_split
from catsdogs.hub import HubError
from catsdogs.loader import find
from catsdogs.preprocess import load_photo

ROOT = Path(__file__).resolve().parents[1]
REPO = "tester/pets"
DATA = f"hf://datasets/{REPO}"
SIZE = 32  # decode small: the tests check which photo lands where, not the network's input size


def publish(folder: Path, repo_id: str = REPO) -> str:
    """Upload `folder` as a commit of the dataset repo `repo_id` (created when missing); the commit's sha."""
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    return api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder).oid


def expected_photo(row: int, per_class: int, start: int = 0) -> tuple[torch.Tensor, int]:
    """The pixels and label write_hub_parquet put in row `row` (rows alternate cat, dog)."""
    index, label = start + row // 2, row % 2
    return load_photo(io.BytesIO(jpeg_bytes(("cat", "dog")[label], index)), SIZE), label


def test_parquet_photos_are_decoded_from_the_right_rows_once(hub, tmp_path):
    commit = publish(write_hub_parquet(tmp_path / "repo", per_class=20, shards=2, row_group=16))
    found = find(DATA)
    snapshot = found.hub_dataset
    assert snapshot.commit == commit and "downloaded" in snapshot.source
    photos, own_val = found.photos, found.layout_val
    assert own_val is None and photos.counts() == {"cat": 20, "dog": 20}
    assert all(isinstance(p, ParquetPhoto) for p in photos.paths)
    assert photos.paths[0].identity == f"{DATA}@{commit}/train/data/train-00000-of-00002.parquet row 0"

    decoded = decoded_photos(photos, SIZE, workers=4, name="training", progress=False, cache_dir=tmp_path / "cache")
    assert "decoded now" in decoded.source
    assert [(str(p), r.split(":")[0]) for p, r in decoded.skipped] == [
        ("data/train-00000-of-00002.parquet row 0", "UnidentifiedImageError")]
    assert len(decoded.labels) == 39
    for i, (images, label) in enumerate(zip(decoded.images, decoded.labels, strict=True)):  # every row, 2 files,
        pixels, true_label = expected_photo(i + 1, 20)  # 3 row groups: each photo is the one its row holds
        assert torch.equal(images, pixels) and label == true_label, f"row {i + 1}"
    again = decoded_photos(photos, SIZE, workers=4, name="training", progress=False, cache_dir=tmp_path / "cache")
    assert again.source.startswith("read from cache") and torch.equal(again.images, decoded.images)
    assert [str(p) for p, _ in again.skipped] == ["data/train-00000-of-00002.parquet row 0"]


def test_a_pinned_revision_gives_its_own_photos_and_cache_key(hub, tmp_path):
    first = publish(write_hub_parquet(tmp_path / "v1", per_class=10, shards=1))
    second = publish(write_hub_parquet(tmp_path / "v2", per_class=12, shards=1, start=100))
    pinned, latest = find(DATA, revision=first), find(DATA)
    assert (pinned.hub_dataset.commit, latest.hub_dataset.commit) == (first, second)
    old, new = pinned.photos, latest.photos
    assert (len(old), len(new)) == (20, 24)
    assert cache_key(old, SIZE) != cache_key(new.subset(list(range(20))), SIZE)  # same files and rows, other commit
    split = choose_split(pinned, val_fraction=0.25, seed=0)  # the one validation decision applies unchanged
    assert (len(split.train), len(split.val)) == (16, 4) and split.hub_dataset == pinned.hub_dataset
    assert f"of split 'train' of {DATA}" in split.source


def test_the_second_run_reads_the_hubs_cache_when_the_hub_is_down(hub, tmp_path):
    commit = publish(write_hub_parquet(tmp_path / "repo", per_class=6, shards=1))
    online = find(DATA).photos
    hub.kill()
    started = time.monotonic()
    offline = find(DATA)
    assert time.monotonic() - started < 5
    assert offline.hub_dataset.commit == commit and "cannot be reached" in offline.hub_dataset.source
    assert offline.photos == online
    assert find(DATA, revision=commit).hub_dataset.commit == commit
    started = time.monotonic()
    with pytest.raises(HubError, match=r"cannot reach the Hub at http://127.0.0.1:\d+ \(ConnectError\) to fetch "
                                        r"hf://datasets/tester/never-fetched \(split train\), and it is not in the "
                                        r"Hub's cache"):
        find("hf://datasets/tester/never-fetched")
    assert time.monotonic() - started < 5


def test_a_split_never_fetched_is_not_taken_from_a_partial_cache(hub, tmp_path):
    folder = write_hub_parquet(tmp_path / "repo", per_class=2, shards=1, unreadable=0)
    (folder / "data" / "train-00000-of-00001.parquet").rename(folder / "data" / "test-00000-of-00001.parquet")
    write_hub_parquet(folder, per_class=2, shards=1, unreadable=0)
    publish(folder)
    find(DATA)  # fetches only the train split's files
    hub.kill()
    with pytest.raises(HubError, match=r"\(split test\), and only part of it is in the Hub's cache"):
        find(DATA, split="test")


def test_a_private_dataset_needs_a_token_that_can_read_it(hub, tmp_path, monkeypatch):
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo("tester/secret", repo_type="dataset", private=True)
    api.upload_folder(repo_id="tester/secret", repo_type="dataset",
                      folder_path=write_hub_parquet(tmp_path / "repo", per_class=2, shards=1, unreadable=0))
    with pytest.raises(HubError, match="no dataset repo tester/secret on the Hub at .* run `hf auth login` or set "
                                       "HF_TOKEN to a token with read access"):
        find("hf://datasets/tester/secret")
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    assert find("hf://datasets/tester/secret").photos.counts() == {"cat": 2, "dog": 2}


def write_other_classes(folder: Path) -> Path:
    return write_hub_parquet(folder, per_class=3, classes=("bird", "cat", "dog"), shards=1, unreadable=0)


@pytest.mark.parametrize("data, revision, split, message", [
    ("hf://datasets/tester/nothing", None, "train", "no dataset repo tester/nothing on the Hub at http://127.0.0.1:"),
    (DATA, "v9", "train", "the dataset repo tester/pets has no revision 'v9' (a branch, tag or commit)"),
    (DATA, None, "test", "has no split 'test': no test-*.parquet file and no test/ folder. Its files: .gitattributes, "
                         "README.md, data/train-00000-of-00001.parquet"),
    ("hf://tester/pets", None, "train", "hf://tester/pets is not a Hub dataset: spell it hf://datasets/OWNER/NAME"),
    ("hf://datasets/tester/birds", None, "train", "(split train): the labels in column 'labels': found 3 classes "
                                                  "['bird', 'cat', 'dog']; a cat-vs-dog model needs exactly two"),
])
def test_datasets_that_cannot_be_used_are_refused_with_what_was_found(hub, tmp_path, data, revision, split, message):
    publish(write_hub_parquet(tmp_path / "pets", per_class=2, shards=1, unreadable=0))
    publish(write_other_classes(tmp_path / "birds"), "tester/birds")
    with pytest.raises((DataError, HubError)) as error:
        find(data, revision, split)
    assert message in str(error.value)


def test_a_local_path_takes_no_hub_revision(tmp_path):
    with pytest.raises(DataError, match="--data-revision and --data-split only apply to Hub datasets"):
        find(tmp_path, revision="main")


@pytest.mark.parametrize("path", ["train.parquet", "default/train/0000.parquet"])  # the latter: refs/convert/parquet
def test_string_labels_and_plain_image_bytes(hub, tmp_path, path):
    rows = [("Cats", jpeg_bytes("cat", i)) for i in range(3)] + [("Dogs", jpeg_bytes("dog", i)) for i in range(3)]
    (tmp_path / "repo" / path).parent.mkdir(parents=True)
    pq.write_table(pa.table({"img": [b for _, b in rows], "category": [c for c, _ in rows]}), tmp_path / "repo" / path)
    publish(tmp_path / "repo")
    photos = find(DATA).photos
    assert photos.labels == [0, 0, 0, 1, 1, 1]
    decoded = decoded_photos(photos, SIZE, workers=2, name="training", progress=False, cache=False)
    assert torch.equal(decoded.images[4], load_photo(io.BytesIO(rows[4][1]), SIZE))


def test_an_image_folder_dataset(hub, tmp_path):
    commit = publish(write_hub_image_folder(tmp_path / "repo", per_class=5))
    found = find(DATA)
    snapshot, photos = found.hub_dataset, found.photos
    assert photos.counts() == {"cat": 5, "dog": 5} and snapshot.commit == commit
    assert all(Path(p).is_relative_to(snapshot.folder / "train") for p in photos.paths)  # read in the Hub's cache
    (tmp_path / "birds" / "train" / "bird").mkdir(parents=True)
    write_hub_image_folder(tmp_path / "birds", per_class=1)
    (tmp_path / "birds" / "train" / "bird" / "0.jpg").write_bytes(jpeg_bytes("cat", 0))
    publish(tmp_path / "birds", "tester/birds")
    with pytest.raises(DataError, match=r"the sub-folders of train/: found 3 classes \['bird', 'cat', 'dog'\]"):
        find("hf://datasets/tester/birds")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})


def test_train_and_evaluate_from_the_hub_then_offline(hub, tmp_path):
    commit = publish(write_hub_parquet(tmp_path / "repo", per_class=40, split="pets"))
    publish(write_hub_parquet(tmp_path / "later", per_class=2, split="pets", unreadable=0))  # main moves on
    out = tmp_path / "weights"
    recipe = [f"--{k.replace('_', '-')}={v}" for k, v in {**EASY_TASK, "epochs": 1}.items()]  # learnt in one
    hub_flags = ["--data-revision", commit, "--data-split", "pets"]
    trained = run("train.py", "--data", DATA, *hub_flags, *recipe, "--output", str(out),
                  "--cache-dir", str(tmp_path / "c"))
    assert trained.returncode == 0, trained.stderr
    assert f"data: {DATA}@{commit[:10]} (split pets), downloaded into the Hub's cache" in trained.stdout
    assert "skipped 1 unreadable training files:\n  data/pets-00000-of-00002.parquet row 0: Unidentified" \
        in trained.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hub_dataset"] == {"id": REPO, "revision": commit, "split": "pets"}
    assert (metrics["config"]["data_revision"], metrics["config"]["data_split"]) == (commit, "pets")
    assert metrics["best_val_accuracy"] >= 0.9  # it learnt from the parquet photos, labels and all
    card = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert card["datasets"] == [REPO]
    results = card["model-index"][0]["results"][0]
    assert results["dataset"] == {"type": REPO, "name": REPO, "split": "pets", "revision": commit}
    assert f"--data {DATA} --data-revision {commit} --data-split pets --split validation" in \
        (out / "README.md").read_text()

    hub.kill()  # from here on, only the Hub's cache and the decoded-photo cache
    evaluated = run("-m", "catsdogs.evaluate", "--model", str(out), "--data", DATA, *hub_flags, "--split",
                    "validation", "--cache-dir", str(tmp_path / "c"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["accuracy"] == pytest.approx(metrics["best_val_accuracy"], abs=1e-9)
    assert report["data"] == f"{DATA}@{commit[:10]} (split pets)"
    assert "validation photos: read from cache" in evaluated.stderr

    started = time.monotonic()
    refused = run("train.py", "--data", "hf://datasets/tester/never-fetched", "--output", str(tmp_path / "x"))
    assert refused.returncode == 2 and time.monotonic() - started < 60  # mostly Python and PyTorch starting
    assert refused.stderr.startswith("error: cannot reach the Hub at") and "Traceback" not in refused.stderr
