"""Fit the temperature of existing weights on labelled photos, and write it beside them (`catsdogs.metrics` has the
maths: probabilities that mean what they say).

    python -m catsdogs.calibrate --data ~/dogs-vs-cats/train --split validation    # the shipped weights/
    python -m catsdogs.calibrate --model runs/catsdogs --data ~/other-pet-photos --split all
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

from catsdogs import plots
from catsdogs.checkpoint import WriteError
from catsdogs.data import DataError
from catsdogs.evaluate import score
from catsdogs.hub import SHIPPED_WEIGHTS, HubError
from catsdogs.metrics import MIN_PHOTOS, Calibration, calibrate
from catsdogs.model import CatsDogsCNN
from catsdogs.notpet import CONFIG_KEY as NOT_PET_CONFIG_KEY
from catsdogs.outputs import portable_path, rewrite_card


def calibrate_folder(folder: str | Path, data: str | Path, split: str = "validation", progress: bool = True,
                     **split_settings) -> Calibration:
    """Fit the temperature of the weights in `folder` on `split` of `data` and write it beside them: config.json,
    metrics.json ("calibration"), the model card and reliability.png. The weights themselves are not touched."""
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
    metrics = {**scores.metrics, "calibration": {**result.summary(), "data": portable_path(data), **scores.split}}
    config = json.loads((folder / "config.json").read_text())
    config.pop(NOT_PET_CONFIG_KEY, None)  # written back from the score itself
    model = CatsDogsCNN(**{**config, "temperature": result.temperature})  # its config is what config.json gets
    model.load_state_dict(scores.network.state_dict())
    figure = plots.reliability_diagram(result.bins_before, result.bins_after,
                                       f"{scores.split['description']} (T = {result.temperature:.3f})")
    rewrite_card(folder, model, metrics, {"reliability.png": figure})
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
    except (DataError, HubError, ValueError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"temperature {result.temperature:.4f} written to {args.model}/config.json; on {result.photos} photos the "
          f"expected calibration error goes from {result.ece_before:.2%} to {result.ece_after:.2%}, the negative log "
          f"likelihood from {result.nll_before:.4f} to {result.nll_after:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
