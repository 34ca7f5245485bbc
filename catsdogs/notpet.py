"""The "not a pet" score: how unlike every training photo a photo is, in the network's own features.

    python -m catsdogs.notpet --model weights --data ../shared/data/dogs-vs-cats-200/train

A two-class softmax only weighs cat against dog, so it answers one of them for a face or a car. This score is the
distance from a photo's penultimate features (L2-normalised, mirror view included as the weights' TTA says) to
its k-th nearest training photo's (KNN, Sun et al. 2022, "Out-of-distribution detection with deep nearest
neighbors"): photos like nothing the network was trained on lie far from all of them. It needs no non-pet photos
to fit: the bank is a seeded sample of the training photos, and the threshold is set on the validation photos
(FLAG_SHARE of them at most fall above it). bench/notpet.py measures it against the other scores: on the
non-pet pictures at hand energy and the top probability tell pets apart about as well, but they read the same two
logits as "not sure between cat and dog", and this reads the features before them.

The fitted score is `notpet.safetensors` beside the weights: the bank (float16) and, in its metadata, k, the
threshold and how it was chosen.
"""

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from catsdogs.cache import decoded_photos
from catsdogs.data import DataError, Photos, Split, choose_split
from catsdogs.hub import SHIPPED_WEIGHTS, HubError, fetch_weights, load_model
from catsdogs.model import CatsDogsCNN

FILE_NAME = "notpet.safetensors"
FLAG_SHARE = 0.05  # the threshold calls at most this share of the validation pets "not a pet"
BANK_PER_CLASS = 1000  # training photos of each class in the bank: 2 MB; 125 to 1000 measure alike (bench/notpet.py)
NEIGHBOUR = 5  # k: the distance to the k-th nearest training photo; 1 to 50 measure alike (bench/notpet.py)
SEED = 0  # which training photos the bank holds


@dataclass(frozen=True)
class NotPetScore:
    """A fitted KNN score: higher means less like the training photos; above `threshold` is "not a pet"."""

    bank: torch.Tensor  # (photos, features): L2-normalised penultimate features of training photos
    k: int
    threshold: float
    rule: str  # how the threshold was chosen, in words
    fitted_on: str  # which photos the bank and the threshold come from
    tta: str  # the weights' test-time augmentation the features were taken with (model.tta)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, d) on any device -> (N,) distances to the k-th nearest training photo."""
        unit = torch.nn.functional.normalize(features.float(), dim=1)
        similarity = unit @ self.bank.to(unit.device).T
        kth = similarity.topk(self.k, dim=1).values[:, -1]
        return (2 - 2 * kth).clamp_min(0).sqrt()  # the Euclidean distance between unit vectors

    def to(self, device: torch.device | str) -> "NotPetScore":
        """The same score with its bank on `device` (where the features will be), so no call copies it there."""
        return replace(self, bank=self.bank.to(device))

    def is_pet(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) bool: True where the photo lies within the threshold of the training photos."""
        return self.score(features) <= self.threshold

    def config_entry(self) -> dict:
        """What config.json can say about it (the bank stays in FILE_NAME)."""
        return {"not_a_pet": {"file": FILE_NAME, "method": f"knn: distance to the {self.k}-th nearest of "
                              f"{len(self.bank)} training photos' penultimate features (L2-normalised)",
                              "k": self.k, "threshold": self.threshold, "rule": self.rule,
                              "fitted_on": self.fitted_on, "tta": self.tta}}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE_NAME
        metadata = {key: json.dumps(value) for key, value in asdict(self).items() if key != "bank"}
        save_file({"bank": self.bank.to("cpu", torch.float16).contiguous()}, path, metadata=metadata)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "NotPetScore":
        """The score saved in `folder`; FileNotFoundError where there is none."""
        path = Path(folder) / FILE_NAME
        with safe_open(path, "pt") as file:
            metadata = {key: json.loads(value) for key, value in file.metadata().items()}
        return cls(bank=load_file(path)["bank"].float(), **metadata)


def threshold_for(scores: torch.Tensor, share: float = FLAG_SHARE) -> float:
    """The lowest threshold that calls at most `share` of these (pet) scores "not a pet" (score > threshold)."""
    ordered = scores.float().sort().values
    allowed = math.floor(share * len(ordered))
    return ordered[len(ordered) - allowed - 1].item()


def fit(train_features: torch.Tensor, val_features: torch.Tensor, tta: str, fitted_on: str, k: int = NEIGHBOUR,
        share: float = FLAG_SHARE) -> NotPetScore:
    """The score with a bank of `train_features` and the threshold that flags at most `share` of `val_features`."""
    bank = torch.nn.functional.normalize(train_features.float(), dim=1).half().float()  # as it is saved
    unfitted = NotPetScore(bank.cpu(), k, math.inf, "", fitted_on, tta)
    threshold = threshold_for(unfitted.score(val_features).cpu(), share)
    rule = (f"the lowest distance above which at most {share:.0%} of the {len(val_features)} validation photos "
            "fall")
    return NotPetScore(bank.cpu(), k, threshold, rule, fitted_on, tta)


def sample(photos: Photos, per_class: int, seed: int = SEED) -> Photos:
    """At most `per_class` photos of each class, drawn with `seed`, in their original order."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(set(photos.labels)):
        members = [i for i, y in enumerate(photos.labels) if y == label]
        chosen += [members[i] for i in torch.randperm(len(members), generator=generator)[:per_class].tolist()]
    return photos.subset(sorted(chosen))


def features_of(model: CatsDogsCNN, photos: Photos, name: str, workers: int, progress: bool) -> torch.Tensor:
    """The penultimate features of `photos` (decoded through the photo cache), as predictions compute them."""
    from catsdogs.inference import predict_with_features  # here: inference and evaluate can import this module

    images = decoded_photos(photos, model.image_size, workers, name, progress).images
    batches = tqdm(images.split(256), desc=f"features of the {name} photos", unit="batch", disable=not progress)
    return torch.cat([predict_with_features(model, batch)[1].cpu() for batch in batches])


def training_split(folder: Path, data: str | Path) -> Split:
    """The split the weights in `folder` were trained with: its val_fraction and seed from their metrics.json, as
    catsdogs.evaluate re-creates it."""
    from catsdogs.evaluate import _metrics  # here, as in features_of

    trained_with = _metrics(folder).get("config", {})
    return choose_split(data, trained_with.get("val_fraction", 0.1), trained_with.get("seed", 0))


def fit_for_weights(model_source: str | Path, data: str | Path, bank_per_class: int = BANK_PER_CLASS,
                    k: int = NEIGHBOUR, workers: int = min(8, os.cpu_count() or 1),
                    progress: bool = True) -> tuple[NotPetScore, Path]:
    """Fit the score for the weights in `model_source` on the training split they were trained on (its
    val_fraction and seed from their metrics.json, as catsdogs.evaluate re-creates it); the score and the folder."""
    folder = fetch_weights(model_source)
    model = load_model(folder).eval().to(memory_format=torch.channels_last)
    split = training_split(folder, data)
    bank = sample(split.train, bank_per_class)
    fitted_on = f"{len(bank)} training photos ({bank_per_class} of each class, seed {SEED}); {split.source}"
    score = fit(features_of(model, bank, "bank", workers, progress),
                features_of(model, split.val, "validation", workers, progress), model.tta, fitted_on, k)
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
    path = score.save(folder)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {json.dumps(score.config_entry(), indent=2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
