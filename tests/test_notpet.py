"""The "not a pet" score (catsdogs.notpet) on real photos, with the shipped weights."""

import json
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from conftest import ROOT, clear_photos

from catsdogs.hub import HubError, load_model
from catsdogs.inference import Classifier
from catsdogs.loader import find_split
from catsdogs.model import CatsDogsCNN, predict_logits, predict_with_features
from catsdogs.fit_notpet import sample
from catsdogs.notpet import FILE_NAME, NotPetScore, fit, threshold_for
from catsdogs.preprocess import load_photo

TOWER = Path(find_spec("gradio").origin).parent / "media_assets" / "images" / "tower.jpg"  # the Eiffel tower


@pytest.fixture(scope="module")
def model(shipped_weights):
    return load_model(shipped_weights).eval()


def features(model, photos: list[Path]) -> torch.Tensor:
    return predict_with_features(model, torch.stack([load_photo(p, model.image_size) for p in photos]))[1]


def test_the_features_come_with_forwards_own_logits_and_leave_the_weights_alone(model):
    photos = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    keys = set(model.state_dict())
    logits, feats = predict_with_features(model, photos)
    torch.testing.assert_close(logits, predict_logits(model, photos), rtol=0, atol=0)
    assert feats.shape == (2, model.head.in_features) and (feats >= 0).all()  # a ReLU's output
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        direct, penultimate = model.logits_and_features(x)
        torch.testing.assert_close(direct, model(x), rtol=0, atol=0)
        torch.testing.assert_close(model.head(penultimate), direct, rtol=0, atol=0)
    assert set(model.state_dict()) == keys


def test_features_stay_with_their_own_photos_when_threads_share_the_model(model):
    """The app predicts in several threads at once, on one model: each call gets its own photos' features."""
    from concurrent.futures import ThreadPoolExecutor

    batches = [torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8) for n in (1, 3)]
    expected = [predict_with_features(model, batch)[1] for batch in batches]
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda i: predict_with_features(model, batches[i % 2])[1], range(12)))
    for i, features in enumerate(found):
        torch.testing.assert_close(features, expected[i % 2])


def test_fitted_on_real_photos_the_threshold_flags_at_most_5_percent_of_its_pets_and_survives_saving(
        model, shared_data, tmp_path):
    split = find_split(shared_data / "dogs-vs-cats-200" / "train", 0.1, 0)
    bank, val = sample(split.train, 6), sample(split.val, 10)
    score = fit(features(model, bank.paths), val_features := features(model, val.paths), model.tta, "test photos")
    val_scores = score.score(val_features)
    flagged = (val_scores > score.threshold).sum().item()
    assert flagged <= 1  # 5% of 20
    assert (val_scores > val_scores[val_scores < score.threshold].max()).sum().item() > 1  # the lowest such
    assert torch.equal(score.is_pet(val_features), val_scores <= score.threshold)

    score.save(tmp_path)
    assert (tmp_path / FILE_NAME).stat().st_size < 64 * 1024  # 12 photos' float16 features and the metadata
    loaded = NotPetScore.load(tmp_path)
    assert (loaded.k, loaded.threshold, loaded.rule, loaded.fitted_on, loaded.tta) == (
        score.k, score.threshold, score.rule, score.fitted_on, score.tta)
    assert torch.equal(loaded.bank, score.bank)  # fit keeps the bank as float16 holds it
    torch.testing.assert_close(loaded.score(val_features), val_scores, rtol=0, atol=0)
    assert loaded.config_entry()["not_a_pet"]["threshold"] == score.threshold


def test_threshold_rule_on_known_scores():
    scores = torch.arange(100, dtype=torch.float32)  # 5 of 100 may lie above: the threshold is 94
    assert threshold_for(scores) == 94.0
    assert threshold_for(scores, share=0.0) == 99.0


def test_a_score_saved_again_is_recognised_and_a_changed_one_is_not(tmp_path):
    """`stored_in` lets a rewrite of the card leave an unchanged score's file alone (safetensors would write the same
    score in other bytes); anything that changes the score must still be written."""
    score = NotPetScore(bank=torch.randn(6, 8), k=2, threshold=0.5, rule="r", fitted_on="f", tta="mirror")
    assert not score.stored_in(tmp_path)
    score.save(tmp_path)
    assert score.stored_in(tmp_path)
    for changed in (replace(score, threshold=0.6), replace(score, bank=score.bank + 0.01), replace(score, crop_pct=0.9),
                    replace(score, bank=score.bank[:5])):
        assert not changed.stored_in(tmp_path)
    (tmp_path / FILE_NAME).write_bytes(b"not safetensors")
    assert not score.stored_in(tmp_path)


def test_the_shipped_score_calls_clear_pets_pets_and_other_pictures_not(model, shipped_weights, shared_data):
    score = NotPetScore.load(shipped_weights)
    assert score.tta == model.tta
    pets = clear_photos(shared_data)
    others = [ROOT / "examples" / "brick.jpg", TOWER]  # (a face, such as matplotlib's grace_hopper.jpg, is not: see
    # bench/notpet.py's listing of every picture)
    verdicts = score.is_pet(features(model, pets + others)).tolist()
    assert verdicts == [True] * len(pets) + [False] * len(others), dict(zip(pets + others, verdicts))


