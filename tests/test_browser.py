"""The page in a real browser: Debian's Chromium driven by Playwright, with a fake webcam fed from real photos.

Everything runs twice, once per class: the fake camera shows two photos of that class (so every snapshot and every
streamed frame is known to be that class), and the uploads are photos of that class too. Each answer must be the
right class, at least conftest.SURE sure.
"""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FULL_SIZE, SURE
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WEBCAM_READY = ("id => { const v = document.querySelector(`#${id} [data-testid=webcam-video]`);"
                " return v && v.videoWidth > 0; }")
# Present once the page's own scripts have run (the last one marks the answer a live region): before that, the photo
# box would refuse an iPhone's HEIC, which those scripts give its type.
SCRIPTS_RAN = "#prediction[aria-live=polite]"
# True once the heatmap's picture has loaded (a broken one has no natural width).
HEATMAP_SHOWN = "() => { const img = document.querySelector('#heatmap img'); return !!img && img.naturalWidth > 0; }"
# Per class, from conftest.CLEAR_PHOTOS: the camera's two photos (alternating, so the live label keeps changing),
# the photo uploaded, and the photo uploaded after a bad file.
CAMERA = {"cat": ["cat.85.jpg", "cat.77.jpg"], "dog": ["dog.79.jpg", "dog.37.jpg"]}
UPLOAD = {"cat": "cat.82.jpg", "dog": "dog.89.jpg"}
AFTER_A_BAD_FILE = {"cat": "cat.9.jpg", "dog": "dog.94.jpg"}


def write_y4m(path: Path, photos: list[Path], width: int = 640, height: int = 480, frames_each: int = 15) -> Path:
    """A raw YUV 4:2:0 video Chromium's fake camera can play: each photo held for `frames_each` frames, looped."""
    with open(path, "wb") as video:
        video.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for photo in photos:
            ycbcr = np.asarray(Image.open(photo).convert("RGB").resize((width, height)).convert("YCbCr"))
            planes = ycbcr[:, :, 0].tobytes() + ycbcr[::2, ::2, 1].tobytes() + ycbcr[::2, ::2, 2].tobytes()
            video.write((b"FRAME\n" + planes) * frames_each)
    return path


def chromium_args(video: Path | None, cameras: int = 1) -> list[str]:
    """Chromium's flags for the tests: a fake camera that plays `video` (a y4m file), or with several `cameras`
    (a video file makes one), Chromium's own moving test picture on each."""
    return ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--no-first-run",
            f"--use-fake-device-for-media-stream=device-count={cameras}", "--use-fake-ui-for-media-stream",
            *([f"--use-file-for-fake-video-capture={video}"] if video else [])]


def chromium(camera_photos: list[Path], video: Path, frames_each: int = 15):
    """Chromium (Playwright) whose fake camera plays `camera_photos` (written to `video`, a y4m file); the test
    skips where Playwright or Chromium is missing. A generator, for a fixture to `yield from`."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: "
                                   "pip install -r requirements-dev.txt")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium (see .ci/run)")
    camera = write_y4m(video, camera_photos, frames_each=frames_each)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args(camera))
        yield browser
        browser.close()


def open_webcam(page) -> None:
    """The photo tab's webcam, on and showing the camera (the next click on "capture photo" takes a snapshot)."""
    page.locator("#photo").get_by_label("Capture from camera").click()
    page.locator("#photo").get_by_text("Click to Access Webcam").click()
    page.wait_for_function(WEBCAM_READY, arg="photo", timeout=30_000)


def start_live_stream(page, timeout_ms: float = 30_000) -> None:
    """The live tab's webcam on, and its stream started (the "Record" button, labelled "capture photo")."""
    page.get_by_role("tab", name="Live webcam").click()
    page.locator("#live").get_by_text("Click to Access Webcam").click()
    page.wait_for_function(WEBCAM_READY, arg="live", timeout=timeout_ms)
    page.locator("#live").get_by_label("capture photo").click()


@pytest.fixture(scope="module", params=["cat", "dog"])
def pet(request) -> str:
    """The class of everything the browser is shown in this round: the camera's photos and the uploads."""
    return request.param


@pytest.fixture(scope="module")
def browser(pet, shared_data, tmp_path_factory):
    yield from chromium([shared_data / FULL_SIZE / name for name in CAMERA[pet]],
                        tmp_path_factory.mktemp("webcam") / f"{pet}s.y4m")


@pytest.fixture
def page(browser, app):
    page = browser.new_page()
    page.goto(app.url)
    page.wait_for_selector(SCRIPTS_RAN, state="attached")
    yield page
    page.close()


def probability(page, component: str, class_name: str) -> float:
    """The probability a Label shows for a class (its meter's value, unrounded)."""
    return float(page.locator(f"#{component} meter[aria-label={class_name}]").get_attribute("value"))


