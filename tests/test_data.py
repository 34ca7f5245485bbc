"""Finding labelled photos in every layout users have, splitting them, decoding them once."""

import csv

import pytest
import torch
from imagegen import pet_photo, write_bad_files, write_kaggle_folder

from catsdogs.data import DataError, Photos, decode_photos, find_photos, split_photos


def names(photos: Photos) -> list[tuple[str, int]]:
    return sorted((p.name, y) for p, y in zip(photos.paths, photos.labels, strict=True))


def test_kaggle_flat_folder(tmp_path):
    write_kaggle_folder(tmp_path, per_class=3)
    (tmp_path / "notes.txt").write_text("ignored")
    photos, val = find_photos(tmp_path)
    assert val is None
    assert names(photos) == [(f"cat.{i}.jpg", 0) for i in range(3)] + [(f"dog.{i}.jpg", 1) for i in range(3)]


def test_class_subfolders_in_any_case(tmp_path):
    for folder, label in (("CATS", "cat"), ("Dog", "dog")):
        (tmp_path / folder / "nested").mkdir(parents=True)
        pet_photo(label, 1).save(tmp_path / folder / "a.png")
        pet_photo(label, 2).save(tmp_path / folder / "nested" / "b.JPG")
    photos, val = find_photos(tmp_path)
    assert val is None
    assert names(photos) == [("a.png", 0), ("a.png", 1), ("b.JPG", 0), ("b.JPG", 1)]


def test_train_and_test_folders_of_the_seed_000_layout(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for label in ("cats", "dogs"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(n):
                pet_photo(label[:3], i).save(tmp_path / split / label / f"{i}.jpg")
    train, val = find_photos(tmp_path)
    assert train.counts() == {"cat": 3, "dog": 3}
    assert val.counts() == {"cat": 2, "dog": 2}
    assert all("test" in p.parts for p in val.paths)


def test_kaggle_download_with_unlabelled_test1(tmp_path):
    write_kaggle_folder(tmp_path / "train", per_class=2)
    (tmp_path / "test1").mkdir()
    pet_photo("cat", 5).save(tmp_path / "test1" / "1.jpg")
    train, val = find_photos(tmp_path)
    assert train.counts() == {"cat": 2, "dog": 2} and val is None


@pytest.mark.parametrize("labels", [("0", "1"), ("cat", "dog"), ("Cats", "DOGS")])
def test_csv_of_paths_and_labels(tmp_path, labels):
    images = write_kaggle_folder(tmp_path / "cat_dog", per_class=2)  # the seed 003 dataset: cat_dog.csv + cat_dog/
    rows = [(f"cat.{i}.jpg", labels[0]) for i in range(2)] + [(f"dog.{i}.jpg", labels[1]) for i in range(2)]
    rows.append((str(images / "dog.0.jpg"), labels[1]))  # absolute paths work too
    with open(tmp_path / "cat_dog.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "labels"), *rows])
    photos, val = find_photos(tmp_path / "cat_dog.csv")
    assert val is None
    assert photos.counts() == {"cat": 2, "dog": 3}
    assert all(p.is_file() for p in photos.paths)


def test_csv_with_unknown_columns_or_labels(tmp_path):
    (tmp_path / "a.csv").write_text("name,kind\nx.jpg,cat\n")
    with pytest.raises(DataError, match="columns"):
        find_photos(tmp_path / "a.csv")
    write_kaggle_folder(tmp_path, per_class=1)
    (tmp_path / "b.csv").write_text("path,label\ncat.0.jpg,cat\ndog.0.jpg,horse\n")
    with pytest.raises(DataError, match="horse"):
        find_photos(tmp_path / "b.csv")


def test_empty_folder_says_what_it_found(tmp_path):
    (tmp_path / "holiday").mkdir()
    pet_photo("cat", 1).save(tmp_path / "holiday" / "IMG_0001.jpg")
    with pytest.raises(DataError, match=r"no labelled photos .* 1 image files .*holiday"):
        find_photos(tmp_path)


def test_one_class_stops_at_once(tmp_path):
    (tmp_path / "cats").mkdir()
    pet_photo("cat", 1).save(tmp_path / "cats" / "1.jpg")
    with pytest.raises(DataError, match="only one class .* 1 cat and 0 dog"):
        find_photos(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_photos(tmp_path / "nope")


def test_split_is_deterministic_stratified_and_disjoint(tmp_path):
    photos = Photos([tmp_path / f"{c}.{i}.jpg" for c in ("cat", "dog") for i in range(50)], [0] * 50 + [1] * 50)
    train, val = split_photos(photos, 0.2, seed=0)
    again_train, again_val = split_photos(photos, 0.2, seed=0)
    assert names(val) == names(again_val) and names(train) == names(again_train)
    assert val.counts() == {"cat": 10, "dog": 10}
    assert not set(train.paths) & set(val.paths)
    assert len(train) + len(val) == 100
    assert names(split_photos(photos, 0.2, seed=1)[1]) != names(val)
    with pytest.raises(DataError):
        split_photos(photos, 1.5, seed=0)


def test_unreadable_files_are_skipped_and_listed(tmp_path):
    write_kaggle_folder(tmp_path, per_class=2)
    bad = write_bad_files(tmp_path)
    photos, _ = find_photos(tmp_path)
    images, labels, skipped = decode_photos(photos, size=224)
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1]
    assert sorted(path for path, _ in skipped) == sorted(bad)
    assert all(reason for _, reason in skipped)
