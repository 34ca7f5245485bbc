"""`python -m catsdogs.evaluate` reproduces training's validation accuracy and reports what it got wrong."""

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, USER, WRITE_TOKEN
from test_notpet import TOWER
from imagegen import write_kaggle_folder

from catsdogs import CatsDogsCNN
from catsdogs.evaluate import main
from catsdogs.hub import WEIGHTS_FILES, load_model, push_outputs
from catsdogs.inference import Classifier
from catsdogs.model import predict_logits
from catsdogs.model import NOTES_MARK
from catsdogs.loader import PhotoLoader, find_split
from catsdogs.training import train, validate


def run(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # the whole of stdout is the one JSON object


def error_of(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def assert_consistent(report: dict) -> None:
    matrix = report["confusion_matrix"]
    assert sum(map(sum, matrix)) == report["n"]
    groups = [report["as_the_demo_answers"][name] for name in ("sure", "not_sure", "not_a_pet")]
    assert sum(group["photos"] for group in groups) == report["n"]  # every photo in one of the demo's answers
    assert sum(group["right"] for group in groups) == report["correct"]  # the same top classes
    assert sum(matrix[c][c] for c in range(2)) == report["correct"] == round(report["accuracy"] * report["n"])
    for c, name in enumerate(report["class_names"]):
        row = report["per_class"][name]
        assert row["support"] == sum(matrix[c])
        assert row["recall"] == pytest.approx(matrix[c][c] / sum(matrix[c]))
        if row["precision"] is not None:
            assert row["precision"] == pytest.approx(matrix[c][c] / (matrix[0][c] + matrix[1][c]))


def test_validation_split_reproduces_training_accuracy(trained, capsys):
    config, summary, _ = trained
    report = run(capsys, "--model", config.output, "--data", config.data, "--split", "validation")
    assert report["accuracy"] == summary["best_val_accuracy"] == report["trained_val_accuracy"]
    assert report["n"] == summary["n_val"] == 20
    assert report["split"] == {"name": "validation", "val_fraction": 0.25, "seed": 0,  # from metrics.json
                               "description": "validation split: deterministic stratified 25% (seed 0) of 83 photos "
                                              "-> 21"}  # one of which is unreadable
    assert len(report["skipped"]) == 1
    assert_consistent(report)


def test_a_split_seed_keeps_the_validation_photos_of_another_seed_and_evaluate_finds_them(trained, tmp_path, capsys):
    """--split-seed draws the validation photos alone: a run of another --seed with the first run's split seed
    validates on the first run's photos, and evaluate re-creates them from its metrics.json."""
    config, summary, _ = trained
    other = replace(config, seed=1, split_seed=config.seed, epochs=1, output=str(tmp_path / "weights"),
                    checkpoint=str(tmp_path / "ck" / "last.safetensors"))
    again = train(other, command="python train.py --test").summary
    assert again["validation_source"] == summary["validation_source"]  # "... (seed 0)"
    assert again["val_counts"] == summary["val_counts"]
    capsys.readouterr()  # training's log
    report = run(capsys, "--model", other.output, "--data", other.data, "--split", "validation")
    assert report["split"]["seed"] == config.seed and report["accuracy"] == again["best_val_accuracy"]
    # The split of --seed 1 alone is another one: a share of different photos.
    assert find_split(config.data, config.val_fraction, 1).val.fingerprint() != \
        find_split(config.data, config.val_fraction, config.seed).val.fingerprint()


def test_borderline_decisions_match_training_validate(trained, tmp_path, capsys):
    """The easy task's 100% would hide a different scoring path: shift the weights so that some photos sit on the
    decision boundary, then compare with what training's own validate() says about the same weights."""
    config, _, _ = trained
    val_photos = find_split(config.data, config.val_fraction, config.seed, config.val_data).val
    split = PhotoLoader.load(val_photos, 224, torch.device("cpu"), "validation", workers=2, verbose=False)
    model = load_model(config.output)
    margins = predict_logits(model, split.images).diff(dim=1).flatten()  # dog minus cat logit
    with torch.no_grad():
        model.head.bias[1] -= margins.quantile(0.75)  # a quarter of the photos flip to cat, some barely
    model.save_pretrained(tmp_path / "shifted")
    shutil.copy(Path(config.output) / "metrics.json", tmp_path / "shifted")
    expected = validate(model.to(memory_format=torch.channels_last), split)
    capsys.readouterr()  # huggingface_hub prints "Loading weights from local directory" to stdout
    report = run(capsys, "--model", str(tmp_path / "shifted"), "--data", config.data, "--split", "validation")
    assert 0.5 < expected.accuracy < 1
    assert (report["accuracy"], report["confusion_matrix"]) == (expected.accuracy, expected.confusion)


def test_cli_in_a_subprocess_prints_only_json(trained):
    config, summary, _ = trained
    result = subprocess.run([sys.executable, "-m", "catsdogs.evaluate", "--model", config.output, "--data",
                             config.data, "--split", "validation", "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["accuracy"], report["n"]) == (summary["best_val_accuracy"], summary["n_val"])
    assert report["warnings"] == [] and "warning" not in result.stderr


def test_all_and_training_splits_count_every_readable_photo(trained, capsys):
    config, summary, bad = trained
    everything = run(capsys, "--model", config.output, "--data", config.data)
    assert everything["n"] == 80 and everything["split"]["description"] == "all 83 photos"
    assert sorted(s["path"] for s in everything["skipped"]) == sorted(map(str, bad))
    assert_consistent(everything)
    training = run(capsys, "--model", config.output, "--data", config.data, "--split", "training")
    assert training["n"] == summary["n_train"] == 60 and len(training["skipped"]) == 2
    assert training["correct"] + round(summary["best_val_accuracy"] * 20) == everything["correct"]


def test_untrained_weights_list_their_most_confident_mistakes(easy_photos, tmp_path, capsys):
    data, _ = easy_photos
    torch.manual_seed(0)
    CatsDogsCNN().save_pretrained(tmp_path / "untrained")  # no metrics.json: the split falls back to 10%, seed 0
    args = ["--model", str(tmp_path / "untrained"), "--data", str(data), "--split", "validation", "--mistakes", "3"]
    report = run(capsys, *args)
    assert report["n"] == 8 and report["trained_val_accuracy"] is None
    assert "stratified 10% (seed 0)" in report["split"]["description"]
    assert_consistent(report)
    wrong = report["n"] - report["correct"]
    assert wrong > 0 and len(report["mistakes"]) == min(3, wrong)
    confidences = [m["probability"] for m in report["mistakes"]]
    assert confidences == sorted(confidences, reverse=True) and all(p >= 0.5 for p in confidences)
    assert all(m["true"] != m["predicted"] for m in report["mistakes"])

    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"accuracy {report['accuracy']:.2%} ({report['correct']}/8)" in text
    assert "confusion matrix (rows: true class, columns: predicted)" in text
    assert all(m["path"] in text for m in report["mistakes"])


def test_a_layout_validation_folder_is_the_validation_split(trained, tmp_path, capsys):
    config, _, _ = trained
    for split, start in (("train", 0), ("val", 100)):
        write_kaggle_folder(tmp_path / split, per_class=2, start=start)
    report = run(capsys, "--model", config.output, "--data", str(tmp_path), "--split", "validation")
    assert report["n"] == 4 and report["skipped"] == []
    assert "test/validation folder beside train/" in report["split"]["description"]
    assert "not the {'cat': 11, 'dog': 10} that" in report["warnings"][0]  # not the photos it was trained on
    assert run(capsys, "--model", config.output, "--data", str(tmp_path))["n"] == 8


def test_unusable_input_exits_2_with_a_clear_message(trained, tmp_path, capsys):
    config, _, _ = trained
    (tmp_path / "empty").mkdir()
    assert "error: no labelled photos in" in error_of(capsys, "--model", config.output, "--data", str(tmp_path))
    (tmp_path / "no-weights").mkdir()
    assert "has no model.safetensors" in error_of(capsys, "--model", str(tmp_path / "no-weights"),
                                                  "--data", config.data)
    assert "--val-fraction must be between 0 and 1" in error_of(
        capsys, "--model", config.output, "--data", config.data, "--split", "validation", "--val-fraction", "1.5")
    assert "no photos to evaluate" in error_of(
        capsys, "--model", config.output, "--data", config.data, "--split", "validation", "--val-fraction", "0.001")
    assert "--device tpu: not a device name (use auto, cpu, cuda or cuda:N)" in error_of(
        capsys, "--model", config.output, "--data", config.data, "--device", "tpu")
    if not torch.cuda.is_available():
        assert "--device cuda: no CUDA GPU is available here" in error_of(
            capsys, "--model", config.output, "--data", config.data, "--device", "cuda")
    assert run(capsys, "--model", config.output, "--data", config.data, "--device", "cpu")["device"] == "cpu"


def test_weights_fetched_from_the_hub_score_the_same(hub, trained, capsys):
    config, summary, _ = trained
    push_outputs(config.output, f"{USER}/evalmodel", token=WRITE_TOKEN)
    report = run(capsys, "--model", f"{USER}/evalmodel", "--data", config.data, "--split", "validation")
    assert report["model"] == f"{USER}/evalmodel" and report["weights"] != config.output
    assert (report["accuracy"], report["n"]) == (summary["best_val_accuracy"], summary["n_val"])


def test_unreachable_hub_exits_2(hub, trained):
    config, _, _ = trained
    hub.kill()
    result = subprocess.run([sys.executable, "-m", "catsdogs.evaluate", "--model", f"{USER}/evalmodel",
                             "--data", config.data], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "cannot reach the Hub" in result.stderr and "Traceback" not in result.stderr


def readme_full_size_claim() -> tuple[int, int]:
    """What README.md claims the shipped weights get right on the full-size sample: (correct, photos)."""
    match = re.search(r"(\d+\.\d\d)% \((\d+)/(\d+)\) on `\.\./shared/data/dogs-vs-cats-fullres-sample`",
                      (ROOT / "README.md").read_text())
    assert match, "README.md no longer states the shipped weights' accuracy on the full-size sample"
    percent, correct, n = float(match[1]), int(match[2]), int(match[3])
    assert percent == round(100 * correct / n, 2)
    return correct, n


def test_shipped_weights_on_full_size_photos_score_what_the_readme_claims(shared_data, capsys):
    weights = ROOT / "weights"
    if not all((weights / name).is_file() for name in WEIGHTS_FILES):
        pytest.skip(f"no shipped weights in {weights} yet (they come from a full training run)")
    report = run(capsys, "--data", str(shared_data / "dogs-vs-cats-fullres-sample"))  # --model defaults to weights/
    assert report["weights"] == str(weights)
    assert report["n"] == 200 and report["skipped"] == []
    assert_consistent(report)
    correct, n = readme_full_size_claim()  # 198/200, measured with fp32 on the CPU
    assert n == report["n"]
    if report["device"] == "cpu":  # predictions are fp32 on every CPU: the same photos, exactly
        assert report["correct"] == correct
        assert report["confusion_matrix"] == [[98, 2], [0, 100]]
    else:  # bf16 on a GPU may move a photo that sits near 50% (cat.5.jpg is at 50.7% dog)
        assert abs(report["correct"] - correct) <= n // 100, report["correct"]
    # Calibrated: label smoothing left the network under-confident, and the weights' temperature corrects that.
    calibration = report["calibration"]
    assert calibration["temperature"] < 1 and calibration["ece"] < calibration["ece_without_temperature"]
    classifier = Classifier(weights)  # the app's own path shows the same calibrated percentages
    answers = classifier.predict(sorted((shared_data / "dogs-vs-cats-fullres-sample").glob("*.jpg")))
    assert [report["as_the_demo_answers"][name]["photos"] for name in ("not_a_pet", "not_sure")] == [
        sum(answer.not_a_pet for answer in answers), sum(answer.unsure for answer in answers)]  # as the app answers
    for mistake in report["mistakes"]:
        shown = classifier.predict([mistake["path"]])[0].probabilities[mistake["predicted"]]
        assert shown == pytest.approx(mistake["probability"], abs=1e-4), mistake


def test_not_pets_get_the_share_called_neither_and_the_auroc_against_the_pets(shipped_weights, shared_data,
                                                                               tmp_path, capsys):
    from conftest import clear_photos

    pets, others = tmp_path / "pets", tmp_path / "others"
    pets.mkdir(), others.mkdir()
    for photo in clear_photos(shared_data):
        (pets / photo.name).symlink_to(photo)
    (others / "brick.jpg").symlink_to(ROOT / "examples" / "brick.jpg")  # both flagged (tests/test_notpet.py)
    (others / "tower.jpg").symlink_to(TOWER)
    (others / "notes.jpg").write_text("not a picture")
    report = run(capsys, "--data", str(pets), "--not-pets", str(others), "--no-cache")["not_pets"]
    assert (report["n"], report["called_not_a_pet"], report["pets_called_not_a_pet"]) == (2, 1.0, 0.0)
    assert [Path(p["path"]).name for p in report["pictures"]] == ["brick.jpg", "tower.jpg"]
    assert all(p["not_a_pet"] and p["distance"] > report["threshold"] for p in report["pictures"])
    assert report["auroc"] == 1.0  # both above every pet
    assert [Path(s["path"]).name for s in report["skipped"]] == ["notes.jpg"]
    assert main(["--data", str(pets), "--not-pets", str(others), "--no-cache"]) == 0
    assert "100.0% of the 2 pictures in" in capsys.readouterr().out


def test_not_pets_need_weights_with_a_score(trained, tmp_path, capsys):
    config, _, _ = trained
    (tmp_path / "wall.jpg").symlink_to(ROOT / "examples" / "brick.jpg")
    assert "have no notpet.safetensors: fit one with python -m catsdogs.fit_notpet" in error_of(
        capsys, "--model", config.output, "--data", config.data, "--not-pets", str(tmp_path))


def test_notes_written_below_the_card_s_mark_survive_a_record_and_nothing_else_of_the_old_card_does(trained,
                                                                                                     tmp_path, capsys):
    config, _, _ = trained
    weights = Path(shutil.copytree(config.output, tmp_path / "weights"))
    card = weights / "README.md"
    assert card.read_text().rstrip().endswith(NOTES_MARK)  # every card ends with the mark
    notes = "\n\n## Notes\n\nPhotos of our two cats, taken indoors at night.\n"
    card.write_text(card.read_text().rstrip().replace("## Limitations", "## Limits edited by hand") + notes)
    report = run(capsys, "--model", str(weights), "--data", config.data, "--split", "validation", "--record")
    rewritten = card.read_text()
    assert rewritten.endswith(NOTES_MARK + notes) and rewritten.count(NOTES_MARK) == 1  # kept once, as written
    assert f"**{report['accuracy']:.2%}**" in rewritten.partition(NOTES_MARK)[0]  # the card above is rendered anew
    assert "## Limitations" in rewritten and "edited by hand" not in rewritten  # edits above the mark are not kept


def test_record_after_the_test_time_settings_changed_says_which_ran_and_keeps_training_s_own(trained, tmp_path,
                                                                                         capsys):
    config, _, _ = trained
    weights = Path(shutil.copytree(config.output, tmp_path / "weights"))
    trained_card = " ".join((weights / "README.md").read_text().split())
    settings = json.loads((weights / "config.json").read_text())
    (weights / "config.json").write_text(json.dumps(settings | {"tta": "mirror-zoom", "crop_pct": 0.95}))
    report = run(capsys, "--model", str(weights), "--data", config.data, "--split", "validation", "--record")
    recorded = json.loads((weights / "metrics.json").read_text())["validation_by_device"]["cpu"]
    assert (recorded["tta"], recorded["crop_pct"]) == ("mirror-zoom", 0.95)
    card = " ".join((weights / "README.md").read_text().split())
    assert (f"fp32 on a CPU, with the test-time settings set in `config.json` after training (`\"tta\": "
            f"\"mirror-zoom\"`, `\"crop_pct\": 0.95`): **{report['accuracy']:.2%}**") in card
    trained_with = "validation accuracy is that of single predictions on the photos as they are (no test-time"
    assert config.tta == "none" and trained_with in trained_card and trained_with in card  # training's settings
    assert "mirror image (" not in card and "The network sees the centred" not in card
    preprocessing = "the network then sees its centred 95% (`\"crop_pct\": 0.95`), resized back to 224×224."
    assert preprocessing not in trained_card and preprocessing in card  # how the weights predict now


def test_record_keeps_the_validation_accuracy_beside_the_weights_and_in_their_card(trained, tmp_path, capsys):
    config, _, _ = trained
    weights = Path(shutil.copytree(config.output, tmp_path / "weights"))
    before = {file.name: file.read_bytes() for file in weights.iterdir()}
    report = run(capsys, "--model", str(weights), "--data", config.data, "--split", "validation", "--record")
    metrics = json.loads((weights / "metrics.json").read_text())
    recorded = metrics.pop("validation_by_device")["cpu"]
    assert metrics == json.loads(before["metrics.json"])  # the rest as training wrote it
    assert {k: recorded[k] for k in ("accuracy", "correct", "photos", "measured")} == {
        "accuracy": report["accuracy"], "correct": report["correct"], "photos": 20, "measured": "fp32 on a CPU"}
    assert recorded["command"].startswith("python -m catsdogs.evaluate --model ") and str(tmp_path) not in \
        recorded["command"] and recorded["command"].endswith("--split validation --record --json")
    for unchanged in ("model.safetensors", "config.json", "training_curves.png"):
        assert (weights / unchanged).read_bytes() == before[unchanged], unchanged
    card = " ".join((weights / "README.md").read_text().split())
    assert (f"as the demo computes it, fp32 on a CPU: **{report['accuracy']:.2%}** ({report['correct']} of 20)."
            in card)

    with pytest.raises(SystemExit):  # usage errors: before any photo is scored
        main(["--model", str(weights), "--data", config.data, "--record"])
    assert "--record keeps the validation accuracy: pass --split validation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", f"{USER}/evalmodel", "--data", config.data, "--split", "validation", "--record"])
    assert f"{USER}/evalmodel is not a weights folder" in capsys.readouterr().err
    for split in ("train", "val"):  # other photos than the weights validated on
        write_kaggle_folder(tmp_path / "other" / split, per_class=2, start=100 if split == "val" else 0)
    recorded_card = (weights / "README.md").read_bytes()
    assert main(["--model", str(weights), "--data", str(tmp_path / "other"), "--split", "validation", "--record"]) == 2
    assert "error: not recorded: these validation photos" in capsys.readouterr().err
    assert (weights / "README.md").read_bytes() == recorded_card
