"""Integration on the real Kaggle photos in ../shared/data."""

import torch

from catsdogs.data import decode_photos, find_photos, split_photos
from catsdogs.inference import predict_logits
from catsdogs.model import CatsDogsCNN


def test_the_kaggle_training_set_is_found_and_split(shared_data):
    photos, val = find_photos(shared_data / "dogs-vs-cats-200")  # holds train/ with Kaggle's flat names
    assert val is None
    assert photos.counts() == {"cat": 11_500, "dog": 11_500}
    train, val = split_photos(photos, 0.1, seed=0)
    assert val.counts() == {"cat": 1_150, "dog": 1_150} and len(train) == 20_700
    assert not {p.name for p in train.paths} & {p.name for p in val.paths}
    assert [p.name for p in split_photos(photos, 0.1, seed=0)[1].paths] == [p.name for p in val.paths]


def test_full_size_photos_decode_and_classify(shared_data):
    photos, _ = find_photos(shared_data / "dogs-vs-cats-fullres-sample")
    assert photos.counts() == {"cat": 100, "dog": 100}
    images, labels, skipped = decode_photos(photos, 224)
    assert skipped == [] and images.shape == (200, 3, 224, 224)
    assert images.float().std() > 30  # real photos, not blank tensors
    probabilities = predict_logits(CatsDogsCNN(), images[:8]).softmax(dim=1)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(8))
