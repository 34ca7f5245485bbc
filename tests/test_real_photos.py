"""Integration on the real Kaggle photos in ../shared/data."""

import json
import subprocess
import sys

import torch
from conftest import ROOT

from catsdogs.data import decode_photos, find_photos, split_photos
from catsdogs.preprocess import load_photo


def test_the_kaggle_training_set_is_found_and_split(shared_data):
    photos, val = find_photos(shared_data / "dogs-vs-cats-200")  # holds train/ with Kaggle's flat names
    assert val is None
    assert photos.counts() == {"cat": 11_500, "dog": 11_500}
    train, val = split_photos(photos, 0.1, seed=0)
    assert val.counts() == {"cat": 1_150, "dog": 1_150} and len(train) == 20_700
    assert not {p.name for p in train.paths} & {p.name for p in val.paths}
    assert [p.name for p in split_photos(photos, 0.1, seed=0)[1].paths] == [p.name for p in val.paths]


def test_full_size_photos_decode_for_training_exactly_as_for_the_app(shared_data):
    """Training and evaluation decode with decode_photos, the app with load_photo: the same tensor, every photo."""
    photos, _ = find_photos(shared_data / "dogs-vs-cats-fullres-sample")
    assert photos.counts() == {"cat": 100, "dog": 100}
    images, labels, skipped = decode_photos(photos, 224, progress=False)
    assert skipped == [] and images.shape == (200, 3, 224, 224) and images.dtype == torch.uint8
    assert labels.tolist() == [0 if p.name.startswith("cat") else 1 for p in photos.paths]
    assert images.float().std() > 30  # real photos, not blank tensors
    for path, image in zip(photos.paths, images, strict=True):
        assert torch.equal(image, load_photo(path, 224)), path


def test_train_py_on_real_photos_listed_in_a_csv(shared_data, tmp_path):
    """The seed-003 layout (a CSV of path, 0/1 label) over real Kaggle JPEGs, end to end through train.py."""
    photos = shared_data / "dogs-vs-cats-200" / "train"
    rows = [f"{photos / f'{kind}.{i}.jpg'},{label}" for kind, label in (("cat", 0), ("dog", 1)) for i in range(12)]
    (tmp_path / "cat_dog.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    result = subprocess.run(
        [sys.executable, "train.py", "--data", str(tmp_path / "cat_dog.csv"), "--val-fraction", "0.25", "--epochs", "1",
         "--batch-size", "9", "--memory-format", "channels_last", "--output", str(tmp_path / "weights"),
         "--checkpoint", str(tmp_path / "ck.safetensors")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "weights" / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_val"], metrics["skipped_files"]) == (18, 6, [])
    assert metrics["train_counts"] == {"cat": 9, "dog": 9}
