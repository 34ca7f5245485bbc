"""The documented CNN: the exact layer table published with 92.04% on Kaggle's Dogs vs. Cats.

Five blocks of unpadded 3x3 convolutions and 2x2 max-pooling, then two 512-unit
fully connected layers (785,376 parameters, ~2.36 G multiply-adds at 224x224).
The published table stops at a 512-unit ReLU, which cannot give class
probabilities, so one Linear(512 -> classes) head is added: 786,402 parameters
for two classes.

The constructor's arguments are the model's config: PyTorchModelHubMixin writes
them to `config.json` beside the weights, so class names, input size and
normalisation travel with the weights to every consumer.
"""

import math
from pathlib import Path

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from huggingface_hub.repocard_data import EvalResult
from torch import nn

from catsdogs.device import Precision
from catsdogs.preprocess import centre_crop, normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224  # the layer table's 800 flattened features hold only for 224x224 inputs
# Test-time augmentation (config.json's tta) -> the zooms each photo is seen at, each with its mirror image but for
# "none": the photo alone; "mirror": it and its mirror image; "mirror-zoom": those, and both zoomed in 5% further
# (airbench's multi-crop TTA, as scales: the network has no padding to shift photos by).
TTA_ZOOMS = {"none": (1.0,), "mirror": (1.0,), "mirror-zoom": (1.0, 0.95)}
TTA_MODES = tuple(TTA_ZOOMS)

MODEL_CARD_TEMPLATE = (Path(__file__).parent / "model_card.md").read_text()
# The card template's last line: what a card holds below it is its owner's, and every rewrite of the card keeps it.
NOTES_MARK = "<!-- Notes of your own go below this line: the commands that write this card again keep them. -->"


def own_notes(card: str) -> str:
    """What a model card holds below NOTES_MARK, as written ('' for a card without the mark)."""
    return card.partition(NOTES_MARK)[2]


def with_notes(card: str, notes: str) -> str:
    """A card rendered from the template (ending with NOTES_MARK) with `notes` below its mark."""
    return card.partition(NOTES_MARK)[0] + NOTES_MARK + notes


def check_crop_pct(crop_pct: object, name: str = "crop_pct") -> None:
    """Raise ValueError unless `crop_pct` (the centred share of a photo the network sees) is above 0 and at most 1."""
    if not (isinstance(crop_pct, int | float) and not isinstance(crop_pct, bool) and 0 < crop_pct <= 1):
        raise ValueError(f"{name} must be a number above 0 and at most 1 (1: the whole photo), not {crop_pct!r}")