def test_the_command_fits_for_a_weights_folder_on_its_training_split(shipped_weights, shared_data, tmp_path, capsys):
    from catsdogs.fit_notpet import main

    weights, photos = tmp_path / "weights", tmp_path / "photos"
    weights.mkdir(), photos.mkdir()
    shipped_metrics = (shipped_weights / "metrics.json").read_bytes()
    for name in ("model.safetensors", "metrics.json"):
        (weights / name).symlink_to(shipped_weights / name)
    write_config(weights, shipped_weights)  # without a score
    for label in ("cat", "dog"):
        for i in range(10):
            (photos / f"{label}.{i}.jpg").symlink_to(shared_data / "dogs-vs-cats-200" / "train" / f"{label}.{i}.jpg")
    assert main(["--model", str(weights), "--data", str(photos), "--bank-per-class", "3", "--k", "2"]) == 0
    score = NotPetScore.load(weights)
    assert (len(score.bank), score.k, score.tta) == (6, 2, "mirror")
    assert "6 training photos (3 of each class, seed 0)" in score.fitted_on and "seed 0" in score.fitted_on
    assert f"wrote {weights / FILE_NAME}" in capsys.readouterr().out
    assert json.loads((weights / "config.json").read_text())["not_a_pet"] == score.config_entry()["not_a_pet"]
    assert f"- Fitted on: {score.fitted_on}." in (weights / "README.md").read_text()  # the card describes it
    assert json.loads((weights / "metrics.json").read_text())["not_a_pet"] == score.config_entry()["not_a_pet"]
    assert (shipped_weights / "metrics.json").read_bytes() == shipped_metrics  # a link was replaced, not written
    assert main(["--model", str(tmp_path / "nothing"), "--data", str(photos)]) == 2


def write_config(folder: Path, shipped_weights: Path, **changes) -> None:
    """The shipped config.json without its not-a-pet entry, with `changes`."""
    config = json.loads((shipped_weights / "config.json").read_text())
    del config["not_a_pet"]
    (folder / "config.json").write_text(json.dumps(config | changes))


def test_the_classifier_applies_the_score_beside_the_weights(shipped_weights, shared_data, model):
    photos = [clear_photos(shared_data)[0], ROOT / "examples" / "brick.jpg"]
    answers = Classifier(shipped_weights).predict(photos)
    score = NotPetScore.load(shipped_weights)
    assert [answer.not_a_pet for answer in answers] == [False, True]
    assert [answer.distance for answer in answers] == pytest.approx(score.score(features(model, photos)).tolist(),
                                                                    abs=1e-3)
    assert json.loads((shipped_weights / "config.json").read_text())["not_a_pet"] == score.config_entry()["not_a_pet"]


def test_a_score_fitted_with_another_tta_is_refused(shipped_weights, tmp_path):
    (tmp_path / "model.safetensors").symlink_to(shipped_weights / "model.safetensors")
    write_config(tmp_path, shipped_weights, tta="none", crop_pct=1.0)
    replace(NotPetScore.load(shipped_weights), tta="mirror", crop_pct=1.0).save(tmp_path)
    with pytest.raises(HubError, match="fitted with test-time augmentation 'mirror' and crop_pct 1.0, and these "
                                       "weights run with 'none' and 1.0"):
        Classifier(tmp_path)


def test_a_score_fitted_with_another_crop_is_refused_and_one_that_does_not_say_is_the_whole_photos(
        shipped_weights, tmp_path):
    (tmp_path / "model.safetensors").symlink_to(shipped_weights / "model.safetensors")
    write_config(tmp_path, shipped_weights, crop_pct=0.9)
    path = NotPetScore.load(shipped_weights).save(tmp_path)
    with safe_open(path, "pt") as file:  # a score file that does not say its crop
        metadata = {key: value for key, value in file.metadata().items() if key != "crop_pct"}
    save_file(load_file(path), path, metadata=metadata)
    assert NotPetScore.load(tmp_path).crop_pct == 1.0
    with pytest.raises(HubError, match="crop_pct 1.0, and these weights run with 'mirror' and 0.9"):
        Classifier(tmp_path)
    replace(NotPetScore.load(shipped_weights), crop_pct=0.9).save(tmp_path)
    assert Classifier(tmp_path).not_pet_score.crop_pct == 0.9


def test_the_benchmark_sees_photos_as_predictions_do():
    """bench.notpet measures the features the app scores: the weights' crop and mirror view included."""
    from bench.notpet import views_of

    model = CatsDogsCNN(crop_pct=0.9, tta="mirror").eval()
    images = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = views_of(model, images)
    logits, features = predict_with_features(model, images)
    assert torch.allclose(views.logit(mirror=True), logits, atol=1e-4)
    assert torch.allclose(views.layer("penultimate", mirror=True), features, atol=1e-4)
