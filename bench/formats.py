"""What a photo's format costs the page: one 12-megapixel phone photo saved as JPEG, HEIC, AVIF, WebP and PNG.

    python -m bench.formats                   # a full-size Kaggle photo, enlarged to 4032x3024
    python -m bench.formats --photo PHOTO --runs 9

For each format: the file's size, its decode to the network's input, the photo tab's two steps as a visitor sees
them (app.show_answer: the answer, with the JPEG copy the page shows of a photo browsers cannot show; then the
heatmap) and the "Several photos" tab on 20 copies of the photo (answers, gallery and table, as the page makes
them). Medians of --runs runs; the CPU predicts in fp32, as the app does. HEIC is written with pillow-heif
(requirements-dev.txt).
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

import app as demo_app
from bench.common import report
from catsdogs.hub import SHIPPED_WEIGHTS
from catsdogs.inference import Classifier, keep_freed_memory
from catsdogs.predict import table_headers
from catsdogs.preprocess import load_photo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from imagegen import save_as  # noqa: E402  (the tests' writer of every format, HEIC by pillow-heif)

PHOTO = ROOT.parent / "shared" / "data" / "dogs-vs-cats-fullres-sample" / "cat.85.jpg"
FORMATS = {"JPEG": ".jpg", "HEIC": ".heic", "AVIF": ".avif", "WebP": ".webp", "PNG": ".png"}
PHONE = (4032, 3024)  # a 12-megapixel phone camera's photo
BATCH = 20


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1000


def photo_tab_ms(predictor: demo_app.Predictor, photo: str, runs: int) -> tuple[float, float]:
    """Medians of the photo tab's two steps, as a visitor sees them: from the photo to the answer (and the copy
    shown of it), and on to the heatmap."""
    answered, explained = [], []
    for _ in range(runs + 1):  # the first is a warm-up
        started = time.perf_counter()
        steps = demo_app.show_answer(predictor, photo, demo_app.PhotoBox())
        next(steps)
        answered.append(time.perf_counter() - started)
        next(steps)
        explained.append(time.perf_counter() - started)
    return statistics.median(answered[1:]) * 1000, statistics.median(explained[1:]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, default=PHOTO, help="the photo, enlarged to 4032x3024")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()  # as app.py does
    predictor = demo_app.Predictor(Classifier(SHIPPED_WEIGHTS), "")
    headers = table_headers(predictor.class_names)
    phone_photo = Image.open(args.photo).convert("RGB").resize(PHONE, Image.Resampling.BICUBIC)
    rows = []
    with tempfile.TemporaryDirectory(prefix="formats-") as tmp:
        for name, suffix in FORMATS.items():
            photo = str(save_as(phone_photo, Path(tmp) / f"photo{suffix}", quality=85))
            batch = [shutil.copy(photo, Path(tmp) / f"{name}-{i}{suffix}") for i in range(BATCH)]
            rows.append([name, Path(photo).stat().st_size / 2**20, median_ms(lambda: load_photo(photo, 224), args.runs),
                         *photo_tab_ms(predictor, photo, args.runs),
                         median_ms(lambda: demo_app.show_batch(predictor, headers, batch), 1) / 1000])
    report(f"A {PHONE[0]}x{PHONE[1]} photo in each format through the page (medians of {args.runs} runs)",
           ["format", "file MB", "decode ms", "photo tab: answer ms", "photo tab: heatmap ms",
            f"Several photos, {BATCH} of it, s"], rows)


if __name__ == "__main__":
    main()
