"""Running the network: photos in, class probabilities and the "not a pet" verdict out, in the precision
catsdogs.device picks for predictions."""

import copy
import ctypes
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from catsdogs.autotune import Layout, LayoutChoice, choose_layout, use_layout
from catsdogs.device import pick_device
from catsdogs.hub import HubError, card_metric, fetch_weights, load_model
from catsdogs.model import CatsDogsCNN, predict_logits, predict_with_features
from catsdogs.notpet import FILE_NAME as NOT_PET_FILE
from catsdogs.notpet import NotPetScore
from catsdogs.preprocess import BAD_IMAGE_ERRORS, PhotoSource, load_photo


NOT_A_PET = "not a cat or a dog"  # the third answer, for a photo the weights' "not a pet" score flags
# Below this top-class (calibrated) probability an answer is "not sure between cat and dog". Measured on the shipped
# weights (docs/demo.md): the highest threshold that puts the note on at most one pet photo in eight.
UNSURE_BELOW = 0.98
PREDICTION_ROUNDS = 10  # timed one-photo forward passes per layout: ~20 of 10-40 ms each, under a second


def choose_prediction_layout(model: CatsDogsCNN, requested: str = "auto") -> LayoutChoice:
    """The layout the app's one-photo path runs fastest in on this machine (`requested` forces one): timed
    predictions of one photo by a copy of the model in each layout."""
    device = next(model.parameters()).device
    photo = torch.zeros((1, 3, model.image_size, model.image_size), dtype=torch.uint8, device=device)

    def step_in(layout: Layout):
        candidate = use_layout(copy.deepcopy(model), layout)
        return lambda: predict_logits(candidate, photo)

    return choose_layout(requested, device, step_in, rounds=PREDICTION_ROUNDS)


