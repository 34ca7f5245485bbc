"""The decoded-photo cache: every photo list decoded once into a file that every later run, and every process of a
run, maps read-only.

    python -m catsdogs.cache                       # list the caches: photos, size, age, where the photos were
    python -m catsdogs.cache --older-than 30       # remove those not used for 30 days
    python -m catsdogs.cache --clear               # remove them all

One photo list (training or validation photos, in order) at one input size is one file, `KEY.npy`: the photos
that could be read as a raw uint8 (N, 3, S, S) array in NumPy's .npy format, and beside it `KEY.json` with their
labels, the files that were skipped and why, where the photos were, and checksums of the array and of the labels.
KEY is a hash of everything that decides the content: each photo's absolute path, label and content (a fast
xxHash of the file's bytes; for a Hub dataset's parquet cell: the dataset id, commit sha, split, file and row,
which never change), the input size, DECODER_VERSION and Pillow's version, so an edited, added or removed photo
makes a new file and a stale one is never read, whatever the files' times say. A cache whose array or labels no
longer match their checksums (changed on disk) is said so, removed and decoded again.

A write goes to temporary names in the cache folder, then `os.replace`s the JSON and then the array into place:
a run killed while writing leaves only temporaries, which are never read (the next writer removes them). An
exclusive `flock` on `KEY.lock` lets one process decode while the others of a `torchrun` launch wait, then all
map the same file. A cache folder that cannot be written (read-only, full, a file in the way) gives one message
and the photos are decoded in memory for that run, as with `--no-cache`.
"""

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
import xxhash
from numpy.lib import format as npy_format

from catsdogs.data import ParquetPhoto, Photos, decode_into, decode_photos

DECODER_VERSION = 1  # bump whenever preprocess.load_photo could give other pixels for the same file
ENV_DIR = "CATSDOGS_CACHE_DIR"
_COPY_ROWS = 256  # photos copied at a time when the skipped photos are squeezed out


def default_dir() -> Path:
    """$CATSDOGS_CACHE_DIR, else $XDG_CACHE_HOME/catsdogs, else ~/.cache/catsdogs."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "catsdogs"


def cache_key(photos: Photos, size: int, workers: int = 8) -> str:
    """A hash of what decides the decoded photos: each file's path, label and content; the size; the decoder."""
    digest = hashlib.sha256(f"catsdogs-photos v{DECODER_VERSION} pillow {PIL.__version__} size {size}\n".encode())
    with ThreadPoolExecutor(max_workers=workers) as pool:  # reading the files dominates; xxHash releases the GIL
        identities = pool.map(_identity, photos.paths)
        for identity, label in zip(identities, photos.labels, strict=True):
            digest.update(f"{identity}\t{label}\n".encode())
    return digest.hexdigest()[:24]


def _identity(path: Path | ParquetPhoto) -> str:
    """A photo's path and a hash of its bytes; a parquet cell's identity (a commit's files never change)."""
    if isinstance(path, ParquetPhoto):
        return path.identity
    path = Path(path).absolute()
    try:
        return f"{path}\t{xxhash.xxh3_128_hexdigest(path.read_bytes())}"
    except OSError as error:  # decoding will skip it; if it comes back, the key changes
        return f"{path}\tunreadable {error.errno}"


def checksum(array: np.ndarray) -> str:
    """xxHash of an array's bytes (a mapped file is read once, at memory speed)."""
    return xxhash.xxh3_128_hexdigest(memoryview(np.ascontiguousarray(array)).cast("B"))


@dataclass
class CachedPhotos:
    images: torch.Tensor  # uint8 (N, 3, S, S); backed by the mapped cache file, or in memory when not cached
    labels: torch.Tensor
    skipped: list[tuple[Path, str]]
    source: str  # where they came from, in words: "decoded now, cached at PATH", "read from cache PATH", ...


