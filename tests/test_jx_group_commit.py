"""Concurrent PutDocuments share transactions (group commit, :mod:`gateway.jx.commit`): fewer
commits — fewer disk flushes — than puts, while each put keeps its own outcome: a quota that
fills up part-way refuses just the puts beyond it, an id sent twice at once is stored once, and
every stored document has its log record (SQLite files, PostgreSQL rows; encrypted and not)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, event, func, select

from gateway.crypto import KeyRing, MasterKey, Vault, write_master_key
from gateway.errors import DuplicateMessageId, QuotaExceeded
from gateway.jx.store import TABLES, DocumentStore, NewDocument
from gateway.jx.wire import SpoolWriter
from gateway.logs.clock import Clock
from gateway.logs.records import LogRecord
from routing.settings import JxSettings

from .test_keys_rotate_org import store_url

PUTS = 24


@contextlib.contextmanager
def opened(tmp_path: Path, blobs: str, encrypted: bool, **settings: Any) -> Iterator[tuple[DocumentStore, list[int]]]:
    """A store on SQLite files or PostgreSQL rows; the list counts the commits of its put engine.
    Its log writer is a table of its own: what was logged in which put transaction."""
    from sqlalchemy import create_engine

    from gateway.jx.engine import prepare_engine

    with store_url(tmp_path, blobs) as db:
        if blobs == "files":
            (tmp_path / "db").mkdir(mode=0o700, exist_ok=True)
        engine = prepare_engine(create_engine(db), durable=False)
        durable = prepare_engine(create_engine(db), durable=True) if engine.dialect.name == "sqlite" else engine
        commits: list[int] = []
        event.listen(durable, "commit", lambda _c: commits.append(1))
        vault = Vault(KeyRing(durable, [write_master_key(tmp_path / "master.key")])) if encrypted else None
        logged: list[str] = []
        lock = threading.Lock()

        def log(c: Connection, record: LogRecord) -> None:
            assert c.in_transaction()
            with lock:
                logged.append(record.message_id or "")

        store = DocumentStore(engine, durable=durable, root=tmp_path / "jx", settings=JxSettings(blobs=blobs, **settings),
                              node="gw", log=log, vault=vault)
        store.open()
        store.logged = logged  # type: ignore[attr-defined]
        try:
            yield store, commits
        finally:
            store.close()


def put(store: DocumentStore, message_id: str, data: bytes, receiver: str = "131a") -> bool | BaseException:
    writer = SpoolWriter(store.spool_dir, limit=1 << 20, durable=False, sealed=store.vault.sealing)
    writer.write(data)
    spool = writer.finish()
    new = NewDocument(message_id=message_id, sender_id="DC", receiver_id=receiver, format_type="BIN",
                      document_type="t", compress_type="")
    record = LogRecord.at(Clock().now(), kind="jx", direction="request", status="ok", message_id=message_id)
    try:
        return store.put(new, spool, record)
    except (QuotaExceeded, DuplicateMessageId) as exc:
        return exc


def read(store: DocumentStore, message_id: str) -> bytes:
    document = store.find(message_id)
    assert document is not None
    return b"".join(store.chunks(document))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("blobs", ["files", "database"], ids=["sqlite-files", "postgresql-rows"])
def test_concurrent_puts_share_commits_and_each_keeps_its_outcome(tmp_path: Path, blobs: str, encrypted: bool) -> None:
    with opened(tmp_path, blobs, encrypted) as (store, commits):
        assert put(store, "warm", b"first") is True  # the data key exists before the crowd comes
        commits.clear()
        with ThreadPoolExecutor(PUTS) as pool:
            outcomes = list(pool.map(lambda n: put(store, f"m{n}", f"document {n}".encode() * 100), range(PUTS)))
        assert outcomes == [True] * PUTS
        assert len(commits) < PUTS, f"{PUTS} concurrent puts took {len(commits)} commits: no group commit"
        for n in range(PUTS):
            assert read(store, f"m{n}") == f"document {n}".encode() * 100
        assert sorted(store.logged) == sorted(["warm", *(f"m{n}" for n in range(PUTS))])  # type: ignore[attr-defined]


@pytest.mark.parametrize("blobs", ["files", "database"], ids=["sqlite-files", "postgresql-rows"])
def test_a_quota_filling_up_in_a_shared_commit_refuses_only_the_puts_beyond_it(tmp_path: Path, blobs: str) -> None:
    with opened(tmp_path, blobs, True, max_pending_documents=5) as (store, _):
        with ThreadPoolExecutor(12) as pool:
            full = list(pool.map(lambda n: put(store, f"q{n}", b"x" * n), range12()))
            other = pool.submit(put, store, "other", b"for another receiver", "131b").result()
        assert sum(o is True for o in full) == 5
        assert all(isinstance(o, QuotaExceeded) for o in full if o is not True)
        assert other is True and read(store, "other") == b"for another receiver"
        with store.engine.connect() as c:
            assert c.execute(select(func.count()).select_from(TABLES.document)
                             .where(TABLES.document.c.receiver_id == "131a")).scalar_one() == 5
        assert len(store.logged) == 6, "refused puts leave no log record"  # type: ignore[attr-defined]
        assert not list((tmp_path / "jx" / "blobs").glob("*")) if blobs == "database" else \
            len(list((tmp_path / "jx" / "blobs").glob("*.doc"))) == 6, "no blob of a refused put stays"


def range12() -> range:
    return range(1, 13)


@pytest.mark.parametrize("blobs", ["files", "database"], ids=["sqlite-files", "postgresql-rows"])
def test_one_id_sent_several_times_at_once_is_stored_once(tmp_path: Path, blobs: str) -> None:
    with opened(tmp_path, blobs, True) as (store, _):
        with ThreadPoolExecutor(8) as pool:
            same = list(pool.map(lambda _n: put(store, "twice", b"the same bytes"), range(6)))
            clash = pool.submit(put, store, "twice", b"other bytes").result()
        assert same.count(True) == 1 and same.count(False) == 5, same
        assert isinstance(clash, DuplicateMessageId)
        assert read(store, "twice") == b"the same bytes"
        assert store.logged.count("twice") == 1  # type: ignore[attr-defined]


def test_the_store_uses_its_keys(tmp_path: Path) -> None:
    """The vault of the encrypted cases seals: the blob holds no plaintext (so those cases test sealing)."""
    with opened(tmp_path, "files", True) as (store, _):
        assert put(store, "sealed", b"plaintext marker 1234") is True
        [blob] = (tmp_path / "jx" / "blobs").glob("*.doc")
        assert b"plaintext marker 1234" not in blob.read_bytes()
        assert isinstance(store.vault.ring, KeyRing) and isinstance(MasterKey.load(tmp_path / "master.key"), MasterKey)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_hand_outs_and_confirms_each_happen_once(tmp_path: Path, kind: str) -> None:
    """Hand-outs and confirms are one statement each (gateway.jx.queries; autocommit on PostgreSQL):
    pollers racing for one receiver never get the same document, and of confirms racing for one
    document exactly one is the first."""
    from gateway.errors import UnknownDocument
    from gateway.jx import open_store
    from routing.config import parse_config

    with store_url(tmp_path, "auto" if kind == "sqlite" else "database") as db:
        config = parse_config({"gateway": {"name": "gw", "db": db, "data_dir": str(tmp_path / "var")}},
                              source=tmp_path / "endpoints.yaml")
        store = open_store(config)
        store.open()
        try:
            ids = [f"doc-{n}" for n in range(6)]
            for message_id in ids:
                assert put(store, message_id, message_id.encode()) is True
            with ThreadPoolExecutor(8) as pool:
                leased = list(pool.map(lambda _: store.hand_out("131a"), range(12)))
            got = [x.document.message_id for x in leased if x is not None]
            assert sorted(got) == ids, "each document handed out once within its lease"
            for x in leased:
                if x is not None:
                    assert b"".join(store.chunks(x.document, leased=x)) == x.document.message_id.encode()
            with ThreadPoolExecutor(8) as pool:
                firsts = list(pool.map(lambda _: store.confirm("doc-0", "DC", "131a")[1], range(8)))
            assert firsts.count(True) == 1
            document, first = store.confirm("doc-0", "", "131a")
            assert (document.state, first) == ("confirmed", False)
            for sender, receiver in (("DC", "131b"), ("other", "131a")):
                with pytest.raises(UnknownDocument):
                    store.confirm("doc-1", sender, receiver)
            with pytest.raises(UnknownDocument):
                store.confirm("never-stored", "DC", "131a")
            assert store.confirm("doc-1", "DC", "131a")[1] is True
            assert store.counts()[0] == {"ready": 0, "leased": 4, "confirmed": 2, "dead": 0}
        finally:
            store.close()
