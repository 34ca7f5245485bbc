"""The weights as one ONNX file (catsdogs.export): onnxruntime answers real photos as the app does, the shipped file
holds the shipped weights, the card's own snippet runs, and a file made from other weights never stays beside them."""

import ast
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import ROOT, clear_photos, true_class

from catsdogs import export, fit_notpet
from catsdogs.hub import ONNX_FILE, load_model, onnx_holds, read_metrics
from catsdogs.inference import Classifier
from catsdogs.model import CatsDogsCNN
from catsdogs.notpet import FILE_NAME as NOT_PET_FILE
from catsdogs.notpet import NotPetScore
from catsdogs.outputs import rewrite_card
from catsdogs.preprocess import load_photo

SHIPPED = ROOT / "weights"


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(SHIPPED, device=torch.device("cpu"), memory_format="channels_last")


def card_snippet(card: str) -> str:
    """The card's Python block that runs model.onnx."""
    [code] = [block for block in re.findall(r"```python\n(.*?)```", card, re.S) if "onnxruntime" in block]
    return code


def test_the_shipped_onnx_file_holds_the_shipped_weights_and_answers_as_the_app_does(shared_data, classifier):
    """On real pets and on the examples (a cup, gravel, grass, a wall: not pets), from the photos as the app decodes
    them: each class's probability and the "not a pet" distance within export.TOLERANCE, the same verdicts."""
    assert onnx_holds(SHIPPED, classifier.model, classifier.not_pet_score)
    photos = clear_photos(shared_data) + sorted((ROOT / "examples").glob("*.jpg"))  # the app's examples
    session = onnxruntime.InferenceSession(SHIPPED / ONNX_FILE, providers=["CPUExecutionProvider"])
    assert [output.name for output in session.get_outputs()] == list(export.OUTPUTS)
    probabilities, distances, not_a_pet = session.run(None, {
        export.INPUT: torch.stack([load_photo(photo, 224) for photo in photos]).numpy()})
    answers = classifier.predict(photos)
    expected = np.array([[answer.probabilities[name] for name in classifier.class_names] for answer in answers])
    assert np.abs(probabilities - expected).max() <= export.TOLERANCE
    assert np.abs(distances - np.array([answer.distance for answer in answers])).max() <= export.TOLERANCE
    assert not_a_pet.tolist() == [answer.not_a_pet for answer in answers]
    assert sum(not_a_pet) >= 2 and not any(not_a_pet[:len(clear_photos(shared_data))])  # some examples, no pet


def test_the_card_s_onnx_snippet_runs_as_written(shared_data, classifier):
    """The card's code, run beside the weights with only the photo's name changed: the right class, and the
    probability the app gives within a point (the snippet decodes a JPEG in full; the app lets it decode smaller)."""
    label = "dog"
    photo = clear_photos(shared_data, label)[0]
    code = card_snippet((SHIPPED / "README.md").read_text()).replace('"my_pet.jpg"', repr(str(photo)))
    ran = subprocess.run([sys.executable, "-c", code], cwd=SHIPPED, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    printed = ast.literal_eval(ran.stdout.strip())
    app = classifier.predict([photo])[0].probabilities
    assert printed.pop("not a cat or a dog") is False
    assert max(printed, key=printed.get) == true_class(photo) and printed[label] == pytest.approx(app[label], abs=0.01)


def test_an_export_is_checked_and_stays_only_beside_the_weights_it_holds(tmp_path, capsys):
    """`python -m catsdogs.export` on a weights folder: the file, checked, and the card's ONNX snippet. Writing the
    same weights again (as evaluate --record does) keeps both; a new temperature (as calibrate writes) removes both."""
    folder = shutil.copytree(SHIPPED, tmp_path / "weights", ignore=shutil.ignore_patterns(ONNX_FILE))
    rewrite_card(folder, load_model(folder), read_metrics(folder))  # the card of weights without an ONNX file
    assert "onnxruntime" not in (folder / "README.md").read_text()
    for unchanged in ("model.safetensors", NOT_PET_FILE):  # the same weights and score: the same bytes
        assert (folder / unchanged).read_bytes() == (SHIPPED / unchanged).read_bytes(), unchanged
    assert export.main(["--model", str(folder)]) == 0
    assert re.search(r"wrote .*model\.onnx \(5\.\d MB\); onnxruntime's answers match PyTorch's to within",
                     capsys.readouterr().out)
    session = onnxruntime.InferenceSession(folder / ONNX_FILE, providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == ["cat", "dog"]
    assert 'InferenceSession("model.onnx")' in card_snippet((folder / "README.md").read_text())

    rewrite_card(folder, load_model(folder), read_metrics(folder))
    assert (folder / ONNX_FILE).is_file() and "onnxruntime" in (folder / "README.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    config.pop("not_a_pet")
    calibrated = CatsDogsCNN(**{**config, "temperature": 2 * config["temperature"]})
    calibrated.load_state_dict(load_model(folder).state_dict())
    rewrite_card(folder, calibrated, read_metrics(folder))
    assert not (folder / ONNX_FILE).exists() and "onnxruntime" not in (folder / "README.md").read_text()


def test_a_new_score_fitted_for_weights_without_a_card_removes_their_onnx_file(shared_data, tmp_path):
    """`python -m catsdogs.fit_notpet` on a folder of weights without metrics.json (so no card to render again): the
    ONNX file holds the old score, so it goes, and the card is left as it was."""
    folder = shutil.copytree(SHIPPED, tmp_path / "weights", ignore=shutil.ignore_patterns("metrics.json", "*.png"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for label in ("cat", "dog"):
        for i in range(6):
            (photos / f"{label}.{i}.jpg").symlink_to(shared_data / "dogs-vs-cats-200" / "train" / f"{label}.{i}.jpg")
    card = (folder / "README.md").read_text()
    assert fit_notpet.main(["--model", str(folder), "--data", str(photos), "--bank-per-class", "2", "--k", "1"]) == 0
    assert not (folder / ONNX_FILE).exists() and (folder / "README.md").read_text() == card
    assert len(NotPetScore.load(folder).bank) == 4
