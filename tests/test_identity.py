"""Who a message says it is from (SPEC.md Version 2): claimed senders bound to the authenticated client.

Issue 18, finding 7: ``r:From`` was never tied to the client that called, a
client with no JX rights deposited into a city hall's mailbox as another city
hall, the endpoint saw only the claimed sender, and ``bmrgw receive``
replaced a published file with any later transfer of the same name.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lxml import etree

from attachments.transfer.sender import SendOptions, send_file
from gateway.errors import ConfigError, SendError
from gateway.logs.tables import LogFilter
from gateway.security.passwords import hash_password
from routing.config import parse_config

from .conftest import GatewayFactory, RecordingBackend, message, soap11_headers
from .jxhelp import Answer, action, envelope
from .records import records
from .test_files_auth import receiver  # noqa: F401  (fixture)

PASSWORD = "identity-test-password"
HASH = hash_password(PASSWORD)
FAULT_NS = "urn:bmrgw:fault:1"
CLIENT_HEADER = "X-Bmrgw-Client"


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()}


def login(user: str) -> dict[str, Any]:
    return {"basic": {"user": user, "password_hash": HASH}}


def from_(sender: str | None, to: str = "demo") -> bytes:
    """The routing-header test message with ``r:From`` set to ``sender`` (or left out), ``r:To`` to ``to``
    and a fresh MessageId."""
    body = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", f"<r:To>{to}</r:To>".encode())
    body = body.replace(b"msg-0001", f"msg-{uuid.uuid4().hex}".encode())
    if sender is None:
        return body.replace(b"<r:From>juki</r:From>", b"")
    return body.replace(b"<r:From>juki</r:From>", f"<r:From>{sender}</r:From>".encode())


def fault_code(body: bytes) -> str | None:
    found = etree.fromstring(body).find(f".//{{{FAULT_NS}}}Error")
    return None if found is None else found.get("code")


async def post(http: aiohttp.ClientSession, url: str, body: bytes, user: str | None,
               extra: dict[str, str] | None = None) -> tuple[int, bytes]:
    headers = {**soap11_headers(), **(basic(user) if user else {}), **(extra or {})}
    async with http.post(f"{url}/soap", data=body, headers=headers) as resp:
        return resp.status, await resp.read()


async def wait_records(db: Path, where: LogFilter, count: int) -> list[Any]:
    deadline = time.monotonic() + 5.0
    while True:
        found = await asyncio.to_thread(records, db, where)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


# -- configuration -----------------------------------------------------------------------------

def test_senders_default_to_the_clients_own_name() -> None:
    config = parse_config({"clients": {"juki-app": login("juki"),
                                       "batch": {**login("batch"), "senders": ["juki", "zei"]},
                                       "peer": {**login("peer"), "senders": ["*"]}}})
    juki, batch, peer = (config.clients[n] for n in ("juki-app", "batch", "peer"))
    assert juki.may_claim("juki-app") and not juki.may_claim("juki")
    assert batch.may_claim("juki") and batch.may_claim("zei") and not batch.may_claim("batch")
    assert peer.may_claim("anyone")


@pytest.mark.parametrize("senders", [[""], [1], ["bad name"]])
def test_bad_senders_are_config_errors(senders: Any) -> None:
    with pytest.raises(ConfigError, match=r"clients\.juki-app\.senders"):
        parse_config({"clients": {"juki-app": {**login("juki"), "senders": senders}}})


# -- the relay: r:From ---------------------------------------------------------------------------

def _relay_config(tmp_path: Path, url: str) -> dict[str, Any]:
    return {
        "gateway": {"name": "gw-identity", "db": f"sqlite:///{tmp_path}/identity.db"},
        "clients": {
            "juki-app": {**login("juki"), "allow": ["demo"]},
            "batch": {**login("batch"), "allow": ["demo"], "senders": ["juki", "zei"]},
        },
        "endpoints": {"demo": {"url": url}},
    }


async def test_from_must_be_a_sender_the_client_may_claim(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_relay_config(tmp_path, backend.url))
    status, body = await post(http, gw, from_("zei-app"), "juki")
    assert (status, fault_code(body)) == (403, "Forbidden")
    assert b"zei-app" in body
    assert backend.seen == [], "a faked sender never reaches the endpoint"

    assert (await post(http, gw, from_("juki-app"), "juki"))[0] == 200, "its own name, the default"
    assert (await post(http, gw, from_(None), "juki"))[0] == 200, "no sender named, nothing claimed"
    assert (await post(http, gw, from_("zei"), "batch"))[0] == 200, "listed in senders"
    status, body = await post(http, gw, from_("batch"), "batch")
    assert (status, fault_code(body)) == (403, "Forbidden"), "a senders list replaces the default"
    assert len(backend.seen) == 3

    refused = await wait_records(tmp_path / "identity.db", LogFilter(status="fault"), 4)
    assert {(r.from_ap, r.client, r.fault_code) for r in refused if r.direction == "response"} == {
        ("zei-app", "juki-app", "Forbidden"), ("batch", "batch", "Forbidden")}


async def test_the_endpoint_is_told_the_authenticated_client_never_the_callers_claim(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_relay_config(tmp_path, backend.url))
    status, _ = await post(http, gw, from_("juki"), "batch", {CLIENT_HEADER: "juki-app"})
    assert status == 200
    [seen] = backend.seen
    assert seen.headers[CLIENT_HEADER] == "batch"


async def test_open_mode_forwards_no_client_name(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway({"gateway": {"name": "gw-open"}, "endpoints": {"demo": {"url": backend.url}}})
    status, _ = await post(http, gw, from_("juki"), None, {CLIENT_HEADER: "admin"})
    assert status == 200, "with no clients configured nobody is checked (development only)"
    [seen] = backend.seen
    assert CLIENT_HEADER not in seen.headers, "a caller's own X-Bmrgw-Client is dropped"


# -- mailbox deposits and JX ------------------------------------------------------------------------

def _jx_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "gateway": {"name": "gw-identity-jx", "data_dir": str(tmp_path / "var"),
                    "db": f"sqlite:///{tmp_path}/identity-jx.db"},
        "clients": {
            "cityhall-a": {**login("cityhall-a"), "jx": {"receive": ["1310001"], "send": ["1310001"]}},
            "dc-app": {**login("dc-app"), "allow": ["cityhall"], "jx": {"send": ["DC"]}},
            "other-app": {**login("other-app"), "allow": ["cityhall"]},
        },
        "endpoints": {"cityhall": {"mailbox": "1310001"}},
    }


async def _poll(http: aiohttp.ClientSession, url: str) -> list[str]:
    """Get and confirm every document waiting for 1310001; their senderIds in order."""
    senders: list[str] = []
    while True:
        async with http.post(f"{url}/jx", data=envelope("GetDocument", [("receiverId", "1310001")]),
                             headers={**action("GetDocument"), **basic("cityhall-a")}) as resp:
            got = Answer(resp.status, etree.fromstring(await resp.read()))
        if not got.result:
            return senders
        sender, message_id = got.text(".//jx:senderId") or "", got.text(".//jx:messageId") or ""
        senders.append(sender)
        confirm = envelope("ConfirmDocument", [("messageId", message_id), ("senderId", sender),
                                               ("receiverId", "1310001")])
        async with http.post(f"{url}/jx", data=confirm, headers={**action("ConfirmDocument"),
                                                                   **basic("cityhall-a")}) as resp:
            assert resp.status == 200


async def test_mailbox_deposit_sender_must_be_claimable(gateway: GatewayFactory, tmp_path: Path,
                                                        http: aiohttp.ClientSession) -> None:
    url = await gateway(_jx_config(tmp_path))
    # The attack of the review: no JX rights, another city hall's sender id.
    status, body = await post(http, url, from_("1310002", to="cityhall"), "other-app")
    assert (status, fault_code(body)) == (403, "Forbidden")
    status, body = await post(http, url, from_("DC", to="cityhall"), "other-app")
    assert (status, fault_code(body)) == (403, "Forbidden"), "DC is dc-app's JX id, not other-app's"

    status, body = await post(http, url, from_("DC", to="cityhall"), "dc-app")
    assert status == 200 and b"Accepted" in body, "a JX id in jx.send"
    status, body = await post(http, url, from_("other-app", to="cityhall"), "other-app")
    assert status == 200 and b"Accepted" in body, "its own name"
    assert await _poll(http, url) == ["DC", "other-app"], "nothing stored under a faked sender"

    refused = await wait_records(tmp_path / "identity-jx.db", LogFilter(status="fault"), 4)
    assert {(r.from_ap, r.client, r.fault_code) for r in refused if r.direction == "response"} == {
        ("1310002", "other-app", "Forbidden"), ("DC", "other-app", "Forbidden")}


# -- file transfer: bound to its sender ---------------------------------------------------------------

def _file(tmp_path: Path, sender: str, content: bytes) -> Path:
    path = tmp_path / sender / "kyufu.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


async def test_a_transfer_never_replaces_a_file_another_sender_published(
        gateway: GatewayFactory, receiver: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = receiver
    gw = await gateway({"clients": {"juki-app": {**login("juki"), "allow": ["files"]},
                                    "zei-app": {**login("zei"), "allow": ["files"]}},
                        "endpoints": {"files": {"url": url}}})
    original = _file(tmp_path, "juki", b"id,amount\n1,100\n")
    juki = SendOptions(path=original, to="files", gateway=gw, part_size=1024, user="juki", password=PASSWORD)
    assert (await send_file(juki)).published == "kyufu.csv"

    forged = _file(tmp_path, "zei", b"id,amount\n1,999999\n")
    with pytest.raises(SendError) as refused:
        await send_file(SendOptions(**{**juki.__dict__, "path": forged, "user": "zei"}))
    assert "SenderMismatch" in refused.value.message and "kyufu.csv" in refused.value.message
    assert (folder / "kyufu.csv").read_bytes() == original.read_bytes()

    # The same content from the other sender has the same transfer id: still not theirs, not even to ask about.
    with pytest.raises(SendError) as same:
        await send_file(SendOptions(**{**juki.__dict__, "user": "zei"}))
    assert "SenderMismatch" in same.value.message

    update = _file(tmp_path, "juki2", b"id,amount\n1,150\n")
    assert (await send_file(SendOptions(**{**juki.__dict__, "path": update}))).published == "kyufu.csv"
    assert (folder / "kyufu.csv").read_bytes() == update.read_bytes(), "its own sender may replace it"


async def test_the_sender_is_the_client_together_with_its_from(
        gateway: GatewayFactory, receiver: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = receiver
    gw = await gateway({"clients": {"batch": {**login("batch"), "allow": ["files"], "senders": ["juki", "zei"]},
                                    "other": {**login("other"), "allow": ["files"], "senders": ["juki"]}},
                        "endpoints": {"files": {"url": url}}})
    first = _file(tmp_path, "one", b"1\n")
    options = SendOptions(path=first, to="files", gateway=gw, part_size=1024, user="batch", password=PASSWORD,
                          sender="juki")
    assert (await send_file(options)).published == "kyufu.csv"
    second = _file(tmp_path, "two", b"2\n")
    # Behind a peer gateway one client carries many senders: r:From tells them apart.
    with pytest.raises(SendError) as as_zei:
        await send_file(SendOptions(**{**options.__dict__, "path": second, "sender": "zei"}))
    assert "SenderMismatch" in as_zei.value.message
    with pytest.raises(SendError) as other_client:
        await send_file(SendOptions(**{**options.__dict__, "path": second, "user": "other"}))
    assert "SenderMismatch" in other_client.value.message
    assert (folder / "kyufu.csv").read_bytes() == b"1\n"
    assert (await send_file(SendOptions(**{**options.__dict__, "path": second}))).published == "kyufu.csv"
    assert (folder / "kyufu.csv").read_bytes() == b"2\n"


async def test_a_file_put_there_by_hand_is_not_replaced(receiver: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = receiver
    (folder / "kyufu.csv").write_bytes(b"local\n")
    with pytest.raises(SendError) as refused:
        await send_file(SendOptions(path=_file(tmp_path, "juki", b"1\n"), to="files", gateway=url,
                                    part_size=1024, sender="juki"))
    assert "SenderMismatch" in refused.value.message
    assert (folder / "kyufu.csv").read_bytes() == b"local\n"
