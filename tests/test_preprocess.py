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

from conftest import FULL_SIZE

from catsdogs.preprocess import (BAD_IMAGE_ERRORS, ImageTooLarge, centre_crop, image_files, load_photo, normalize,
                                 open_rgb)


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


# An upright picture that no rotation or mirror leaves unchanged: four colours, one a quadrant, wider than tall.
QUADRANTS = {"top left": (255, 0, 0), "top right": (0, 255, 0), "bottom left": (0, 0, 255),
             "bottom right": (255, 255, 255)}


def upright_picture(width: int = 64, height: int = 48) -> np.ndarray:
    pixels = np.empty((height, width, 3), np.uint8)
    for name, colour in QUADRANTS.items():
        rows = slice(0, height // 2) if name.startswith("top") else slice(height // 2, height)
        columns = slice(0, width // 2) if name.endswith("left") else slice(width // 2, width)
        pixels[rows, columns] = colour
    return pixels


def stored_as(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for an upright scene, by the EXIF definition of each orientation value (where
    the stored picture's first row and first column lie in the scene), written out here rather than taken from PIL."""
    height, width = upright.shape[:2]
    rows, columns = np.indices((width, height) if orientation >= 5 else (height, width))
    scene = {  # stored pixel (row, column) shows the scene's pixel (y, x):
        1: (rows, columns),  # row 0 at the top, column 0 on the left
        2: (rows, width - 1 - columns),  # row 0 at the top, column 0 on the right
        3: (height - 1 - rows, width - 1 - columns),  # row 0 at the bottom, column 0 on the right
        4: (height - 1 - rows, columns),  # row 0 at the bottom, column 0 on the left
        5: (columns, rows),  # row 0 is the scene's left side, column 0 its top
        6: (columns, width - 1 - rows),  # row 0 is the right side, column 0 the top ("rotate 90° clockwise")
        7: (height - 1 - columns, width - 1 - rows),  # row 0 is the right side, column 0 the bottom
        8: (height - 1 - columns, rows),  # row 0 is the left side, column 0 the bottom ("rotate 90° anticlockwise")
    }[orientation]
    return upright[scene]


def quadrant_colours(pixels: np.ndarray) -> dict[str, tuple[int, ...]]:
    """The colour at the centre of each quadrant of an (H, W, 3) picture."""
    height, width = pixels.shape[:2]
    return {name: tuple(int(v) for v in pixels[height // 4 if name.startswith("top") else 3 * height // 4,
                                               width // 4 if name.endswith("left") else 3 * width // 4])
            for name in QUADRANTS}


def assert_quadrants(pixels: np.ndarray, tolerance: int) -> None:
    found = quadrant_colours(pixels)
    assert all(np.abs(np.subtract(found[k], QUADRANTS[k])).max() <= tolerance for k in QUADRANTS), found


def test_each_orientation_stores_a_different_picture():
    """The test below proves something only if no two orientations store the same pixels."""
    assert len({stored_as(upright_picture(), o).tobytes() for o in range(1, 9)}) == 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation):
    stored = stored_as(upright_picture(), orientation)
    assert stored.shape[:2] == ((48, 64) if orientation < 5 else (64, 48))
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo = encoded(Image.fromarray(stored), "JPEG", quality=95, exif=exif)  # as a phone writes it
    upright = open_rgb(photo)
    assert upright.size == (64, 48)
    assert_quadrants(np.asarray(upright), tolerance=40)  # JPEG is lossy, most at the colour edges
    photo.seek(0)
    assert_quadrants(load_photo(photo, 224).permute(1, 2, 0).numpy(), tolerance=40)  # the network's input too


@pytest.mark.parametrize("suffix", [".heic", ".avif", ".jfif", ".tiff"])
def test_a_photo_from_a_phone_or_the_web_in_any_of_its_formats_gives_the_network_what_its_jpeg_does(
        shared_data, tmp_path, suffix):
    """iPhones save HEIC, browsers AVIF and .jfif, scanners and exports TIFF: the same photo, the same input."""
    from imagegen import save_as

    original = shared_data / FULL_SIZE / "cat.85.jpg"
    copy = save_as(Image.open(original), tmp_path / f"cat.85{suffix}")
    difference = load_photo(copy, 224).float() - load_photo(original, 224).float()
    assert difference.abs().mean() < 3  # HEIC and AVIF are lossy too: a few levels of 255 apart on average


def test_a_heic_from_a_turned_phone_comes_out_upright_and_its_size_is_checked(tmp_path):
    """A phone held sideways: HEIC keeps the rotation in its own header (libheif applies it) and the EXIF
    orientation (which must then not turn it a second time)."""
    from imagegen import save_as

    exif = Image.Exif()
    exif[0x0112] = 6
    photo = save_as(Image.fromarray(stored_as(upright_picture(), 6)), tmp_path / "IMG_0001.HEIC",
                    exif=exif.tobytes())
    upright = open_rgb(photo)
    assert upright.size == (64, 48)
    assert_quadrants(np.asarray(upright), tolerance=40)
    with pytest.raises(ImageTooLarge, match="64×48 pixels"):
        open_rgb(photo, max_pixels=3000)


def columns(dtype, *values) -> np.ndarray:
    """A 16-pixel-high array of 16-pixel-wide columns, one a value (a scalar, or one value per channel)."""
    return np.concatenate([np.broadcast_to(np.asarray(v, dtype), (16, 16, *np.shape(v))) for v in values], axis=1)


def image_in_mode(mode: str) -> tuple[Image.Image, list[tuple[int, int, int]]]:
    """A 48x16 image in `mode` of three columns of known values, and the RGB each column must come out as."""
    u8 = np.uint8
    if mode == "RGB":
        colours = [(200, 120, 40), (0, 0, 255), (9, 9, 9)]
        return Image.fromarray(columns(u8, *colours)), colours
    if mode == "RGBA":  # opaque; half-transparent black; fully transparent: all over white
        image = Image.fromarray(columns(u8, (200, 120, 40, 255), (0, 0, 0, 128), (10, 20, 30, 0)))
        return image, [(200, 120, 40), (127, 127, 127), (255, 255, 255)]
    if mode == "P":  # three palette entries, the third one transparent
        image = Image.fromarray(columns(u8, 0, 1, 2)).convert("P")
        image.putpalette([200, 120, 40, 0, 0, 255, 10, 20, 30])
        image.info["transparency"] = 2
        return image, [(200, 120, 40), (0, 0, 255), (255, 255, 255)]
    if mode == "L":
        return Image.fromarray(columns(u8, 30, 128, 220)), [(30, 30, 30), (128, 128, 128), (220, 220, 220)]
    if mode == "LA":  # grey with alpha: opaque; half-transparent black; fully transparent
        image = Image.fromarray(columns(u8, (100, 255), (0, 128), (100, 0)))
        return image, [(100, 100, 100), (127, 127, 127), (255, 255, 255)]
    if mode == "CMYK":  # magenta + yellow ink is red, cyan + yellow green, black ink black
        image = Image.frombytes("CMYK", (48, 16), columns(u8, (0, 255, 255, 0), (255, 0, 255, 0),
                                                          (0, 0, 0, 255)).tobytes())
        return image, [(255, 0, 0), (0, 255, 0), (0, 0, 0)]
    if mode == "I;16":  # 16-bit greyscale: scaled to 8 bits, not clipped
        return Image.fromarray(columns(np.uint16, 0, 32768, 65535)), [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    if mode == "1":
        return Image.fromarray(columns(bool, False, True, False)), [(0, 0, 0), (255, 255, 255), (0, 0, 0)]
    raise ValueError(mode)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "LA", "CMYK", "I;16", "1"])
def test_every_image_mode_gives_the_right_rgb_values(mode):
    image, expected = image_in_mode(mode)
    file = encoded(image, "JPEG", quality=95) if mode == "CMYK" else encoded(image, "PNG")
    assert Image.open(file).mode == mode  # the file really holds this mode
    file.seek(0)
    rgb = open_rgb(file)
    assert rgb.mode == "RGB" and rgb.size == (48, 16)
    found = [rgb.getpixel((x, 8)) for x in (8, 24, 40)]
    tolerance = 6 if mode == "CMYK" else 1  # JPEG is lossy; alpha blending rounds
    assert np.abs(np.subtract(found, expected)).max() <= tolerance, (found, expected)


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


def test_a_folder_s_photos_are_listed_as_a_file_manager_lists_them(tmp_path):
    names = ["2024/2/a.jpg", "2024/12/a.jpg", "IMG_2.jpg", "img_3.JPG", "IMG_4.HEIC", "IMG_10.jpg", "IMG_010.png",
             "IMG_10.png", "IMG_11.avif", "IMG_12.jfif", "pet1.jpg", "pet²a.jpg"]  # "²" is no decimal digit: text
    for name in [*names, "IMG_4.txt", ".IMG_1.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == names


def test_normalize_uses_the_given_statistics():
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(batch, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.full((2, 3, 4, 4), 2.0))


def test_the_centre_crop_shows_the_middle_of_the_photo_at_full_size():
    framed = torch.zeros(2, 3, 224, 224)
    framed[..., 11:213, 11:213] = 0.5  # a 202-pixel middle (round(0.9 * 224)) in an 11-pixel black frame
    framed[1, :, 112:, :] = 1.0  # the second photo's lower half white, frame included
    cropped = centre_crop(framed, 0.9)
    assert cropped.shape == framed.shape and cropped.is_contiguous(memory_format=torch.channels_last)
    near = lambda part, value: torch.allclose(part, torch.full_like(part, value))  # noqa: E731
    assert near(cropped[0], 0.5)  # the frame is gone, the middle fills the picture
    assert near(cropped[1, :, :100], 0.5) and near(cropped[1, :, 124:], 1.0)  # upright, not shifted
    assert centre_crop(framed, 1.0) is framed  # the whole photo: nothing resampled


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
