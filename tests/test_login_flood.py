"""Wrong-password floods (issue 17, finding 3) against a real loopback gateway.

Password checks of unknown or wrong credentials must not slow down the
service for authenticated clients (SPEC.md "Hostile input never stalls the
gateway"); the per-address throttle applies before hashing, and a valid
login from the same address does not reset it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from lxml import etree

from gateway.security.passwords import hash_password

from .conftest import GatewayFactory
from .jxhelp import Answer, action, envelope
from .test_auth import basic

PASSWORD = "flood-test-password"
HASH = hash_password(PASSWORD)
#: Concurrent guessers, each on an address of its own (127.0.1.x: all of 127/8 is loopback on Linux).
GUESSERS = 150


def _config(tmp_path: Path) -> dict[str, Any]:
    return {
        "gateway": {"name": "gw-flood", "data_dir": str(tmp_path / "var")},
        "clients": {
            "cityhall-a": {"basic": {"user": "cityhall-a", "password_hash": HASH},
                           "jx": {"receive": ["1310001"], "send": ["1310001"]}},
            "dc-app": {"basic": {"user": "dc-app", "password_hash": HASH}, "jx": {"send": ["DC"]}},
        },
        "endpoints": {"cityhall": {"mailbox": "1310001"}},
    }


_GET = envelope("GetDocument", [("receiverId", "1310001")])


async def _get(http: aiohttp.ClientSession, url: str, user: str, password: str) -> tuple[Answer, float]:
    started = time.perf_counter()
    async with http.post(f"{url}/jx", data=_GET, headers={**action("GetDocument"), **basic(user, password)}) as resp:
        answer = Answer(resp.status, etree.fromstring(await resp.read()))
    return answer, time.perf_counter() - started


async def _honest_latency(http: aiohttp.ClientSession, url: str) -> float:
    answer, took = await _get(http, url, "cityhall-a", PASSWORD)
    assert answer.status == 200 and answer.result is False, answer.fault_code
    return took


async def _guesser(url: str, address: str, attempts: int) -> list[int]:
    """Made-up credentials from ``address``: a wrong password of a real user, then an unknown user."""
    statuses = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0))) as http:
        for n in range(attempts):
            user = "cityhall-a" if n % 2 == 0 else f"nobody-{address}"
            answer, _ = await _get(http, url, user, f"guess-{address}-{n}")
            statuses.append(answer.status)
    return statuses


async def test_a_wrong_password_flood_does_not_slow_jx_for_an_authenticated_client(
        gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    url = await gateway(_config(tmp_path))
    await _honest_latency(http, url)  # its one scrypt check: later calls are verified logins
    quiet = statistics.median([await _honest_latency(http, url) for _ in range(20)])

    flood = asyncio.gather(*(_guesser(url, f"127.0.1.{n}", 2) for n in range(1, GUESSERS + 1)))
    calls = []
    while not flood.done():  # at a steady pace, so that a call stuck behind the flood does not hide others
        calls.append(asyncio.create_task(_honest_latency(http, url)))
        await asyncio.sleep(0.05)
    during = await asyncio.gather(*calls)
    statuses = [status for guesser in await flood for status in guesser]

    # Refused every time: 401 after a check, 429 held off by the throttle, 503 when the check pool is full.
    assert len(statuses) == 2 * GUESSERS and set(statuses) <= {401, 429, 503}, sorted(set(statuses))
    assert len(during) >= 5, "the flood ended before the honest client could be measured"
    median = statistics.median(during)
    print(f"GetDocument median quiet {1000 * quiet:.1f} ms, during the flood {1000 * median:.1f} ms "
          f"(max {1000 * max(during):.1f} ms, {len(during)} calls, statuses {sorted(set(statuses))})")
    # 10 x quiet, with a floor for the scheduler noise of a shared 2-core machine.
    assert median < max(10 * quiet, 0.05), (quiet, median)


async def test_a_valid_login_does_not_reset_the_throttle(gateway: GatewayFactory, tmp_path: Path,
                                                       http: aiohttp.ClientSession) -> None:
    url = await gateway(_config(tmp_path))
    guesses, logins = [], []
    for n in range(5):  # an attacker with an account of its own interleaves valid logins with guesses
        answer, took = await _get(http, url, "dc-app", PASSWORD)
        assert answer.status == 500 and answer.fault_code == "Forbidden"  # logged in, may not poll 1310001
        logins.append(took)
        answer, took = await _get(http, url, "cityhall-a", f"guess-{n}")
        assert answer.status == 401 and answer.fault_code == "Unauthorized"
        guesses.append(took)
    assert guesses[3] >= 0.5 and guesses[4] >= 1.0, guesses  # held back before the hash, despite the logins
    assert max(logins[1:]) < 0.5, logins  # the attacker's own verified login is not held back


async def test_the_throttle_holds_concurrent_guesses_before_hashing(gateway: GatewayFactory, tmp_path: Path) -> None:
    url = await gateway(_config(tmp_path))
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.2.1", 0))) as http:
        answers = await asyncio.gather(*(_get(http, url, "cityhall-a", f"guess-{n}") for n in range(20)))
    statuses = [answer.status for answer, _ in answers]
    checked = statuses.count(401)
    throttled = [answer for answer, _ in answers if answer.status == 429]
    # A few free checks and the few the throttle can hold within its longest delay; the rest are
    # refused at once, their passwords never hashed.
    assert checked <= 8 and len(throttled) == 20 - checked, statuses
    assert {answer.fault_code for answer in throttled} == {"TooManyRequests"}
    assert min(took for answer, took in answers if answer.status == 429) < 0.5
    assert time.perf_counter() - started < 20
