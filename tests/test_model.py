"""The network is the published layer table, exactly."""

import json
import math

import pytest
import torch
from conftest import FULL_SIZE
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from catsdogs import CatsDogsCNN
from catsdogs.inference import Classifier

# Every row of ../shared/seeds/003_*.txt: (layer type, output shape, parameters).
SEED_TABLE = [
    (nn.Conv2d, (64, 222, 222), 1_792), (nn.ReLU, (64, 222, 222), 0),
    (nn.Conv2d, (64, 220, 220), 36_928), (nn.ReLU, (64, 220, 220), 0), (nn.MaxPool2d, (64, 110, 110), 0),
    (nn.Conv2d, (64, 108, 108), 36_928), (nn.MaxPool2d, (64, 54, 54), 0),
    (nn.Conv2d, (32, 52, 52), 18_464), (nn.ReLU, (32, 52, 52), 0), (nn.MaxPool2d, (32, 26, 26), 0),
    (nn.Conv2d, (32, 24, 24), 9_248), (nn.ReLU, (32, 24, 24), 0), (nn.MaxPool2d, (32, 12, 12), 0),
    (nn.Conv2d, (32, 10, 10), 9_248), (nn.ReLU, (32, 10, 10), 0), (nn.MaxPool2d, (32, 5, 5), 0),
    (nn.Linear, (512,), 410_112), (nn.ReLU, (512,), 0),
    (nn.Linear, (512,), 262_656), (nn.ReLU, (512,), 0),
]


def layer_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[type, tuple, int]]:
    rows, hooks = [], []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Linear)):
            params = sum(p.numel() for p in module.parameters())
            hooks.append(module.register_forward_hook(
                lambda m, i, out, params=params: rows.append((type(m), tuple(out.shape[1:]), params))))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return rows


def test_every_layer_of_the_published_table():
    rows = layer_outputs(CatsDogsCNN(), torch.zeros(1, 3, 224, 224))
    assert rows[:-1] == SEED_TABLE
    assert rows[-1] == (nn.Linear, (2,), 1_026)  # the added classifier head


def test_parameter_counts_and_multiply_adds():
    model = CatsDogsCNN()
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    assert total - head == 785_376  # the published table
    assert total == 786_402
    macs = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            macs.append(output[0].numel() * module.in_channels * 3 * 3)
        else:
            macs.append(module.in_features * module.out_features)

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not model.head]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    assert round(sum(macs) / 1e9, 2) == 2.36  # the published table


def test_each_probability_goes_to_its_class_name(tmp_path):
    """With a head whose logits are known (cat 0, dog ln 3, give or take 1e-4), Classifier.predict must answer
    softmax = (1/4, 3/4), under the class names of config.json, in their order."""
    model = CatsDogsCNN()
    with torch.no_grad():
        model.head.weight.mul_(1e-6)  # not zero: weights that answer every photo alike are refused
        model.head.bias.copy_(torch.tensor([0.0, math.log(3)]))
    model.save_pretrained(tmp_path / "cat-dog")
    reordered = CatsDogsCNN(class_names=("dog", "cat"))  # the same weights, the classes named the other way round
    reordered.load_state_dict(model.state_dict())
    reordered.save_pretrained(tmp_path / "dog-cat")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (50, 40), (90, 60, 30)).save(photo)
    cpu = torch.device("cpu")
    assert Classifier(tmp_path / "cat-dog", device=cpu).predict([photo])[0].probabilities == \
        pytest.approx({"cat": 0.25, "dog": 0.75}, abs=1e-4)
    assert Classifier(tmp_path / "dog-cat", device=cpu).predict([photo])[0].probabilities == \
        pytest.approx({"dog": 0.25, "cat": 0.75}, abs=1e-4)


def test_only_the_documented_input_size():
    with pytest.raises(ValueError, match="224"):
        CatsDogsCNN(image_size=256)


def test_config_round_trip_gives_identical_outputs(tmp_path):
    model = CatsDogsCNN(dropout=0.3, temperature=0.75).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"class_names": ["cat", "dog"], "image_size": 224, "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225], "dropout": 0.3, "temperature": 0.75, "tta": "none",
                      "crop_pct": 1.0}
    loaded = CatsDogsCNN.from_pretrained(tmp_path)
    assert (loaded.class_names, loaded.image_size, loaded.mean, loaded.std, loaded.temperature) == (
        ["cat", "dog"], 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.75)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_weights_that_do_not_match_the_table_fail_to_load(tmp_path):
    CatsDogsCNN().save_pretrained(tmp_path)
    state = {k: v for k, v in CatsDogsCNN().state_dict().items() if not k.startswith("head.")}
    save_file(state, tmp_path / "model.safetensors")  # the head is missing
    with pytest.raises(RuntimeError, match="head"):
        CatsDogsCNN.from_pretrained(tmp_path)


