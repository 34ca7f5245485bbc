"""Training learns, writes a complete output folder, and survives being interrupted."""

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from conftest import OUTPUT_FILES, ROOT, assert_same_training
from imagegen import write_kaggle_folder
from PIL import Image
from safetensors.torch import load_file

from catsdogs import CatsDogsCNN, plots
from catsdogs.allocator import find_jemalloc
from catsdogs.checkpoint import load_checkpoint
from catsdogs.config import PATH_SETTINGS, TrainConfig
from catsdogs.loader import PhotoLoader, augment, find_split
from catsdogs.model import IMAGENET_MEAN, IMAGENET_STD
from catsdogs.outputs import portable_command, portable_path
from catsdogs.training import make_scheduler, start_run

ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~])/(?:[\w.-]+/)+[\w.-]+")  # /a/b, not https://x/y nor a relative a/b


def test_accuracy_rises_well_above_chance(trained):
    _, summary, _ = trained
    assert summary["n_train"] == 60 and summary["n_val"] == 20
    assert summary["best_val_accuracy"] >= 0.9
    assert summary["history"][-1]["train_loss"] < summary["history"][0]["train_loss"]


def test_output_folder_is_complete(trained):
    config, summary, bad = trained
    output = Path(config.output)
    assert {p.name for p in output.iterdir()} == OUTPUT_FILES
    metrics = json.loads((output / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert metrics["best_val_accuracy"] == summary["best_val_accuracy"]
    assert sorted(path for path, _ in metrics["skipped_files"]) == sorted(map(portable_path, bad))
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert Image.open(output / png).size[0] > 300
    card = (output / "README.md").read_text()
    assert f"value: {round(summary['best_val_accuracy'], 4)}" in card  # structured eval results
    assert "786,402 parameters" in card and "python train.py --test" in card


def test_the_card_and_metrics_show_no_absolute_path(trained):
    """The photos, the output and the checkpoint are in temporary folders, named by their absolute paths: what gets
    published names them relative to the working folder, or by their last two names."""
    config, _, _ = trained
    output = Path(config.output)
    for name in ("README.md", "metrics.json"):
        text = (output / name).read_text()
        for path in (config.data, config.output, config.checkpoint, Path(config.data).parent):
            assert str(path) not in text, f"{name} shows {path}"
        assert not ABSOLUTE_PATH.search(text), ABSOLUTE_PATH.search(text)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["data"] == "/".join(Path(config.data).parts[-2:])


def test_portable_paths_and_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert portable_path(tmp_path / "photos" / "train") == "photos/train"  # inside the working folder
    assert portable_path("/elsewhere/deep/pets/train") == "pets/train"
    assert portable_path("~/pets") == "pets" and portable_path(Path.home() / "data" / "cats" / "train") == "cats/train"
    assert portable_path("hf://datasets/a/b") == "hf://datasets/a/b" and portable_path("rel/x") == "rel/x"
    assert portable_command("python train.py --data /a/b/c --output=/x/y/z --epochs 3 --tta mirror") == \
        "python train.py --data b/c --output=y/z --epochs 3 --tta mirror"


def test_the_shipped_card_and_metrics_show_no_absolute_path():
    for name in ("README.md", "metrics.json", "config.json"):
        text = (ROOT / "weights" / name).read_text()
        assert not ABSOLUTE_PATH.search(text), ABSOLUTE_PATH.search(text)


def test_output_holds_the_best_weights_and_loads_identically(trained):
    config, summary, _ = trained
    best = load_checkpoint(config.checkpoint)["best"]
    assert best["epoch"] == summary["best_epoch"]
    reference = CatsDogsCNN()
    reference.load_state_dict(best["model"])
    loaded = CatsDogsCNN.from_pretrained(config.output)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference.eval()(x), rtol=0, atol=0)


def test_every_flag_reaches_the_training_config(tmp_path):
    """train.py with the seed project's recipe (but 30 epochs: its 40 is our default) and every other flag set away
    from its default: metrics.json, written after the first epoch, records the config training ran with."""
    data, val = write_kaggle_folder(tmp_path / "photos", per_class=4), write_kaggle_folder(tmp_path / "val", 2)
    expected = {"data": str(data), "val_data": str(val), "val_fraction": 0.25, "seed": 3, "split_seed": 5, "epochs": 30,
                "batch_size": 20, "lr": 0.001, "optimizer": "adam", "schedule": "constant", "weight_decay": 0.0,
                "label_smoothing": 0.0, "dropout": 0.2, "augment": False, "device": "cpu",
                "ema_decay": 0.99, "tta": "mirror", "memory_format": "contiguous", "photos_on": "host",
                "compile": "off", "flip": "alternate", "whiten": True, "identity_start": True, "crop_pct": 0.9,
                "output": str(tmp_path / "out"), "checkpoint": str(tmp_path / "ck" / "last.safetensors"),
                "resume": False, "overwrite": True, "workers": 1,
                "cache": False, "cache_dir": str(tmp_path / "cache"), "data_revision": None, "data_split": "train",
                "init_from": None, "onnx": True, "push": False, "repo_id": "you/catsdogs", "private": False}
    defaults = asdict(TrainConfig(data=""))
    assert set(expected) == set(defaults)  # every field of the config is set here...
    # ...away from its default, but for the Hub-only flags, which a local --data refuses (test_hub_data.py sets them),
    # the start from trained weights, which --whiten and --identity-start rule out (test_hub.py sets it), and the
    # push and its private repo, which need a Hub (test_hub.py pushes)
    assert [k for k in expected if k != "data" and expected[k] == defaults[k]] == [
        "resume", "data_revision", "data_split", "init_from", "push", "private"]
    args = ["--data", str(data), "--val-data", str(val), "--val-fraction", "0.25", "--seed", "3", "--split-seed", "5",
            "--epochs", "30",
            "--batch-size", "20", "--lr", "0.001", "--optimizer", "adam", "--schedule", "constant",
            "--weight-decay", "0", "--label-smoothing", "0", "--dropout", "0.2", "--no-augment", "--ema-decay", "0.99",
            "--tta", "mirror", "--device", "cpu", "--memory-format", "contiguous", "--photos-on", "host",
            "--compile", "off", "--flip", "alternate", "--whiten", "--identity-start", "--crop-pct", "0.9",
            "--output", expected["output"], "--checkpoint", expected["checkpoint"], "--overwrite", "--workers", "1",
            "--no-cache", "--cache-dir", expected["cache_dir"], "--onnx", "--repo-id", "you/catsdogs"]
    metrics = Path(expected["output"]) / "metrics.json"
    process = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    card_file = metrics.parent / "README.md"
    while not (metrics.exists() and card_file.exists()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # one epoch of 30 is enough to see the config
    _, stderr = process.communicate(timeout=60)
    assert metrics.exists(), stderr
    assert json.loads(metrics.read_text())["config"] == {  # the paths as a published card may show them
        name: portable_path(value) if name in PATH_SETTINGS else value for name, value in expected.items()}
    card = " ".join(card_file.read_text().split())
    assert "Augmentation: none." in card and "| whiten | True |" in card and "| flip | alternate |" in card
    assert "The first convolution started as a whitening of the training photos' 3×3 patches" in card
    assert "The convolutions after the first started as the identity on their first channels" in card
    assert "The network sees the centred 90% of each photo's width and height" in card
    assert 'CatsDogsCNN.from_pretrained("you/catsdogs")' in card  # the repo the weights are meant for
    assert json.loads((metrics.parent / "config.json").read_text())["crop_pct"] == 0.9


def test_cli_stops_at_once_on_unusable_data(tmp_path, train_in_process):
    (tmp_path / "cats").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "cats" / "1.jpg")
    status, _, stderr = train_in_process("--data", str(tmp_path), "--output", str(tmp_path / "out"))
    assert status == 2
    assert "only one class" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_kill_then_resume_ends_exactly_where_an_uninterrupted_run_ends(tmp_path, train_in_process):
    data = write_kaggle_folder(tmp_path / "photos", per_class=12)
    recipe = ["--data", str(data), "--val-fraction", "0.25", "--ema-decay", "0.9", "--tta", "mirror", "--epochs", "3",
              "--batch-size", "6", "--memory-format", "channels_last"]  # EMA and the mirror must resume exactly too;
    # the layout is fixed: bit for bit needs the same kernels in both runs
    run, reference = tmp_path / "run", tmp_path / "reference"
    output, checkpoint = run / "weights", run / "ck" / "last.safetensors"
    args = [*recipe, "--output", str(output), "--checkpoint", str(checkpoint)]
    uninterrupted = subprocess.Popen(  # meanwhile, to save time: the same run, not interrupted
        [sys.executable, "train.py", *recipe, "--output", str(reference / "weights"), "--checkpoint",
         str(reference / "ck" / "last.safetensors")], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    process = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (output / "model.safetensors").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # a kill in the middle of training
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    completed = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= completed < 3
    assert f"{completed} finished epochs are saved" in stderr
    resume_command = stderr.strip().splitlines()[-1].removeprefix("resume with: ")
    assert resume_command.endswith("--resume")
    assert CatsDogsCNN.from_pretrained(output) is not None  # the best weights so far are whole

    status, _, stderr = train_in_process(*recipe[:-4], "--epochs", "5", "--batch-size", "6", "--output", str(output),
                                         "--checkpoint", str(checkpoint), "--resume")
    assert status == 2 and "--epochs was 3, now 5" in stderr

    program, *resume_args = shlex.split(resume_command)
    assert program == "python"
    resumed = subprocess.run([sys.executable, *resume_args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoint} after epoch {completed}" in resumed.stdout
    metrics = json.loads((output / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert (metrics["resumed_after"], metrics["torch"]) == ([completed], torch.__version__)
    card = " ".join((output / "README.md").read_text().split())  # its lines joined, as Markdown shows them
    assert f"The run was stopped after epoch {completed} and continued from its checkpoint with the command above." \
        in card and f", torch {torch.__version__}. Training time:" in card

    _, stderr = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, stderr
    assert_same_training(run, reference)  # bit for bit: the random streams are reseeded per seed and epoch
    assert json.loads((reference / "weights" / "metrics.json").read_text())["resumed_after"] == []
    assert "was stopped" not in (reference / "weights" / "README.md").read_text()


def test_whiten_starts_the_first_convolution_as_a_whitening_of_the_photos_patches():
    smooth = torch.nn.functional.interpolate(torch.rand(40, 3, 28, 28, generator=torch.Generator().manual_seed(1)),
                                             size=224, mode="bilinear")  # neighbouring pixels correlate
    photos = (smooth * 255).to(torch.uint8)
    config = TrainConfig(data="photos", whiten=True, device="cpu", memory_format="channels_last")
    plain = start_run(replace(config, whiten=False), torch.device("cpu"), 10, 4).model.blocks[0][0]
    random_state = torch.random.get_rng_state()
    conv = start_run(config, torch.device("cpu"), 10, 4, photos=photos).model.blocks[0][0]
    assert torch.equal(torch.random.get_rng_state(), random_state)  # as without --whiten (start_run reseeds)
    images = (photos.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, conv.weight[:27])  # the eigenvectors, largest variance first
    variances = out.pow(2).mean(dim=(0, 2, 3))
    assert variances[:5] == pytest.approx(1, rel=0.01)  # whitened: unit variance where the photos vary most
    assert variances.diff().max() < 1e-3  # and never more as the variance they whiten falls (the eps)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 27)[:, :5]
    moments = flat.T @ flat / len(flat)
    assert (moments - torch.eye(5)).abs().max() < 0.01  # uncorrelated
    assert torch.equal(conv.weight[27:54], -conv.weight[:27]) and not conv.bias[:54].any()
    assert torch.equal(conv.weight[54:], plain.weight[54:])  # the filters left over keep their seeded start
    with pytest.raises(ValueError, match="--whiten needs the training photos"):
        start_run(config, torch.device("cpu"), 10, 4)


def test_identity_start_passes_the_signal_through_the_later_convolutions():
    photos = (torch.nn.functional.interpolate(torch.rand(8, 3, 28, 28, generator=torch.Generator().manual_seed(2)),
                                              size=224, mode="bilinear") * 255).to(torch.uint8)
    config = TrainConfig(data="photos", identity_start=True, device="cpu", memory_format="channels_last")
    plain = start_run(replace(config, identity_start=False), torch.device("cpu"), 10, 4).model
    random_state = torch.random.get_rng_state()
    model = start_run(config, torch.device("cpu"), 10, 4).model
    assert torch.equal(torch.random.get_rng_state(), random_state)  # draws nothing more than the plain start
    first, *later = [m for m in model.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert torch.equal(first.weight, plain.blocks[0][0].weight)
    x = torch.randn(2, 64, 12, 12)
    with torch.no_grad():
        passed = torch.nn.functional.conv2d(x, later[0].weight)  # the weights alone, without the bias
    torch.testing.assert_close(passed, x[:, :, 1:-1, 1:-1])  # 64 -> 64: every channel through, unchanged
    assert later[2].out_channels == 32 and torch.equal(later[2].weight[:, :, 1, 1], torch.eye(32, 64))  # 64 -> 32

    def spread(network) -> float:  # how much the logits of different photos differ
        images = (photos.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
            IMAGENET_STD).view(3, 1, 1)
        with torch.no_grad():
            return network(images).std(dim=0).max().item()
    both = start_run(replace(config, whiten=True), torch.device("cpu"), 10, 4, photos=photos).model
    assert spread(plain) < 0.005 < 0.05 < spread(both)  # deaf to the photo by default; not with both starts


def test_the_moving_average_is_validated_and_saved_and_the_mirror_is_recorded(tmp_path):
    from catsdogs.hub import load_model
    from catsdogs.training import train

    data = write_kaggle_folder(tmp_path / "photos", per_class=8)
    config = TrainConfig(data=str(data), val_fraction=0.25, epochs=1, batch_size=4, ema_decay=0.5, tta="mirror",
                         device="cpu", workers=1, cache=False, memory_format="channels_last",
                         output=str(tmp_path / "out"))
    train(config, command="python train.py --test")
    checkpoint = load_checkpoint(config.checkpoint)
    ema = checkpoint["ema"]
    assert ema["n_averaged"].item() == checkpoint["steps_per_epoch"]  # updated after every step
    average = {name.removeprefix("module."): w for name, w in ema.items() if name != "n_averaged"}
    saved = load_file(Path(config.output) / "model.safetensors")
    assert saved.keys() == average.keys() and all(torch.equal(saved[k], average[k]) for k in saved)  # 1 epoch: best
    assert not all(torch.equal(saved[k], checkpoint["model"][k]) for k in saved)  # the average, not the last step
    assert load_model(config.output).tta == "mirror"
    card = (Path(config.output) / "README.md").read_text()
    assert "mirror test-time augmentation" in card and "exponential moving average" in card
    assert "| ema_decay | 0.5 |" in card and "| tta | mirror |" in card


def test_validation_photos_that_are_also_trained_on_are_flagged(easy_photos, capsys):
    data, _ = easy_photos
    split = find_split(data, 0.1, 0, val_data=data)
    assert len(split.val) == len(split.train) == 83 and "--val-data" in split.source  # 80 photos + 3 bad files
    assert "83 of the --val-data photos are also training photos" in capsys.readouterr().out


@pytest.mark.parametrize("epochs, steps_per_epoch", [(1, 1), (1, 2), (1, 3), (1, 4), (2, 3), (1, 7), (3, 5)])
def test_schedule_survives_every_short_run(epochs, steps_per_epoch):
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    scheduler = make_scheduler(TrainConfig(data="", epochs=epochs), optimizer, steps_per_epoch)
    for _ in range(epochs * steps_per_epoch):
        optimizer.step()
        scheduler.step()
    assert 0 < optimizer.param_groups[0]["lr"] <= 2e-3


def weights_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_run_never_replaces_weights_it_did_not_write(tmp_path, monkeypatch, train_in_process):
    """The default output is a run folder; a second run there, or a run into other weights, is refused at once."""
    data = write_kaggle_folder(tmp_path / "photos", per_class=6)
    work = tmp_path / "work"
    work.mkdir()
    args = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--epochs", "1", "--batch-size", "6",
            "--val-fraction", "0.25", "--memory-format", "channels_last"]
    first = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=300)  # as a user starts it
    assert first.returncode == 0, first.stderr
    # The allocator train.py restarted itself under (README, "Performance"), or how to get it.
    assert ("memory allocator: jemalloc" if find_jemalloc() else "apt-get install libjemalloc2") in first.stdout
    output = work / "runs" / "catsdogs"
    assert (output / "checkpoint" / "last.safetensors").is_file() and (output / "model.safetensors").is_file()
    before = weights_digest(output)

    monkeypatch.chdir(work)  # the runs after the first, in this process: the same relative default output
    status, _, stderr = train_in_process(*args[2:])
    assert status == 2 and "Traceback" not in stderr
    assert f"{Path('runs/catsdogs/model.safetensors')} is from an earlier run" in stderr
    assert "--output NEW_FOLDER" in stderr and "--overwrite" in stderr
    assert "decoding" not in stderr  # refused before any photo was decoded
    assert weights_digest(output) == before

    shipped = tmp_path / "weights"
    shutil.copytree(ROOT / "weights", shipped)
    status, _, stderr = train_in_process(*args[2:], "--output", str(shipped))
    assert status == 2 and "is from an earlier run" in stderr
    assert weights_digest(shipped) == weights_digest(ROOT / "weights")

    status, _, stderr = train_in_process(*args[2:], "--overwrite")
    assert status == 0, stderr
    assert weights_digest(output) != before


@pytest.mark.parametrize("crop", ["0", "1.5", "-0.9"])
def test_a_crop_beyond_the_photo_is_refused_before_anything_runs(tmp_path, capsys, crop):
    from train import parse_args

    with pytest.raises(SystemExit) as refused:
        parse_args(["--data", str(tmp_path), "--crop-pct", crop])
    assert refused.value.code == 2
    assert f"--crop-pct must be a number above 0 and at most 1 (1: the whole photo), not {float(crop)}" in \
        capsys.readouterr().err


@pytest.mark.parametrize("start", ["--whiten", "--identity-start"])
def test_a_start_from_weights_and_a_random_start_are_refused_together(tmp_path, capsys, start):
    from train import parse_args

    with pytest.raises(SystemExit) as refused:
        parse_args(["--data", str(tmp_path), "--init-from", "weights", start])
    assert refused.value.code == 2
    assert "--init-from starts from trained weights, --whiten and --identity-start are random starts" in \
        capsys.readouterr().err


def test_weights_a_run_cannot_start_from_are_refused_before_any_photo_is_decoded(tmp_path, easy_photos,
                                                                                 train_in_process):
    data, _ = easy_photos
    CatsDogsCNN(class_names=("dog", "cat")).save_pretrained(tmp_path / "swapped")
    refusals = {"nowhere/at/all": "nowhere/at/all is neither a weights folder nor a Hub repo id",
                str(tmp_path): f"{tmp_path} has no model.safetensors or config.json",
                str(tmp_path / "swapped"): "answer ['dog', 'cat'] for photos normalised with mean [0.485, 0.456, "
                                           "0.406] and std [0.229, 0.224, 0.225]; a run starts only from weights "
                                           "that answer ['cat', 'dog']"}
    for source, message in refusals.items():
        status, stdout, stderr = train_in_process("--data", str(data), "--init-from", source,
                                                  "--output", str(tmp_path / "out"))
        assert status == 2 and "Traceback" not in stderr
        assert message in stderr
        assert "photos" not in stdout + stderr.replace(message, "")  # nothing was listed or decoded


def test_an_output_that_cannot_be_written_is_refused_before_training(tmp_path, easy_photos, train_in_process):
    data, _ = easy_photos
    (tmp_path / "a-file").write_text("not a folder")
    status, stdout, stderr = train_in_process("--data", str(data), "--output", str(tmp_path / "a-file" / "run"))
    assert status == 2 and "Traceback" not in stderr
    assert f"cannot create {tmp_path / 'a-file' / 'run'}/: {tmp_path / 'a-file'} is a file" in stderr
    assert "epoch" not in stdout


def test_curves_of_a_short_run_have_whole_epochs_and_percentages():
    history = [{"epoch": 1, "train_loss": 0.6, "val_loss": 0.5, "train_accuracy": 0.62, "val_accuracy": 0.71}]
    loss, accuracy = plots.training_curves(history).axes
    assert list(accuracy.get_xticks()) == [1] and list(loss.get_xticks()) == [1]
    assert accuracy.get_title() == "Accuracy (%)"
    assert sorted(line.get_ydata()[0] for line in accuracy.get_lines()) == pytest.approx([62, 71])


def test_a_write_that_fails_midway_ends_with_the_resume_command_and_the_checkpoint_whole(tmp_path, monkeypatch,
                                                                                         capsys):
    """The second epoch's checkpoint is written under a file size limit (RLIMIT_FSIZE) smaller than it: the kernel
    fails the write midway, as it does when the disk fills up."""
    import resource

    import train as train_cli
    from catsdogs import training

    data = write_kaggle_folder(tmp_path / "photos", per_class=6)
    checkpoint = tmp_path / "ck" / "last.safetensors"
    real_save, saves = training.save_checkpoint, []

    def disk_fills_up_after_the_first(state, path):
        saves.append(state["epoch"])
        if len(saves) < 2:
            return real_save(state, path)
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, limits[1]))
        try:
            real_save(state, path)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)

    monkeypatch.setattr(training, "save_checkpoint", disk_fills_up_after_the_first)
    argv = ["--data", str(data), "--epochs", "3", "--batch-size", "4", "--val-fraction", "0.25",
            "--memory-format", "channels_last", "--output", str(tmp_path / "out"), "--checkpoint", str(checkpoint)]
    assert train_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot write the checkpoint {checkpoint}: File too large in epoch 2: 1 finished epochs are " \
           f"saved in {checkpoint}" in err, err
    assert f"resume with: python train.py {shlex.join(argv)} --resume" in err and "Traceback" not in err
    assert load_checkpoint(checkpoint)["epoch"] == 1 and os.listdir(checkpoint.parent) == [checkpoint.name]


def test_a_kill_while_the_plots_are_drawn_lets_the_outputs_finish_then_stops_as_any_kill(tmp_path, monkeypatch,
                                                                                        train_in_process):
    """A kill (torchrun's SIGTERM when a peer fails, or Ctrl-C) that lands while a plot is drawn waits until every
    output is written (raised inside matplotlib's C code it would come out as a ValueError), then stops the run."""
    from matplotlib.figure import Figure

    data = write_kaggle_folder(tmp_path / "photos", per_class=6)
    draw = Figure.savefig

    def killed_while_drawing(figure, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return draw(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", killed_while_drawing)
    out, checkpoint = tmp_path / "out", tmp_path / "ck" / "last.safetensors"
    status, _, err = train_in_process("--data", str(data), "--epochs", "3", "--batch-size", "4", "--val-fraction",
                                      "0.25", "--output", str(out), "--checkpoint", str(checkpoint))
    assert status == 130 and "Traceback" not in err
    assert f"interrupted in epoch 1: 1 finished epochs are saved in {checkpoint}, the best weights so far in " \
           f"{out}/" in err, err
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES  # every plot drawn and saved


def test_a_full_disk_is_said_in_words():
    from safetensors import SafetensorError

    from catsdogs.checkpoint import WriteError, writing

    full = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    with pytest.raises(WriteError, match="^cannot write the weights: No space left on device$"):
        with writing("the weights"):
            raise SafetensorError(full)


def test_too_little_room_for_a_checkpoint_is_said_before_writing(tmp_path, monkeypatch):
    import shutil as shutil_module

    from catsdogs import checkpoint
    from catsdogs.checkpoint import WriteError, save_checkpoint

    save_checkpoint({"weights": torch.zeros(1000)}, tmp_path / "first.safetensors")
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: usage._replace(free=2 * 2**20))
    with pytest.raises(WriteError, match=rf"the disk is full: the checkpoint {tmp_path}/second.safetensors needs "
                                         rf"\d+ MB and {tmp_path} has 2 MB free"):
        save_checkpoint({"weights": torch.zeros(1000)}, tmp_path / "second.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.safetensors"]


def test_a_compiled_run_steps_as_the_eager_one_and_keeps_plain_weights(tmp_path):
    """--compile on, on the CPU: the one test that compiles (forward and backward; about a minute on 2 busy
    cores). The compiled step's logits and loss match the eager step's, and the weights, the checkpoint and the
    moving average keep the plain module's names: they load into a plain CatsDogsCNN."""
    config = TrainConfig(data="", compile="on", memory_format="channels_last", schedule="constant", ema_decay=0.9)
    compiled = start_run(config, torch.device("cpu"), steps_per_epoch=2, process_batch=4)
    eager = start_run(replace(config, compile="off"), torch.device("cpu"), steps_per_epoch=2, process_batch=4)
    assert compiled.compile_seconds > 0 and eager.compile_seconds is None
    assert compiled.network is not compiled.model and eager.network is eager.model
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(4, 3, 224, 224, generator=generator), torch.tensor([0, 1, 1, 0])
    loss, logits = compiled.step(images, labels)
    eager_loss, eager_logits = eager.step(images, labels)
    torch.testing.assert_close(logits.float(), eager_logits.float(), rtol=0.02, atol=0.01)  # bf16 on this CPU
    torch.testing.assert_close(loss, eager_loss, rtol=0.01, atol=0.001)

    saved = compiled.state_dict()
    for weights in (saved["model"], saved["ema"]):
        assert not any("_orig_mod" in name for name in weights)
    plain = CatsDogsCNN()
    plain.load_state_dict(saved["model"])  # strict: every name as a plain module has it
    compiled.model.save_pretrained(tmp_path / "weights")
    loaded = CatsDogsCNN.from_pretrained(tmp_path / "weights").state_dict()
    assert all(torch.equal(loaded[name], w) for name, w in compiled.model.state_dict().items())


def test_alternate_flip_mirrors_each_photo_in_every_other_epoch():
    """--flip alternate: a photo's mirror flips from one epoch to the next, and half the photos start mirrored;
    the default draws afresh (and its batches are the ones it always drew: same seed, same weights)."""
    loader = PhotoLoader(torch.zeros(200, 3, 8, 8, dtype=torch.uint8), torch.zeros(200, dtype=torch.long), seed=5,
                         augment=True, flip="alternate")
    everyone = torch.arange(200)
    first, second, third = (loader.alternate_mirror(everyone, epoch) for epoch in (1, 2, 3))
    assert torch.equal(second, ~first) and torch.equal(third, first)
    assert 70 < int(first.sum()) < 130
    assert torch.equal(loader.alternate_mirror(everyone[50:60], 1), first[50:60])  # by photo, not by position
    photos = torch.rand(1, 3, 16, 16)
    photos[..., :8] = 0  # left half black: mirrored, the right half is
    torch.manual_seed(0)
    mirrored, kept = augment(photos.repeat(2, 1, 1, 1), torch.tensor([True, False]))
    assert mirrored[..., :6].mean() > kept[..., :6].mean()
