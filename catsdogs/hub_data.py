"""Labelled photos from a dataset on the Hugging Face Hub: `--data hf://datasets/OWNER/NAME`.

    python train.py --data hf://datasets/microsoft/cats_vs_dogs
    python train.py --data hf://datasets/you/pets --data-revision v1.0 --data-split train

The split's files are fetched with huggingface_hub's `snapshot_download` into the Hub's own cache (HF_HOME,
HF_HUB_CACHE), so a second run reads them from there, also offline, and the tokens are the Hub's usual ones
(HF_TOKEN, or `hf auth login`). Layouts understood, as the Hub's dataset viewer and `datasets` lay them out:
- parquet files `SPLIT-*.parquet` or `SPLIT/*.parquet`, at the top or one folder down (`datasets`' push_to_hub
  writes `data/train-00000-of-00002-<hash>.parquet`; the Hub's own conversion of every public dataset, on the
  branch `refs/convert/parquet`, `default/train/0000.parquet`), with an
  image column (datasets' Image feature: bytes and path; or plain bytes) and a label column (a ClassLabel,
  whose names come from the files' own `huggingface` metadata or the card's `dataset_info`, or strings). Columns are
  found by name as a CSV's are (data.pick_columns);
- an image folder: `SPLIT/cat/...`, `SPLIT/dog/...`, optionally under `data/`.
A set whose classes are not exactly cat and dog is refused, saying which classes it has.
"""

import json
import re
import sys
from pathlib import Path

import yaml
from huggingface_hub import DatasetCard, get_cached_repo_tree
from huggingface_hub.errors import CachedRepoTreeNotFoundError, HFValidationError
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from catsdogs.data import HUB_PREFIX, IMAGE_COLUMNS, LABEL_COLUMNS, DataError, HubDataset, HubSnapshot, ParquetPhoto, \
    Photos, class_of, find_photos, pick_columns
from catsdogs.hub import snapshot


def parse(data: str, revision: str | None, split: str) -> HubDataset:
    """`hf://datasets/OWNER/NAME` -> HubDataset; anything else spelled hf:// is a DataError saying what is expected."""
    repo_id = data[len(HUB_PREFIX):].strip("/") if data.startswith(HUB_PREFIX) else ""
    try:
        validate_repo_id(repo_id)
        valid = repo_id.count("/") == 1
    except HFValidationError:
        valid = False
    if not valid:
        raise DataError(f"{data} is not a Hub dataset: spell it {HUB_PREFIX}OWNER/NAME, "
                        f"e.g. {HUB_PREFIX}microsoft/cats_vs_dogs")
    if not split or "/" in split or "*" in split:
        raise DataError(f"--data-split must be a split's name such as train or test, not {split!r}")
    return HubDataset(repo_id, revision, split)


def _split_patterns(split: str) -> list[str]:
    """The files of `split` (fnmatch, `*` also matches `/`), and the card, which may hold the class names."""
    return [f"{split}-*.parquet", f"*/{split}-*.parquet", f"{split}.parquet", f"*/{split}.parquet",
            f"{split}/*", f"*/{split}/*", "README.md"]


def fetch(dataset: HubDataset) -> HubSnapshot:
    """The split's files through the Hub's cache (`catsdogs.hub.snapshot`)."""
    fetched = snapshot(dataset.repo_id, "dataset", dataset.revision, _split_patterns(dataset.split), str(dataset))
    return HubSnapshot(dataset, fetched.commit, fetched.folder, fetched.source)


def photos_in_snapshot(snapshot: HubSnapshot) -> Photos:
    """The labelled photos of the snapshot's split: parquet cells, or the files of an image folder."""
    split = snapshot.dataset.split
    files = sorted(filter_repo_objects([p.relative_to(snapshot.folder).as_posix()
                                        for p in snapshot.folder.rglob("*") if p.is_file()],
                                       allow_patterns=_split_patterns(split)[:-1]))
    parquet = [f for f in files if f.endswith(".parquet")]
    if parquet:
        return _photos_in_parquet(snapshot, parquet)
    folder = next((snapshot.folder / where / split for where in ("", "data")
                   if (snapshot.folder / where / split).is_dir()), None)
    if folder is None:
        raise DataError(f"{snapshot} has no split '{split}': no {split}-*.parquet file and no {split}/ folder. "
                        f"Its files: {_listing(snapshot)}. (The Hub keeps a parquet copy of every public dataset, "
                        "e.g. of one made by a loading script: --data-revision refs/convert/parquet)")
    _check_classes(sorted(p.name for p in folder.iterdir() if p.is_dir()), f"{snapshot}: the sub-folders of {split}/")
    return find_photos(folder)[0]


