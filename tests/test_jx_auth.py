"""Who may use /jx: a client polls only its ``jx.receive`` ids and puts only as its ``jx.send`` ids."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import create_engine

from gateway.logs.tables import LogFilter, read
from gateway.security.passwords import hash_password
from gateway.security.wss import Signer, sign_envelope

from .certs import make_dev_pki
from .conftest import BMRGW, GatewayFactory, message, soap11_headers
from .jxhelp import Answer, action, envelope, put_envelope

PASSWORD = "jx-test-password"
HASH = hash_password(PASSWORD)


def _basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()}


def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "gateway": {"name": "gw-jx-auth", "data_dir": str(tmp_path / "var")},
        "clients": {
            "cityhall-a": {"basic": {"user": "cityhall-a", "password_hash": HASH},
                           "jx": {"receive": ["1310001"], "send": ["1310001"]}},
            "dc-app": {"basic": {"user": "dc-app", "password_hash": HASH}, "allow": ["cityhall"],
                       "jx": {"send": ["DC"]}},
        },
        "endpoints": {"cityhall": {"mailbox": "1310001"}},
    }


async def _call(http: aiohttp.ClientSession, url: str, op: str, body: bytes, user: str | None) -> Answer:
    from lxml import etree
    headers = {**action(op), **(_basic(user) if user else {})}
    async with http.post(f"{url}/jx", data=body, headers=headers) as resp:
        return Answer(resp.status, etree.fromstring(await resp.read()))


def _get(receiver: str) -> bytes:
    return envelope("GetDocument", [("receiverId", receiver)])


async def test_jx_ids_of_each_client_are_enforced(gateway: GatewayFactory, tmp_path: Path,
                                                 http: aiohttp.ClientSession) -> None:
    config = _config(tmp_path)
    url = await gateway(config)
    anonymous = await _call(http, url, "GetDocument", _get("1310001"), None)
    assert anonymous.status == 401 and anonymous.fault_code == "Unauthorized"
    async with http.get(f"{url}/jx?wsdl") as resp:  # the WSDL stays open
        assert resp.status == 200

    put_as_dc = await _call(http, url, "PutDocument", put_envelope("a-1", b"for a", sender="DC"), "dc-app")
    assert put_as_dc.result is True
    spoofed = await _call(http, url, "PutDocument", put_envelope("a-2", b"x", sender="1310001"), "dc-app")
    assert spoofed.status == 500 and spoofed.fault_code == "Forbidden"
    assert spoofed.text(".//faultcode") == "soap:Client"

    other = await _call(http, url, "GetDocument", _get("1310002"), "cityhall-a")
    assert other.fault_code == "Forbidden"
    not_receiver = await _call(http, url, "GetDocument", _get("1310001"), "dc-app")
    assert not_receiver.fault_code == "Forbidden"
    steal_confirm = await _call(http, url, "ConfirmDocument", envelope(
        "ConfirmDocument", [("messageId", "a-1"), ("senderId", "DC"), ("receiverId", "1310001")]), "dc-app")
    assert steal_confirm.fault_code == "Forbidden"

    got = await _call(http, url, "GetDocument", _get("1310001"), "cityhall-a")
    assert got.result is True and got.data == b"for a"
    done = await _call(http, url, "ConfirmDocument", envelope(
        "ConfirmDocument", [("messageId", "a-1"), ("senderId", "DC"), ("receiverId", "1310001")]), "cityhall-a")
    assert done.result is True

    await asyncio.sleep(0.5)
    engine = create_engine(config["gateway"]["db"])
    try:
        records = list(read(engine, LogFilter(kind="jx")))
    finally:
        engine.dispose()
    seen = {(r.endpoint, r.client, r.status, r.fault_code) for r in records}
    assert ("jx:PutDocument", "dc-app", "ok", None) in seen
    assert ("jx:PutDocument", "dc-app", "fault", "Forbidden") in seen
    assert ("jx:GetDocument", "cityhall-a", "ok", None) in seen


async def test_mailbox_deposit_needs_the_destination_in_allow(gateway: GatewayFactory, tmp_path: Path,
                                                              http: aiohttp.ClientSession) -> None:
    url = await gateway(_config(tmp_path))
    body = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>cityhall</r:To>")
    body = body.replace(b"<r:From>juki</r:From>", b"<r:From>DC</r:From>")  # dc-app's JX id (jx.send)
    async with http.post(f"{url}/soap", data=body, headers={**soap11_headers(), **_basic("cityhall-a")}) as resp:
        assert resp.status == 403  # cityhall-a's allow list is empty
    async with http.post(f"{url}/soap", data=body, headers={**soap11_headers(), **_basic("dc-app")}) as resp:
        assert resp.status == 200 and b"Accepted" in await resp.read()


async def test_poll_client_authenticates_with_basic(gateway: GatewayFactory, tmp_path: Path,
                                                    http: aiohttp.ClientSession) -> None:
    url = await gateway(_config(tmp_path))
    assert (await _call(http, url, "PutDocument", put_envelope("b-1", b"polled", sender="DC"), "dc-app")).result
    out = tmp_path / "in"
    proc = await asyncio.create_subprocess_exec(
        *BMRGW, "poll", "--server", f"{url}/jx", "--receiver-id", "1310001", "--out", str(out), "--once",
        "--user", "cityhall-a", env={"BMRGW_PASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, text.decode()
    assert (out / "b-1").read_bytes() == b"polled"


async def test_poll_with_a_wrong_password_stops_with_a_clear_error(gateway: GatewayFactory, tmp_path: Path) -> None:
    url = await gateway(_config(tmp_path))
    proc = await asyncio.create_subprocess_exec(
        *BMRGW, "poll", "--server", f"{url}/jx", "--receiver-id", "1310001", "--out", str(tmp_path / "in"),
        "--user", "cityhall-a", "--password", "wrong", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "fault failure: GetDocument: the gateway answered with a fault: Unauthorized" in text.decode()
    assert "retrying cannot help" in text.decode() and "Traceback" not in text.decode()


async def test_a_client_with_wss_verify_must_sign_its_jx_requests(gateway: GatewayFactory, tmp_path: Path,
                                                                   http: aiohttp.ClientSession) -> None:
    # A PKI of its own: the session-wide dev_pki must not be created early (tests/test_wss.py fixes
    # its NOW at import and relies on certificates backdated 5 minutes from that fixture's creation).
    dev_pki = make_dev_pki(tmp_path / "pki")
    config = _config(tmp_path)
    config["clients"]["dc-app"]["wss"] = {"verify": str(dev_pki.signing.cert)}
    config["clients"]["dc-app"]["jx"]["receive"] = ["DC"]
    url = await gateway(config)
    signer = Signer.load(dev_pki.signing.key.read_bytes(), dev_pki.signing.cert.read_bytes())

    def signed(body: bytes) -> bytes:
        return sign_envelope(body, signer, now=dt.datetime.now(dt.timezone.utc), ttl=300, max_bytes=1 << 20)

    unsigned = await _call(http, url, "PutDocument", put_envelope("s-1", b"signed doc", sender="DC"), "dc-app")
    assert unsigned.status == 500 and unsigned.fault_code == "InvalidSignature"
    body = signed(put_envelope("s-1", b"signed doc", sender="DC"))
    accepted = await _call(http, url, "PutDocument", body, "dc-app")
    assert accepted.result is True
    replayed = await _call(http, url, "PutDocument", body, "dc-app")
    assert replayed.fault_code == "Replay"
    # The verified wsse:Security block is marked mustUnderstand: the JX server understood it.
    own_poll = await _call(http, url, "GetDocument", signed(_get("DC")), "dc-app")
    assert own_poll.status == 200 and own_poll.result is False
    # cityhall-a has no wss.verify: it polls unsigned, and gets the document the signed put stored.
    got = await _call(http, url, "GetDocument", _get("1310001"), "cityhall-a")
    assert got.result is True and got.data == b"signed doc"
