"""``/api`` requests with small bodies go over the relay's keep-alive pool (gateway/relay/pool.py):
the bytes an endpoint receives are aiohttp ClientSession's bytes (recorded in the same test from a
session set up as ApiUpstream's was), a kept-alive connection the endpoint dropped is retried only
under aiohttp's rule, and failures are the same gateway errors with the same words."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import pytest

from gateway.api.upstream import ApiRoute, ApiUpstream, target_url
from gateway.errors import GatewayError
from gateway.relay.upstream import translate

from .conftest import free_port
from .faulty import read_request

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Recorder:
    """A raw TCP endpoint: records each request's exact bytes (head, and the body its Content-Length
    announces), answers 200 ``ok`` and keeps the connection; ``drop_after`` closes a connection
    without answering once it served that many requests (a close crossing the next request)."""

    def __init__(self, drop_after: int | None = None) -> None:
        self.got: list[bytes] = []
        self.connections = 0
        self.drop_after = drop_after
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        served = 0
        try:
            while True:
                self.got.append(await read_request(reader))
                if self.drop_after is not None and served >= self.drop_after:
                    break
                served += 1
                writer.write(_OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


    async def stop(self, server: asyncio.Server) -> None:
        server.close()
        for writer in self.writers:
            writer.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # the handlers see their connections end


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    yield rec, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    await rec.stop(server)


@pytest.fixture
async def reference() -> AsyncIterator[aiohttp.ClientSession]:
    """The session ApiUpstream used for every request before the pool (gateway/api/upstream.py)."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=15), auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None))
    yield session
    await session.close()


@pytest.fixture
async def upstream() -> AsyncIterator[ApiUpstream]:
    up = ApiUpstream()
    yield up
    await up.close()


def route(url: str, method: str, path: str = "items/7", query: str = "", timeout: float = 5.0) -> ApiRoute:
    return ApiRoute(destination="kaigo", url=url, timeout=timeout, endpoint="kaigo", method=method, path=path,
                    query=query)


