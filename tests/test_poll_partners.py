"""``bmrgw poll --config poll.yaml`` (issue 21, item 4): partners, schedules, hooks, as a real process."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.errors import ConfigError
from gateway.jx.schedule import parse_cron

from .conftest import BMRGW, GatewayFactory, write_yaml
from .jxhelp import get, put

#: A hook that records when it ran, how, and with which arguments (one JSON line per run).
HOOK = """\
import json, os, sys, time
record = {"t": time.time(), "argv": sys.argv[1:], "partner": os.environ.get("BMRGW_PARTNER"),
          "exist": [os.path.exists(a) for a in sys.argv[3:]]}
with open(sys.argv[2], "a", encoding="utf-8") as fh:
    fh.write(json.dumps(record, ensure_ascii=False) + "\\n")
if sys.argv[1] == "fail":
    print("cannot reach the resident system")
    sys.exit(3)
if sys.argv[1] == "hang":
    time.sleep(60)
"""


def runs(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    path = tmp_path / "hook script.py"
    path.write_text(HOOK, encoding="utf-8")
    return path


async def poll_config(config: Path, *extra: str, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*BMRGW, "poll", "--config", str(config), *extra,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


# -- schedules, on an injected clock ---------------------------------------------------

JST = timezone(timedelta(hours=9))


@pytest.mark.parametrize(("cron", "after", "expected"), [
    ("0 8,17 * * mon-fri", "2026-04-03 17:00:00", "2026-04-06 08:00:00"),  # Friday evening -> Monday
    ("0 8,17 * * mon-fri", "2026-04-06 07:59:59", "2026-04-06 08:00:00"),
    ("*/15 * * * *", "2026-04-06 10:15:00", "2026-04-06 10:30:00"),
    ("30 9 1 * *", "2026-04-06 10:00:00", "2026-05-01 09:30:00"),
    ("0 0 13 * 5", "2026-04-06 00:00:00", "2026-04-10 00:00:00"),  # day 13 OR Friday, as cron does
    ("*/2 * * * * *", "2026-04-06 10:00:00.400000", "2026-04-06 10:00:02"),
    ("0 0 29 2 *", "2026-03-01 00:00:00", "2028-02-29 00:00:00"),
])
def test_cron_times_on_an_injected_clock(cron: str, after: str, expected: str) -> None:
    moment = datetime.fromisoformat(after).replace(tzinfo=JST)
    assert parse_cron(cron, "schedule.cron").next_after(moment) == datetime.fromisoformat(expected).replace(tzinfo=JST)


@pytest.mark.parametrize(("cron", "error"), [
    ("0 8 * *", "5 fields"), ("61 * * * *", "minute '61'"), ("0 8 * * funday", "weekday 'funday'"),
    ("*/0 * * * *", "outside"), ("0 0 30 2 *", "never fires"),
])
def test_wrong_cron_expressions_are_named(cron: str, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_cron(cron, "partners.dc.schedule.cron").next_after(datetime(2026, 1, 1, tzinfo=JST))
    assert error in raised.value.reason and "partners.dc.schedule.cron" in raised.value.reason


# -- the config file ---------------------------------------------------------------------

PARTNER = {"server": "http://127.0.0.1:9/jx", "receiver_id": "1310001", "out": "in"}


@pytest.mark.parametrize(("change", "error"), [
    ({"receiver_id": 1310001}, 'partners.dc.receiver_id: write the id in quotes'),
    ({"schedule": {"every": "5"}}, "partners.dc.schedule.every: must be a duration with its unit"),
    ({"schedule": {"every": "5m", "cron": "* * * * *"}}, "partners.dc.schedule: give either every"),
    ({"schedule": {"cron": "0 25 * * *"}}, "partners.dc.schedule.cron (hour '25')"),
    ({"before": "export.bat --all"}, "partners.dc.before: write the command as a list"),
    ({"compression": "lzh"}, "partners.dc.compression: must be gzip, zip or none"),
    ({"password": "x"}, "partners.dc: a password needs its user"),
    ({"user": "u", "password_env": "BMRGW_TEST_UNSET_VARIABLE"}, "environment variable BMRGW_TEST_UNSET_VARIABLE"),
    ({"server": "dc-gw/jx"}, "partners.dc.server"),
    ({"outbox": "in"}, "partners.dc.outbox"),
    ({"colour": "blue"}, "partners.dc: unknown key 'colour'"),
    ({"names": "fileName"}, "partners.dc.names: must be messageId or documentType"),
])
async def test_config_errors_name_the_key(tmp_path: Path, change: dict[str, Any], error: str) -> None:
    config = tmp_path / "poll.yaml"
    write_yaml(config, {"partners": {"dc": {**PARTNER, **change}}})
    code, out = await poll_config(config, "--once")
    assert code == 2 and error in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1  # one line, on an operator's screen


async def test_config_and_single_partner_options_do_not_mix(tmp_path: Path) -> None:
    config = tmp_path / "poll.yaml"
    write_yaml(config, {"partners": {"dc": PARTNER}})
    code, out = await poll_config(config, "--server", "http://127.0.0.1:9/jx", "--once")
    assert code == 2 and "--server cannot be given with it" in out


# -- partners, schedules and hooks through the real process --------------------------------

def partner(url: str, tmp_path: Path, name: str, receiver: str, hook: Path, **more: Any) -> dict[str, Any]:
    calls = str(tmp_path / f"{name}-hooks.jsonl")
    return {"server": f"{url}/jx", "receiver_id": receiver, "out": f"{name}/受信 in", "outbox": f"{name}/送信 out",
            "before": [sys.executable, str(hook), "before", calls],
            "after": [sys.executable, str(hook), "after", calls], "hook_timeout": "20s", **more}


async def test_partners_poll_on_their_schedules_and_hooks_get_the_paths(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, hook: Path) -> None:
    url = await gateway({"gateway": {"name": "dc-partners", "data_dir": str(tmp_path / "var")}})
    for n in range(3):
        await put(http, url, f"a-{n}.csv", f"for a {n}".encode(), receiver="1310001")
    await put(http, url, "b-0", b"for b", receiver="1320002")
    a_outbox = tmp_path / "a" / "送信 out"
    a_outbox.mkdir(parents=True)
    (a_outbox / "結果 2026年4月; rm -rf x.csv").write_bytes(b"id,ok\n")  # spaces, Japanese, shell syntax
    config = tmp_path / "poll.yaml"
    write_yaml(config, {"log_file": "logs/poll.log", "partners": {
        "a": partner(url, tmp_path, "a", "1310001", hook, schedule={"every": "1s", "jitter": 0}),
        "b": partner(url, tmp_path, "b", "1320002", hook, schedule={"cron": "*/2 * * * * *"}),
    }})
    proc = await asyncio.create_subprocess_exec(*BMRGW, "poll", "--config", str(config),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    await asyncio.sleep(8.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, out.decode()

    a_in = tmp_path / "a" / "受信 in"
    assert sorted(p.name for p in a_in.iterdir() if p.is_file()) == ["a-0.csv", "a-1.csv", "a-2.csv"]
    assert (tmp_path / "b" / "受信 in" / "b-0").read_bytes() == b"for b"
    assert (a_outbox / "sent" / "結果 2026年4月; rm -rf x.csv").exists()
    assert not list(tmp_path.glob("x*"))  # nothing in a name was run
    uploaded = await get(http, url, receiver="DC")
    assert uploaded.text(".//jx:documentType") == "結果 2026年4月; rm -rf x.csv"

    a_runs, b_runs = runs(tmp_path / "a-hooks.jsonl"), runs(tmp_path / "b-hooks.jsonl")
    a_after = [r for r in a_runs if r["argv"][0] == "after"]
    assert len(a_after) == 1 and a_after[0]["partner"] == "a"
    assert sorted(a_after[0]["argv"][2:]) == sorted(str(a_in / f"a-{n}.csv") for n in range(3))
    assert all(a_after[0]["exist"])  # the files are in place when the hook runs
    first_before = next(r for r in a_runs if r["argv"][0] == "before")
    assert first_before["argv"][2:] == [str(a_outbox / "結果 2026年4月; rm -rf x.csv")]
    a_starts = [r["t"] for r in a_runs if r["argv"][0] == "before"]
    gaps = [b - a for a, b in zip(a_starts, a_starts[1:])]
    assert len(a_starts) >= 3 and all(0.9 <= gap <= 4.0 for gap in gaps), gaps  # every 1 s (plus the round)
    b_starts = [r["t"] for r in b_runs if r["argv"][0] == "before"]
    # The first round runs at start (documents may be waiting); the later ones at even seconds.
    assert len(b_starts) >= 3 and all(t % 2 < 1.0 for t in b_starts[1:]), b_starts
    log = (tmp_path / "logs" / "poll.log").read_text(encoding="utf-8")
    assert "bmrgw.poll.a: received a-0.csv" in log and "bmrgw.poll.b: confirmed b-0" in log


async def test_failing_and_hanging_hooks_are_reported(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, hook: Path) -> None:
    url = await gateway({"gateway": {"name": "dc-hooks", "data_dir": str(tmp_path / "var")}})
    await put(http, url, "doc-1", b"payload", receiver="1310001")
    a = partner(url, tmp_path, "a", "1310001", hook)
    a["after"][2] = "fail"
    b = partner(url, tmp_path, "b", "1320002", hook, hook_timeout="1s")
    b["before"][2] = "hang"
    (tmp_path / "b" / "送信 out").mkdir(parents=True)
    (tmp_path / "b" / "送信 out" / "kekka.csv").write_bytes(b"x")
    config = tmp_path / "poll.yaml"
    write_yaml(config, {"partners": {"a": a, "b": b}})
    started = time.monotonic()
    code, out = await poll_config(config, "--once")
    assert code == 1, out
    assert time.monotonic() - started < 30  # the hanging hook was killed after its second
    assert "after hook " in out and "exited with status 3: cannot reach the resident system" in out
    assert "before hook " in out and "did not end within 1 s and was killed" in out
    assert "round done: 1 received, 0 sent, 1 failed (1 hook)" in out
    assert "round done: 0 received, 0 sent, 1 failed (1 hook)" in out
    assert "2 of 2 partner(s) failed: a, b" in out
    assert (tmp_path / "a" / "受信 in" / "doc-1").read_bytes() == b"payload"  # stored and confirmed all the same
    assert (await get(http, url)).result is False
    assert (tmp_path / "b" / "送信 out" / "kekka.csv").exists()  # not sent: its before hook failed
