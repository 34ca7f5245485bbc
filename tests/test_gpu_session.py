"""bench.gpu_session: the photos travel to the GPU machine in chunks the device tool can carry, and arrive whole."""

import json
import tarfile

from imagegen import write_kaggle_folder

from bench import gpu_session


def test_photos_travel_in_chunks_under_the_limit_and_unpack_exactly(tmp_path):
    data = tmp_path / "data"
    train = write_kaggle_folder(data / gpu_session.TRAIN, per_class=40)
    write_kaggle_folder(data / gpu_session.FULLRES, per_class=5, start=1)
    chunks = gpu_session.pack(data, tmp_path / "chunks", max_mib=0.6, fullres=4)

    assert len(chunks) >= 2 and all(chunk.stat().st_size <= 0.6 * 2**20 for chunk in chunks)
    assert [c.name for c in chunks] == [f"photos-{k}-of-{len(chunks)}.tar.gz" for k in range(1, len(chunks) + 1)]
    with tarfile.open(chunks[0]) as tar:
        first = tar.getnames()
    assert sum(name.startswith(gpu_session.FULLRES) for name in first) == 4  # bench.inference's, in the first
    assert {name.rsplit("/", 1)[1].split(".")[0] for name in first if name.startswith(gpu_session.TRAIN)} == {
        "cat", "dog"}  # the first chunk alone can train

    gpu_session.setup(tmp_path / "chunks", tmp_path / "photos", wheels_folder=tmp_path / "no-wheels")
    arrived = tmp_path / "photos" / gpu_session.TRAIN
    assert sorted(p.name for p in arrived.iterdir()) == sorted(p.name for p in train.iterdir())
    assert all((arrived / p.name).read_bytes() == p.read_bytes() for p in train.iterdir())


def test_every_sweep_recipe_is_a_valid_train_py_command():
    import train

    for chosen in gpu_session.SWEEP:
        config = train.TrainConfig.from_args(train.parse_args(["--data", "x", *chosen.args]))
        assert config.epochs == chosen.epochs and config.tta == "mirror" and config.ema_decay > 0
    assert len({r.name for r in gpu_session.SWEEP}) == len(gpu_session.SWEEP)
    assert gpu_session.SWEEP[0].with_epochs(1).epochs == 1


def test_the_session_recipes_are_valid_train_py_commands_and_its_dry_run_is_short():
    import train

    for chosen in (gpu_session.FAST, gpu_session.LONG):
        config = train.TrainConfig.from_args(train.parse_args(["--data", "x", *chosen.args]))
        assert config.epochs == chosen.epochs and config.flip == "alternate" and config.compile == "auto"
        assert config.whiten and config.identity_start
        assert gpu_session.TRAINING_PHOTOS % config.batch_size == 0  # one batch size to compile
    dry, full = gpu_session.SessionPlan.choose(dry_run=True), gpu_session.SessionPlan.choose(dry_run=False)
    assert (dry.fast.epochs, dry.long.epochs) == (1, 2) and full.fast == gpu_session.FAST
    assert full.long == gpu_session.LONG


def test_time_to_target_counts_compiling_and_the_epochs_until_the_first_at_95(tmp_path):
    history = [{"epoch": e, "seconds": 2.0, "val_accuracy": acc} for e, acc in ((1, 0.9), (2, 0.951), (3, 0.96))]
    (tmp_path / "metrics.json").write_text(json.dumps({"compile_seconds": 30.5, "history": history}))
    assert gpu_session.time_to_target(tmp_path).startswith("95% after epoch 2: 34.5 s from the first step")
    history[1]["val_accuracy"] = history[2]["val_accuracy"] = 0.94
    (tmp_path / "metrics.json").write_text(json.dumps({"compile_seconds": None, "history": history}))
    assert gpu_session.time_to_target(tmp_path) == "95% not reached in 3 epochs (0.0 s compiling)"


def test_photos_linked_into_the_folder_travel_as_photos(tmp_path):
    originals = write_kaggle_folder(tmp_path / "elsewhere", per_class=3)
    linked = tmp_path / "data" / gpu_session.TRAIN
    linked.mkdir(parents=True)
    for photo in originals.iterdir():
        (linked / photo.name).symlink_to(photo)
    gpu_session.pack(tmp_path / "data", tmp_path / "chunks", max_mib=1, fullres=0)

    gpu_session.setup(tmp_path / "chunks", tmp_path / "photos", wheels_folder=tmp_path / "no-wheels")
    arrived = tmp_path / "photos" / gpu_session.TRAIN
    assert all(not (arrived / p.name).is_symlink() and (arrived / p.name).read_bytes() == p.read_bytes()
               for p in originals.iterdir())


def test_what_runs_on_the_gpu_machine_imports_without_the_packages_it_lacks(tmp_path):
    """The GPU machine's own Python has neither Gradio nor pi-heif (HEIC photos) nor onnx and onnxruntime: the
    session, training, evaluation and the benchmarks import and decode JPEGs without them."""
    import subprocess
    import sys

    from conftest import ROOT

    write_kaggle_folder(tmp_path, 1)
    absent = ["gradio", "pi_heif", "onnx", "onnxruntime", "onnxscript"]
    code = (f"import sys; sys.modules.update(dict.fromkeys({absent}))\n"  # None: their import fails
            "import bench.gpu_session, bench.inference, bench.training, catsdogs.evaluate, train\n"
            "from catsdogs.preprocess import load_photo\n"
            f"print(tuple(load_photo({str(tmp_path / 'cat.0.jpg')!r}, 224).shape))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "(3, 224, 224)"), done.stderr
