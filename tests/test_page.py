"""The page's own parts in a real browser (Chromium, Playwright): the examples, the gallery and its CSV, a phone,
and a picture of neither cat nor dog on every surface: upload, webcam snapshot, live stream, gallery and table.

These need no particular pet, so they run once (tests/test_browser.py runs once per class); the fake camera here
shows a brick wall.
"""

import csv
import io

import httpx
import pytest
from conftest import FULL_SIZE, clear_photos
from gradio_client import Client, handle_file
from imagegen import save_as
from PIL import Image
from test_app import confidences
from test_browser import (HEATMAP_SHOWN, SCRIPTS_RAN, chromium, no_broken_image, open_webcam, shown_answer,
                          start_live_stream)

import app as demo_app
from catsdogs.inference import NOT_A_PET, UNSURE_BELOW


BRICK = demo_app.EXAMPLES / "brick.jpg"  # what the shipped not-a-pet score flags, through the webcam too


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    yield from chromium([BRICK], tmp_path_factory.mktemp("webcam") / "brick.y4m", frames_each=2)


def open_page(browser, app, width: int = 1100, height: int = 900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(app.url)
    page.wait_for_selector(SCRIPTS_RAN, state="attached")
    return page


def assert_neither(page, component: str, note: str) -> None:
    """The Label's headline is the third answer, its two probabilities muted beneath it, and the note says why."""
    page.locator(f"#{component} [data-testid=label-output-value]").get_by_text(NOT_A_PET).wait_for(
        timeout=30_000)
    muted = page.locator(f"#{component} .confidence-set .bar").evaluate_all(
        "bars => bars.map(e => Number(getComputedStyle(e).opacity))")
    assert len(muted) == 2 and max(muted) < 1, muted  # faint bars; their figures grey (tests/test_page_access.py)
    page.locator(f"#{note}").get_by_text("This doesn't look like a cat or a dog").wait_for(timeout=10_000)


def test_clicking_an_example_gives_one_of_the_three_answers(browser, app):
    page = open_page(browser, app)
    page.get_by_text("Chelsea the cat").click()
    label, probability = shown_answer(page, "prediction")
    assert label == "cat" and probability >= UNSURE_BELOW and page.locator("#unsure").inner_text() == ""
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    page.get_by_text("A brick wall").click()
    assert_neither(page, "prediction", "unsure")
    page.get_by_text("Gravel", exact=True).click()  # called a pet, far enough from sure for the note
    page.locator("#unsure").get_by_text("Not sure between cat and dog").wait_for(timeout=30_000)
    assert shown_answer(page, "prediction")[0] in {"cat", "dog"}
    assert page.locator("#prediction .confidence-set .bar").first.evaluate("e => getComputedStyle(e).opacity") == "1"
    page.close()


def test_a_non_pet_on_the_webcam_is_neither_in_the_snapshot_and_the_live_stream(browser, app):
    page = open_page(browser, app)
    open_webcam(page)
    page.locator("#photo").get_by_label("capture photo").click()
    assert_neither(page, "prediction", "unsure")
    start_live_stream(page)
    assert_neither(page, "live-prediction", "live-unsure")
    page.close()


def caption(answer: dict) -> str:
    """What the gallery must say under a photo, from the API's answer for it."""
    probabilities = confidences(answer)
    top_class = max(probabilities, key=probabilities.get)
    text = f"{top_class} {probabilities[top_class]:.1%}"
    if answer["label"] == NOT_A_PET:
        return f"{NOT_A_PET} ({text})"
    return text + " · not sure" if probabilities[top_class] < UNSURE_BELOW else text


def test_gallery_captions_and_csv_match_the_api(browser, app, shared_data, tmp_path):
    """Every photo shows in the gallery, those in formats browsers cannot show (an iPhone's HEIC, a TIFF) too."""
    dogs = clear_photos(shared_data, "dog")[:2]
    photos = [demo_app.EXAMPLES / "chelsea.jpg", BRICK, demo_app.EXAMPLES / "gravel.jpg",
              save_as(Image.open(dogs[0]), tmp_path / "IMG_0001.HEIC"),
              save_as(Image.open(dogs[1]), tmp_path / "scan.tif")]
    client = Client(app.url, verbose=False)
    expected = [caption(client.predict(handle_file(photo), api_name="/predict")) for photo in photos]
    table = client.predict([handle_file(photo) for photo in photos], api_name="/predict_many")
    page = open_page(browser, app)
    page.get_by_role("tab", name="Several photos").click()
    page.locator("#batch input[type=file]").set_input_files(photos)
    page.locator("#batch-run").click()
    captions = page.locator("#gallery .caption-label")
    captions.nth(len(photos) - 1).wait_for(timeout=60_000)
    assert captions.all_inner_texts() == expected
    assert expected[1].startswith(NOT_A_PET) and "not sure" in expected[2]  # the three answers shown
    # The captions come before the thumbnails have loaded: wait for every one to finish, loaded or broken.
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every(img => img.complete)",
                           timeout=30_000)
    assert no_broken_image(page, "gallery")
    link = page.locator("#batch-csv a").first.get_attribute("href")
    rows = list(csv.reader(io.StringIO(httpx.get(link, trust_env=False).text)))
    assert rows[0] == table["headers"]
    assert rows[1:] == [[str(cell) for cell in row] for row in table["data"]]
    page.close()


