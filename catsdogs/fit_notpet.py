"""Fit the "not a pet" score (`catsdogs.notpet`) for existing weights on the photos they were trained on, and write
it beside them.

    python -m catsdogs.fit_notpet --model weights --data ../shared/data/dogs-vs-cats-200/train
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from catsdogs.config import recorded_split
from catsdogs.data import DataError, Photos, Split
from catsdogs.hub import (ONNX_FILE, SHIPPED_WEIGHTS, HubError, fetch_weights, is_local_folder, load_model, onnx_holds,
                          read_metrics)
from catsdogs.loader import PhotoLoader, find_split
from catsdogs.model import CatsDogsCNN, predict_with_features
from catsdogs.notpet import BANK_PER_CLASS, NEIGHBOUR, SEED, NotPetScore, bank_indices, fit
from catsdogs.outputs import rewrite_card


def sample(photos: Photos, per_class: int, seed: int = SEED) -> Photos:
    """At most `per_class` photos of each class, drawn with `seed`, in their original order (`bank_indices`)."""
    return photos.subset(bank_indices(list(photos.labels), per_class, seed))


def features_of(model: CatsDogsCNN, photos: Photos, name: str, workers: int, progress: bool) -> torch.Tensor:
    """The penultimate features of `photos` (decoded through the photo cache), as predictions compute them."""
    images = PhotoLoader.load(photos, model.image_size, torch.device("cpu"), name, workers, progress).images
    batches = tqdm(images.split(256), desc=f"features of the {name} photos", unit="batch", disable=not progress)
    return torch.cat([predict_with_features(model, batch)[1].cpu() for batch in batches])


def training_split(folder: Path, data: str | Path) -> Split:
    """The split the weights in `folder` were trained with: its val_fraction and seed from their metrics.json, as
    catsdogs.evaluate re-creates it."""
    return find_split(data, *recorded_split(read_metrics(folder).get("config", {})))


def fit_for_weights(model_source: str | Path, data: str | Path, bank_per_class: int = BANK_PER_CLASS,
                    k: int = NEIGHBOUR, workers: int = min(8, os.cpu_count() or 1),
                    progress: bool = True) -> tuple[NotPetScore, Path]:
    """Fit the score for the weights in `model_source` on the training split they were trained on (its
    val_fraction and seed from their metrics.json, as catsdogs.evaluate re-creates it); the score and the folder."""
    if not is_local_folder(model_source):  # the score and config.json are written beside the weights
        raise HubError(f"{model_source} is not a weights folder: fit the score for a local copy (e.g. `hf download "
                       "REPO --local-dir DIR`), then push it")
    folder = fetch_weights(model_source)
    model = load_model(folder).eval().to(memory_format=torch.channels_last)
    split = training_split(folder, data)
    bank = sample(split.train, bank_per_class)
    fitted_on = f"{len(bank)} training photos ({bank_per_class} of each class, seed {SEED}); {split.source}"
    score = fit(features_of(model, bank, "bank", workers, progress),
                features_of(model, split.val, "validation", workers, progress), model.tta, fitted_on, k,
                crop_pct=model.crop_pct)
    return score, folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS), help="weights folder (default: weights/)")
    parser.add_argument("--data", required=True, help="the photos the weights were trained on")
    parser.add_argument("--bank-per-class", type=int, default=BANK_PER_CLASS,
                        help=f"training photos of each class in the bank (default {BANK_PER_CLASS})")
    parser.add_argument("--k", type=int, default=NEIGHBOUR, help=f"which nearest neighbour (default {NEIGHBOUR})")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads decoding photos")
    args = parser.parse_args(argv)
    try:
        score, folder = fit_for_weights(args.model, args.data, args.bank_per_class, args.k, args.workers)
    except (DataError, HubError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    card = (folder / "metrics.json").is_file()  # a card rendered from train.py's metrics: it describes the score too
    try:
        path = score.save(folder)
        if card:
            rewrite_card(folder, load_model(folder), read_metrics(folder))  # (an ONNX file with the old score goes)
        elif not onnx_holds(folder, load_model(folder), score):
            (folder / ONNX_FILE).unlink(missing_ok=True)
    except OSError as error:  # a WriteError says what could not be written
        print(f"error: cannot write the score beside the weights in {folder}: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and its entry in {folder / 'config.json'}"
          f"{' and the card' if card else ''}: "
          f"{json.dumps(score.config_entry(), indent=2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
