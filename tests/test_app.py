"""The demo as its users reach it: `python app.py` on loopback, driven with gradio_client over real HTTP."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from conftest import FULL_SIZE, HUB_URL, LINK_SECONDS, ROOT, SURE, USER, WRITE_TOKEN, App, clear_photos, true_class
from gradio import processing_utils
from gradio.components.image import ImageData
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from imagegen import bomb_png, pet_photo, save_as
from link_site import link_site
from PIL import Image
from pi_heif import HeifImageFile

import app as demo_app
from app import EXAMPLE_PICTURES, EXAMPLES
from bench.app_memory import LIVE_HEATMAP, Server, status_mb
from bench.app_memory_rounds import malloc_arenas
from catsdogs.components import SHOWN_SIDE, FetchesLinks, decoded_once
from catsdogs.hub import push_outputs
from catsdogs.inference import NOT_A_PET, UNSURE_BELOW, Classifier
from catsdogs.predict import table_headers
from catsdogs.page_text import how_it_works

BRICK = EXAMPLES / "brick.jpg"  # a picture the shipped not-a-pet score flags (tests/test_notpet.py)


def confidences(result: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in result["confidences"]}


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app.url, verbose=False)


def answers(client: Client, photos: list) -> dict[str, tuple[str, float]]:
    """/predict's answer for each photo: (top class, its probability); the probabilities must sum to 1."""
    found = {}
    for photo in photos:
        result = client.predict(handle_file(photo), api_name="/predict")
        probabilities = confidences(result)
        assert set(probabilities) == {"cat", "dog"} and sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert result["label"] == max(probabilities, key=probabilities.get)
        found[Path(photo).name] = (result["label"], probabilities[result["label"]])
    return found


def assert_right_answers(client: Client, photos: list, sure: float = SURE) -> None:
    """Each photo (a conftest.CLEAR_PHOTOS one) gets its true class, at least `sure` sure."""
    found = answers(client, photos)
    wrong = {name: answer for name, answer in found.items() if answer[0] != true_class(name) or answer[1] < sure}
    assert not wrong, f"wrong or unsure answers (class, probability): {wrong}; all answers: {found}"


def test_real_photos_get_the_right_class(client, shared_data):
    assert_right_answers(client, clear_photos(shared_data))


