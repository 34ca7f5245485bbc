"""Take the README's screenshots of the demo with Chromium (Playwright), on the shipped weights.

    python docs/screenshots.py   # writes docs/photo.png, docs/phone.png, docs/live.png, docs/batch.png

The pictures are the repository's licence-clean examples/ (CC0, README: "The demo") and matplotlib's public-domain
portrait of Grace Hopper (a US Navy photo), not the Kaggle photos nor Gradio's sample pictures (whose licences are
not stated), which must not end up in the repository, not even inside a screenshot.
"""

import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
EXAMPLES = ROOT / "examples"
MATPLOTLIB_IMAGES = Path(find_spec("matplotlib").origin).parent / "mpl-data" / "sample_data"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from test_browser import CHROMIUM, WEBCAM_READY, HEATMAP_SHOWN, chromium_args, write_y4m  # noqa: E402

from bench.app_load import start_app  # noqa: E402


def photo_tab(page, url: str, path: Path, show_from: str | None = None) -> None:
    """The photo tab after a click on the cat example, once its heatmap is there (scrolled to `show_from`)."""
    page.goto(url)
    page.get_by_text("Chelsea the cat").click()
    page.wait_for_function(HEATMAP_SHOWN, timeout=60_000)
    if show_from:
        page.locator(show_from).evaluate("e => e.scrollIntoView()")
    page.wait_for_timeout(500)
    page.screenshot(path=path)


def main() -> None:
    app, url = start_app()
    try:
        camera = write_y4m(Path(tempfile.mkdtemp()) / "cam.y4m", [EXAMPLES / "chelsea.jpg"], frames_each=30)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=chromium_args(camera))
            photo_tab(browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2), url,
                      DOCS / "phone.png", show_from="#prediction")
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            photo_tab(page, url, DOCS / "photo.png")

            page.get_by_role("tab", name="Live webcam").click()
            page.locator("#live-explain input").check()  # the heatmap too
            page.locator("#live").get_by_text("Click to Access Webcam").click()
            page.wait_for_function(WEBCAM_READY, arg="live")
            page.locator("#live").get_by_label("capture photo").click()
            page.locator("#live-prediction [data-testid=label-output-value]").wait_for()
            page.locator("#live-heatmap img").wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=DOCS / "live.png")

            page.get_by_role("tab", name="Several photos").click()
            page.locator("#batch input[type=file]").set_input_files(
                [EXAMPLES / name for name in ("chelsea.jpg", "coffee.jpg", "gravel.jpg", "grass.jpg", "brick.jpg")]
                + [MATPLOTLIB_IMAGES / "grace_hopper.jpg"])
            page.locator("#batch-run").click()
            page.wait_for_function("() => document.querySelector('#batch-results').innerText.includes('grace_hopper')")
            page.wait_for_timeout(1000)
            page.locator("#batch-run").scroll_into_view_if_needed()
            page.screenshot(path=DOCS / "batch.png", full_page=True)
            browser.close()
    finally:
        app.terminate()


if __name__ == "__main__":
    main()
