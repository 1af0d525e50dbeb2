"""Idle and slow connections cannot exhaust a real gateway (SPEC.md "Version 2" → "Hostile input never
stalls the gateway"; issue 17 finding 2): header and keep-alive timeouts, on plain HTTP and TLS, the
per-address connection cap, and the ``--workers`` watchdog that replaces a worker whose loop hangs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from gateway.relay.limits import address_of

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import BMRGW, free_port, write_yaml

HEADER_TIMEOUT = 0.5
#: TLS needs its handshake inside the header timeout too: a loaded machine may take a while for one.
TLS_HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.5
#: What a loaded 2-core test machine may add to a deadline before the test calls it missed.
SLACK = 1.5
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    tls: ssl.SSLContext | None
    log: Path

    def children(self) -> list[int]:
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return sorted(int(pid) for pid in text.split())

    async def connect(self, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A client connection from ``source`` (any 127/8 address is loopback on Linux)."""
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=self.tls, local_addr=(source, 0),
                                             server_hostname="127.0.0.1" if self.tls else None)

    async def health(self, source: str = "127.0.0.1") -> bytes:
        """One honest GET /healthz on a fresh connection; its status line and body."""
        reader, writer = await self.connect(source)
        try:
            writer.write(HEALTH.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            return await _answer(reader)  # not read to EOF: a refusal lingers open for 2 s
        finally:
            await _hang_up(writer)


Start = Callable[..., Gateway]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """A real ``bmrgw serve`` (optionally TLS, optionally ``--workers``) with short timeouts."""
    started: list[Gateway] = []

    def run(*, workers: int = 1, tls: DevPki | None = None, **gateway: Any) -> Gateway:
        port = free_port()
        settings = {"name": "gw-idle", "listen": {"host": "127.0.0.1", "port": port},
                    "db": f"sqlite:///{tmp_path}/idle.db", "data_dir": str(tmp_path / "var"),
                    "header_timeout": HEADER_TIMEOUT, "keepalive_timeout": KEEPALIVE_TIMEOUT, **gateway}
        context = None
        if tls is not None:
            settings["tls"] = {"cert": str(tls.server.cert), "key": str(tls.server.key)}
            context = ssl.create_default_context(cafile=str(tls.ca.cert))
        path = tmp_path / f"idle-{len(started)}.yaml"
        write_yaml(path, {"gateway": settings, "endpoints": {"kaigo": {"url": "http://127.0.0.1:9/kaigo"}}})
        log = tmp_path / f"idle-{len(started)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen([*BMRGW, "serve", "--config", str(path), "--workers", str(workers)],
                                    stdout=err, stderr=err)
        gw = Gateway(proc=proc, port=port, tls=context, log=log)
        started.append(gw)
        _wait_healthy(gw)
        return gw

    yield run
    for gw in started:
        if gw.proc.poll() is None:
            gw.proc.terminate()
            try:
                gw.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                gw.proc.kill()
                gw.proc.wait()


def _wait_healthy(gw: Gateway, timeout: float = 30.0) -> None:
    url = f"{'https' if gw.tls else 'http'}://127.0.0.1:{gw.port}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert gw.proc.poll() is None, f"gateway exited with {gw.proc.returncode}: {gw.log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=1, context=gw.tls) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"gateway on port {gw.port} did not become healthy: {gw.log.read_text()}")


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """One keep-alive GET /healthz on an open connection, its answer read whole; the HTTP status."""
    writer.write(HEALTH)
    return int((await _answer(reader)).split()[1])


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP answer, head and body (by its Content-Length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> float:
    """Seconds until the gateway closes the connection (read gives EOF or a reset), at most ``limit``."""
    began = time.monotonic()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await asyncio.wait_for(reader.read(65536), limit - (time.monotonic() - began)):
            pass
    return time.monotonic() - began


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: float) -> float:
    """Send a request's headers one byte every 0.2 s, never ending them; seconds until the gateway closes."""
    began = time.monotonic()
    head = b"POST /soap HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 1000
    for byte in head:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            if await asyncio.wait_for(reader.read(65536), 0.2) == b"":
                break
        except TimeoutError:
            assert time.monotonic() - began < limit, f"still open after {limit} s of trickled headers"
        except (ConnectionError, ssl.SSLError):
            break
    return time.monotonic() - began


