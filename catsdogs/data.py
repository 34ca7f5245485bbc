"""Labelled photos: finding them in the layouts people actually have, splitting them, decoding them.

Layouts `find_photos` understands (`PATH` is what the user passes as `--data`):
- Kaggle's flat folder: `PATH/cat.0.jpg`, `PATH/dog.0.jpg`, ...;
- one sub-folder per class, any case: `PATH/cats/...`, `PATH/Dog/...`;
- either of those under `train/` (and optionally a labelled `test/` or `val/`
  next to it, used as the validation set): `PATH/train/cats/...`;
- a CSV of (image path, label), label 0/1 (0 = cat, 1 = dog) or cat/dog:
  `PATH` is the CSV file; relative image paths are resolved against the CSV's
  folder, or the folder named like the CSV beside it (`cat_dog.csv` + `cat_dog/`).
  UTF-8, with or without Excel's byte-order mark. Rows with a bad label or a
  missing image are skipped and listed by line on stderr; a file that is not
  UTF-8 or not well-formed CSV (an unclosed quote) is refused with the line.
- a dataset on the Hugging Face Hub, `hf://datasets/OWNER/NAME` (`catsdogs.hub_data` fetches its split
  through the Hub's cache; its photos are parquet cells, `ParquetPhoto`, or the files of an image folder;
  `catsdogs.loader.find` tells the two kinds of --data apart).

`choose_split` is the one decision of which photos validate.
"""

import codecs
import csv
import functools
import hashlib
import io
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from catsdogs.preprocess import BAD_IMAGE_ERRORS, IMAGE_SUFFIXES, PhotoSource, image_files, load_photo

CLASS_NAMES = ("cat", "dog")
_CLASS_WORDS = {"cat": 0, "cats": 0, "dog": 1, "dogs": 1}
_CSV_LABELS = {**_CLASS_WORDS, "0": 0, "1": 1}  # the seed project's cat_dog.csv: 0 = cat, 1 = dog
_FILE_NAME_LABEL = re.compile(r"^(cats?|dogs?)[._\- ]", re.IGNORECASE)  # cat.123.jpg, Dog_7.png
_TRAIN_FOLDERS = {"train", "training", "training_set", "train_set"}
_VAL_FOLDERS = {"val", "valid", "validation", "test", "testing", "test_set", "val_set"}
IMAGE_COLUMNS = ("image", "images", "path", "image_path", "filepath", "file", "filename", "img")  # CSV and parquet
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")
HUB_PREFIX = "hf://datasets/"  # how --data names a Hugging Face Hub dataset: hf://datasets/OWNER/NAME
_LISTED_ROWS = 20  # skipped CSV rows listed one by one; beyond that, only counted


class DataError(ValueError):
    """The data cannot be used as given; the message says what was found and what is expected."""


@dataclass(frozen=True)
class HubDataset:
    """A split of a dataset repo on the Hub, as the user named it."""

    repo_id: str
    revision: str | None  # branch, tag or commit; None: the default branch
    split: str

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "") + f" (split {self.split})"


@dataclass(frozen=True)
class HubSnapshot:
    """A HubDataset fetched: the files of its split at one commit, in the Hub's cache."""

    dataset: HubDataset
    commit: str  # the commit's full sha: what the model card names, and the decoded-photo cache keys on
    folder: Path
    source: str  # "downloaded" or "from the Hub's cache (...)", for the log

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.dataset.repo_id}@{self.commit[:10]} (split {self.dataset.split})"


@dataclass(frozen=True)
class ParquetPhoto:
    """A photo held in a cell of a parquet file (a Hub dataset's image column) rather than in a file of its own."""

    file: Path  # the parquet file, in the Hub's cache
    column: str
    group: int  # the row group, and the row within it: a photo is read with the rest of its row group
    index: int
    name: str  # e.g. "data/train-00000-of-00002.parquet row 17": for messages, and the split's order
    identity: str  # dataset id, commit, split, file and row: what the decoded-photo cache keys on

    def __str__(self) -> str:
        return self.name

    def open(self) -> io.BytesIO:
        """The photo's encoded bytes (JPEG, PNG...); OSError when the cell holds none."""
        with _ROW_GROUP_LOCK:  # the threads decoding neighbouring photos share one read of their row group
            cell = _row_group_cells(self.file, self.column, self.group)[self.index]
        encoded = cell.get("bytes") if isinstance(cell, dict) else cell  # datasets' Image feature, or raw bytes
        if not encoded:
            raise OSError(f"no image bytes in column '{self.column}' (only a path, {cell.get('path')!r})"
                          if isinstance(cell, dict) and cell.get("path") else f"no image in column '{self.column}'")
        return io.BytesIO(encoded)


