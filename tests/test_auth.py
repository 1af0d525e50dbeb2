"""Client identity: password hashes, HTTP Basic, authorisation by destination, refusals logged."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lxml import etree

from gateway.logs.tables import LogFilter
from gateway.security.auth import cleartext_basic_warning
from gateway.security.passwords import hash_password, verify_password
from routing.config import parse_config, subject_key

from .certs import DevPki, dev_pki  # noqa: F401  (the session fixture)
from .conftest import (
    BMRGW,
    GatewayFactory,
    GatewayProcess,
    RecordingBackend,
    message,
    soap11_headers,
    soap12_headers,
)
from .records import records

PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD)
FAULT_NS = "urn:bmrgw:fault:1"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _config(tmp_path: Path, url: str) -> dict[str, Any]:
    return {
        "gateway": {"name": "gw-auth", "db": f"sqlite:///{tmp_path}/auth.db"},
        "clients": {
            "juki-app": {"basic": {"user": "juki", "password_hash": HASH}, "allow": ["demo"],
                         "senders": ["juki"]},  # the r:From of the test messages
            "all-app": {"basic": {"user": "all", "password_hash": HASH}, "allow": ["*"]},
        },
        "endpoints": {"demo": {"url": url}, "zei": {"url": url}},
    }


def _fault_code(body: bytes) -> str:
    found = etree.fromstring(body).find(f".//{{{FAULT_NS}}}Error")
    assert found is not None, body
    return str(found.get("code"))


def test_hash_round_trip_and_salt() -> None:
    assert verify_password(PASSWORD, HASH)
    assert not verify_password(PASSWORD + "x", HASH)
    assert hash_password(PASSWORD) != HASH  # salted
    assert HASH.startswith("$scrypt$ln=14,r=8,p=1$")


@pytest.mark.parametrize("stored", ["", "$scrypt$", "$scrypt$ln=40,r=8,p=1$AAAA$AAAA", "$scrypt$ln=14,r=8,p=1$!!$AAAA",
                                    "plain-password"])
def test_malformed_hash_never_matches(stored: str) -> None:
    assert not verify_password("", stored)
    assert not verify_password(PASSWORD, stored)


def test_subjects_compare_regardless_of_order_and_case() -> None:
    assert subject_key("CN=juki-app, O=Example City") == subject_key("o=Example City,CN=juki-app")
    assert subject_key("CN=a\\,b,O=x") == (("CN", "a\\,b"), ("O", "x"))
    assert subject_key("CN=a") != subject_key("CN=b")


def test_hash_password_command_reads_stdin() -> None:
    done = subprocess.run([*BMRGW, "hash-password"], input=b"s3cret\n", capture_output=True, timeout=30, check=True)
    printed = done.stdout.decode().strip()
    assert verify_password("s3cret", printed)
    empty = subprocess.run([*BMRGW, "hash-password"], input=b"\n", capture_output=True, timeout=30)
    assert empty.returncode == 2 and b"empty" in empty.stderr


async def test_no_credentials_is_a_401_soap_fault_with_a_challenge(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    async with http.post(f"{gw}/soap", data=message("valid/soap12-routing-header.xml"),
                         headers=soap12_headers()) as resp:
        body = await resp.read()
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith('Basic realm="bmrgw"')
        assert resp.content_type == "application/soap+xml"
    assert _fault_code(body) == "Unauthorized"
    assert b"Sender" in body
    assert backend.seen == []


@pytest.mark.parametrize("headers", [basic("juki", "wrong"), basic("nobody", PASSWORD),
                                     {"Authorization": "Basic !!!"}, {"Authorization": "Bearer abc"}])
async def test_bad_credentials_are_refused(gateway: GatewayFactory, backend: RecordingBackend,
                                           http: aiohttp.ClientSession, tmp_path: Path, headers: dict[str, str]) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    async with http.post(f"{gw}/soap", data=message("valid/soap11-routing-header.xml"),
                         headers={**soap11_headers(), **headers}) as resp:
        assert resp.status == 401
        assert _fault_code(await resp.read()) == "Unauthorized"
    assert backend.seen == []


async def test_good_login_relays_and_is_logged_with_the_client(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    for _ in range(2):  # the second is answered from the verified-login cache
        async with http.post(f"{gw}/soap", data=message("valid/soap11-routing-header.xml"),
                             headers={**soap11_headers(), **basic("juki", PASSWORD)}) as resp:
            assert resp.status == 200, await resp.text()
    assert len(backend.seen) == 2
    assert "Authorization" not in backend.seen[0].headers  # credentials stay at the gateway
    records = await _wait_records(tmp_path / "auth.db", LogFilter(message_id="msg-0001"), 4)
    assert {r.client for r in records} == {"juki-app"}


async def test_destination_outside_allow_is_forbidden(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    async with http.post(f"{gw}/soap/zei", data=message("valid/soap11-no-header.xml"),
                         headers={**soap11_headers(), **basic("juki", PASSWORD)}) as resp:
        assert resp.status == 403
        assert _fault_code(await resp.read()) == "Forbidden"
    async with http.post(f"{gw}/soap/zei", data=message("valid/soap11-no-header.xml"),
                         headers={**soap11_headers(), **basic("all", PASSWORD)}) as resp:
        assert resp.status == 200  # "*" reaches every destination
    assert len(backend.seen) == 1


async def test_health_and_metrics_stay_open(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    for path in ("/healthz", "/metrics"):
        async with http.get(f"{gw}{path}") as resp:
            assert resp.status == 200


async def test_repeated_failures_are_slowed_down_and_logged(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    took = []
    for _ in range(5):
        start = time.monotonic()
        async with http.post(f"{gw}/soap", data=message("valid/soap11-routing-header.xml"),
                             headers={**soap11_headers(), **basic("juki", "guess")}) as resp:
            assert resp.status == 401
        took.append(time.monotonic() - start)
    assert took[3] >= 0.5 and took[4] >= 1.0  # after the first few, each refusal waits longer
    assert took[4] - max(took[:3]) >= 0.5  # while the first few cost only the hash check
    refused = await _wait_records(tmp_path / "auth.db", LogFilter(), 5)
    assert {(r.kind, r.status, r.fault_code, r.http_status, r.client) for r in refused} == {
        ("auth", "fault", "Unauthorized", 401, "user:juki")}


async def _wait_records(db: Path, where: LogFilter, count: int) -> list[Any]:
    deadline = time.monotonic() + 3.0
    while True:
        found = await asyncio.to_thread(records, db, where)
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        await asyncio.sleep(0.05)


# -- Basic passwords over plain HTTP -------------------------------------------

def _stderr_after_stop(gp: GatewayProcess) -> str:
    gp.proc.terminate()
    gp.proc.wait(timeout=10)
    assert gp.proc.stderr is not None
    return gp.proc.stderr.read().decode()


def test_basic_logins_without_tls_are_warned_about_at_startup(
        tmp_path: Path, backend: RecordingBackend, gateway_process: Callable[..., GatewayProcess]) -> None:
    config = _config(tmp_path, backend.url)
    del config["gateway"]["db"]  # each process gets its own
    err = _stderr_after_stop(gateway_process(config, name="plain"))
    warning = next(line for line in err.splitlines() if "WARNING" in line and "gateway.tls" in line)
    assert "all-app, juki-app" in warning and "clear text" in warning
    quiet = _stderr_after_stop(gateway_process({"endpoints": {"demo": {"url": backend.url}}}, name="open"))
    assert "clear text" not in quiet


def test_basic_logins_over_tls_are_not_warned_about(tmp_path: Path, dev_pki: DevPki) -> None:
    config = _config(tmp_path, "http://127.0.0.1:9/")
    assert cleartext_basic_warning(parse_config(config)) is not None
    config["gateway"]["tls"] = {"cert": str(dev_pki.server.cert), "key": str(dev_pki.server.key)}
    assert cleartext_basic_warning(parse_config(config)) is None
