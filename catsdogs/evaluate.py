"""Score trained weights on labelled photos: accuracy, per-class precision and recall, confusion matrix, worst mistakes.

    python -m catsdogs.evaluate --data ~/dogs-vs-cats/train --split validation   # the shipped weights/
    python -m catsdogs.evaluate --model you/catsdogs --data ~/my-pets --json     # a Hub repo, every photo
    python -m catsdogs.evaluate --model runs/a --data ~/dogs-vs-cats/train --split training --mistakes 20
    python -m catsdogs.evaluate --data hf://datasets/microsoft/cats_vs_dogs --data-revision SHA --split validation
    python -m catsdogs.evaluate --data ~/dogs-vs-cats/train --split validation --not-pets ~/not-pets   # + neither

`--split validation` re-creates the exact split train.py validated on (its --val-fraction and --seed are read
from the weights' metrics.json), and the photos are decoded and scored by the same loader training validates
with (`catsdogs.loader.PhotoLoader`), so the accuracy is the one training reported for the weights.
"""

import argparse
import contextlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from catsdogs import plots
from catsdogs.checkpoint import WriteError
from catsdogs.config import recorded_split
from catsdogs.data import CLASS_NAMES, DataError, Found, Photos, choose_split
from catsdogs.device import DeviceError, Precision, pick_device
from catsdogs.hub import SHIPPED_WEIGHTS, HubError, fetch_weights, is_local_folder, load_model, read_metrics
from catsdogs.inference import UNSURE_BELOW, answers_of, compiled_for_predictions, load_not_pet_score
from catsdogs.loader import PhotoLoader, find
from catsdogs.metrics import BINS, auroc, confusion_matrix, measure, per_class
from catsdogs.model import CatsDogsCNN, predict_with_features, scoring_batch
from catsdogs.notpet import FILE_NAME as NOT_PET_FILE
from catsdogs.outputs import portable_command, portable_path, rewrite_card
from catsdogs.preprocess import BAD_IMAGE_ERRORS, image_files, load_photo

SPLITS = ("all", "validation", "training")
PATH_FLAGS = ("--model", "--data", "--cache-dir", "--not-pets", "--reliability")  # made portable where recorded


class IncompatibleModel(ValueError):
    """The weights load, but classify other classes than the photos are labelled with."""


def select_photos(found: Found, split: str, val_fraction: float, seed: int) -> tuple[Photos, dict]:
    """The photos of `split`, as data.choose_split chooses them for training, and a record of how they were chosen."""
    if split == "all":
        if found.layout_val is None:
            return found.photos, {"name": split, "description": f"all {len(found.photos)} photos"}
        everything = found.everything()
        description = (f"all photos (train/ {len(found.photos)} + the validation folder {len(found.layout_val)}) "
                       f"-> {len(everything)} photos")
        return everything, {"name": split, "description": description}
    chosen = choose_split(found, val_fraction, seed)
    photos = chosen.val if split == "validation" else chosen.train
    if not chosen.generated:  # train/ beside a labelled val/ or test/: that folder is the validation split
        where = "the labelled test/validation folder beside train/" if split == "validation" else "the train/ folder"
        return photos, {"name": split, "description": f"{split} split: {where} -> {len(photos)} photos"}
    share = val_fraction if split == "validation" else 1 - val_fraction
    description = (f"{split} split: deterministic stratified {share:.0%} (seed {seed}) of "
                   f"{len(chosen.train) + len(chosen.val)} photos -> {len(photos)}")
    return photos, {"name": split, "description": description, "val_fraction": val_fraction, "seed": seed}


@dataclass
class Scores:
    """Weights scored on labelled photos: what the report and the calibration are computed from."""

    network: CatsDogsCNN
    folder: Path
    metrics: dict  # what training recorded beside the weights (metrics.json)
    split: dict  # which photos, and how they were chosen
    data: str  # where they are: what --data named, a Hub dataset with the commit it was read at
    warnings: list[str]
    logits: torch.Tensor  # (N, classes), float32, on the CPU
    features: torch.Tensor  # (N, 512): the penultimate features of the same pass, on the CPU
    labels: torch.Tensor
    paths: list[Path]  # of the photos scored, in order
    skipped: list[tuple[Path, str]]
    device: torch.device
    compile_seconds: float | None  # how long compiling the predictions took (CUDA); None: not compiled