async def _served_within(gw: Gateway, limit: float) -> float:
    """Seconds until an honest client's /healthz is answered 200 (retrying refusals)."""
    began = time.monotonic()
    answer = b""
    while time.monotonic() - began < limit:
        answer = await gw.health()
        if answer.startswith(b"HTTP/1.1 200"):
            return time.monotonic() - began
        await asyncio.sleep(0.05)
    raise AssertionError(f"not served within {limit} s; last answer: {answer[:300]!r}")


async def _idle_flood(gw: Gateway, count: int, *, handshake: bool) -> list[socket.socket | asyncio.StreamWriter]:
    """``count`` connections that send nothing (TLS ones finish their handshake when ``handshake``)."""
    held: list[socket.socket | asyncio.StreamWriter] = []
    for _ in range(count):
        if gw.tls is not None and handshake:
            held.append((await gw.connect())[1])
        else:
            held.append(socket.create_connection(("127.0.0.1", gw.port), timeout=HEADER_TIMEOUT + SLACK))
    return held


async def _release(held: list[socket.socket | asyncio.StreamWriter]) -> None:
    for conn in held:
        if isinstance(conn, socket.socket):
            conn.close()
        else:
            await _hang_up(conn)


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    """Drop a client connection at once, whatever state the gateway left it in: close() would start a
    TLS shutdown with a peer that may be gone, and leave the socket for the collector to warn about."""
    writer.transport.abort()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


# -- the header timeout ------------------------------------------------------------------------


async def test_idle_sockets_filling_max_connections_are_closed_and_an_honest_client_is_served(
        start: Start) -> None:
    gw = start(limits={"max_connections": 30})
    held = await _idle_flood(gw, 30, handshake=False)
    try:
        await asyncio.sleep(0.1)
        assert b'code="GatewayBusy"' in await gw.health(), "30 idle sockets fill max_connections: 30"
        waited = await _served_within(gw, 20)
        assert waited < HEADER_TIMEOUT + SLACK, f"an honest client waited {waited:.2f} s"
        closed = [s for s in held if isinstance(s, socket.socket) and s.recv(1) == b""]
        assert len(closed) == 30, "every idle socket was closed by the gateway"
    finally:
        await _release(held)


async def test_trickled_headers_are_closed_at_the_header_timeout(start: Start) -> None:
    gw = start()
    reader, writer = await gw.connect()
    try:
        lasted = await _trickle(reader, writer, 20)
    finally:
        await _hang_up(writer)
    assert HEADER_TIMEOUT - 0.1 < lasted < HEADER_TIMEOUT + SLACK, f"trickling kept the connection {lasted:.2f} s"
    assert (await gw.health()).startswith(b"HTTP/1.1 200")


async def test_keepalive_connection_idles_up_to_keepalive_timeout_and_follow_ups_cannot_trickle(
        start: Start) -> None:
    gw = start()
    reader, writer = await gw.connect()
    try:
        for _ in range(2):  # idling longer than header_timeout between requests is allowed
            assert await _exchange(reader, writer) == 200
            await asyncio.sleep(HEADER_TIMEOUT + 0.3)
        idle = await _closed_after(reader, 20) + HEADER_TIMEOUT + 0.3
    finally:
        await _hang_up(writer)
    assert KEEPALIVE_TIMEOUT - 0.2 < idle < KEEPALIVE_TIMEOUT + SLACK, f"idle keep-alive lasted {idle:.2f} s"

    reader, writer = await gw.connect()
    try:
        assert await _exchange(reader, writer) == 200
        await asyncio.sleep(0.3)
        lasted = await _trickle(reader, writer, 20)
    finally:
        await _hang_up(writer)
    assert lasted < HEADER_TIMEOUT + SLACK, f"a follow-up's trickled headers lasted {lasted:.2f} s"


# -- the same on TLS ----------------------------------------------------------------------------


