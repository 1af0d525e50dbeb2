"""The outline of a streamed envelope is checked as it passes (issue 17, finding 5: a second ``soap:Body``).

Small bodies are parsed whole; a bigger one streams, and only its head is
parsed to route it.  A second Body (or anything after the Body, or after
the Envelope's end) deep in a big body must still be refused — in bounded
memory, without buffering the body — and the endpoint's answer must never
come back as a success: the upstream request is cut off before the body
is complete and the caller gets ``MalformedMessage``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.errors import MalformedMessage
from gateway.relay.outline import MAX_DEPTH, EnvelopeOutline

from .conftest import GatewayFactory, RecordingBackend, message, sha256, soap11_headers
from .records import relay_records
from .test_relay import config_for, fault_of, post

MIB = 1024 * 1024
_BODY_END = b"</soap:Body>"
_SECOND = b'<soap:Body><d:Echo xmlns:d="urn:bmrgw:demo:1"><d:text>second</d:text></d:Echo></soap:Body>'


def _big(text_bytes: int) -> bytes:
    return message("valid/soap11-routing-header.xml").replace(b"<d:text>", b"<d:text>" + b"q" * text_bytes)


def _with_second_body(envelope: bytes) -> bytes:
    end = envelope.rindex(_BODY_END) + len(_BODY_END)
    return envelope[:end] + _SECOND + envelope[end:]


async def _chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.parametrize("bad", ["second-body", "after-envelope", "header-after-body"])
async def test_a_fault_after_the_first_mib_of_a_streamed_body_is_refused(
        bad: str, gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession,
        tmp_path: Path) -> None:
    envelope = _big(3 * MIB)
    data = {"second-body": _with_second_body(envelope),
            "after-envelope": envelope.rstrip() + b"<extra/>",
            "header-after-body": _with_second_body(envelope).replace(_SECOND, b"<soap:Header/>")}[bad]
    gw = await gateway(config_for(backend.url, max_message_bytes=50 * MIB, db=f"sqlite:///{tmp_path}/log.db"))
    status, _, body = await post(http, gw + "/soap", _chunked(data), soap11_headers())
    assert status == 400 and fault_of(body)[2] == "MalformedMessage", body[:300]
    # Forwarding had begun (the head routes it); it was cut off before the endpoint had the whole body.
    assert all(seen.size < len(data) for seen in backend.seen)
    [request, response] = relay_records(tmp_path / "log.db")
    assert response.status == "fault" and response.fault_code == "MalformedMessage"


async def test_a_mid_size_body_read_whole_is_checked_whole(gateway: GatewayFactory, backend: RecordingBackend,
                                                           http: aiohttp.ClientSession) -> None:
    data = _with_second_body(_big(100_000))  # > 8 KiB, < 256 KiB: read whole, its head scanned
    gw = await gateway(config_for(backend.url))
    status, _, body = await post(http, gw + "/soap", data, soap11_headers())
    assert status == 400 and fault_of(body)[2] == "MalformedMessage"
    assert backend.seen == []


async def test_a_good_streamed_body_still_arrives_byte_for_byte(gateway: GatewayFactory,
                                                                backend: RecordingBackend,
                                                                http: aiohttp.ClientSession) -> None:
    data = _big(5 * MIB)
    backend.keep_bodies_up_to = 0
    gw = await gateway(config_for(backend.url, max_message_bytes=50 * MIB))
    status, _, _ = await post(http, gw + "/soap", _chunked(data, 10_000), soap11_headers())
    assert status == 200 and backend.seen[-1].sha256 == sha256(data)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("shape", ["one-big-text", "many-small-elements", "an-element-per-chunk"])
def test_the_outline_check_holds_bounded_memory(shape: str) -> None:
    chunk = {"one-big-text": b"QUJD" * 16384,
             "many-small-elements": b"<a x='1'>abcdefghij</a>" * 2800,
             "an-element-per-chunk": b"<b>" + b"z" * 65530 + b"</b>"}[shape]
    outline = EnvelopeOutline()
    outline.feed(b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><big>')
    start = peak = _rss_kib()
    for _ in range(100 * MIB // len(chunk)):  # 100 MiB through, one 64 KiB chunk at a time
        outline.feed(chunk)
        peak = max(peak, _rss_kib()) if _ % 64 == 0 else peak
    outline.feed(b"</big></s:Body></s:Envelope>")
    outline.close()
    assert peak - start < 16 * 1024, f"RSS grew by {peak - start} KiB while 100 MiB passed"


def test_nesting_deeper_than_libxml2_allows_is_refused_without_a_tree() -> None:
    outline = EnvelopeOutline()
    outline.feed(b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>')
    with pytest.raises(MalformedMessage, match="nested deeper"):
        outline.feed(b"<a>" * MAX_DEPTH)