def bad_inputs(tmp_path) -> dict[str, tuple[object, str]]:
    text = tmp_path / "notes.jpg"
    text.write_text("this is a text file renamed .jpg")
    truncated = tmp_path / "cut.jpg"
    pet_photo("cat", 1, size=(400, 300)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    return {
        "text file": (handle_file(text), "not a photo the app can read"),
        "truncated": (handle_file(truncated), "damaged or cut short"),
        "bomb": (handle_file(bomb_png(tmp_path / "huge.png")), "too large"),
        "nothing": (None, "No photo given"),
    }


def test_bad_input_gets_a_message_and_the_app_keeps_serving(client, tmp_path):
    for name, (value, message) in bad_inputs(tmp_path).items():
        with pytest.raises(AppError, match=message):
            client.predict(value, api_name="/predict")
    ok = tmp_path / "ok.png"
    pet_photo("dog", 2).save(ok)
    assert sum(confidences(client.predict(handle_file(ok), api_name="/predict")).values()) == pytest.approx(1)


def test_file_over_the_size_limit_is_refused(client, app, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 20 * 2**20
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20971520 bytes"):  # gradio_client refuses
        client.predict(handle_file(big), api_name="/predict")
    with big.open("rb") as file:  # and so does the server, for any other client
        refused = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.png", file, "image/png")}, timeout=60)
    assert refused.status_code == 413
    assert refused.text == "File size exceeded maximum allowed size of 20971520 bytes."


def photo_in_mode(source: Path, mode: str, folder: Path) -> Path:
    """A real photo saved in another image mode (or as an animated GIF whose second frame is of the other class)."""
    photo = Image.open(source)
    if mode == "GIF":
        other = source.parent / ("dog.79.jpg" if true_class(source) == "cat" else "cat.85.jpg")
        path = folder / "anim.gif"
        photo.save(path, save_all=True, append_images=[Image.open(other)], duration=100, loop=0)
        return path
    if mode == "I;16":  # 16-bit greyscale, using the whole 16-bit range
        photo = Image.fromarray(np.asarray(photo.convert("L")).astype(np.uint16) * 257)
    else:
        photo = photo.convert(mode)
    path = folder / f"photo.{'jpg' if mode == 'CMYK' else 'png'}"
    photo.save(path)
    assert Image.open(path).mode == mode
    return path


MODE_PHOTOS = {"RGBA": "cat.85.jpg", "P": "dog.79.jpg", "L": "cat.85.jpg", "CMYK": "dog.79.jpg",
               "I;16": "dog.79.jpg", "GIF": "cat.85.jpg"}


@pytest.mark.parametrize("mode", MODE_PHOTOS)
def test_any_image_mode_and_animated_gif_get_the_right_class(client, shared_data, tmp_path, mode):
    photo = photo_in_mode(shared_data / FULL_SIZE / MODE_PHOTOS[mode], mode, tmp_path)
    [(label, probability)] = answers(client, [photo]).values()
    assert (label, probability >= SURE) == (true_class(MODE_PHOTOS[mode]), True), probability


@pytest.mark.parametrize("suffix", [".heic", ".avif", ".tiff"])
def test_a_phone_s_or_an_export_s_format_gets_the_right_class(client, shared_data, tmp_path, suffix):
    for name in ("cat.85.jpg", "dog.79.jpg"):
        photo = save_as(Image.open(shared_data / FULL_SIZE / name), tmp_path / Path(name).with_suffix(suffix).name)
        [(label, probability)] = answers(client, [photo]).values()
        assert (label, probability >= SURE) == (true_class(name), True), probability


def test_the_photo_box_answers_a_photo_once_and_shows_a_copy_where_browsers_cannot_show_it(shared_data, tmp_path):
    """A HEIC upload: the box's first event answers it (from one decode, exactly as the API answers the file) and
    hands the page a JPEG copy to show; the event the copy then starts answers nothing (a photo is answered once);
    a new photo is answered."""
    predictor = demo_app.Predictor(Classifier(ROOT / "weights"), "")
    box = demo_app.PhotoBox()
    heic = str(save_as(Image.open(shared_data / FULL_SIZE / "cat.85.jpg"), tmp_path / "IMG_0003.HEIC"))
    first, second = demo_app.show_answer(predictor, heic, box)
    shown = Image.open(first[0])
    assert (shown.format, shown.size) == ("JPEG", Image.open(heic).size) and first[1]["value"].label == "cat"
    assert first[1]["value"] == predictor.label(heic)
    assert isinstance(second[3], Image.Image)  # the heatmap, of the HEIC
    assert all(value == gr.skip() for value in next(demo_app.show_answer(predictor, first[0], box)))
    jpeg = str(shared_data / FULL_SIZE / "dog.79.jpg")  # one browsers show: no copy
    first, _ = demo_app.show_answer(predictor, jpeg, box)
    assert first[0] == gr.skip() and first[1]["value"].label == "dog"


def test_a_copy_the_box_shows_comes_back_by_its_link_alone_and_is_not_answered_again(shared_data, tmp_path):
    """Gradio's frontend at times sends the JPEG copy the box shows of a HEIC back as its link alone (no path): the
    box knows it as the copy it showed, not as a file it cannot read. A link to a file outside Gradio's cache is
    still nothing it can read."""
    predictor, box = demo_app.Predictor(Classifier(ROOT / "weights"), ""), demo_app.PhotoBox()
    photo = demo_app.PetPhoto(type="filepath", image_mode=None)
    heic = str(save_as(Image.open(shared_data / FULL_SIZE / "cat.85.jpg"), tmp_path / "IMG_0004.HEIC"))
    copy = next(demo_app.show_answer(predictor, photo.preprocess(ImageData(path=heic)), box))[0]
    shown = processing_utils.move_files_to_cache(photo.postprocess(copy), photo, postprocess=True)  # as Gradio does
    # Read by a component with no record of the files it gave out, as the running app's is.
    reader = demo_app.PetPhoto(type="filepath", image_mode=None)
    link_alone = reader.preprocess(ImageData(path=None, url=f"http://127.0.0.1:7860{shown['url']}"))
    assert link_alone == shown["path"]
    assert all(value == gr.skip() for value in next(demo_app.show_answer(predictor, link_alone, box)))
    elsewhere = reader.preprocess(ImageData(path=None, url=f"http://127.0.0.1:7860/gradio_api/file={heic}"))
    assert isinstance(elsewhere, demo_app.UnreadablePhoto) and elsewhere.path is None


def test_a_bad_file_dropped_over_a_photo_is_refused_once_while_its_message_shows(shared_data, tmp_path,
                                                                                  monkeypatch):
    """The events the page can send for a file that is not a photo dropped over a photo: the file (refused), the
    page's clearing of the box, then Gradio's second change event of that drop, late. The late one is not refused
    again (the page would show the message twice); the same file dropped once the message has gone is."""
    monkeypatch.setattr(demo_app, "REFUSAL_SECONDS", 3.0)  # room for a slow machine between the events
    predictor, box = demo_app.Predictor(Classifier(ROOT / "weights"), ""), demo_app.PhotoBox()
    text = tmp_path / "holiday.jpg"
    text.write_text("this is not a photo")
    bad = demo_app.UnreadablePhoto(demo_app.NOT_A_PHOTO, str(text))
    assert list(demo_app.show_answer(predictor, str(shared_data / FULL_SIZE / "cat.85.jpg"), box))[0][1]["value"]
    with pytest.raises(gr.Error, match="not a photo"):
        next(demo_app.show_answer(predictor, bad, box))
    assert next(demo_app.show_answer(predictor, None, box))[1:] == (None, "", None, "")  # the box emptied
    assert all(value == gr.skip() for value in next(demo_app.show_answer(predictor, bad, box)))
    time.sleep(3.0)  # the message has gone
    with pytest.raises(gr.Error, match="not a photo"):
        next(demo_app.show_answer(predictor, bad, box))


def test_several_photos_show_copies_from_the_one_decode_that_answers_them(shared_data, tmp_path, monkeypatch):
    """"Several photos" with an iPhone's HEIC: its gallery entry is a JPEG copy, its row the API's, and the HEIC is
    decoded once for both (a 12-megapixel one takes half a second to decode)."""
    predictor = demo_app.Predictor(Classifier(ROOT / "weights"), "")
    heic = str(save_as(Image.open(shared_data / FULL_SIZE / "cat.85.jpg"), tmp_path / "IMG_0005.HEIC"))
    jpeg, text = str(shared_data / FULL_SIZE / "dog.79.jpg"), tmp_path / "notes.jpg"
    text.write_text("not a photo")
    decodes = []  # HEIC images loaded: the list keeps them, so their ids are distinct
    heif_load = HeifImageFile.load
    monkeypatch.setattr(HeifImageFile, "load", lambda image: decodes.append(image) or heif_load(image))
    gallery, table, _, _ = demo_app.show_batch(predictor, table_headers(predictor.class_names), [heic, jpeg, str(text)])
    assert len(set(map(id, decodes))) == 1  # one image opened and loaded (load() is called again on it)
    assert [Image.open(shown).format for shown, _ in gallery] == ["JPEG", "JPEG"] and gallery[1][0] == jpeg
    assert Image.open(gallery[0][0]).size == Image.open(heic).size
    assert table.data.values.tolist()[:2] == predictor.rows([heic, jpeg])


def test_a_live_frame_gets_its_heatmap_only_when_asked_for(shared_data, tmp_path):
    predictor = demo_app.Predictor(Classifier(ROOT / "weights"), "")
    frame = tmp_path / "frame.png"  # as the live tab sends one: a small PNG of the camera's picture
    Image.open(shared_data / FULL_SIZE / "dog.79.jpg").convert("RGB").resize((320, 240)).save(frame)
    label, note, heatmap, timing = demo_app.show_live(predictor, str(frame), False)
    assert label["value"] == predictor.label(str(frame)) and heatmap == gr.skip()
    assert re.fullmatch(r"Last frame answered in \d+ ms", timing)
    label, note, heatmap, timing = demo_app.show_live(predictor, str(frame), True)
    expected = predictor.where_it_looked(str(frame), label["value"].label)
    assert heatmap.size == (320, 240) and np.array_equal(np.asarray(heatmap), np.asarray(expected))
    assert re.fullmatch(r"Last frame answered in \d+ ms · heatmap in \d+ ms", timing)


def test_the_copy_shown_of_a_large_photo_browsers_cannot_show_keeps_its_shape(tmp_path):
    y, x = np.mgrid[0:640, 0:2600]  # reduced by 2 across and 1 down, it would come out squeezed
    picture = Image.fromarray(np.stack([x * 255 // 2600, y * 255 // 640, (x + y) % 256], -1).astype(np.uint8))
    tiff = str(save_as(picture, tmp_path / "scan.tif"))
    jpeg = str(save_as(picture, tmp_path / "IMG_0004.jpg"))
    shown = []
    assert [isinstance(photo, Image.Image) for photo in decoded_once([tiff, jpeg], shown)] == [True, False]
    assert Image.open(shown[0]).size == (SHOWN_SIDE, round(SHOWN_SIDE * 640 / 2600))
    assert shown[1] == jpeg  # browsers show it as it is


def test_several_photos_at_once_get_one_right_row_each(client, shared_data, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    photos = clear_photos(shared_data)
    photos.insert(3, text)
    photos.insert(5, BRICK)
    table = client.predict([handle_file(p) for p in photos], api_name="/predict_many")  # the results alone
    rows = {row[0]: row for row in table["data"]}
    assert [row[0] for row in table["data"]] == [p.name for p in photos]  # one row each, in order
    assert table["headers"] == ["photo", "prediction", "cat %", "dog %", "note"]
    assert "not a photo" in rows.pop("notes.jpg")[4]
    _, prediction, cat, dog, note = rows.pop(BRICK.name)
    assert (prediction, note) == (NOT_A_PET, "") and cat + dog == pytest.approx(100, abs=0.2)
    for name, (_, prediction, cat, dog, note) in rows.items():
        assert prediction == true_class(name) and cat + dog == pytest.approx(100, abs=0.2)
        assert {"cat": cat, "dog": dog}[prediction] >= SURE * 100 and note == "", rows[name]
    with pytest.raises(AppError, match="No photos given"):
        client.predict([], api_name="/predict_many")


def test_heatmap_endpoint_draws_over_the_photo(client, shared_data, tmp_path):
    photo = shared_data / FULL_SIZE / "cat.85.jpg"
    heatmap = Image.open(client.predict(handle_file(photo), api_name="/heatmap"))
    original = Image.open(photo).convert("RGB")
    assert heatmap.size == original.size  # a Kaggle photo is smaller than the 512 px the heatmap may take
    changed = np.abs(np.asarray(heatmap.convert("RGB"), float) - np.asarray(original, float)).max(axis=2) > 40
    assert 0.05 < changed.mean() < 0.9  # coloured where it looked, the photo elsewhere
    for name, (value, message) in bad_inputs(tmp_path).items():
        with pytest.raises(AppError, match=message):
            client.predict(value, api_name="/heatmap")


def test_the_examples_are_a_cat_a_dog_a_non_pet_and_a_pet_not_sure_between_cat_and_dog(client):
    results = {name: client.predict(handle_file(EXAMPLES / name), api_name="/predict") for name in EXAMPLE_PICTURES}
    found = {name: (result["label"], max(confidences(result).values())) for name, result in results.items()}
    assert all(sum(confidences(result).values()) == pytest.approx(1, abs=1e-5) for result in results.values())
    assert found["chelsea.jpg"][0] == "cat" and found["chelsea.jpg"][1] >= SURE, found
    assert found["retriever.jpg"][0] == "dog" and found["retriever.jpg"][1] >= SURE, found
    assert found["brick.jpg"][0] == NOT_A_PET, found  # the probabilities still come with it
    assert any(label != NOT_A_PET and top < UNSURE_BELOW for label, top in found.values()), found  # the note shows


def test_a_non_pet_picture_is_called_neither_and_clear_pets_never(client, shared_data):
    brick = client.predict(handle_file(BRICK), api_name="/predict")
    assert brick["label"] == NOT_A_PET and set(confidences(brick)) == {"cat", "dog"}
    labels = [client.predict(handle_file(p), api_name="/predict")["label"] for p in clear_photos(shared_data)]
    assert NOT_A_PET not in labels, labels


def page_texts(demo) -> list[str]:
    """The Markdown texts of a page build_demo made, as its config serves them."""
    return [str(c["props"].get("value")) for c in demo.get_config_file()["components"] if c.get("type") == "markdown"]


def test_weights_without_a_not_pet_score_keep_working_and_the_page_says_so(shipped_weights, shared_data, tmp_path):
    weights = tmp_path / "weights-without-a-score"
    weights.mkdir()
    (weights / "model.safetensors").symlink_to(shipped_weights / "model.safetensors")
    config = json.loads((shipped_weights / "config.json").read_text())
    del config["not_a_pet"]
    (weights / "config.json").write_text(json.dumps(config))
    classifier, warning = demo_app.load_classifier(str(weights), None)  # as app.py's start loads them
    assert warning == "" and classifier.not_pet_score is None
    predictor = demo_app.Predictor(classifier, warning)
    assert predictor.label(str(BRICK)).label in {"cat", "dog"}
    for photo in clear_photos(shared_data)[::4]:  # a cat, a dog
        assert predictor.label(str(photo)).label == true_class(photo)
    how = next(text for text in page_texts(demo_app.build_demo(classifier)) if text.startswith("**The network.**"))
    assert "carry no \"not a pet\" score: they cannot tell" in how and "only knows cats and dogs" in how


def test_the_api_page_describes_every_endpoint_for_users(app):
    described = {dep["api_name"]: dep["api_description"] for dep in app.config()["dependencies"]
                 if dep.get("api_visibility", "public") == "public" and dep.get("api_name")}
    assert set(described) == {"predict", "heatmap", "predict_many"}, described
    for name, text in described.items():
        assert text and "->" not in text and "gr.Error" not in text, (name, text)


def test_model_from_the_hub(hub, shipped_weights, shared_data):
    """Named as a Space names it: its variables CATSDOGS_MODEL and CATSDOGS_REVISION."""
    push_outputs(shipped_weights, f"{USER}/catsdogs", token=WRITE_TOKEN)
    app = App(env={"CATSDOGS_MODEL": f"{USER}/catsdogs", "CATSDOGS_REVISION": "main"}).wait_ready()
    try:
        assert_right_answers(Client(app.url, verbose=False), clear_photos(shared_data)[::3])  # 2 cats, a dog
        assert f"serving {USER}/catsdogs@main on cpu" in app.log()
        assert "startup-warning" not in str(app.config())
        assert f"]({HUB_URL}/{USER}/catsdogs/tree/main)" in str(app.config())  # the page links to its Hub page
    finally:
        app.stop()


def unusable_config(shipped_weights: Path, folder: Path) -> str:
    """Weights whose config.json the network cannot run with (a zero std): their folder."""
    folder.mkdir()
    shutil.copy(shipped_weights / "model.safetensors", folder)
    config = json.loads((shipped_weights / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "std": [0, 0, 0]}))
    return str(folder)


FALLBACKS = {  # what goes wrong -> the reason the log and the page must give
    "hub down": "cannot reach the Hub",
    "no such repo": "no model repo",
    "no such revision": "has no revision 'v9'",
    "a config the network cannot run with": "std must be three finite numbers above zero",
}


@pytest.mark.parametrize("problem", FALLBACKS)
def test_weights_that_cannot_be_loaded_fall_back_with_the_reason(hub, shipped_weights, tmp_path, capsys, problem):
    """What app.py's start does with them (load_classifier), and the page build_demo makes of its warning."""
    push_outputs(shipped_weights, f"{USER}/catsdogs", token=WRITE_TOKEN)
    model, revision = {"hub down": (f"{USER}/catsdogs", None), "no such repo": (f"{USER}/nothing-here", None),
                       "no such revision": (f"{USER}/catsdogs", "v9"),
                       "a config the network cannot run with": (unusable_config(shipped_weights, tmp_path / "bad"),
                                                                None)}[problem]
    if problem == "hub down":
        hub.kill()
    classifier, warning = demo_app.load_classifier(model, revision)
    log = capsys.readouterr().out
    reason = FALLBACKS[problem]
    assert classifier.source == str(shipped_weights) and reason in warning
    assert reason in log and "Serving the shipped weights/ instead" in log and "Traceback" not in log
    assert any(reason in text for text in page_texts(demo_app.build_demo(classifier, warning)))


@pytest.fixture(scope="module")
def server(app) -> Server:
    """Plain-HTTP calls to the app, as any client can make them: data: URLs, the private live endpoint, raw JSON."""
    return Server(app.url, timeout=120)


def reset_peak(app: App) -> float:
    """Set the app's peak RSS (VmHWM) to its RSS now, and return that, in MB."""
    Path(f"/proc/{app.proc.pid}/clear_refs").write_text("5")
    return status_mb(app.proc.pid, "VmRSS")


pytestmark_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")


@pytestmark_linux
def test_an_image_over_the_pixel_limit_is_refused_undecoded_however_it_arrives(app, client, server, tmp_path):
    huge = bomb_png(tmp_path / "huge.png", 13000, 13000)  # 169 megapixels, a few bytes of pixel data
    start = reset_peak(app)
    with pytest.raises(AppError, match=r"too large: 13000×13000 pixels \(169 megapixels\) is more than the 50"):
        client.predict(handle_file(huge), api_name="/predict")  # an upload, as the page and webcam send them
    assert "too large: 13000×13000" in server.data_url_call("predict", huge)  # a data: URL in the JSON
    assert "too large: 13000×13000" in server.data_url_call("stream", huge, others=LIVE_HEATMAP)  # a live frame
    assert "too large: 13000×13000" in server.upload_call("predict_many", [huge], as_list=True, shown=1000)
    assert status_mb(app.proc.pid, "VmHWM") - start < 50  # decoding it took +1.9 GB (upload) to +3.2 GB


@pytestmark_linux
def test_a_batch_runs_in_chunks_and_its_size_is_capped(app, server, tmp_path):
    photos = []
    for i in range(101):
        photos.append(tmp_path / f"p{i}.jpg")
        pet_photo("cat" if i % 2 else "dog", i, size=(64, 48)).save(photos[-1])
    start = reset_peak(app)
    answer = server.upload_call("predict_many", photos[:40], as_list=True)
    assert answer.startswith("ok") and status_mb(app.proc.pid, "VmHWM") - start < 400  # one forward: +1 GB
    answer = server.upload_call("predict_many", photos, as_list=True)
    assert "Too many photos: 101 at once, and a batch takes at most 100" in answer


def test_request_bodies_are_capped(server, tmp_path):
    photo = tmp_path / "big.png"
    photo.write_bytes(np.random.default_rng(0).bytes(7 * 2**20))  # 9.3 MB as a data: URL
    assert server.data_url_call("predict", photo).startswith("HTTP 413: Request too large: this app takes at most 8")


@pytest.mark.parametrize("endpoint, value, message", [
    ("predict", 123, r"/predict is not what it takes: Input should be a valid dictionary .*\(got 123\)"),
    ("predict", "hello.jpg", r"/predict is not what it takes: .*\(got 'hello.jpg'\)"),
    ("predict_many", "x", r"/predict_many is not what it takes: Input should be a valid list"),
    ("predict", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "a file that was not uploaded to this"),
    ("predict", {"path": "http://[::1]:1/cat.jpg", "meta": {"_type": "gradio.FileData"}},  # loopback (the test app
     "The linked photo cannot be used: .*only public web addresses"),  # also fetches from 127.0.0.0/8, not ::1)
    ("heatmap", {"path": "http://100.100.100.200/latest/meta-data/", "meta": {"_type": "gradio.FileData"}},
     r"the host 100.100.100.200 is at 100.100.100.200, not a public web address"),
    ("predict_many", [{"path": "http://[::ffff:169.254.169.254]/", "meta": {"_type": "gradio.FileData"}}],
     r"is at ::ffff:169.254.169.254, not a public web address"),
    ("predict", {"path": "http://0177.0.0.1/a.jpg", "meta": {"_type": "gradio.FileData"}},
     r"The linked photo cannot be used: 'http://0177.0.0.1/a.jpg' is not a valid web address"),
])
def test_api_calls_with_the_wrong_input_get_the_reason(server, endpoint, value, message):
    assert re.search(message, server.call(endpoint, [value]))


def test_the_upload_cache_is_cleaned():
    import app as demo_app

    demo = demo_app.build_demo(None, "no model in this test")
    assert demo.delete_cache == (demo_app.CACHE_SECONDS, demo_app.CACHE_SECONDS) and demo_app.CACHE_SECONDS <= 3600


def markdown_texts(app: App) -> list[str]:
    return [str(c["props"].get("value")) for c in app.config()["components"] if c.get("type") == "markdown"]


def test_the_page_explains_itself_and_shows_the_card_without_broken_images(app):
    texts = markdown_texts(app)
    how = next(text for text in texts if text.startswith("**The network.**"))
    assert "97.0%" in how  # the shipped weights' accuracy on the CPU
    assert "It sees the photo squashed to 224×224 pixels, its middle 95% (the edges trimmed)" in how  # their crop
    assert "**Not a cat or a dog.**" in how and "the 5-th nearest of 2000" in how  # their not-a-pet score
    assert "faces and many everyday objects still pass as pets" in how
    card = next(text for text in texts if text.startswith("**Model card, in short**"))
    assert "97.0%" in card and "![" not in card


def test_the_page_says_the_network_sees_the_whole_photo_for_weights_without_a_crop(tmp_path):
    weights = Path(shutil.copytree(demo_app.SHIPPED_WEIGHTS, tmp_path / "weights"))
    config = json.loads((weights / "config.json").read_text())
    del config["not_a_pet"]  # the score was fitted with the crop, and the app would refuse it
    (weights / "notpet.safetensors").unlink()
    (weights / "config.json").write_text(json.dumps(config | {"crop_pct": 1.0}))
    how = how_it_works(demo_app.Classifier(weights), examples="")
    assert "It sees the whole photo squashed to 224×224 pixels and gives each class a probability." in how


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_no_message_shows_a_path_on_the_server(server):
    messages = [server.call("predict", [file_data(path)], shown=500) for path in
                ("hello.jpg", "../weights/config.json", str(ROOT / "app.py"), "http://0177.0.0.1/a.jpg")]
    messages.append(server.call("predict_many", [[file_data("cat.jpg")]]))
    for message in messages:
        assert message.startswith("error: ") and str(ROOT) not in message, message
        assert tempfile.gettempdir() + "/" not in message, message


def test_a_chunked_request_body_over_the_limit_gets_413(app):
    def body():  # 20 MB without a Content-Length
        for _ in range(20):
            yield b"x" * 2**20
    refused = httpx.post(app.url + "gradio_api/queue/join", content=body(), timeout=60,
                         headers={"Content-Type": "application/json"})
    assert refused.status_code == 413 and refused.text.startswith("Request too large: this app takes at most 8 MB")


def test_a_bad_photo_or_link_is_one_line_in_the_log(app, client, server, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(AppError, match="not a photo the app can read"):
        client.predict(handle_file(text), api_name="/predict")
    assert "not a public web address" in server.call("heatmap", [file_data("http://100.64.0.1/cat.jpg")])
    log = app.log()
    assert "refused /predict: This file is not a photo the app can read" in log
    assert "refused /heatmap: The linked photo cannot be used: the host 100.64.0.1 is at 100.64.0.1" in log
    assert "Traceback" not in log, log[-3000:]


def test_a_real_fault_keeps_its_traceback_in_the_log(capfd):
    import gradio as gr

    from app import Demo
    from catsdogs.serving import LinkFetcher

    def broken(text: str) -> str:
        raise RuntimeError("a real fault")

    def refusing(text: str) -> str:
        raise gr.Error(f"a bad {text}")

    with Demo(LinkFetcher(max_bytes=1000, seconds_per_request=1)) as demo:
        box = gr.Textbox()
        gr.Button().click(broken, box, box, api_name="broken")
        gr.Button().click(refusing, box, box, api_name="refusing")
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(url, verbose=False)
        for name in ("broken", "refusing"):
            with pytest.raises(AppError):
                client.predict("photo", api_name=f"/{name}")
    finally:
        demo.close()
    log = capfd.readouterr()
    log = log.out + log.err
    assert "Traceback" in log and "RuntimeError: a real fault" in log
    assert "refused /refusing: a bad photo" in log and log.count("Traceback") == 1, log


@pytest.fixture(scope="module")
def link_app(app, shared_data, tmp_path_factory):
    """The demo (told to fetch links from 127.0.0.0/8 too), and tests/link_site.py there, with a real cat photo."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(shared_data / FULL_SIZE / "cat.85.jpg", site)
    with link_site(site) as url:
        yield app, url


def routes_taking(server: Server, config: dict, elem_ids: set[str]) -> dict[str, tuple[bool, list]]:
    """Every event (API or page) whose first input is the component with one of `elem_ids` and whose others are
    per-visitor states or tick boxes: name -> (takes a list, the values of the inputs after it: None for a state,
    False for a box)."""
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    values = {c["id"]: None if c.get("type") == "state" else False for c in config["components"]
              if c.get("type") in ("state", "checkbox")}
    routes = {}
    for name, (index, _) in server.endpoints.items():
        first, *others = config["dependencies"][index]["inputs"] or [None]
        if ids.get(first) in elem_ids and set(others) <= set(values):
            routes[name] = (ids[first] == "batch", [values[other] for other in others])
    return routes


@pytestmark_linux
def test_every_route_that_takes_a_photo_fetches_links_with_the_size_cap(link_app):
    app, site = link_app
    server = Server(app.url, timeout=120)
    routes = routes_taking(server, app.config(), {"photo", "live", "batch"})
    assert {"predict", "heatmap", "predict_many", "stream"} < set(routes) and len(routes) == 6, routes
    assert "ok" in server.call("predict", [file_data(f"{site}/cat.85.jpg")], shown=200)
    assert '"cat"' in server.call("predict_many", [[file_data(f"{site}/cat.85.jpg")]], shown=200)
    start = reset_peak(app)
    for name, (takes_list, others) in routes.items():
        for big in ("sized", "unsized"):  # 500 MB, with and without Content-Length
            link = file_data(f"{site}/{big}/{500 * 2**20}")
            answer = server.call(name, [[link] if takes_list else link, *others])
            assert "is over 20 MB" in answer, (name, big, answer)
    assert status_mb(app.proc.pid, "VmHWM") - start < 60


def test_slow_links_cannot_take_every_prediction_slot(link_app, shared_data):
    app, site = link_app
    drip = file_data(f"{site}/drip/100?every=3")  # a byte every 3 s: each read is quick, the whole is not
    visitors = {address: Server(app.url, timeout=120) for address in ("127.0.0.1", "127.0.0.2")}
    for address, server in visitors.items():  # two visitors: two client addresses
        server.http = httpx.Client(transport=httpx.HTTPTransport(local_address=address), trust_env=False,
                                   timeout=120)
    answers = {}

    def send(name: str, server: Server) -> None:
        started = time.monotonic()
        answers[name] = (server.call("predict", [drip], shown=200), time.monotonic() - started)
    threads = [threading.Thread(target=send, args=("first", visitors["127.0.0.1"]))]
    threads[0].start()
    time.sleep(1)
    threads += [threading.Thread(target=send, args=(name, visitors[address]))
                for name, address in (("same visitor", "127.0.0.1"), ("other visitor", "127.0.0.2"))]
    for thread in threads[1:]:
        thread.start()
    started = time.monotonic()
    upload = answers_of(visitors["127.0.0.2"], shared_data)
    upload_seconds = time.monotonic() - started
    for thread in threads:
        thread.join()
    # A slot stayed free: the upload was answered while the first link was still downloading.
    assert upload.startswith("ok") and upload_seconds < LINK_SECONDS - 2, (upload, upload_seconds)
    assert "another link of yours is still downloading" in answers["same visitor"][0], answers
    assert "the app is downloading other links right now" in answers["other visitor"][0], answers
    assert answers["same visitor"][1] < 5 and answers["other visitor"][1] < 5, answers  # refused at once
    assert f"took longer than {LINK_SECONDS} s to download" in answers["first"][0], answers
    assert LINK_SECONDS <= answers["first"][1] < LINK_SECONDS + 10, answers


def answers_of(server: Server, shared_data: Path) -> str:
    return server.upload_call("predict", [shared_data / FULL_SIZE / "dog.79.jpg"], shown=200)


def test_every_photo_input_fetches_links_itself():
    import gradio as gr

    import app as demo_app

    demo = demo_app.build_demo(None, "no model in this test")
    inputs = {demo.blocks[block_id] for fn in demo.fns.values() for block_id in
              (block._id for block in fn.inputs)}
    file_inputs = [block for block in inputs if isinstance(block, (gr.Image, gr.File, gr.Gallery))]
    assert len(file_inputs) == 3 and all(isinstance(block, FetchesLinks) for block in file_inputs)
    assert sorted(block.get_block_name() for block in file_inputs) == ["file", "image", "image"]  # their frontends


# Three threads that each allocate (glibc opens an arena for each) beside a 1 GB block like those pyarrow's
# bundled jemalloc maps, which Gradio loads: it starts on a 64 MB boundary with a pointer to itself.
ARENAS_AND_A_LOOKALIKE = """
import ctypes, struct, sys, threading
libc = ctypes.CDLL("libc.so.6")
libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                                        ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
boundary, block = 64 * 2**20, 2**30
start = libc.mmap(None, block + boundary, 3, 0x22, -1, 0)  # read-write, private and anonymous
aligned = -(-start // boundary) * boundary
if aligned > start:
    libc.munmap(start, aligned - start)
ctypes.memmove(aligned, struct.pack("<2Q", aligned, block), 16)
ready, done = threading.Barrier(4), threading.Event()
def allocate():
    kept = bytearray(100_000)
    ready.wait()
    done.wait()
for _ in range(3):
    threading.Thread(target=allocate).start()
ready.wait()
print("ready", flush=True)
sys.stdin.readline()
done.set()
"""


@pytestmark_linux
def test_the_arena_count_sees_each_threads_arena_and_not_other_allocators_blocks():
    process = subprocess.Popen([sys.executable, "-c", ARENAS_AND_A_LOOKALIKE], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        assert malloc_arenas(process.pid) == 4  # the main arena and one per thread
    finally:
        process.communicate("\n", timeout=30)


@pytestmark_linux
def test_concurrent_requests_share_one_malloc_arena_per_prediction_slot(app, shared_data):
    import app as demo_app

    def send(index: int) -> None:
        client = Client(app.url, verbose=False)
        for photo in clear_photos(shared_data)[index % 2::2][:2]:
            client.predict(handle_file(photo), api_name="/predict")
    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert malloc_arenas(app.proc.pid) <= demo_app.PREDICT_SLOTS  # glibc's default: up to 16 on 2 cores
