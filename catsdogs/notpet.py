"""The "not a pet" score: how unlike every training photo a photo is, in the network's own features.

    python -m catsdogs.fit_notpet --model weights --data ../shared/data/dogs-vs-cats-200/train   # fits it

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

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


FILE_NAME = "notpet.safetensors"
CONFIG_KEY = "not_a_pet"  # config.json's entry describing the score (CatsDogsCNN takes no such argument)
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
    crop_pct: float = 1.0  # and the centred crop the network saw (model.crop_pct; 1 in files that do not say)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, d) on any device -> (N,) distances to the k-th nearest training photo."""
        unit = torch.nn.functional.normalize(features.float(), dim=1)
        similarity = unit @ self.bank.to(unit.device, unit.dtype).T
        kth = similarity.topk(self.k, dim=1).values[:, -1]
        return (2 - 2 * kth).clamp_min(0).sqrt()  # the Euclidean distance between unit vectors

    def to(self, device: torch.device | str) -> "NotPetScore":
        """The same score with its bank on `device` (where the features will be), so no call copies it there."""
        return replace(self, bank=self.bank.to(device))

    def is_pet(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) bool: True where the photo lies within the threshold of the training photos."""
        return self.within(self.score(features))

    def within(self, distances: torch.Tensor) -> torch.Tensor:
        """(N,) bool: True where a distance (`score`) is within the threshold: the photo is called a pet."""
        return distances <= self.threshold

    def config_entry(self) -> dict:
        """What config.json can say about it (the bank stays in FILE_NAME); the crop only where it is not the whole
        photo (an entry that does not name one means the whole photo)."""
        entry = {"file": FILE_NAME, "method": f"knn: distance to the {self.k}-th nearest of {len(self.bank)} "
                 "training photos' penultimate features (L2-normalised)", "k": self.k, "threshold": self.threshold,
                 "rule": self.rule, "fitted_on": self.fitted_on, "tta": self.tta}
        return {CONFIG_KEY: entry | ({"crop_pct": self.crop_pct} if self.crop_pct < 1 else {})}

    def save(self, folder: str | Path) -> Path:
        """Write FILE_NAME into `folder` and describe it in the folder's config.json (where there is one)."""
        path = Path(folder) / FILE_NAME
        metadata = {key: json.dumps(value) for key, value in asdict(self).items() if key != "bank"}
        save_file({"bank": self.bank.to("cpu", torch.float16).contiguous()}, path, metadata=metadata)
        config = Path(folder) / "config.json"
        if config.is_file():
            config.write_text(json.dumps(json.loads(config.read_text()) | self.config_entry(), indent=2) + "\n")
        return path

    def stored_in(self, folder: str | Path) -> bool:
        """Whether `folder`'s FILE_NAME already holds this score. Saving it again would write the same score in other
        bytes (safetensors writes its metadata in a different order each time): a changed file to git and the Hub."""
        try:
            stored = NotPetScore.load(folder)
        except (OSError, ValueError, TypeError, SafetensorError):  # none, or not a score: it is written
            return False
        return (replace(stored, bank=None) == replace(self, bank=None)
                and torch.equal(stored.bank, self.bank.to("cpu", torch.float16).float()))

    @classmethod
    def load(cls, folder: str | Path) -> "NotPetScore":
        """The score saved in `folder`; FileNotFoundError where there is none."""
        path = Path(folder) / FILE_NAME
        with safe_open(path, "pt") as file:
            metadata = {key: json.loads(value) for key, value in file.metadata().items()}
        return cls(bank=load_file(path)["bank"].float(), **metadata)


def bank_indices(labels: list[int], per_class: int, seed: int = SEED) -> list[int]:
    """Which photos the bank holds: at most `per_class` of each class, drawn with `seed`, in their original order."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        chosen += [members[i] for i in torch.randperm(len(members), generator=generator)[:per_class].tolist()]
    return sorted(chosen)


def threshold_for(scores: torch.Tensor, share: float = FLAG_SHARE) -> float:
    """The lowest threshold that calls at most `share` of these (pet) scores "not a pet" (score > threshold)."""
    ordered = scores.float().sort().values
    allowed = math.floor(share * len(ordered))
    return ordered[len(ordered) - allowed - 1].item()


def fit(train_features: torch.Tensor, val_features: torch.Tensor, tta: str, fitted_on: str, k: int = NEIGHBOUR,
        share: float = FLAG_SHARE, crop_pct: float = 1.0) -> NotPetScore:
    """The score with a bank of `train_features` and the threshold that flags at most `share` of `val_features`
    (both taken with test-time augmentation `tta` and centred crop `crop_pct`)."""
    bank = torch.nn.functional.normalize(train_features.float(), dim=1).half().float()  # as it is saved
    unfitted = NotPetScore(bank.cpu(), k, math.inf, "", fitted_on, tta, crop_pct)
    threshold = threshold_for(unfitted.score(val_features).cpu(), share)
    rule = (f"the lowest distance above which at most {share:.0%} of the {len(val_features)} validation photos "
            "fall")
    return NotPetScore(bank.cpu(), k, threshold, rule, fitted_on, tta, crop_pct)