def score(model: str | Path, data: str | Path, split: str = "all", revision: str | None = None,
          val_fraction: float | None = None, seed: int | None = None,
          workers: int = min(8, os.cpu_count() or 1), progress: bool = True, cache: bool = True,
          cache_dir: str | Path | None = None, data_revision: str | None = None, data_split: str = "train",
          device: str = "auto") -> Scores:
    """The logits of the weights in `model` (folder or Hub repo id) for the photos of `split` of `data` (a local
    folder or CSV, or a Hub dataset at `data_revision`, its split `data_split`), on `device` (`pick_device`).

    Split settings not given are those the weights were trained with (metrics.json), so a split is re-created
    without the user having to remember them. The photos come from the photo cache training uses
    (`catsdogs.cache`) unless `cache` is False.
    """
    run_on = pick_device(device)  # before anything is fetched or decoded
    folder = fetch_weights(model, revision)
    network = load_model(folder)
    if list(network.class_names) != list(CLASS_NAMES):
        raise IncompatibleModel(f"{model} classifies {network.class_names}, not {list(CLASS_NAMES)}")
    metrics = read_metrics(folder)
    trained_with = metrics.get("config", {})
    recorded_fraction, recorded_seed = recorded_split(trained_with)
    val_fraction = recorded_fraction if val_fraction is None else val_fraction
    seed = recorded_seed if seed is None else seed
    source = find(data, data_revision, data_split)
    photos, split_info = select_photos(source, split, val_fraction, seed)
    if not len(photos):
        raise DataError(f"no photos to evaluate: {split_info['description']}")
    warnings = []
    expected = metrics.get("val_counts" if split == "validation" else "train_counts") if split != "all" else None
    if expected and expected != photos.counts():  # e.g. other data, or a model validated on --val-data
        warnings.append(f"these {split} photos {photos.counts()} are not the {expected} that {model} was trained "
                        f"with (its --data {trained_with.get('data')}, --val-data {trained_with.get('val_data')}); "
                        "the accuracy will differ from the one training reported")

    with contextlib.redirect_stdout(sys.stderr):  # where the photos came from: a note, not the report
        loaded = PhotoLoader.load(photos, network.image_size, run_on, split, workers, progress, cache, cache_dir)
    network = network.to(run_on, memory_format=torch.channels_last)  # as trained and validated
    predictor, compile_seconds = compiled_for_predictions(network, (scoring_batch(run_on), 1))
    logits, features = (outputs.cpu() for outputs in loaded.logits_and_features(predictor, progress))
    labels = loaded.labels.cpu()
    unreadable = {str(path) for path, _ in loaded.skipped}  # str: read back from the cache, a skipped photo is a Path
    return Scores(network, folder, metrics, split_info, source.named, warnings, logits, features, labels,
                  [path for path in photos.paths if str(path) not in unreadable], loaded.skipped, run_on,
                  compile_seconds)


