"""The relay's fast path (gateway/relay/fast.py): which requests it takes, and that its answers are aiohttp's.

Each test starts the gateway in this process the way ``bmrgw serve`` does
(:func:`gateway.serve.server.listen`: aiohttp's runner behind ListenSite with
the fast path in front) on a real socket, talks raw HTTP to it, and reads the
fast path's counters to know which way a request went.  The differential
tests send the same requests to a second gateway whose fast path is off
(``gateway.access_log`` set) and require the same bytes back.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from aiohttp import web

from gateway.relay.fast import parse_head
from gateway.security.passwords import hash_password

from .conftest import RecordingBackend, Seen
from .fastgw import Start, exchange, normal, start, status_of
from .records import relay_records

__all__ = ["start"]  # the fixture, used here

ENVELOPE = (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            b'<s:Header><r:Routing xmlns:r="urn:bmrgw:routing:1"><r:To>ep</r:To></r:Routing></s:Header>'
            b'<s:Body><m:Echo xmlns:m="urn:test">hello</m:Echo></s:Body></s:Envelope>')
LOGIN = b"Authorization: Basic " + base64.b64encode(b"alice:secret-pw")


def request(*headers: bytes, body: bytes = ENVELOPE, path: bytes = b"/soap") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)


# -- which requests take it


def test_the_fast_form_is_narrow() -> None:
    def head(raw: bytes) -> bytes:
        return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n"

    assert parse_head(head(request())) is not None
    taken = parse_head(head(request(path=b"/soap/kaigo.v2")))
    assert taken is not None and taken.ap == "kaigo.v2" and taken.length == len(ENVELOPE)
    for refused in (request(b"Transfer-Encoding: chunked"), request(b"Expect: 100-continue"),
                    request(b"Connection: close"), request(b"Content-Encoding: gzip"), request(b"X-A: 1", b"x-a: 2"),
                    request(b"X-Fold: a", b" b"), request(b"X-Nul: a\x00b"), request(b"X-Utf8: \xe5\x90\x8d"),
                    request(path=b"/soap/.."), request(path=b"/soap/a%2Fb"), request(path=b"/soap?x"),
                    request(body=b"x" * (64 * 1024 + 1)), request(body=b""),
                    request().replace(b"HTTP/1.1", b"HTTP/1.0"), request().replace(b"Host: gw\r\n", b""),
                    request().replace(b"text/xml", b"multipart/related"),
                    request().replace(b"Content-Length: ", b"Content-Length: 0"),
                    request().replace(b"\r\nHost", b"\nHost"), request().replace(b"Host:", b"Host :")):
        assert parse_head(head(refused)) is None, refused[:200]


async def test_plain_posts_take_the_fast_path_and_the_rest_aiohttps(start: Start, backend: RecordingBackend) -> None:
    gw = await start({"endpoints": {"ep": {"url": backend.url}}})
    answer = await exchange(gw, request(), request(), pause=0.2)  # two requests on one connection
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer[:300]
    assert gw.fast.exchanges == 2 and gw.fast.handovers == 0
    assert len(backend.seen) == 2 and backend.seen[0].body == ENVELOPE
    assert backend.seen[0].headers["Via"] == "1.1 gw"
    # Then a request of another form on the same connection: aiohttp's from there on.
    answer = await exchange(gw, request(), request(b"Expect: 100-continue"), request(), pause=0.2)
    assert answer.count(b"HTTP/1.1 200 OK") == 3 and b"100 Continue" in answer
    assert gw.fast.exchanges == 3 and gw.fast.handovers == 1
    health = await exchange(gw, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status_of(health) == 200 and gw.fast.handovers == 2


async def test_a_body_in_pieces_and_a_body_that_never_ends(start: Start, backend: RecordingBackend) -> None:
    gw = await start({"gateway": {"client_timeout": 1}, "endpoints": {"ep": {"url": backend.url}}})
    raw = request()
    split = raw.index(b"\r\n\r\n") + 10
    answer = await exchange(gw, raw[:split], raw[split:], pause=0.2)
    assert status_of(answer) == 200 and backend.seen[-1].body == ENVELOPE
    answer = await exchange(gw, raw[:split], quiet=3)
    assert status_of(answer) == 408 and b"RequestTimeout" in answer
    assert gw.fast.exchanges == 2 and gw.fast.handovers == 0


async def test_basic_logins_are_checked_by_aiohttp_then_remembered(start: Start, backend: RecordingBackend) -> None:
    gw = await start({"endpoints": {"ep": {"url": backend.url}},
                      "clients": {"alice": {"basic": {"user": "alice", "password_hash": hash_password("secret-pw")},
                                            "allow": ["ep"]}}})
    first = await exchange(gw, request(LOGIN))
    assert status_of(first) == 200 and gw.fast.handovers == 1 and gw.fast.exchanges == 0
    again = await exchange(gw, request(LOGIN))  # a new connection: the login is remembered
    assert status_of(again) == 200 and gw.fast.exchanges == 1
    assert backend.seen[-1].headers["X-Bmrgw-Client"] == "alice"
    wrong = await exchange(gw, request(b"Authorization: Basic " + base64.b64encode(b"alice:wrong")))
    assert status_of(wrong) == 401 and gw.fast.exchanges == 1
    assert status_of(await exchange(gw, request())) == 401


async def test_a_caller_over_its_rate_is_refused_by_aiohttps_path(start: Start, backend: RecordingBackend) -> None:
    gw = await start({"gateway": {"limits": {"client_rate": 0.1, "client_burst": 2}},
                      "endpoints": {"ep": {"url": backend.url}}})
    statuses = [status_of(await exchange(gw, request())) for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert gw.fast.exchanges == 2 and gw.fast.handovers == 1


async def test_connection_caps_and_clocks_hold_on_the_fast_path(start: Start, backend: RecordingBackend) -> None:
    gw = await start({"gateway": {"header_timeout": 1, "keepalive_timeout": 1,
                                  "limits": {"max_connections": 2}},
                      "endpoints": {"ep": {"url": backend.url}}})
    held = [await asyncio.open_connection(gw.host, gw.port) for _ in range(2)]
    try:
        await asyncio.sleep(0.1)
        refused = await exchange(gw, request())
        assert status_of(refused) == 503 and b"GatewayBusy" in refused
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(1.5)  # the two held connections sent nothing: the header clock closed them
    # A head trickled a byte at a time is cut off like silence.
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    try:
        async def trickle() -> None:
            for byte in request()[:60]:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)
        trickling = asyncio.create_task(trickle())
        assert await asyncio.wait_for(reader.read(), 5) == b""
        trickling.cancel()
    finally:
        writer.close()
    # An answered connection left idle closes after keepalive_timeout.
    answer = await exchange(gw, request(), quiet=3)
    assert status_of(answer) == 200 and answer.endswith(b"<closed>")


def _answers(backend: RecordingBackend) -> None:
    async def behave(request: web.Request, seen: Seen) -> web.StreamResponse:
        kind = request.path.rsplit("/", 1)[-1]
        if kind == "big":
            return web.Response(body=b"<a>" + b"x" * 300_000 + b"</a>", content_type="text/xml")
        if kind == "chunked":
            response = web.StreamResponse(headers={"Content-Type": "text/xml", "X-Up": "1"})
            await response.prepare(request)
            for part in (b"<a>", b"x" * 70_000, b"</a>"):
                await response.write(part)
            await response.write_eof()
            return response
        if kind == "empty":
            return web.Response(status=204, headers={"X-Message-Id": "upstream-id"})
        if kind == "untyped":
            return web.Response(body=b"<a/>", headers={"Content-Type": ""})
        if kind == "odd":
            response = web.Response(status=599, reason="Odd Reason", body=b"<a/>", content_type="text/xml")
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            return response
        return web.Response(body=b"<ok/>", content_type="text/xml")

    backend.behaviour = behave


@pytest.mark.parametrize("kind", ["plain", "big", "chunked", "empty", "untyped", "odd", "nowhere"])
async def test_answers_are_byte_for_byte_aiohttps(kind: str, start: Start, backend: RecordingBackend,
                                                  tmp_path: Path) -> None:
    _answers(backend)
    config = {"endpoints": {"ep": {"url": f"{backend.url}/{kind}"}}}
    fast = await start({**config, "gateway": {}})
    slow = await start({**config, "gateway": {"access_log": str(tmp_path / "access.log")}})
    assert slow.site.fast is None
    raw = request() if kind != "nowhere" else request(body=ENVELOPE.replace(b">ep<", b">nowhere<"))
    answers = [normal(await exchange(gw, raw)) for gw in (fast, slow)]
    assert fast.fast.exchanges == 1
    assert answers[0] == answers[1], answers


async def test_the_answer_waits_for_its_records_and_a_lost_caller_is_logged(start: Start,
                                                                          backend: RecordingBackend) -> None:
    gw = await start({"endpoints": {"ep": {"url": backend.url}}})
    raw = request(b"X-Message-Id: lost-1")
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    writer.write(raw[:-20])  # the body never completes: the caller goes away
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.5)
    assert gw.fast.exchanges == 1 and not backend.seen
    assert status_of(await exchange(gw, request(b"X-Message-Id: after-1"))) == 200
    found = {r.message_id: (r.direction, r.status) for r in await asyncio.to_thread(relay_records, gw.db)
             if r.direction == "response"}
    assert found == {"lost-1": ("response", "fault"), "after-1": ("response", "ok")}, found


async def test_a_partial_head_behind_an_answer_does_not_hold_the_connection(start: Start,
                                                                           backend: RecordingBackend) -> None:
    """Bytes of a next head that arrive while an exchange runs start no header clock (ListenSite starts it
    on bytes between requests); without more bytes the connection closes after keepalive_timeout, as
    aiohttp's does."""
    gw = await start({"gateway": {"header_timeout": 30, "keepalive_timeout": 1},
                      "endpoints": {"ep": {"url": backend.url}}})

    async def slow(request: web.Request, seen: Seen) -> web.StreamResponse:
        await asyncio.sleep(0.5)
        return web.Response(body=b"<ok/>", content_type="text/xml")

    backend.behaviour = slow
    started = asyncio.get_running_loop().time()
    answer = await exchange(gw, request(), b"POST /soap HTTP/1.1\r\nHost: gw\r\n", pause=0.2, quiet=5)
    assert status_of(answer) == 200 and answer.endswith(b"<closed>"), answer[-100:]
    assert asyncio.get_running_loop().time() - started < 4
    assert gw.fast.exchanges == 1 and gw.fast.handovers == 0


