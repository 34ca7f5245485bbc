"""Finding labelled photos in every layout users have, splitting them, decoding them once."""

import csv

import pytest
import torch
from imagegen import pet_photo, save_as, write_bad_files, write_kaggle_folder

from catsdogs.data import DataError, Photos, decode_photos, find_photos, split_photos


def names(photos: Photos) -> list[tuple[str, int]]:
    return sorted((p.name, y) for p, y in zip(photos.paths, photos.labels, strict=True))


def test_kaggle_flat_folder(tmp_path):
    write_kaggle_folder(tmp_path, per_class=3)
    (tmp_path / "notes.txt").write_text("ignored")
    photos, val = find_photos(tmp_path)
    assert val is None
    assert names(photos) == [(f"cat.{i}.jpg", 0) for i in range(3)] + [(f"dog.{i}.jpg", 1) for i in range(3)]


def test_class_subfolders_in_any_case_with_photos_from_phones(tmp_path):
    for folder, label in (("CATS", "cat"), ("Dog", "dog")):
        (tmp_path / folder / "nested").mkdir(parents=True)
        pet_photo(label, 1).save(tmp_path / folder / "a.png")
        pet_photo(label, 2).save(tmp_path / folder / "nested" / "b.JPG")
        save_as(pet_photo(label, 3), tmp_path / folder / "nested" / "IMG_0001.HEIC")  # an iPhone's
    photos, val = find_photos(tmp_path)
    assert val is None
    assert names(photos) == [("IMG_0001.HEIC", 0), ("IMG_0001.HEIC", 1), ("a.png", 0), ("a.png", 1), ("b.JPG", 0),
                             ("b.JPG", 1)]
    images, labels, skipped = decode_photos(photos, size=224)
    assert images.shape == (6, 3, 224, 224) and not skipped


def test_a_folder_unzipped_from_a_mac_trains_on_its_photos_only(tmp_path):
    """macOS zips carry a `._name` companion of every photo (its resource fork, not an image) and a __MACOSX folder;
    folder views leave thumbnail caches. None of them is a photo to train on or to report as unreadable."""
    for folder, label in (("cats", "cat"), ("dogs", "dog")):
        (tmp_path / folder / ".thumbnails").mkdir(parents=True)
        (tmp_path / "__MACOSX" / folder).mkdir(parents=True)
        pet_photo(label, 1).save(tmp_path / folder / "a.jpg")
        pet_photo(label, 2).save(tmp_path / folder / ".thumbnails" / "a.jpg")
        for fork in (tmp_path / folder / "._a.jpg", tmp_path / "__MACOSX" / folder / "._a.jpg"):
            fork.write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X        ")
    photos, val = find_photos(tmp_path)
    assert val is None and names(photos) == [("a.jpg", 0), ("a.jpg", 1)]
    images, labels, skipped = decode_photos(photos, size=64)
    assert len(images) == 2 and not skipped


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


def test_csv_with_unknown_columns(tmp_path):
    (tmp_path / "a.csv").write_text("name,kind\nx.jpg,cat\n")
    with pytest.raises(DataError, match="columns"):
        find_photos(tmp_path / "a.csv")


def test_csv_rows_with_a_bad_label_or_a_missing_image_are_skipped_and_listed_by_line(tmp_path, capsys):
    write_kaggle_folder(tmp_path, per_class=2)
    (tmp_path / "b.csv").write_text("path,label\ncat.0.jpg,cat\ndog.0.jpg,horse\n\ngone.jpg,dog\n"
                                    "cat.1.jpg\n,dog\ndog.1.jpg,1\n")
    photos, _ = find_photos(tmp_path / "b.csv")
    assert names(photos) == [("cat.0.jpg", 0), ("dog.1.jpg", 1)]
    warning = capsys.readouterr().err
    assert "skipped 4 of the 6 rows" in warning
    for line in ("line 3: label 'horse'", "line 5: image 'gone.jpg' not found", "line 6: label ''",
                 "line 7: no image path"):
        assert line in warning


def test_csv_with_no_usable_row_says_why(tmp_path):
    (tmp_path / "c.csv").write_text("image,label\nnope.jpg,cat\nnope2.jpg,dog\n")
    with pytest.raises(DataError, match=r"none of its 2 rows is usable .*line 2: image 'nope.jpg' not found"):
        find_photos(tmp_path / "c.csv")


def test_csv_saved_by_excel_with_a_byte_order_mark(tmp_path):
    write_kaggle_folder(tmp_path, per_class=1)
    (tmp_path / "excel.csv").write_bytes("image,label\r\ncat.0.jpg,cat\r\ndog.0.jpg,dog\r\n".encode("utf-8-sig"))
    assert find_photos(tmp_path / "excel.csv")[0].counts() == {"cat": 1, "dog": 1}


def test_csv_that_is_not_utf8_is_refused_with_the_line(tmp_path):
    write_kaggle_folder(tmp_path, per_class=1)
    (tmp_path / "latin.csv").write_bytes("image,label\ncat.0.jpg,cat\nchâton.jpg,cat\n".encode("cp1252"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe2 on line 3\).*CSV UTF-8"):
        find_photos(tmp_path / "latin.csv")


def test_a_utf16_csv_gets_the_conversion_that_fits_it(tmp_path):
    write_kaggle_folder(tmp_path, per_class=1)
    (tmp_path / "unicode.csv").write_bytes("image,label\ncat.0.jpg,cat\n".encode("utf-16"))  # with its byte-order mark
    with pytest.raises(DataError, match=r"is UTF-16 text, not UTF-8.*`iconv -f utf-16 -t utf-8 old.csv > new.csv`"):
        find_photos(tmp_path / "unicode.csv")


@pytest.mark.parametrize("body, message", [
    ('cat.0.jpg,cat\n"dog.0.jpg,dog\ncat.1.jpg,cat\n', r"line 3: not a well-formed CSV \(unexpected end of data\)"),
    ('cat.0.jpg,cat\n"dog.0.jpg,dog\ncat.1.jpg",cat\n', r"line 3: a quoted field runs over lines 3-4"),
    ('cat.0.jpg,cat\n"dog.0.jpg"x,dog\n', r"line 3: not a well-formed CSV"),
])
def test_malformed_csv_is_refused_with_the_line(tmp_path, body, message):
    write_kaggle_folder(tmp_path, per_class=2)
    (tmp_path / "bad.csv").write_text("image,label\n" + body)
    with pytest.raises(DataError, match=message):
        find_photos(tmp_path / "bad.csv")


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
