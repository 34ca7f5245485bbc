"""Publishing: `train.py --push` against a Hub-compatible server on 127.0.0.1, then pulling the weights back."""

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BAD_TOKEN, READ_TOKEN, WRITE_TOKEN
from huggingface_hub import ModelCard
from imagegen import write_kaggle_folder
from test_export import card_snippet
from safetensors.torch import load_file

from catsdogs import CatsDogsCNN
from catsdogs.inference import Classifier

ROOT = Path(__file__).resolve().parents[1]
PUSHED_FILES = {"model.safetensors", "config.json", "README.md", "metrics.json",
                "training_curves.png", "confusion_matrix.png"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_kaggle_folder(tmp_path_factory.mktemp("photos"), per_class=6)


def push_args(photos: Path, output: Path, repo_id: str = "tester/catsdogs") -> list[str]:
    return ["--data", str(photos), "--val-fraction", "0.34", "--epochs", "1", "--batch-size", "8",
            "--memory-format", "channels_last", "--output", str(output), "--checkpoint",
            str(output.parent / "ck.safetensors"), "--push", "--repo-id", repo_id]


def train_and_push(photos: Path, output: Path, token: str | None, repo_id: str = "tester/catsdogs", *more: str):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "train.py", *push_args(photos, output, repo_id), *more], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def push_in_process(photos, tmp_path, monkeypatch, train_in_process):
    """A push, in this process: (exit status, stderr)."""
    def run(token: str | None, repo_id: str = "tester/catsdogs") -> tuple[int, str]:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        status, _, stderr = train_in_process(*push_args(photos, tmp_path / "weights", repo_id))
        return status, stderr
    return run


def assert_same_outputs(a: CatsDogsCNN, b: CatsDogsCNN) -> None:
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_push_then_pull_gives_identical_outputs(hub, photos, tmp_path):
    """With --onnx, the ONNX file goes too, and the card's snippet runs it from the Hub as written."""
    result = train_and_push(photos, tmp_path / "weights", WRITE_TOKEN, "tester/catsdogs", "--onnx")
    assert result.returncode == 0, result.stderr
    assert "pushed to tester/catsdogs" in result.stdout
    assert PUSHED_FILES | {"model.onnx"} <= {p.name for p in hub.repo_dir("tester/catsdogs").iterdir()}
    for name in PUSHED_FILES | {"model.onnx"}:  # the Hub holds exactly what was saved locally
        assert (hub.repo_dir("tester/catsdogs") / name).read_bytes() == (tmp_path / "weights" / name).read_bytes()
    pulled = CatsDogsCNN.from_pretrained("tester/catsdogs")
    assert pulled.class_names == ["cat", "dog"]
    assert_same_outputs(pulled, CatsDogsCNN.from_pretrained(tmp_path / "weights"))
    snippet = card_snippet((hub.repo_dir("tester/catsdogs") / "README.md").read_text())
    assert 'hf_hub_download("tester/catsdogs", "model.onnx")' in snippet
    photo = next(photos.glob("cat.*"))
    ran = subprocess.run([sys.executable, "-c", snippet.replace('"my_pet.jpg"', repr(str(photo)))], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    printed = ast.literal_eval(ran.stdout.strip())
    pushed = Classifier(tmp_path / "weights", device=torch.device("cpu"), memory_format="channels_last")
    expected = pushed.predict([photo])[0]
    assert printed.pop("not a cat or a dog", None) == expected.not_a_pet  # None: weights without the score
    assert printed == pytest.approx(expected.probabilities, abs=0.05)  # the snippet decodes in full, the app a draft


@pytest.mark.parametrize("token, message", [
    (None, "no Hugging Face token found: run `hf auth login` or set HF_TOKEN"),
    (BAD_TOKEN, "the Hub rejected the token (HTTP 401)"),
    (READ_TOKEN, "is read-only and cannot push"),
])
def test_token_problems_stop_before_training(hub, push_in_process, tmp_path, token, message):
    status, stderr = push_in_process(token)
    assert status == 2
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "weights").exists()  # no training was started