def compiled_for_predictions(model: CatsDogsCNN, batch_sizes: Sequence[int]) -> tuple[nn.Module, float | None]:
    """What runs `model`'s predictions (`predict_logits` takes either): on CUDA the model compiled with
    torch.compile, warmed up on blank photos of each of `batch_sizes` (a large one and 1: the second size makes the
    compiler cover every size), its weights still the module's; elsewhere the model itself (on a CPU compiled
    predictions measured no faster, docs/performance.md#compiling-on-a-cpu). Returns it and the seconds the
    warm-up took (None: not compiled)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return model, None
    network = torch.compile(model)
    started = time.perf_counter()
    for batch in batch_sizes:
        predict_logits(network, torch.zeros((batch, 3, model.image_size, model.image_size), dtype=torch.uint8,
                                            device=device))
    torch.cuda.synchronize(device)
    return network, time.perf_counter() - started


# What keep_freed_memory lets glibc keep per heap (each thread that predicts has one): one photo's forward pass
# with mirror TTA (the photo and its mirror image: ~60 MB of activations, the largest 25 MB) with room to spare;
# at 64 MB, enough without TTA, its pages fault back in at every photo.
KEEP_FREED_BYTES = 128 * 2**20
MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum: blocks at least this big are mmapped, and unmapped when freed
PIL_BLOCK_BYTES = 64 * 2**20  # Pillow's image blocks (16 MB by default): made mmap-sized, see keep_freed_memory


def keep_freed_memory(keep_bytes: int = KEEP_FREED_BYTES, heaps: int | None = None) -> None:
    """Ask glibc to keep up to `keep_bytes` of freed memory per heap for reuse rather than hand it back to the
    kernel, and make big decoded photos go back to it at once (process-wide: the app's choice, not the
    Classifier's). With `heaps`, glibc opens at most that many heaps (arenas), e.g. one per prediction slot.

    One forward pass allocates and frees tens of MB of activations; by default glibc returns such blocks and the
    next call page-faults them in again (docs/performance.md has what that costs). Raising the mmap threshold
    keeps those blocks on the heap; Pillow's image blocks are then raised above it, or a big photo's 16 MB
    blocks would stay on the heap too and the process would keep the size of its biggest request (docs/limits.md:
    the memory a server keeps after big requests). Each heap keeps up to `keep_bytes`, and glibc opens up to 8 per
    core as a server's many threads take turns computing: without `heaps`, a server grows by `keep_bytes` per
    heap it opens, round after round of load.
    """
    Image.core.set_block_size(PIL_BLOCK_BYTES)  # what Pillow's PILLOW_BLOCK_SIZE sets
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)  # the largest activation of one photo and its mirror: 25 MB
    libc.mallopt(m_trim_threshold, keep_bytes)
    if heaps:
        libc.mallopt(m_arena_max, heaps)


@dataclass(frozen=True)
class Answer:
    """One photo's answer: each class's calibrated probability and, where the weights carry a "not a pet" score
    (catsdogs.notpet), whether the photo is unlike every training photo."""

    probabilities: dict[str, float]
    not_a_pet: bool | None = None  # None: these weights cannot tell (no score beside them)
    distance: float | None = None  # the score: the distance to the k-th nearest training photo's features

    @property
    def top_class(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def verdict(self) -> str:
        """The answer in words, on every surface: NOT_A_PET, or the most likely class."""
        return NOT_A_PET if self.not_a_pet else self.top_class

    @property
    def unsure(self) -> bool:
        """Called a pet, but near 50/50 between the classes."""
        return not self.not_a_pet and max(self.probabilities.values()) < UNSURE_BELOW


def load_not_pet_score(folder: Path, model: CatsDogsCNN) -> NotPetScore | None:
    """The "not a pet" score beside the weights in `folder`, or None where there is none; HubError where it cannot
    be used with them."""
    if not (folder / NOT_PET_FILE).is_file():
        return None
    try:
        score = NotPetScore.load(folder)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise HubError(f"the {NOT_PET_FILE} in {folder} cannot be read ({type(error).__name__}: {error})") from error
    if (score.tta, score.crop_pct) != (model.tta, model.crop_pct):
        raise HubError(f"the {NOT_PET_FILE} in {folder} was fitted with test-time augmentation {score.tta!r} and "
                       f"crop_pct {score.crop_pct}, and these weights run with {model.tta!r} and {model.crop_pct}: "
                       "fit it again (python -m catsdogs.fit_notpet)")
    if score.bank.shape[1] != model.head.in_features:
        raise HubError(f"the {NOT_PET_FILE} in {folder} holds {score.bank.shape[1]} features per photo, and these "
                       f"weights have {model.head.in_features}: it belongs to other weights")
    return score


def answers_of(model: CatsDogsCNN, not_pet_score: NotPetScore | None, logits: torch.Tensor,
               features: torch.Tensor) -> list[Answer]:
    """The Answers to one pass's logits and penultimate features: the calibrated probabilities and, where there is a
    score, the "not a pet" verdict. The app, the commands and evaluate's account of the demo's answers all come
    through here."""
    probabilities = model.probabilities(logits).tolist()
    if not_pet_score is None:
        return [Answer(dict(zip(model.class_names, row))) for row in probabilities]
    distances = not_pet_score.score(features)
    pets = not_pet_score.within(distances).tolist()
    return [Answer(dict(zip(model.class_names, row)), not pet, distance)
            for row, pet, distance in zip(probabilities, pets, distances.tolist(), strict=True)]


class Classifier:
    """A model loaded once and kept on its device: the app's (and the benchmarks') path from photo to answer, and
    the one place the "not a pet" score (`notpet.safetensors` beside the weights, when there is one) is applied.

    Memory per call is bounded: photos are decoded one at a time (preprocess.MAX_PIXELS) and run through the
    network `chunk` at a time (~25 MB of activations per photo on the CPU).

    `source` is a weights folder or a Hub repo id; the input size, normalisation and class names all come from
    the weights' config.json. Photos are files, file objects or PIL images: the Classifier decodes them all.
    Weights that cannot be fetched, loaded or run (a bad config.json, NaN weights) raise HubError, with the reason.
    """

    chunk = 8  # photos per forward pass: ~190 MB of activations on the CPU (1.5 GB at batch 64)

    def __init__(self, source: str | Path, revision: str | None = None, device: torch.device | None = None,
                 memory_format: str = "auto") -> None:
        self.folder = fetch_weights(source, revision)
        self.source = f"{source}@{revision}" if revision else str(source)
        self.device = device or pick_device()
        self.model = load_model(self.folder).to(self.device)
        score = load_not_pet_score(self.folder, self.model)
        self.not_pet_score = score.to(self.device) if score else None
        self.val_accuracy = card_metric(self.folder, "accuracy")
        self.val_calibration_error = card_metric(self.folder, "expected_calibration_error")
        try:  # the layout, and a warm-up on the device (the first forward is slow)
            self.layout = choose_prediction_layout(self.model, memory_format)  # (describe() says which, and why)
            use_layout(self.model, self.layout.layout)
            self.network, self.compile_seconds = compiled_for_predictions(self.model, (self.chunk, 1))
            self.predict([Image.new("RGB", (self.model.image_size,) * 2)])
        except (RuntimeError, ValueError, TypeError) as error:
            raise HubError(f"the weights in {self.folder} load but cannot run "
                           f"({type(error).__name__}: {error})") from error

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def describe(self) -> str:
        """How the network runs here: its memory layout and whether it is compiled."""
        return f"{self.layout.describe()}; torch.compile: " + (
            "off" if self.compile_seconds is None else f"compiled and warmed up in {self.compile_seconds:.1f} s")

    def predict(self, photos: Sequence[PhotoSource]) -> list[Answer]:
        """Photos -> an Answer each, in forward passes of at most `chunk` photos.

        Raises one of preprocess.BAD_IMAGE_ERRORS for a file that is not a usable photo
        (preprocess.ImageTooLarge for one over preprocess.MAX_PIXELS).
        """
        return self._answers([load_photo(photo, self.model.image_size) for photo in photos])

    def predict_readable(self, photos: Iterable[PhotoSource]) -> list[Answer | Exception]:
        """Like `predict`, but a photo that cannot be used gets its error (one of BAD_IMAGE_ERRORS) instead of
        failing the others. Photos are taken one at a time (`photos` may be a generator) and kept only at the
        network's input size."""
        readable: dict[int, torch.Tensor] = {}
        errors: dict[int, Exception] = {}
        for i, photo in enumerate(photos):
            try:
                readable[i] = load_photo(photo, self.model.image_size)
            except BAD_IMAGE_ERRORS as error:
                errors[i] = error
        results = dict(zip(readable, self._answers(list(readable.values()))))
        return [results[i] if i in results else errors[i] for i in range(len(readable) + len(errors))]

    def _answers(self, images: list[torch.Tensor]) -> list[Answer]:
        if not images:
            return []
        logits, features = predict_with_features(self.network, torch.stack(images), self.chunk)  # one pass
        return answers_of(self.model, self.not_pet_score, logits, features)
