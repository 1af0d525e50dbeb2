"""Tamper evidence on SQLite and the real PostgreSQL: verify names every change; archives keep the chain."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, update

from gateway.logs.chain import ARCHIVE_FORMAT, Report, archive, verify
from gateway.logs.journal import Journal
from gateway.logs.records import GENESIS, LogRecord, canonical, chain_hash, seal
from gateway.logs.tables import TABLES, heads, read_chain, to_row

from .test_journal import T0, assert_chain, chain, count, entry, store, write  # noqa: F401  (store: fixture)

LOG = TABLES.log


def problems(report: Report) -> list[tuple[str, str, int | None, int | None]]:
    return [(p.node, p.kind, p.first, p.last) for p in report.problems]


def seed(engine: Engine, n: int = 6, nodes: tuple[str, ...] = ("dc-east", "dc-west")) -> None:
    """``n`` records per node, one second apart, interleaved."""
    for i in range(n):
        for node in nodes:
            write(engine, node, [entry(i, message_id=f"{node}-{i}")])


def sql(engine: Engine, statement: Any) -> None:
    with engine.begin() as connection:
        connection.execute(statement)


def where(node: str, seq: int) -> Any:
    return (LOG.c.node == node) & (LOG.c.seq == seq)


# -- the hash ------------------------------------------------------------------

@pytest.mark.parametrize("values", [
    {"from_ap": "住基"},
    {"message_id": None, "from_ap": None, "to_ap": None, "endpoint": None, "sha256": None, "client": None,
     "http_status": None, "fault_code": None},
    {"status": "fault", "fault_code": 'soap:Client "quoted" \\ back\tslash', "http_status": 500, "ntp_synced": False},
    {"ntp_offset": -3.000001, "duration_ms": 1234567.891, "bytes_in": 2**63 - 1, "bytes_out": 0},
    {"ts": datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "endpoint": "urn:bmrgw:ap:税務/\u2028"},
], ids=["non-ascii", "nulls", "escapes", "numbers", "last-microsecond"])
def test_canonical_form_is_sorted_compact_json_without_the_chain_hashes(values: dict[str, Any]) -> None:
    record = seal(entry(1, **values), node="dc-east", seq=1, prev_hash=GENESIS)
    data = json.loads(canonical(record))
    assert "hash" not in data and "prev_hash" not in data
    assert list(data) == sorted(data) and data["seq"] == 1
    assert data == {k: v for k, v in record.to_json().items() if k not in ("hash", "prev_hash")}
    # What an auditor recomputes from `bmrgw logs --format json` alone:
    line = record.to_json()
    body = {k: v for k, v in line.items() if k not in ("hash", "prev_hash")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical(record) == text
    expected = hashlib.sha256(bytes.fromhex(line["prev_hash"]) + text).hexdigest()
    assert record.hash == expected == chain_hash(GENESIS, record)


def test_canonical_form_has_no_insignificant_white_space() -> None:
    record = seal(entry(1, from_ap="住基"), node="dc-east", seq=1, prev_hash=GENESIS)
    assert json.loads(canonical(record))["from"] == "住基"
    assert b" " not in canonical(record).replace("http://127.0.0.1:9001/kaigo".encode(), b"")


def test_every_field_is_covered_by_the_hash() -> None:
    record = seal(entry(1), node="dc-east", seq=1, prev_hash=GENESIS)
    changes: dict[str, Any] = dict(
        ts=T0, ntp_offset=0.5, ntp_synced=False, message_id="x", kind="jx", direction="response",
        from_ap="x", to_ap="x", endpoint="x", status="fault", bytes_in=1, bytes_out=1, duration_ms=9.0,
        sha256="cd" * 32, client="x", http_status=500, fault_code="x", node="x", seq=2,
    )
    for name, value in changes.items():
        assert chain_hash(GENESIS, record.__class__(**{**to_row(record), "ts": record.ts, name: value})) != \
            record.hash, name


def test_stored_records_hash_the_same_as_written(store: Any) -> None:
    seed(store.engine)
    assert verify(store.engine, None).ok
    assert_chain(chain(store.engine, "dc-east"), 6)


# -- tampering in the database -------------------------------------------------

def test_untouched_logs_verify_clean(store: Any) -> None:
    seed(store.engine)
    report = verify(store.engine, None)
    assert report.ok and problems(report) == []
    assert {n: (s.stored, s.last_seq) for n, s in report.chains.items()} == {"dc-east": (6, 6), "dc-west": (6, 6)}


async def test_verify_beside_a_running_gateway_finds_nothing(store: Any) -> None:
    journal = Journal(store.engine, "dc-east", batch_size=3)
    await journal.start()
    stop = asyncio.Event()

    async def keep_logging() -> None:
        i = 0
        while not stop.is_set():
            await journal.record(entry(i))
            i += 1
            await asyncio.sleep(0.001)

    writer = asyncio.create_task(keep_logging())
    try:
        while journal.written == 0:  # an empty store is no log at all: verify fails on it
            await asyncio.sleep(0.01)
        verified = 0
        while verified < 5 or journal.written < 20:  # verify while the chain really grows
            report = await asyncio.to_thread(verify, store.engine, None)
            assert report.ok, problems(report)
            verified += 1
    finally:
        stop.set()
        await writer
        await journal.close()
    assert verify(store.engine, None).chains["dc-east"].last_seq == journal.written > 5


def test_changed_field_is_named(store: Any) -> None:
    seed(store.engine)
    sql(store.engine, update(LOG).where(where("dc-east", 3)).values(status="ok", bytes_out=1))
    assert problems(verify(store.engine, None)) == [("dc-east", "altered", 3, 3)]


def test_field_changed_to_an_impossible_value_is_named_not_a_crash(store: Any) -> None:
    seed(store.engine)
    sql(store.engine, update(LOG).where(where("dc-east", 2)).values(status="bogus", bytes_in=-5))
    assert problems(verify(store.engine, None)) == [("dc-east", "altered", 2, 2)]


def test_changed_and_rehashed_record_is_named_by_its_successor(store: Any) -> None:
    seed(store.engine)
    [old] = [r for r in chain(store.engine, "dc-west") if r.seq == 2]
    forged = seal(old.__class__(**{**to_row(old), "ts": old.ts, "to_ap": "zei"}),
                  node="dc-west", seq=2, prev_hash=old.prev_hash)
    sql(store.engine, update(LOG).where(where("dc-west", 2)).values(to_ap="zei", hash=forged.hash))
    assert problems(verify(store.engine, None)) == [("dc-west", "altered", 2, 2)]


def test_deleted_row_is_named(store: Any) -> None:
    seed(store.engine)
    sql(store.engine, delete(LOG).where(where("dc-east", 4)))
    assert problems(verify(store.engine, None)) == [("dc-east", "deleted", 4, 4)]


def test_deleted_newest_rows_are_named(store: Any) -> None:
    seed(store.engine)
    sql(store.engine, delete(LOG).where(LOG.c.node == "dc-west", LOG.c.seq >= 5))
    assert problems(verify(store.engine, None)) == [("dc-west", "deleted", 5, 6)]


def test_inserted_row_is_named(store: Any) -> None:
    seed(store.engine)
    [last] = [r for r in chain(store.engine, "dc-east") if r.seq == 6]
    fake = seal(entry(99, message_id="forged"), node="dc-east", seq=7, prev_hash=last.hash)
    sql(store.engine, insert(LOG).values(**to_row(fake)))
    assert problems(verify(store.engine, None)) == [("dc-east", "inserted", 7, 7)]


def test_inserted_chain_without_a_head_is_named(store: Any) -> None:
    seed(store.engine)
    fake = seal(entry(1), node="dc-ghost", seq=1, prev_hash=GENESIS)
    sql(store.engine, insert(LOG).values(**to_row(fake)))
    assert problems(verify(store.engine, None)) == [("dc-ghost", "inserted", None, None)]


def test_several_problems_are_all_named(store: Any) -> None:
    seed(store.engine, n=8)
    sql(store.engine, update(LOG).where(where("dc-east", 2)).values(client="someone-else"))
    sql(store.engine, delete(LOG).where(LOG.c.node == "dc-east", LOG.c.seq.in_([5, 6])))
    sql(store.engine, update(LOG).where(where("dc-west", 8)).values(duration_ms=0.0))
    assert problems(verify(store.engine, None)) == [
        ("dc-east", "altered", 2, 2), ("dc-east", "deleted", 5, 6), ("dc-west", "altered", 8, 8),
    ]


# -- archives ------------------------------------------------------------------

def test_archive_then_verify_passes(store: Any, tmp_path: Path) -> None:
    seed(store.engine, n=10)
    result = archive(store.engine, tmp_path / "archive", T0 + timedelta(seconds=4))
    assert result.path is not None and result.path.exists()
    assert {n: (a.first_seq, a.last_seq, a.count) for n, a in result.chains.items()} == \
        {"dc-east": (1, 4, 4), "dc-west": (1, 4, 4)}
    assert count(store.engine) == 12
    report = verify(store.engine, tmp_path / "archive")
    assert report.ok, problems(report)
    assert {n: (s.archived, s.stored) for n, s in report.chains.items()} == \
        {"dc-east": (4, 6), "dc-west": (4, 6)}


def test_verify_while_an_archive_commits_sees_one_instant(store: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive that commits between verify reading the chain heads and their records is not a deletion."""
    import gateway.logs.chain

    seed(store.engine, n=10)
    walk = gateway.logs.chain.read_chain  # type: ignore[attr-defined]  # the name chain.py looks up
    archived: list[Any] = []

    def archive_first(*args: Any, **kwargs: Any) -> Any:
        if not archived:  # in another connection, after verify has read the heads
            archived.append(None)  # (archive reads chains too)
            archived[0] = archive(store.engine, tmp_path / "archive", T0 + timedelta(seconds=4))
        return walk(*args, **kwargs)

    monkeypatch.setattr(gateway.logs.chain, "read_chain", archive_first)
    report = verify(store.engine, tmp_path / "archive")
    assert archived and archived[0].path is not None and count(store.engine) == 12
    assert report.ok, problems(report)
    assert {n: (s.archived, s.stored) for n, s in report.chains.items()} == {"dc-east": (0, 10), "dc-west": (0, 10)}
    monkeypatch.undo()
    assert verify(store.engine, tmp_path / "archive").ok


