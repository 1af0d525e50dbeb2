"""The relay's send/receive log: one record per direction, sizes, hashes, NTP time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from sqlalchemy import create_engine

from gateway.logs.chain import verify
from gateway.logs.records import LogRecord
from gateway.logs.tables import LogFilter, read

from .conftest import GatewayFactory, RecordingBackend, free_port, message, sha256, soap11_headers
from .sntp import SntpResponder


def _records(db: Path, message_id: str) -> list[LogRecord]:
    engine = create_engine(f"sqlite:///{db}")
    try:
        return list(read(engine, LogFilter(message_id=message_id)))
    finally:
        engine.dispose()


async def _logged(db: Path, message_id: str, count: int = 2) -> list[LogRecord]:
    """The records of one exchange once the group commit wrote them (within 200 ms + slack)."""
    deadline = time.monotonic() + 2.0
    while True:
        found = await asyncio.to_thread(_records, db, message_id)
        if len(found) >= count or time.monotonic() > deadline:
            return sorted(found, key=lambda r: r.seq)
        await asyncio.sleep(0.05)


def _config(tmp_path: Path, url: str, **gateway: Any) -> dict[str, Any]:
    return {"gateway": {"name": "gw-log", "db": f"sqlite:///{tmp_path}/log.db", **gateway},
            "endpoints": {"demo": {"url": url}}}


async def test_one_record_per_direction_with_sizes_and_hashes(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    body = message("valid/soap11-routing-header.xml")
    async with http.post(f"{gw}/soap", data=body, headers=soap11_headers()) as resp:
        answer = await resp.read()
    request, response = await _logged(tmp_path / "log.db", "msg-0001")
    assert (request.direction, response.direction) == ("request", "response")
    assert (request.kind, request.from_ap, request.to_ap, request.node) == ("relay", "juki", "demo", "gw-log")
    assert request.endpoint == backend.url
    assert (request.bytes_in, request.bytes_out, request.sha256) == (len(body), len(body), sha256(body))
    assert (response.bytes_in, response.bytes_out, response.sha256) == (len(answer), len(answer), sha256(answer))
    assert (request.status, response.status, response.http_status) == ("ok", "ok", 200)
    assert response.duration_ms >= request.duration_ms > 0
    assert response.seq == request.seq + 1 and response.prev_hash == request.hash


async def test_gateway_fault_is_logged_in_both_directions(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    body = message("valid/soap11-no-header.xml")
    async with http.post(f"{gw}/soap/zei", data=body, headers=soap11_headers()) as resp:
        fault = await resp.read()
        message_id = resp.headers["X-Message-Id"]
    request, response = await _logged(tmp_path / "log.db", message_id)
    assert (request.status, request.bytes_in, request.bytes_out) == ("fault", len(body), 0)
    assert request.to_ap == "zei" and request.endpoint is None
    assert (response.status, response.fault_code, response.http_status) == ("fault", "UnknownDestination", 404)
    assert (response.bytes_in, response.bytes_out, response.sha256) == (0, len(fault), sha256(fault))


@pytest.mark.parametrize(("old", "new", "named"), [
    (b"msg-0001", b"m" * 300, "MessageId"),                                 # longer than the indexed column
    (b"<r:From>juki</r:From>", b"<r:From>" + b"s" * 3000 + b"</r:From>", "sender"),
    (b"<r:To>demo</r:To>", b"<r:To>" + b"d" * 3000 + b"</r:To>", "destination"),
    # An id travels on in the X-Message-Id header: one that cannot be a header value is refused.
    (b"msg-0001", b"msg&#13;&#10;X-Injected: 1", "MessageId"),
    (b"msg-0001", b"msg\x7f0001", "MessageId"),
    (b"msg-0001", b"msg&#9;0001", "MessageId"),
    (b"msg-0001", "msg\u202e0001".encode(), "MessageId"),
])
async def test_names_the_log_cannot_hold_are_refused_and_the_fault_logged(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
        old: bytes, new: bytes, named: str) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    body = message("valid/soap11-routing-header.xml")
    assert old in body
    async with http.post(f"{gw}/soap", data=body.replace(old, new), headers=soap11_headers()) as resp:
        fault = await resp.text()
        message_id = resp.headers["X-Message-Id"]
    assert resp.status == 400 and "MalformedMessage" in fault and named in fault
    assert backend.seen == []
    assert len(message_id) < 100  # a fresh id, not the refused one
    request, response = await _logged(tmp_path / "log.db", message_id)
    assert (request.status, response.status, response.fault_code) == ("fault", "fault", "MalformedMessage")


async def test_an_overlong_message_id_header_is_refused(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url))
    body = message("valid/soap11-no-header.xml")
    async with http.post(f"{gw}/soap/demo", data=body, headers={**soap11_headers(), "X-Message-Id": "h" * 257}) as resp:
        assert resp.status == 400 and "X-Message-Id" in await resp.text()
        message_id = resp.headers["X-Message-Id"]
    assert backend.seen == [] and message_id != "h" * 257
    request, response = await _logged(tmp_path / "log.db", message_id)
    assert response.fault_code == "MalformedMessage"


async def test_streamed_exchange_is_hashed_as_it_passes(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url, max_message_bytes=20_000_000))
    big = message("valid/soap11-routing-header.xml").replace(b"<d:text>", b"<d:text>" + b"s" * 3_000_000)

    async def chunks() -> Any:
        for i in range(0, len(big), 50_000):
            yield big[i:i + 50_000]

    async with http.post(f"{gw}/soap", data=chunks(), headers=soap11_headers()) as resp:
        assert resp.status == 200
    request, _ = await _logged(tmp_path / "log.db", "msg-0001")
    assert (request.bytes_in, request.sha256) == (len(big), sha256(big))


async def test_log_time_follows_ntp(gateway: GatewayFactory, backend: RecordingBackend,
                                    http: aiohttp.ClientSession, tmp_path: Path) -> None:
    with SntpResponder(shift=3.0) as ntp:
        gw = await gateway(_config(tmp_path, backend.url, ntp={"servers": [ntp.address], "interval": 1}))
        for _ in range(100):  # the first sync runs as the gateway starts
            async with http.get(f"{gw}/healthz") as resp:
                if (await resp.json())["ntp"]["synced"]:
                    break
            await asyncio.sleep(0.02)
        sent = time.time()
        async with http.post(f"{gw}/soap", data=message("valid/soap11-routing-header.xml"),
                             headers=soap11_headers()) as resp:
            assert resp.status == 200
    request, _ = await _logged(tmp_path / "log.db", "msg-0001")
    assert request.ntp_synced is True
    assert abs(request.ntp_offset - 3.0) < 0.05
    assert abs(request.ts.timestamp() - (sent + 3.0)) < 0.1


async def test_unsynced_clock_is_flagged(gateway: GatewayFactory, backend: RecordingBackend,
                                         http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, backend.url, ntp={"servers": [f"127.0.0.1:{free_port()}"]}))
    async with http.post(f"{gw}/soap", data=message("valid/soap11-routing-header.xml"),
                         headers=soap11_headers()) as resp:
        assert resp.status == 200
    request, response = await _logged(tmp_path / "log.db", "msg-0001")
    assert request.ntp_synced is False and response.ntp_synced is False
    async with http.get(f"{gw}/healthz") as resp:
        health = await resp.json()
    assert health["ntp"]["synced"] is False and health["log"]["running"] is True


async def test_two_gateways_one_message_id_and_chains_verify(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    west = await gateway({"gateway": {"name": "dc-west", "db": f"sqlite:///{db}"},
                          "endpoints": {"juki": {"url": backend.url}}})
    east = await gateway({"gateway": {"name": "dc-east", "db": f"sqlite:///{db}"},
                          "endpoints": {"juki": {"via": "dc-west"}}, "peers": {"dc-west": {"url": f"{west}/soap"}}})
    body = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>juki</r:To>")
    async with http.post(f"{east}/soap", data=body, headers=soap11_headers()) as resp:
        assert resp.status == 200
    records = await _logged(db, "msg-0001", count=4)
    assert sorted((r.node, r.direction) for r in records) == [
        ("dc-east", "request"), ("dc-east", "response"), ("dc-west", "request"), ("dc-west", "response")]
    assert {r.sha256 for r in records if r.direction == "request"} == {sha256(body)}
    engine = create_engine(f"sqlite:///{db}")
    try:
        report = await asyncio.to_thread(verify, engine, tmp_path / "archive")
    finally:
        engine.dispose()
    assert report.ok


async def test_full_log_queue_holds_callers_back_then_refuses(tmp_path: Path) -> None:
    import sqlite3

    import pytest

    from gateway.errors import JournalUnavailable
    from gateway.logs.clock import Clock
    from gateway.logs.journal import Journal
    from gateway.store import Store

    db = tmp_path / "stuck.db"
    store = Store(f"sqlite:///{db}")
    journal = Journal(store.engine, node="gw", queue_size=2, max_wait=0.3, linger=0)
    await journal.start()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the store is stuck: every commit waits
    clock = Clock((), 64)
    try:
        for _ in range(3):  # the first batch goes in flight and sticks, two more fill the queue
            await journal.record(LogRecord.at(clock.now(), kind="relay", direction="request", status="ok"))
            await asyncio.sleep(0.05)
        with pytest.raises(JournalUnavailable, match="records behind"):
            await journal.admit()
        waiting = asyncio.create_task(journal.admit())
        await asyncio.sleep(0.1)
        assert not waiting.done()  # held back, not refused yet
        blocker.execute("COMMIT")  # the store recovers: the queue drains, the caller goes on
        await asyncio.wait_for(waiting, 5)
    finally:
        blocker.close()
        await journal.close()
        store.close()
    assert journal.status()["written"] == 3 and journal.status()["dropped"] == 0


@pytest.mark.parametrize(("destination", "path"), [
    ("..", "/soap"), (".", "/soap"), ("a/../..", "/soap"), ("-x", "/soap"), ("a b", "/soap"),
    ("..", "/soap/%2E%2E"), ("../x", "/soap/..%2Fx"),
])
async def test_a_destination_that_is_not_a_name_is_refused_before_any_url_is_built(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
        destination: str, path: str) -> None:
    # With a fallback peer every unknown name goes to <peer>/<name>: '..' would climb the peer's path.
    gw = await gateway({"gateway": {"name": "gw-log", "db": f"sqlite:///{tmp_path}/log.db", "fallback_peer": "dc-west"},
                        "endpoints": {"demo": {"url": backend.url}},
                        "peers": {"dc-west": {"url": f"{backend.url}/gw/soap"}}})
    body = message("valid/soap11-routing-header.xml")
    if path == "/soap":
        body = body.replace(b"<r:To>demo</r:To>", f"<r:To>{destination}</r:To>".encode())
    else:
        body = message("valid/soap11-no-header.xml")
    url = yarl.URL(gw + path, encoded=True)
    async with http.post(url, data=body, headers=soap11_headers()) as resp:
        fault = await resp.text()
        message_id = resp.headers["X-Message-Id"]
    assert resp.status == 400 and "MalformedMessage" in fault and "not a valid name" in fault
    assert backend.seen == []
    request, response = await _logged(tmp_path / "log.db", message_id)
    assert (request.status, response.fault_code, response.http_status) == ("fault", "MalformedMessage", 400)
    assert request.endpoint is None
