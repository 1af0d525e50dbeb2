"""File transfer to an authenticating gateway: HTTP Basic, mutual TLS, the clients' allow lists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from attachments.transfer.receiver import ReceiveOptions, make_receiver_app
from attachments.transfer.sender import SendOptions, send_file
from gateway.errors import SendError

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import GatewayFactory, start_app
from .test_auth import HASH, PASSWORD


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    folder = tmp_path / "inbox"
    runner: web.AppRunner
    runner, url = await start_app(make_receiver_app(ReceiveOptions(directory=folder)))
    yield f"{url}/files", folder
    await runner.cleanup()


def _clients() -> dict[str, Any]:
    return {"juki-app": {"basic": {"user": "juki", "password_hash": HASH}, "allow": ["files"]},
            "zei-app": {"basic": {"user": "zei", "password_hash": HASH}, "allow": ["zei"]}}


def _payload(tmp_path: Path) -> Path:
    path = tmp_path / "kyufu.csv"
    path.write_bytes(b"id,amount\n" + b"1,100\n" * 20_000)
    return path


async def test_basic_client_sends_within_its_allow_list(
        gateway: GatewayFactory, receiver: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = receiver
    gw = await gateway({"clients": _clients(), "endpoints": {"files": {"url": url}, "zei": {"url": url}}})
    path = _payload(tmp_path)
    options = SendOptions(path=path, to="files", gateway=gw, part_size=32 * 1024, user="juki", password=PASSWORD,
                          zip=True)
    result = await send_file(options)
    assert result.published == "kyufu.csv" and (folder / "kyufu.csv").read_bytes() == path.read_bytes()

    with pytest.raises(SendError) as refused:
        await send_file(SendOptions(**{**options.__dict__, "user": "zei"}))
    assert refused.value.exit_code == 1 and "Forbidden" in refused.value.message
    with pytest.raises(SendError) as anonymous:
        await send_file(SendOptions(**{**options.__dict__, "user": None}))
    assert anonymous.value.exit_code == 1 and "Unauthorized" in anonymous.value.message
    with pytest.raises(SendError) as wrong:
        await send_file(SendOptions(**{**options.__dict__, "password": "nope"}))
    assert wrong.value.exit_code == 1 and "Unauthorized" in wrong.value.message


async def test_mutual_tls_client_sends_through_https(
        gateway: GatewayFactory, receiver: tuple[str, Path], tmp_path: Path, dev_pki: DevPki) -> None:
    url, folder = receiver
    gw = await gateway({
        "gateway": {"tls": {"cert": str(dev_pki.server.cert), "key": str(dev_pki.server.key),
                            "client_ca": str(dev_pki.ca.cert)}},
        "clients": {"client-app": {"cert_subject": dev_pki.client.subject, "allow": ["files"]}},
        "endpoints": {"files": {"url": url}}})
    assert gw.startswith("https://")
    path = _payload(tmp_path)
    options = SendOptions(path=path, to="files", gateway=gw, part_size=64 * 1024, mtom=True, ca=dev_pki.ca.cert,
                          cert=dev_pki.client.cert, key=dev_pki.client.key)
    result = await send_file(options)
    assert result.published == "kyufu.csv" and (folder / "kyufu.csv").read_bytes() == path.read_bytes()
    with pytest.raises(SendError) as untrusted:
        await send_file(SendOptions(**{**options.__dict__, "ca": None}))
    assert untrusted.value.exit_code == 1 and "TLS handshake" in untrusted.value.message
