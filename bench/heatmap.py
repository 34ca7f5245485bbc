"""What the photo tab's heatmap costs: Grad-CAM over one full-size photo, against the label's own prediction.

    python -m bench.heatmap                 # 200 calls each, on the CPU (or the GPU the app would pick)
    python -m bench.heatmap --runs 50

Interleaved, photo by photo: the label (`Classifier.predict`, what the page shows first) and the heatmap
(`Explainer.overlay`: decode at 512 px, Grad-CAM's forward and backward pass, the drawing), each as the app
calls it, p50/p95 in ms; interleaving keeps their ratio fair on a machine that other work slows down.
"""

import argparse
import itertools
import time
from pathlib import Path

from bench.common import percentile, report
from catsdogs.explain import Explainer
from catsdogs.hub import SHIPPED_WEIGHTS
from catsdogs.inference import Classifier, keep_freed_memory

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-fullres-sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    args = parser.parse_args()
    photos = sorted(args.photos.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no .jpg photos in {args.photos}")
    keep_freed_memory()  # as app.py does
    classifier = Classifier(SHIPPED_WEIGHTS)
    explainer = Explainer(classifier.model)
    label_s, heatmap_s = [], []
    for i, photo in zip(range(args.runs + 5), itertools.cycle(photos)):
        started = time.perf_counter()
        answer = classifier.predict([photo])[0]
        labelled = time.perf_counter()
        explainer.overlay(photo, answer.top_class)
        if i >= 5:  # the first calls warm up
            label_s.append(labelled - started)
            heatmap_s.append(time.perf_counter() - labelled)
    rows = [[name, 1000 * percentile(s, 0.5), 1000 * percentile(s, 0.95)]
            for name, s in (("label (Classifier.predict)", label_s), ("heatmap (Explainer.overlay)", heatmap_s))]
    report(f"The photo tab's two steps on {classifier.device.type}, one full-size photo each, {args.runs} runs, "
           "interleaved", ["step", "p50_ms", "p95_ms"], rows)


if __name__ == "__main__":
    main()
