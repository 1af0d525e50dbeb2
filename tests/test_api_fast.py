"""The API relay on the fast path (gateway/relay/fast.py, gateway/relay/fastform.py): which ``/api`` requests
take it, and that what the caller and the endpoint see is byte for byte what aiohttp's path gives.

Each differential test sends the same raw requests to a gateway with the fast path and to one without it
(``gateway.access_log`` set), both relaying to one raw TCP endpoint that records the exact bytes it
receives, and requires identical answers (``Date`` aside) and identical bytes at the endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.relay.fast import parse_head
from gateway.security.passwords import hash_password

from .fastgw import Gateway, Start, exchange, normal, start, status_of

__all__ = ["start"]  # the fixture (tests/fastgw.py), used here

JSON = b'{"name": "\xe5\xb1\xb1\xe7\x94\xb0", "city": "131016", "pad": "' + b"x" * 900 + b'"}'
LOGIN = b"Authorization: Basic " + base64.b64encode(b"alice:secret-pw")


def api(method: bytes, target: bytes, *headers: bytes, body: bytes | None = None) -> bytes:
    """A raw request (``X-Message-Id: m-1``); ``body`` ``None``: no body and no Content-Length, ``b""``:
    ``Content-Length: 0``."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: gw", b"X-Message-Id: m-1", *headers]
    if body is not None:
        lines += [b"Content-Type: application/json", b"Content-Length: " + str(len(body)).encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


class RawEndpoint:
    """An HTTP/1.1 endpoint on loopback that keeps every request's exact bytes and answers JSON (in cp932
    with ``charset=Shift_JIS`` under ``/sjis``)."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.seen.append(head + body)
                target = head.split(b" ", 2)[1]
                if b"/sjis" in target:
                    answer, kind = '{"名前": "山田"}'.encode("cp932"), b"application/json; charset=Shift_JIS"
                else:
                    answer = json.dumps({"got": target.decode(), "size": len(body)}).encode()
                    kind = b"application/json"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nX-Up: 1\r\nContent-Length: "
                             + str(len(answer)).encode() + b"\r\n\r\n" + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[RawEndpoint]:
    raw = RawEndpoint()
    await raw.start()
    yield raw
    assert raw.server is not None
    raw.server.close()


async def both(start: Start, tmp_path: Path, config: dict[str, object]) -> tuple[Gateway, Gateway]:
    fast = await start({**config, "gateway": {}})
    slow = await start({**config, "gateway": {"access_log": str(tmp_path / "access.log")}})
    assert slow.site.fast is None
    return fast, slow


async def same(fast: Gateway, slow: Gateway, endpoint: RawEndpoint, *requests: bytes) -> list[bytes]:
    """Each request on both gateways, one connection each: the same answers and the same bytes upstream."""
    answers = []
    for raw in requests:
        before = len(endpoint.seen)
        got = [normal(await exchange(gw, raw, quiet=0.3)) for gw in (fast, slow)]
        assert got[0] == got[1], (raw[:120], got)
        upstream = [normal(seen) for seen in endpoint.seen[before:]]
        half = len(upstream) // 2
        assert upstream[:half] == upstream[half:], upstream
        answers.append(got[0])
    return answers


def test_the_api_fast_form() -> None:
    def head(raw: bytes) -> bytes:
        return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"

    get = parse_head(head(api(b"GET", b"/api/ep/residents/1?city=131016&x=a-b.c~d")))
    assert get is not None and get.api and (get.method, get.ap, get.length, get.content_length) == (
        "GET", "ep", 0, None)
    assert get.target == "/api/ep/residents/1?city=131016&x=a-b.c~d"
    post = parse_head(head(api(b"POST", b"/api/ep/r", body=JSON)))
    assert post is not None and post.length == len(JSON) and post.content_type == "application/json"
    for taken in (api(b"GET", b"/api/ep"), api(b"GET", b"/api/ep/"), api(b"DELETE", b"/api/ep/a/b/"),
                  api(b"GET", b"/api/ep/x", body=b""), api(b"PUT", b"/api/ep/x", body=b"{}"),
                  api(b"PATCH", b"/api/ep/x?", body=b"{}")):
        assert parse_head(head(taken)) is not None, taken
    assert parse_head(head(api(b"GET", b"/api/ep/x")), api=False) is None
    for refused in (api(b"GET", b"/api/ep/../x"), api(b"GET", b"/api/ep/%2e%2e/x"), api(b"GET", b"/api/ep//x"),
                    api(b"GET", b"/api/ep/a\\b"), api(b"GET", b"/api/ep/./x"), api(b"GET", b"/api/ep/.x"),
                    api(b"GET", b"/api/../soap"), api(b"GET", b"/api//ep"), api(b"GET", b"/api/"),
                    api(b"GET", b"/api/ep/x?a=%00"), api(b"GET", b"/api/ep/x?a=<b>"), api(b"GET", b"/api/ep/x#f"),
                    api(b"GET", b"/api/ep/x", body=b"{}"), api(b"DELETE", b"/api/ep/x", body=b"1"),
                    api(b"POST", b"/api/ep/x", body=b""), api(b"POST", b"/api/ep/x", body=b"x" * (64 * 1024 + 1)),
                    api(b"HEAD", b"/api/ep/x"), api(b"OPTIONS", b"/api/ep/x"), api(b"get", b"/api/ep/x"),
                    api(b"GET", b"/api/ep/x", b"Transfer-Encoding: chunked"), api(b"GET", b"/api/ep/x", b"X: \x80"),
                    api(b"GET", b"/api/ep/x", b"Content-Length: 00"),
                    api(b"GET", b"/api/ep/x").replace(b"HTTP/1.1", b"HTTP/1.0"),
                    api(b"GET", b"/api/ep/x").replace(b"Host: gw\r\n", b"")):
        assert parse_head(head(refused)) is None, refused[:200]


@pytest.mark.parametrize("method", [b"GET", b"DELETE", b"POST", b"PUT", b"PATCH"])
async def test_each_method_is_byte_for_byte_aiohttps(method: bytes, start: Start, endpoint: RawEndpoint,
                                                    tmp_path: Path) -> None:
    fast, slow = await both(start, tmp_path, {"endpoints": {"ep": {"url": f"{endpoint.url}/base"}}})
    body = JSON if method in (b"POST", b"PUT", b"PATCH") else None
    answers = await same(fast, slow, endpoint, api(method, b"/api/ep/residents/42?city=131016&page=2", body=body),
                         api(method, b"/api/ep", body=body), api(method, b"/api/ep/a/b/", body=body))
    assert [status_of(a) for a in answers] == [200, 200, 200], answers
    assert fast.fast.exchanges == 3 and fast.fast.handovers == 0
    first = endpoint.seen[0]
    assert first.startswith(method + b" /base/residents/42?city=131016&page=2 HTTP/1.1\r\n"), first[:200]
    if body is not None:
        assert first.endswith(b"\r\n\r\n" + JSON)
    assert endpoint.seen[4].startswith(method + b" /base/a/b/ HTTP/1.1\r\n")


async def test_a_bodyless_request_with_content_length_zero(start: Start, endpoint: RawEndpoint,
                                                          tmp_path: Path) -> None:
    fast, slow = await both(start, tmp_path, {"endpoints": {"ep": {"url": endpoint.url}}})
    answers = await same(fast, slow, endpoint, api(b"GET", b"/api/ep/x", body=b""),
                         api(b"DELETE", b"/api/ep/x", body=b""))
    assert [status_of(a) for a in answers] == [200, 200] and fast.fast.exchanges == 2


async def test_problems_are_byte_for_byte_aiohttps(start: Start, endpoint: RawEndpoint, tmp_path: Path) -> None:
    fast, slow = await both(start, tmp_path, {"endpoints": {"ep": {"url": endpoint.url},
                                                            "down": {"url": "http://127.0.0.1:9/x", "timeout": 2}}})
    answers = await same(fast, slow, endpoint, api(b"GET", b"/api/nowhere/x"), api(b"POST", b"/api/down/x", body=JSON),
                         api(b"GET", b"/api/ep/x", b"Via: 1.1 gw"), api(b"GET", b"/api/ep/x", b"Content-Type: a/b;;;"),
                         api(b"GET", b"/api/ep/x").replace(b"m-1", b"z" * 300))
    assert [status_of(a) for a in answers] == [404, 502, 508, 200, 400], answers
    assert all(b"application/problem+json" in a for a in answers[:3])
    assert fast.fast.exchanges == 5 and fast.fast.handovers == 0


async def test_a_forbidden_destination_for_a_remembered_client(start: Start, endpoint: RawEndpoint,
                                                              tmp_path: Path) -> None:
    fast, slow = await both(start, tmp_path, {
        "endpoints": {"ep": {"url": endpoint.url}, "other": {"url": endpoint.url}},
        "clients": {"alice": {"basic": {"user": "alice", "password_hash": hash_password("secret-pw")},
                              "allow": ["other"]}}})
    # The first login is checked on aiohttp's path, then remembered: the second request is the fast path's.
    answers = await same(fast, slow, endpoint, api(b"GET", b"/api/ep/x", LOGIN), api(b"GET", b"/api/ep/x", LOGIN),
                         api(b"GET", b"/api/other/x", LOGIN), api(b"GET", b"/api/ep/x"))
    assert [status_of(a) for a in answers] == [403, 403, 200, 401], answers
    assert b'"code": "Forbidden"' in answers[1]
    assert fast.fast.exchanges == 2 and fast.fast.handovers == 2
    assert endpoint.seen[0].count(b"X-Bmrgw-Client: alice") == 1 and b"Authorization" not in endpoint.seen[0]


async def test_doubtful_targets_are_handed_to_aiohttp_and_refused_as_before(start: Start, endpoint: RawEndpoint,
                                                                          tmp_path: Path) -> None:
    fast, slow = await both(start, tmp_path, {"endpoints": {"ep": {"url": f"{endpoint.url}/base"}}})
    doubtful = [b"/api/ep/../x", b"/api/ep/%2e%2e/x", b"/api/ep/a/.%2E/b", b"/api/ep//x", b"/api/ep/a%2Fb",
                b"/api/ep/a\\b", b"/api/ep/./x", b"/api/ep/x%00", b"/api//x", b"/api/"]
    answers = await same(fast, slow, endpoint, *(api(b"GET", t) for t in doubtful),
                         api(b"GET", b"/api/ep/%7Euser?q=%20a"))
    assert all(status_of(a) in (400, 404) for a in answers[:-1]), answers
    assert status_of(answers[-1]) == 200 and endpoint.seen[-1].startswith(b"GET /base/~user?q=%20a HTTP/1.1")
    assert fast.fast.exchanges == 0 and fast.fast.handovers == len(doubtful) + 1


async def test_a_converting_endpoint(start: Start, endpoint: RawEndpoint, tmp_path: Path) -> None:
    fast, slow = await both(start, tmp_path, {"endpoints": {"ep": {"url": endpoint.url,
                                                                   "charset": {"encoding": "cp932"}}}})
    answers = await same(fast, slow, endpoint, api(b"POST", b"/api/ep/sjis", body=JSON),
                         api(b"GET", b"/api/ep/sjis?x=1"))
    assert [status_of(a) for a in answers] == [200, 200] and fast.fast.exchanges == 2
    assert answers[1].endswith('{"名前": "山田"}'.encode()), answers[1]
    assert b"charset=Windows-31J" in endpoint.seen[0] and "山田".encode("cp932") in endpoint.seen[0]


async def test_other_methods_are_rate_limited_by_the_api_relay(start: Start, endpoint: RawEndpoint,
                                                              tmp_path: Path) -> None:
    limits = {"limits": {"client_rate": 0.1, "client_burst": 2}}
    fast = await start({"gateway": limits, "endpoints": {"ep": {"url": endpoint.url}}})
    slow = await start({"gateway": {**limits, "access_log": str(tmp_path / "a.log")},
                        "endpoints": {"ep": {"url": endpoint.url}}})
    answers = await same(fast, slow, endpoint, *[api(b"GET", b"/api/ep/x")] * 3, api(b"POST", b"/api/ep/x", body=JSON))
    assert [status_of(a) for a in answers] == [200, 200, 429, 429], answers
    assert b"Retry-After" in answers[2]
    assert fast.fast.exchanges == 3 and fast.fast.handovers == 1


async def test_framing_tricks_on_api_are_answered_as_aiohttp_answers_them(start: Start, endpoint: RawEndpoint,
                                                                         tmp_path: Path) -> None:
    fast, slow = await both(start, tmp_path, {"endpoints": {"ep": {"url": endpoint.url}}})
    get = api(b"GET", b"/api/ep/x")
    tricks = [
        get + get,  # pipelined: aiohttp's to parse
        get.replace(b"\r\n\r\n", b"\r\n\r\nGET /api/ep/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"),
        api(b"GET", b"/api/ep/x", b"Content-Length: 5") + b"hello",  # a GET with a body
        api(b"POST", b"/api/ep/x", b"Content-Length: 2", body=JSON),  # two lengths
        api(b"POST", b"/api/ep/x", b"Transfer-Encoding: chunked", body=JSON),
        api(b"DELETE", b"/api/ep/x", b"Transfer-Encoding: chunked") + b"0\r\n\r\n",
        get.replace(b"Host: gw", b"Host: gw\r\n folded"),
        get.replace(b"\r\nHost", b"\nHost"),
        get.replace(b"/api/ep/x", b"http://gw/api/ep/x"),
        get.replace(b"/api/ep/x", b"/api/ep/x?a=\xe5\xb1\xb1"),
        get.replace(b"X-Message-Id: m-1", b"X-Message-Id: m-1\r\nConnection: close"),
    ]
    answers = await same(fast, slow, endpoint, *tricks)
    assert fast.fast.exchanges == 0 and fast.fast.handovers == len(tricks), answers
