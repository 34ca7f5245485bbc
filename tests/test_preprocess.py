"""Any photo a person has becomes the same upright RGB tensor the network was trained on."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from catsdogs.preprocess import BAD_IMAGE_ERRORS, load_photo, normalize, open_rgb


def encoded(image: Image.Image, fmt: str, **kwargs) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    buffer.seek(0)
    return buffer


def test_whole_photo_is_squashed_not_cropped():
    pixels = np.zeros((100, 400, 3), np.uint8)
    pixels[:, :200] = 255  # left half white, right half black
    tensor = load_photo(encoded(Image.fromarray(pixels), "PNG"), 224)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.uint8
    assert tensor[:, :, :100].min() == 255 and tensor[:, :, 124:].max() == 0


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (60, 120), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    assert open_rgb(encoded(tall, "JPEG", exif=exif)).size == (120, 60)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "CMYK", "I;16", "1"])
def test_every_image_mode_becomes_rgb(mode):
    image = Image.new("RGB", (32, 24), (200, 120, 40)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert open_rgb(encoded(image, fmt)).mode == "RGB"


def test_transparent_pixels_become_white_and_16_bit_keeps_its_range():
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert open_rgb(encoded(clear, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    grey16 = Image.fromarray(np.full((8, 8), 32768, np.uint16))
    assert open_rgb(encoded(grey16, "PNG")).getpixel((0, 0)) == (128, 128, 128)


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ("blue", "red")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    buffer.seek(0)
    assert open_rgb(buffer).getpixel((0, 0)) == (0, 0, 255)


def test_bad_files_raise_known_errors(monkeypatch):
    with pytest.raises(BAD_IMAGE_ERRORS):
        load_photo(io.BytesIO(b"not an image at all"), 224)
    truncated = encoded(Image.new("RGB", (200, 200), "red"), "JPEG").getvalue()[:300]
    with pytest.raises(BAD_IMAGE_ERRORS):
        load_photo(io.BytesIO(truncated), 224)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2x this is a "decompression bomb"
    with pytest.raises(Image.DecompressionBombError):
        load_photo(encoded(Image.new("RGB", (100, 100)), "PNG"), 224)


def test_normalize_uses_the_given_statistics():
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(batch, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.full((2, 3, 4, 4), 2.0))