def test_push_without_a_repo_id_is_refused_before_anything_runs(train_in_process, photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        train_in_process("--data", str(photos), "--output", str(tmp_path / "weights"), "--push")
    assert refused.value.code == 2 and "--push needs --repo-id NAME" in capsys.readouterr().err
    assert not (tmp_path / "weights").exists()


def test_repo_of_someone_else_stops_before_training(hub, push_in_process, tmp_path):
    status, stderr = push_in_process(WRITE_TOKEN, repo_id="someone-else/catsdogs")
    assert status == 2 and "cannot write to 'someone-else/'" in stderr
    assert not (tmp_path / "weights").exists()


def test_unreachable_hub_stops_before_training(hub, push_in_process, tmp_path):
    hub.kill()
    status, stderr = push_in_process(WRITE_TOKEN)
    assert status == 2 and "cannot reach the Hub" in stderr
    assert not (tmp_path / "weights").exists()


def test_hub_down_during_push_keeps_weights_and_the_retry_uploads_them(hub, push_in_process, tmp_path):
    hub.die_on_next_commit()
    output = tmp_path / "weights"
    status, stderr = push_in_process(WRITE_TOKEN)
    assert status == 1
    assert "the push to tester/catsdogs failed" in stderr and "Traceback" not in stderr
    assert hub.wait_dead() != 0
    saved = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output.iterdir()}
    assert set(saved) == PUSHED_FILES
    CatsDogsCNN.from_pretrained(output)  # whole and loadable

    retry = stderr.split("retry only the upload with: ")[1].strip()
    assert retry == (f"hf upload tester/catsdogs {output} . "
                     "--exclude '.saving-*/**' --exclude '.*' --exclude 'checkpoint/**'")
    leftover, checkpoint = output / ".saving-killed", output / "checkpoint"  # a save killed mid-way; a run's state
    for folder in (leftover, checkpoint):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"not for the Hub")
    hub.start()  # the Hub is back
    hf = shlex.split(retry)
    hf[0] = shutil.which("hf", path=str(Path(sys.executable).parent)) or "hf"  # the CLI of this interpreter
    rerun = subprocess.run(hf, cwd=ROOT, env={**os.environ, "HF_TOKEN": WRITE_TOKEN},
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert not {".saving-killed", "checkpoint"} & {p.name for p in hub.repo_dir("tester/catsdogs").iterdir()}
    for folder in (leftover, checkpoint):
        shutil.rmtree(folder)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output.iterdir()} == saved
    assert_same_outputs(CatsDogsCNN.from_pretrained("tester/catsdogs"), CatsDogsCNN.from_pretrained(output))


def test_loading_weights_explains_what_is_wrong(tmp_path):
    from catsdogs.hub import HubError, fetch_weights, load_model

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HubError, match="has no model.safetensors or config.json"):
        fetch_weights(empty)
    with pytest.raises(HubError, match="neither a weights folder nor a Hub repo id"):
        fetch_weights(tmp_path / "missing" / "weights")
    CatsDogsCNN().save_pretrained(tmp_path / "ok")
    with pytest.raises(HubError, match="--revision only applies to Hub repos"):
        fetch_weights(tmp_path / "ok", revision="v1")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(HubError, match="cannot be loaded"):
        load_model(fetch_weights(tmp_path / "ok"))


def test_a_fetched_repo_keeps_working_offline(hub, tmp_path):
    from catsdogs.hub import fetch_weights, load_model, push_outputs

    CatsDogsCNN().save_pretrained(tmp_path / "w")
    push_outputs(tmp_path / "w", "tester/offline", token=WRITE_TOKEN)
    first = load_model(fetch_weights("tester/offline"))
    hub.kill()
    again = load_model(fetch_weights("tester/offline"))  # from the Hub's cache
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


