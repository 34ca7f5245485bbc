"""The page in a real browser: Debian's Chromium driven by Playwright, with a fake webcam fed from a real photo."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

playwright = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WEBCAM_READY = ("id => { const v = document.querySelector(`#${id} [data-testid=webcam-video]`);"
                " return v && v.videoWidth > 0; }")


def write_y4m(path: Path, photos: list[Path], width: int = 640, height: int = 480, frames_each: int = 15) -> Path:
    """A raw YUV 4:2:0 video Chromium's fake camera can play: each photo held for `frames_each` frames, looped."""
    with open(path, "wb") as video:
        video.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for photo in photos:
            ycbcr = np.asarray(Image.open(photo).convert("RGB").resize((width, height)).convert("YCbCr"))
            planes = ycbcr[:, :, 0].tobytes() + ycbcr[::2, ::2, 1].tobytes() + ycbcr[::2, ::2, 2].tobytes()
            video.write((b"FRAME\n" + planes) * frames_each)
    return path


@pytest.fixture(scope="module")
def browser(shared_data, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (see .ci/run)", pytrace=False)
    sample = shared_data / "dogs-vs-cats-fullres-sample"
    camera = write_y4m(tmp_path_factory.mktemp("webcam") / "pets.y4m", [sample / "dog.1.jpg", sample / "cat.1.jpg"])
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app):
    page = browser.new_page()
    page.goto(app.url)
    page.wait_for_selector("#photo")
    yield page
    page.close()


def percent(page, component: str, class_name: str) -> float:
    return float(page.locator(f"#{component} meter[aria-label={class_name}]").get_attribute("aria-valuenow"))


def test_upload_a_real_photo_shows_both_probabilities(page, shared_data):
    page.locator("#photo input[type=file]").set_input_files(shared_data / "dogs-vs-cats-fullres-sample" / "dog.7.jpg")
    top = page.locator("#prediction [data-testid=label-output-value]")
    top.wait_for(timeout=30_000)
    assert top.inner_text() in {"cat", "dog"}
    assert percent(page, "prediction", "cat") + percent(page, "prediction", "dog") == pytest.approx(100, abs=0.6)
    assert re.search(r"last prediction: \d+ ms", page.locator("#info").inner_text())


def test_webcam_snapshot_is_classified(page):
    page.locator("#photo").get_by_label("Capture from camera").click()
    page.locator("#photo").get_by_text("Click to Access Webcam").click()
    page.wait_for_function(WEBCAM_READY, arg="photo", timeout=30_000)
    page.locator("#photo").get_by_label("capture photo").click()
    top = page.locator("#prediction [data-testid=label-output-value]")
    top.wait_for(timeout=30_000)
    assert top.inner_text() in {"cat", "dog"}


def test_live_stream_keeps_updating_the_label(page):
    page.get_by_role("tab", name="Live webcam").click()
    page.locator("#live").get_by_text("Click to Access Webcam").click()
    page.wait_for_function(WEBCAM_READY, arg="live", timeout=30_000)
    page.locator("#live").get_by_label("capture photo").click()  # the "Record" button starts the stream
    page.locator("#live-prediction [data-testid=label-output-value]").wait_for(timeout=30_000)
    readings = []  # the fake camera alternates a dog and a cat photo every half second
    for _ in range(60):
        readings.append(percent(page, "live-prediction", "dog"))
        if sum(a != b for a, b in zip(readings, readings[1:])) >= 2:
            break
        page.wait_for_timeout(250)
    changes = sum(a != b for a, b in zip(readings, readings[1:]))
    assert changes >= 2, f"the live label did not keep updating: {readings}"


def test_text_file_upload_shows_an_error_and_the_page_recovers(page, tmp_path, shared_data):
    top = page.locator("#prediction [data-testid=label-output-value]")
    page.locator("#photo input[type=file]").set_input_files(shared_data / "dogs-vs-cats-fullres-sample" / "cat.7.jpg")
    top.wait_for(timeout=30_000)
    text = tmp_path / "holiday.jpg"
    text.write_text("this is not a photo")
    page.locator("#photo").get_by_label("Remove Image").click()
    page.locator("#photo input[type=file]").set_input_files(text)
    toast = page.locator("[data-testid=toast-body]")
    toast.first.wait_for(timeout=30_000)
    assert "not a photo the app can read" in toast.first.inner_text()
    top.wait_for(state="detached", timeout=10_000)  # no stale result from the photo before
    page.locator("#photo").get_by_label("Remove Image").click()
    page.locator("#photo input[type=file]").set_input_files(shared_data / "dogs-vs-cats-fullres-sample" / "dog.8.jpg")
    top.wait_for(timeout=30_000)
