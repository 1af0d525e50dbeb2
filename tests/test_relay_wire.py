"""The relay's HTTP on the wire: request smuggling from callers, malformed and desyncing answers from endpoints.

A real ``bmrgw serve`` process relays to a raw TCP backend that records
every byte it receives and answers exactly the bytes a case scripts, so
nothing between the test and the wire tidies anything up.

* Callers (the smuggling corpus): every framing trick a front proxy and a
  back end may read differently — ``Content-Length`` with
  ``Transfer-Encoding``, two ``Content-Length`` s, obs-fold, bare LF, a
  space before the colon, oversized headers, signed or overflowing lengths —
  is refused with a 4xx (or the connection closed), and **not one byte**
  reaches the endpoint, nor does the request hidden behind it.
* Endpoints: an answer the parser must not trust is a gateway fault to the
  caller, and the connection it came on is never used again — in particular
  an answer followed by bytes that look like a second answer must not be
  handed to the next caller (the pooled keep-alive connections of the
  relay's fast path, :mod:`gateway.relay.pool`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from .conftest import GatewayProcess

DEST = "ep"


def _envelope(text: str = "hello") -> bytes:
    return (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            b'<s:Header><r:Routing xmlns:r="urn:bmrgw:routing:1"><r:To>' + DEST.encode()
            + b"</r:To></r:Routing></s:Header><s:Body><m:Echo xmlns:m=\"urn:test\">" + text.encode()
            + b"</m:Echo></s:Body></s:Envelope>")


ENVELOPE = _envelope()
SMUGGLED = b"POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
CT = b"Content-Type: text/xml; charset=utf-8\r\n"


def chunked_body(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def _request(*headers: bytes, body: bytes = ENVELOPE, sep: bytes = b"\r\n") -> bytes:
    lines = [b"POST /soap HTTP/1.1", b"Host: gw", *headers]
    return sep.join(lines) + sep + sep + body


N = str(len(ENVELOPE)).encode()

#: name -> raw request; none of them may reach the endpoint.
SMUGGLING: dict[str, bytes] = {
    "cl-and-te": _request(CT.strip(), b"Content-Length: " + N, b"Transfer-Encoding: chunked",
                          body=chunked_body(ENVELOPE) + SMUGGLED),
    "te-and-cl": _request(CT.strip(), b"Transfer-Encoding: chunked", b"Content-Length: " + N,
                          body=chunked_body(ENVELOPE) + SMUGGLED),
    "duplicate-cl-different": _request(CT.strip(), b"Content-Length: " + N, b"Content-Length: 3",
                                       body=ENVELOPE + SMUGGLED),
    "duplicate-cl-same": _request(CT.strip(), b"Content-Length: " + N, b"Content-Length: " + N,
                                  body=ENVELOPE + SMUGGLED),
    "cl-list": _request(CT.strip(), b"Content-Length: " + N + b", " + N, body=ENVELOPE + SMUGGLED),
    "cl-plus-sign": _request(CT.strip(), b"Content-Length: +" + N, body=ENVELOPE + SMUGGLED),
    "cl-negative": _request(CT.strip(), b"Content-Length: -1", body=ENVELOPE + SMUGGLED),
    "cl-space-before-colon": _request(CT.strip(), b"Content-Length : " + N, body=ENVELOPE + SMUGGLED),
    "te-chunked-not-last": _request(CT.strip(), b"Transfer-Encoding: chunked, identity",
                                    body=chunked_body(ENVELOPE) + SMUGGLED),
    "te-xchunked": _request(CT.strip(), b"Transfer-Encoding: xchunked", body=chunked_body(ENVELOPE) + SMUGGLED),
    "te-obs-fold": _request(CT.strip(), b"Transfer-Encoding:", b" chunked", body=chunked_body(ENVELOPE) + SMUGGLED),
    "obs-fold": _request(CT.strip(), b"Content-Length: " + N, b"X-Folded: a", b" b", body=ENVELOPE + SMUGGLED),
    "bare-lf": _request(CT.strip(), b"Content-Length: " + N, body=ENVELOPE + SMUGGLED, sep=b"\n"),
    "bare-cr": _request(CT.strip(), b"Content-Length: " + N, body=ENVELOPE + SMUGGLED, sep=b"\r"),
    "chunk-size-overflow": _request(CT.strip(), b"Transfer-Encoding: chunked",
                                    body=b"1000000000000000000000005\r\n" + ENVELOPE[:5] + b"\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-ext-lf": _request(CT.strip(), b"Transfer-Encoding: chunked",
                             body=f"{len(ENVELOPE):x};x\n".encode() + ENVELOPE + b"\r\n0\r\n\r\n" + SMUGGLED),
    "nul-in-header": _request(CT.strip(), b"Content-Length: " + N, b"X-Nul: a\x00b", body=ENVELOPE + SMUGGLED),
    "header-too-long": _request(CT.strip(), b"Content-Length: " + N, b"X-Big: " + b"a" * 20000,
                                body=ENVELOPE + SMUGGLED),
    "too-many-headers": _request(CT.strip(), b"Content-Length: " + N,
                                 *(f"X-H{i}: v".encode() for i in range(200)), body=ENVELOPE + SMUGGLED),
    "http-0.9-ish": b"POST /soap\r\n\r\n" + ENVELOPE + SMUGGLED,
}


@dataclass
class RawBackend:
    """Records every byte received; answers each request with ``answers[i]`` (the last one repeats)."""

    answers: list[bytes]
    received: bytearray = field(default_factory=bytearray)
    requests: int = 0
    connections: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += head
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.received += body
                answer = self.answers[min(self.requests, len(self.answers) - 1)]
                self.requests += 1
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def _soap_answer(text: bytes, *extra: bytes) -> bytes:
    body = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><a>' + text
            + b"</a></s:Body></s:Envelope>")
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n" + b"".join(e + b"\r\n" for e in extra) + b"\r\n" + body)


GOOD = _soap_answer(b"good")


def _exchange(url: str, raw: bytes, quiet: float = 3.0) -> bytes:
    """Send ``raw`` on a fresh connection; everything the gateway answers until it closes or stays
    quiet for ``quiet`` seconds."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=quiet) as sock:
        sock.sendall(raw)
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return bytes(received)


