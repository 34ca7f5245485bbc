"""Peak memory of the demo's server: the worst request of each path one at a time, then 16 clients at once.

    python -m bench.app_memory                            # this checkout's app.py
    python -m bench.app_memory --app /tmp/before/app.py   # another checkout's, e.g. before a change

For each case, starts `python app.py` afresh on a free loopback port (nothing but 127.0.0.1 is contacted),
resets its peak RSS once it is idle (/proc/PID/clear_refs), sends the case's requests over plain HTTP, and
reads the peak (VmHWM) and, 2 s after the last answer, what the server still holds (VmRSS). The photos are
generated. Every request has a timeout and the concurrent cases a time budget, and the server is killed if its
RSS passes --max-rss-gb: the script is bounded in time (~5 minutes) and in memory. Linux only (/proc).
"""

import argparse
import base64
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pillow_heif  # writes the HEIC case (requirements-dev.txt); the app reads it with pi-heif
from PIL import Image

from bench.app_load import ROOT, start_app
from bench.common import report

Image.MAX_IMAGE_PIXELS = None  # this script writes the huge images; only the server decides what it accepts


def status_mb(pid: int, field: str) -> float:
    """VmRSS or VmHWM of a process, in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def make_inputs(folder: Path) -> dict[str, Path]:
    """The attack files: small files that decode huge, the largest photos the fixed app accepts, a batch."""
    rng = np.random.default_rng(0)
    files = {"huge_png": folder / "huge-13000x13000.png", "big_rgba": folder / "rgba-7071x7071.png",
             "big_webp": folder / "webp-7071x7071.webp", "big_heic": folder / "heic-7071x7071.heic",
             "big_photo": folder / "noise-3650x3650.png"}
    Image.new("RGB", (13000, 13000), (200, 120, 60)).save(files["huge_png"], compress_level=9)  # 0.5 MB
    gradient = np.linspace(0, 255, 7071, dtype=np.uint8)
    rgba = np.stack(np.broadcast_arrays(gradient[None, :], gradient[:, None], gradient[::-1][None, :],
                                        np.full((7071, 7071), 200, np.uint8)), axis=-1)
    Image.fromarray(rgba).save(files["big_rgba"], compress_level=1)  # 49.99 megapixels, just under 50
    Image.fromarray(rgba[..., :3]).save(files["big_webp"], quality=50)
    pillow_heif.from_pillow(Image.fromarray(rgba[..., :3])).save(files["big_heic"], quality=50)  # an iPhone's format
    Image.fromarray(rng.integers(0, 255, (3650, 3650, 3), dtype=np.uint8)).save(files["big_photo"],
                                                                                compress_level=1)  # 40 MB
    for i in range(205):  # full-size-photo-like JPEGs for batches and for the load test
        pixels = rng.normal([150, 110, 90], 50, size=(375, 500, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i:03d}.jpg", quality=90)
    return files


class Server:
    """The running app: its endpoints (from /config) and plain-HTTP calls to them."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout
        self.http = httpx.Client(trust_env=False, timeout=timeout)  # loopback: no proxy
        config = self.http.get(url + "config").json()
        self.endpoints = {}
        for index, dep in enumerate(config["dependencies"]):
            name = "stream" if dep.get("connection") == "stream" else dep.get("api_name")
            self.endpoints[name] = (index, dep["targets"][0][0])

    def upload(self, paths: list[Path]) -> list[dict]:
        files = [("files", (p.name, p.read_bytes(), "image/" + p.suffix[1:])) for p in paths]
        response = self.http.post(self.url + "gradio_api/upload", files=files)
        if response.status_code != 200:
            raise RuntimeError(f"upload: HTTP {response.status_code} {response.text[:80]}")
        return [{"path": path, "orig_name": p.name, "meta": {"_type": "gradio.FileData"}}
                for path, p in zip(response.json(), paths)]

    def call(self, endpoint: str, data: list, shown: int = 60) -> str:
        """Join the queue as the page does, read the event stream to the answer: 'ok' and the first `shown`
        characters of the output, the page's warnings, 'error: ...', or the HTTP status of a refused request."""
        index, trigger = self.endpoints[endpoint]
        session = uuid.uuid4().hex
        body = {"data": data, "fn_index": index, "trigger_id": trigger, "session_hash": session, "event_data": None}
        response = self.http.post(self.url + "gradio_api/queue/join", json=body)
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:90]}"
        event_id, warnings = response.json()["event_id"], ""
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "log":  # a gr.Warning: how the page's own events report a bad photo
                    warnings += f" warning: {message.get('log')}"
                if message.get("msg") in ("process_completed", "process_streaming"):
                    if message.get("msg") == "process_streaming":  # a live frame: end the stream now
                        self.http.post(self.url + f"gradio_api/stream/{event_id}/close")
                    output = message.get("output") or {}
                    if message.get("success", True) and "error" not in output:
                        return warnings.strip() or "ok " + json.dumps(output.get("data"), ensure_ascii=False)[:shown]
                    return f"error: {output.get('error')}"
        return "no answer"

    def data_url_call(self, endpoint: str, photo: Path, shown: int = 60, others: tuple = ()) -> str:
        """`photo` as a data: URL, the endpoint's first input; `others` are its other inputs."""
        encoded = base64.b64encode(photo.read_bytes()).decode()
        return self.call(endpoint, [{"url": f"data:image/{photo.suffix[1:]};base64,{encoded}"}, *others], shown)

    def upload_call(self, endpoint: str, photos: list[Path], as_list: bool = False, shown: int = 60) -> str:
        try:
            files = self.upload(photos)
        except RuntimeError as error:
            return str(error)
        return self.call(endpoint, [files] if as_list else files, shown)