def test_an_iphone_photo_shows_in_the_box_with_its_answer_and_heatmap(browser, app, shared_data, tmp_path):
    """HEIC, which Chromium cannot show: the box shows a JPEG copy of it (not a broken image), the answer is the
    photo's own, given once. An iPhone names it in capitals (IMG_0002.HEIC), which Chromium on Linux gives no type:
    chosen with the file chooser or dropped, the box takes it all the same."""
    cat, dog = clear_photos(shared_data, "cat")[0], clear_photos(shared_data, "dog")[0]
    page = open_page(browser, app)
    page.locator("#photo input[type=file]").set_input_files(save_as(Image.open(cat), tmp_path / "IMG_0002.HEIC"))
    label, probability = shown_answer(page, "prediction")
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    page.wait_for_function("() => document.querySelector('#photo img')?.naturalWidth > 0", timeout=30_000)
    assert no_broken_image(page, "photo") and page.locator("[data-testid=toast-body]").count() == 0
    expected = confidences(Client(app.url, verbose=False).predict(handle_file(cat), api_name="/predict"))
    assert label == "cat" and probability == pytest.approx(expected["cat"], abs=0.02)  # HEIC is lossy, a little
    page.locator("#photo").get_by_label("Remove Image").click()
    dropped = page.evaluate_handle(
        "bytes => { const files = new DataTransfer();"
        " files.items.add(new File([new Uint8Array(bytes)], 'IMG_0003.HEIC', {type: ''})); return files; }",
        list(save_as(Image.open(dog), tmp_path / "IMG_0003.HEIC").read_bytes()))
    page.locator("#photo button.upload-container").dispatch_event("drop", {"dataTransfer": dropped})
    page.locator("#prediction [data-testid=label-output-value]").get_by_text("dog").wait_for(timeout=30_000)
    assert page.locator("[data-testid=toast-body]").count() == 0
    page.close()


def test_the_narrowest_phone_shows_every_tab_and_the_answer_without_scrolling_sideways(browser, app, shared_data):
    """320 px: WCAG's narrowest width (a 1280-px window zoomed to 400%), where a page must not scroll sideways."""
    page = open_page(browser, app, width=320, height=640)
    tabs = page.get_by_role("tablist").get_by_role("tab")
    assert tabs.all_inner_texts() == ["Photo", "Live webcam", "Several photos"]  # none in Gradio's "•••" menu
    page.locator("#photo input[type=file]").set_input_files(shared_data / FULL_SIZE / "dog.79.jpg")
    assert shown_answer(page, "prediction")[0] == "dog"
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    width = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], f"the page is {width[0]} px wide on a {width[1]} px screen"
    for shown in ("#prediction", "#heatmap"):
        box = page.locator(shown).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 320, (shown, box)
    page.close()


def test_answer_times_are_per_visitor_and_per_tab(browser, app, shared_data):
    first, second = open_page(browser, app), open_page(browser, app)
    first.locator("#photo input[type=file]").set_input_files(shared_data / FULL_SIZE / "cat.85.jpg")
    first.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    photo_line = first.locator("#photo-timing").inner_text()
    assert photo_line.startswith("Answered in")
    second.get_by_role("tab", name="Several photos").click()
    second.locator("#batch input[type=file]").set_input_files(clear_photos(shared_data, "dog")[:3])
    second.locator("#batch-run").click()
    second.locator("#batch-timing").get_by_text("3 photos answered in").wait_for(timeout=60_000)
    # The second visitor's batch changed neither the first visitor's line nor anything on its own photo tab.
    assert first.locator("#photo-timing").inner_text() == photo_line
    second.get_by_role("tab", name="Photo", exact=True).click()
    assert second.locator("#photo-timing").inner_text() == ""
    first.get_by_role("tab", name="Several photos").click()
    assert first.locator("#batch-timing").inner_text() == ""
    first.close()
    second.close()
