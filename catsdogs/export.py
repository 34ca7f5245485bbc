"""The weights as one ONNX file, for onnxruntime: photos in, the demo's answers out, without PyTorch or this project.

    python -m catsdogs.export --model runs/catsdogs                          # runs/catsdogs/model.onnx, and the card
    python -m catsdogs.export --model you/catsdogs --output catsdogs.onnx    # a Hub repo's weights

The graph takes photos as `catsdogs.preprocess.load_photo` gives them: uint8 RGB, (N, 3, 224, 224), each the whole
photo, EXIF rotation applied, squashed to 224x224 (bilinear). It does the rest as the project does: normalisation,
the centred crop, the views of the test-time augmentation, the temperature. Its outputs are each class's calibrated
probability and, for weights with a "not a pet" score, the score's distance and verdict. The file's metadata names
the classes and the weights it was made from (`hub.weights_fingerprint`): a run that rewrites the weights removes an
ONNX file made from other weights. Each export is checked against PyTorch before it is kept.
"""

import argparse
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from catsdogs.checkpoint import require_room, writing
from catsdogs.hub import (FINGERPRINT_KEY, ONNX_FILE, SHIPPED_WEIGHTS, HubError, fetch_weights, is_local_folder,
                          load_model, probe_photos, read_metrics, weights_fingerprint)
from catsdogs.inference import load_not_pet_score
from catsdogs.model import CatsDogsCNN, averaged_over_views, predict_with_features
from catsdogs.notpet import NotPetScore
from catsdogs.outputs import rewrite_card

INPUT = "photos"
OUTPUTS = ("probabilities", "not_a_pet_distance", "not_a_pet")  # the last two for weights with a score
OPSET = 18
# The most an output of onnxruntime may differ from PyTorch's on the check's pictures (float32 on the CPU both).
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The graph could not be exported, or does not answer as the weights do."""


class AnswerGraph(nn.Module):
    """What the demo computes from a batch of photos at the network's input size, as one module to export."""

    def __init__(self, model: CatsDogsCNN, not_pet_score: NotPetScore | None) -> None:
        super().__init__()
        self.model = model
        self.not_pet_score = not_pet_score

    def forward(self, photos: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        logits, features = averaged_over_views(self.model, photos)
        probabilities = self.model.probabilities(logits)
        if self.not_pet_score is None:
            return probabilities
        distance = self.not_pet_score.score(features)
        return probabilities, distance, ~self.not_pet_score.within(distance)


def metadata(model: CatsDogsCNN, not_pet_score: NotPetScore | None) -> dict[str, str]:
    """What the file says about itself: the classes in output order, its input, and the weights it holds."""
    entries = {"class_names": json.dumps(model.class_names),
               "input": f"{INPUT}: uint8 RGB (N, 3, {model.image_size}, {model.image_size}), each the whole photo, "
                        "EXIF rotation applied, resized to that square without keeping its aspect ratio",
               FINGERPRINT_KEY: weights_fingerprint(model, not_pet_score)}
    if not_pet_score is not None:
        entries["not_a_pet_threshold"] = repr(not_pet_score.threshold)
    return entries


def check(path: Path, model: CatsDogsCNN, not_pet_score: NotPetScore | None) -> float:
    """The largest difference between onnxruntime's outputs and PyTorch's on a black, a white, a gradient and two
    noise pictures (also a batch size the export never saw); ExportError above TOLERANCE."""
    import onnxruntime

    noise = torch.randint(0, 256, (2, 3, model.image_size, model.image_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    photos = torch.cat([probe_photos(model.image_size), noise])
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    answered = session.run(None, {INPUT: photos.numpy()})
    logits, features = predict_with_features(model, photos)
    expected = [model.probabilities(logits)]
    if not_pet_score is not None:
        expected.append(not_pet_score.score(features))
    difference = max(float(np.abs(got - want.cpu().numpy()).max()) for got, want in zip(answered, expected))
    if not difference <= TOLERANCE:
        raise ExportError(f"the exported graph's answers differ from the weights' by {difference:.1e} "
                          f"(at most {TOLERANCE:.0e} allowed): the file was not kept")
    return difference


def export_onnx(model: CatsDogsCNN, not_pet_score: NotPetScore | None, path: Path) -> float:
    """Write the weights' AnswerGraph to `path` (replacing it only once the new file passes `check`, whose
    difference it returns). WriteError when the disk refuses, ExportError when the export fails."""
    import onnx

    model = model.cpu().eval()
    not_pet_score = not_pet_score.to("cpu") if not_pet_score else None
    # The bank as notpet.safetensors holds it (float16: half the file), its values unchanged.
    graph = AnswerGraph(model, replace(not_pet_score, bank=not_pet_score.bank.half()) if not_pet_score else None)
    graph.eval()
    photos = torch.zeros((2, 3, model.image_size, model.image_size), dtype=torch.uint8)
    outputs = list(OUTPUTS if not_pet_score else OUTPUTS[:1])
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(f"the ONNX file {path}"), tempfile.TemporaryDirectory(dir=path.parent, prefix=".exporting-") as tmp:
        bank_bytes = 2 * not_pet_score.bank.numel() if not_pet_score else 0  # float16
        weights_bytes = sum(tensor.nbytes for tensor in model.state_dict().values())
        require_room(path.parent, weights_bytes + bank_bytes, f"the ONNX file {path}")
        exported = Path(tmp) / ONNX_FILE
        try:
            torch.onnx.export(graph, (photos,), exported, input_names=[INPUT], output_names=outputs,
                              dynamic_shapes=({0: torch.export.Dim("photos")},), opset_version=OPSET, dynamo=True,
                              external_data=False, verbose=False)
        except Exception as error:  # the exporter raises its own error types
            raise ExportError(f"torch.onnx.export failed ({type(error).__name__}: {error})") from error
        proto = onnx.load(exported)
        onnx.helper.set_model_props(proto, metadata(model, not_pet_score))
        onnx.save(proto, exported)
        difference = check(exported, model, not_pet_score)
        exported.chmod(0o644)
        os.replace(exported, path)
    return difference


def export_folder(folder: Path, path: Path | None = None) -> tuple[Path, float]:
    """Export the weights in `folder` (with their "not a pet" score) to `path`, by default the folder's own
    ONNX_FILE, whose card then says so. Returns the file and `check`'s difference."""
    model = load_model(folder)
    not_pet_score = load_not_pet_score(folder, model)
    path = path or folder / ONNX_FILE
    difference = export_onnx(model, not_pet_score, path)
    if path.resolve() == (folder / ONNX_FILE).resolve() and (folder / "metrics.json").is_file():  # train.py's card
        rewrite_card(folder, model, read_metrics(folder))
    return path, difference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS),
                        help="weights folder or Hub repo id (default: the shipped weights/)")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo (default: main)")
    parser.add_argument("--output", type=Path, help=f"the file to write (default: {ONNX_FILE} in a weights folder; "
                        f"./{ONNX_FILE} for a Hub repo)")
    args = parser.parse_args(argv)
    try:
        folder = fetch_weights(args.model, args.revision)
        output = args.output or (None if is_local_folder(args.model) else Path(ONNX_FILE))
        path, difference = export_folder(folder, output)
    except (HubError, ExportError, OSError) as error:  # a WriteError says what could not be written
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); onnxruntime's answers match PyTorch's to within "
          f"{difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
