"""The send/receive log store on SQLite and the real PostgreSQL: group commit, chains, queries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import marshal
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text, update

from gateway.errors import JournalUnavailable
from gateway.logs.chain import verify
from gateway.logs.clock import Now
from gateway.logs.journal import Journal
from gateway.logs.records import FIELDS, GENESIS, LogRecord, RelayExchange, chain_hash, pack, unpack_entries
from gateway.logs.tables import (
    TABLES,
    LogFilter,
    append,
    ensure_schema,
    head_seqs,
    log_tables,
    read,
    read_chain,
    read_new,
    to_row,
)
from gateway.store import Store

from .pg import pg_schema

T0 = datetime(2024, 4, 1, 9, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The gateway's store on SQLite (WAL, in tmp_path) and on the real PostgreSQL (own schema)."""
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path}/log.db" if request.param == "sqlite" else stack.enter_context(pg_schema())
        opened = Store(url)
        stack.callback(opened.close)
        ensure_schema(opened.engine)
        yield opened


def entry(i: int = 0, **values: Any) -> LogRecord:
    """A relay request record, different for each ``i``."""
    fields: dict[str, Any] = dict(
        ts=T0 + timedelta(seconds=i), ntp_offset=0.25, ntp_synced=True, kind="relay", direction="request",
        status="ok", message_id=f"m-{i}", from_ap="juki", to_ap="kaigo", endpoint="http://127.0.0.1:9001/kaigo",
        bytes_in=100 + i, bytes_out=100 + i, duration_ms=1.5, sha256="ab" * 32, client="juki-app", http_status=200,
    )
    fields.update(values)
    return LogRecord(**fields)


def count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(TABLES.log)).scalar_one())


def chain(engine: Engine, node: str) -> list[LogRecord]:
    with engine.connect() as connection:
        return list(read_chain(connection, node))


def assert_chain(records: list[LogRecord], n: int) -> None:
    """Seqs 1..n, each linked to the one before, starting at the genesis hash."""
    assert [r.seq for r in records] == list(range(1, n + 1))
    prev = GENESIS
    for record in records:
        assert record.prev_hash == prev and chain_hash(prev, record) == record.hash
        prev = record.hash


# -- the record ----------------------------------------------------------------

def test_json_form_has_exactly_spec_field_names() -> None:
    data = entry(1, fault_code="Server").to_json()
    # charset_substitutions (issue 23) is written only where a character profile lost something.
    assert list(data) == [name for name in FIELDS if name != "charset_substitutions"]
    assert list(entry(1, charset_substitutions="1 (U+1F600 ×1)").to_json()) == list(FIELDS)
    assert {"ts", "ntp_offset", "ntp_synced", "message_id", "kind", "direction", "from", "to", "endpoint",
            "status", "bytes_in", "bytes_out", "duration_ms", "sha256", "hash"} <= set(data)
    assert data["from"] == "juki" and data["to"] == "kaigo"
    assert data["ts"] == "2024-04-01T09:00:01.123456Z"
    assert LogRecord.from_json(json.loads(json.dumps(data))) == entry(1, fault_code="Server")


def test_values_are_normalised_so_they_hash_the_same_after_a_round_trip() -> None:
    record = entry(ts=datetime(2024, 4, 1, 18, 0, tzinfo=UTC).astimezone(), duration_ms=5, ntp_offset=-0.0,
                   bytes_in=True)
    assert record.ts.tzinfo is UTC and record.ts.hour == 18
    assert isinstance(record.duration_ms, float) and record.duration_ms == 5.0
    assert str(record.ntp_offset) == "0.0"
    assert record.bytes_in == 1 and type(record.bytes_in) is int