class CacheUnavailable(Exception):
    """The cache folder cannot be written; the message says why and what the run does instead."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def decoded_photos(photos: Photos, size: int, workers: int, name: str, progress: bool, cache: bool = True,
                   cache_dir: str | Path | None = None) -> CachedPhotos:
    """The photos decoded to uint8 at `size`: from the cache when it holds them, else decoded now (and cached)."""
    if not cache:
        images, labels, skipped = decode_photos(photos, size, workers, desc=f"decoding {name} photos",
                                                progress=progress)
        return CachedPhotos(images, labels, skipped, "decoded now, not cached (--no-cache)")
    folder = Path(cache_dir).expanduser() if cache_dir else default_dir()
    key = cache_key(photos, size, workers)
    try:
        return _from_cache(photos, size, workers, name, progress, folder, key)
    except CacheUnavailable as error:
        print(f"warning: {error}", file=sys.stderr)
        images, labels, skipped = decode_photos(photos, size, workers, desc=f"decoding {name} photos",
                                                progress=progress)
        return CachedPhotos(images, labels, skipped, f"decoded now, not cached ({error.reason})")


def _from_cache(photos: Photos, size: int, workers: int, name: str, progress: bool, folder: Path,
                key: str) -> CachedPhotos:
    array, meta = folder / f"{key}.npy", folder / f"{key}.json"
    found = _read_intact(array, meta, size)
    if found is not None:
        return CachedPhotos(*found, f"read from cache {array}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{key}.lock", "a")  # noqa: SIM115 (held until the file is in place)
    except OSError as error:
        raise _unavailable(folder, error) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process of this launch may be writing it: wait for it
        found = _read_intact(array, meta, size)
        if found is not None:
            return CachedPhotos(*found, f"read from cache {array} (written by another process)")
        for leftover in folder.glob(f"{key}.*.tmp-*"):  # a killed writer's: nobody else writes while we hold the lock
            leftover.unlink(missing_ok=True)
        _write(photos, size, workers, name, progress, folder, key)
    found = _read_intact(array, meta, size)
    if found is None:  # removed between the write and the read, e.g. by `python -m catsdogs.cache --clear`
        raise CacheUnavailable(f"the photo cache {array} vanished just after it was written (removed by another "
                               "process?): decoding the photos in memory for this run", "cache removed")
    return CachedPhotos(*found, f"decoded now, cached at {array}")


class CacheChanged(Exception):
    """A whole cache whose array or labels no longer match the checksums written with them."""


def _read_intact(array: Path, meta: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list] | None:
    """The cache when it is whole and unchanged; a changed one is removed (and so decoded again), saying why."""
    try:
        return _read(array, meta, size)
    except CacheChanged as changed:
        print(f"warning: the photo cache {array} {changed}: it was changed on disk after it was written. Removing "
              "it and decoding the photos again", file=sys.stderr)
        for path in (array, meta):
            path.unlink(missing_ok=True)
        return None


def _unavailable(folder: Path, error: OSError) -> CacheUnavailable:
    why = error.strerror or str(error)
    return CacheUnavailable(f"cannot write the photo cache in {folder} ({why}): decoding the photos in memory for "
                            f"this run. Pass --cache-dir (or set {ENV_DIR}) to a folder with room, or --no-cache "
                            "to silence this", why)


def _read(array: Path, meta: Path, size: int) -> tuple[torch.Tensor, torch.Tensor, list] | None:
    """The cached photos mapped copy-on-write (the file is never written), or None when there is no whole cache.
    CacheChanged when the array or the labels do not match their checksums."""
    try:
        info = json.loads(meta.read_text())
        images = np.load(array, mmap_mode="c")
        if images.dtype != np.uint8 or images.shape != (len(info["labels"]), 3, size, size):
            return None
        skipped = [(Path(path), reason) for path, reason in info["skipped"]]
        labels = np.array(info["labels"], dtype=np.int64)
        expected = info["checksums"]
    except (OSError, ValueError, KeyError, TypeError):  # no file, half a file, or not ours
        return None
    if checksum(labels) != expected["labels"]:
        raise CacheChanged("holds other labels than it was written with")
    if checksum(images) != expected["images"]:
        raise CacheChanged("holds other pixels than it was written with")
    try:
        os.utime(meta)  # "last used", for --older-than
    except OSError:
        pass
    return torch.from_numpy(images), torch.from_numpy(labels), skipped


def _write(photos: Photos, size: int, workers: int, name: str, progress: bool, folder: Path, key: str) -> None:
    """Decode straight into a temporary file, then put the metadata and the array in place; no half file is left."""
    temporary = [folder / f"{key}.npy.tmp-{os.getpid()}", folder / f"{key}.json.tmp-{os.getpid()}"]
    try:
        target = _allocate(temporary[0], len(photos), size)
        ok, skipped = decode_into(photos, torch.from_numpy(target), workers, f"decoding {name} photos", progress)
        labels = torch.tensor(photos.labels, dtype=torch.long)[ok]
        if skipped:  # squeeze the unreadable ones out: a second file of the readable photos only
            readable = ok.numpy()
            squeezed = folder / f"{key}.npy.tmp-{os.getpid()}-squeezed"
            temporary.append(squeezed)
            out = _allocate(squeezed, int(readable.sum()), size)
            rows = np.flatnonzero(readable)
            for start in range(0, len(rows), _COPY_ROWS):
                chunk = rows[start:start + _COPY_ROWS]
                out[start:start + len(chunk)] = target[chunk]
            del target
            if isinstance(out, np.memmap):  # not when no photo could be read
                out.flush()
            del out
            os.replace(squeezed, temporary[0])
        else:
            if isinstance(target, np.memmap):  # not for an empty photo list
                target.flush()
            del target
        written = np.load(temporary[0], mmap_mode="r")
        checksums = {"images": checksum(written), "labels": checksum(labels.numpy())}
        del written
        temporary[1].write_text(json.dumps({
            "key": key, "size": size, "decoder_version": DECODER_VERSION, "pillow": PIL.__version__,
            "created": time.time(), "photos": len(labels), "labels": labels.tolist(), "checksums": checksums,
            "skipped": [[str(path), reason] for path, reason in skipped], "where": _where(photos),
        }))
        os.replace(temporary[1], folder / f"{key}.json")  # first the labels, then the array: the array says "whole"
        os.replace(temporary[0], folder / f"{key}.npy")
    except OSError as error:
        raise _unavailable(folder, error) from None
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)


def _allocate(path: Path, n: int, size: int) -> np.memmap:
    """A new .npy file of n uint8 photos, its blocks reserved now: a full disk fails here with ENOSPC, not later
    with SIGBUS in the middle of writing through the mapping."""
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n, 3, size, size)})
        offset = f.tell()
        if n:
            os.posix_fallocate(f.fileno(), 0, offset + n * 3 * size * size)
        else:
            f.truncate(offset)
    if not n:
        return np.zeros((0, 3, size, size), np.uint8)
    return np.memmap(path, np.uint8, "r+", offset, (n, 3, size, size))


def _where(photos: Photos) -> str:
    """The folder the photos share, as the listing shows it."""
    try:
        folders = [str(p.file.parent if isinstance(p, ParquetPhoto) else Path(p).absolute().parent)
                   for p in photos.paths]
        return os.path.commonpath(folders) if folders else ""
    except ValueError:  # paths on different drives
        return ""


# --- python -m catsdogs.cache ---


def caches(folder: Path) -> list[dict]:
    """Every whole cache in `folder` (photos, bytes, created, last used, where), and leftovers of killed writes."""
    found = []
    for meta in sorted(folder.glob("*.json")):
        array = meta.with_suffix(".npy")
        try:
            info = json.loads(meta.read_text())
            found.append({"key": meta.stem, "photos": info["photos"], "size": info["size"],
                          "bytes": array.stat().st_size + meta.stat().st_size, "created": info["created"],
                          "used": meta.stat().st_mtime, "where": info.get("where", ""),
                          "files": [array, meta]})
        except (OSError, ValueError, KeyError):  # a JSON without its array: a write killed between the renames
            found.append({"key": meta.stem, "photos": None, "bytes": meta.stat().st_size, "created": None,
                          "used": meta.stat().st_mtime, "where": "incomplete (a killed write)", "files": [meta]})
    for leftover in sorted(folder.glob("*.tmp-*")):
        found.append({"key": leftover.name.split(".")[0], "photos": None, "bytes": leftover.stat().st_size,
                      "created": None, "used": leftover.stat().st_mtime, "where": "incomplete (a killed write)",
                      "files": [leftover]})
    return found


def _age(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.0f} days" if days >= 2 else f"{seconds / 3600:.0f} hours" if seconds >= 7200 else \
        f"{seconds / 60:.0f} minutes"


def human_size(n: float) -> str:
    """Bytes in words: 512 B, 3.5 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def remove(entry: dict) -> None:
    for path in entry["files"]:
        Path(path).unlink(missing_ok=True)


