"""Choosing the app's "not sure" threshold: what a cut on the top-class probability flags, on pets and on non-pets.

    python -m bench.unsure --data ../shared/data/dogs-vs-cats-200/train

Pets: the validation split the weights never trained on (re-created as
`catsdogs.evaluate --split validation` does). Non-pets: photos that ship inside
installed packages (Gradio's and matplotlib's sample images), or `--non-pets FILES`.
A two-class model must answer cat or dog for anything, so a good threshold
flags the pets it gets wrong and the photos that are neither, and few others.
"""

import argparse
import json
from importlib.util import find_spec
from pathlib import Path

import torch

from bench.common import report
from catsdogs.config import recorded_split
from catsdogs.data import decode_photos
from catsdogs.evaluate import select_photos
from catsdogs.loader import find
from catsdogs.hub import SHIPPED_WEIGHTS, fetch_weights, load_model
from catsdogs.model import predict_logits
from catsdogs.preprocess import load_photo


def packaged_non_pets() -> list[Path]:
    gradio = Path(find_spec("gradio").origin).parent / "media_assets" / "images"
    matplotlib = Path(find_spec("matplotlib").origin).parent / "mpl-data" / "sample_data"
    return [gradio / "tower.jpg", gradio / "groot.jpeg", gradio / "bus.png", matplotlib / "grace_hopper.jpg",
            matplotlib / "Minduka_Present_Blue_Pack.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS))
    parser.add_argument("--data", required=True, help="the training data; its validation split is scored")
    parser.add_argument("--non-pets", type=Path, nargs="*", default=None)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    args = parser.parse_args()

    folder = fetch_weights(args.model)
    model = load_model(folder)
    metrics = json.loads((folder / "metrics.json").read_text())["config"]
    photos, split = select_photos(find(args.data), "validation", *recorded_split(metrics))
    images, labels, _ = decode_photos(photos, model.image_size)
    probabilities = model.probabilities(predict_logits(model, images))  # calibrated, as the app shows them
    confidence, correct = probabilities.max(dim=1).values, probabilities.argmax(dim=1) == labels

    non_pet_files = args.non_pets if args.non_pets is not None else packaged_non_pets()
    non_pets = predict_logits(model, torch.stack([load_photo(p, model.image_size) for p in non_pet_files]))
    non_pet_confidence = model.probabilities(non_pets).max(dim=1).values

    rows = []
    for threshold in args.thresholds:
        flagged = confidence < threshold
        rows.append([threshold, f"{flagged.float().mean().item():.1%}",
                     f"{(~correct[flagged]).float().mean().item():.1%}" if flagged.any() else "-",
                     f"{(~correct[~flagged]).float().mean().item():.1%}",
                     f"{(~correct & flagged).sum().item()}/{(~correct).sum().item()}",
                     f"{(non_pet_confidence < threshold).sum().item()}/{len(non_pet_files)}"])
    columns = ["not sure below", "pets flagged", "error rate of flagged pets", "error rate of the rest",
               "pet mistakes flagged", "non-pets flagged"]
    report(f"'not sure' threshold on {split['description']}, temperature {model.temperature:.3f}", columns, rows, {
        "pets": len(labels), "accuracy": correct.float().mean().item(),
        "non_pets": {str(p.name): round(c, 4) for p, c in zip(non_pet_files, non_pet_confidence.tolist())}})


if __name__ == "__main__":
    main()
