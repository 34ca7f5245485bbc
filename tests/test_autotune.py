"""The memory layout is measured, forced by a flag, kept when the candidates are too close to call, and followed
by every input; training, the Classifier and oneDNN's ISA cap all go through it."""

import time

import pytest
import torch
from imagegen import write_kaggle_folder

from catsdogs import CatsDogsCNN
from catsdogs.autotune import DEFAULT, Layout, choose_layout, use_layout
from catsdogs.config import TrainConfig
from catsdogs.device import Precision, Ranks, cpu_has_native_bf16, describe_device
from catsdogs.inference import Classifier
from catsdogs.training import build_model, choose_training_layout, train

CPU = torch.device("cpu")


def sleeping(seconds: dict[Layout, float]):
    """step_in for choose_layout: each layout's step takes the given time."""
    return lambda layout: (lambda: time.sleep(seconds[layout]))


def test_auto_takes_a_clearly_faster_layout_and_says_why():
    choice = choose_layout("auto", CPU, sleeping({Layout.CHANNELS_LAST: 0.1, Layout.CONTIGUOUS: 0.002}))
    assert choice.layout is Layout.CONTIGUOUS
    assert choice.seconds[Layout.CHANNELS_LAST] >= 0.1 > choice.seconds[Layout.CONTIGUOUS]
    assert "memory format contiguous (NCHW), measured per step: channels_last 100 ms" in choice.describe()
    assert "x faster" in choice.describe()


def test_auto_keeps_the_default_when_the_layouts_are_too_close_to_call():
    choice = choose_layout("auto", CPU, sleeping({Layout.CHANNELS_LAST: 0.02, Layout.CONTIGUOUS: 0.02}))
    assert choice.layout is DEFAULT is Layout.CHANNELS_LAST
    assert "channels_last" in choice.describe().split(",")[0]


def test_a_forced_layout_measures_nothing():
    def never(layout):
        raise AssertionError("a forced layout must not be measured")

    for name in ("channels_last", "contiguous"):
        choice = choose_layout(name, CPU, never)
        assert choice.layout is Layout(name) and choice.seconds == {}
        assert choice.describe() == f"memory format {Layout(name).label} (as asked)"


def test_every_input_follows_the_weights_layout_and_the_results_agree():
    torch.manual_seed(0)
    model = CatsDogsCNN().eval()
    x = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)  # as preprocess.normalize gives
    seen = []
    model.blocks[0][0].register_forward_hook(lambda module, args, output: seen.append(
        (args[0].is_contiguous(), output.is_contiguous())))
    with torch.inference_mode():
        reference = use_layout(model, Layout.CHANNELS_LAST)(x)
        nchw = use_layout(model, Layout.CONTIGUOUS)(x)  # the second layout replaces the first
    assert model.blocks[0][0].weight.is_contiguous()
    assert seen == [(False, False), (True, True)]  # NCHW in, NCHW out: the convolution ran in NCHW
    torch.testing.assert_close(nchw, reference, rtol=1e-4, atol=1e-4)


def test_training_measures_its_layout_and_the_flag_forces_one(tmp_path, capsys):
    data = write_kaggle_folder(tmp_path / "photos", per_class=4)
    common = dict(data=str(data), val_fraction=0.25, epochs=1, batch_size=4, cache=False, device="cpu")
    train(TrainConfig(output=str(tmp_path / "auto"), **common), command="test")
    log = capsys.readouterr().out
    assert "memory format " in log and "measured per step: channels_last" in log and " ms, contiguous " in log

    result = train(TrainConfig(output=str(tmp_path / "nchw"), memory_format="contiguous", **common), command="test")
    assert "memory format contiguous (NCHW) (as asked)" in capsys.readouterr().out
    assert all(p.is_contiguous() for p in result.model.parameters())
    assert not result.model.blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_measuring_the_training_layout_leaves_the_runs_random_stream_as_it_was():
    """With dropout the timed steps draw random numbers: the run must not start from another place in its stream."""
    config = TrainConfig(data="", dropout=0.5, batch_size=2)
    torch.manual_seed(0)
    model = build_model(config)
    before = torch.random.get_rng_state()
    choice = choose_training_layout(config, model, Precision.for_training(CPU), process_batch=2, ranks=Ranks())
    assert set(choice.seconds) == set(Layout)  # measured: the steps ran
    assert torch.equal(torch.random.get_rng_state(), before)


def test_the_classifier_measures_its_one_photo_layout_and_predicts_the_same_in_both(shipped_weights, shared_data):
    photo = sorted((shared_data / "dogs-vs-cats-fullres-sample").glob("*.jpg"))[0]
    auto = Classifier(shipped_weights, device=CPU)
    assert set(auto.layout.seconds) == set(Layout)
    forced = {layout: Classifier(shipped_weights, device=CPU, memory_format=layout.value) for layout in Layout}
    assert [c.layout.layout for c in forced.values()] == list(Layout)
    cl, nchw = (forced[layout].predict([photo])[0].probabilities for layout in Layout)
    assert cl == pytest.approx(nchw, abs=1e-4)
    assert auto.predict([photo])[0].probabilities == pytest.approx(cl, abs=1e-4)


def test_a_onednn_isa_cap_below_bf16_means_fp32_training(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN run as on an AVX2-only CPU: bf16 would be emulated there, so no autocast
    (this is how the README's AVX2-only rows are emulated on an AVX512-BF16 CPU)."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_has_native_bf16()
    assert Precision.for_training(CPU).dtype == torch.float32
    assert "oneDNN capped at AVX2, fp32" in describe_device(CPU)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert "capped" not in describe_device(CPU)
    assert cpu_has_native_bf16() == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_cudnn_times_its_kernels_for_every_consumer_not_only_training():
    """The app's Classifier and evaluate never call train(); cuDNN's untimed bf16 pick halved batched predictions on
    an H100 (README), so the device module turns timing on for whoever imports it."""
    import subprocess
    import sys

    code = "import torch, catsdogs.inference; print(torch.backends.cudnn.benchmark)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"
