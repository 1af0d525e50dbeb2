"""A log that holds against the database's owner (issue 18, finding 4): keyed links and checkpoints.

The forger here can write the database (SQLite file or PostgreSQL schema) but holds neither the
log key nor the checkpoint file shipped off the host.  Each of the three rewrites below passed
`bmrgw logs verify` on a plain chain (shown first in each test); with the key and the
checkpoints each is detected.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import Engine, delete, select, update

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.logs.chain import Report, verify
from gateway.logs.journal import CHECKPOINT_INTERVAL, Journal
from gateway.logs.key import KEY_BYTES, load_key, read_checkpoints
from gateway.logs.records import chain_hash
from gateway.logs.tables import TABLES, from_row, heads
from gateway.store import Store

from .conftest import GatewayFactory, RecordingBackend, message, soap11_headers
from .test_journal import entry, store  # noqa: F401  (store: fixture)

LOG, HEAD = TABLES.log, TABLES.head
NODES = ("dc-east", "dc-west")


async def write_chains(engine: Engine, n: int, *, key: bytes | None = None,
                       checkpoints: Path | None = None) -> None:
    """``n`` records on each of two nodes, through the journal as a gateway writes them."""
    journals = [Journal(engine, node, key=key, checkpoints=checkpoints, checkpoint_interval=0.05,
                        batch_size=7) for node in NODES]
    for journal in journals:
        await journal.start()
    for i in range(n):
        for journal in journals:
            await journal.record(entry(i, message_id=f"{journal.node}-{i}"))
    for journal in journals:
        await journal.close()


def kinds(report: Report) -> set[tuple[str, str]]:
    return {(p.node, p.kind) for p in report.problems}


# -- the forger's three rewrites (plain SHA-256: he has no key) -------------------------

def rewrite_from(engine: Engine, node: str, seq: int) -> None:
    """Change record ``seq`` and recompute every hash after it up to the head, and the head."""
    with engine.begin() as connection:
        rows = connection.execute(select(LOG).where(LOG.c.node == node, LOG.c.seq >= seq - 1)
                                  .order_by(LOG.c.seq)).all()
        prev = rows[0].hash if seq > 1 else "0" * 64
        for row in rows[1:] if seq > 1 else rows:
            record = from_row(row)
            values: dict[str, Any] = {"prev_hash": prev}
            if record.seq == seq:
                values["to_ap"] = "forged"
            changed = record.__class__(**{**record.__dict__, **values})
            prev = chain_hash(prev, changed)
            connection.execute(update(LOG).where(LOG.c.id == row.id).values(**values, hash=prev))
        connection.execute(update(HEAD).where(HEAD.c.node == node).values(hash=prev))


def cut_newest(engine: Engine, node: str, count: int) -> None:
    """Delete the newest ``count`` records and move the head back to the last one left."""
    with engine.begin() as connection:
        top = connection.execute(select(HEAD.c.seq).where(HEAD.c.node == node)).scalar_one()
        connection.execute(delete(LOG).where(LOG.c.node == node, LOG.c.seq > top - count))
        last = connection.execute(select(LOG.c.seq, LOG.c.hash).where(LOG.c.node == node)
                                  .order_by(LOG.c.seq.desc()).limit(1)).one()
        connection.execute(update(HEAD).where(HEAD.c.node == node).values(seq=last.seq, hash=last.hash))


def drop_chain(engine: Engine, node: str) -> None:
    with engine.begin() as connection:
        connection.execute(delete(LOG).where(LOG.c.node == node))
        connection.execute(delete(HEAD).where(HEAD.c.node == node))


ATTACKS = {
    "rewrite-one-to-head": lambda engine: rewrite_from(engine, "dc-east", 15),
    "rewrite-whole-chain": lambda engine: rewrite_from(engine, "dc-east", 1),
    "cut-newest-10": lambda engine: cut_newest(engine, "dc-east", 10),
    "drop-a-node": lambda engine: drop_chain(engine, "dc-east"),
}
EXPECTED = {
    "rewrite-one-to-head": {("dc-east", "unkeyed")},
    "rewrite-whole-chain": {("dc-east", "unkeyed")},
    "cut-newest-10": {("dc-east", "deleted")},
    "drop-a-node": {("dc-east", "missing")},
}


@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_plain_chain_is_rewritten_unnoticed(store: Store, attack: str) -> None:
    """The hole of finding 4, kept visible: without a key every rewrite verifies clean."""
    await write_chains(store.engine, 30)
    ATTACKS[attack](store.engine)
    assert verify(store.engine, None).ok


@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_forger_without_the_key_is_detected(store: Store, tmp_path: Path, attack: str) -> None:
    key, checkpoints = secrets.token_bytes(KEY_BYTES), tmp_path / "log-checkpoints.jsonl"
    await write_chains(store.engine, 30, key=key, checkpoints=checkpoints)
    marks, bad = read_checkpoints(checkpoints, key)
    assert bad == [] and {n: max(c.seq for c in found) for n, found in marks.items()} == {"dc-east": 30, "dc-west": 30}
    assert verify(store.engine, None, key=key, checkpoints=marks).ok
    ATTACKS[attack](store.engine)
    report = verify(store.engine, None, key=key, checkpoints=marks)
    assert EXPECTED[attack] <= kinds(report)
    assert all(node == "dc-east" for node, _kind in kinds(report))  # the other chain is untouched


async def test_keyed_links_are_hmacs_a_plain_verify_cannot_accept(store: Store) -> None:
    key = secrets.token_bytes(KEY_BYTES)
    await write_chains(store.engine, 3, key=key)
    assert verify(store.engine, None, key=key).ok
    assert not verify(store.engine, None, key=secrets.token_bytes(KEY_BYTES)).ok  # another key
    plain = verify(store.engine, None)
    assert {p.kind for p in plain.problems} == {"altered"} and "gateway.log_key" in plain.problems[0].detail


async def test_an_old_plain_prefix_keeps_verifying_once_the_key_is_configured(store: Store) -> None:
    key = secrets.token_bytes(KEY_BYTES)
    await write_chains(store.engine, 4)  # before the operator made a key
    await write_chains(store.engine, 4, key=key)
    report = verify(store.engine, None, key=key)
    assert report.ok and report.chains["dc-east"].last_seq == 8
    with store.engine.begin() as connection:  # ...but the plain prefix cannot be changed either
        connection.execute(update(LOG).where(LOG.c.node == "dc-west", LOG.c.seq == 2).values(to_ap="x"))
    assert ("dc-west", "altered") in kinds(verify(store.engine, None, key=key))


async def test_a_chain_that_only_ever_was_plain_fails_with_a_key(store: Store) -> None:
    await write_chains(store.engine, 3)
    assert kinds(verify(store.engine, None, key=secrets.token_bytes(KEY_BYTES))) == {
        ("dc-east", "unkeyed"), ("dc-west", "unkeyed")}


async def test_checkpoints_are_written_while_writing_not_only_at_the_end(store: Store, tmp_path: Path) -> None:
    assert CHECKPOINT_INTERVAL <= 10
    key, path = secrets.token_bytes(KEY_BYTES), tmp_path / "cp" / "log-checkpoints.jsonl"
    journal = Journal(store.engine, "dc-east", key=key, checkpoints=path, checkpoint_interval=0.05)
    await journal.start()
    try:
        assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
        for i in range(5):
            await journal.record(entry(i))
            await journal.flush()
            await asyncio.sleep(0.2)
        marks, bad = read_checkpoints(path, key)
        assert bad == [] and [c.seq for c in marks["dc-east"]] == [1, 2, 3, 4, 5]
        with store.engine.connect() as connection:
            chain_heads = heads(connection, TABLES)
        assert marks["dc-east"][-1].hash == chain_heads["dc-east"].hash
    finally:
        await journal.close()


async def test_a_forged_checkpoint_line_is_named(store: Store, tmp_path: Path) -> None:
    key, path = secrets.token_bytes(KEY_BYTES), tmp_path / "log-checkpoints.jsonl"
    await write_chains(store.engine, 3, key=key, checkpoints=path)
    line = json.loads(path.read_text().splitlines()[-1])
    with path.open("a") as fh:
        fh.write(json.dumps({**line, "seq": 99}) + "\n")
    marks, bad = read_checkpoints(path, key)
    assert len(bad) == 1 and "MAC does not match" in bad[0] and max(c.seq for c in marks["dc-east"]) == 3


# -- keygen, the config and `bmrgw logs verify` -----------------------------------------

def test_keygen_writes_32_random_bytes_0600_and_never_overwrites(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.key"
    assert main(["logs", "keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(path)
    assert len(key) == KEY_BYTES and base64.b64decode(path.read_text()) == key
    assert main(["logs", "keygen", str(path)]) == 1
    assert "exists" in capsys.readouterr().err and load_key(path) == key
    assert main(["logs", "keygen", str(tmp_path / "other.key")]) == 0 and load_key(tmp_path / "other.key") != key


def test_a_key_readable_by_others_or_malformed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.key"
    path.write_text(secrets.token_hex(KEY_BYTES))
    path.chmod(0o600)
    assert len(load_key(path)) == KEY_BYTES  # hex is fine too
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(path)
    path.chmod(0o600)
    path.write_text("too short")
    with pytest.raises(ConfigError, match="32 bytes"):
        load_key(path)


async def test_verify_command_reads_the_key_and_the_checkpoints_of_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BMRGW_DB_URL", raising=False)
    assert main(["logs", "keygen", str(tmp_path / "log.key")]) == 0
    config = tmp_path / "endpoints.yaml"
    config.write_text(f"gateway:\n  db: sqlite:///{tmp_path}/log.db\n  data_dir: {tmp_path}/var\n"
                      "  log_key: log.key\n", encoding="utf-8")
    store = Store(f"sqlite:///{tmp_path}/log.db")
    await write_chains(store.engine, 20, key=load_key(tmp_path / "log.key"),
                       checkpoints=tmp_path / "var" / "log-checkpoints.jsonl")
    assert main(["logs", "verify", "--config", str(config)]) == 0
    assert "OK: 2 chain(s) verified" in capsys.readouterr().out
    cut_newest(store.engine, "dc-west", 10)
    store.close()
    assert main(["logs", "verify", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED chain dc-west: seq 11..20 deleted: the chain ends before its checkpoint" in out
    shipped = tmp_path / "shipped.jsonl"
    os.replace(tmp_path / "var" / "log-checkpoints.jsonl", shipped)  # the copy off the host is what counts
    assert main(["logs", "verify", "--config", str(config)]) == 1
    assert "log-checkpoints.jsonl is missing" in capsys.readouterr().out
    assert main(["logs", "verify", "--config", str(config), "--checkpoints", str(shipped)]) == 1
    assert "seq 11..20 deleted" in capsys.readouterr().out


async def test_a_gateway_with_a_key_writes_keyed_links_and_checkpoints(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    assert main(["logs", "keygen", str(tmp_path / "log.key")]) == 0
    key = load_key(tmp_path / "log.key")
    gw = await gateway({"gateway": {"name": "gw-key", "db": f"sqlite:///{tmp_path}/log.db",
                                    "data_dir": str(tmp_path / "var"), "log_key": str(tmp_path / "log.key")},
                        "endpoints": {"demo": {"url": backend.url}}})
    async with http.post(f"{gw}/soap", data=message("valid/soap11-routing-header.xml"),
                         headers=soap11_headers()) as resp:
        assert resp.status == 200
    store = Store(f"sqlite:///{tmp_path}/log.db")
    try:
        for _ in range(100):
            marks, _bad = read_checkpoints(tmp_path / "var" / "log-checkpoints.jsonl", key)
            if marks.get("gw-key"):
                break
            await asyncio.sleep(0.1)
        assert max(c.seq for c in marks["gw-key"]) >= 2
        assert verify(store.engine, None, key=key, checkpoints=marks).ok
        assert not verify(store.engine, None).ok  # keyed links are no plain SHA-256
    finally:
        store.close()


def test_jx_put_from_the_command_line_appends_keyed_links(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BMRGW_DB_URL", raising=False)
    assert main(["logs", "keygen", str(tmp_path / "log.key")]) == 0
    config = tmp_path / "endpoints.yaml"
    config.write_text(f"gateway:\n  name: dc-cli\n  db: sqlite:///{tmp_path}/jx.db\n  data_dir: {tmp_path}/var\n"
                      "  log_key: log.key\n", encoding="utf-8")
    document = tmp_path / "doc.txt"
    document.write_bytes(b"to the city hall")
    assert main(["jx", "put", str(document), "--to", "1310001", "--config", str(config)]) == 0
    store = Store(f"sqlite:///{tmp_path}/jx.db")
    try:
        report = verify(store.engine, None, key=load_key(tmp_path / "log.key"))
        assert report.ok and report.chains["dc-cli"].last_seq == 1
    finally:
        store.close()
