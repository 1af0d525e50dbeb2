"""Every answer the gateway gives under ``/api`` is problem details (RFC 9457) with the SOAP faults' codes:
the router's 404 and 405, aiohttp's own 400 and 413 for a head it cannot read, and the listen limit's busy
503 — against a real ``bmrgw serve`` process; and hostile request lines never crash it nor come back
unescaped (issue 23)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.relay.limits import api_request

from .conftest import GatewayProcess
from .test_auth import HASH, PASSWORD

Start = Callable[..., GatewayProcess]
#: Cases are files: a request head as sent (bytes, escapes allowed), and what answers it.
HOSTILE = Path(__file__).parent / "data" / "hostile" / "api-heads.txt"


def config(**gateway: Any) -> dict[str, Any]:
    return {"gateway": {"name": "gw-pj", **gateway}, "endpoints": {"kaigo": {"url": "http://127.0.0.1:9/kaigo"}}}


def exchange(port: int, raw: bytes, *, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send ``raw`` on a fresh connection and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        sock.sendall(raw)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    return got


def parsed(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status.split()[1]), headers, body


def problem(answer: bytes, status: int, code: str) -> dict[str, Any]:
    got, headers, body = parsed(answer)
    assert got == status, answer[:300]
    assert headers["content-type"] == "application/problem+json; charset=utf-8", answer[:300]
    assert int(headers["content-length"]) == len(body)
    found = json.loads(body)
    assert isinstance(found, dict)
    assert (found["status"], found["code"], found["title"]) == (status, code, code)
    assert found["type"] == f"urn:bmrgw:fault:1#{code}" and found["gateway"] == "gw-pj"
    return found


def port_of(gw: GatewayProcess) -> int:
    return int(gw.url.rsplit(":", 1)[1])


def head(line: bytes) -> bytes:
    return line + b"\r\nHost: gw\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("method", [b"OPTIONS", b"HEAD", b"TRACE", b"PROPFIND"])
def test_a_method_the_api_does_not_take_is_405_problem_details(gateway_process: Start, method: bytes) -> None:
    gw = gateway_process(config())
    answer = exchange(port_of(gw), head(method + b" /api/kaigo/x HTTP/1.1")[:-2]
                      + b"X-Message-Id: m-405\r\n\r\n")
    status, headers, body = parsed(answer)
    assert status == 405 and headers["allow"] == "DELETE,GET,PATCH,POST,PUT"
    assert headers["content-type"] == "application/problem+json; charset=utf-8"
    assert headers["x-message-id"] == "m-405"
    if method == b"HEAD":
        assert body == b"", "a HEAD answer has no body"
        return
    found = problem(answer, 405, "MalformedMessage")
    assert found["detail"].startswith(f"{method.decode()} is not relayed on /api") and found["message_id"] == "m-405"


@pytest.mark.parametrize("target", [b"/api", b"/api/", b"/api//x", b"/api?x=1"])
def test_an_api_path_no_route_matches_is_404_unknown_destination(gateway_process: Start, target: bytes) -> None:
    gw = gateway_process(config())
    found = problem(exchange(port_of(gw), head(b"GET " + target + b" HTTP/1.1")), 404, "UnknownDestination")
    assert "/api/{ap}/{path}" in found["detail"]


def test_heads_aiohttp_cannot_read_are_problem_details_that_quote_nothing(gateway_process: Start) -> None:
    gw = gateway_process(config())
    port = port_of(gw)
    cases = [line.split(" => ") for line in HOSTILE.read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")]
    assert len(cases) >= 8
    for raw, expected in cases:
        sent = raw.encode("latin-1").decode("unicode_escape").encode("latin-1")
        sent = sent.replace(b"<8K>", b"x" * 9000).replace(b"<20K>", b"a" * 20_000)
        answer = exchange(port, sent)
        if expected == "plain":  # no /api request line could be read: aiohttp's own answer, as before
            assert parsed(answer)[0] == 400 and b"problem+json" not in answer
            continue
        status, code = expected.split()
        found = problem(answer, int(status), code)
        body = parsed(answer)[2]
        assert b"xxxxxxxx" not in body and b"aaaaaaaa" not in body and b"\\u0001" not in body, "nothing echoed"
        assert found["detail"] and "message_id" not in found
        assert set(found) <= {"type", "title", "status", "detail", "code", "gateway", "info", "destination"}
    assert exchange(port, head(b"GET /healthz HTTP/1.1")).startswith(b"HTTP/1.1 200"), "still serving"


def test_the_soap_side_keeps_its_answers(gateway_process: Start) -> None:
    gw = gateway_process(config())
    answer = exchange(port_of(gw), head(b"GET /soap/kaigo HTTP/1.1"))
    assert parsed(answer)[0] == 405 and b"problem+json" not in answer
    answer = exchange(port_of(gw), head(b"GET /apix HTTP/1.1"))
    assert parsed(answer)[0] == 404 and b"problem+json" not in answer, "/apix is not the API relay's"


async def test_connections_over_the_limit_get_503_problem_details_on_api(gateway_process: Start) -> None:
    gw = gateway_process(config(header_timeout=30, limits={"max_connections": 2}))
    port = port_of(gw)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        await asyncio.sleep(0.3)
        junk = [b"\x16\x03\x01\x02\x00" + b"\x00" * 100, b"A" * 100, b"GET " + b"/" * 100]

        waited: list[float] = []

        async def timed(data: bytes) -> bytes:
            began = time.monotonic()
            got = await asyncio.to_thread(exchange, port, data)
            waited.append(time.monotonic() - began)
            return got

        # Each refused connection is held open for 2 s: the callers come together, as they would.
        answer, soap, trickled, silent, *garbage = await asyncio.gather(
            asyncio.to_thread(exchange, port, head(b"GET /api/kaigo/x HTTP/1.1")),
            asyncio.to_thread(exchange, port, head(b"POST /soap/kaigo HTTP/1.1")),
            # A request line trickled in: decided as soon as "/api/" has come.
            asyncio.to_thread(_trickled, port, [b"DEL", b"ETE /a", b"pi/kaigo/1 HTTP/1.1\r\n\r\n"]),
            # Nothing sent, or bytes that are no request line: the SOAP fault, within a second.
            timed(b""),
            *(asyncio.to_thread(exchange, port, data) for data in junk))
        found = problem(answer, 503, "GatewayBusy")
        assert "already holds 2 connections" in found["detail"] and parsed(answer)[1]["retry-after"] == "1"
        assert parsed(soap)[0] == 503 and b'code="GatewayBusy"' in soap, "SOAP callers keep their fault"
        problem(trickled, 503, "GatewayBusy")
        assert b'code="GatewayBusy"' in silent and waited[0] < 2.5
        for refused in garbage:
            assert parsed(refused)[0] == 503 and b'code="GatewayBusy"' in refused
    finally:
        for sock in held:
            sock.close()


async def test_the_per_address_cap_answers_api_callers_with_problem_details(gateway_process: Start) -> None:
    gw = gateway_process(config(header_timeout=30, limits={"max_connections_per_address": 1}))
    port = port_of(gw)
    held = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0))
    try:
        await asyncio.sleep(0.3)
        answer = await asyncio.to_thread(exchange, port, head(b"PATCH /api/kaigo/x HTTP/1.1"), source="127.0.0.3")
        assert "127.0.0.3" in problem(answer, 503, "GatewayBusy")["detail"]
    finally:
        held.close()


def _trickled(port: int, parts: list[bytes]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for part in parts:
            sock.sendall(part)
            time.sleep(0.1)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize(("first", "api"), [
    (b"", None), (b"GE", None), (b"GET ", None), (b"GET /ap", None), (b"GET /api", None), (b"GET /api/", True),
    (b"DELETE /api?x", True), (b"GET /api HTTP/1.1", True), (b"GET /apix", False), (b"GET /soap/x", False),
    (b"GET http://gw/api/x", False), (b"G\x00T /api/", False), (b"\x16\x03\x01", False), (b"A" * 30, False),
    (b"GET\t/api/", False),
])
def test_which_request_lines_are_for_the_api(first: bytes, api: bool | None) -> None:
    assert api_request(first) is api


@pytest.mark.parametrize("message_id", [b"\xff\xfe\"}", "a\u202eb".encode(), b"m" * 300])
def test_a_message_id_that_cannot_be_echoed_is_left_out_not_a_crash(gateway_process: Start,
                                                                    message_id: bytes) -> None:
    gw = gateway_process({"gateway": {"name": "gw-pj"},
                          "clients": {"app": {"basic": {"user": "app", "password_hash": HASH}}},
                          "endpoints": {"kaigo": {"url": "http://127.0.0.1:9/kaigo"}}})
    port = port_of(gw)
    # the router's 405 (behind a login) and the login's own 401, on /api and on /soap
    auth = b"Authorization: Basic " + base64.b64encode(f"app:{PASSWORD}".encode()) + b"\r\n"
    for line, extra, status in [(b"OPTIONS /api/kaigo/x HTTP/1.1", auth, 405), (b"GET /api/kaigo/x HTTP/1.1", b"", 401),
                                (b"POST /soap/kaigo HTTP/1.1", b"", 401)]:
        answer = exchange(port, line + b"\r\nHost: gw\r\nContent-Length: 0\r\nX-Message-Id: " + message_id + b"\r\n"
                          + extra + b"Connection: close\r\n\r\n")
        got, headers, body = parsed(answer)
        assert got == status, answer[:400]
        assert "x-message-id" not in headers or headers["x-message-id"].isascii()
        if line.startswith(b"OPTIONS") or line.startswith(b"GET"):
            assert "message_id" not in json.loads(body)


def test_a_bad_head_after_a_good_request_on_the_same_connection_is_known_as_api(gateway_process: Start) -> None:
    gw = gateway_process(config())
    with socket.create_connection(("127.0.0.1", port_of(gw)), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(65536)
        status, headers, body = parsed(first)
        while len(body) < int(headers["content-length"]):
            body += sock.recv(65536)
        assert status == 200
        time.sleep(0.1)  # the handler waits for the next request: its head is known from its first byte
        sock.sendall(b"GET /api/kaigo/x\x01 HTTP/1.1\r\nHost: gw\r\n\r\n")
        second = b""
        while chunk := sock.recv(65536):
            second += chunk
    problem(second, 400, "MalformedMessage")
