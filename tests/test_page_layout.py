"""The page's layout in a real browser (Chromium, Playwright), on a phone (390 px) and a desktop (1280 px): the
answer on one screen, the examples, the gallery and table in any width, and the page's text from the weights' own
figures. One page visit per test checks several things."""

import json

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from conftest import clear_photos
from gradio_client import Client, handle_file
from test_browser import HEATMAP_SHOWN
from test_page import browser, caption, open_page  # noqa: F401  (the module's browser, with its fake camera)

import app as demo_app
from catsdogs.page_text import percent

PHONE, DESKTOP = (390, 844), (1280, 900)
# Each Label percentage as written, against its bar's value: one decimal, like the gallery and the notes.
LABEL_FIGURES = ("id => [...document.querySelectorAll(`#${id} .confidence-set`)].map(set => "
                 "[set.querySelector('dd.confidence').textContent, Number(set.querySelector('meter').value)])")
# The texts cut among the elements a selector names: drawn past the edge of the element, or of the table cell
# (which hides what overflows) that holds it.
CUT_TEXT = """sel => [...document.querySelectorAll(sel)].filter(e => {
  const range = document.createRange(); range.selectNodeContents(e);
  const text = range.getBoundingClientRect(), box = (e.closest('td, th') || e).getBoundingClientRect();
  return text.left < box.left - 1 || text.right > box.right + 1 || e.scrollWidth > e.clientWidth + 1;
}).map(e => e.textContent)"""


def assert_none_cut(page, selector: str) -> None:
    """Every text the selector names shows whole, once the layout has settled (a table sizes its columns after
    its first drawing)."""
    try:
        page.wait_for_function(f"sel => ({CUT_TEXT})(sel).length === 0", arg=selector, timeout=5_000)
    except PlaywrightTimeout:
        pytest.fail(f"cut at {page.viewport_size['width']} px: {page.evaluate(CUT_TEXT, selector)}")


# True once every element named is wholly inside the window (to the pixel: scrolling lands on fractions).
IN_VIEW = ("ids => ids.every(id => { const box = document.getElementById(id)?.getBoundingClientRect();"
           " return box && box.top >= -1 && box.bottom <= window.innerHeight + 1; })")


def wait_in_view(page, *ids: str) -> None:
    try:
        page.wait_for_function(IN_VIEW, arg=list(ids), timeout=5_000)
    except PlaywrightTimeout:
        boxes = {id: page.locator(f"#{id}").bounding_box() for id in ids}
        pytest.fail(f"not all on the screen of {page.viewport_size}: {boxes}")


def assert_one_decimal(page, component: str) -> None:
    for shown, value in page.evaluate(LABEL_FIGURES, component):
        assert shown == f"{value:.1%}", (shown, value)


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_an_example_gives_its_answer_its_figures_and_heatmap_on_one_screen(browser, app, size, shared_data):  # noqa: F811
    width, height = size
    page = open_page(browser, app, width, height)
    tabs = page.get_by_role("tab")
    assert [tab.is_visible() for tab in tabs.all()] == [True] * 3 and page.locator(".overflow-menu").is_hidden()
    # Every example's thumbnail drawn (the gallery fills in after the page's first drawing):
    page.wait_for_function("n => { const images = [...document.querySelectorAll('#examples img')];"
                           " return images.length === n && images.every(i => i.complete && i.naturalWidth > 0); }",
                           arg=len(demo_app.EXAMPLE_PICTURES), timeout=10_000)
    page.get_by_text("Gravel", exact=True).click()  # its picture, and its label under it
    page.wait_for_function(HEATMAP_SHOWN, timeout=30_000)
    page.locator("#unsure").get_by_text("Not sure between cat and dog").wait_for(timeout=30_000)
    wait_in_view(page, "prediction", "unsure", "heatmap")
    assert_one_decimal(page, "prediction")
    assert page.locator("#examples .selected").count() == 0  # no example stays marked as the photo in the box
    page.locator("#photo").get_by_label("Remove Image").click()
    page.locator("#photo input[type=file]").set_input_files(clear_photos(shared_data, "dog")[0])
    page.locator("#prediction [data-testid=label-output-value]").get_by_text("dog").wait_for(timeout=30_000)
    assert page.locator("#examples .selected").count() == 0
    assert_one_decimal(page, "prediction")
    page.close()


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_the_gallery_and_table_fit_and_come_into_view(browser, app, size, shared_data):  # noqa: F811
    width, height = size
    photos = [demo_app.EXAMPLES / name for name in demo_app.EXAMPLE_PICTURES] + clear_photos(shared_data)[:6]
    page = open_page(browser, app, width, height)
    page.get_by_role("tab", name="Several photos").click()
    page.locator("#batch input[type=file]").set_input_files(photos)
    page.locator("#batch-run").click()
    page.locator("#gallery .caption-label").nth(len(photos) - 1).wait_for(timeout=60_000)
    wait_in_view(page, "batch-timing")  # the answers brought into view
    gallery = page.locator("#gallery").bounding_box()
    thumbnails = [box for box in (t.bounding_box() for t in page.locator("#gallery .thumbnail-item").all())]
    assert all(gallery["x"] <= t["x"] and t["x"] + t["width"] <= gallery["x"] + gallery["width"] for t in thumbnails)
    # The gallery grows with its photos: none hidden below a box that scrolls inside.
    assert all(t["y"] + t["height"] <= gallery["y"] + gallery["height"] for t in thumbnails)
    assert_none_cut(page, "#gallery .caption-label")
    table = page.locator("#batch-results table").bounding_box()
    assert table["x"] >= 0 and table["x"] + table["width"] <= width, table  # every column on the screen
    page.close()


def test_the_text_states_the_weights_own_figures_and_links_the_whole_card(browser, app, shipped_weights):  # noqa: F811
    metrics = json.loads((shipped_weights / "metrics.json").read_text())
    accuracy = percent(metrics["validation_by_device"]["cpu"]["accuracy"])  # the page runs on the CPU
    page = open_page(browser, app, *DESKTOP)
    how, card, info = (page.locator(f"#{id}").inner_text() for id in ("how-it-works", "model-card", "info"))
    for text in (how, card, info):
        assert accuracy in text and "fp32 on a CPU" in text, text
    assert f"{metrics['n_val']:,} validation photos" in card and "Licence: MIT" in card
    assert f"{metrics['n_train']:,} photos" in card and "epoch" not in card.lower()
    assert len(card) < 1000 and "/" not in card.replace("N/A", "")  # headline figures only, no paths
    client = Client(app.url, verbose=False)
    answers = [f"{name.split('.')[0]} → "
               f"{caption(client.predict(handle_file(demo_app.EXAMPLES / name), api_name='/predict'))}"
               for name in demo_app.EXAMPLE_PICTURES]
    assert "; ".join(answers) in how  # what the examples get, as the weights answer them
    assert page.locator("#full-card").get_by_text("The full model card").is_visible()
    with page.expect_download() as download:
        page.locator("#full-card").click()
    assert "the documented cat-vs-dog CNN" in open(download.value.path()).read()
    page.close()