def evaluate(model: str | Path, data: str | Path, split: str = "all", revision: str | None = None,
             val_fraction: float | None = None, seed: int | None = None, mistakes: int = 10,
             workers: int = min(8, os.cpu_count() or 1), progress: bool = True,
             reliability_png: str | Path | None = None, cache: bool = True,
             cache_dir: str | Path | None = None, data_revision: str | None = None, data_split: str = "train",
             not_pets: str | Path | None = None, device: str = "auto") -> dict:
    """Score the weights on `split` of `data` (see `score`); the report is plain JSON data.

    With `reliability_png`, the reliability diagram (with and without the weights' temperature) is written there.
    With `not_pets`, a folder of pictures of neither cats nor dogs, the report also says how the weights' "not a pet"
    score tells them from the evaluated photos (`not_pet_report`).
    """
    scores = score(model, data, split, revision, val_fraction, seed, workers, progress, cache, cache_dir,
                   data_revision, data_split, device)
    probabilities = scores.network.probabilities(scores.logits)  # calibrated, as the app shows them
    labels = scores.labels
    predicted, confidence = probabilities.argmax(dim=1), probabilities.max(dim=1).values
    confusion = confusion_matrix(labels, predicted, len(CLASS_NAMES))
    correct = confusion.trace().item()
    calibration = measure(scores.logits, labels, scores.network.temperature)  # the weights' own temperature
    if reliability_png:
        plots.reliability_diagram(calibration.bins_before, calibration.bins_after,
                                  f"{scores.split['description']} (T = {calibration.temperature:.3f})"
                                  ).savefig(reliability_png, dpi=110, bbox_inches="tight")
    labels, predicted, confidence = labels.tolist(), predicted.tolist(), confidence.tolist()
    wrong = [i for i, (y, p) in enumerate(zip(labels, predicted, strict=True)) if y != p]
    worst = sorted(wrong, key=lambda i: confidence[i], reverse=True)[:mistakes]
    return {
        "model": f"{model}@{revision}" if revision else str(model), "weights": str(scores.folder),
        "data": scores.data,
        "split": scores.split, "device": str(scores.device), "compile_seconds": scores.compile_seconds,
        "n": len(labels), "correct": correct,
        "accuracy": correct / len(labels), "trained_val_accuracy": scores.metrics.get("best_val_accuracy"),
        "class_names": list(CLASS_NAMES), "per_class": per_class(confusion, CLASS_NAMES),
        "confusion_matrix": confusion.tolist(),
        "calibration": {"temperature": calibration.temperature, "bins": BINS, "ece": calibration.ece_after,
                        "nll": calibration.nll_after, "ece_without_temperature": calibration.ece_before,
                        "nll_without_temperature": calibration.nll_before}, "mistakes": [
            {"path": str(scores.paths[i]), "true": CLASS_NAMES[labels[i]], "predicted": CLASS_NAMES[predicted[i]],
             "probability": confidence[i]} for i in worst],
        "skipped": [{"path": str(path), "reason": reason} for path, reason in scores.skipped],
        "warnings": scores.warnings,
        "as_the_demo_answers": as_the_demo_answers(scores, labels),
        **({"not_pets": not_pet_report(scores, Path(not_pets))} if not_pets else {}),
    }


def as_the_demo_answers(scores: Scores, labels: list[int]) -> dict:
    """What the demo answers for these labelled photos (`inference.answers_of`): how many it calls neither, how
    many of the rest it is not sure about (top probability under UNSURE_BELOW), and how many of each have the right
    top class."""
    not_pet_score = load_not_pet_score(scores.folder, scores.network)
    answers = answers_of(scores.network, not_pet_score, scores.logits, scores.features)
    groups = {"sure": [], "not_sure": [], "not_a_pet": []}
    for answer, label in zip(answers, labels, strict=True):
        group = "not_a_pet" if answer.not_a_pet else "not_sure" if answer.unsure else "sure"
        groups[group].append(answer.top_class == CLASS_NAMES[label])
    return {"not_sure_below": UNSURE_BELOW, "tells_not_pets": not_pet_score is not None,
            **{group: {"photos": len(right), "right": sum(right)} for group, right in groups.items()}}


def not_pet_report(scores: Scores, folder: Path) -> dict:
    """How the weights' "not a pet" score does on the pictures in `folder` (none of them a cat or a dog) against
    the evaluated photos: the share of each called "not a cat or a dog", and the AUROC of the score."""
    not_pet_score = load_not_pet_score(scores.folder, scores.network)
    if not_pet_score is None:
        raise HubError(f"the weights in {scores.folder} have no {NOT_PET_FILE}: fit one with "
                       "python -m catsdogs.fit_notpet")
    pictures = image_files(folder)
    images, read, skipped = [], [], []
    for picture in pictures:
        try:
            images.append(load_photo(picture, scores.network.image_size))
            read.append(picture)
        except BAD_IMAGE_ERRORS as error:
            skipped.append({"path": str(picture), "reason": f"{type(error).__name__}: {error}"})
    if not images:
        raise DataError(f"no readable pictures in {folder} to score as not pets")
    features = predict_with_features(scores.network, torch.stack(images))[1].cpu()
    others, pets = not_pet_score.score(features), not_pet_score.score(scores.features)
    flagged = ~not_pet_score.within(others)
    return {
        "folder": portable_path(folder), "n": len(read), "threshold": not_pet_score.threshold,
        "called_not_a_pet": flagged.float().mean().item(),
        "pets_called_not_a_pet": (~not_pet_score.within(pets)).float().mean().item(),
        "auroc": auroc(pets, others),
        "pictures": [{"path": str(path), "distance": distance, "not_a_pet": flag}
                     for path, distance, flag in zip(read, others.tolist(), flagged.tolist(), strict=True)],
        "skipped": skipped,
    }


