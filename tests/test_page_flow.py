"""The page's event flow in Chromium: one error per bad file, webcam snapshots stored as the camera sees them, a
second photo never shown with the first one's heatmap, the live view's pace and camera choice, and batch tables
that go with Gradio's cache.

The fake camera here shows a picture whose left third is black, so a mirrored copy of it is told apart.
"""

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import FULL_SIZE
from gradio_client import Client, handle_file
from PIL import Image, ImageOps
from test_browser import (CHROMIUM, HEATMAP_SHOWN, WEBCAM_READY, chromium, chromium_args, open_webcam,
                          shown_answer, start_live_stream)
from test_page import open_page

import app as demo_app
from bench.live import RECORDER, answered_frames

CAT, DOG = "cat.85.jpg", "dog.79.jpg"  # two photos the shipped weights answer surely, and differently


def lopsided(path: Path) -> Path:
    """The cat example with its left third black: unlike its mirror image."""
    picture = Image.open(demo_app.EXAMPLES / "chelsea.jpg").convert("RGB").resize((640, 480))
    picture.paste((0, 0, 0), (0, 0, 213, 480))
    picture.save(path)
    return path


@pytest.fixture(scope="module")
def camera_picture(tmp_path_factory) -> Path:
    return lopsided(tmp_path_factory.mktemp("camera") / "lopsided.png")


@pytest.fixture(scope="module")
def browser(camera_picture):
    yield from chromium([camera_picture], camera_picture.with_suffix(".y4m"), frames_each=2)


def picture_at(url: str) -> Image.Image:
    return Image.open(io.BytesIO(httpx.get(url, trust_env=False).content)).convert("RGB")


def unmirrored(picture: Image.Image, source: Image.Image) -> bool:
    """Whether the picture is closer to the source than to its mirror image (pixel by pixel)."""
    shown = np.asarray(picture, dtype=float)
    source = source.convert("RGB").resize(picture.size)
    return (np.abs(shown - np.asarray(source, dtype=float)).mean()
            < np.abs(shown - np.asarray(ImageOps.mirror(source), dtype=float)).mean())


def test_a_bad_file_over_a_photo_is_one_error_and_one_log_line(browser, app, shared_data, tmp_path):
    page = open_page(browser, app, width=390, height=844)
    page.locator("#photo input[type=file]").set_input_files(shared_data / FULL_SIZE / CAT)
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    log_before = len(app.log())
    text = tmp_path / "holiday.jpg"
    text.write_text("this is not a photo")
    page.locator("#photo input[type=file]").set_input_files(text)  # over the photo, without clearing the box
    toasts = page.locator("[data-testid=toast-body]")
    toasts.first.wait_for(timeout=30_000)
    page.locator("#photo img").wait_for(state="detached", timeout=10_000)
    # A good photo after it: its answer comes after every request the bad file made.
    page.locator("#photo input[type=file]").set_input_files(shared_data / FULL_SIZE / DOG)
    assert shown_answer(page, "prediction")[0] == "dog"
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    assert toasts.count() == 1 and toasts.first.inner_text().count("not a photo the app can read") == 1, \
        toasts.all_inner_texts()
    log = app.log()[log_before:]
    assert log.count("refused") == 1 and "refused /photo_answer: This file is not a photo" in log, log
    assert "Traceback" not in log, log
    page.close()


def test_a_webcam_snapshot_is_stored_and_explained_as_the_camera_sees_it(browser, app, camera_picture):
    page = open_page(browser, app, width=1280, height=900)
    open_webcam(page)
    preview = page.locator("#photo [data-testid=webcam-video]").evaluate("e => getComputedStyle(e).transform")
    assert preview == "matrix(-1, 0, 0, 1, 0, 0)", preview  # the preview is a mirror
    page.locator("#photo").get_by_label("capture photo").click()
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    source = Image.open(camera_picture)
    assert unmirrored(picture_at(page.locator("#photo img").get_attribute("src")), source)
    assert unmirrored(picture_at(page.locator("#heatmap img").get_attribute("src")), source)
    page.close()