BAD_CONFIGS = {  # config.json values -> what the error must say
    "zero std": ({"std": [0, 0, 0]}, "std must be three finite numbers above zero"),
    "text mean": ({"mean": "abc"}, "mean must be three finite numbers"),
    "two means": ({"mean": [0.5, 0.5]}, "mean must be three finite numbers"),
    "wrong image size": ({"image_size": 100}, "image_size must be 224"),
    "one class": ({"class_names": ["cat"]}, "class_names must be a list of at least two"),
    "text dropout": ({"dropout": "x"}, "dropout must be a number"),
    "zero temperature": ({"temperature": 0}, "temperature must be a number above zero"),
    "unknown tta": ({"tta": "flip"}, "tta must be one of 'none', 'mirror', 'mirror-zoom', not 'flip'"),
    "crop above the photo": ({"crop_pct": 1.5}, "crop_pct must be a number above 0 and at most 1"),
    "not an object": ([1, 2], "it holds a list"),
    "three classes for two-class weights": ({"class_names": ["a", "b", "c"]}, "(?s)cannot be loaded .*size mismatch"),
    "tiny temperature": ({"temperature": 1e-300}, "load but give NaN or infinite probabilities"),
    "tiny std": ({"std": [1e-300] * 3}, "load but give NaN or infinite probabilities"),
    "huge mean": ({"mean": [1e308] * 3}, "load but give NaN or infinite probabilities"),
}


@pytest.mark.parametrize("problem", BAD_CONFIGS)
def test_a_bad_config_is_refused_by_the_app_and_evaluate_saying_what_is_wrong(shipped_weights, tmp_path, problem,
                                                                              capsys):
    import json

    from catsdogs.evaluate import main as evaluate

    from catsdogs.hub import HubError
    from catsdogs.inference import Classifier

    change, message = BAD_CONFIGS[problem]
    shutil.copy(shipped_weights / "model.safetensors", tmp_path)
    config = json.loads((shipped_weights / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change} if isinstance(change, dict) else change))
    with pytest.raises(HubError, match=message):
        Classifier(tmp_path)
    capsys.readouterr()
    assert evaluate(["--model", str(tmp_path), "--data", str(write_kaggle_folder(tmp_path / "photos", 2))]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and re.search(message, printed.err), printed.err


def test_weights_that_answer_every_picture_alike_are_a_hub_error(tmp_path):
    from catsdogs.hub import HubError, load_model

    model = CatsDogsCNN()
    with torch.no_grad():
        model.fc[1].weight.zero_()  # the first 512-unit layer passes nothing on: the head's bias is every answer
    model.save_pretrained(tmp_path)
    with pytest.raises(HubError, match="give the same answer to every picture"):
        load_model(tmp_path)


def test_weights_that_load_but_give_nan_are_a_hub_error(tmp_path):
    from catsdogs.hub import HubError
    from catsdogs.inference import Classifier

    model = CatsDogsCNN()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    model.save_pretrained(tmp_path)
    with pytest.raises(HubError, match="NaN"):
        Classifier(tmp_path)


def test_loading_weights_prints_nothing(tmp_path, capfd):
    """The app's and evaluate's output stays theirs: the Hub mixin's "Loading weights from local directory" is not."""
    from catsdogs.hub import load_model

    CatsDogsCNN().save_pretrained(tmp_path)
    capfd.readouterr()
    load_model(tmp_path)
    assert capfd.readouterr() == ("", "")


def test_the_app_falls_back_within_seconds_when_the_hub_does_not_answer(monkeypatch, tmp_path):
    """A Hub address that takes connections but never answers, as behind a network that drops packets: the first
    question times out (HF_HUB_ETAG_TIMEOUT) and the app serves the shipped weights, saying why."""
    import socket
    import time

    from huggingface_hub import constants

    import app
    from catsdogs.hub import HubError, fetch_weights

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the connections; nobody ever reads or answers
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 2)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        started = time.monotonic()
        with pytest.raises(HubError, match=r"cannot reach the Hub at http://127.0.0.1:\d+ \(ReadTimeout\)"):
            fetch_weights("tester/pets")
        assert time.monotonic() - started < 2 + 3
        classifier, warning = app.load_classifier("tester/pets", None)
    assert classifier is not None and classifier.folder == app.SHIPPED_WEIGHTS
    assert "Serving the shipped weights/ instead" in warning and "ReadTimeout" in warning, warning


def test_fetch_weights_brings_the_not_pet_score_beside_them(hub, shipped_weights, tmp_path):
    from catsdogs.hub import fetch_weights, push_outputs
    from catsdogs.notpet import FILE_NAME

    push_outputs(shipped_weights, "tester/with-score", token=WRITE_TOKEN)
    CatsDogsCNN().save_pretrained(tmp_path / "plain")
    push_outputs(tmp_path / "plain", "tester/plain", token=WRITE_TOKEN)
    with_score = fetch_weights("tester/with-score")
    assert (with_score / FILE_NAME).read_bytes() == (shipped_weights / FILE_NAME).read_bytes()
    assert not (fetch_weights("tester/plain") / FILE_NAME).exists()  # optional: weights without one still load


