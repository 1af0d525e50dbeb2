"""NTP-corrected time against a real SNTP server on loopback (SPEC.md capability (G))."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC

import pytest

from gateway.errors import ConfigError
from gateway.logs.clock import Clock, Server, evaluate, from_ntp, parse_server, query, request_packet, to_ntp

from .sntp import SntpResponder


@pytest.fixture
def ntp() -> Iterator[SntpResponder]:
    """An SNTP server three seconds ahead of the system clock."""
    with SntpResponder(shift=3.0) as server:
        yield server


async def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Poll ``condition()`` until true; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_shifted_server_moves_clock_by_its_offset(ntp: SntpResponder) -> None:
    clock = Clock([ntp.address], interval=0.2)
    await clock.sync()
    now = clock.now()
    assert now.synced is True
    assert now.offset == pytest.approx(3.0, abs=0.05)
    assert now.ts.tzinfo is UTC
    assert abs(now.ts.timestamp() - (time.time() + 3.0)) < 0.05


async def test_running_clock_syncs_then_desyncs_after_four_intervals(ntp: SntpResponder) -> None:
    clock = Clock([ntp.address], interval=0.2)
    await clock.start()
    try:
        await wait_for(lambda: clock.synced, 2.0)
        ntp.stop()
        gone = time.monotonic()
        await asyncio.sleep(0.3)
        assert clock.synced, "one missed interval must not unsync the clock"
        await wait_for(lambda: not clock.synced, 3.0)
        assert time.monotonic() - gone >= 4 * 0.2 - 0.25
        assert clock.now().offset == pytest.approx(3.0, abs=0.05), "last offset stays in force"
        status = clock.status()
        assert status["synced"] is False
        assert status["servers"][0]["error"].startswith("unreachable")
        assert status["servers"][0]["last_sync"] is not None
    finally:
        await clock.stop()


def test_no_servers_means_offset_zero_and_not_synced() -> None:
    clock = Clock([], interval=64)
    now = clock.now()
    assert (now.offset, now.synced) == (0.0, False)
    assert abs(now.ts.timestamp() - time.time()) < 0.05
    assert clock.status() == {"synced": False, "offset": 0.0, "interval": 64, "max_step": 1.0, "warning": None,
                              "servers": []}


@pytest.mark.parametrize(("stratum", "leap", "reason"), [
    (16, 0, "unsynchronised"),
    (0, 0, "kiss-o'-death"),
    (2, 3, "leap indicator alarm"),
])
async def test_untrustworthy_answers_are_refused(stratum: int, leap: int, reason: str) -> None:
    with SntpResponder(shift=3.0, stratum=stratum, leap=leap) as bad:
        clock = Clock([bad.address], interval=1)
        [sample] = await clock.sync()
    assert not sample.ok and reason in (sample.error or "")
    assert sample.stratum == stratum
    assert (clock.offset, clock.synced) == (0.0, False)


async def test_origin_mismatch_is_refused() -> None:
    with SntpResponder(shift=3.0) as spoofed:
        spoofed.bad_origin = True
        sample = await query(parse_server(spoofed.address))
    assert not sample.ok and "origin timestamp mismatch" in (sample.error or "")


async def test_negative_delay_is_refused() -> None:
    with SntpResponder(shift=3.0) as liar:
        liar.claimed_processing = 2.0  # claims two seconds of processing within a loopback round trip
        sample = await query(parse_server(liar.address))
    assert not sample.ok and "negative round-trip delay" in (sample.error or "")


def test_absurd_delay_is_refused() -> None:
    nonce = 12345
    t1 = 1_700_000_000.0
    reply = bytearray(request_packet(0))
    reply[0] = (0 << 6) | (4 << 3) | 4
    reply[1] = 2
    reply[24:32] = nonce.to_bytes(8, "big")
    reply[32:40] = to_ntp(t1 + 0.1).to_bytes(8, "big")
    reply[40:48] = to_ntp(t1 + 0.1).to_bytes(8, "big")
    sample = evaluate("s", bytes(reply), nonce=nonce, t1=t1, t4=t1 + 1.5)
    assert not sample.ok and "exceeds 1 s" in (sample.error or "")
    good = evaluate("s", bytes(reply), nonce=nonce, t1=t1, t4=t1 + 0.2)
    assert good.ok and good.offset == pytest.approx(0.0, abs=1e-6) and good.delay == pytest.approx(0.2, abs=1e-6)


async def test_median_of_three_servers_outvotes_a_false_ticker() -> None:
    with (SntpResponder(shift=2.9) as a, SntpResponder(shift=3.0) as b, SntpResponder(shift=60.0) as c):
        clock = Clock([a.address, b.address, c.address], interval=1)
        samples = await clock.sync()
    assert all(s.ok for s in samples)
    assert clock.offset == pytest.approx(3.0, abs=0.05)


async def test_bad_servers_do_not_vote() -> None:
    with (SntpResponder(shift=3.0) as a, SntpResponder(shift=3.2) as b,
          SntpResponder(shift=60.0, stratum=16) as c):
        clock = Clock([a.address, b.address, c.address], interval=1)
        await clock.sync()
        status = clock.status()
    assert clock.offset == pytest.approx(3.1, abs=0.05), "median of the two good answers"
    assert [s["ok"] for s in status["servers"]] == [True, True, False]
    assert status["servers"][2]["stratum"] is None and "stratum 16" in status["servers"][2]["error"]


async def test_silent_server_times_out() -> None:
    with SntpResponder() as mute:
        mute.stratum = 2
        mute.answer = lambda data, received: None  # type: ignore[method-assign]
        sample = await query(parse_server(mute.address), timeout=0.3)
    assert not sample.ok and "no answer within 0.3 s" in (sample.error or "")


@pytest.mark.parametrize(("text", "server"), [
    ("ntp.nict.jp", Server(host="ntp.nict.jp")),
    ("127.0.0.1:1123", Server(host="127.0.0.1", port=1123)),
    ("[::1]:1123", Server(host="::1", port=1123)),
    ("::1", Server(host="::1")),
])
def test_server_names(text: str, server: Server) -> None:
    assert parse_server(text) == server
    assert parse_server(server.label) == server


@pytest.mark.parametrize("text", ["host:", "host:0", "host:70000", "[::1", ":123", "host:x"])
def test_bad_server_names_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_server(text)


def test_ntp_timestamps_round_trip_and_wrap_in_2036() -> None:
    for unix in (0.0, 1_700_000_000.25, 2_085_978_496.0 + 10.5):  # the last is after the 2036 era wrap
        assert from_ntp(to_ntp(unix)) == pytest.approx(unix, abs=1e-6)


@pytest.mark.parametrize("version", [3, 4])
def test_sntp_answers_v3_and_v4_clients(ntp: SntpResponder, version: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", ntp.port))
        t1 = time.time()
        sock.send(request_packet(42, version=version))
        reply = sock.recv(1024)
        t4 = time.time()
    assert (reply[0] >> 3) & 7 == version
    sample = evaluate("s", reply, nonce=42, t1=t1, t4=t4)
    assert sample.ok and sample.offset == pytest.approx(3.0, abs=0.05)