def _remove_idle_locks(folder: Path) -> None:
    """Lock files of caches that are gone and that no process holds."""
    for lock in folder.glob("*.lock"):
        if lock.with_suffix(".npy").exists():
            continue
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a run is writing it now
                continue
            lock.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", help=f"the cache folder (default: ${ENV_DIR}, else $XDG_CACHE_HOME/catsdogs "
                        "or ~/.cache/catsdogs)")
    parser.add_argument("--clear", action="store_true", help="remove every cache")
    parser.add_argument("--older-than", type=float, metavar="DAYS", help="remove the caches not used for DAYS days")
    args = parser.parse_args(argv)
    folder = Path(args.cache_dir).expanduser() if args.cache_dir else default_dir()
    if not folder.is_dir():
        print(f"no photo caches: {folder} does not exist")
        return 0
    now, entries = time.time(), caches(folder)
    if args.clear or args.older_than is not None:
        chosen = [e for e in entries if args.clear or now - e["used"] > args.older_than * 86400]
        for entry in chosen:
            remove(entry)
        _remove_idle_locks(folder)
        print(f"removed {len(chosen)} of {len(entries)} caches from {folder}, "
              f"{human_size(sum(e['bytes'] for e in chosen))} freed")
        return 0
    total = sum(e["bytes"] for e in entries)
    print(f"{len(entries)} photo caches in {folder}, {human_size(total)} (disk free: "
          f"{human_size(shutil.disk_usage(folder).free)})")
    if entries:
        print(f"{'key':<24}  {'photos':>7}  {'size':>9}  {'created':>14}  {'last used':>14}  photos from")
    for e in entries:
        created = f"{_age(now - e['created'])} ago" if e["created"] else "-"
        photos = "-" if e["photos"] is None else f"{e['photos']:,}"
        print(f"{e['key']:<24}  {photos:>7}  {human_size(e['bytes']):>9}  {created:>14}  "
              f"{_age(now - e['used']) + ' ago':>14}  {e['where']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