_ROW_GROUP_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _row_group_cells(file: Path, column: str, group: int) -> list:
    import pyarrow.parquet as pq  # imported here: only Hub datasets need pyarrow (0.5 s to import)

    return pq.ParquetFile(file).read_row_group(group, columns=[column]).column(0).to_pylist()


def _opened(photo: Path | ParquetPhoto) -> PhotoSource:
    return photo.open() if isinstance(photo, ParquetPhoto) else photo


def pick_columns(names: list[str]) -> tuple[int | None, int | None]:
    """Which of the column `names` hold the image and the label: the first of IMAGE_COLUMNS and of LABEL_COLUMNS
    present (any case), for a CSV's header and a parquet file's columns alike."""
    columns = {name.strip().lower(): i for i, name in enumerate(names) if name}
    return (next((columns[c] for c in IMAGE_COLUMNS if c in columns), None),
            next((columns[c] for c in LABEL_COLUMNS if c in columns), None))


def class_of(word: str) -> int | None:
    """The CLASS_NAMES index a class name means (cat, cats, Dog...), or None."""
    return _CLASS_WORDS.get(word.strip().lower())


@dataclass
class Photos:
    """Labelled photos (files, or cells of a Hub dataset's parquet files): `labels[i]` indexes CLASS_NAMES."""

    paths: list[Path | ParquetPhoto] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, path: Path | ParquetPhoto, label: int) -> None:
        self.paths.append(path)
        self.labels.append(label)

    def subset(self, indices: list[int]) -> "Photos":
        return Photos([self.paths[i] for i in indices], [self.labels[i] for i in indices])

    def counts(self) -> dict[str, int]:
        return {name: self.labels.count(label) for label, name in enumerate(CLASS_NAMES)}

    def fingerprint(self) -> str:
        """Identifies the exact photo list, so a resumed run can check it trains on the same data."""
        text = "\n".join(f"{p.name}\t{y}" for p, y in zip(self.paths, self.labels, strict=True))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_photos(path: str | Path) -> tuple[Photos, Photos | None]:
    """Labelled photos under a local `path`, and the layout's own validation photos if any."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path} is a file but not a CSV: pass a folder of photos or a CSV of (image, label)")
        return _require_both_classes(_photos_from_csv(path), path), None
    subfolders = {p.name.lower(): p for p in path.iterdir() if p.is_dir()}
    train_dir = next((subfolders[n] for n in sorted(_TRAIN_FOLDERS) if n in subfolders), None)
    if train_dir is not None:
        train = _require_both_classes(_photos_in_folder(train_dir), train_dir)
        val_dirs = [subfolders[n] for n in sorted(_VAL_FOLDERS) if n in subfolders]
        val = next((v for v in map(_photos_in_folder, val_dirs) if len(set(v.labels)) == 2), None)
        return train, val
    return _require_both_classes(_photos_in_folder(path), path), None


@dataclass
class Found:
    """The labelled photos a --data names (`catsdogs.loader.find`), and the validation photos its layout holds."""

    photos: Photos
    layout_val: Photos | None  # a labelled val/ or test/ folder beside train/
    named: str  # as the user named it, for messages
    hub_dataset: HubSnapshot | None = None  # a Hub dataset: which one, at which commit

    def everything(self) -> Photos:
        """The photos and the layout's validation photos together."""
        extra = self.layout_val or Photos()
        return Photos(self.photos.paths + extra.paths, self.photos.labels + extra.labels)


@dataclass
class Split:
    """Which photos train and which validate, and where the validation photos come from, in words."""

    train: Photos
    val: Photos
    source: str
    generated: bool  # True: a seeded share of --data (split_photos); False: a folder of its own
    hub_dataset: HubSnapshot | None = None  # where --data is a Hub dataset: which one, at which commit


