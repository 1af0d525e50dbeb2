"""The relay with SwA and MTOM requests: routing from the root part, byte-for-byte streaming, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import GatewayFactory, RecordingBackend, sha256
from .test_attachments import MIME, mime_file
from .test_auth import basic
from .test_relay_log import _logged
from .test_wss_relay import secured_config


def _config(tmp_path: Path, url: str, **gateway: Any) -> dict[str, Any]:
    return {"gateway": {"name": "gw-mime", "db": f"sqlite:///{tmp_path}/log.db", **gateway},
            "endpoints": {"files": {"url": f"{url}/files"}}}


async def _trickle(body: bytes, size: int = 37) -> AsyncIterator[bytes]:
    """The body in small pieces with no Content-Length: the streaming path of the relay."""
    for at in range(0, len(body), size):
        yield body[at:at + size]
        if at % (size * 16) == 0:
            await asyncio.sleep(0)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("path", sorted((MIME / "valid").iterdir()), ids=lambda p: p.name)
async def test_valid_multipart_is_relayed_byte_for_byte(
        path: Path, streamed: bool, gateway: GatewayFactory, backend: RecordingBackend,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    content_type, body = mime_file(path)
    data = _trickle(body) if streamed else body
    async with http.post(f"{gw}/soap", data=data, headers={"Content-Type": content_type}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Message-Id"] == "mime-0001"
    seen = backend.seen[-1]
    assert (seen.path, seen.size, seen.sha256) == ("/files", len(body), sha256(body))
    assert seen.headers["Content-Type"] == content_type


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("path", sorted((MIME / "invalid").iterdir()), ids=lambda p: p.name)
async def test_invalid_multipart_is_malformed_and_never_reaches_the_endpoint_whole(
        path: Path, streamed: bool, gateway: GatewayFactory, backend: RecordingBackend,
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    content_type, body = mime_file(path)
    data = _trickle(body) if streamed else body
    async with http.post(f"{gw}/soap", data=data, headers={"Content-Type": content_type}) as resp:
        text = await resp.text()
        assert resp.status == 400, text
    assert 'code="MalformedMessage"' in text
    assert all(seen.sha256 != sha256(body) for seen in backend.seen), "a broken body was passed on complete"


async def test_attachment_limit_replaces_the_envelope_limit_for_multipart(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url, max_message_bytes=4096, max_attachment_bytes=400_000))
    content_type, body = mime_file(MIME / "valid" / "swa-soap11.mime")
    big = body.replace(b"--not-the-boundary", b"x" * 300_000)
    for data in (big, _trickle(big, 8192)):
        async with http.post(f"{gw}/soap", data=data, headers={"Content-Type": content_type}) as resp:
            assert resp.status == 200, await resp.text()
        assert backend.seen[-1].sha256 == sha256(big)
    too_big = body.replace(b"--not-the-boundary", b"x" * 500_000)
    count = len(backend.seen)
    for data in (too_big, _trickle(too_big, 8192)):
        async with http.post(f"{gw}/soap", data=data, headers={"Content-Type": content_type}) as resp:
            text = await resp.text()
            assert resp.status == 413 and 'code="MessageTooLarge"' in text
    assert all(seen.sha256 != sha256(too_big) for seen in backend.seen[count:])


async def test_root_part_stays_under_the_envelope_limit(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url, max_message_bytes=4096))
    content_type, body = mime_file(MIME / "valid" / "swa-soap11.mime")
    fat_root = body.replace("添付ファイル".encode(), b"y" * 10_000)
    async with http.post(f"{gw}/soap", data=_trickle(fat_root, 1000), headers={"Content-Type": content_type}) as resp:
        text = await resp.text()
    assert resp.status == 413 and 'code="MessageTooLarge"' in text


async def test_soap12_multipart_fault_is_soap12(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    content_type, body = mime_file(MIME / "valid" / "mtom-soap12-unquoted-boundary.mime")
    async with http.post(f"{gw}/soap", data=body.replace(b"<r:To>files", b"<r:To>nowhere"),
                         headers={"Content-Type": content_type}) as resp:
        text = await resp.text()
        assert resp.status == 404 and resp.content_type == "application/soap+xml"
    assert "http://www.w3.org/2003/05/soap-envelope" in text and 'code="UnknownDestination"' in text


async def test_multipart_exchange_is_logged_with_its_full_size_and_hash(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    content_type, body = mime_file(MIME / "valid" / "mtom-soap11.mime")
    big = body.replace(b"--not-the-boundary", b"z" * 600_000)  # over SMALL_BODY: streamed
    async with http.post(f"{gw}/soap", data=_trickle(big, 65536), headers={"Content-Type": content_type}) as resp:
        answer = await resp.read()
    request, response = await _logged(tmp_path / "log.db", "mime-0001")
    assert (request.bytes_in, request.bytes_out, request.sha256) == (len(big), len(big), sha256(big))
    assert (request.from_ap, request.to_ap, request.status) == ("juki", "files", "ok")
    assert (response.bytes_in, response.sha256) == (len(answer), sha256(answer))



async def test_multipart_where_ws_security_is_required_is_refused_unread(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
        dev_pki: DevPki) -> None:
    config = secured_config(tmp_path, dev_pki, backend.url, sign=True)  # the endpoint wants signed messages
    config["endpoints"]["files"] = config["endpoints"].pop("demo")
    config["clients"]["zei-app"]["senders"] = ["juki"]  # the message's r:From
    gw = await gateway(config)
    content_type, body = mime_file(MIME / "valid" / "swa-soap11.mime")
    async with http.post(f"{gw}/soap", data=_trickle(body, 4096),
                         headers={"Content-Type": content_type, **basic("zei", "pw")}) as resp:
        text = await resp.text()
    assert resp.status == 415 and "not supported for SwA/MTOM" in text
    assert backend.seen == []
