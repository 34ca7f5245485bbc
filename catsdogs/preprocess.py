"""Photo -> tensor, the one way training, evaluation and the app all use.

A photo is decoded once to a uint8 tensor of the network's input size (the
whole photo squashed into the square, as the Kaggle photos we train on were),
and normalised on the device just before the network sees it.
"""

import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import ExifTags, Image

try:  # HEIC/HEIF, the photos of iPhones: libheif's decoder as a PIL plugin (pi-heif, the decode-only pillow-heif)
    from pi_heif import register_heif_opener
except ImportError:  # a Python without requirements.txt's packages (a GPU machine's own): no HEIC photos there
    pass
else:
    register_heif_opener()

# Two tensor one-liners rather than torchvision's pil_to_tensor and normalize: importing torchvision loads
# torch._dynamo and sympy, which would add seconds to every start of the app and the command-line tools
# (docs/performance.md#start-up).

# The most pixels a photo may have once decoded (after a JPEG's reduction while decoding): a 48/50-megapixel
# camera's PNG, WebP or HEIC still fits. Decoding one at this size costs the decoded image, reduced before anything
# else is copied (see `upright_rgb`), and a WebP about twice that, for its decoder's own buffers (docs/limits.md
# has the measured figures).
MAX_PIXELS = 50_000_000
# PIL warns of a possible decompression bomb from 89 megapixels on, when it opens a file; every such photo is over
# MAX_PIXELS and refused by `check_size`, so the warning would only add noise to the logs and the commands' output.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
REDUCING_GAP = 3.0  # photo_to_uint8 reduces by whole factors down to 3x the network's input, then resamples


class ImageTooLarge(ValueError):
    """A photo with more pixels than MAX_PIXELS (or than PIL's own decompression-bomb limit): refused undecoded."""


# What a decode can raise for a file that is not a usable photo: PIL's
# UnidentifiedImageError and "image file is truncated" are OSErrors, a
# decompression bomb is its own error, odd headers give ValueError/SyntaxError,
# a photo over MAX_PIXELS is an ImageTooLarge (a ValueError).
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


PhotoSource = str | Path | BinaryIO | Image.Image  # a file, a file object, or an image already open
# What counts as a photo file: cameras', phones' and the web's formats (.jfif: JPEGs saved from a browser on Windows).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".heic", ".heif", ".avif", ".webp", ".gif", ".bmp", ".tif",
                  ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """The photo files in `folder` and its sub-folders, in natural order; hidden ones left out (a name starting with
    a dot: macOS's `._photo.jpg` companions, thumbnail caches)."""
    return sorted((p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)), key=natural_order)


def natural_order(path: Path) -> tuple[list[str | int], str]:
    """Sort key that lists names as file managers do (timm's natural_key): IMG_2.jpg before IMG_10.jpg, case ignored;
    the name itself breaks ties."""
    pieces = re.split(r"(\d+)", str(path))  # text, number, text, ...: the numbers at the odd places
    return [int(piece) if i % 2 else piece.lower() for i, piece in enumerate(pieces)], str(path)


_TRANSPOSE = {  # EXIF orientation -> the transposition that makes the photo upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def check_size(image: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    """Raise ImageTooLarge for an image over `max_pixels`; reads only the header's size, decodes nothing."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}×{height} pixels ({width * height / 1e6:.0f} megapixels) is more than the "
                            f"{max_pixels / 1e6:.0f} megapixels a photo may have")


def open_rgb(source: str | Path | BinaryIO, draft_size: int | None = None, max_pixels: int = MAX_PIXELS,
             keep_aspect: bool = False) -> Image.Image:
    """Open any photo file as upright RGB (see `upright_rgb`); ImageTooLarge before decoding one over `max_pixels`.

    `draft_size` lets the JPEG decoder downscale by a power of two while decoding,
    never below that size: a 12-megapixel phone photo decodes several times faster.
    Other formats are decoded whole and then reduced at once to what that size needs.
    """
    try:
        image = Image.open(source)
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"it has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, PIL's limit "
                            "against decompression bombs") from None
    with image:
        if draft_size:
            image.draft("RGB", (draft_size, draft_size))
        check_size(image, max_pixels)
        return upright_rgb(image, at_least=round(draft_size * REDUCING_GAP) if draft_size else None,
                           keep_aspect=keep_aspect)


def upright_rgb(image: Image.Image, at_least: int | None = None, keep_aspect: bool = False) -> Image.Image:
    """Any PIL image as upright RGB: EXIF rotation applied, first frame, alpha on white.

    With `at_least`, an image more than twice that size on a side is first reduced by whole factors, each side
    staying at least that size, so nothing is copied or converted at full size: by one factor per side, as resizing
    to the network's square with REDUCING_GAP would, or, with `keep_aspect`, by one for both (a picture to show).
    """
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)  # before reducing: TIFF keeps it outside .info
    if at_least:
        image = _reduced(image, at_least, keep_aspect)
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])  # loads the first frame of animations too
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits, don't clip
        image = image.point(lambda value: value / 256).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def _reduced(image: Image.Image, at_least: int, keep_aspect: bool = False) -> Image.Image:
    """The image reduced by whole factors (box average, alpha-weighted) with each side staying >= at_least; by the
    same factor on both sides with `keep_aspect`."""
    factors = (max(1, image.width // at_least), max(1, image.height // at_least))
    if keep_aspect:
        factors = (min(factors),) * 2
    if max(factors) < 2:
        return image
    if image.mode in ("P", "PA"):  # Image.reduce averages pixel values, not palette indices
        image = image.convert("RGBA")
    elif image.mode == "1" or image.mode.startswith("I;16"):
        image = image.convert("L" if image.mode == "1" else "I")
    return image.reduce(factors)


def photo_to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """An RGB photo -> (3, size, size) uint8, squashed (not cropped) to the square."""
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP)
    return torch.from_numpy(np.array(resized)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W), a view


def load_photo(source: PhotoSource, size: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """A photo (file, file object or open image) -> (3, size, size) uint8 tensor. Raises one of BAD_IMAGE_ERRORS."""
    if isinstance(source, Image.Image):
        check_size(source, max_pixels)
        image = upright_rgb(source, at_least=round(size * REDUCING_GAP))
    else:
        image = open_rgb(source, draft_size=size, max_pixels=max_pixels)
    return photo_to_uint8(image, size)


def centre_crop(batch: torch.Tensor, share: float) -> torch.Tensor:
    """The central `share` of each image's width and height (N, C, S, S), resized back to S x S (bilinear): what
    the network sees of a photo when it predicts (timm's crop_pct). Training's random zoom shows it the pets up to
    ~18% larger than the whole photo does; a centred crop at test time closes that gap (FixRes)."""
    size = batch.shape[-1]
    side = round(size * share)
    if side == size:
        return batch
    start = (size - side) // 2
    crop = batch[..., start:start + side, start:start + side]
    resized = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
    return resized.contiguous(memory_format=torch.channels_last)


def normalize(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (or 0..1 float) images (N, 3, H, W) -> normalised float32 in channels_last layout."""
    if batch.dtype == torch.uint8:
        batch = batch.float().div_(255)
    mean, std = (torch.tensor(v, dtype=batch.dtype, device=batch.device).view(-1, 1, 1) for v in (mean, std))
    batch = (batch - mean) / std
    return batch.contiguous(memory_format=torch.channels_last)
