"""A web server on 127.0.0.1 for the tests of linked photos: files from a folder, plus answers made to order.

    /sized/N, /unsized/N      N bytes, with and without Content-Length (streamed, never held in memory)
    /drip/N?every=S           N bytes, one every S seconds
    /moved?to=URL             a redirect (to /small.jpg without `to`)
"""

import http.server
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlparse


class Site(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        kind, _, size = url.path.strip("/").partition("/")
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        try:
            if kind in ("sized", "unsized", "drip"):
                self.send_bytes(int(size), declared=kind != "unsized", every=float(query.get("every", 0)))
            elif kind == "moved":
                self.send_response(302)
                self.send_header("Location", query.get("to", "/small.jpg"))
                self.end_headers()
            else:
                super().do_GET()
        except OSError:  # the client gave up
            pass

    def send_bytes(self, size: int, declared: bool, every: float) -> None:
        self.send_response(200)
        if declared:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        block = 1 if every else 2**20
        for start in range(0, size, block):
            self.wfile.write(b"j" * min(block, size - start))
            if every:
                self.wfile.flush()
                time.sleep(every)


@contextmanager
def link_site(folder: Path):
    """Serve `folder` (and the answers above) on 127.0.0.1; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Site(*a, directory=str(folder)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