def test_archive_file_carries_the_anchors(store: Any, tmp_path: Path) -> None:
    seed(store.engine, n=5, nodes=("dc-east",))
    records = chain(store.engine, "dc-east")
    result = archive(store.engine, tmp_path, T0 + timedelta(seconds=3))
    assert result.path is not None
    lines = gzip.decompress(result.path.read_bytes()).decode().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == ARCHIVE_FORMAT
    assert header["chains"]["dc-east"] == {"first_seq": 1, "last_seq": 3, "count": 3, "prev_hash": GENESIS,
                                           "hash": records[2].hash, "prev_archive": None}
    assert [json.loads(line) for line in lines[1:]] == [r.to_json() for r in records[:3]]


async def test_chain_continues_across_several_archives_and_a_restart(store: Any, tmp_path: Path) -> None:
    seed(store.engine, n=4)
    first = archive(store.engine, tmp_path, T0 + timedelta(seconds=2))
    second = archive(store.engine, tmp_path, T0 + timedelta(days=1))  # everything: the database is empty
    assert first.path and second.path and count(store.engine) == 0
    assert second.chains["dc-east"].prev_archive == first.path.name
    journal = Journal(store.engine, "dc-east")  # a restart after everything was archived
    await journal.start()
    await journal.record(entry(50))
    await journal.close()
    [continued] = chain(store.engine, "dc-east")
    assert continued.seq == 5 and continued.prev_hash == second.chains["dc-east"].hash
    report = verify(store.engine, tmp_path)
    assert report.ok, problems(report)
    assert (report.chains["dc-east"].archived, report.chains["dc-east"].stored) == (4, 1)


