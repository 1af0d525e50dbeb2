"""The caller's HTTP framing, pinned byte for byte: what a gateway answers and what its endpoint receives.

``test_relay_wire.py`` proves that no smuggled request reaches an endpoint.
This corpus pins more: for each raw request — framing tricks (CL+TE,
duplicate and malformed ``Content-Length``, obs-fold, bare LF and CR, NUL,
over-long lines, too many headers) and the legitimate variants a relay must
get right (pipelining, HTTP/1.0, ``Connection: close``, ``Expect:
100-continue``, chunked with trailers, absolute-form, two ``Host`` headers,
Basic logins) — the gateway's whole answer and the bytes the endpoint
received, after replacing what changes from run to run (message ids,
``Date``), must equal ``tests/data/smuggling.json``.

The expected file was recorded on the code before the relay's fast path
(``BMRGW_RECORD_SMUGGLING=1`` rewrites it), so any difference the fast path
makes on the wire — a status, a header, its order, a byte forwarded — fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.security.passwords import hash_password

from .conftest import GatewayProcess
from .test_relay_wire import CT, ENVELOPE, GOOD, SMUGGLED, SMUGGLING, RawBackend, Served, chunked_body

EXPECTED = Path(__file__).parent / "data" / "smuggling.json"
N = str(len(ENVELOPE)).encode()
AUTH = b"Authorization: Basic " + __import__("base64").b64encode(b"alice:secret-pw")
BAD_AUTH = b"Authorization: Basic " + __import__("base64").b64encode(b"alice:wrong")


def _plain(*headers: bytes, body: bytes = ENVELOPE, line: bytes = b"POST /soap HTTP/1.1") -> bytes:
    return b"\r\n".join([line, b"Host: gw", *headers]) + b"\r\n\r\n" + body


def _good(*extra: bytes, body: bytes = ENVELOPE, line: bytes = b"POST /soap HTTP/1.1") -> bytes:
    return _plain(CT.strip(), b"Content-Length: " + str(len(body)).encode(), *extra, body=body, line=line)


#: name -> raw request, sent alone on a fresh connection to the open gateway.
CORPUS: dict[str, bytes] = {
    **SMUGGLING,
    "plain": _good(),
    "plain-soapaction": _good(b'SOAPAction: "urn:x"', b"Accept: */*", b"User-Agent: t/1", b"Cookie: c=1",
                              b"X-Bmrgw-Client: mallory", b"X-Other: dropped"),
    "soap12": _plain(b"Content-Type: application/soap+xml; charset=utf-8", b"Content-Length: " + N),
    "path-ap": _good(line=b"POST /soap/ep HTTP/1.1"),
    "path-ap-other": _good(line=b"POST /soap/nowhere HTTP/1.1"),
    "cl-leading-zeros": _plain(CT.strip(), b"Content-Length: 00" + N, body=ENVELOPE + SMUGGLED),
    "cl-hex": _plain(CT.strip(), b"Content-Length: 0x" + f"{len(ENVELOPE):x}".encode(), body=ENVELOPE + SMUGGLED),
    "cl-trailing-space": _plain(CT.strip(), b"Content-Length: " + N + b"  ", body=ENVELOPE),
    "cl-inner-space": _plain(CT.strip(), b"Content-Length: 1 " + N, body=ENVELOPE + SMUGGLED),
    "cl-short-pipelined": _plain(CT.strip(), b"Content-Length: 10", body=ENVELOPE + SMUGGLED),
    "cl-too-big-declared": _plain(CT.strip(), b"Content-Length: 999999999999", body=ENVELOPE),
    "pipelined-two": _good() + _good(),
    "pipelined-then-smuggled": _good() + SMUGGLED,
    "http10": _good(line=b"POST /soap HTTP/1.0"),
    "http10-keepalive": _good(b"Connection: keep-alive", line=b"POST /soap HTTP/1.0"),
    "connection-close": _good(b"Connection: close"),
    "connection-close-pipelined": _good(b"Connection: close") + _good(),
    "expect-100": _good(b"Expect: 100-continue"),
    "expect-other": _good(b"Expect: something"),
    "chunked": _plain(CT.strip(), b"Transfer-Encoding: chunked", body=chunked_body(ENVELOPE)),
    "chunked-trailers": _plain(CT.strip(), b"Transfer-Encoding: chunked",
                               body=f"{len(ENVELOPE):x}\r\n".encode() + ENVELOPE + b"\r\n0\r\nX-Trailer: t\r\n\r\n"),
    "absolute-form": _good(line=b"POST http://gw/soap HTTP/1.1"),
    "host-duplicate": _good(b"Host: other"),
    "no-host": b"POST /soap HTTP/1.1\r\n" + CT + b"Content-Length: " + N + b"\r\n\r\n" + ENVELOPE,
    "request-line-too-long": _good(line=b"POST /soap?" + b"a" * 9000 + b" HTTP/1.1"),
    "header-8k": _good(b"X-Big: " + b"a" * 8000),
    "header-16k": _good(b"X-Big: " + b"a" * 16400),
    "headers-100": _good(*(f"X-H{i}: v".encode() for i in range(98))),
    "headers-101": _good(*(f"X-H{i}: v".encode() for i in range(99))),
    "lowercase-headers": _plain(b"content-type: text/xml; charset=utf-8", b"content-length: " + N),
    "content-type-odd": _good(b"Content-Type: text/plain"),
    "content-type-none": _plain(b"Content-Length: " + N),
    "content-encoding-gzip": _good(b"Content-Encoding: gzip"),
    "get-soap": b"GET /soap HTTP/1.1\r\nHost: gw\r\n\r\n",
    "put-soap": _good(line=b"PUT /soap HTTP/1.1"),
    "soap-trailing-slash": _good(line=b"POST /soap/ HTTP/1.1"),
    "soap-query": _good(line=b"POST /soap?x=1 HTTP/1.1"),
    "soap-encoded-path": _good(line=b"POST /soap/e%70 HTTP/1.1"),
    "via-loop": _good(b"Via: 1.1 gw"),
    "via-other": _good(b"Via: 1.1 other"),
    "message-id": _good(b"X-Message-Id: fixed-id-1"),
    "message-id-bad": _good(b"X-Message-Id: bad id\x7f"),
    "no-routing": _good(body=ENVELOPE.replace(b"<r:To>ep</r:To>", b"")),
    "unknown-destination": _good(body=ENVELOPE.replace(b"<r:To>ep</r:To>", b"<r:To>nowhere</r:To>")),
    "not-xml": _good(body=b"hello, not xml"),
    "empty-body": _plain(CT.strip(), b"Content-Length: 0", body=b""),
    "body-short-then-close": _plain(CT.strip(), b"Content-Length: " + str(len(ENVELOPE) + 50).encode()),
    "utf8-header-value": _good("X-Name: 名前".encode()),
    "header-no-colon": _good(b"Garbage"),
    "header-empty-name": _good(b": v"),
    "header-space-in-name": _good(b"X Bad: v"),
    "method-lowercase": _good(line=b"post /soap HTTP/1.1"),
    "version-2": _good(line=b"POST /soap HTTP/2.0"),
    "version-garbage": _good(line=b"POST /soap HTTP/1.x"),
}

#: name -> raw request to the gateway whose one client logs in with Basic.
AUTH_CORPUS: dict[str, bytes] = {
    "auth-good": _good(AUTH),
    "auth-good-twice-pipelined": _good(AUTH) + _good(AUTH),
    "auth-missing": _good(),
    "auth-wrong": _good(BAD_AUTH),
    "auth-not-basic": _good(b"Authorization: Bearer x"),
    "auth-garbage": _good(b"Authorization: Basic !!!"),
    "auth-other-destination": _good(AUTH, line=b"POST /soap/forbidden HTTP/1.1"),
    "auth-sender-ok": _good(AUTH, body=ENVELOPE.replace(b"</r:To>", b"</r:To><r:From>alice</r:From>")),
    "auth-sender-other": _good(AUTH, body=ENVELOPE.replace(b"</r:To>", b"</r:To><r:From>bob</r:From>")),
    "auth-get": b"GET /soap HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"\r\n\r\n",
}

_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DATE = re.compile(rb"(?im)^Date: [^\r\n]*")
_PORT = re.compile(rb"127\.0\.0\.1:[0-9]+")
_DURATION = re.compile(rb'"[a-z_]*(?:ms|seconds)": [0-9.e-]+')


def _normal(data: bytes) -> str:
    """``data`` with what changes from run to run replaced, as text for the JSON file."""
    data = _PORT.sub(b"127.0.0.1:<port>", _DATE.sub(b"Date: *", _ID.sub(b"<id>", data)))
    return _DURATION.sub(b"<t>", data).decode("latin-1")


def _exchange(url: str, raw: bytes, answers: int = 0, first: float = 1.5, quiet: float = 1.5,
              after: float = 0.3) -> bytes:
    """Send ``raw`` on a fresh connection and read everything until the gateway closes or stays quiet for
    ``quiet`` seconds (``first`` seconds before its first byte) — or, once the ``answers`` complete answers
    the recording holds have come, for ``after`` seconds (a kept-alive connection would otherwise cost
    ``quiet`` per case)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=first) as sock:
        try:
            sock.sendall(raw)
        except OSError:
            pass
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
                sock.settimeout(after if answers and _complete(received) >= answers else quiet)
        except (TimeoutError, ConnectionResetError):
            received += b"<reset or quiet>"
    return bytes(received)


