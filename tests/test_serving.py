"""What one request may cost: the request-size middleware, and the capped download of a linked photo.

The web server here (tests/link_site.py) listens on 127.0.0.1, which the fetchers of most tests are told to allow
(`also_allowed`); the refusals of other addresses run the real check on literal addresses, which resolve without
any traffic.
"""

import asyncio
import ipaddress
import time

import httpx
import pytest
from fastapi import FastAPI
from link_site import link_site
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from catsdogs.serving import LinkError, LinkFetcher, RequestSizeLimit, is_public


async def echo_size(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def limited_app() -> Starlette:
    routes = [Route("/gradio_api/queue/join", echo_size, methods=["POST"]),
              Route("/gradio_api/upload", echo_size, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(RequestSizeLimit, max_bytes=1000, upload_bytes=5000)])


async def post(path: str, body, headers: dict | None = None, app=None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app or limited_app())
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


def test_a_chunked_body_over_the_limit_gets_413_from_an_app_that_parses_json():
    """FastAPI (Gradio's routes) turns any error while reading a body into HTTP 400 'error parsing the body'."""
    api = FastAPI(middleware=[Middleware(RequestSizeLimit, max_bytes=1000, upload_bytes=5000)])

    @api.post("/gradio_api/queue/join")
    def join(body: dict) -> int:
        return len(body)

    async def chunks():
        yield b'{"data": "'
        for _ in range(3):
            yield b"x" * 400
        yield b'"}'
    refused = asyncio.run(post("/gradio_api/queue/join", chunks(), {"content-type": "application/json"}, api))
    assert (refused.status_code, refused.text[:51]) == (413, "Request too large: this app takes at most 1000 byte")
    assert asyncio.run(post("/gradio_api/queue/join", b'{"data": 1}', {"content-type": "application/json"},
                            api)).text == "1"


LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.fixture
def photo_site(tmp_path):
    """tests/link_site.py on 127.0.0.1 (which the fetchers of these tests are told to allow)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "small.jpg").write_bytes(b"j" * 1000)
    with link_site(tmp_path / "site") as url:
        yield url


def fetch(url: str, folder, fetcher: LinkFetcher | None = None, client: str = "a visitor"):
    fetcher = fetcher or LinkFetcher(max_bytes=4000, seconds_per_request=10, also_allowed=LOOPBACK)
    return asyncio.run(fetcher.visit(client).fetch(url, folder))


def test_a_linked_photo_is_downloaded_up_to_the_size_limit(photo_site, tmp_path):
    path = fetch(f"{photo_site}/small.jpg", tmp_path / "cache")
    assert path.read_bytes() == b"j" * 1000 and path.name == "small.jpg"
    assert fetch(f"{photo_site}/moved", tmp_path / "cache").read_bytes() == b"j" * 1000
    for big in ("sized/4001", "unsized/5000"):
        with pytest.raises(LinkError, match="is over 4000 bytes"):
            fetch(f"{photo_site}/{big}", tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == ["small.jpg"]  # no partial file
    with pytest.raises(LinkError, match="answered HTTP 404"):
        fetch(f"{photo_site}/none.jpg", tmp_path / "cache")


NOT_PUBLIC = [
    "http://100.100.100.200/latest/meta-data/",  # shared address space (RFC 6598): a cloud's metadata service
    "http://100.64.0.1/", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:9/cat.jpg",
    "http://10.0.0.1/", "http://192.168.1.1/", "http://172.16.0.1/", "http://0.0.0.0/", "http://224.0.0.1/",
    "http://192.0.2.1/", "http://[::1]/", "http://[fe80::1]/", "http://[fc00::1]/", "http://[2001:db8::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:100.100.100.200]/",  # IPv4-mapped
    "http://[2002:7f00:1::]/", "http://[64:ff9b::a9fe:a9fe]/",  # 6to4 and NAT64 spellings of private IPv4
    "http://0x7f.1/", "http://2130706433/", "http://127.1/", "http://localhost/",  # other spellings of loopback
]


@pytest.mark.parametrize("url", NOT_PUBLIC)
def test_a_link_to_an_address_that_is_not_public_is_refused(url, tmp_path):
    fetcher = LinkFetcher(max_bytes=4000, seconds_per_request=10)  # nothing but public addresses
    with pytest.raises(LinkError, match=r"not a public web address \(only public web addresses are fetched\)"):
        fetch(url, tmp_path, fetcher)


def test_the_public_check_takes_globally_routable_addresses_in_any_spelling():
    assert all(map(is_public, ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"]))
    assert not any(map(is_public, ["100.100.100.200", "::ffff:100.64.0.1", "fe80::1%eth0", "64:ff9b::a00:1"]))


def test_every_redirect_and_the_connected_address_are_checked(photo_site, tmp_path, monkeypatch):
    to = f"{photo_site}/moved?to=http://100.100.100.200/latest/meta-data/"
    with pytest.raises(LinkError, match="the host 100.100.100.200 is at 100.100.100.200, not a public"):
        fetch(to, tmp_path)
    strict = LinkFetcher(max_bytes=4000, seconds_per_request=10)

    async def fooled(host: str, port: int) -> str:  # a resolver answering a private address as if public
        return "127.0.0.1"
    monkeypatch.setattr(strict, "resolve", fooled)
    with pytest.raises(LinkError, match="reached 127.0.0.1, not a public web address"):
        fetch(f"{photo_site}/small.jpg", tmp_path, strict)


@pytest.mark.parametrize("url, message", [
    ("http://0177.0.0.1/a.jpg", "is not a valid web address"), ("http://[::1/a.jpg", "is not a valid web address"),
    ("http://exa mple.com/", "is not a valid web address"), ("http://example.com:99999/", "not a valid web address"),
    ("ftp://example.com/a.jpg", "is not a web address"), ("http:///a.jpg", "is not a web address"),
    ("http://", "is not a web address"),
])
def test_a_malformed_link_gets_a_message(url, message, tmp_path):
    with pytest.raises(LinkError, match=message):
        fetch(url, tmp_path)


def test_the_links_of_a_request_have_a_total_time_limit(photo_site, tmp_path):
    fetcher = LinkFetcher(max_bytes=4000, seconds_per_request=1.5, also_allowed=LOOPBACK)
    started = time.monotonic()
    with pytest.raises(LinkError, match="took longer than 2 s to download"):  # each read takes only 0.2 s
        fetch(f"{photo_site}/drip/300?every=0.2", tmp_path / "cache", fetcher)
    assert time.monotonic() - started < 3
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # the partial download is deleted

    async def one_request() -> None:  # a request's links share its time
        visit = fetcher.visit("a visitor")
        await asyncio.sleep(1.6)
        await visit.fetch(f"{photo_site}/small.jpg", tmp_path)
    with pytest.raises(LinkError, match="took longer than"):
        asyncio.run(one_request())


def test_links_download_a_few_at_once_and_one_per_visitor(photo_site, tmp_path):
    fetcher = LinkFetcher(max_bytes=4000, seconds_per_request=1, at_once=2, per_client=1, also_allowed=LOOPBACK)
    drip, small = f"{photo_site}/drip/300?every=0.2", f"{photo_site}/small.jpg"

    async def visitors() -> list:
        slow = [asyncio.create_task(fetcher.visit(client).fetch(drip, tmp_path)) for client in "AB"]
        await asyncio.sleep(0.3)
        now = await asyncio.gather(fetcher.visit("A").fetch(small, tmp_path),
                                   fetcher.visit("C").fetch(small, tmp_path), return_exceptions=True)
        return [*now, *await asyncio.gather(*slow, return_exceptions=True)]
    started = time.monotonic()
    same_visitor, third_visitor, *slow = asyncio.run(visitors())
    assert time.monotonic() - started < 2
    assert "another link of yours is still downloading" in str(same_visitor)  # refused at once, not queued
    assert "the app is downloading other links right now" in str(third_visitor)
    assert all("took longer than 1 s" in str(answer) for answer in slow), slow
    assert not fetcher.fetching  # every slot given back
    assert fetch(small, tmp_path, fetcher).read_bytes() == b"j" * 1000
