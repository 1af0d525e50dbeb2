"""Time that cannot be moved (SPEC.md Version 2, "Time"): NTP steps need a majority of the servers.

Issue 18, finding 8: one answer from the single configured server shifted the
gateway's time by a day or a year at once, still ``ntp_synced: true``; log
times were back-dated and a day-old expired signed message was accepted.
Every server here is a real SNTP responder on loopback (tests/sntp.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.errors import ConfigError
from gateway.logs.clock import Clock, Sample
from routing.config import parse_config

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import GatewayFactory, RecordingBackend, soap11_headers
from .records import relay_records
from .sntp import SntpResponder
from .test_auth import basic
from .test_wss_relay import secured_config, signed_now

__all__ = ["dev_pki"]

DAY = 86_400.0
YEAR = 365 * DAY


@pytest.fixture
def servers() -> Iterator[Callable[[int], list[SntpResponder]]]:
    """Start ``n`` SNTP responders serving the system time."""
    with ExitStack() as stack:
        yield lambda n: [stack.enter_context(SntpResponder()) for _ in range(n)]


# -- the clock ----------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [-DAY, YEAR], ids=["minus-a-day", "plus-a-year"])
async def test_a_lone_server_cannot_step_the_clock_after_the_first_sync(
        servers: Callable[[int], list[SntpResponder]], step: float) -> None:
    [ntp] = servers(1)
    clock = Clock([ntp.address], interval=1)
    await clock.sync()
    assert clock.synced and clock.offset == pytest.approx(0.0, abs=0.05)

    ntp.shift = step
    [sample] = await clock.sync()
    assert sample.ok and sample.offset == pytest.approx(step, abs=0.05), "the server did answer the step"
    now = clock.now()
    assert now.offset == pytest.approx(0.0, abs=0.05), "the step is not applied"
    assert abs(now.ts.timestamp() - time.time()) < 0.05
    assert now.synced is False
    warning = clock.status()["warning"]
    assert warning is not None and "max_step" in warning

    ntp.shift = 0.2  # the server comes back to a time within max_step of ours
    await clock.sync()
    assert clock.synced and clock.offset == pytest.approx(0.2, abs=0.05)
    assert clock.status()["warning"] is None


async def test_the_first_sync_sets_the_offset_whatever_it_is(servers: Callable[[int], list[SntpResponder]]) -> None:
    [ntp] = servers(1)
    ntp.shift = 3600.0  # a gateway host whose clock is an hour off: NTP is what corrects it
    clock = Clock([ntp.address], interval=1)
    await clock.sync()
    assert clock.synced and clock.offset == pytest.approx(3600.0, abs=0.05)


async def test_corrections_within_max_step_need_no_vote(servers: Callable[[int], list[SntpResponder]]) -> None:
    [ntp] = servers(1)
    clock = Clock([ntp.address], interval=1, max_step=1.0)
    await clock.sync()
    ntp.shift = 0.8
    await clock.sync()
    assert clock.synced and clock.offset == pytest.approx(0.8, abs=0.05)


async def test_a_step_most_servers_agree_on_is_applied(servers: Callable[[int], list[SntpResponder]]) -> None:
    a, b, c = servers(3)
    clock = Clock([a.address, b.address, c.address], interval=1)
    await clock.sync()
    a.shift, b.shift = 5.0, 5.1  # two of three: a majority, within max_step of each other
    await clock.sync()
    assert clock.synced and clock.offset == pytest.approx(5.05, abs=0.06)
    assert clock.status()["warning"] is None


async def test_a_step_without_a_majority_of_the_configured_servers_is_refused(
        servers: Callable[[int], list[SntpResponder]]) -> None:
    a, b, c, d = servers(4)
    clock = Clock([s.address for s in (a, b, c, d)], interval=1)
    await clock.sync()
    # Two of four is not most; the median of the answers would be 30 minutes off.
    a.shift, b.shift = 3600.0, 3600.0
    await clock.sync()
    assert clock.offset == pytest.approx(0.0, abs=0.05) and clock.synced is False
    # Silent servers are configured servers too: one good answer and one liar of three is no majority.
    d.stop()
    a.shift, b.shift = 0.0, 0.0
    three = Clock([a.address, b.address, d.address], interval=1, timeout=0.3)
    await three.sync()
    a.shift = -DAY
    await three.sync()
    assert three.offset == pytest.approx(0.0, abs=0.05) and three.synced is False


def test_servers_agree_within_the_tolerance() -> None:
    from gateway.logs.clock import agreed_offset

    def sample(offset: float | None) -> Sample:
        return Sample(server=f"s{offset}", at=0.0, offset=offset, error=None if offset is not None else "down")

    assert agreed_offset([sample(5.0), sample(5.4), sample(0.0)], configured=3, tolerance=1.0) == \
        pytest.approx(5.2)
    assert agreed_offset([sample(5.0), sample(7.0), sample(0.0)], configured=3, tolerance=1.0) is None
    assert agreed_offset([sample(5.0), sample(5.0), sample(None)], configured=3, tolerance=1.0) == 5.0
    assert agreed_offset([sample(5.0), sample(5.0)], configured=4, tolerance=1.0) is None
    assert agreed_offset([sample(5.0)], configured=1, tolerance=1.0) is None, "one source can never vouch for a step"


def test_max_step_is_configured_in_seconds() -> None:
    assert parse_config({}).gateway.ntp.max_step == 1.0
    assert parse_config({"gateway": {"ntp": {"max_step": 0.25}}}).gateway.ntp.max_step == 0.25
    for bad in (0, -1, "x"):
        with pytest.raises(ConfigError, match=r"gateway\.ntp\.max_step"):
            parse_config({"gateway": {"ntp": {"max_step": bad}}})


# -- a running gateway ------------------------------------------------------------------------------

async def _health(http: aiohttp.ClientSession, gw: str) -> dict[str, Any]:
    async with http.get(f"{gw}/healthz") as resp:
        body: dict[str, Any] = (await resp.json())["ntp"]
        return body


async def _until(http: aiohttp.ClientSession, gw: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for _ in range(200):
        ntp = await _health(http, gw)
        if done(ntp):
            return ntp
        await asyncio.sleep(0.05)
    raise AssertionError(f"/healthz ntp never became as expected: {ntp}")


async def test_a_gateway_keeps_its_time_and_refuses_a_day_old_signed_message(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
        dev_pki: DevPki, servers: Callable[[int], list[SntpResponder]]) -> None:
    [ntp] = servers(1)
    config = secured_config(tmp_path, dev_pki, backend.url)
    config["gateway"]["ntp"] = {"servers": [ntp.address], "interval": 1}
    gw = await gateway(config)
    await _until(http, gw, lambda n: bool(n["synced"]))

    ntp.shift = -DAY  # the attack: the one server moves the gateway back a day
    health = await _until(http, gw, lambda n: n["servers"][0]["offset"] is not None
                          and n["servers"][0]["offset"] < -DAY / 2)
    health = await _until(http, gw, lambda n: not n["synced"])
    assert health["warning"] and "max_step" in health["warning"]
    assert abs(health["offset"]) < 0.05

    day_old = signed_now(dev_pki, at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
    sent = time.time()
    async with http.post(f"{gw}/soap", data=day_old, headers={**soap11_headers(), **basic("juki", "pw")}) as resp:
        body = await resp.read()
    assert resp.status == 400 and b'code="Expired"' in body, body
    assert backend.seen == []

    for _ in range(100):
        logged = relay_records(tmp_path / "wss.db")
        if len(logged) == 2:
            break
        await asyncio.sleep(0.05)
    assert len(logged) == 2
    for record in logged:
        assert record.ntp_synced is False
        assert abs(record.ts.timestamp() - sent) < 1.0, "log times are not back-dated"
        local = record.ts.timestamp() - record.ntp_offset  # the local clock a record carries
        assert abs(local - sent) < 1.0
