"""The page as a visitor meets it, in Chromium: page load, upload to answer, upload to heatmap.

    python -m bench.page --rounds 10
    python -m bench.page --rounds 10 --compare ../main/app.py   # and another checkout's app.py, interleaved

Each round opens a fresh tab on each app in turn (interleaved, so a machine that other work slows down slows
both alike): the time until the photo box is there, then a full-size photo uploaded, the time until the label
shows, and until the heatmap shows (where the app has one). Medians over the rounds, in ms.
"""

import argparse
import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from bench.app_load import PHOTOS, ROOT, start_app
from bench.common import report

sys.path.insert(0, str(ROOT / "tests"))
from test_browser import CHROMIUM, HEATMAP_SHOWN  # noqa: E402


def one_visit(browser, url: str, photo: Path) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    started = time.perf_counter()
    page.goto(url)
    page.locator("#photo input[type=file]").wait_for(state="attached", timeout=60_000)
    times = {"page_ms": time.perf_counter() - started}
    started = time.perf_counter()
    page.locator("#photo input[type=file]").set_input_files(photo)
    page.locator("#prediction [data-testid=label-output-value]").wait_for(timeout=60_000)
    times["answer_ms"] = time.perf_counter() - started
    if page.locator("#heatmap").count():
        page.wait_for_function(HEATMAP_SHOWN, timeout=60_000)
        times["heatmap_ms"] = time.perf_counter() - started
    page.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--compare", type=Path, help="another checkout's app.py, measured in the same rounds")
    args = parser.parse_args()
    app_files = [ROOT / "app.py", *([args.compare.resolve()] if args.compare else [])]
    apps = [start_app(app_file, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for app_file in app_files]
    photos = itertools.cycle(sorted(PHOTOS.glob("*.jpg")))
    visits: dict[Path, list[dict[str, float]]] = {app_file: [] for app_file in app_files}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            for round_ in range(args.rounds + 1):  # round 0 warms both up
                for app_file, (_, url) in zip(app_files, apps):
                    times = one_visit(browser, url, next(photos))
                    if round_:
                        visits[app_file].append(times)
            browser.close()
    finally:
        for app, _ in apps:
            app.terminate()
    columns = ["app", "page_ms", "answer_ms", "heatmap_ms"]
    rows = [[str(app_file)] + [1000 * statistics.median(v[c] for v in found) if c in found[0] else "-"
                               for c in columns[1:]] for app_file, found in visits.items()]
    report(f"The page in Chromium, medians of {args.rounds} visits per app, interleaved", columns, rows)


if __name__ == "__main__":
    main()
