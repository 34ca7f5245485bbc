"""What one request may cost: the request-size middleware, and the capped download of a linked photo."""

import asyncio
import http.server
import threading

import httpx
import pytest
import safehttpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from catsdogs.serving import LinkError, RequestSizeLimit, fetch_linked_photo


async def echo_size(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def limited_app() -> Starlette:
    routes = [Route("/gradio_api/queue/join", echo_size, methods=["POST"]),
              Route("/gradio_api/upload", echo_size, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(RequestSizeLimit, max_bytes=1000, upload_bytes=5000)])


async def post(path: str, body, headers: dict | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=limited_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, content=body, headers=headers)


def test_request_bodies_over_the_limit_get_413_whether_declared_or_not():
    assert asyncio.run(post("/gradio_api/queue/join", b"x" * 1000)).text == "1000"
    refused = asyncio.run(post("/gradio_api/queue/join", b"x" * 1001))
    assert refused.status_code == 413 and "at most 1000 bytes per request" in refused.text

    async def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(3):
            yield b"x" * 400
    assert asyncio.run(post("/gradio_api/queue/join", chunks())).status_code == 413
    assert asyncio.run(post("/gradio_api/upload", b"x" * 4000)).text == "4000"  # uploads have their own limit
    assert asyncio.run(post("/gradio_api/upload", b"x" * 5001)).status_code == 413


class Photos(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/unsized.jpg":  # no Content-Length: the download counts what arrives
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"j" * 5000)
            return
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/small.jpg")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def photo_site(tmp_path, monkeypatch):
    """A web server on 127.0.0.1 that the download treats as public (the address check is what is patched)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "small.jpg").write_bytes(b"j" * 1000)
    (tmp_path / "site" / "big.jpg").write_bytes(b"j" * 5000)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: Photos(*a, directory=str(tmp_path / "site")))
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def loopback_is_public(host: str) -> str:
        return "127.0.0.1"
    monkeypatch.setattr(safehttpx, "async_validate_url", loopback_is_public)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_linked_photo_is_downloaded_up_to_the_size_limit(photo_site, tmp_path):
    path = asyncio.run(fetch_linked_photo(f"{photo_site}/small.jpg", tmp_path / "cache", max_bytes=4000))
    assert path.read_bytes() == b"j" * 1000 and path.name == "small.jpg"
    assert asyncio.run(fetch_linked_photo(f"{photo_site}/moved", tmp_path / "cache", 4000)).read_bytes() == b"j" * 1000
    for big in ("big.jpg", "unsized.jpg"):
        with pytest.raises(LinkError, match="is over 4000 bytes"):
            asyncio.run(fetch_linked_photo(f"{photo_site}/{big}", tmp_path / "cache", max_bytes=4000))
    assert not list((tmp_path / "cache").rglob("unsized.jpg"))  # the partial download is deleted
    with pytest.raises(LinkError, match="answered HTTP 404"):
        asyncio.run(fetch_linked_photo(f"{photo_site}/none.jpg", tmp_path / "cache", max_bytes=4000))


def test_a_link_to_a_private_address_is_refused(tmp_path):
    with pytest.raises(LinkError, match="only public web addresses"):
        asyncio.run(fetch_linked_photo("http://127.0.0.1:9/cat.jpg", tmp_path, max_bytes=4000))