# Notes every heatmap the page shows, with the photo in the box and the label at that moment.
HEATMAPS_SHOWN = """() => {
  window.heatmapsShown = [];
  new MutationObserver(() => {
    const heatmap = document.querySelector('#heatmap img'), photo = document.querySelector('#photo img');
    const label = document.querySelector('#prediction [data-testid=label-output-value]');
    if (heatmap && heatmap.src !== window.heatmapsShown.at(-1)?.[0])
      window.heatmapsShown.push([heatmap.src, photo && photo.src, label && label.innerText]);
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_a_second_photo_never_shows_the_first_ones_heatmap(browser, app, shared_data):
    """A photo dropped while the last one is answered: every heatmap the page shows is one the API draws for one of
    the two photos (never the second photo under the first one's class, the race this guards against), and the
    page ends on the second photo, its answer and its heatmap. For a moment the first photo's own heatmap may still
    arrive after the second photo is in the box, until the second one's answer replaces it."""
    first, second = shared_data / FULL_SIZE / CAT, shared_data / FULL_SIZE / DOG
    client = Client(app.url, verbose=False)
    expected = [np.asarray(Image.open(client.predict(handle_file(photo), api_name="/heatmap")).convert("RGB"),
                           dtype=float) for photo in (first, second)]
    page = open_page(browser, app, width=1280, height=900)
    page.evaluate(HEATMAPS_SHOWN)
    with page.expect_request(lambda request: "/queue/join" in request.url):  # the first photo's answer is asked
        page.locator("#photo input[type=file]").set_input_files(first)
    page.locator("#photo input[type=file]").set_input_files(second)  # while the first one is answered
    page.locator("#prediction [data-testid=label-output-value]").get_by_text("dog").wait_for(timeout=30_000)
    page.locator("#photo-timing").get_by_text("heatmap in").wait_for(timeout=30_000)
    shown = page.evaluate("window.heatmapsShown")
    second_photo = page.locator("#photo img").get_attribute("src")
    assert shown and shown[-1][1:] == [second_photo, "dog"]

    def drawn_for(heatmap: str) -> list[bool]:  # which photo's API heatmap it is (the other class's differs by ~2.3)
        picture = np.asarray(picture_at(heatmap), dtype=float)
        return [picture.shape == e.shape and np.abs(picture - e).mean() < 0.5 for e in expected]
    assert all(any(drawn_for(heatmap)) for heatmap, _, _ in shown), shown
    assert drawn_for(shown[-1][0]) == [False, True]  # the page ends on the second photo's own heatmap
    page.close()


# How often the page sends the live camera's frames: the `stream_every` of the page's stream events of #live.
STREAM_EVERY = """() => {
  const live = window.gradio_config.components.find(c => c.props.elem_id === "live").id;
  return window.gradio_config.dependencies
    .filter(d => d.targets.some(([id, event]) => id === live && event === "stream")).map(d => d.stream_every);
}"""


def test_the_live_view_keeps_answering_frame_after_frame(browser, app):
    """The browser sends a frame every LIVE_EVERY s and the answers keep coming, one after another. How many a second
    a machine gives is bench.live's figure (docs/performance.md), not a test's: it depends on the machine."""
    page = open_page(browser, app, width=390, height=844)
    page.evaluate(RECORDER)
    start_live_stream(page)
    page.wait_for_function("() => window.liveAnswers.length >= 6", timeout=60_000)
    assert page.evaluate(STREAM_EVERY) == [demo_app.LIVE_EVERY]
    caption = page.get_by_text("times a second, while the webcam records").inner_text()
    assert f"up to {1 / demo_app.LIVE_EVERY:.0f} times a second" in caption, caption
    page.close()


def test_the_live_benchmark_times_each_answer_from_the_frame_it_answers():
    """Gradio answers the newest frame waiting when the app is free and drops the older ones: bench.live replays
    that choice, so a dropped frame is not mistaken for a quick answer."""
    frames = [0, 100, 200, 300, 400]  # ms, sent by the browser
    answers = [50, 260, 380, 470]  # the app was free at 50 (no new frame yet), at 260 (frame 2 waiting), ...
    assert answered_frames(frames, answers) == [0, 1, 2, 3]
    assert answered_frames([0, 100, 200, 300], [250, 420]) == [0, 2]  # at 250 frames 1 and 2 wait: 2, 1 is dropped


@pytest.fixture
def two_cameras(browser):
    """Chromium with two fake cameras, from the same Playwright as the module's browser (one Playwright a process)."""
    other = browser.browser_type.launch(executable_path=CHROMIUM, args=chromium_args(None, cameras=2))
    yield other
    other.close()


def test_with_two_cameras_the_button_beside_record_picks_one(two_cameras, app):
    """The live tab's caption promises it: Gradio lists the cameras beside Record when there are several."""
    page = open_page(two_cameras, app, width=1100, height=900)
    page.get_by_role("tab", name="Live webcam").click()
    page.locator("#live").get_by_text("Click to Access Webcam").click()
    page.wait_for_function(WEBCAM_READY, arg="live", timeout=30_000)
    camera = "() => document.querySelector('#live [data-testid=webcam-video]').srcObject.getVideoTracks()[0].label"
    page.locator("#live").get_by_label("select input source").click()
    picker = page.locator("#live select")
    assert picker.locator("option").all_inner_texts() == ["fake_device_0", "fake_device_1"]
    assert page.evaluate(camera) == "fake_device_0"
    picker.select_option("fake_device_1")
    page.wait_for_function(f"() => ({camera})() === 'fake_device_1'", timeout=10_000)
    page.locator("#live").get_by_label("capture photo").click()
    page.locator("#live-prediction [data-testid=label-output-value]").wait_for(timeout=30_000)  # answered
    page.close()


def test_batch_tables_are_deleted_with_gradios_cache(tmp_path, monkeypatch):
    import gradio as gr
    from gradio.route_utils import delete_files_created_by_app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    with gr.Blocks() as demo:
        download = gr.File()
    written = [demo_app.write_csv(["photo", "prediction"], [[f"{n}.jpg", "cat"]]) for n in range(3)]
    served = [download.move_resource_to_block_cache(path) for path in written]
    assert all(Path(path).is_file() for path in written + served)
    delete_files_created_by_app(demo, age=None)  # what delete_cache does on its schedule
    assert [path for path in written + served if Path(path).exists()] == []
