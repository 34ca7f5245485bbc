"""Any photo a person has becomes the same upright RGB tensor the network was trained on."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from catsdogs.preprocess import BAD_IMAGE_ERRORS, ImageTooLarge, load_photo, normalize, open_rgb


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
    with pytest.raises(ImageTooLarge, match="decompression bombs"):
        load_photo(encoded(Image.new("RGB", (100, 100)), "PNG"), 224)


def test_normalize_uses_the_given_statistics():
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(batch, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.full((2, 3, 4, 4), 2.0))


def test_a_photo_over_the_pixel_limit_is_refused_but_a_jpeg_is_first_reduced_while_decoding():
    big = Image.new("RGB", (2000, 1500), "red")  # 3 megapixels, against a limit of 1
    with pytest.raises(ImageTooLarge, match="2000×1500 pixels .* more than the 1 megapixels"):
        load_photo(encoded(big, "PNG"), 224, max_pixels=1_000_000)
    with pytest.raises(ImageTooLarge):
        load_photo(big, 224, max_pixels=1_000_000)
    assert load_photo(encoded(big, "JPEG"), 224, max_pixels=1_000_000).shape == (3, 224, 224)  # decoded at 1/4
    assert issubclass(ImageTooLarge, BAD_IMAGE_ERRORS)  # training skips such files like unreadable ones


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "RGB"])
def test_a_large_photo_is_reduced_first_to_the_same_result(mode):
    """Big non-JPEG photos are reduced before any full-size copy; the tensor is what resizing at the end gives."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (1500, 2100, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    image = image if mode == "RGBA" else Image.fromarray(pixels[..., 0].astype(np.uint16) * 256) \
        if mode == "I;16" else image.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 6  # and rotated: the orientation is read before the image is reduced
    expected = Image.open(encoded(image, "PNG", exif=exif))
    expected = ImageOps.exif_transpose(expected)
    expected = expected.point(lambda v: v / 256).convert("L") if mode == "I;16" else expected
    if expected.mode in ("RGBA", "P"):
        expected = Image.alpha_composite(Image.new("RGBA", expected.size, "white"), expected.convert("RGBA"))
    expected = torch.from_numpy(np.array(expected.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR,
                                                                          reducing_gap=3.0))).permute(2, 0, 1)
    got = load_photo(encoded(image, "PNG", exif=exif), 224)
    assert (got.int() - expected.int()).abs().max() <= 1  # rounding of the alpha-weighted average


PEAK_MEMORY = textwrap.dedent("""
    import io, json, sys
    from PIL import Image
    from catsdogs.preprocess import load_photo

    def status_mb(field):
        return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) / 1024

    Image.MAX_IMAGE_PIXELS = None
    results = []
    for width, height, mode in json.loads(sys.argv[1]):
        buffer = io.BytesIO()
        Image.new(mode, (width, height), "red").save(buffer, "PNG", compress_level=1)
        buffer.seek(0)
        open("/proc/self/clear_refs", "w").write("5")  # peak := now
        before = status_mb("VmRSS")
        try:
            load_photo(buffer, 224)
            answer = "decoded"
        except ValueError as error:
            answer = type(error).__name__
        results.append([answer, status_mb("VmHWM") - before])
    print(json.dumps(results))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_to_decode_a_photo_is_bounded(tmp_path):
    """Peak RSS while decoding, measured in a fresh process: a 169-megapixel PNG (0.5 MB as a file) is refused
    before decoding (it took +1.9 GB), a 20-megapixel RGBA PNG is decoded in under 10 bytes a pixel (it took ~19)."""
    cases = [(13000, 13000, "RGB"), (5000, 4000, "RGBA")]
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY, json.dumps(cases)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr
    (huge, huge_mb), (big, big_mb) = json.loads(result.stdout)
    assert huge == "ImageTooLarge" and huge_mb < 20
    assert big == "decoded" and big_mb < 20e6 * 10 / 2**20, big_mb