def record_validation(report: dict, command: str) -> Path:
    """Keep the validation accuracy of `report` beside the weights it scored: metrics.json's `validation_by_device`
    for the kind of device it ran on, which the demo states for that kind of device and the card shows (rendered
    again). The folder it was written to."""
    refusal = record_refusal(report["model"], report["split"]["name"])
    if refusal:
        raise DataError(refusal)
    if report["warnings"]:  # other photos than training validated on: not the weights' validation accuracy
        raise DataError(f"not recorded: {report['warnings'][0]}")
    device = torch.device(report["device"])
    folder = Path(report["model"])
    model = load_model(folder)
    measured = {"accuracy": report["accuracy"], "correct": report["correct"], "photos": report["n"],
                "measured": f"{Precision.for_inference(device).name} on {device_in_words(device)}",
                "tta": model.tta, "crop_pct": model.crop_pct,  # config.json may have changed since training
                "command": portable_command(command, PATH_FLAGS)}
    metrics = read_metrics(folder)
    metrics["validation_by_device"] = metrics.get("validation_by_device", {}) | {device.type: measured}
    rewrite_card(folder, model, metrics)
    return folder


def record_refusal(model: str | Path, split: str) -> str | None:
    """Why --record cannot keep the accuracy of `model` on `split` beside the weights; None when it can."""
    if split != "validation":
        return "--record keeps the validation accuracy: pass --split validation"
    if not is_local_folder(model):
        return (f"--record writes beside the weights: {model} is not a weights folder (record the accuracy of a "
                "local copy, e.g. `hf download REPO --local-dir DIR`, then push it)")
    return None


def device_in_words(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "a CPU" if device.type == "cpu" else device.type


def format_report(report: dict) -> str:
    """The report as a person reads it in a terminal."""
    percent = lambda value: "-" if value is None else f"{value:.2%}"  # noqa: E731
    lines = [f"model: {report['model']}", f"data:  {report['data']}", report["split"]["description"]]
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} unreadable files:")
        lines += [f"  {s['path']}: {s['reason']}" for s in report["skipped"]]
    lines.append(f"\naccuracy {report['accuracy']:.2%} ({report['correct']}/{report['n']}) on {report['device']}")
    if report["compile_seconds"] is not None:
        lines[-1] += f" (compiled with torch.compile in {report['compile_seconds']:.1f} s)"
    if report["split"]["name"] == "validation" and report["trained_val_accuracy"] is not None:
        lines[-1] += f"; training reported {report['trained_val_accuracy']:.2%} for these weights"
    lines.append(f"\n{'class':<8}{'precision':>10}{'recall':>10}{'f1':>10}{'photos':>8}")
    for name, row in report["per_class"].items():
        lines.append(f"{name:<8}{percent(row['precision']):>10}{percent(row['recall']):>10}"
                     f"{percent(row['f1']):>10}{row['support']:>8}")
    width = max(8, *(len(str(v)) + 2 for row in report["confusion_matrix"] for v in row))
    lines.append("\nconfusion matrix (rows: true class, columns: predicted)")
    lines.append(" " * 8 + "".join(f"{name:>{width}}" for name in report["class_names"]))
    for name, row in zip(report["class_names"], report["confusion_matrix"], strict=True):
        lines.append(f"{name:<8}" + "".join(f"{v:>{width}}" for v in row))
    c = report["calibration"]
    lines.append(f"\ncalibration ({c['bins']} bins): expected calibration error {c['ece']:.2%} with the weights' "
                 f"temperature {c['temperature']:.3f}, {c['ece_without_temperature']:.2%} without; negative log "
                 f"likelihood {c['nll']:.4f}, {c['nll_without_temperature']:.4f} without")
    lines.append(demo_line(report["as_the_demo_answers"]))
    if report["mistakes"]:
        lines.append(f"\n{len(report['mistakes'])} most confident mistakes:")
        lines += [f"  {m['probability']:7.2%} {m['predicted']} (true {m['true']})  {m['path']}"
                  for m in report["mistakes"]]
    if "not_pets" in report:
        lines += not_pet_lines(report["not_pets"], report["n"])
    return "\n".join(lines)


def demo_line(answered: dict) -> str:
    """The demo's answers, as a person reads them: sure, not sure, neither, and how often each is right."""
    def group(name: str, words: str) -> str:
        photos, right = answered[name]["photos"], answered[name]["right"]
        return f"{photos} {words}" + (f" ({right / photos:.2%} right)" if photos else "")
    neither = (f", {answered['not_a_pet']['photos']} called not a cat or a dog" if answered["tells_not_pets"]
               else " (these weights cannot tell non-pets)")
    not_sure = f"not sure, top probability under {answered['not_sure_below']:.0%}"
    return f"\nas the demo answers them: {group('sure', 'sure')}, {group('not_sure', not_sure)}{neither}"