def test_mirror_tta_averages_photo_and_mirror_logits_in_one_forward_pass(tmp_path):
    from catsdogs.hub import load_model
    from catsdogs.model import predict_logits

    torch.manual_seed(0)
    plain = CatsDogsCNN().eval()
    plain.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tta": "mirror"}))
    mirrored = load_model(tmp_path)  # the setting travels in config.json
    assert mirrored.tta == "mirror"
    photos = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    batches = []
    mirrored.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    both = predict_logits(mirrored, photos)
    assert batches == [6]  # each photo and its mirror image, in one batch
    expected = (predict_logits(plain, photos) + predict_logits(plain, photos.flip(-1))) / 2
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(both, predict_logits(plain, photos))  # the mirror changed something
    batches.clear()
    predict_logits(mirrored, photos, batch_size=4)
    assert batches == [4, 2]  # batch_size bounds the images per forward pass, mirrors included


def test_mirror_zoom_averages_four_views_in_one_forward_pass(shipped_weights, shared_data):
    from catsdogs.model import network_input, predict_logits, predict_with_features
    from catsdogs.preprocess import load_photo

    plain = CatsDogsCNN(crop_pct=0.95).eval()
    plain.load_state_dict(CatsDogsCNN.from_pretrained(shipped_weights).state_dict())
    zoomed = CatsDogsCNN(crop_pct=0.95, tta="mirror-zoom").eval()
    zoomed.load_state_dict(plain.state_dict())
    photos = torch.stack([load_photo(shared_data / FULL_SIZE / f"{name}.jpg", 224)
                          for name in ("cat.1", "dog.2", "cat.3")])
    batches = []
    zoomed.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    logits, features = predict_with_features(zoomed, photos)
    assert batches == [12]  # each photo's four views, in one batch
    crops = [network_input(plain, photos, zoom) for zoom in (1, 0.95)]  # the second pair: zoomed in 5% further
    with torch.no_grad():
        each = [plain.logits_and_features(view) for crop in crops for view in (crop, crop.flip(-1))]
    torch.testing.assert_close(logits, sum(view[0] for view in each) / 4, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features, sum(view[1] for view in each) / 4, rtol=1e-4, atol=1e-4)
    assert all((view[0] - logits).abs().max() > 1e-2 for view in each)  # four different views, not one four times
    batches.clear()
    predict_logits(zoomed, photos, batch_size=8)
    assert batches == [8, 4]  # batch_size bounds the images per forward pass, every view included


def test_crop_pct_travels_in_config_json_and_the_network_sees_the_centred_crop(tmp_path):
    from catsdogs.hub import load_model
    from catsdogs.model import predict_logits

    torch.manual_seed(0)
    CatsDogsCNN(crop_pct=0.9).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["crop_pct"] == 0.9
    cropped = load_model(tmp_path)
    assert cropped.crop_pct == 0.9
    whole = CatsDogsCNN().eval()
    whole.load_state_dict(cropped.state_dict())
    photos = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    middle = nn.functional.interpolate(photos[..., 11:213, 11:213].float() / 255, size=224, mode="bilinear")
    torch.testing.assert_close(predict_logits(cropped, photos), predict_logits(whole, middle), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(predict_logits(cropped, photos), predict_logits(whole, photos), atol=1e-4)
    for bad in (0, 1.5, True, "0.9", math.nan):
        with pytest.raises(ValueError, match="crop_pct must be a number above 0 and at most 1"):
            CatsDogsCNN(crop_pct=bad)


def test_weights_without_a_tta_setting_load_without_tta(shipped_weights, tmp_path):
    import shutil

    from catsdogs.hub import load_model

    shutil.copytree(shipped_weights, tmp_path / "old")  # as weights written before the setting existed
    config = json.loads((shipped_weights / "config.json").read_text())
    config.pop("tta")
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path / "old").tta == "none"
    assert load_model(shipped_weights).tta == "mirror"
    with pytest.raises(ValueError, match="tta must be one of none, mirror, mirror-zoom, not 'flip'"):
        CatsDogsCNN(tta="flip")
