"""Running the network: photos in, class probabilities out, in the precision catsdogs.device picks for predictions."""

import ctypes
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from catsdogs.device import Precision, pick_device
from catsdogs.hub import card_metric, fetch_weights, load_model
from catsdogs.model import CatsDogsCNN
from catsdogs.preprocess import BAD_IMAGE_ERRORS, PhotoSource, load_photo, normalize


@torch.inference_mode()
def predict_logits(model: CatsDogsCNN, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 photos (N, 3, S, S), on any device -> float32 logits (N, classes) on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    with Precision.for_inference(device).autocast():
        for batch in images.split(batch_size):
            outputs.append(model(normalize(batch.to(device, non_blocking=True), model.mean, model.std)).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty((0, len(model.class_names)), device=device)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse rather than hand it back to the kernel (process-wide: the app's
    choice, not the Classifier's).

    One forward pass allocates and frees tens of MB of activations; by default glibc returns such blocks and the
    next call page-faults them in again (README, "Performance", for what that costs).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum; the largest activation at batch 1 is 12.6 MB
    libc.mallopt(m_trim_threshold, 2**30)


class Classifier:
    """A model loaded once and kept on its device: the app's (and the benchmarks') path from photo to probabilities.

    `source` is a weights folder or a Hub repo id; the input size, normalisation and class names all come from
    the weights' config.json. Photos are files, file objects or PIL images: the Classifier decodes them all.
    """

    def __init__(self, source: str | Path, revision: str | None = None, device: torch.device | None = None) -> None:
        self.folder = fetch_weights(source, revision)
        self.source = f"{source}@{revision}" if revision else str(source)
        self.device = device or pick_device()
        self.model = load_model(self.folder).to(self.device, memory_format=torch.channels_last)
        self.val_accuracy = card_metric(self.folder, "accuracy")
        self.val_calibration_error = card_metric(self.folder, "expected_calibration_error")
        self.predict([Image.new("RGB", (self.model.image_size,) * 2)])  # warm-up: the first forward is slow
        self.last_seconds: float | None = None  # of the last real prediction

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def predict(self, photos: Sequence[PhotoSource]) -> list[dict[str, float]]:
        """Photos -> {class name: probability} each, in one forward pass.

        Raises one of preprocess.BAD_IMAGE_ERRORS for a file that is not a usable photo.
        """
        started = time.perf_counter()
        results = self._probabilities([load_photo(photo, self.model.image_size) for photo in photos])
        self.last_seconds = time.perf_counter() - started
        return results

    def predict_readable(self, photos: Sequence[PhotoSource]) -> list[dict[str, float] | None]:
        """Like `predict`, but an unreadable photo gets None instead of failing the others."""
        started = time.perf_counter()
        readable: dict[int, torch.Tensor] = {}
        for i, photo in enumerate(photos):
            try:
                readable[i] = load_photo(photo, self.model.image_size)
            except BAD_IMAGE_ERRORS:
                continue
        results = dict(zip(readable, self._probabilities(list(readable.values()))))
        self.last_seconds = time.perf_counter() - started
        return [results.get(i) for i in range(len(photos))]

    def _probabilities(self, images: list[torch.Tensor]) -> list[dict[str, float]]:
        if not images:
            return []
        probabilities = self.model.probabilities(predict_logits(self.model, torch.stack(images))).tolist()
        return [dict(zip(self.class_names, row)) for row in probabilities]