def _post(url: str, body: bytes = ENVELOPE) -> tuple[int, bytes]:
    answer = _exchange(url, b"POST /soap HTTP/1.1\r\nHost: gw\r\n" + CT + b"Content-Length: "
                       + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer.split(b"\r\n\r\n", 1)[-1]


class Served:
    """A RawBackend on a thread of its own (the gateway is a process; the test talks plain sockets)."""

    def __init__(self, answers: list[bytes], kind: type[RawBackend] = RawBackend) -> None:
        import threading
        self.backend = kind(answers=answers)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(asyncio.start_server(self.backend.handle, "127.0.0.1", 0))
            self.backend.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/svc"
            ready.set()
            self._loop.run_forever()
            server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def served() -> Iterator[Callable[[list[bytes]], RawBackend]]:
    running: list[Served] = []

    def start(answers: list[bytes]) -> RawBackend:
        running.append(Served(answers))
        return running[-1].backend

    yield start
    for s in running:
        s.stop()


def _gateway(gateway_process: Callable[..., GatewayProcess], url: str) -> GatewayProcess:
    return gateway_process({"gateway": {"logs": {"enabled": True}},
                            "endpoints": {DEST: {"url": url, "timeout": 5}}})


@pytest.mark.timeout(300)
def test_no_smuggled_request_reaches_the_endpoint(gateway_process: Callable[..., GatewayProcess],
                                                  served: Callable[[list[bytes]], RawBackend]) -> None:
    backend = served([GOOD])
    gw = _gateway(gateway_process, backend.url)
    assert _post(gw.url) == (200, GOOD.split(b"\r\n\r\n", 1)[1])  # the well-formed request passes
    passed = bytes(backend.received)
    outcomes = {}
    for name, raw in SMUGGLING.items():
        answer = _exchange(gw.url, raw)
        outcomes[name] = answer.split(b"\r\n", 1)[0].decode(errors="replace") if answer else "closed"
    assert backend.received == passed, f"bytes reached the endpoint: {bytes(backend.received[len(passed):])[:300]!r}"
    assert b"/smuggled" not in backend.received
    refused = {name: line for name, line in outcomes.items()
               if line == "closed" or line.split(" ")[1:2] in (["400"], ["413"], ["431"])}
    assert refused == outcomes, {k: v for k, v in outcomes.items() if k not in refused}
    # Each refusal was answered on the connection and nothing after it was read as a request.
    assert all(not line.startswith("HTTP/1.1 2") for line in outcomes.values())
    assert _post(gw.url) == (200, GOOD.split(b"\r\n\r\n", 1)[1])  # and the gateway still relays


def _chunked_answer(size_line: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
            + size_line + b"\r\n<a/>\r\n0\r\n\r\n")


#: name -> a malformed or ambiguous answer of the endpoint; each is an EndpointUnavailable fault to the caller.
BAD_ANSWERS: dict[str, bytes] = {
    "cl-and-te": _soap_answer(b"x", b"Transfer-Encoding: chunked"),
    "duplicate-cl-different": _soap_answer(b"x", b"Content-Length: 3"),
    "bad-chunk-size": _chunked_answer(b"zz"),
    "chunk-size-overflow": _chunked_answer(b"1000000000000000000000004"),
    "nul-in-header": _soap_answer(b"x", b"X-Nul: a\x00b"),
    "status-line-garbage": b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
    "header-too-long": _soap_answer(b"x", b"X-Big: " + b"a" * 9000),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(BAD_ANSWERS))
def test_a_malformed_answer_is_a_fault_and_its_connection_is_dropped(
        name: str, gateway_process: Callable[..., GatewayProcess],
        served: Callable[[list[bytes]], RawBackend]) -> None:
    backend = served([BAD_ANSWERS[name], GOOD])
    gw = _gateway(gateway_process, backend.url)
    status, body = _post(gw.url)
    assert status == 500 and b"EndpointUnavailable" in body, (status, body[:300])
    assert b"sent an invalid HTTP response" in body
    assert _post(gw.url) == (200, GOOD.split(b"\r\n\r\n", 1)[1])
    assert backend.connections == 2  # the connection of the bad answer was not reused


@pytest.mark.timeout(120)
def test_bytes_after_an_answer_are_never_the_next_callers_answer(
        gateway_process: Callable[..., GatewayProcess], served: Callable[[list[bytes]], RawBackend]) -> None:
    evil = _soap_answer(b"EVIL")
    backend = served([GOOD + evil, _soap_answer(b"second")])
    gw = _gateway(gateway_process, backend.url)
    first = _post(gw.url)
    second = _post(gw.url)
    assert first == (200, GOOD.split(b"\r\n\r\n", 1)[1])
    assert b"EVIL" not in second[1]
    assert second == (200, _soap_answer(b"second").split(b"\r\n\r\n", 1)[1])
    assert backend.requests == 2


@pytest.mark.timeout(120)
def test_sequential_messages_share_one_upstream_connection(
        gateway_process: Callable[..., GatewayProcess], served: Callable[[list[bytes]], RawBackend]) -> None:
    backend = served([GOOD])
    gw = _gateway(gateway_process, backend.url)
    for _ in range(20):
        assert _post(gw.url)[0] == 200
    assert backend.requests == 20
    assert backend.connections == 1


@pytest.mark.timeout(120)
def test_a_burst_of_connections_waits_in_the_accept_queue(
        gateway_process: Callable[..., GatewayProcess], served: Callable[[list[bytes]], RawBackend]) -> None:
    """500 callers connecting while the gateway is busy are queued by the kernel, not dropped: with
    aiohttp's default listen backlog of 128 the rest were reset mid-request (wrk "read" errors in the
    bench's 500-connection scenario)."""
    import os
    import signal
    backend = served([GOOD])
    gw = _gateway(gateway_process, backend.url)
    host, port = gw.url.removeprefix("http://").split(":")
    request = (b"POST /soap HTTP/1.1\r\nHost: gw\r\n" + CT + b"Content-Length: " + N + b"\r\n\r\n" + ENVELOPE)
    os.kill(gw.proc.pid, signal.SIGSTOP)  # busy: accepts nothing meanwhile
    socks: list[socket.socket] = []
    try:
        for _ in range(500):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((host, int(port)))
            socks.append(sock)
        import select
        import time
        deadline = time.monotonic() + 5
        pending = set(socks)
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending)[:1000], [], 0.2)
            pending -= set(writable)
        established = [s for s in socks if s not in pending and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0]
        for sock in established:
            sock.setblocking(True)
            sock.settimeout(30)
            sock.sendall(request)
    finally:
        os.kill(gw.proc.pid, signal.SIGCONT)
    try:
        answered = 0
        for sock in established:
            try:
                if sock.recv(12).startswith(b"HTTP/1.1 200"):
                    answered += 1
            except OSError:
                pass
    finally:
        for sock in socks:
            sock.close()
    assert len(established) == 500
    assert answered == 500