def test_nothing_old_enough_means_no_file(store: Any, tmp_path: Path) -> None:
    seed(store.engine, n=2)
    result = archive(store.engine, tmp_path / "archive", T0 - timedelta(days=1))
    assert result.path is None and not (tmp_path / "archive").exists()
    assert verify(store.engine, tmp_path / "archive").ok


def rewrite(path: Path, change: Any) -> None:
    lines = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    change(lines)
    path.write_bytes(gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode()))


def archived(store: Any, tmp_path: Path) -> Path:
    seed(store.engine, n=6)
    result = archive(store.engine, tmp_path, T0 + timedelta(seconds=4))
    assert result.path is not None
    return result.path


def test_tampered_archive_record_is_named(store: Any, tmp_path: Path) -> None:
    path = archived(store, tmp_path)

    def change(lines: list[dict[str, Any]]) -> None:
        next(line for line in lines[1:] if line["node"] == "dc-west" and line["seq"] == 2)["status"] = "ok"
        next(line for line in lines[1:] if line["node"] == "dc-west" and line["seq"] == 2)["bytes_in"] = 7

    rewrite(path, change)
    assert problems(verify(store.engine, tmp_path)) == [("dc-west", "altered", 2, 2)]


def test_archive_record_changed_to_an_impossible_value_is_named(store: Any, tmp_path: Path) -> None:
    path = archived(store, tmp_path)

    def change(lines: list[dict[str, Any]]) -> None:
        next(line for line in lines[1:] if line["node"] == "dc-east" and line["seq"] == 1)["direction"] = "?"

    rewrite(path, change)
    assert problems(verify(store.engine, tmp_path)) == [("dc-east", "altered", 1, 1)]


