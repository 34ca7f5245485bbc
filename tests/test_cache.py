"""The decoded-photo cache: hit and miss by content, killed writes, several processes, unwritable folders, the CLI."""

import errno
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_same_training
from imagegen import pet_photo, write_bad_files, write_kaggle_folder

from catsdogs import cache
from catsdogs.cache import cache_key, decoded_photos
from catsdogs.config import TrainConfig
from catsdogs.data import find_photos, decode_photos
from catsdogs.evaluate import score
from catsdogs.preprocess import load_photo
from catsdogs.training import train


@pytest.fixture
def photos(tmp_path):
    folder = write_kaggle_folder(tmp_path / "photos", per_class=6)
    write_bad_files(folder)
    return find_photos(folder)[0]


def load(photos, cache_dir, **kwargs):
    return decoded_photos(photos, 64, workers=2, name="training", progress=False, cache_dir=cache_dir, **kwargs)


def assert_same_photos(got, expected) -> None:
    images, labels, skipped = expected
    assert torch.equal(got.images, images) and torch.equal(got.labels, labels) and got.skipped == skipped


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock")


def test_a_second_load_reads_the_cache_and_an_edited_photo_misses_it(photos, tmp_path):
    folder = tmp_path / "cache"
    reference = decode_photos(photos, 64, 2, progress=False)
    assert len(reference[2]) == 3  # the unreadable files are listed, from the cache too
    first = load(photos, folder)
    key = cache_key(photos, 64)
    assert first.source == f"decoded now, cached at {folder / key}.npy"
    assert_same_photos(first, reference)
    second = load(photos, folder)
    assert second.source == f"read from cache {folder / key}.npy"
    assert_same_photos(second, reference)
    assert files(folder) == [f"{key}.json", f"{key}.npy"]

    edited = photos.paths[0]  # same name and label, other pixels: the cache must not answer with the old ones
    pet_photo("cat", 1234).save(edited)
    third = load(photos, folder)
    assert third.source.startswith("decoded now") and cache_key(photos, 64) != key
    assert torch.equal(third.images[0], load_photo(edited, 64)) and not torch.equal(third.images[0], first.images[0])

    os.utime(photos.paths[1], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched only: the same pixels
    assert load(photos, folder).source.startswith("read from cache")
    assert load(photos, folder, cache=False).source == "decoded now, not cached (--no-cache)"
    assert len([name for name in files(folder) if name.endswith(".npy")]) == 2


def test_a_photo_replaced_with_its_size_and_times_kept_misses_the_cache(photos, tmp_path):
    """What `cp -p`, `rsync -t` and `tar` do: other content, the same name, size and modification time."""
    folder = tmp_path / "cache"
    first = load(photos, folder)
    cat = photos.paths[0]
    stat = cat.stat()
    other = io.BytesIO()
    pet_photo("dog", 999).save(other, "JPEG", quality=20)
    assert len(other.getvalue()) < stat.st_size
    cat.write_bytes(other.getvalue().ljust(stat.st_size, b"\0"))  # bytes after a JPEG's end are not read
    os.utime(cat, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (cat.stat().st_size, cat.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    again = load(photos, folder)
    assert again.source.startswith("decoded now")
    assert not torch.equal(again.images[0], first.images[0])
    assert torch.equal(again.images[0], load_photo(cat, 64))


@pytest.mark.parametrize("change", ["pixels", "labels"])
def test_a_cache_changed_on_disk_is_said_removed_and_decoded_again(photos, tmp_path, capsys, change):
    folder = tmp_path / "cache"
    reference = decode_photos(photos, 64, 2, progress=False)
    load(photos, folder)
    key = cache_key(photos, 64)
    if change == "pixels":  # the middle of the array overwritten, its size kept
        with open(folder / f"{key}.npy", "r+b") as array:
            array.seek(array.seek(0, os.SEEK_END) // 2)
            array.write(bytes(4096))
    else:  # every label flipped
        meta = json.loads((folder / f"{key}.json").read_text())
        (folder / f"{key}.json").write_text(json.dumps(meta | {"labels": [1 - y for y in meta["labels"]]}))
    capsys.readouterr()
    again = load(photos, folder)
    assert f"the photo cache {folder / key}.npy holds other {change} than it was written with" in \
        capsys.readouterr().err
    assert again.source.startswith("decoded now, cached at")
    assert_same_photos(again, reference)
    assert load(photos, folder).source.startswith("read from cache")


def test_a_killed_write_is_never_read(photos, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    key = cache_key(photos, 64)
    (folder / f"{key}.npy.tmp-999999").write_bytes(b"\x93NUMPY half a file")  # killed while decoding
    (folder / f"{key}.json").write_text(json.dumps({"labels": [0, 1], "skipped": []}))  # killed between the renames
    listed = {entry["key"]: entry["where"] for entry in cache.caches(folder)}
    assert listed == {key: "incomplete (a killed write)"}
    got = load(photos, folder)
    assert got.source.startswith("decoded now, cached at")
    assert_same_photos(got, decode_photos(photos, 64, 2, progress=False))
    assert files(folder) == [f"{key}.json", f"{key}.npy"]  # the leftover is gone


LOAD_IN_A_PROCESS = """
import hashlib, sys, torch
from catsdogs.data import find_photos
from catsdogs.loader import PhotoLoader
photos = PhotoLoader.load(find_photos(sys.argv[1])[0], 64, torch.device("cpu"), "training", 1, True)
print("hash", hashlib.sha256(photos.images.numpy().tobytes() + photos.labels.numpy().tobytes()).hexdigest())
"""


def test_two_processes_started_together_write_one_cache_and_get_the_same_photos(tmp_path):
    data = write_kaggle_folder(tmp_path / "photos", per_class=40)
    folder = tmp_path / "cache"
    env = {**os.environ, "CATSDOGS_CACHE_DIR": str(folder)}
    processes = [subprocess.Popen([sys.executable, "-c", LOAD_IN_A_PROCESS, str(data)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    sources = sorted(line for out, _ in outputs for line in out.splitlines()
                     if line.startswith(("training photos: decoded", "training photos: read")))
    hashes = {line for out, _ in outputs for line in out.splitlines() if line.startswith("hash")}
    assert len(hashes) == 1  # bit-identical photos in both
    assert sources[0].startswith("training photos: decoded now, cached at ")  # exactly one decoded...
    assert sources[1].startswith("training photos: read from cache ")  # ...the other waited, or came after
    assert len(files(folder)) == 2 and not list(folder.glob("*.tmp-*"))


def test_a_cache_folder_that_cannot_be_written_says_so_once_and_decodes_in_memory(photos, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # fails for root too, unlike a chmod
    got = load(photos, blocker / "cache")
    assert got.source == "decoded now, not cached (Not a directory)"
    assert_same_photos(got, decode_photos(photos, 64, 2, progress=False))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: cannot write the photo cache in {blocker / 'cache'} (Not a directory): decoding "
                        "the photos in memory for this run. Pass --cache-dir (or set CATSDOGS_CACHE_DIR) to a folder "
                        "with room, or --no-cache to silence this"]


def test_a_full_disk_leaves_no_half_cache(photos, tmp_path, monkeypatch, capsys):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache.os, "posix_fallocate", full)
    folder = tmp_path / "cache"
    got = load(photos, folder)
    assert got.source == "decoded now, not cached (No space left on device)"
    assert_same_photos(got, decode_photos(photos, 64, 2, progress=False))
    assert "(No space left on device): decoding the photos in memory" in capsys.readouterr().err
    assert files(folder) == []  # no array, no labels, no temporary: only the lock file


def test_the_same_seed_gives_the_same_weights_with_and_without_the_cache(tmp_path, capsys):
    data = write_kaggle_folder(tmp_path / "photos", per_class=8)
    recipe = dict(data=str(data), val_fraction=0.25, epochs=2, batch_size=4, cache_dir=str(tmp_path / "cache"),
                  memory_format="channels_last")  # compared bit for bit: no measured choice of layout
    runs = {}
    for name, cached in (("miss", True), ("hit", True), ("off", False)):
        train(TrainConfig(output=str(tmp_path / name / "weights"), cache=cached,
                          checkpoint=str(tmp_path / name / "ck" / "last.safetensors"), **recipe), command="test")
        runs[name] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("training photos:")]
    assert runs["miss"][1].startswith("training photos: decoded now, cached at")
    assert runs["hit"][1].startswith("training photos: read from cache")
    assert runs["off"][1] == "training photos: decoded now, not cached (--no-cache)"
    assert_same_training(tmp_path / "hit", tmp_path / "off")
    assert_same_training(tmp_path / "miss", tmp_path / "off")

    # evaluate re-creates the validation split and reads its photos from the cache training wrote
    scores = score(tmp_path / "hit" / "weights", data, split="validation", progress=True, cache_dir=tmp_path / "cache")
    assert len(scores.labels) == json.loads((tmp_path / "hit" / "weights" / "metrics.json").read_text())["n_val"]
    assert f"validation photos: read from cache {tmp_path / 'cache'}/" in capsys.readouterr().err


def test_the_cli_lists_and_removes_caches(tmp_path, capsys):
    folder = tmp_path / "cache"
    old, new = (find_photos(write_kaggle_folder(tmp_path / name, per_class=3))[0] for name in ("old", "new"))
    load(old, folder), load(new, folder)
    (folder / "0123abcd.npy.tmp-999999").write_bytes(b"killed")
    month_ago = time.time() - 31 * 86400
    os.utime(folder / f"{cache_key(old, 64)}.json", (month_ago, month_ago))

    listing = subprocess.run([sys.executable, "-m", "catsdogs.cache", "--cache-dir", str(folder)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].startswith(f"3 photo caches in {folder}, ")
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {cache_key(old, 64), cache_key(new, 64), "0123abcd"}
    assert " 6 " in rows[cache_key(old, 64)] and "31 days ago" in rows[cache_key(old, 64)]
    assert str(tmp_path / "new") in rows[cache_key(new, 64)] and "incomplete" in rows["0123abcd"]

    assert cache.main(["--cache-dir", str(folder), "--older-than", "30"]) == 0
    assert capsys.readouterr().out.startswith("removed 1 of 3 caches")
    assert files(folder) == sorted([f"{cache_key(new, 64)}.json", f"{cache_key(new, 64)}.npy",
                                    "0123abcd.npy.tmp-999999"])
    assert cache.main(["--cache-dir", str(folder), "--clear"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 of 2 caches")
    assert list(folder.iterdir()) == []