class Watch:
    """Resets the server's peak RSS, and kills the server if its RSS passes a limit."""

    def __init__(self, pid: int, max_rss_mb: float):
        self.pid, self.max_rss_mb, self.killed_at = pid, max_rss_mb, 0.0
        threading.Thread(target=self._guard, daemon=True).start()

    def _guard(self) -> None:
        while not self.killed_at and status_mb(self.pid, "VmRSS"):
            rss = status_mb(self.pid, "VmRSS")
            if rss > self.max_rss_mb:
                self.killed_at = rss
                os.kill(self.pid, 9)
            time.sleep(0.05)

    def reset_peak(self) -> float:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        return status_mb(self.pid, "VmRSS")


def concurrently(clients: int, seconds: float, request) -> str:
    """`clients` threads, each sending `request(i)` again as soon as it is answered, for `seconds`."""
    answers, lock = Counter(), threading.Lock()
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        while time.monotonic() < deadline:
            try:
                answer = request(i)
            except httpx.HTTPError as error:
                answer = type(error).__name__
            with lock:
                answers[answer.split(":")[0].split(" {")[0][:40]] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ", ".join(f"{n}× {answer}" for answer, n in answers.most_common())


LIVE_HEATMAP = (True,)  # the live stream's other input: "Show where it looked", ticked


