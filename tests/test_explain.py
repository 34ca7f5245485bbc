"""Where the network looked (catsdogs.explain): the heatmap marks what the answer rests on, drawn over the photo."""

import numpy as np
import pytest
import torch
from conftest import FULL_SIZE, clear_photos, true_class
from PIL import Image

from catsdogs import CatsDogsCNN
from catsdogs.explain import HEATMAP_SIDE, Explainer
from catsdogs.hub import SHIPPED_WEIGHTS
from catsdogs.inference import Classifier
from catsdogs.model import network_input
from catsdogs.preprocess import photo_to_uint8


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(SHIPPED_WEIGHTS)


def class_margin(explainer: Explainer, image: torch.Tensor, k: int) -> float:
    """How far the network's logit for class k leads the other class's, on a uint8 photo, seen as the network sees
    it when it predicts (normalised and cropped)."""
    with torch.no_grad():
        logits = explainer.model(network_input(explainer.model, image[None]))[0]
    return (logits[k] - logits[1 - k]).item()


def greyed(image: torch.Tensor, heat: np.ndarray, share: float = 0.2) -> torch.Tensor:
    """The input with its hottest `share` of pixels (by `heat`) set to mid-grey."""
    hottest = torch.from_numpy(np.argsort(heat, axis=None, kind="stable")[::-1][:int(share * heat.size)].copy())
    mask = torch.zeros(heat.size, dtype=torch.bool).index_fill_(0, hottest, True).view(heat.shape)
    out = image.clone()
    out[:, mask] = 128
    return out


def test_greying_where_the_heatmap_is_hot_costs_the_class_most(classifier, shared_data):
    """Faithfulness by deletion (region perturbation, Samek et al. 2017): hiding the hottest fifth of a photo must
    cost the class far more than hiding its coldest fifth, or the fifth a rotated (wrong) map points at.

    A test of the map, not of the network's habits: the earlier test (a pet beside a grey area: is the heat on the
    pet?) measured the network: the 97% weights put most of the heat on the grey for several photos (README).
    """
    explainer = Explainer(classifier.model)
    drops = {"hot": [], "cold": [], "rotated": []}
    for photo in clear_photos(shared_data):
        original = Image.open(photo)
        k = explainer.model.class_names.index(true_class(photo))
        image = photo_to_uint8(original, 224)
        assert explainer.heatmap(image, true_class(photo), original.size).shape == original.size[::-1]
        heat = explainer.heatmap(image, true_class(photo), (224, 224))
        assert heat.min() >= 0 and heat.max() == pytest.approx(1)
        margin = class_margin(explainer, image, k)
        for name, where in {"hot": heat, "cold": -heat, "rotated": heat[::-1, ::-1]}.items():
            drops[name].append(margin - class_margin(explainer, greyed(image, where), k))
    mean = {name: float(np.mean(values)) for name, values in drops.items()}
    # Measured on the shipped weights: hot 0.90, cold 0.04, rotated 0.06 (logit margin lost, mean of 8 photos).
    assert mean["hot"] > 0.3 and mean["hot"] > 3 * max(mean["cold"], mean["rotated"]), drops


def test_the_overlay_is_the_upright_photo_coloured_where_it_looked(classifier, shared_data):
    photo = shared_data / FULL_SIZE / "dog.79.jpg"
    overlay = Explainer(classifier.model).overlay(photo, "dog")
    original = Image.open(photo).convert("RGB")
    assert max(overlay.size) == min(HEATMAP_SIDE, max(original.size))  # never enlarged
    assert overlay.width / overlay.height == pytest.approx(original.width / original.height, rel=0.01)
    changed = np.abs(np.asarray(overlay, float) - np.asarray(original.resize(overlay.size), float)).max(axis=2) > 40
    assert 0.05 < changed.mean() < 0.9  # coloured where it looked, the photo itself elsewhere


@pytest.mark.parametrize("given_as", ["file", "image"])
def test_a_large_photo_keeps_its_shape_under_the_heatmap(classifier, tmp_path, given_as):
    """A PNG, WebP or HEIC is decoded whole and reduced by whole factors before anything else: by one factor for
    both sides, or a 4:3 phone photo comes back taller than wide."""
    y, x = np.mgrid[0:2400, 0:3200]
    picture = Image.fromarray(np.stack([x * 255 // 3200, y * 255 // 2400, (x + y) % 256], -1).astype(np.uint8))
    picture.save(tmp_path / "photo.png", compress_level=1)
    photo = tmp_path / "photo.png" if given_as == "file" else Image.open(tmp_path / "photo.png")
    assert Explainer(classifier.model).overlay(photo, "cat").size == (HEATMAP_SIDE, HEATMAP_SIDE * 3 // 4)


def test_with_a_crop_the_heatmap_covers_the_part_of_the_photo_the_network_saw(classifier, shared_data):
    cropped = Explainer(CatsDogsCNN(crop_pct=0.8, tta=classifier.model.tta))
    cropped.model.load_state_dict(classifier.model.state_dict())
    photo = Image.open(clear_photos(shared_data)[0])
    heat = cropped.heatmap(photo_to_uint8(photo, 224), true_class(photo.filename), (300, 200))
    assert heat.shape == (200, 300) and heat.max() == pytest.approx(1)
    seen = np.zeros_like(heat, dtype=bool)
    seen[20:180, 30:270] = True  # the centred 80% of each side
    assert (heat[~seen] == 0).all() and (heat[seen] > 0).mean() > 0.2