@pytest.mark.parametrize("bad", [
    {"status": "fine"}, {"direction": "sideways"}, {"ts": datetime(2024, 1, 1)}, {"message_id": "a\0b"},
    {"message_id": "x" * 257}, {"from_ap": "\ud800"}, {"bytes_in": -1}, {"duration_ms": float("nan")},
])
def test_invalid_records_are_refused_at_once(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        entry(**bad)



@pytest.mark.parametrize("ts", [T0, datetime(1, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
                                datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)])
def test_a_packed_record_crosses_to_the_writer_exactly(ts: datetime) -> None:
    record = entry(ts=ts, fault_code="Server", http_status=None)
    assert unpack_entries([marshal.loads(marshal.dumps(pack(record)))]) == [record]

def test_record_stamped_by_the_clock() -> None:
    now = Now(T0, 3.000_000_4, True)
    record = LogRecord.at(now, kind="jx", direction="response", status="fault")
    assert (record.ts, record.ntp_offset, record.ntp_synced) == (T0, 3.0, True)


# -- the writer ----------------------------------------------------------------

async def test_group_commit_flushes_within_200_ms(store: Store) -> None:
    journal = Journal(store.engine, "dc-east")
    await journal.start()
    try:
        for burst in (1, 200):
            before = count(store.engine)
            started = time.monotonic()
            for i in range(burst):
                await journal.record(entry(i))
            while count(store.engine) < before + burst:
                assert time.monotonic() - started < 0.2, "records not committed within 200 ms"
                await asyncio.sleep(0.005)
        await journal.flush()  # the counters move when the writer process reports back
        assert journal.batches < journal.written == 201, "a burst is committed in a few transactions"
    finally:
        await journal.close()
    assert_chain(chain(store.engine, "dc-east"), 201)


@contextlib.asynccontextmanager
async def sqlite_journal(tmp_path: Path, linger: float) -> AsyncIterator[tuple[Journal, Store, sqlite3.Connection]]:
    """A started journal on a SQLite file, and a second connection to that file that can lock it."""
    db = tmp_path / "log.db"
    store = Store(f"sqlite:///{db}")
    journal = Journal(store.engine, "dc-east", linger=linger)
    await journal.start()
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        yield journal, store, blocker
    finally:
        blocker.close()
        await journal.close()
        store.close()


async def test_records_that_waited_for_a_slow_commit_do_not_wait_a_linger_more(tmp_path: Path) -> None:
    async with sqlite_journal(tmp_path, linger=1.0) as (journal, store, blocker):
        blocker.execute("BEGIN EXCLUSIVE")
        await journal.record(entry(0))  # taken after a linger (1 s), then stuck behind the lock
        await asyncio.sleep(1.3)
        await journal.record(entry(1))  # waits for the first batch's commit
        await asyncio.sleep(1.2)  # well past a linger after the first batch was taken
        blocker.execute("COMMIT")
        released = time.monotonic()
        while count(store.engine) < 2:
            assert time.monotonic() - released < 0.6, "the second batch lingered again after a slow commit"
            await asyncio.sleep(0.01)


async def test_a_late_writer_is_boosted_to_normal_priority_and_yields_again_when_prompt(tmp_path: Path) -> None:
    from gateway.logs import writer

    async with sqlite_journal(tmp_path, linger=0) as (journal, _, blocker):
        assert journal._writer.yields  # root, or RLIMIT_NICE/CAP_SYS_NICE: the tests run where it can
        assert journal._writer._process is not None and journal._writer._process.pid is not None
        pid = journal._writer._process.pid
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        blocker.execute("BEGIN EXCLUSIVE")  # the batch cannot commit: its reply is late
        await journal.record(entry(0))
        await asyncio.sleep(writer._PATIENCE * 2)
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER and journal._writer.boosted
        blocker.execute("COMMIT")
        await journal.flush()  # the late batch is done
        await journal.record(entry(1))  # and the next one is prompt
        await journal.flush()
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE and not journal._writer.boosted
    assert journal.status()["written"] == 2


async def test_a_writer_that_could_not_be_boosted_back_never_yields(store: Store) -> None:
    journal = Journal(store.engine, "dc-east")
    journal._writer.yields = False  # as without RLIMIT_NICE >= 20 or CAP_SYS_NICE
    await journal.start()
    try:
        await journal.record(entry(0))
        await journal.flush()
        assert journal._writer._process is not None and journal._writer._process.pid is not None
        assert os.sched_getscheduler(journal._writer._process.pid) == os.SCHED_OTHER
    finally:
        await journal.close()


async def test_close_flushes_everything(store: Store) -> None:
    journal = Journal(store.engine, "dc-east", batch_size=50)
    await journal.start()
    for i in range(700):
        await journal.record(entry(i))
    await journal.close()
    assert count(store.engine) == 700
    assert journal.status()["queued"] == 0 and journal.status()["dropped"] == 0
    with pytest.raises(JournalUnavailable):
        await journal.record(entry())


async def test_chain_continues_across_restart(store: Store) -> None:
    for run in range(2):
        reopened = Store(store.url)  # a new process: nothing carried over but the database
        journal = Journal(reopened.engine, "dc-east")
        await journal.start()
        for i in range(3):
            await journal.record(entry(10 * run + i))
        await journal.close()
        reopened.close()
    records = chain(store.engine, "dc-east")
    assert_chain(records, 6)
    assert records[3].prev_hash == records[2].hash
    assert verify(store.engine, None).ok


async def test_two_nodes_interleaved_each_keep_their_chain(store: Store) -> None:
    other = Store(store.url)  # the second gateway has its own engine, as a second process would
    east, west = Journal(store.engine, "dc-east", batch_size=7), Journal(other.engine, "dc-west", batch_size=5)
    await asyncio.gather(east.start(), west.start())
    try:
        for i in range(60):
            await east.record(entry(i))
            await west.record(entry(i, message_id=f"w-{i}"))
            if i % 10 == 0:
                await asyncio.sleep(0.01)
    finally:
        await asyncio.gather(east.close(), west.close())
        other.close()
    assert_chain(chain(store.engine, "dc-east"), 60)
    assert_chain(chain(store.engine, "dc-west"), 60)
    report = verify(store.engine, None)
    assert report.ok and set(report.chains) == {"dc-east", "dc-west"}


async def test_two_writers_of_one_node_queue_up_on_the_head(store: Store) -> None:
    other = Store(store.url)
    first, second = Journal(store.engine, "dc-east", batch_size=3), Journal(other.engine, "dc-east", batch_size=4)
    await asyncio.gather(first.start(), second.start())
    for i in range(40):
        await first.record(entry(i))
        await second.record(entry(100 + i))
    await asyncio.gather(first.close(), second.close())
    other.close()
    assert_chain(chain(store.engine, "dc-east"), 80)


async def test_write_in_commits_or_rolls_back_with_the_callers_transaction(store: Store) -> None:
    journal = Journal(store.engine, "dc-east")
    await journal.start()
    await journal.record(entry(1))
    await journal.flush()
    with pytest.raises(RuntimeError), store.engine.begin() as connection:
        journal.write_in(connection, entry(2, kind="jx"))
        raise RuntimeError("the JX document could not be stored")
    with store.engine.begin() as connection:
        sealed = journal.write_in(connection, entry(3, kind="jx"))
    await journal.record(entry(4))
    await journal.close()
    records = chain(store.engine, "dc-east")
    assert_chain(records, 3)
    assert [r.kind for r in records] == ["relay", "jx", "relay"] and records[1] == sealed


async def test_full_queue_blocks_the_producer_then_refuses(store: Store) -> None:
    journal = Journal(store.engine, "dc-east", queue_size=3, max_wait=0.2)
    await journal.start()
    await journal.record(entry(0))
    await journal.flush()
    blocker = store.engine.connect()
    transaction = blocker.begin()
    # Hold the chain head: the writer waits, as it would for a slow or locked store.
    blocker.execute(update(TABLES.head).where(TABLES.head.c.node == "dc-east").values(seq=TABLES.head.c.seq))
    try:
        await journal.record(entry(1))
        await asyncio.sleep(0.1)  # the writer takes it and waits for the lock
        for i in range(2, 5):  # three queued: the queue is full
            await journal.record(entry(i))
        started = time.monotonic()
        with pytest.raises(JournalUnavailable, match="records behind"):
            await journal.record(entry(5))
        assert time.monotonic() - started >= 0.19, "the producer waited before being refused"
    finally:
        transaction.rollback()
        blocker.close()
    await journal.close()
    assert_chain(chain(store.engine, "dc-east"), 5)
    assert journal.status()["producer_waits"] >= 1 and journal.status()["dropped"] == 0


async def test_a_record_the_store_refuses_does_not_block_the_others(store: Store) -> None:
    poisoned = entry(1)
    object.__setattr__(poisoned, "bytes_in", 2**70)  # bypasses validation, as a bug would
    journal = Journal(store.engine, "dc-east")
    await journal.start()
    for record in (entry(0), poisoned, entry(2)):
        await journal.record(record)
    await journal.close()
    assert [r.message_id for r in chain(store.engine, "dc-east")] == ["m-0", "m-2"]
    assert journal.status()["dropped"] == 1
    assert verify(store.engine, None).ok



def exchange(i: int, **values: Any) -> RelayExchange:
    """A relayed exchange as the relay queues it: one tuple for its two records."""
    fields: dict[str, Any] = dict(
        arrived_time=(T0 + timedelta(seconds=i)).timestamp(), arrived_offset=0.25, arrived_synced=True,
        ended_time=(T0 + timedelta(seconds=i, milliseconds=3)).timestamp(), ended_offset=0.25, ended_synced=False,
        request_status="ok", status="fault", message_id=f"x-{i}", from_ap="juki", to_ap="kaigo",
        endpoint="http://127.0.0.1:9001/kaigo", client="juki-app", request_bytes_in=100, request_bytes_out=120,
        request_sha256="ab" * 32, request_ms=1.0000004, response_bytes_in=50, response_bytes_out=50,
        response_sha256="cd" * 32, response_ms=3.25, http_status=500, fault_code="Server")
    fields.update(values)
    return RelayExchange(**fields)


def test_an_exchange_makes_exactly_the_records_the_constructor_makes() -> None:
    # records() fills each record's fields directly (the writer's hot path); LogRecord() of the same
    # values must agree, field for field, and refuse what records() refuses.
    for record in exchange(1, request_ms=-0.0, response_ms=2.0000004, http_status=None).records():
        assert vars(record) == vars(LogRecord(**vars(record)))
    with pytest.raises(ValueError, match="message_id"):
        exchange(2, message_id="m" * 300).records()
    with pytest.raises(ValueError, match="status"):
        exchange(3, status="late").records()


async def test_a_relayed_exchange_is_two_records_built_by_the_writer(store: Store) -> None:
    journal = Journal(store.engine, "dc-east")
    await journal.start()
    await journal.record(entry(0))
    await journal.record(exchange(1))
    await journal.record(exchange(2, message_id="m" * 300))  # bypasses the relay's check, as a bug would
    await journal.record(entry(3))
    await journal.close()
    records = chain(store.engine, "dc-east")
    assert [(r.message_id, r.direction) for r in records] == [
        ("m-0", "request"), ("x-1", "request"), ("x-1", "response"), ("m-3", "request")]
    request, response = records[1:3]
    assert (request.status, request.bytes_in, request.bytes_out, request.sha256, request.duration_ms) == (
        "ok", 100, 120, "ab" * 32, 1.0)  # normalised by the writer, as LogRecord() does anywhere
    assert (request.ts, response.ts, request.http_status) == (T0 + timedelta(seconds=1),
                                                               T0 + timedelta(seconds=1, milliseconds=3), None)
    assert (request.ntp_synced, response.ntp_synced) == (True, False)
    assert (response.status, response.http_status, response.fault_code, response.bytes_out) == (
        "fault", 500, "Server", 50)
    assert journal.status()["written"] == 4 and journal.status()["dropped"] == 1
    assert verify(store.engine, None).ok


# -- reading -------------------------------------------------------------------

def write(engine: Engine, node: str, records: list[LogRecord]) -> list[LogRecord]:
    with engine.begin() as connection:
        return append(connection, records, node=node)



def test_rows_written_through_the_driver_read_back_as_sqlalchemy_writes_them(store: Store) -> None:
    # append() bypasses SQLAlchemy's parameter processing; a table filled by SQLAlchemy itself must read the same.
    records = [entry(0), entry(1, ts=datetime(2024, 4, 1, 0, 0, tzinfo=UTC), message_id=None, from_ap="住基",
                           http_status=None, fault_code="Server", duration_ms=0.001, ntp_synced=False,
                           bytes_in=2**63 - 1, client="c" * 2048)]
    sealed = write(store.engine, "dc-east", records)
    other = log_tables("exchange_log_reference")
    other.metadata.create_all(store.engine)
    with store.engine.begin() as connection:
        connection.execute(insert(other.log), [to_row(r) for r in sealed])
    with store.engine.connect() as connection:
        ours = [tuple(row) for row in connection.execute(select(TABLES.log).order_by(TABLES.log.c.seq))]
        theirs = [tuple(row) for row in connection.execute(select(other.log).order_by(other.log.c.seq))]
        assert ours == theirs
        stored_as = [connection.execute(text(f"SELECT ts, ntp_synced FROM {t.name} ORDER BY seq")).all()
                     for t in (TABLES.log, other.log)]  # as the database holds them, not as SQLAlchemy reads them
        assert stored_as[0] == stored_as[1]
        assert list(read_chain(connection, "dc-east")) == sealed


def test_filters_select_by_time_ap_message_status_and_kind(store: Store) -> None:
    write(store.engine, "dc-east", [
        entry(0), entry(1, status="fault", fault_code="Server"), entry(2, kind="jx", to_ap="cityhall-a"),
        entry(3, from_ap="zei", to_ap="juki", status="error"), entry(4, message_id="m-0", direction="response"),
    ])

    def ids(**where: Any) -> list[tuple[str | None, int]]:
        return [(r.message_id, r.seq) for r in read(store.engine, LogFilter(**where))]

    assert ids() == [("m-0", 1), ("m-1", 2), ("m-2", 3), ("m-3", 4), ("m-0", 5)]
    assert ids(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=3)) == [("m-1", 2), ("m-2", 3)]
    assert ids(ap="juki") == [("m-0", 1), ("m-1", 2), ("m-2", 3), ("m-3", 4), ("m-0", 5)]
    assert ids(ap="cityhall-a") == [("m-2", 3)]
    assert ids(ap="zei") == [("m-3", 4)]
    assert ids(message_id="m-0") == [("m-0", 1), ("m-0", 5)]
    assert ids(status="fault") == [("m-1", 2)]
    assert ids(kind="jx") == [("m-2", 3)]
    assert [r.seq for r in read(store.engine, limit=2)] == [4, 5]


