"""Probabilities that mean what they say: one temperature fitted on validation photos, and how honest it makes them.

    python -m catsdogs.calibrate --data ~/dogs-vs-cats/train --split validation    # the shipped weights/
    python -m catsdogs.calibrate --model runs/catsdogs --data ~/other-pet-photos --split all

A network trained with label smoothing is under-confident: its "87% dog" is right more often than 87 times in
100. Dividing the logits by one temperature T (below 1 sharpens, above 1 softens) fixes most of that without
changing any decision (Guo et al., "On Calibration of Modern Neural Networks", 2017). T is fitted by minimising
the negative log likelihood of the validation photos, and travels in the weights' config.json.
"""

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from catsdogs import plots
from catsdogs.data import DataError
from catsdogs.hub import SHIPPED_WEIGHTS, HubError, card_details, save_outputs
from catsdogs.model import CatsDogsCNN

BINS = 15  # the usual choice for the expected calibration error, as in Guo et al.
MIN_PHOTOS = 200  # fewer, and a temperature fits the photos' noise (a few photos all right: T -> 0)
BOUNDS = (0.2, 5.0)  # beyond these the fit is following a degenerate set of photos, not the network


@dataclass
class Calibration:
    """A fitted temperature and what it did to the photos it was fitted on."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    photos: int
    bins_before: list[tuple[float, float, int]]  # reliability(): the diagram without the temperature
    bins_after: list[tuple[float, float, int]]

    def summary(self) -> dict:
        """For metrics.json and the model card."""
        return {"temperature": round(self.temperature, 4), "photos": self.photos, "bins": BINS,
                "ece_before": self.ece_before, "ece_after": self.ece_after,
                "nll_before": self.nll_before, "nll_after": self.nll_after}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the negative log likelihood of softmax(logits / T) for `labels`."""
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(*BOUNDS))


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the photos in each."""
    return sum(count * abs(accuracy - confidence)
               for confidence, accuracy, count in reliability(probabilities, labels, bins)) / len(labels)


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, photos) of each non-empty confidence bin: the reliability diagram's bars."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    which = (confidence.double() * bins).long().clamp(max=bins - 1)  # bin i holds [i/bins, (i+1)/bins)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append((confidence[members].double().mean().item(), correct[members].mean().item(),
                         int(members.sum())))
    return rows


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """Fit the temperature on these logits and measure the calibration before and after."""
    return measure(logits, labels, fit_temperature(logits, labels))


def measure(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> Calibration:
    """How honest softmax(logits / temperature) is for `labels`, against the plain softmax."""
    logits = logits.detach().float().cpu()
    labels = labels.cpu()
    before, after = logits.softmax(dim=1), (logits / temperature).softmax(dim=1)
    return Calibration(
        temperature=temperature,
        ece_before=expected_calibration_error(before, labels),
        ece_after=expected_calibration_error(after, labels),
        nll_before=F.cross_entropy(logits, labels).item(),
        nll_after=F.cross_entropy(logits / temperature, labels).item(),
        photos=len(labels),
        bins_before=reliability(before, labels),
        bins_after=reliability(after, labels),
    )


def calibrate_folder(folder: str | Path, data: str | Path, split: str = "validation", progress: bool = True,
                     **split_settings) -> Calibration:
    """Fit the temperature of the weights in `folder` on `split` of `data` and write it beside them: config.json,
    metrics.json ("calibration"), the model card and reliability.png. The weights themselves are not touched."""
    from catsdogs.evaluate import score  # evaluate imports this module for its figures

    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder} is not a weights folder: calibrate a local copy (e.g. `hf download REPO "
                       "--local-dir DIR`), then push it")
    trained_on = json.loads((folder / "metrics.json").read_text()).get("config", {}).get("data") \
        if (folder / "metrics.json").is_file() else None
    if split != "validation" and trained_on and Path(trained_on).resolve() == Path(data).resolve():
        raise DataError(f"{data} holds the photos these weights were trained on: a temperature fitted on them "
                        "would be too confident. Use --split validation, or other photos")
    scores = score(folder, data, split, progress=progress, **split_settings)
    if len(scores.labels) < MIN_PHOTOS:
        raise DataError(f"only {len(scores.labels)} photos in {scores.split['description']}: a temperature needs "
                        f"at least {MIN_PHOTOS} to be fitted honestly")
    result = calibrate(scores.logits, scores.labels)
    metrics = {**scores.metrics, "calibration": {**result.summary(), "data": str(data), **scores.split}}
    config = json.loads((folder / "config.json").read_text())
    model = CatsDogsCNN(**{**config, "temperature": result.temperature})  # its config is what config.json gets
    model.load_state_dict(scores.network.state_dict())
    figure = plots.reliability_diagram(result.bins_before, result.bins_after,
                                       f"{scores.split['description']} (T = {result.temperature:.3f})")
    save_outputs(model, folder, card_details(metrics), metrics, {"reliability.png": figure})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS), help="weights folder (default: the shipped weights/)")
    parser.add_argument("--data", required=True, help="labelled photos the weights did not train on, or the data "
                        "they trained on with --split validation")
    parser.add_argument("--split", choices=("validation", "all"), default="validation",
                        help="validation: re-create train.py's validation split of --data (default); all: every photo")
    args = parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = calibrate_folder(args.model, args.data, args.split)
    except (DataError, HubError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"temperature {result.temperature:.4f} written to {args.model}/config.json; on {result.photos} photos the "
          f"expected calibration error goes from {result.ece_before:.2%} to {result.ece_after:.2%}, the negative log "
          f"likelihood from {result.nll_before:.4f} to {result.nll_after:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
