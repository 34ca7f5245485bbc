"""Running the network: photos in, class probabilities out, with the precision each device does best."""

import ctypes
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import torch

from catsdogs.hub import card_accuracy, fetch_weights, load_model
from catsdogs.model import CatsDogsCNN
from catsdogs.preprocess import load_photo, normalize


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where oneDNN runs bf16 convolutions ~2x fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, cpu_bf16: bool = False) -> AbstractContextManager:
    """bf16 (fp16 on GPUs without bf16) mixed precision on CUDA.

    On the CPU, fp32 unless `cpu_bf16` is asked for and the CPU has bf16 instructions: training asks (2.1x the
    images/s on AVX512-BF16), predictions don't, so a model scores the same on every CPU.
    """
    if device.type != "cuda":
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16 and cpu_has_native_bf16())
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.inference_mode()
def predict_logits(model: CatsDogsCNN, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 photos (N, 3, S, S), on any device -> float32 logits (N, classes) on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    with autocast(device):
        for batch in images.split(batch_size):
            outputs.append(model(normalize(batch.to(device, non_blocking=True), model.mean, model.std)).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty((0, len(model.class_names)), device=device)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse rather than hand it back to the kernel.

    One forward pass allocates and frees ~30 MB of activations; by default glibc returns such blocks and the
    next call page-faults them in again: one photo's prediction took 2x the forward pass alone (1.24x with this).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum; the largest activation at batch 1 is 12.6 MB
    libc.mallopt(m_trim_threshold, 2**30)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Classifier:
    """A model loaded once and kept on its device: the app's (and the benchmarks') path from photo to probabilities.

    `source` is a weights folder or a Hub repo id; the input size, normalisation and class names all come from
    the weights' config.json.
    """

    def __init__(self, source: str | Path, revision: str | None = None, device: torch.device | None = None) -> None:
        keep_freed_memory()
        self.folder = fetch_weights(source, revision)
        self.source = f"{source}@{revision}" if revision else str(source)
        self.device = device or best_device()
        self.model = load_model(self.folder).to(self.device, memory_format=torch.channels_last)
        self.val_accuracy = card_accuracy(self.folder)
        self.predict([torch.zeros(3, self.model.image_size, self.model.image_size, dtype=torch.uint8)])  # warm-up
        self.last_seconds: float | None = None  # of the last real prediction

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def predict(self, photos: list[str | Path | BinaryIO | torch.Tensor]) -> list[dict[str, float]]:
        """Photo files (or already decoded uint8 tensors) -> {class name: probability} per photo.

        Raises one of preprocess.BAD_IMAGE_ERRORS for a file that is not a usable photo.
        """
        started = time.perf_counter()
        size = self.model.image_size
        images = torch.stack([p if isinstance(p, torch.Tensor) else load_photo(p, size) for p in photos])
        probabilities = predict_logits(self.model, images).softmax(dim=1).tolist()
        self.last_seconds = time.perf_counter() - started
        return [dict(zip(self.class_names, row)) for row in probabilities]
