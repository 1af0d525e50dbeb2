"""Key rotation under load: while JX clients Put, Get and Confirm without pause, ``bmrgw keys rotate
--new-master`` and ``bmrgw keys rotate --org`` complete with not one failed request, and every
document stored before, during and after reads back byte for byte (SQLite files, PostgreSQL rows)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import Connection, create_engine, text

from gateway.cli import main

from .conftest import GatewayFactory
from .jxhelp import confirm, get, put
from .test_keys_rotate_org import configure, get_all, live_generations, sealed_generations, gateway_store

WORKERS = 4
RECEIVERS = ("131a", "131b")


class Load:
    """Clients cycling Put+Get+Confirm; every stored document and every failure is kept."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.stop = asyncio.Event()
        self.stored: dict[str, tuple[str, bytes]] = {}
        self.failures: list[str] = []
        self.cycles = 0
        self.empty_polls = 0

    async def worker(self, number: int) -> None:
        receiver = RECEIVERS[number % len(RECEIVERS)]
        sequence = 0
        while not self.stop.is_set():
            sequence += 1
            message_id = f"w{number}-{sequence}"
            data = os.urandom(10 * 1024 if sequence % 5 else 200 * 1024)  # some of several sealed chunks
            # Every third document waits (for a receiver nobody polls yet): read after the rotations.
            waiting = sequence % 3 == 0
            to = f"{receiver}-{number}" + ("-later" if waiting else "")
            try:
                answer = await put(self.http, self.url, message_id, data, receiver=to)
                if answer.result is not True:
                    self.failures.append(f"put {message_id}: {answer.status} {answer.fault_code}")
                    continue
                self.stored[message_id] = (to, data)
                if waiting:
                    continue
                got = await get(self.http, self.url, to)
                for _ in range(100):  # a document being re-sealed is skipped by hand-outs: an empty poll, asked again
                    if got.result is not False:
                        break
                    self.empty_polls += 1
                    await asyncio.sleep(0.05)
                    got = await get(self.http, self.url, to)
                if got.result is not True or got.data != data:
                    self.failures.append(f"get {message_id}: {got.status} {got.fault_code}")
                    continue
                done = await confirm(self.http, self.url, message_id, receiver=to)
                if done.result is not True:
                    self.failures.append(f"confirm {message_id}: {done.status} {done.fault_code}")
                    continue
                self.cycles += 1
            except aiohttp.ClientError as exc:
                self.failures.append(f"{message_id}: {exc!r}")


@contextlib.contextmanager
def engine_of(db: str) -> Iterator[Connection]:
    engine = create_engine(db)
    try:
        with engine.connect() as c:
            yield c
    finally:
        engine.dispose()


def rotate_both(path: Path, tmp_path: Path, orgs: list[str]) -> None:
    new = tmp_path / "keys" / "master-2.key"
    assert main(["keys", "init", str(new)]) == 0
    assert main(["keys", "rotate", "--config", str(path), "--new-master", str(new)]) == 0
    for org in orgs:
        assert main(["keys", "rotate", "--config", str(path), "--org", org, "--batch", "5"]) == 0


@pytest.mark.parametrize("blobs", ["files", "database"], ids=["sqlite-files", "postgresql-rows"])
async def test_rotations_under_load_fail_no_request_and_lose_no_document(
        pg_url: str, gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, blobs: str) -> None:
    # Gateways look for a new generation every 0.3 s (30 s in production); keys rotate --org waits
    # twice that before its last pass, as it does in production.
    monkeypatch.setattr("gateway.crypto.ring.RECHECK_SECONDS", 0.3)
    with gateway_store(tmp_path, blobs, pg_url) as db:
        config, path = configure(tmp_path, db, blobs)
        url = await gateway(config)
        load = Load(http, url)
        workers = [asyncio.create_task(load.worker(n)) for n in range(WORKERS)]
        rotated = ["131a-0", "131a-0-later"]  # one polled during the load, one not
        try:
            # Both organisations have a data key and documents before the rotations.
            deadline = time.monotonic() + 30
            while not set(rotated) <= {owner for owner, _ in load.stored.values()} and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            started, cycles_before = time.monotonic(), load.cycles
            await asyncio.to_thread(rotate_both, path, tmp_path, rotated)
            rotating = time.monotonic() - started
            cycles_during = load.cycles - cycles_before
            await asyncio.sleep(0.5)  # and the load goes on after them
        finally:
            load.stop.set()
            await asyncio.gather(*workers)
        orgs = sorted({receiver for receiver, _ in load.stored.values()})
        out = capsys.readouterr().out

        assert load.failures == [], load.failures[:5]
        assert cycles_during > 0, f"the load ran while the rotations did ({rotating:.1f} s)"
        assert "re-wrapped" in out and out.count("deleted 1 older data key(s)") == len(rotated), out
        assert {org: generations for org, generations in live_generations(db).items() if org in rotated} == \
            {org: [2] for org in rotated}
        with engine_of(db) as c:
            owners: dict[str, str] = {m: r for m, r in c.execute(text("SELECT message_id, receiver_id FROM jx_document"))}
        assert {g for m, g in sealed_generations(db, tmp_path).items() if owners[m] in rotated} == {2}, \
            "everything of the rotated organisations, including what was stored meanwhile, is under generation 2"
        # Every document, waiting or confirmed, reads back byte for byte.
        for message_id in (m for m, (owner, _) in load.stored.items() if not owner.endswith("-later")):
            assert main(["jx", "requeue", "--config", str(path), message_id]) == 0
        for receiver in orgs:
            assert await get_all(http, url, receiver) == {
                message_id: data for message_id, (owner, data) in load.stored.items() if owner == receiver}
