"""Generated photos for fast tests: an easy cat-vs-dog task and every kind of bad file."""

from pathlib import Path

import numpy as np
from PIL import Image


def pet_photo(label: str, index: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A noisy photo an untrained CNN learns to tell apart in a few epochs: warm 'cats', cool 'dogs'."""
    rng = np.random.default_rng(index * 2 + (label == "dog"))
    base = np.array([200, 90, 60] if label == "cat" else [60, 90, 200], dtype=np.float32)
    pixels = base + rng.normal(0, 40, size=(size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


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