def choose_split(data: Found, val_fraction: float, seed: int, val_data: Found | None = None) -> Split:
    """The one decision of which photos are validation: training and evaluation both call this.

    In order: `val_data` when given; else the labelled val/ or test/ folder beside train/ in `data`;
    else a deterministic stratified `val_fraction` of `data`, drawn with `seed`.
    """
    if val_data is not None:
        val = val_data.everything()
        resolved = lambda paths: {p.resolve() if isinstance(p, Path) else p for p in paths}  # noqa: E731
        shared = resolved(data.photos.paths) & resolved(val.paths)
        if shared:
            print(f"warning: {len(shared)} of the --val-data photos are also training photos; "
                  "the validation accuracy will be optimistic")
        return Split(data.photos, val, f"all photos in `{val_data.named}` (--val-data)", generated=False)
    if data.layout_val is not None:
        return Split(data.photos, data.layout_val, "the labelled test/validation folder beside train/ in the data "
                     "folder", generated=False)
    train, val = split_photos(data.photos, val_fraction, seed)
    hub = data.hub_dataset
    of = f"split '{hub.dataset.split}' of {HUB_PREFIX}{hub.dataset.repo_id}" if hub else "the photos"
    return Split(train, val, f"a deterministic stratified {val_fraction:.0%} of {of} (seed {seed})",
                 generated=True, hub_dataset=hub)