_STATUS = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3}) ")
_LENGTH = re.compile(rb"(?im)^content-length: *([0-9]+)\r?$")
_CHUNKED = re.compile(rb"(?im)^transfer-encoding: *chunked\r?$")


def _complete(data: bytes | bytearray) -> int:
    """How many whole answers ``data`` begins with (framed by Content-Length, chunked, or without a body)."""
    count = at = 0
    while (end := data.find(b"\r\n\r\n", at)) >= 0 and (status := _STATUS.match(data, at)):
        head, at = bytes(data[at:end + 2]), end + 4
        if not (100 <= int(status[1]) < 200 or int(status[1]) in (204, 304)):
            if length := _LENGTH.search(head):
                at += int(length[1])
            elif _CHUNKED.search(head):
                while (line := data.find(b"\r\n", at)) >= 0 and (size := int(data[at:line].split(b";")[0], 16)):
                    at = line + 2 + size + 2
                if line < 0 or data.find(b"\r\n\r\n", line) < 0:
                    return count
                at = data.find(b"\r\n\r\n", line) + 4
            else:
                return count  # ends when the connection does
        if at > len(data):
            return count
        count += 1
    return count


def _outcomes(url: str, backend: RawBackend, corpus: dict[str, bytes], expected: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for name, raw in corpus.items():
        start = len(backend.received)
        # Only a connection recorded as left open ("<reset or quiet>") is cut short once its answers are in;
        # one the gateway closed is read to its close, however late that comes on a loaded machine.
        recorded = expected.get(name, {}).get("answer", "")
        answers = len(_STATUS.findall(recorded.encode("latin-1"))) if recorded.endswith("<reset or quiet>") else 0
        # An answer the recording holds may be slow to start on a loaded machine (a first Basic login
        # hashes its password): wait for its first byte longer than for silence after it.
        answer = _exchange(url, raw, answers, first=10.0 if recorded.removesuffix("<reset or quiet>") else 1.5)
        time.sleep(0.05)  # the backend thread records what it read
        found[name] = {"answer": _normal(answer), "backend": _normal(bytes(backend.received[start:]))}
    return found


class ChunkedBackend(RawBackend):
    """A :class:`RawBackend` that reads chunked bodies too (a streamed request goes upstream chunked)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received += head
                lines = [line.lower() for line in head.split(b"\r\n")]
                if b"transfer-encoding: chunked" in lines:
                    while size := int((line := await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        self.received += line + await reader.readexactly(size + 2)
                    self.received += line
                    self.received += await reader.readuntil(b"\r\n")
                else:
                    lengths = [int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:")]
                    self.received += await reader.readexactly(lengths[0] if lengths else 0)
                self.requests += 1
                writer.write(self.answers[0])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
def chunked_backend() -> Iterator[RawBackend]:
    served = Served([GOOD], ChunkedBackend)
    yield served.backend
    served.stop()


def _open_config(url: str) -> dict[str, Any]:
    return {"gateway": {"logs": {"enabled": True}},
            "endpoints": {"ep": {"url": url, "timeout": 5}}}


def _auth_config(url: str) -> dict[str, Any]:
    return {"gateway": {"logs": {"enabled": True}},
            "endpoints": {"ep": {"url": url, "timeout": 5}, "forbidden": {"url": url}},
            "clients": {"alice": {"basic": {"user": "alice", "password_hash": hash_password("secret-pw")},
                                  "allow": ["ep"]}}}


def _recorded(name: str) -> dict[str, Any]:
    """The recording of ``name`` (empty while recording anew: every case then waits the full quiet)."""
    if os.environ.get("BMRGW_RECORD_SMUGGLING"):
        return {}
    return dict(json.loads(EXPECTED.read_text())[name])


def _compare(name: str, found: dict[str, dict[str, Any]]) -> None:
    if os.environ.get("BMRGW_RECORD_SMUGGLING"):
        recorded = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
        recorded[name] = found
        EXPECTED.write_text(json.dumps(recorded, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
        return
    expected = json.loads(EXPECTED.read_text())[name]
    assert set(found) == set(expected)
    differ = {case: {"now": found[case], "recorded": expected[case]}
              for case in found if found[case] != expected[case]}
    assert not differ, json.dumps(differ, indent=1, ensure_ascii=False)[:6000]


@pytest.mark.timeout(600)
def test_the_open_gateway_answers_the_corpus_as_recorded(gateway_process: Callable[..., GatewayProcess],
                                                         chunked_backend: RawBackend) -> None:
    backend = chunked_backend
    gw = gateway_process(_open_config(backend.url))
    _compare("open", _outcomes(gw.url, backend, CORPUS, _recorded("open")))


@pytest.mark.timeout(300)
def test_the_gateway_with_basic_clients_answers_as_recorded(gateway_process: Callable[..., GatewayProcess],
                                                            chunked_backend: RawBackend) -> None:
    backend = chunked_backend
    gw = gateway_process(_auth_config(backend.url))
    _compare("basic", _outcomes(gw.url, backend, AUTH_CORPUS, _recorded("basic")))
