"""The page's own parts in a real browser (Chromium, Playwright): the examples, the gallery and its CSV, a phone.

These need no camera and no particular pet, so they run once (tests/test_browser.py runs once per class).
"""

import csv
import io
from pathlib import Path

import httpx
import pytest
from conftest import FULL_SIZE, clear_photos
from gradio_client import Client, handle_file
from test_app import confidences
from test_browser import CHROMIUM, HEATMAP_SHOWN, no_broken_image, shown_answer

import app as demo_app


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: "
                                   "pip install -r requirements-dev.txt")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium (see .ci/run)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        yield browser
        browser.close()


def open_page(browser, app, width: int = 1100, height: int = 900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(app.url)
    page.wait_for_selector("#photo")
    return page


def test_clicking_an_example_gives_an_answer_and_the_non_pet_is_not_sure(browser, app):
    page = open_page(browser, app)
    page.get_by_text("Chelsea the cat").click()
    label, probability = shown_answer(page, "prediction")
    assert label == "cat" and probability >= demo_app.UNSURE_BELOW and page.locator("#unsure").inner_text() == ""
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    page.get_by_text("Grass").click()
    page.locator("#unsure").get_by_text("Not sure this is a cat or a dog").wait_for(timeout=30_000)
    page.close()


def caption(answer: dict) -> str:
    """What the gallery must say under a photo, from the API's answer for it."""
    probabilities = confidences(answer)
    top = max(probabilities.values())
    text = f"{answer['label']} {top:.1%}"
    return text + " · not sure" if top < demo_app.UNSURE_BELOW else text


def test_gallery_captions_and_csv_match_the_api(browser, app, shared_data):
    photos = [demo_app.EXAMPLES / "chelsea.jpg", demo_app.EXAMPLES / "grass.jpg",
              *clear_photos(shared_data, "dog")[:2]]
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
    assert no_broken_image(page, "gallery")
    link = page.locator("#batch-csv a").first.get_attribute("href")
    rows = list(csv.reader(io.StringIO(httpx.get(link, trust_env=False).text)))
    assert rows[0] == table["headers"]
    assert rows[1:] == [[str(cell) for cell in row] for row in table["data"]]
    page.close()


def test_a_phone_shows_the_answer_without_scrolling_sideways(browser, app, shared_data):
    page = open_page(browser, app, width=390, height=844)
    page.locator("#photo input[type=file]").set_input_files(shared_data / FULL_SIZE / "dog.79.jpg")
    assert shown_answer(page, "prediction")[0] == "dog"
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    width = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width[0] <= width[1], f"the page is {width[0]} px wide on a {width[1]} px screen"
    for shown in ("#prediction", "#heatmap"):
        box = page.locator(shown).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (shown, box)
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
