"""Generated photos for fast tests: an easy cat-vs-dog task and every kind of bad file."""

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pet_photo(label: str, index: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A noisy photo an untrained CNN learns to tell apart in a few epochs: warm 'cats', cool 'dogs'."""
    rng = np.random.default_rng(index * 2 + (label == "dog"))
    base = np.array([200, 90, 60] if label == "cat" else [60, 90, 200], dtype=np.float32)
    pixels = base + rng.normal(0, 40, size=(size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def save_as(image: Image.Image, path: Path, quality: int = 90, **kwargs) -> Path:
    """The image in the format of the path's suffix, as a phone, a browser or an export writes it (lossy formats at
    `quality`): HEIC through pillow-heif (pi-heif, which the project reads it with, only decodes), the rest through
    PIL."""
    if path.suffix.lower() in (".heic", ".heif"):
        import pillow_heif

        pillow_heif.from_pillow(image).save(path, quality=quality, **kwargs)
    else:
        image.save(path, format="JPEG" if path.suffix.lower() == ".jfif" else None,
                   **({} if path.suffix.lower() in (".tif", ".tiff", ".png") else {"quality": quality}), **kwargs)
    return path


def write_kaggle_folder(folder: Path, per_class: int, start: int = 0, suffix: str = ".jpg") -> Path:
    """Kaggle's flat layout: folder/cat.<id>.jpg and folder/dog.<id>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    for label in ("cat", "dog"):
        for i in range(start, start + per_class):
            pet_photo(label, i).save(folder / f"{label}.{i}{suffix}")
    return folder


def write_bad_files(folder: Path, label: str = "cat") -> list[Path]:
    """Files named like photos that are not usable: text renamed .jpg, a truncated JPEG, an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / f"{label}.9001.jpg"
    text.write_text("this is not a photo")
    truncated = folder / f"{label}.9002.jpg"
    pet_photo(label, 9002).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:400])
    empty = folder / f"{label}.9003.jpg"
    empty.write_bytes(b"")
    return [text, truncated, empty]


def jpeg_bytes(label: str, index: int) -> bytes:
    buffer = io.BytesIO()
    pet_photo(label, index).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_hub_parquet(folder: Path, per_class: int, classes: tuple[str, ...] = ("cat", "dog"), shards: int = 2,
                      row_group: int = 16, unreadable: int = 1, start: int = 0, split: str = "train") -> Path:
    """A Hub dataset repo laid out as microsoft/cats_vs_dogs is: data/SPLIT-0000K-of-0000N.parquet with an `image`
    column (datasets' Image feature: struct of bytes and path) and a `labels` ClassLabel column (int64, names in the
    file's `huggingface` metadata, as `datasets` writes them), in row groups of `row_group` rows. The first
    `unreadable` photos are text, not JPEG."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(i, c) for i in range(start, start + per_class) for c in range(len(classes))]
    images = [{"bytes": b"not a photo" if n < unreadable else jpeg_bytes(classes[c], i), "path": None}
              for n, (i, c) in enumerate(rows)]
    features = {"image": {"_type": "Image"}, "labels": {"names": list(classes), "_type": "ClassLabel"}}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("labels", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.table({"image": images, "labels": [c for _, c in rows]}, schema=schema)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // shards)
    for k in range(shards):
        pq.write_table(table.slice(k * size, size), folder / "data" / f"{split}-{k:05d}-of-{shards:05d}.parquet",
                       row_group_size=row_group)
    (folder / "README.md").write_text("---\nlicense: unknown\ntask_categories:\n- image-classification\n---\n# pets\n")
    return folder


def write_hub_image_folder(folder: Path, per_class: int, split: str = "train") -> Path:
    """A Hub dataset repo as an image folder: SPLIT/cat/*.jpg and SPLIT/dog/*.jpg."""
    for label in ("cat", "dog"):
        (folder / split / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pet_photo(label, i).save(folder / split / label / f"{i}.jpg")
    return folder


def bomb_png(path, width=20_000, height=10_000):
    """A valid PNG header claiming 200 megapixels (over PIL's bomb limit) with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path