async def test_tls_sessions_that_idle_after_the_handshake_or_never_shake_hands_are_closed(
        start: Start, dev_pki: DevPki) -> None:
    gw = start(tls=dev_pki, header_timeout=TLS_HEADER_TIMEOUT, limits={"max_connections": 10})
    shaken = await _idle_flood(gw, 10, handshake=True)
    silent = await _idle_flood(gw, 10, handshake=False)
    try:
        await asyncio.sleep(0.1)
        assert b'code="GatewayBusy"' in await gw.health(), "10 idle TLS sessions fill max_connections: 10"
        waited = await _served_within(gw, 20)
        assert waited < TLS_HEADER_TIMEOUT + SLACK, f"an honest TLS client waited {waited:.2f} s"
        began = time.monotonic()
        for sock in silent:
            assert isinstance(sock, socket.socket)
            sock.settimeout(max(0.01, TLS_HEADER_TIMEOUT + SLACK - (time.monotonic() - began)))
            assert sock.recv(1) == b"", "a connection that never starts its handshake is closed"
    finally:
        await _release(shaken + silent)


async def test_tls_trickled_headers_are_closed_at_the_header_timeout(start: Start, dev_pki: DevPki) -> None:
    gw = start(tls=dev_pki, header_timeout=TLS_HEADER_TIMEOUT)
    began = time.monotonic()
    reader, writer = await gw.connect()
    try:
        await _trickle(reader, writer, 20)
    finally:
        await _hang_up(writer)
    lasted = time.monotonic() - began  # the handshake counts
    assert lasted < TLS_HEADER_TIMEOUT + SLACK, f"trickling kept a TLS connection {lasted:.2f} s"


# -- the per-address cap -----------------------------------------------------------------------


async def test_connections_over_the_per_address_cap_get_gateway_busy_and_other_addresses_do_not(
        start: Start) -> None:
    gw = start(header_timeout=30, limits={"max_connections_per_address": 3})
    held = [await gw.connect("127.0.0.2") for _ in range(3)]
    try:
        await asyncio.sleep(0.1)
        refused = await gw.health("127.0.0.2")
        assert refused.startswith(b"HTTP/1.1 503") and b'code="GatewayBusy"' in refused
        assert b"127.0.0.2" in refused, "the fault says which address is over its cap"
        assert (await gw.health("127.0.0.1")).startswith(b"HTTP/1.1 200"), "another address is served"
    finally:
        for _, writer in held:
            await _hang_up(writer)
    await asyncio.sleep(0.2)
    assert (await gw.health("127.0.0.2")).startswith(b"HTTP/1.1 200"), "closed connections free their slots"


@pytest.mark.parametrize(("peer", "counted_as"), [
    (("192.0.2.7", 50000), "192.0.2.7"),
    (("2001:db8:1:2:aaaa::1", 50000, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:bbbb::9", 50000, 0, 0), "2001:db8:1:2::/64"),  # same host, another address of its /64
    (("::ffff:192.0.2.7", 50000, 0, 0), "192.0.2.7"),
    (None, "unknown"),
])
def test_the_per_address_cap_counts_ipv6_callers_by_their_64(peer: Any, counted_as: str) -> None:
    assert address_of(peer) == counted_as


# -- the worker watchdog -------------------------------------------------------------------------


async def test_watchdog_replaces_a_worker_whose_loop_stops_and_the_port_keeps_serving(start: Start) -> None:
    gw = start(workers=2, watchdog_timeout=2)
    deadline = time.monotonic() + 30
    while gw.log.read_text().count(": relaying on ") < 2:  # a worker is watched from its first beat
        assert time.monotonic() < deadline, gw.log.read_text()
        await asyncio.sleep(0.1)
    first = gw.children()
    assert len(first) == 2
    stopped = first[0]
    os.kill(stopped, signal.SIGSTOP)  # its event loop stops answering, the process stays alive
    try:
        deadline = time.monotonic() + 2 + 10
        while time.monotonic() < deadline and (stopped in gw.children() or len(gw.children()) < 2):
            await asyncio.sleep(0.1)
        now = gw.children()
    finally:
        if stopped in gw.children():  # not replaced: do not leave a stopped process behind
            os.kill(stopped, signal.SIGKILL)
    assert stopped not in now and len(now) == 2, f"the hung worker was not replaced: {first} → {now}"
    assert "did not answer for" in gw.log.read_text()
    _wait_healthy(gw)
    answers = [await gw.health() for _ in range(20)]
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), "every connection to the port is served"