async def old_way(session: aiohttp.ClientSession, r: ApiRoute, headers: Mapping[str, str], body: bytes) -> bytes:
    """What the old path did (ApiUpstream._send for a body up to 64 KiB), answer read whole."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=r.timeout, sock_read=r.timeout)
    try:
        async with await session.request(r.method, target_url(r), data=body or None, headers=headers,
                                         timeout=timeout, allow_redirects=False) as resp:
            return await resp.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise translate(exc, r) from exc


async def new_way(up: ApiUpstream, r: ApiRoute, headers: Mapping[str, str], body: bytes) -> bytes:
    reply = await up.post(r, headers, body)
    try:
        return await reply.read()
    finally:
        reply.release()


_CASES = [
    (method, body, query, length)
    for method in ("GET", "DELETE", "POST", "PUT", "PATCH")
    for body, query, length in ((b"", "", None), (b"", "a=1&b=%E6%97%A5", None), (b"", "", "0"),
                                (b'{"n": 1}', "x=1", "8"), (b"j" * 65536, "", "65536"))
]


@pytest.mark.parametrize(("method", "body", "query", "length"), _CASES)
async def test_the_endpoint_receives_the_bytes_aiohttp_sent(method: str, body: bytes, query: str, length: str | None,
                                                            recorder: tuple[Recorder, str],
                                                            reference: aiohttp.ClientSession,
                                                            upstream: ApiUpstream) -> None:
    rec, url = recorder
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "kaigo/1.0 (日本)",
               "If-Match": '"v7"'}
    if length is not None:
        headers["Content-Length"] = length
    headers |= {"Via": "1.1 gw-api", "X-Message-Id": "m-1"}
    r = route(f"{url}/base/", method, query=query)
    for _ in range(2):  # the second goes over a kept-alive connection
        assert await old_way(reference, r, headers, body) == b"ok"
        assert await new_way(upstream, r, headers, body) == b"ok"
    assert len(rec.got) == 4 and rec.got[0] == rec.got[1] == rec.got[2] == rec.got[3], rec.got[:2]
    assert rec.got[0].startswith(f"{method} /base/items/7{'?' + query if query else ''} HTTP/1.1\r\n".encode())
    sent_length = b"\r\nContent-Length: " in rec.got[0]
    assert sent_length == (bool(body) or length is not None or method != "GET"), rec.got[0]
    assert rec.connections == 2, "each way kept its connection alive"


async def test_the_pool_carries_small_bodies_and_not_big_ones(recorder: tuple[Recorder, str],
                                                              upstream: ApiUpstream) -> None:
    rec, url = recorder
    small = await upstream.post(route(url, "PUT"), {"Content-Length": "3"}, b"abc")
    assert type(small).__name__ == "PooledReply"
    small.release()
    big = await upstream.post(route(url, "PUT"), {"Content-Length": "65537"}, b"b" * 65537)
    assert type(big).__name__ == "HttpReply"
    big.release()
    assert [len(g) for g in rec.got][0] < 100 and rec.got[1].endswith(b"b" * 65537)


# -- a kept-alive connection the endpoint dropped ------------------------------------------------


@contextlib.asynccontextmanager
async def sending(rec: Recorder, method: str, sender: str) -> AsyncIterator[Callable[[], Awaitable[bytes]]]:
    """``rec`` serving on a loopback port, and what sends one ``method`` request with an empty JSON body
    to it: through the relay's pool (``sender`` ``"pool"``) or aiohttp's client, each kept alive."""
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    up = ApiUpstream()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=15),
                                    skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"))
    try:
        r = route(url, method)
        yield (lambda: new_way(up, r, {}, b"{}")) if sender == "pool" else (lambda: old_way(session, r, {}, b"{}"))
    finally:
        await up.close()
        await session.close()
        await rec.stop(server)


async def idle_close_case(method: str, sender: str) -> tuple[int, int]:
    """The endpoint closes its idle keep-alive connection before the next request: that request goes
    on a new connection, for every method (the close was seen, nothing was sent)."""
    rec = Recorder()
    async with sending(rec, method, sender) as send:
        assert await send() == b"ok"
        for writer in rec.writers:
            writer.close()
        await asyncio.sleep(0.1)
        assert await send() == b"ok"
        return len(rec.got), rec.connections


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH"])
async def test_an_idle_connection_the_endpoint_closed_is_not_used(method: str) -> None:
    assert await idle_close_case(method, "pool") == await idle_close_case(method, "aiohttp") == (2, 2)


async def crossing_close_case(method: str, sender: str) -> tuple[str, int, int]:
    """The endpoint answers one request and drops the connection when the next arrives, unanswered:
    the outcome (answer or error words), the requests it received and the connections opened."""
    rec = Recorder(drop_after=1)
    async with sending(rec, method, sender) as send:
        assert await send() == b"ok"
        try:
            outcome = (await send()).decode()
        except GatewayError as exc:
            outcome = f"{exc.code}: {exc.reason}"
        return outcome, len(rec.got), rec.connections


@pytest.mark.parametrize(("method", "expected"), [
    ("GET", ("ok", 3, 2)), ("DELETE", ("ok", 3, 2)), ("PUT", ("ok", 3, 2)),
    ("POST", ("EndpointUnavailable: kaigo closed the connection without answering", 2, 1)),
    ("PATCH", ("EndpointUnavailable: kaigo closed the connection without answering", 2, 1)),
])
async def test_a_close_crossing_the_request_is_retried_only_when_idempotent(method: str,
                                                                            expected: tuple[str, int, int]) -> None:
    """GET, PUT, DELETE: sent once more on a new connection (3 arrivals over 2 connections); POST, PATCH:
    the 502, never a second copy — as aiohttp's ClientSession did."""
    assert await crossing_close_case(method, "pool") == await crossing_close_case(method, "aiohttp") == expected


# -- failures: the same gateway errors as the old path -----------------------------------------


async def same_error(up: ApiUpstream, session: aiohttp.ClientSession, r: ApiRoute) -> str:
    with pytest.raises(GatewayError) as pooled:
        await new_way(up, r, {}, b"")
    with pytest.raises(GatewayError) as before:
        await old_way(session, r, {}, b"")
    assert (type(pooled.value), pooled.value.reason) == (type(before.value), before.value.reason)
    return f"{pooled.value.code}: {pooled.value.reason}"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_refused_connection_is_the_same_error(method: str, upstream: ApiUpstream,
                                                    reference: aiohttp.ClientSession) -> None:
    said = await same_error(upstream, reference, route(f"http://127.0.0.1:{free_port()}", method))
    assert said.startswith("EndpointUnavailable") and "cannot connect" in said


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_silent_endpoint_is_the_same_timeout(method: str, upstream: ApiUpstream,
                                                   reference: aiohttp.ClientSession) -> None:
    rec = Recorder()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rec.writers.append(writer)
        await reader.read(1 << 16)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        said = await same_error(upstream, reference,
                                route(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", method, timeout=0.3))
        assert said.startswith("EndpointTimeout")
    finally:
        await rec.stop(server)