async def test_stopping_lets_exchanges_in_flight_finish_and_closes_idle_connections(
        start: Start, backend: RecordingBackend) -> None:
    gw = await start({"gateway": {"drain_timeout": 10}, "endpoints": {"ep": {"url": backend.url}}})

    async def slow(request: web.Request, seen: Seen) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.Response(body=b"<ok/>", content_type="text/xml")

    idle = await exchange(gw, request(b"X-Message-Id: idle-0"), quiet=0.2)
    assert status_of(idle) == 200
    backend.behaviour = slow
    calls = [asyncio.create_task(exchange(gw, request(f"X-Message-Id: m-{i}".encode()), quiet=5)) for i in range(10)]
    while len(backend.seen) < 11:
        await asyncio.sleep(0.02)
    await gw.runner.cleanup()  # what SIGTERM does: stop listening, drain, then the log is flushed and closed
    answers = await asyncio.gather(*calls)
    assert all(status_of(a) == 200 and a.endswith(b"<closed>") for a in answers), [a[-60:] for a in answers]
    assert gw.fast.exchanges == 11 and not gw.fast.connections
    records = await asyncio.to_thread(relay_records, gw.db)
    assert sorted(r.message_id or "" for r in records if r.direction == "response") == sorted(
        ["idle-0", *(f"m-{i}" for i in range(10))])
    assert {r.status for r in records} == {"ok"}


