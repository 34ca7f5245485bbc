"""Answer many photos at once: the table of answers that the demo's "Several photos" tab shows and that this
command writes as CSV, for every photo in the files and folders it is given.

    python -m catsdogs.predict ~/Pictures/pets                              # the shipped weights/; CSV on stdout
    python -m catsdogs.predict a.jpg b.png --model you/catsdogs --csv answers.csv

A row per photo: the photo, the prediction (cat, dog or "not a cat or a dog"), each class's calibrated
probability in percent, and a note ("not sure", or why a file has no answer). Folders are searched with their
sub-folders for image files; photos are answered a group at a time and each group's rows are written as soon as
they are answered, so memory stays bounded and an interrupted run keeps the rows it wrote.
"""

import argparse
import contextlib
import csv
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from catsdogs.device import DeviceError, pick_device
from catsdogs.hub import SHIPPED_WEIGHTS, HubError
from catsdogs.inference import NOT_A_PET, Answer, Classifier
from catsdogs.preprocess import IMAGE_SUFFIXES, ImageTooLarge, image_files

GROUP = 64  # photos decoded and answered together (~10 MB decoded), in forward passes of Classifier.chunk
UNREADABLE = "cannot be read as a photo: damaged, cut short, or not an image file"


def table_headers(class_names: Sequence[str]) -> list[str]:
    """The columns of the table of answers."""
    return ["photo", "prediction", *(f"{name} %" for name in class_names), "note"]


def table_row(photo: str, answer: Answer | None, class_names: Sequence[str], problem: str = "") -> list:
    """One photo's row: its answer, or (`answer` None) a dash and why it has none."""
    if answer is None:
        return [photo, "-", *[None] * len(class_names), problem]
    return [photo, answer.verdict, *(round(answer.probabilities[name] * 100, 1) for name in class_names),
            "not sure" if answer.unsure else ""]


def find_images(paths: Sequence[str]) -> list[Path]:
    """The photos named: files as they are, folders searched with their sub-folders for image files, in order."""
    return [photo for path in map(Path, paths) for photo in (image_files(path) if path.is_dir() else [path])]


@dataclass
class Tally:
    """How many photos got each prediction, how many of those were not sure, and how many got no answer."""

    predictions: Counter = field(default_factory=Counter)
    unsure: int = 0
    unanswered: int = 0

    def add(self, result: Answer | Exception) -> None:
        if isinstance(result, Exception):
            self.unanswered += 1
        else:
            self.predictions[result.verdict] += 1
            self.unsure += result.unsure

    def describe(self, predictions: Sequence[str]) -> str:
        counts = ", ".join(f"{self.predictions[name]} {name}" for name in predictions)
        answered = self.predictions.total()
        return (f"{answered} photo{'s' if answered != 1 else ''} answered: {counts} ({self.unsure} of them not sure); "
                f"{self.unanswered} without an answer")


def answer_photos(classifier: Classifier, photos: list[Path], rows, progress: bool) -> Tally:
    """Write a row for each photo to the csv writer `rows`, a group of photos at a time."""
    tally = Tally()
    with tqdm(total=len(photos), unit="photo", desc="answering", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(photos), GROUP):
            group = photos[start:start + GROUP]
            for photo, result in zip(group, classifier.predict_readable(group), strict=True):
                if isinstance(result, Exception):
                    problem = f"too large: {result}" if isinstance(result, ImageTooLarge) else UNREADABLE
                    rows.writerow(table_row(str(photo), None, classifier.class_names, problem))
                else:
                    rows.writerow(table_row(str(photo), result, classifier.class_names))
                tally.add(result)
            bar.update(len(group))
    return tally


@contextlib.contextmanager
def csv_output(path: str | None):
    """A csv writer on the file at `path` (replaced; each row reaches it as it is written, so that a killed run
    keeps them), or on stdout."""
    if path is None:
        yield csv.writer(sys.stdout)
        return
    with open(path, "w", newline="", encoding="utf-8", buffering=1) as file:  # line-buffered
        yield csv.writer(file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catsdogs.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="+", metavar="PHOTO_OR_FOLDER", help="photo files and folders of photos")
    parser.add_argument("--model", default=str(SHIPPED_WEIGHTS),
                        help="weights folder or Hub repo id like you/catsdogs (default: the shipped weights/)")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub repo")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    parser.add_argument("--csv", metavar="FILE", help="write the answers to this file (default: stdout)")
    args = parser.parse_args(argv)
    if missing := [path for path in args.photos if not Path(path).exists()]:
        parser.error(f"{', '.join(missing)}: no such file or folder")
    if not (photos := find_images(args.photos)):
        parser.error(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(args.photos)}")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # libraries' notes must not mix into the CSV on stdout
            classifier = Classifier(args.model, args.revision, pick_device(args.device))
        with csv_output(args.csv) as rows:
            rows.writerow(table_headers(classifier.class_names))
            tally = answer_photos(classifier, photos, rows, progress=sys.stderr.isatty())
    except (HubError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed before the end (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:  # the CSV file: a full or read-only disk, a missing folder
        print(f"error: cannot write the answers to {args.csv}: {error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the rows written so far are kept", file=sys.stderr)
        return 130
    predictions = [*classifier.class_names, *([NOT_A_PET] if classifier.not_pet_score else [])]
    print(tally.describe(predictions) + (f"; the table is in {args.csv}" if args.csv else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