def _listing(snapshot: HubSnapshot, shown: int = 12) -> str:
    try:
        paths = sorted(f.path for f in get_cached_repo_tree(snapshot.dataset.repo_id, repo_type="dataset",
                                                            revision=snapshot.commit))
    except CachedRepoTreeNotFoundError:  # what is on disk will do for a message
        paths = sorted(p.relative_to(snapshot.folder).as_posix() for p in snapshot.folder.rglob("*") if p.is_file())
    return ", ".join(paths[:shown]) + (f" ... ({len(paths)} files)" if len(paths) > shown else "")


def _check_classes(names: list[str], where: str) -> dict[str, int]:
    """Each class name -> its CLASS_NAMES index; a DataError unless the names are exactly one cat and one dog."""
    labels = {name: class_of(str(name)) for name in names}
    if len(names) != 2 or set(labels.values()) != {0, 1}:
        raise DataError(f"{where}: found {len(names)} classes {names}; a cat-vs-dog model needs exactly two classes "
                        "named cat and dog (cats/dogs, any case)")
    return labels


def _photos_in_parquet(snapshot: HubSnapshot, files: list[str]) -> Photos:
    import pyarrow.parquet as pq  # here: only Hub datasets need pyarrow (0.5 s to import)

    first = pq.ParquetFile(snapshot.folder / files[0])
    names = first.schema_arrow.names
    image_i, label_i = pick_columns(names)
    if image_i is None or label_i is None:
        raise DataError(f"{snapshot}: cannot tell which columns hold the image and the label; found columns {names}, "
                        f"expected one of {IMAGE_COLUMNS} and one of {LABEL_COLUMNS}")
    image, label = names[image_i], names[label_i]
    image_type = first.schema_arrow.field(image).type
    if not (str(image_type).startswith("struct<bytes:") or str(image_type) in ("binary", "large_binary")):
        raise DataError(f"{snapshot}: column '{image}' holds {image_type}, not images")
    class_names = _class_label_names(first, label, snapshot.folder / "README.md")
    photos = Photos()
    for file in files:
        parquet = pq.ParquetFile(snapshot.folder / file)
        values = parquet.read(columns=[label]).column(0).to_pylist()
        missing = values.count(None)
        if missing:  # kept out below, like a CSV row without a label
            print(f"warning: skipped {missing} rows of {file} without a label (column '{label}')", file=sys.stderr)
        if class_names is None and not all(isinstance(v, str) for v in values if v is not None):
            raise DataError(f"{snapshot}: column '{label}' holds numbers {sorted(set(values), key=str)[:8]} without "
                            "class names (no ClassLabel in the dataset's features), so which is cat cannot be told")
        names_seen = class_names or sorted(set(values) - {None})
        labels = _check_classes(names_seen, f"{snapshot}: the labels in column '{label}'")
        where = [(group, index) for group in range(parquet.num_row_groups)
                 for index in range(parquet.metadata.row_group(group).num_rows)]
        for row, ((group, index), value) in enumerate(zip(where, values, strict=True)):
            if value is None:
                continue
            name = f"{file} row {row}"
            identity = f"{HUB_PREFIX}{snapshot.dataset.repo_id}@{snapshot.commit}/{snapshot.dataset.split}/{name}"
            photos.add(ParquetPhoto(snapshot.folder / file, image, group, index, name, identity),
                       labels[class_names[value] if class_names else value])
    return photos


def _class_label_names(parquet, column: str, card: Path) -> list[str] | None:
    """The ClassLabel names of `column`: from the parquet file's own `huggingface` metadata (written by `datasets`),
    else from the dataset card's `dataset_info`; None when neither has them."""
    metadata = (parquet.schema_arrow.metadata or {}).get(b"huggingface")
    if metadata:
        feature = json.loads(metadata).get("info", {}).get("features", {}).get(column, {})
        if feature.get("_type") == "ClassLabel" and feature.get("names"):
            return list(feature["names"])
    try:
        infos = DatasetCard.load(card).data.to_dict().get("dataset_info") if card.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        return None
    for info in infos if isinstance(infos, list) else [infos] if infos else []:
        for feature in info.get("features", []):
            names = (feature.get("dtype") or {}).get("class_label", {}).get("names") \
                if feature.get("name") == column and isinstance(feature.get("dtype"), dict) else None
            if names:  # {'0': cat, '1': dog}
                return [names[key] for key in sorted(names, key=lambda k: int(re.sub(r"\D", "", str(k)) or 0))]
    return None
