"""Load test of the demo: N concurrent gradio_client users sending real photos to /predict on loopback.

    python -m bench.app_load --clients 1 8 32 --seconds 30

Starts `python app.py` on a free port (or uses --url), and for each client count
runs that many clients for a fixed time, each sending the next full-size photo
as soon as its last answer came back. Prints requests/s, p50/p95 latency and
errors per client count.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from gradio_client import Client, handle_file

from bench.common import report

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "dogs-vs-cats-fullres-sample"


def start_app(app_file: Path = ROOT / "app.py", **popen_kwargs) -> tuple[subprocess.Popen, str]:
    """`python app.py` (this checkout's, or another's `app_file`) on a free loopback port, once it answers; its
    process and URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = subprocess.Popen([sys.executable, str(app_file), "--port", str(port)], cwd=app_file.parent, **popen_kwargs)
    url = f"http://127.0.0.1:{port}/"
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(600):
        try:
            no_proxy.open(url + "config", timeout=2)
            return app, url
        except OSError:
            if app.poll() is not None:
                break
            time.sleep(0.2)
    app.kill()
    raise SystemExit(f"app.py did not start on {url}")


def run_clients(url: str, photos: list[Path], clients: int, seconds: float) -> dict:
    latencies, errors, lock = [], [], threading.Lock()
    ready = threading.Barrier(clients + 1)

    def user(index: int) -> None:
        client = Client(url, verbose=False)
        ready.wait()
        i = index
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                client.predict(handle_file(photos[i % len(photos)]), api_name="/predict")
                with lock:
                    latencies.append(time.perf_counter() - started)
            except Exception as error:  # a load test counts failures rather than stopping on them
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
            i += clients

    deadline = float("inf")
    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    deadline = started + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=20) if len(latencies) >= 2 else [float("nan")] * 19
    return {"clients": clients, "requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
            "p50_ms": quantiles[9] * 1000, "p95_ms": quantiles[18] * 1000, "errors": len(errors),
            "first_error": errors[0] if errors else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--url", help="an app already running (default: start python app.py)")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    args = parser.parse_args()
    photos = sorted(args.photos.glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no .jpg photos in {args.photos}")
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    app, url = (None, args.url) if args.url else start_app(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        results = [run_clients(url, photos, n, args.seconds) for n in args.clients]
    finally:
        if app:
            app.terminate()
    columns = ["clients", "requests", "requests_per_s", "p50_ms", "p95_ms", "errors"]
    report(f"app.py under load, /predict with full-size photos, {args.seconds:.0f} s per row "
           "(the client threads share the machine with the server)", columns,
           [[r[c] for c in columns] for r in results],
           {"first_errors": [r["first_error"] for r in results if r["first_error"]]})


if __name__ == "__main__":
    main()