def shown_answer(page, component: str) -> tuple[str, float]:
    """The top class a Label shows, and its probability, once it shows one."""
    top = page.locator(f"#{component} [data-testid=label-output-value]")
    top.wait_for(timeout=30_000)
    label = top.inner_text()
    return label, probability(page, component, label)


def assert_right(answer: tuple[str, float], pet: str) -> None:
    assert answer[0] == pet and answer[1] >= SURE, f"the page said {answer}, the photo is a {pet}"


def test_upload_a_real_photo_shows_the_right_class_then_where_it_looked(page, shared_data, pet):
    page.locator("#photo input[type=file]").set_input_files(shared_data / FULL_SIZE / UPLOAD[pet])
    assert_right(shown_answer(page, "prediction"), pet)
    assert probability(page, "prediction", "cat") + probability(page, "prediction", "dog") == pytest.approx(1)
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    assert re.fullmatch(r"Answered in \d+ ms · heatmap in \d+ ms", page.locator("#photo-timing").inner_text())


def test_webcam_snapshot_shows_the_right_class(page, pet):
    open_webcam(page)
    page.locator("#photo").get_by_label("capture photo").click()
    assert_right(shown_answer(page, "prediction"), pet)


def test_live_stream_keeps_updating_with_the_right_class(page, pet):
    start_live_stream(page)
    readings = [shown_answer(page, "live-prediction")]  # the camera alternates two photos every half second
    for _ in range(60):
        if sum(a != b for a, b in zip(readings, readings[1:])) >= 2:
            break
        page.wait_for_timeout(250)
        readings.append(shown_answer(page, "live-prediction"))
    assert sum(a != b for a, b in zip(readings, readings[1:])) >= 2, f"the live label did not keep updating: {readings}"
    for answer in readings:
        assert_right(answer, pet)
    # Its text, without the progress timer that shows beside it while a frame is answered:
    timing = page.locator("#live-timing [data-testid=markdown]").inner_text()
    assert re.fullmatch(r"Last frame answered in \d+ ms", timing)


def test_live_stream_shows_where_it_looked_when_asked(page, pet):
    page.get_by_role("tab", name="Live webcam").click()
    explain = page.locator("#live-explain input")
    assert page.locator("#live-heatmap").is_hidden()  # only when asked for: it makes each frame take longer
    explain.check()
    start_live_stream(page)
    # The heatmap follows the camera: each of its two photos gets its own (Gradio serves equal pictures from one
    # address), each one loaded.
    page.wait_for_function("n => { const img = document.querySelector('#live-heatmap img');"
                           " window.liveHeatmaps ??= new Set();"
                           " if (img && img.complete && img.naturalWidth > 0) window.liveHeatmaps.add(img.src);"
                           " return window.liveHeatmaps.size >= n; }", arg=len(CAMERA[pet]), timeout=30_000)
    assert_right(shown_answer(page, "live-prediction"), pet)
    timing = page.locator("#live-timing [data-testid=markdown]").inner_text()
    assert re.fullmatch(r"Last frame answered in \d+ ms · heatmap in \d+ ms", timing), timing
    explain.uncheck()
    page.locator("#live-heatmap").wait_for(state="hidden", timeout=10_000)
    # The box goes with every frame: the next frames are answered without a heatmap, and the answers go on.
    page.wait_for_function("() => /^Last frame answered in \\d+ ms$/.test("
                           "document.querySelector('#live-timing [data-testid=markdown]').innerText.trim())",
                           timeout=10_000)
    assert_right(shown_answer(page, "live-prediction"), pet)


def no_broken_image(page, component: str) -> bool:
    """No picture in the component that failed to load (the browser's broken-image icon)."""
    return page.locator(f"#{component}").evaluate(
        "e => [...e.querySelectorAll('img')].every(img => img.complete && img.naturalWidth > 0)")


def test_text_file_upload_shows_an_error_and_leaves_nothing_behind(page, tmp_path, shared_data, pet):
    top = page.locator("#prediction [data-testid=label-output-value]")
    page.locator("#photo input[type=file]").set_input_files(shared_data / FULL_SIZE / UPLOAD[pet])
    top.wait_for(timeout=30_000)
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    text = tmp_path / "holiday.jpg"
    text.write_text("this is not a photo")
    page.locator("#photo").get_by_label("Remove Image").click()
    page.locator("#photo input[type=file]").set_input_files(text)
    toast = page.locator("[data-testid=toast-body]")
    toast.first.wait_for(timeout=30_000)
    assert "not a photo the app can read" in toast.first.inner_text()
    assert "Error" in toast.first.inner_text() and "Warning" not in toast.first.inner_text()
    top.wait_for(state="detached", timeout=10_000)  # no stale result from the photo before
    page.locator("#photo img").wait_for(state="detached", timeout=10_000)  # nor the file that is no photo
    assert page.locator("#heatmap img").count() == 0 and no_broken_image(page, "photo")
    page.locator("#photo input[type=file]").set_input_files(shared_data / FULL_SIZE / AFTER_A_BAD_FILE[pet])
    assert_right(shown_answer(page, "prediction"), pet)
