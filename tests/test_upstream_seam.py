"""The relay reaches endpoints only through :class:`~gateway.relay.upstream.Upstream`.

An in-memory upstream, passed in ``AppOptions.upstream`` exactly where the
real :class:`~gateway.relay.upstream.HttpUpstream` goes, answers without any
socket behind the gateway: what the relay sends out, and what it does with a
reply that breaks off, can be seen directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from pathlib import Path

import aiohttp

from gateway.errors import EndpointUnavailable
from gateway.relay.upstream import Reply, Upstream
from gateway.serve.app import AppOptions, make_app
from routing.config import parse_config
from routing.table import Route

from .conftest import message, soap11_headers, start_app

ANSWER = (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
          b"<s:Body><ok/></s:Body></s:Envelope>")


class MemoryReply:
    """A reply held in memory; ``fail_after`` chunks, the body breaks off as a real endpoint's can."""

    def __init__(self, body: bytes, *, chunk: int = 1 << 20, fail_after: int | None = None,
                 declared: int | None = None) -> None:
        self.status = 200
        self.reason: str | None = "OK"
        self.headers: Mapping[str, str] = {"Content-Type": "text/xml; charset=utf-8"}
        self.content_length: int | None = declared if declared is not None else len(body)
        self._parts = [body[i:i + chunk] for i in range(0, len(body), chunk)]
        self._fail_after = fail_after
        self.released: list[Callable[[], None]] = []
        self.done = False

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        for number, part in enumerate(self._parts):
            if self._fail_after is not None and number == self._fail_after:
                raise EndpointUnavailable("memory endpoint broke off its answer")
            yield part

    def release(self) -> None:
        self.done = True
        for callback in self.released:
            callback()

    def when_released(self, callback: Callable[[], None]) -> None:
        self.released.append(callback)


class MemoryUpstream:
    """Records each request and answers with the next reply it was given."""

    def __init__(self, replies: list[MemoryReply]) -> None:
        self.replies = replies
        self.sent: list[tuple[Route, dict[str, str], bytes]] = []

    async def post(self, route: Route, headers: Mapping[str, str], body: bytes | AsyncIterable[bytes]) -> Reply:
        data = body if isinstance(body, bytes) else b"".join([chunk async for chunk in body])
        self.sent.append((route, dict(headers), data))
        return self.replies.pop(0)

    async def close(self) -> None:
        pass


async def relay_through(upstream: MemoryUpstream, tmp_path: Path, body: bytes) -> tuple[int, bytes | None]:
    config = parse_config({"gateway": {"name": "gw-seam", "db": f"sqlite:///{tmp_path}/seam.db"},
                           "endpoints": {"demo": {"url": "http://127.0.0.1:9/never-called"}}},
                          source=tmp_path / "endpoints.yaml")
    seam: Callable[[], Upstream] = lambda: upstream  # noqa: E731
    runner, base = await start_app(make_app(config, AppOptions(watch_config=False, upstream=seam)))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/soap/demo", data=body, headers=soap11_headers()) as response:
                try:
                    return response.status, await response.read()
                except aiohttp.ClientPayloadError:
                    return response.status, None
    finally:
        await runner.cleanup()


async def test_the_relay_sends_through_the_seam_and_passes_the_reply_back(tmp_path: Path) -> None:
    reply = MemoryReply(ANSWER)
    upstream = MemoryUpstream([reply])
    request = message("valid/soap11-no-header.xml")
    status, body = await relay_through(upstream, tmp_path, request)
    assert (status, body) == (200, ANSWER)
    [(route, headers, sent)] = upstream.sent
    assert route.destination == "demo" and route.url == "http://127.0.0.1:9/never-called"
    assert sent == request
    assert headers["Via"].endswith("gw-seam") and headers["X-Message-Id"]
    assert reply.done  # the relay gave the reply back


async def test_a_reply_that_breaks_off_mid_stream_cuts_the_callers_answer(tmp_path: Path) -> None:
    big = ANSWER + b" " * (1 << 20)  # over SMALL_BODY: streamed
    reply = MemoryReply(big, chunk=64 * 1024, fail_after=3)
    status, body = await relay_through(MemoryUpstream([reply]), tmp_path, message("valid/soap11-no-header.xml"))
    assert status == 200 and body is None  # the caller sees an incomplete answer, not a complete wrong one
    assert reply.done


async def test_a_small_reply_that_breaks_off_becomes_a_fault(tmp_path: Path) -> None:
    reply = MemoryReply(ANSWER, fail_after=0)
    status, body = await relay_through(MemoryUpstream([reply]), tmp_path, message("valid/soap11-no-header.xml"))
    assert status == 500 and body is not None and b"EndpointUnavailable" in body