async def test_stopping_drains_both_paths_together_within_drain_timeout(start: Start, backend: RecordingBackend) -> None:
    """An exchange in flight on the fast path and one on aiohttp's (a chunked request is handed over), both
    longer than ``drain_timeout``: both are cut at the one deadline.  The fast path was drained first,
    then aiohttp's connections got a drain_timeout of their own: a stop took twice as long."""
    gw = await start({"gateway": {"drain_timeout": 1.5}, "endpoints": {"ep": {"url": backend.url}}})

    async def hang(request: web.Request, seen: Seen) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(body=b"<late/>", content_type="text/xml")

    backend.behaviour = hang
    chunked = (b"POST /soap HTTP/1.1\r\nHost: gw\r\nContent-Type: text/xml; charset=utf-8\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%b\r\n0\r\n\r\n" % (len(ENVELOPE), ENVELOPE))
    calls = [asyncio.create_task(exchange(gw, raw, quiet=10)) for raw in (request(b"X-Message-Id: fast-1"),
                                                                            chunked.replace(b"Host: gw", b"Host: gw\r\nX-Message-Id: aiohttp-1"))]
    while len(backend.seen) < 2:
        await asyncio.sleep(0.02)
    assert gw.fast.exchanges == 1 and gw.fast.handovers == 1
    began = asyncio.get_running_loop().time()
    await gw.runner.cleanup()
    took = asyncio.get_running_loop().time() - began
    answers = await asyncio.gather(*calls)
    assert 1.4 < took < 2.5, f"stopping took {took:.2f} s with drain_timeout 1.5 s"
    assert all(b" 200 " not in a for a in answers), answers
    records = await asyncio.to_thread(relay_records, gw.db)
    assert sorted((r.message_id, r.direction, r.status) for r in records) == [
        ("aiohttp-1", "request", "ok"), ("aiohttp-1", "response", "error"),
        ("fast-1", "request", "ok"), ("fast-1", "response", "error")], "both are logged as cut off"


