"""The mailbox operator's view (issue 21, item 6): search, forced confirm, purge, retention."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import create_engine, text

from gateway.cli import main

from .conftest import GatewayFactory, write_yaml
from .pg import pg_schema
from .jxhelp import confirm, get, put

_DAY_MS = 86_400_000


def jx(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["jx", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys: pytest.CaptureFixture[str], path: Path, *argv: str) -> list[str]:
    code, out, err = jx(capsys, "list", "--format", "json", "--config", path, *argv)
    assert code == 0, err
    return [json.loads(line)["message_id"] for line in out.splitlines()]


def age(db: str, message_id: str, days: float) -> None:
    """Make a document look ``days`` old (arrived, and confirmed if it is)."""
    engine = create_engine(db)
    at = int(time.time() * 1000 - days * _DAY_MS)
    with engine.begin() as c:
        c.execute(text("UPDATE jx_document SET created_ms = :at, confirmed_ms = CASE WHEN confirmed_ms IS NULL "
                       "THEN NULL ELSE :at END WHERE message_id = :id"), {"at": at, "id": message_id})
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path, str]]:
    if request.param == "sqlite":
        yield from _cfg(tmp_path, f"sqlite:///{tmp_path}/bmrgw-0.db")
    else:
        with pg_schema() as url:
            yield from _cfg(tmp_path, url)


def _cfg(tmp_path: Path, db: str) -> Iterator[tuple[dict[str, Any], Path, str]]:
    data: dict[str, Any] = {"gateway": {"name": "dc-op", "db": db, "data_dir": str(tmp_path / "var"),
                                        "jx": {"lease_seconds": 60, "max_deliveries": 1, "retention": None}}}
    path = tmp_path / "endpoints-op.yaml"
    write_yaml(path, data)
    yield data, path, db


async def four_states(url: str, http: aiohttp.ClientSession, db: str) -> None:
    """new (pending), got (delivered), done (confirmed), gone (dead); other-* from another sender."""
    for message_id, sender in [("gone", "DC"), ("got", "DC"), ("done", "DC"), ("new", "DC"), ("other-1", "KAIGO")]:
        assert (await put(http, url, message_id, message_id.encode(), sender=sender, receiver="1310001")).result
    assert (await get(http, url)).text(".//jx:messageId") == "gone"
    age(db, "gone", 0)
    engine = create_engine(db)
    with engine.begin() as c:  # its lease ran out long ago: the next poll parks it (max_deliveries 1)
        c.execute(text("UPDATE jx_document SET lease_until_ms = 1 WHERE message_id = 'gone'"))
    engine.dispose()
    assert (await get(http, url)).text(".//jx:messageId") == "got"
    assert (await get(http, url)).text(".//jx:messageId") == "done"
    assert (await confirm(http, url, "done")).result is True


async def test_list_searches_by_state_sender_receiver_and_date(
        cfg: tuple[dict[str, Any], Path, str], gateway: GatewayFactory, http: aiohttp.ClientSession,
        capsys: pytest.CaptureFixture[str]) -> None:
    data, path, db = cfg
    url = await gateway(data)
    await four_states(url, http, db)
    assert listed(capsys, path) == ["got", "new", "other-1"]  # waiting: pending and delivered
    assert listed(capsys, path, "--state", "未取得") == ["new", "other-1"]
    assert listed(capsys, path, "--state", "pending", "--sender", "DC") == ["new"]
    assert listed(capsys, path, "--state", "取得済み") == ["got"]
    assert listed(capsys, path, "--state", "confirmed") == ["done"]
    assert listed(capsys, path, "--state", "dead") == ["gone"]
    assert listed(capsys, path, "--state", "all", "--receiver", "nobody") == []
    age(db, "new", 3)
    assert listed(capsys, path, "--state", "all", "--until", "2d") == ["new"]
    assert listed(capsys, path, "--state", "all", "--since", "1d", "--sender", "DC") == ["gone", "got", "done"]
    code, out, _ = jx(capsys, "list", "--state", "delivered", "--config", path)
    assert "delivered (leased)" in out  # the table says a lease runs
    with pytest.raises(SystemExit) as exited:
        jx(capsys, "list", "--state", "lost", "--config", path)
    err = capsys.readouterr()[1]
    assert exited.value.code == 2 and "not a state" in err and "Traceback" not in err


async def test_forced_confirm_is_logged_and_ends_delivery(
        cfg: tuple[dict[str, Any], Path, str], gateway: GatewayFactory, http: aiohttp.ClientSession,
        capsys: pytest.CaptureFixture[str]) -> None:
    data, path, db = cfg
    url = await gateway(data)
    await four_states(url, http, db)
    code, out, err = jx(capsys, "confirm", "new", "--config", path)
    assert code == 0 and "confirmed new for 1310001 (was pending)" in out, err
    assert listed(capsys, path, "--state", "confirmed") == ["done", "new"]
    code, out, _ = jx(capsys, "confirm", "new", "--config", path)
    assert code == 0 and "confirmed already" in out
    code, _, err = jx(capsys, "confirm", "nope", "--config", path)
    assert code == 1 and "no document with messageId 'nope'" in err
    code = main(["logs", "--message-id", "new", "--format", "json", "--config", str(path)])
    records = [json.loads(line) for line in capsys.readouterr()[0].splitlines()]
    assert [r["endpoint"] for r in records if r["endpoint"] == "jx:confirm-forced"] == ["jx:confirm-forced"]
    assert (await get(http, url)).text(".//jx:messageId") == "other-1"  # "new" is not handed out any more


async def test_purge_older_than_asks_dry_runs_and_deletes_by_state(
        cfg: tuple[dict[str, Any], Path, str], gateway: GatewayFactory, http: aiohttp.ClientSession,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data, path, db = cfg
    url = await gateway(data)
    await four_states(url, http, db)
    for message_id in ("gone", "got", "done", "new"):
        age(db, message_id, 40)
    code, out, _ = jx(capsys, "purge", "--older-than", "30d", "--dry-run", "--config", path)
    assert code == 0 and "dry run: 1 confirmed" in out and "done" in out
    assert listed(capsys, path, "--state", "confirmed") == ["done"]
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, out, _ = jx(capsys, "purge", "--older-than", "30d", "--config", path)
    assert code == 0 and "nothing purged" in out and listed(capsys, path, "--state", "confirmed") == ["done"]
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no one to ask (cron): refuse, do not guess
    code, _, err = jx(capsys, "purge", "--older-than", "30d", "--config", path)
    assert code == 2 and "--yes" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, out, _ = jx(capsys, "purge", "--older-than", "30d", "--config", path)
    assert code == 0 and "purged 1 document (confirmed" in out
    assert listed(capsys, path, "--state", "all") == ["gone", "got", "new", "other-1"]  # waiting ones stay
    code, out, _ = jx(capsys, "purge", "--older-than", "30d", "--state", "dead", "--state", "未取得", "--yes",
                      "--config", path)
    assert code == 0 and "purged 2 documents" in out
    assert listed(capsys, path, "--state", "all") == ["got", "other-1"]  # other-1 is new: not older than 30d
    # The bytes went with their rows: small documents are jx_blob rows on both stores (SQLite's
    # ``auto`` keeps documents of up to 64 KiB in the database), so no blob file was ever made.
    assert not list((tmp_path / "var" / "jx" / "blobs").iterdir())
    engine = create_engine(db)
    with engine.connect() as c:
        blobs = [bytes(row[0]) for row in c.execute(text("SELECT data FROM jx_blob"))]
    engine.dispose()
    assert sorted(blobs) == [b"got", b"other-1"]


async def test_running_gateway_applies_retention_in_batches(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO, logger="bmrgw.jx")
    data: dict[str, Any] = {"gateway": {"name": "dc-ret", "data_dir": str(tmp_path / "var"), "jx": {
        "retention": {"confirmed": "1s", "dead": "30d", "every": "1s", "batch": 2}}}}
    url = await gateway(data)
    for n in range(5):
        await put(http, url, f"r-{n}", b"x")
    await put(http, url, "keep", b"y", receiver="other")
    for n in range(5):
        got = await get(http, url)
        assert (await confirm(http, url, got.text(".//jx:messageId") or "")).result is True
    path = tmp_path / "endpoints-0.yaml"
    deadline = time.monotonic() + 15
    while listed(capsys, path, "--state", "all") != ["keep"]:
        assert time.monotonic() < deadline, "retention did not delete the confirmed documents"
        await asyncio.sleep(0.3)
    batches = [r.getMessage() for r in caplog.records if "jx retention: deleted" in r.getMessage()]
    assert batches and all("deleted 1 " in b or "deleted 2 " in b for b in batches)  # never more than a batch


@pytest.mark.parametrize("argv", [["purge", "--older-than", "30d", "--dry-run"], ["purge", "--older-than", "1d", "--yes"],
                                  ["confirm", "doc-1"]])
def test_purge_and_confirm_never_create_a_store(argv: list[str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "endpoints.yaml"
    write_yaml(path, {"gateway": {"db": f"sqlite:///{tmp_path}/typo.db", "data_dir": str(tmp_path / "var")}})
    code, _, err = jx(capsys, *argv, "--config", path)
    assert code != 0 and "Traceback" not in err and err.strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["endpoints.yaml"]  # no database file, no folder


async def test_list_shows_and_reads_times_in_local_time(tmp_path: Path, gateway: GatewayFactory,
                                                        http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's CREATED is local time with its offset in the header, and --since reads a time without
    an offset as local time: what an operator reads there can be typed back.  The table showed UTC
    without saying so, and --since read UTC, both nine hours off the clock on a JST host's wall."""
    data, path, db = next(_cfg(tmp_path, f"sqlite:///{tmp_path}/bmrgw-0.db"))
    url = await gateway(data)
    assert (await put(http, url, "april", b"a", sender="DC", receiver="1310001")).result
    engine = create_engine(db)
    with engine.begin() as c:  # arrived at 2026-04-01 00:00:00 UTC, 09:00 in Tokyo
        c.execute(text("UPDATE jx_document SET created_ms = 1775001600000 WHERE message_id = 'april'"))
    engine.dispose()
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        code, out, _ = jx(capsys, "list", "--config", path)
        assert code == 0 and "CREATED (+09:00)" in out and "2026-04-01 09:00:00" in out, out
        assert listed(capsys, path, "--since", "2026-04-01T09:00") == ["april"]
        assert listed(capsys, path, "--since", "2026-04-01T09:00:01") == []
        assert listed(capsys, path, "--until", "2026-04-01T09:00:01") == ["april"]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
