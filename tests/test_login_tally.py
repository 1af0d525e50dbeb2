"""Refused logins under a flood (issue 17, the ``attack`` bench scenario) against a real loopback gateway.

A refusal that cost no password check — throttled, check pool full, no or
malformed credentials — is counted per address and logged as one
``auth-tally`` record per address and fault per interval, so that a flood
does not put one send/receive-log record per guess in front of every
honest exchange's commit.  Every refusal is still accounted for: a refusal
after a real check keeps its record of its own, the tallies carry the rest
as counts.  The password checks' threads run at the lowest CPU priority.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.errors import LoginBusy, Unauthorized
from gateway.logs.tables import LogFilter
from gateway.security.auth import Authenticator
from gateway.security.passwords import CLEAN_RESERVE, PasswordChecks, hash_password
from gateway.serve.app import AppOptions, make_app
from routing.config import parse_config

from .conftest import start_app, write_yaml
from .jxhelp import action
from .records import records
from .test_auth import basic
from .test_login_flood import _GET, PASSWORD

HASH = hash_password(PASSWORD)


def _config(tmp_path: Path) -> dict[str, object]:
    return {
        "gateway": {"name": "gw-tally", "data_dir": str(tmp_path / "var"), "db": f"sqlite:///{tmp_path}/log.db"},
        "clients": {"cityhall-a": {"basic": {"user": "cityhall-a", "password_hash": HASH},
                                   "jx": {"receive": ["1310001"]}}},
        "endpoints": {"cityhall": {"mailbox": "1310001"}},
    }


async def _post(url: str, address: str, headers: dict[str, str], count: int) -> list[int]:
    """``count`` concurrent GetDocument calls from ``address``; their HTTP statuses."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) as http:
        async def one() -> int:
            async with http.post(f"{url}/jx", data=_GET, headers={**action("GetDocument"), **headers}) as resp:
                await resp.read()
                return resp.status
        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_refusals_without_a_password_check_are_counted_per_address_not_logged_one_by_one(
        tmp_path: Path) -> None:
    config = _config(tmp_path)
    write_yaml(tmp_path / "endpoints.yaml", config)
    runner, url = await start_app(make_app(parse_config(config, source=tmp_path / "endpoints.yaml"),
                                           AppOptions(watch_config=False)))
    try:
        guesses = await _post(url, "127.0.3.1", basic("cityhall-a", "wrong"), 30)
        anonymous = await _post(url, "127.0.3.2", {}, 25)
    finally:
        await runner.cleanup()  # flushes the tallies into the log, then closes it

    assert set(guesses) <= {401, 429, 503} and guesses.count(429) >= 15, Counter(guesses)
    assert anonymous == [401] * 25
    tallies = records(tmp_path / "log.db", LogFilter(kind="auth-tally"))
    single = records(tmp_path / "log.db", LogFilter(kind="auth"))
    counted = Counter({(r.endpoint, r.http_status): r.bytes_in for r in tallies})
    # One record per address and fault, carrying the count.
    assert len(tallies) == len(counted), [r.to_json() for r in tallies]
    assert counted[("127.0.3.2", 401)] == 25
    assert counted[("127.0.3.1", 429)] == guesses.count(429)
    assert counted[("127.0.3.1", 503)] == guesses.count(503)
    assert all(r.client == "user:cityhall-a" for r in tallies if r.endpoint == "127.0.3.1")
    # A refusal after a real check is still logged on its own: every refusal is accounted for.
    assert len(single) == guesses.count(401), [r.to_json() for r in single]
    assert all(r.fault_code == "Unauthorized" and r.client == "user:cityhall-a" for r in single)
    assert sum(counted.values()) + len(single) == len(guesses) + len(anonymous)


async def test_password_checks_run_at_the_lowest_cpu_priority() -> None:
    checks = PasswordChecks()
    try:
        assert await checks.verify(PASSWORD, HASH)
        threads = [t for t in threading.enumerate() if t.name.startswith("password")]
        assert threads and all(t.native_id is not None for t in threads)
        assert {os.getpriority(os.PRIO_PROCESS, t.native_id or 0) for t in threads} == {19}
        # Only those threads: the event loop's keeps its priority.
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19
    finally:
        checks.close()


@pytest.mark.timeout(300)
async def test_checks_from_failing_addresses_queue_behind_and_cannot_crowd_out_a_new_login() -> None:
    """A flood of guesses from addresses that failed lately (suspect) waits behind, and never takes the last
    CLEAN_RESERVE places from, a client logging in for the first time: it is checked, not refused busy."""
    slow = hash_password("x").replace("ln=14", "ln=16")  # a check that takes a while (it never matches)
    checks = PasswordChecks(workers=1, queue=CLEAN_RESERVE + 2, wait=300.0)  # a busy machine: no timeouts here
    order: list[str] = []

    async def check(name: str, suspect: bool) -> str:
        try:
            await checks.verify("guess", slow, suspect=suspect)
        except LoginBusy:
            return "busy"
        order.append(name)
        return "checked"

    try:
        running = asyncio.create_task(check("first", False))
        await asyncio.sleep(0.05)
        suspects = [asyncio.create_task(check(f"suspect-{n}", True)) for n in range(4)]
        await asyncio.sleep(0.05)
        newcomers = [asyncio.create_task(check(f"newcomer-{n}", False)) for n in range(CLEAN_RESERVE + 1)]
        results = await asyncio.gather(running, *suspects, *newcomers)
    finally:
        checks.close()
    # Two suspects waited (queue - CLEAN_RESERVE), two were refused at once; one of the waiting was then
    # refused to make room for the fifth newcomer, and every newcomer ran before the suspect left waiting.
    assert results[1:5].count("busy") == 3, results
    assert results[5:] == ["checked"] * (CLEAN_RESERVE + 1), results
    assert order == ["first", *(f"newcomer-{n}" for n in range(CLEAN_RESERVE + 1)), "suspect-0"], order


async def test_an_address_refused_busy_ranks_behind_until_its_window_ends(tmp_path: Path) -> None:
    """A flood from many fresh addresses meets the full pool before any of its checks fails: a busy refusal
    ranks that address's later checks behind others' (without holding them back as a failure would)."""
    authenticator = Authenticator(PasswordChecks(workers=1, queue=0))
    clients = parse_config(_config(tmp_path)).clients

    async def handle(request: web.Request) -> web.Response:
        try:
            await authenticator.identify(request, clients)
        except (LoginBusy, Unauthorized) as exc:
            return web.Response(status=exc.http_status, text=exc.code)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/jx", handle)
    runner, url = await start_app(app)
    try:
        slow = hash_password("x").replace("ln=14", "ln=16")
        running = asyncio.create_task(authenticator.checks.verify("guess", slow))  # the one thread is busy
        await asyncio.sleep(0.05)
        assert not authenticator.throttle.failing("127.0.6.1")
        assert await _post(url, "127.0.6.1", basic("cityhall-a", "wrong"), 1) == [503]
        assert authenticator.throttle.failing("127.0.6.1")
        assert not authenticator.throttle.failing("127.0.6.2")
        assert authenticator.throttle.admit("127.0.6.1") == 0.0  # no failure counted: not held back
        await running
    finally:
        await runner.cleanup()
        authenticator.close()