def split_photos(photos: Photos, val_fraction: float, seed: int) -> tuple[Photos, Photos]:
    """A deterministic, stratified train/validation split: the same photos and seed give the same split."""
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be between 0 and 1, not {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for label in range(len(CLASS_NAMES)):
        members = sorted((i for i, y in enumerate(photos.labels) if y == label), key=lambda i: str(photos.paths[i]))
        order = torch.randperm(len(members), generator=generator).tolist()
        n_val = round(len(members) * val_fraction)
        val_idx += [members[i] for i in order[:n_val]]
        train_idx += [members[i] for i in order[n_val:]]
    return photos.subset(sorted(train_idx)), photos.subset(sorted(val_idx))


def decode_photos(photos: Photos, size: int, workers: int = 8, desc: str = "decoding", progress: bool = True) -> tuple[
    torch.Tensor, torch.Tensor, list[tuple[Path, str]]
]:
    """Decode every photo once to (N, 3, size, size) uint8, skipping unreadable files.

    Returns the images, their labels, and (path, reason) for every skipped file.
    """
    images = torch.empty((len(photos), 3, size, size), dtype=torch.uint8)
    ok, skipped = decode_into(photos, images, workers, desc, progress)
    labels = torch.tensor(photos.labels, dtype=torch.long)
    if ok.all():  # the usual case: don't copy gigabytes of photos
        return images, labels, []
    return images[ok], labels[ok], skipped


def decode_into(photos: Photos, images: torch.Tensor, workers: int = 8, desc: str = "decoding",
                progress: bool = True) -> tuple[torch.Tensor, list[tuple[Path, str]]]:
    """Decode photo i into images[i] (uint8 (N, 3, S, S), in memory or a mapped file), skipping unreadable files.

    Returns which photos were read, and (path, reason) for every skipped file, sorted.
    Threads suffice: PIL releases the GIL while it decodes and resizes.
    """
    size = images.shape[-1]
    ok = torch.zeros(len(photos), dtype=torch.bool)
    skipped = []

    def decode(i: int) -> None:
        try:
            images[i] = load_photo(_opened(photos.paths[i]), size)
            ok[i] = True
        except BAD_IMAGE_ERRORS as error:
            skipped.append((photos.paths[i], f"{type(error).__name__}: {error}"))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(tqdm(pool.map(decode, range(len(photos))), total=len(photos), desc=desc, unit="photo", leave=False,
                  disable=not progress))
    return ok, sorted(skipped)


def _photos_in_folder(folder: Path) -> Photos:
    """Kaggle-named files directly in `folder`, plus the photos inside its class sub-folders (hidden files left out,
    as everywhere: `image_files`)."""
    photos = Photos()
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and (label := class_of(entry.name)) is not None:
            for file in sorted(image_files(entry)):  # sorted by name: the order the photo list's fingerprint keys on
                photos.add(file, label)
        elif entry.suffix.lower() in IMAGE_SUFFIXES and (match := _FILE_NAME_LABEL.match(entry.name)):
            photos.add(entry, class_of(match.group(1)))
    return photos


def _read_csv_rows(csv_path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, fields) rows of a CSV; a file that is not well-formed is a DataError.

    UTF-8 with or without Excel's byte-order mark is read; other encodings are refused rather than guessed, because
    the paths in the file must match the file names on disk exactly and a wrong guess would only show up later as
    "not found". Quotes are read strictly: an unclosed quote would otherwise swallow the rest of the file.
    """
    raw = csv_path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode Text", Notepad's "Unicode"
            raise DataError(f"{csv_path} is UTF-16 text, not UTF-8. Save it as UTF-8 (Excel: 'CSV UTF-8'), or "
                            "convert it: `iconv -f utf-16 -t utf-8 old.csv > new.csv`") from None
        line = raw[:error.start].count(b"\n") + 1
        raise DataError(
            f"{csv_path} is not UTF-8 text (byte {raw[error.start]:#04x} on line {line}). Save it as UTF-8 (Excel: "
            "'CSV UTF-8'), or convert it, e.g. `iconv -f cp1252 -t utf-8 old.csv > new.csv` for Windows text"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, start = [], 1
    try:
        for fields in reader:
            if any("\n" in f or "\r" in f for f in fields):
                raise DataError(f"{csv_path}, line {start}: a quoted field runs over lines {start}-{reader.line_num}; "
                                "is a closing quote missing?")
            rows.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as error:
        raise DataError(f"{csv_path}, line {start}: not a well-formed CSV ({error}); "
                        "is a quote unclosed or misplaced?") from None
    rows = [(line, fields) for line, fields in rows if any(f.strip() for f in fields)]  # blank lines
    if not rows:
        raise DataError(f"{csv_path} is empty")
    return rows[0][1], rows[1:]


def _photos_from_csv(csv_path: Path) -> Photos:
    header, rows = _read_csv_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path} has no rows")
    path_col, label_col = pick_columns(header)
    if path_col is None or label_col is None:
        raise DataError(
            f"{csv_path}: cannot tell which columns hold the image path and the label; found columns "
            f"{header}, expected one of {IMAGE_COLUMNS} and one of {LABEL_COLUMNS}"
        )
    image_roots = [csv_path.parent, csv_path.parent / csv_path.stem]
    photos, skipped = Photos(), []
    for line, fields in rows:
        value, label_text = (fields[i].strip() if i < len(fields) else "" for i in (path_col, label_col))
        label = _CSV_LABELS.get(label_text.lower())
        file = next((root / value for root in image_roots if value and (root / value).is_file()), None)
        if label is None:
            skipped.append(f"line {line}: label {label_text!r} is not 0/1 or cat/dog")
        elif file is None:
            skipped.append(f"line {line}: image {value!r} not found" if value else f"line {line}: no image path")
        else:
            photos.add(file, label)
    if skipped:
        where = "image paths are looked up in " + " and ".join(str(r) for r in image_roots)
        if not photos:
            raise DataError(f"{csv_path}: none of its {len(rows)} rows is usable ({where}): "
                            + "; ".join(skipped[:5]) + ("; ..." if len(skipped) > 5 else ""))
        print(f"warning: skipped {len(skipped)} of the {len(rows)} rows of {csv_path} ({where}):", file=sys.stderr)
        for reason in skipped[:_LISTED_ROWS]:
            print(f"  {reason}", file=sys.stderr)
        if len(skipped) > _LISTED_ROWS:
            print(f"  ... and {len(skipped) - _LISTED_ROWS} more", file=sys.stderr)
    return photos


def _require_both_classes(photos: Photos, where: Path) -> Photos:
    counts = photos.counts()
    if all(counts.values()):
        return photos
    if len(photos) == 0:
        images = image_files(where) if where.is_dir() else []
        folders = sorted(p.name for p in where.iterdir() if p.is_dir()) if where.is_dir() else []
        found = f"{len(images)} image files whose names or folders don't say cat or dog"
        if images:
            found += f" (e.g. {images[0].relative_to(where)})"
        if folders:
            found += f", sub-folders {folders[:8]}"
        raise DataError(
            f"no labelled photos in {where}: found {found}. Expected Kaggle's cat.<id>.jpg / dog.<id>.jpg files, "
            "cat/ and dog/ sub-folders (any case, optionally under train/), or a CSV of (image, label)"
        )
    raise DataError(
        f"only one class in {where}: {counts['cat']} cat and {counts['dog']} dog photos. "
        "Training a cat-vs-dog classifier needs photos of both"
    )