def test_record_deleted_from_an_archive_is_named(store: Any, tmp_path: Path) -> None:
    path = archived(store, tmp_path)
    rewrite(path, lambda lines: lines.remove(next(
        line for line in lines[1:] if line["node"] == "dc-east" and line["seq"] == 3)))
    assert problems(verify(store.engine, tmp_path)) == [("dc-east", "deleted", 3, 3)]


def test_tampered_archive_anchor_is_named(store: Any, tmp_path: Path) -> None:
    path = archived(store, tmp_path)

    def change(lines: list[dict[str, Any]]) -> None:
        lines[0]["chains"]["dc-east"]["hash"] = "f" * 64

    rewrite(path, change)
    assert problems(verify(store.engine, tmp_path)) == [("dc-east", "archive", 1, 4)]


def test_missing_archive_is_named(store: Any, tmp_path: Path) -> None:
    archived(store, tmp_path).unlink()
    found = problems(verify(store.engine, tmp_path))
    assert found == [("dc-east", "archive", 1, 4), ("dc-west", "archive", 1, 4)]
    assert "No such file" in str(verify(store.engine, tmp_path).problems[0])


def test_corrupt_archive_is_named_not_a_crash(store: Any, tmp_path: Path) -> None:
    path = archived(store, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report = verify(store.engine, tmp_path)
    assert not report.ok and {p.kind for p in report.problems} == {"archive"}


def test_rows_deleted_under_cover_of_an_archive_are_named(store: Any, tmp_path: Path) -> None:
    seed(store.engine, n=6, nodes=("dc-east",))
    archive(store.engine, tmp_path, T0 + timedelta(seconds=2))
    with store.engine.begin() as connection:  # pretend seq 3..4 were archived too, without a file
        head = heads(connection)["dc-east"]
        [fourth] = [r for r in read_chain(connection, "dc-east") if r.seq == 4]
        connection.execute(update(TABLES.head).values(archived_seq=4, archived_hash=fourth.hash))
        connection.execute(delete(LOG).where(LOG.c.seq <= 4))
    assert head.archived_seq == 2
    assert problems(verify(store.engine, tmp_path)) == [("dc-east", "archive", 4, 4)]


def test_archive_keeps_unicode_and_times_exact(store: Any, tmp_path: Path) -> None:
    when = datetime(2024, 4, 1, 9, 0, 0, 1, tzinfo=UTC)
    write(store.engine, "dc-east", [entry(0, ts=when, from_ap="介護", ntp_offset=-0.000001, duration_ms=0.001)])
    result = archive(store.engine, tmp_path, when + timedelta(seconds=1))
    assert result.path is not None
    lines = gzip.decompress(result.path.read_bytes()).decode().splitlines()
    record = LogRecord.from_json(json.loads(lines[1]))
    assert (record.ts, record.from_ap, record.ntp_offset) == (when, "介護", -0.000001)
    assert verify(store.engine, tmp_path).ok