@pytest.mark.parametrize("path, accept", [(b"/soap", b""), (b"/soap", b"Accept: text/html"), (b"/api/ep/x", b"")],
                         ids=["soap", "soap-html", "api"])
async def test_a_bug_in_the_exchange_is_answered_as_aiohttp_answers_it(
        start: Start, backend: RecordingBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        path: bytes, accept: bytes) -> None:
    """An exception escaping the exchange (a bug, not the caller's doing) gets aiohttp's 500 — text, or
    HTML when the caller accepts it, problem details under /api — and the connection closes; the fast
    path had cut the connection without a word."""
    from gateway.api.handler import ApiRelay
    from gateway.relay.handler import Relay

    async def broken(self: object, call: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Relay, "exchange", broken)
    monkeypatch.setattr(ApiRelay, "exchange", broken)
    config = {"endpoints": {"ep": {"url": backend.url}}}
    fast = await start(config)
    slow = await start({**config, "gateway": {"access_log": str(tmp_path / "access.log")}})
    raw = request(*([accept] if accept else []), path=path)
    answers = [normal(await exchange(gw, raw)) for gw in (fast, slow)]
    assert answers[0] == answers[1], answers
    assert status_of(answers[0]) == 500 and answers[0].endswith(b"<closed>") and b"a bug" not in answers[0]
    assert fast.fast.exchanges == 1 and fast.fast.handovers == 0


async def test_every_answer_names_the_product_not_the_library_versions(start: Start, backend: RecordingBackend) -> None:
    """``Server: bmrgw`` on every answer — the status page, the router's 404, the console's refusal,
    aiohttp's own 400 for a head it cannot read, a relayed answer.  aiohttp's answers said
    ``Server: Python/3.11 aiohttp/3.14.5``: the versions an attacker looks up vulnerabilities by."""
    gw = await start({"endpoints": {"ep": {"url": backend.url}}})
    answers = {
        "relayed": await exchange(gw, request()),
        "healthz": await exchange(gw, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"),
        "404": await exchange(gw, b"GET /nothing HTTP/1.1\r\nHost: gw\r\n\r\n"),
        "console": await exchange(gw, b"GET /console HTTP/1.1\r\nHost: gw\r\n\r\n"),
        "bad head": await exchange(gw, b"GET / HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n"),
        "bad soap head": await exchange(gw, b"POST /soap HTTP/1.1\r\nHost: gw\r\nContent-Length: x\r\n\r\n"),
    }
    servers = {name: [line for line in answer.split(b"\r\n\r\n")[0].split(b"\r\n") if line.lower().startswith(b"server:")]
               for name, answer in answers.items()}
    assert servers == {name: [b"Server: bmrgw"] for name in answers}, servers