def cases(server: Server, files: dict[str, Path], photos: list[Path], clients: int, seconds: float) -> dict:
    """Case name -> what it sends; each returns its answer in words."""
    link = {"path": server.url + "config", "meta": {"_type": "gradio.FileData"}}
    worst = [lambda: server.upload_call("predict", [files["huge_png"]]),
             lambda: server.upload_call("predict", [files["big_webp"]]),
             lambda: server.data_url_call("predict", files["huge_png"]),
             lambda: server.data_url_call("stream", files["huge_png"], others=LIVE_HEATMAP),
             lambda: server.upload_call("predict_many", photos[:100], as_list=True)]
    return {
        "/predict, upload: 13000×13000 PNG (0.5 MB)": lambda: server.upload_call("predict", [files["huge_png"]]),
        "/predict, upload: 7071×7071 RGBA PNG (50 MP)": lambda: server.upload_call("predict", [files["big_rgba"]]),
        "/predict, upload: 7071×7071 WebP (50 MP)": lambda: server.upload_call("predict", [files["big_webp"]]),
        "/predict, upload: 7071×7071 HEIC (50 MP)": lambda: server.upload_call("predict", [files["big_heic"]]),
        "/predict, data: URL: 13000×13000 PNG": lambda: server.data_url_call("predict", files["huge_png"]),
        "/predict, data: URL: 40 MB photo (54 MB body)": lambda: server.data_url_call("predict", files["big_photo"]),
        "/predict, link to 127.0.0.1": lambda: server.call("predict", [link]),
        "live frame (private endpoint), data: URL: 13000×13000 PNG":
            lambda: server.data_url_call("stream", files["huge_png"], others=LIVE_HEATMAP),
        "/predict_many: 205 photos": lambda: server.upload_call("predict_many", photos[:205], as_list=True),
        "/predict_many: 100 photos": lambda: server.upload_call("predict_many", photos[:100], as_list=True),
        f"{clients} clients, /predict: 500×375 JPEGs, {seconds:.0f} s": lambda: concurrently(
            clients, seconds, lambda i: server.upload_call("predict", [photos[i % len(photos)]])),
        f"{clients} clients, the worst case of each path in turn, {seconds:.0f} s": lambda: concurrently(
            clients, seconds, lambda i: worst[i % len(worst)]()),
    }


def measure(app_file: Path, name: str, files: dict, photos: list[Path], args, log: Path) -> list:
    """One case on a freshly started server: [case, answer, seconds, peak MB, peak above idle MB, RSS 2 s later]."""
    app, url = start_app(app_file, stdout=open(log, "a"), stderr=subprocess.STDOUT)
    try:
        server = Server(url, args.timeout)
        watch = Watch(app.pid, args.max_rss_gb * 1024)
        idle = watch.reset_peak()
        started = time.monotonic()
        try:
            answer = cases(server, files, photos, args.clients, args.seconds)[name]()
        except httpx.HTTPError as error:
            answer = f"{type(error).__name__}: {error}"
        seconds = time.monotonic() - started
        peak = status_mb(app.pid, "VmHWM")
        time.sleep(2)
        if watch.killed_at:
            answer, peak = f"server killed at {watch.killed_at / 1024:.1f} GB RSS (--max-rss-gb)", watch.killed_at
        return [name, answer[:110], seconds, peak, peak - idle, status_mb(app.pid, "VmRSS")]
    finally:
        app.kill()
        app.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", type=Path, default=ROOT / "app.py", help="the app.py to measure")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20, help="how long the concurrent cases send requests")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per request")
    parser.add_argument("--max-rss-gb", type=float, default=10, help="kill the server above this RSS")
    args = parser.parse_args()
    app_file = args.app.resolve()
    with tempfile.TemporaryDirectory(prefix="app-memory-") as tmp:
        files = make_inputs(Path(tmp))
        photos = sorted(Path(tmp).glob("photo*.jpg"))
        app, url = start_app(app_file, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        idle = ["idle, after start", "-", 0.0, status_mb(app.pid, "VmHWM"), 0.0, status_mb(app.pid, "VmRSS")]
        names = list(cases(Server(url, args.timeout), files, photos, args.clients, args.seconds))
        app.kill()
        app.wait()
        rows = [idle]
        for name in names:
            rows.append(measure(app_file, name, files, photos, args, Path(tmp) / "app.log"))
            print(" | ".join(str(v) for v in rows[-1]), flush=True)
    columns = ["case", "answer", "seconds", "peak RSS MB", "peak above idle MB", "RSS 2 s later MB"]
    report(f"app.py server memory ({app_file}): the worst request of each path, then {args.clients} clients, "
           "each on a freshly started server", columns, rows)


if __name__ == "__main__":
    main()