class CatsDogsCNN(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="catsdogs",
    tags=["image-classification", "pytorch", "cats-vs-dogs", "safetensors"],
    license="mit",
    pipeline_tag="image-classification",
    model_card_template=MODEL_CARD_TEMPLATE,
):
    def __init__(
        self,
        class_names: tuple[str, ...] = ("cat", "dog"),
        image_size: int = INPUT_SIZE,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        dropout: float = 0.0,
        temperature: float = 1.0,
        tta: str = "none",
        crop_pct: float = 1.0,
    ) -> None:
        super().__init__()
        if image_size != INPUT_SIZE:
            raise ValueError(f"the documented layer table needs {INPUT_SIZE}x{INPUT_SIZE} inputs, not {image_size}")
        if not (isinstance(temperature, int | float) and not isinstance(temperature, bool)
                and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a number above zero, not {temperature!r}")
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, not {tta!r}")
        check_crop_pct(crop_pct)
        self.tta = tta  # how catsdogs.inference.predict_logits runs these weights; config.json carries it
        self.crop_pct = float(crop_pct)  # the centred share of each photo the network sees (`network_input`)
        self.temperature = float(temperature)  # logits / temperature -> calibrated probabilities (catsdogs.calibrate)
        self.class_names = list(class_names)
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.blocks = nn.Sequential(
            nn.Sequential(  # 3x224x224 -> 64x110x110
                nn.Conv2d(3, 64, 3), nn.ReLU(inplace=True),
                nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ),
            nn.Sequential(nn.Conv2d(64, 64, 3), nn.MaxPool2d(2)),  # -> 64x54x54; no ReLU, as published
            nn.Sequential(nn.Conv2d(64, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)),  # -> 32x26x26
            nn.Sequential(nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)),  # -> 32x12x12
            nn.Sequential(nn.Conv2d(32, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)),  # -> 32x5x5
        )
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 5 * 5, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.head = nn.Linear(512, len(self.class_names))

    def forward(self, x: torch.Tensor, with_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (N, 3, 224, 224) -> class logits (N, classes); with `with_features`, also the
        penultimate 512-unit ReLU's activations (N, 512)."""
        features = self.fc(self.blocks(x))
        logits = self.head(features)
        return (logits, features) if with_features else logits

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images -> (class logits, the penultimate activations) of one pass, through the model's call
        so that hooks on the model still apply (the memory layout's). No hook of its own: the app runs one model
        in several threads at once, and a hook on a shared module would catch every thread's activations."""
        return self(x, with_features=True)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> class probabilities, calibrated by the weights' temperature: the one way every consumer
        (the app, the API, evaluate, the benchmarks) turns logits into the percentages people read."""
        return (logits.float() / self.temperature).softmax(dim=1)

    @classmethod
    def _load_as_safetensor(cls, model, model_file, map_location, strict):
        # The mixin defaults to strict=False; weights that don't match the layer table must fail, not half-load.
        return super()._load_as_safetensor(model, model_file, map_location, strict=True)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The mixin's card, plus the validation accuracy as structured eval results. Its preprocessing is that of
        these weights' config.json (the crop they predict with, whatever training ran with)."""
        card = super().generate_model_card(*args, **{"crop_pct": self.crop_pct, **kwargs})
        card.data.model_name = kwargs.get("model_name", "catsdogs")
        if kwargs.get("datasets"):  # a Hub dataset: the model page links to it
            card.data.datasets = kwargs["datasets"]
        if kwargs.get("base_model"):  # fine-tuned from a Hub model (--init-from): the Hub links the two
            card.data.base_model = kwargs["base_model"]
        metrics = {"accuracy": kwargs.get("val_accuracy")}
        if kwargs.get("calibration"):  # the expected calibration error, beside the accuracy it qualifies
            metrics["expected_calibration_error"] = round(kwargs["calibration"]["ece_after"], 4)
        if kwargs.get("val_accuracy") is not None:
            card.data.eval_results = [
                EvalResult(
                    task_type="image-classification",
                    dataset_type=kwargs.get("dataset_type", "imagefolder"),
                    dataset_name=kwargs.get("dataset_name", "Dogs vs. Cats"),
                    dataset_split=kwargs.get("dataset_split", "validation"),
                    dataset_revision=kwargs.get("dataset_revision"),
                    metric_type=metric,
                    metric_value=value,
                )
                for metric, value in metrics.items()
            ]
        return card


def scoring_batch(device: torch.device) -> int:
    """Images per forward pass when scoring many photos (validation, evaluation, the fits of the temperature and the
    not-a-pet score): 256 on a GPU; 32 on a CPU, where a bigger batch is barely faster and holds several times the
    activations in memory (docs/performance.md)."""
    return 256 if device.type == "cuda" else 32


def network_input(model: CatsDogsCNN, images: torch.Tensor, zoom: float = 1.0) -> torch.Tensor:
    """uint8 photos (N, 3, S, S) -> what the network takes when it predicts: normalised, and the centred crop of
    config.json's `crop_pct`, zoomed in further by `zoom` (the one place the crop is applied: predictions and the
    Grad-CAM heatmap)."""
    return centre_crop(normalize(images, model.mean, model.std), model.crop_pct * zoom)


def tta_views(model: CatsDogsCNN, images: torch.Tensor) -> torch.Tensor:
    """uint8 photos (N, 3, S, S) -> every view of them that the weights' test-time augmentation (config.json's tta)
    puts through the network, view after view: (views * N, 3, S, S)."""
    views = [network_input(model, images, zoom) for zoom in TTA_ZOOMS[model.tta]]
    if model.tta != "none":
        views += [view.flip(-1) for view in views]  # flip(-1): left-right, the mirror image
    return torch.cat(views)


def views_per_photo(tta: str) -> int:
    """How many images a photo puts through the network under test-time augmentation `tta`."""
    return len(TTA_ZOOMS[tta]) * (1 if tta == "none" else 2)


def averaged_over_views(model: CatsDogsCNN, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 photos (N, 3, S, S) -> float32 logits (N, classes) and penultimate features (N, 512), each the average
    over the photo's test-time augmentation views (`tta_views`), all views in one pass through the network."""
    views = views_per_photo(model.tta)
    logits, features = model.logits_and_features(tta_views(model, images))
    return tuple(output.float().unflatten(0, (views, -1)).mean(dim=0) for output in (logits, features))


@torch.inference_mode()
def predict_logits(model: CatsDogsCNN, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """uint8 photos (N, 3, S, S), on any device -> float32 logits (N, classes) on the model's device (see
    `predict_with_features`)."""
    return predict_with_features(model, images, batch_size)[0]


@torch.inference_mode()
def predict_with_features(model: CatsDogsCNN, images: torch.Tensor,
                          batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 photos (N, 3, S, S), on any device -> float32 logits (N, classes) and penultimate features (N, 512)
    (what catsdogs.notpet scores) on the model's device.

    The one place the weights' test-time augmentation (`model.tta`, from config.json) is applied, so evaluation,
    calibration, validation and the app agree: every view of a photo (`tta_views`: "mirror", it and its
    mirror image) goes through the network in one batch, and their logits (and features) are averaged (logits
    rather than probabilities: averaging them keeps the temperature's calibration); at most `batch_size` images
    (by default `scoring_batch`) go through at once either way.
    """
    device = next(model.parameters()).device
    batch_size = batch_size or scoring_batch(device)
    was_training = model.training
    model.eval()
    logits, features = [], []
    with Precision.for_inference(device).autocast():
        for batch in images.split(max(1, batch_size // views_per_photo(model.tta))):
            batch_logits, batch_features = averaged_over_views(model, batch.to(device, non_blocking=True))
            logits.append(batch_logits)
            features.append(batch_features)
    model.train(was_training)
    if not logits:
        return (torch.empty((0, len(model.class_names)), device=device),
                torch.empty((0, model.head.in_features), device=device))
    return torch.cat(logits), torch.cat(features)