def test_a_push_keeps_the_notes_written_on_the_hub_below_the_card_s_mark(hub, shipped_weights, tmp_path):
    """Notes added in the Hub's editor survive the push of new weights whose card has none; a card's own notes win."""
    from huggingface_hub import HfApi

    from catsdogs.hub import push_outputs
    from catsdogs.model import NOTES_MARK

    api, repo = HfApi(token=WRITE_TOKEN), "tester/noted"
    first = Path(shutil.copytree(shipped_weights, tmp_path / "first"))
    card = first / "README.md"
    card.write_text(card.read_text().partition(NOTES_MARK)[0] + NOTES_MARK)  # as train.py writes it: no notes
    push_outputs(first, repo, token=WRITE_TOKEN)
    notes = "\n\n## Notes\n\nOur two cats, photographed at night.\n"
    api.upload_file(path_or_fileobj=(card.read_text() + notes).encode(), path_in_repo="README.md", repo_id=repo)

    def hub_card() -> str:
        return Path(api.hf_hub_download(repo, "README.md")).read_text()

    second = Path(shutil.copytree(first, tmp_path / "second"))  # new weights, their card without notes
    push_outputs(second, repo, token=WRITE_TOKEN)
    assert hub_card().endswith(NOTES_MARK + notes) and hub_card() == (second / "README.md").read_text()
    third = Path(shutil.copytree(first, tmp_path / "third"))
    (third / "README.md").write_text(card.read_text() + "\n\nWritten here.\n")
    push_outputs(third, repo, token=WRITE_TOKEN)
    assert hub_card().endswith(NOTES_MARK + "\n\nWritten here.\n")


def test_fine_tuning_starts_from_a_hub_model_and_the_card_names_it(hub, shipped_weights, shared_data, tmp_path,
                                                                   train_in_process):
    """--init-from a Hub repo with a learning rate of 0: the run keeps exactly the weights it started from, which
    score like trained weights (a random start scores ~50%), and the card's metadata names the base model."""
    from catsdogs.hub import push_outputs

    push_outputs(shipped_weights, "tester/base", token=WRITE_TOKEN)
    photos = shared_data / "dogs-vs-cats-200" / "train"
    rows = [f"{photos / f'{kind}.{i}.jpg'},{label}" for kind, label in (("cat", 0), ("dog", 1)) for i in range(12)]
    (tmp_path / "mine.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
    status, stdout, stderr = train_in_process(
        "--data", str(tmp_path / "mine.csv"), "--init-from", "tester/base", "--val-fraction", "0.5", "--epochs", "1",
        "--lr", "0", "--schedule", "constant", "--batch-size", "6", "--tta", "mirror", "--crop-pct", "0.95",
        "--memory-format", "channels_last", "--output", str(tmp_path / "out"), "--checkpoint",
        str(tmp_path / "ck.safetensors"))
    assert status == 0, stderr
    before = re.search(r"--init-from tester/base: the starting weights score ([\d.]+)% on the validation photos",
                       stdout)
    assert before and float(before[1]) >= 90, stdout
    start, tuned = (load_file(folder / "model.safetensors") for folder in (shipped_weights, tmp_path / "out"))
    assert start.keys() == tuned.keys() and all(torch.equal(start[name], tuned[name]) for name in start)
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.base_model == "tester/base"
    text = " ".join(card.text.split())
    assert "started from the trained weights `tester/base` (fine-tuning)" in text
    # Unchanged weights score the same after the epoch: the run says that no epoch beat them, and so does the card.
    assert (f"they scored {float(before[1]):.2f}% on the same validation photos before training, and no epoch beat "
            "them.") in text
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["start_val_accuracy"] == pytest.approx(
        float(before[1]) / 100, abs=5e-5)
    assert f"no epoch beat the starting weights (--init-from tester/base: {before[1]}% before training)" in stdout
    out = tmp_path / "out"
    assert stdout.rstrip().endswith(f"try them: python app.py --model {out}\n"
                                    f"          python -m catsdogs.predict PHOTOS_OR_FOLDERS --model {out}")
