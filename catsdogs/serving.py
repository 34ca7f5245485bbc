"""What one request to the demo may cost: a cap on request bodies, and a capped download of a linked photo.

Framework-level pieces (an ASGI middleware, an httpx download) that app.py wires into Gradio:
- `RequestSizeLimit` answers HTTP 413 to any request body over its limit, counted as it arrives, so a JSON
  body (which is parsed in memory) cannot carry a photo of any size as a `data:` URL; file uploads, which are
  streamed to disk, get their own larger limit.
- `LinkFetcher` downloads a photo given as a link (`gradio_client.handle_file(url)`): only from globally
  routable addresses (checked after resolving, on every redirect, and on the connected socket), streamed to
  disk up to a size limit, within a time limit for all the links of one request, and at most a few links at
  once, one per visitor, so that slow links cannot hold every prediction slot. Gradio's own download reads the
  whole answer into memory, has no total time limit, and counts 100.64.0.0/10 (shared address space, where
  clouds put their metadata services) as public.
"""

import asyncio
import ipaddress
import os
import re
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

import httpx
import safehttpx
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_REDIRECTS = 5
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
HOST_NAME = re.compile(r"[a-z0-9.-]+|[0-9a-f:.]+", re.IGNORECASE)  # a DNS name or an IP address


def megabytes(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n} bytes"


class RequestSizeLimit:
    """ASGI middleware: HTTP 413 for a request body over `max_bytes` (`upload_bytes` for `upload_path`).

    The Content-Length header is checked first; the body is also counted as it arrives, so a chunked or
    understated body is stopped too: the 413 is sent as soon as the count passes the limit, and the app then
    reads a client that went away (whatever error it makes of that is not sent, so it cannot turn into a 400).
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
        received, started, refused = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:  # else too late for a 413: the app sees the client go away
                        await self.refuse(limit, scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if refused and not started:  # the 413 went out instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except Exception:
            if not refused:
                raise

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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), whose own rules then apply."""
    if address.ipv4_mapped or address.sixtofour:
        return address.ipv4_mapped or address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: str, also_allowed: Iterable[Network] = ()) -> bool:
    """True for a globally routable unicast address (or one in `also_allowed`). Not private, loopback,
    link-local, shared (100.64.0.0/10), reserved, documentation or multicast space, also when written as IPv6."""
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone ("%eth0") names a local interface
    if isinstance(ip, ipaddress.IPv6Address) and (inner := embedded_ipv4(ip)) is not None:
        ip = inner
    if any(ip in network for network in also_allowed):
        return True
    return ip.is_global and not ip.is_multicast


@dataclass
class Visit:
    """One request's links: who sent them (the client's address) and when their time is up (time.monotonic())."""

    fetcher: "LinkFetcher"
    client: str
    deadline: float

    async def fetch(self, url: str, folder: str | Path) -> Path:
        """Download `url` into `folder` (one sub-folder per URL). Returns the file's path; raises LinkError."""
        return await self.fetcher.fetch(url, Path(folder), self)


