"""The demo as its users reach it: `python app.py` on loopback, driven with gradio_client over real HTTP."""

import json
import re
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import USER, WRITE_TOKEN, App
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from imagegen import pet_photo
from PIL import Image

from bench.app_memory import Server, status_mb
from catsdogs.hub import push_outputs


def confidences(result: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in result["confidences"]}


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app.url, verbose=False)


def test_real_full_size_photos_get_both_probabilities(client, shared_data):
    photos = sorted((shared_data / "dogs-vs-cats-fullres-sample").glob("*.jpg"))[::40]
    assert len(photos) == 5
    for photo in photos:
        result = client.predict(handle_file(photo), api_name="/predict")
        probabilities = confidences(result)
        assert set(probabilities) == {"cat", "dog"}
        assert sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
        assert result["label"] == max(probabilities, key=probabilities.get)


def bomb_png(path, width=20_000, height=10_000):
    """A valid PNG header claiming 200 megapixels (over PIL's bomb limit) with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


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


def test_file_over_the_size_limit_is_refused(client, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 20_000_000
    with pytest.raises(Exception, match="413|too large|size"):
        client.predict(handle_file(big), api_name="/predict")


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "CMYK", "I;16", "GIF"])
def test_any_image_mode_and_animated_gif(client, tmp_path, mode):
    photo = pet_photo("cat", 3)
    if mode == "GIF":
        path = tmp_path / "anim.gif"
        photo.save(path, save_all=True, append_images=[pet_photo("dog", 4)], duration=100, loop=0)
    else:
        path = tmp_path / f"photo.{'jpg' if mode == 'CMYK' else 'png'}"
        photo.convert(mode).save(path)
    assert sum(confidences(client.predict(handle_file(path), api_name="/predict")).values()) == pytest.approx(1)


def test_several_photos_at_once_get_one_row_each(client, shared_data, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    photos = [shared_data / "dogs-vs-cats-fullres-sample" / "cat.5.jpg", text,
              shared_data / "dogs-vs-cats-fullres-sample" / "dog.5.jpg"]
    table, _info = client.predict([handle_file(p) for p in photos], api_name="/predict_many")
    rows = table["data"]
    assert [row[0] for row in rows] == ["cat.5.jpg", "notes.jpg", "dog.5.jpg"]
    assert rows[0][2] + rows[0][3] == pytest.approx(100, abs=0.2)
    assert "not a photo" in rows[1][4]
    with pytest.raises(AppError, match="No photos given"):
        client.predict([], api_name="/predict_many")


def test_model_from_the_hub(hub, shipped_weights, tmp_path):
    push_outputs(shipped_weights, f"{USER}/catsdogs", token=WRITE_TOKEN)
    app = App("--model", f"{USER}/catsdogs", "--revision", "main").wait_ready()
    try:
        photo = tmp_path / "cat.png"
        pet_photo("cat", 5).save(photo)
        assert sum(confidences(Client(app.url, verbose=False).predict(
            handle_file(photo), api_name="/predict")).values()) == pytest.approx(1)
        assert f"serving {USER}/catsdogs@main on cpu" in app.log()
        assert "startup-warning" not in str(app.config())
    finally:
        app.stop()


FALLBACKS = {  # what goes wrong -> (how the app is started, what the log and the page must say)
    "hub down": (["--model", f"{USER}/catsdogs"], {}, "cannot reach the Hub"),
    "no such repo": (["--model", f"{USER}/nothing-here"], {}, "no model repo"),
    "no such revision (Space variables)": ([], {"CATSDOGS_MODEL": f"{USER}/catsdogs", "CATSDOGS_REVISION": "v9"},
                                           "has no revision 'v9'"),
}


@pytest.mark.parametrize("problem", FALLBACKS)
def test_a_model_that_cannot_be_fetched_falls_back_to_shipped_weights(hub, shipped_weights, tmp_path, problem):
    args, env, reason = FALLBACKS[problem]
    push_outputs(shipped_weights, f"{USER}/catsdogs", token=WRITE_TOKEN)
    if problem == "hub down":
        hub.kill()
    app = App(*args, env=env).wait_ready()
    try:
        assert reason in app.log() and "Serving the shipped weights/ instead" in app.log()
        assert reason in str(app.config())  # the page shows it too
        photo = tmp_path / "dog.png"
        pet_photo("dog", 6).save(photo)
        result = Client(app.url, verbose=False).predict(handle_file(photo), api_name="/predict")
        assert result["label"] in {"cat", "dog"}
    finally:
        app.stop()


def test_a_config_the_network_cannot_run_with_falls_back_with_the_reason(shipped_weights, tmp_path):
    bad = tmp_path / "bad-weights"
    bad.mkdir()
    shutil.copy(shipped_weights / "model.safetensors", bad)
    config = json.loads((shipped_weights / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "std": [0, 0, 0]}))
    app = App("--model", str(bad)).wait_ready()
    try:
        reason = "std must be three finite numbers above zero"
        assert reason in app.log() and "Serving the shipped weights/ instead" in app.log()
        assert "Traceback" not in app.log()
        assert reason in str(app.config())  # the page shows it too
    finally:
        app.stop()


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
    assert "too large: 13000×13000" in server.data_url_call("stream", huge)  # a live frame, private endpoint
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
    ("predict", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "was not uploaded by a user"),
    ("predict", {"path": "http://127.0.0.1:1/cat.jpg", "meta": {"_type": "gradio.FileData"}},
     "The linked photo cannot be used: .*only public web addresses"),
])
def test_api_calls_with_the_wrong_input_get_the_reason(server, endpoint, value, message):
    assert re.search(message, server.call(endpoint, [value]))


def test_the_upload_cache_is_cleaned():
    import app as demo_app

    demo = demo_app.build_demo(None, "no model in this test")
    assert demo.delete_cache == (demo_app.CACHE_SECONDS, demo_app.CACHE_SECONDS) and demo_app.CACHE_SECONDS <= 3600