def test_read_new_never_skips_a_record(store: Store) -> None:
    write(store.engine, "dc-east", [entry(0)])
    positions = head_seqs(store.engine)
    assert positions == {"dc-east": 1}
    assert read_new(store.engine, positions) == ([], positions)
    west = write(store.engine, "dc-west", [entry(1)])
    east = write(store.engine, "dc-east", [entry(2), entry(3, status="fault")])
    found, positions = read_new(store.engine, positions, LogFilter(status="ok"))
    assert found == [west[0], east[0]]
    assert positions == {"dc-east": 3, "dc-west": 1}


def test_reading_an_empty_store_finds_nothing(tmp_path: Path) -> None:
    empty = Store(f"sqlite:///{tmp_path}/empty.db")
    try:
        assert list(read(empty.engine)) == []
        assert head_seqs(empty.engine) == {}
    finally:
        empty.close()


def test_unreachable_store_is_a_gateway_error(tmp_path: Path) -> None:
    broken = Store(f"sqlite:///{tmp_path}/missing-dir/log.db")
    try:
        with pytest.raises(JournalUnavailable, match="cannot read the send/receive log"):
            list(read(broken.engine))
    finally:
        broken.close()


async def test_a_killed_writer_process_is_replaced_and_nothing_is_lost(store: Store) -> None:
    journal = Journal(store.engine, "dc-east")
    await journal.start()
    await journal.record(entry(0))
    await journal.flush()
    process = journal._writer._process
    assert process is not None and process.is_alive()
    assert process.pid is not None and process.pid != os.getpid()  # sealing and inserting run in another interpreter
    assert os.sched_getscheduler(process.pid) == os.SCHED_IDLE  # ... that never takes a core from the relay
    process.kill()
    process.join()
    for i in range(1, 4):
        await journal.record(entry(i))
    await journal.close()
    assert_chain(chain(store.engine, "dc-east"), 4)
    assert journal.status()["dropped"] == 0