@dataclass
class LinkFetcher:
    """Downloads linked photos with limits on where from, how much, how long and how many at once.

    `also_allowed` lists networks fetched from besides the public ones (an intranet; loopback in tests)."""

    max_bytes: int
    seconds_per_request: float
    at_once: int = 1
    per_client: int = 1
    also_allowed: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        self.fetching: Counter[str] = Counter()  # links downloading now, per client

    def visit(self, client: str) -> Visit:
        """The links of one request from `client`, fetched with Visit.fetch."""
        return Visit(self, client, time.monotonic() + self.seconds_per_request)

    async def fetch(self, url: str, folder: Path, visit: Visit) -> Path:
        with self.slot(visit.client):
            try:
                async with asyncio.timeout(max(0.0, visit.deadline - time.monotonic())):
                    return await self._follow(url, folder)
            except TimeoutError:
                raise LinkError(f"the link {url} took longer than {self.seconds_per_request:.0f} s to download "
                                "(all the links of one request together)") from None

    @contextmanager
    def slot(self, client: str):
        """One of the `at_once` download slots, if `client` holds fewer than `per_client`; else LinkError."""
        if self.fetching[client] >= self.per_client:
            raise LinkError(f"another link of yours is still downloading: send at most {self.per_client} at a time")
        if self.fetching.total() >= self.at_once:
            raise LinkError("the app is downloading other links right now: try again in a few seconds, or upload "
                            "the photo instead")
        self.fetching[client] += 1
        try:
            yield
        finally:
            self.fetching[client] -= 1
            if not self.fetching[client]:
                del self.fetching[client]

    async def _follow(self, url: str, folder: Path) -> Path:
        for _ in range(MAX_REDIRECTS + 1):
            location = await self._get(url, folder)
            if isinstance(location, Path):
                return location
            url = location
        raise LinkError(f"the link redirects more than {MAX_REDIRECTS} times")

    async def _get(self, url: str, folder: Path) -> Path | str:
        """One hop: the downloaded file, or the URL it redirects to."""
        parsed = parse_link(url)
        address = await self.resolve(parsed.host, parsed.port or {"http": 80, "https": 443}[parsed.scheme])
        try:
            async with httpx.AsyncClient(transport=safehttpx.AsyncSecureTransport(address), trust_env=False,
                                         timeout=self.seconds_per_request) as client:
                async with client.stream("GET", parsed) as response:
                    self.check_peer(response, url)
                    if response.is_redirect:
                        return urljoin(url, response.headers["location"])
                    if response.status_code != 200:
                        raise LinkError(f"the link {url} answered HTTP {response.status_code}")
                    return await self._save(response, url, folder)
        except httpx.HTTPError as error:
            raise LinkError(f"the link {url} cannot be fetched ({type(error).__name__}: {error})") from None

    async def resolve(self, host: str, port: int) -> str:
        """The address to connect to: `host`'s, if every address it resolves to is public."""
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            raise LinkError(f"the host {host} cannot be found ({error})") from None
        addresses = [sockaddr[0] for *_, sockaddr in found]
        refused = [address for address in addresses if not is_public(address, self.also_allowed)]
        if refused or not addresses:
            raise LinkError(f"the host {host} is at {', '.join(refused) or 'no address'}, not a public web "
                            "address (only public web addresses are fetched)")
        return addresses[0]

    def check_peer(self, response: httpx.Response, url: str) -> None:
        """The address the connection actually reached is public too (whatever the resolver said)."""
        peer = response.extensions["network_stream"].get_extra_info("server_addr")
        if peer is None or not is_public(peer[0], self.also_allowed):
            raise LinkError(f"the link {url} reached {peer[0] if peer else 'an unknown address'}, not a public "
                            "web address (only public web addresses are fetched)")

    async def _save(self, response: httpx.Response, url: str, folder: Path) -> Path:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise LinkError(f"the photo at {url} is over {megabytes(self.max_bytes)}")
        target = folder / sha256(url.encode()).hexdigest()[:32] / file_name(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as part:
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise LinkError(f"the photo at {url} is over {megabytes(self.max_bytes)}")
                    part.write(chunk)
            except BaseException:
                os.unlink(part.name)
                raise
        os.replace(part.name, target)  # whole files only: two requests may fetch the same link at once
        return target


def parse_link(url: str) -> httpx.URL:
    """`url` as an http(s) URL with a host; LinkError saying why not."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as error:
        raise LinkError(f"{url!r:.200} is not a valid web address ({error})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise LinkError(f"{url!r:.200} is not a web address (http:// or https:// and a host)")
    host = parsed.raw_host.decode("ascii")  # an international name is in its xn-- form here
    if not HOST_NAME.fullmatch(host) or not 0 < (parsed.port or 80) < 65536:
        raise LinkError(f"{url!r:.200} is not a valid web address (host {host!r:.100}, port {parsed.port})")
    return parsed


def file_name(url: str) -> str:
    """The file's name in the link, as a safe single path component."""
    name = PurePosixPath(httpx.URL(url).path).name
    return "".join(c for c in name if c.isalnum() or c in "._-").lstrip(".")[:100] or "photo"
