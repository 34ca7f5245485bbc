"""`python -m catsdogs.predict`: every photo in the files and folders named, a CSV row each, with the shipped
weights and real photos."""

import csv
import io
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from imagegen import bomb_png, save_as
from PIL import Image

from catsdogs.inference import NOT_A_PET, Classifier
from catsdogs.predict import UNREADABLE, main, table_headers, table_row

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(ROOT / "weights")


@pytest.fixture
def photos(tmp_path, shared_data):
    """A folder as people have one: photos in sub-folders, one from an iPhone (HEIC), a damaged photo, a file that
    is not a photo at all, hidden files and folders."""
    folder = tmp_path / "pictures"
    (folder / "2024" / "summer").mkdir(parents=True)
    shutil.copy(EXAMPLES / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(EXAMPLES / "brick.jpg", folder / "2024" / "wall.jpg")
    shutil.copy(shared_data / "dogs-vs-cats-fullres-sample" / "dog.7.jpg", folder / "2024" / "summer" / "rex.JPG")
    save_as(Image.open(shared_data / "dogs-vs-cats-fullres-sample" / "cat.85.jpg"), folder / "2024" / "IMG_0001.HEIC")
    (folder / "2024" / "cut.jpg").write_bytes((EXAMPLES / "coffee.jpg").read_bytes()[:4000])
    (folder / "notes.txt").write_text("not a photo, and not named like one: left out\n")
    (folder / "._chelsea.jpg").write_bytes(b"\0\5\26\7 macOS's resource fork: hidden, left out")
    (folder / ".thumbnails").mkdir()
    shutil.copy(EXAMPLES / "grass.jpg", folder / ".thumbnails" / "chelsea.jpg")  # hidden folder: left out
    return folder


def test_every_photo_in_a_folder_gets_the_row_the_demo_s_table_gives_it(photos, tmp_path, classifier, capsys):
    out = tmp_path / "answers.csv"
    assert main([str(photos), "--csv", str(out)]) == 0
    header, *rows = list(csv.reader(out.open(newline="")))
    assert header == table_headers(classifier.class_names) == ["photo", "prediction", "cat %", "dog %", "note"]
    named = [photos / "2024" / "cut.jpg", photos / "2024" / "IMG_0001.HEIC", photos / "2024" / "summer" / "rex.JPG",
             photos / "2024" / "wall.jpg", photos / "chelsea.jpg"]
    assert [row[0] for row in rows] == [str(path) for path in named]  # sub-folders searched, in order
    answers = classifier.predict(named[1:])
    expected = [table_row(str(named[0]), None, classifier.class_names, UNREADABLE),
                *(table_row(str(path), answer, classifier.class_names) for path, answer in zip(named[1:], answers))]
    assert rows == [["" if cell is None else str(cell) for cell in row] for row in expected]
    assert [row[1] for row in rows] == ["-", "cat", "dog", NOT_A_PET, "cat"]
    assert capsys.readouterr().err.strip() == (f"4 photos answered: 2 cat, 1 dog, 1 {NOT_A_PET} (0 of them not "
                                               f"sure); 1 without an answer; the table is in {out}")


def test_without_a_file_the_csv_goes_to_stdout_and_nothing_else_does(photos, tmp_path):
    huge = bomb_png(tmp_path / "huge.png", 12_000, 9_000)  # over MAX_PIXELS, and over PIL's warning threshold
    named = [str(EXAMPLES / "chelsea.jpg"), str(photos / "2024" / "wall.jpg"), str(huge)]
    done = subprocess.run([sys.executable, "-m", "catsdogs.predict", *named], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert [row[:2] for row in rows] == [["photo", "prediction"], [named[0], "cat"], [named[1], NOT_A_PET],
                                         [named[2], "-"]]
    assert rows[3][-1] == ("too large: 12000×9000 pixels (108 megapixels) is more than the 50 megapixels a photo "
                           "may have")
    assert done.stderr.strip() == (f"2 photos answered: 1 cat, 0 dog, 1 {NOT_A_PET} (0 of them not sure); 1 without "
                                   "an answer")  # and no warning of PIL's


def test_what_cannot_be_answered_is_refused_with_a_message(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args, message in [([str(tmp_path / "nowhere")], f"{tmp_path / 'nowhere'}: no such file or folder"),
                          ([str(tmp_path / "empty")], "no image files (.avif, .bmp, .gif, .heic, .heif, .jfif, .jpeg, "
                                                      f".jpg, .png, .tif, .tiff, .webp) in {tmp_path / 'empty'}")]:
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    photo = str(EXAMPLES / "chelsea.jpg")
    assert main([photo, "--model", str(tmp_path / "empty")]) == 2
    assert "has no model.safetensors" in capsys.readouterr().err
    assert main([photo, "--csv", str(tmp_path / "no" / "such" / "folder.csv")]) == 1
    assert f"error: cannot write the answers to {tmp_path / 'no' / 'such' / 'folder.csv'}: No such file or " \
        "directory" in capsys.readouterr().err
