"""``bmrgw keys rotate`` under load with no failed request, ``keys status``, and ``keys destroy``
(crypto-shredding): real in-process gateways sharing one store, the real CLI."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import create_engine, select

from gateway.cli import main
from gateway.crypto import KeyRing, MasterKey
from gateway.crypto.ring import DATA_KEYS, write_master_keys
from gateway.errors import KeyUnavailable
from gateway.logs.tables import LogFilter, read

from .conftest import GatewayFactory, write_yaml
from .jxhelp import confirm, get, put


def setup(tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    key = tmp_path / "keys" / "master.key"
    assert main(["keys", "init", str(key)]) == 0
    config = {"gateway": {"name": "gw", "db": f"sqlite:///{tmp_path}/db/bmrgw.db", "data_dir": str(tmp_path / "var"),
                          "encryption": {"master_key": str(key)}}}
    path = tmp_path / "keys-endpoints.yaml"
    write_yaml(path, config)
    return config, key, path


def wrapped_by(tmp_path: Path) -> dict[str, str | None]:
    engine = create_engine(f"sqlite:///{tmp_path}/db/bmrgw.db")
    try:
        with engine.connect() as c:
            return {row.org: row.master_id if row.wrapped is not None else None
                    for row in c.execute(select(DATA_KEYS))}
    finally:
        engine.dispose()


async def test_rotation_under_load_fails_no_request(gateway: GatewayFactory, tmp_path: Path,
                                                    http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]) -> None:
    config, key, path = setup(tmp_path)
    a = await gateway(config)
    b = await gateway(config)  # a second node on the same store: it never touches "131b" before the rotation
    for org in ("131a", "131b"):
        assert (await put(http, a, f"before-{org}", org.encode() * 100, receiver=org)).result is True
    old = MasterKey.load(key)
    new_path = tmp_path / "keys" / "master-2026.key"
    assert main(["keys", "init", str(new_path)]) == 0
    new = MasterKey.load(new_path)
    failures: list[str] = []
    done = asyncio.Event()

    async def load(number: int) -> int:
        cycles = 0
        while not done.is_set():
            data = os.urandom(5000)
            message_id = f"load-{number}-{cycles}"
            answer = await put(http, a, message_id, data, receiver="131a")
            got = await get(http, a, "131a") if answer.result else None
            if answer.result is not True or got is None or got.result is not True:
                failures.append(f"{message_id}: {answer.fault_code or (got and got.fault_code)}")
            elif (await confirm(http, a, got.text(".//jx:messageId") or "", receiver="131a")).result is not True:
                failures.append(f"{message_id}: confirm")
            cycles += 1
        return cycles

    workers = [asyncio.create_task(load(n)) for n in range(3)]
    await asyncio.sleep(0.3)
    assert await asyncio.to_thread(main, ["keys", "rotate", "--config", str(path), "--new-master", str(new_path)]) == 0
    await asyncio.sleep(0.3)
    done.set()
    cycles = sum(await asyncio.gather(*workers))
    assert failures == [] and cycles > 3
    assert set(wrapped_by(tmp_path).values()) == {new.id}, "every data key is wrapped by the new master key"
    assert [k.id for k in MasterKey.load_all(key)] == [new.id, old.id]
    got = await get(http, b, "131b")  # node b held only the old key in memory: it re-reads the key file
    assert got.result is True and got.data == b"131b" * 100
    assert (await put(http, b, "after", b"new org after the rotation", receiver="131c")).result is True
    assert wrapped_by(tmp_path)["131c"] == new.id
    capsys.readouterr()
    assert main(["keys", "status", "--config", str(path)]) == 0
    shown = capsys.readouterr().out
    assert f"master key {new.id}" in shown and "131a\tgeneration 1" in shown and "131c" in shown


async def test_destroy_leaves_the_organisation_unreadable_even_from_a_backup(
        gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.crypto.ring.RECHECK_SECONDS", 0.0)  # running gateways see the erasure at once
    config, key, path = setup(tmp_path)
    url = await gateway(config)
    for org in ("131a", "131b"):
        assert (await put(http, url, f"doc-{org}", f"secret of {org}".encode(), receiver=org)).result is True
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "db", backup)  # a database backup taken before the erasure
    assert main(["keys", "destroy", "--config", str(path), "--org", "131a"]) == 2, "no --yes off a terminal"
    assert wrapped_by(tmp_path)["131a"] is not None
    assert main(["keys", "destroy", "--config", str(path), "--org", "131a", "--yes"]) == 0
    assert wrapped_by(tmp_path)["131a"] is None
    refused = await get(http, url, "131a")
    assert refused.status == 500 and refused.fault_code == "KeyUnavailable"
    assert (await get(http, url, "131b")).data == b"secret of 131b", "other organisations are untouched"
    assert (await put(http, url, "doc-new", b"fresh start", receiver="131a")).result is True
    assert wrapped_by(tmp_path)["131a"] is not None, "new content gets a new generation of key"
    engine = create_engine(f"sqlite:///{tmp_path}/db/bmrgw.db")
    try:
        erased = [r for r in read(engine, LogFilter(kind="keys"))]
    finally:
        engine.dispose()
    assert [(r.endpoint, r.to_ap) for r in erased] == [("keys:destroy", "131a")]
    # The documented last step: rotate, then drop every copy of the earlier master key.
    new_path = tmp_path / "keys" / "next.key"
    assert main(["keys", "init", str(new_path)]) == 0
    assert main(["keys", "rotate", "--config", str(path), "--new-master", str(new_path)]) == 0
    write_master_keys(key, [MasterKey.load(new_path)])
    restored = create_engine(f"sqlite:///{backup}/bmrgw.db")
    try:
        ring = KeyRing(restored, MasterKey.load_all(key), key)
        with pytest.raises(KeyUnavailable, match="does not hold"):
            ring.key_of("131a", 1)
    finally:
        restored.dispose()
