"""What one request to the demo may cost: a cap on request bodies, and a capped download of a linked photo.

Framework-level pieces (an ASGI middleware, an httpx download) that app.py wires into Gradio:
- `RequestSizeLimit` answers HTTP 413 to any request body over its limit, counted as it arrives, so a JSON
  body (which is parsed in memory) cannot carry a photo of any size as a `data:` URL; file uploads, which are
  streamed to disk, get their own larger limit.
- `fetch_linked_photo` downloads a photo given as a link (`gradio_client.handle_file(url)`) the way Gradio
  would (public addresses only, each redirect checked again), but streamed to disk and stopped at a size
  limit: Gradio's own download reads the whole answer into memory first.
"""

import hashlib
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx
import safehttpx
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_REDIRECTS = 5
DOWNLOAD_TIMEOUT_S = 30


def megabytes(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n} bytes"


class _BodyTooLarge(Exception):
    pass


class RequestSizeLimit:
    """ASGI middleware: HTTP 413 for a request body over `max_bytes` (`upload_bytes` for `upload_path`).

    The Content-Length header is checked first; the body is also counted as it arrives, so a chunked or
    understated body is stopped too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int, upload_path: str = "/gradio_api/upload"):
        self.app, self.max_bytes, self.upload_bytes, self.upload_path = app, max_bytes, upload_bytes, upload_path

    def limit(self, path: str) -> int:
        return self.upload_bytes if path.rstrip("/").endswith(self.upload_path) else self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit(scope["path"])
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return await self.refuse(limit, scope, receive, send)
        received, started = 0, False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _BodyTooLarge:
            if started:  # too late for a 413; the connection is dropped
                raise
            await self.refuse(limit, scope, receive, send)

    async def refuse(self, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        uploads = scope["path"].rstrip("/").endswith(self.upload_path)
        advice = ("" if uploads else f"; send photos as files (gradio_client.handle_file), up to "
                  f"{megabytes(self.upload_bytes)} per upload request")
        response = PlainTextResponse(f"Request too large: this app takes at most {megabytes(limit)} per "
                                     f"{'upload' if uploads else 'request'}{advice}.", status_code=413,
                                     headers={"Connection": "close"})
        await response(scope, receive, send)


class LinkError(ValueError):
    """A linked photo that cannot be fetched: not public, not found, too large, too slow. The message says which."""


async def fetch_linked_photo(url: str, folder: str | Path, max_bytes: int) -> Path:
    """Download `url` into `folder` (one sub-folder per URL), refusing private addresses and anything over
    `max_bytes`. Returns the file's path; raises LinkError."""
    target = Path(folder) / hashlib.sha256(url.encode()).hexdigest()[:32] / (
        Path(urlparse(url).path).name.replace("..", "") or "photo")
    for _ in range(MAX_REDIRECTS + 1):
        host = httpx.URL(url).host
        try:
            verified_ip = await safehttpx.async_validate_url(host) if host else None
        except ValueError as error:
            raise LinkError(f"the link {url} cannot be fetched: {error} (only public web addresses are)") from None
        if verified_ip is None:
            raise LinkError(f"{url} is not a web address")
        try:
            async with httpx.AsyncClient(transport=safehttpx.AsyncSecureTransport(verified_ip),
                                         timeout=DOWNLOAD_TIMEOUT_S) as client:
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise LinkError(f"the link {url} answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise LinkError(f"the photo at {url} is over {megabytes(max_bytes)}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    size = 0
                    with open(target, "wb") as file:
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > max_bytes:
                                break
                            file.write(chunk)
                    if size > max_bytes:
                        target.unlink()
                        raise LinkError(f"the photo at {url} is over {megabytes(max_bytes)}")
                    return target
        except httpx.HTTPError as error:
            raise LinkError(f"the link {url} cannot be fetched ({type(error).__name__}: {error})") from None
    raise LinkError(f"the link {url} redirects more than {MAX_REDIRECTS} times")