def not_pet_lines(found: dict, pets: int) -> list[str]:
    """The "not a pet" part of the report, as a person reads it."""
    lines = [f"\nnot a cat or a dog (the weights' not-a-pet score, threshold {found['threshold']:.4f}): "
             f"{found['called_not_a_pet']:.1%} of the {found['n']} pictures in {found['folder']} called neither, "
             f"and {found['pets_called_not_a_pet']:.1%} of the {pets} evaluated photos; AUROC {found['auroc']:.3f} "
             "(the chance that a picture of neither scores above a pet)"]
    lines += [f"  {'neither' if p['not_a_pet'] else 'pet':>7} {p['distance']:.3f}  {p['path']}"
              for p in found["pictures"]]
    lines += [f"  skipped {s['path']}: {s['reason']}" for s in found["skipped"]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS),
                        help="weights folder or Hub repo id like you/catsdogs (default: the shipped weights/)")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--data", required=True, help="labelled photos: any folder, CSV or Hub dataset "
                        "(hf://datasets/OWNER/NAME) that train.py reads")
    parser.add_argument("--data-revision", help="branch, tag or commit of a Hub --data (default: its main branch)")
    parser.add_argument("--data-split", default="train", help="which split of a Hub --data (default train)")
    parser.add_argument("--split", choices=SPLITS, default="all",
                        help="which photos: all, or the validation/training split train.py made (default all)")
    parser.add_argument("--val-fraction", type=float, help="of the split (default: the weights' metrics.json, or 0.1)")
    parser.add_argument("--split-seed", "--seed", dest="seed", type=int,
                        help="of the split (default: the weights' metrics.json, or 0)")
    parser.add_argument("--mistakes", type=int, default=10, help="how many confident mistakes to list (default 10)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads decoding photos")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="decode the photos without reading or writing the photo cache that train.py uses")
    parser.add_argument("--cache-dir", help="the photo cache's folder (default: as train.py's --cache-dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (and nothing else) to stdout")
    parser.add_argument("--not-pets", metavar="DIR", help="pictures of neither cats nor dogs: report the share the "
                        "weights' not-a-pet score calls neither, and its AUROC against the evaluated photos")
    parser.add_argument("--reliability", metavar="PNG",
                        help="also write the reliability diagram (accuracy against confidence) to this file")
    parser.add_argument("--record", action="store_true", help="with --split validation: keep the accuracy beside "
                        "the weights (metrics.json's validation_by_device, for this kind of device) and render their "
                        "card again; the demo states it when it runs on this kind of device")
    args = parser.parse_args(argv)
    if args.mistakes < 0 or args.workers < 1:
        parser.error("--mistakes must be 0 or more and --workers 1 or more")
    if args.record and (refusal := record_refusal(args.model, args.split)):
        parser.error(refusal)  # before any photo is scored
    if args.model == str(SHIPPED_WEIGHTS) and not SHIPPED_WEIGHTS.is_dir():
        print(f"error: no shipped weights in {SHIPPED_WEIGHTS}/ yet (train.py writes them); pass --model DIR_OR_REPO",
              file=sys.stderr)
        return 2
    try:
        with contextlib.redirect_stdout(sys.stderr):  # libraries' notes and warnings must not mix into the report
            report = evaluate(args.model, args.data, args.split, args.revision, args.val_fraction, args.seed,
                              args.mistakes, args.workers, reliability_png=args.reliability, cache=args.cache,
                              cache_dir=args.cache_dir, data_revision=args.data_revision, data_split=args.data_split,
                              not_pets=args.not_pets, device=args.device)
        for warning in report["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        if args.record:
            command = ["python", "-m", "catsdogs.evaluate", *(sys.argv[1:] if argv is None else argv)]
            folder = record_validation(report, shlex.join(command))
            print(f"recorded {report['accuracy']:.2%} on the {torch.device(report['device']).type} in "
                  f"{folder / 'metrics.json'} and the card {folder / 'README.md'}", file=sys.stderr)
    except (DataError, DeviceError, HubError, IncompatibleModel, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
