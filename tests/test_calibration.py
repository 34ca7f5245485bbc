"""Calibration: the fitted temperature, the expected calibration error and the reliability bins are right."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from imagegen import write_kaggle_folder

from catsdogs import CatsDogsCNN, training
from catsdogs.metrics import BOUNDS, MIN_PHOTOS, calibrate, expected_calibration_error, fit_temperature, reliability
from catsdogs.calibrate import main as calibrate_cli
from catsdogs.config import TrainConfig
from catsdogs.evaluate import main as evaluate_cli
from catsdogs.hub import HubError, load_model
from catsdogs.notpet import NotPetScore
from catsdogs.training import train


def sampled(temperature: float, n: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / temperature): that temperature is the honest one."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 2, generator=generator) * 3
    labels = torch.multinomial((logits / temperature).softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fitting_recovers_a_known_temperature(true_temperature):
    logits, labels = sampled(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_the_fitted_temperature_makes_probabilities_honest():
    logits, labels = sampled(0.5)  # the network is under-confident: its logits need sharpening
    result = calibrate(logits, labels)
    assert result.ece_before > 0.05 and result.ece_after < result.ece_before / 3
    assert result.nll_after < result.nll_before and result.photos == 20_000


def test_weights_without_a_temperature_give_the_plain_softmax(tmp_path):
    """Weights saved before calibration existed (no `temperature` in config.json) behave exactly as they did."""
    CatsDogsCNN().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["temperature"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_model(tmp_path)
    logits, _ = sampled(1.0, n=100)
    assert model.temperature == 1.0
    torch.testing.assert_close(model.probabilities(logits), logits.softmax(dim=1), rtol=0, atol=0)


def test_ece_and_bins_by_hand():
    probabilities = torch.tensor([[0.95, 0.05], [0.04, 0.96], [0.3, 0.7], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 1, 1])
    # Bins of 1/15: 0.95 and 0.96 fall in bin 14, 0.7 in bin 10, 0.6 in bin 9.
    bins = reliability(probabilities, labels)
    assert [count for _, _, count in bins] == [1, 1, 2]
    assert [pytest.approx((c, a)) for c, a, _ in bins] == [(0.6, 1.0), (0.7, 1.0), (0.955, 0.5)]
    expected = (1 * 0.4 + 1 * 0.3 + 2 * abs(0.5 - 0.955)) / 4
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)


def test_training_ends_with_a_fitted_temperature_that_every_consumer_applies(tmp_path, capsys):
    """A run whose validation photos are enough (and not all easy: some labels are wrong) writes a temperature;
    evaluate re-creates the split and measures the same calibration with it."""
    data = write_kaggle_folder(tmp_path / "photos", per_class=150)
    for i in range(25):  # warm "cats" labelled dog: no network gets these right, so the fit has something to do
        (data / f"cat.{i}.jpg").rename(data / f"dog.{1000 + i}.jpg")
    config = TrainConfig(data=str(data), val_fraction=0.7, epochs=1, batch_size=30, output=str(tmp_path / "out"),
                         memory_format="channels_last")
    summary = train(config, command="python train.py --test").summary
    calibration = summary["calibration"]
    assert calibration["photos"] == summary["n_val"] >= MIN_PHOTOS
    assert BOUNDS[0] < calibration["temperature"] < BOUNDS[1]
    assert calibration["nll_after"] < calibration["nll_before"]
    output = Path(config.output)
    assert json.loads((output / "config.json").read_text())["temperature"] == pytest.approx(calibration["temperature"],
                                                                                            abs=1e-4)
    assert (output / "reliability.png").is_file() and "## Calibration" in (output / "README.md").read_text()
    not_pet_score = NotPetScore.load(output)  # fitted on the same best weights, the bank all 90 training photos
    assert (len(not_pet_score.bank), not_pet_score.tta) == (summary["n_train"], config.tta)
    entry = not_pet_score.config_entry()["not_a_pet"]
    assert json.loads((output / "config.json").read_text())["not_a_pet"] == entry == summary["not_a_pet"]
    assert f"- Fitted on: {entry['fitted_on']}." in (output / "README.md").read_text()
    # The log says what the fit did to both measures: the binned error of a few hundred photos may rise.
    assert (f"the expected calibration error goes from {calibration['ece_before']:.2%} to "
            f"{calibration['ece_after']:.2%}, the negative log likelihood from {calibration['nll_before']:.4f} to "
            f"{calibration['nll_after']:.4f}") in capsys.readouterr().out
    assert evaluate_cli(["--model", str(output), "--data", str(data), "--split", "validation", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == calibration["photos"]
    assert report["calibration"]["ece"] == pytest.approx(calibration["ece_after"], abs=1e-4)
    assert report["calibration"]["ece_without_temperature"] == pytest.approx(calibration["ece_before"], abs=1e-4)


def test_a_resumed_run_fits_what_the_best_epochs_own_validation_fitted(tmp_path, monkeypatch):
    """The fits at the end of a run reuse the best epoch's validation pass; a run resumed after its last epoch scores
    the validation photos afresh with the best weights, and must fit the same temperature and not-a-pet score.
    (Few photos, so MIN_PHOTOS is lowered: the fits are checked for agreement here, not for honesty.)"""
    monkeypatch.setattr(training, "MIN_PHOTOS", 4)
    data = write_kaggle_folder(tmp_path / "photos", per_class=12)
    config = TrainConfig(data=str(data), val_fraction=0.25, epochs=1, batch_size=6, output=str(tmp_path / "out"),
                         checkpoint=str(tmp_path / "ck" / "last.safetensors"), memory_format="channels_last")
    first = train(config).summary
    resumed = train(replace(config, output=str(tmp_path / "again"), resume=True)).summary
    assert first["epochs_completed"] == resumed["epochs_completed"] == 1 and first["n_val"] == 6
    for fit in ("calibration", "not_a_pet"):
        numbers, others = split_leaves(first[fit])
        resumed_numbers, resumed_others = split_leaves(resumed[fit])
        assert resumed_numbers == pytest.approx(numbers, rel=1e-5) and resumed_others == others, fit
    assert first["calibration"]["temperature"] != 1.0


def split_leaves(value) -> tuple[list[float], list]:
    """The numbers inside nested dicts and lists, and everything else there, each in a fixed order."""
    if isinstance(value, dict):
        value = [value[key] for key in sorted(value)]
    if not isinstance(value, (list, tuple)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ([value], []) if number else ([], [value])
    parts = [split_leaves(item) for item in value]
    return [n for numbers, _ in parts for n in numbers], [o for _, others in parts for o in others]


def test_calibrate_refuses_too_few_photos_and_a_hub_id(tmp_path, capsys):
    data = write_kaggle_folder(tmp_path / "photos", per_class=10)
    weights = tmp_path / "weights"
    CatsDogsCNN().save_pretrained(weights)
    assert calibrate_cli(["--model", str(weights), "--data", str(data), "--split", "all"]) == 2
    assert f"a temperature needs at least {MIN_PHOTOS}" in capsys.readouterr().err
    assert calibrate_cli(["--model", "someone/catsdogs", "--data", str(data)]) == 2
    assert "is not a weights folder" in capsys.readouterr().err


@pytest.mark.parametrize("temperature", [0, -1.5, "hot", None])
def test_a_bad_temperature_is_a_clear_error_when_loading(tmp_path, temperature):
    CatsDogsCNN().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "temperature": temperature}))
    with pytest.raises(HubError, match="temperature must be a number above zero"):
        load_model(tmp_path)
