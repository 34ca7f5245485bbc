"""Photo -> tensor, the one way training, evaluation and the app all use.

A photo is decoded once to a uint8 tensor of the network's input size (the
whole photo squashed into the square, as the Kaggle photos we train on were),
and normalised on the device just before the network sees it.
"""

from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

# What a decode can raise for a file that is not a usable photo: PIL's
# UnidentifiedImageError and "image file is truncated" are OSErrors, a
# decompression bomb is its own error, odd headers give ValueError/SyntaxError.
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


PhotoSource = str | Path | BinaryIO | Image.Image  # a file, a file object, or an image already open


def open_rgb(source: str | Path | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Open any photo file as upright RGB (see `upright_rgb`).

    `draft_size` lets the JPEG decoder downscale by a power of two while decoding,
    never below that size: a 12-megapixel phone photo decodes several times faster.
    """
    with Image.open(source) as image:
        if draft_size:
            image.draft("RGB", (draft_size, draft_size))
        return upright_rgb(image)


def upright_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as upright RGB: EXIF rotation applied, first frame, alpha on white."""
    image = ImageOps.exif_transpose(image)  # loads the first frame of animations too
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits, don't clip
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def photo_to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """An RGB photo -> (3, size, size) uint8, squashed (not cropped) to the square."""
    return v2.functional.pil_to_tensor(image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0))


def load_photo(source: PhotoSource, size: int) -> torch.Tensor:
    """A photo (file, file object or open image) -> (3, size, size) uint8 tensor. Raises one of BAD_IMAGE_ERRORS."""
    image = upright_rgb(source) if isinstance(source, Image.Image) else open_rgb(source, draft_size=size)
    return photo_to_uint8(image, size)


def normalize(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (or 0..1 float) images (N, 3, H, W) -> normalised float32 in channels_last layout."""
    if batch.dtype == torch.uint8:
        batch = batch.float().div_(255)
    batch = v2.functional.normalize(batch, list(mean), list(std))
    return batch.contiguous(memory_format=torch.channels_last)
