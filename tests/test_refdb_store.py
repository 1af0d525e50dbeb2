"""The reference-DB store on SQLite and the real PostgreSQL: versions, full vs diff, deletes,
changes, paging, snapshots under a concurrent push, schema evolution, the read-only view."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from gateway.errors import ConfigError, InvalidRecord, UnknownDataset, UnknownPush, VersionChanged
from refdb.config import parse_refdb
from refdb.store import Filter, PushResult, RefStore
from refdb.values import Converter

from .pg import pg_schema
from .refdb_support import RESIDENTS, database, person, refstore, settings


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
def store(url: str) -> Iterator[RefStore]:
    with refstore(url, settings()) as opened:
        yield opened


def push(store: RefStore, records: Iterable[dict[str, str | None]], mode: str = "diff",
         dataset: str = "residents", batch: int = 1000) -> PushResult:
    converter = Converter(store.dataset(dataset).dataset, store.driver)
    push_id = store.begin_push(dataset, mode, None)
    rows = converter.rows(list(records))
    for start in range(0, len(rows), batch):
        store.stage(push_id, dataset, rows[start:start + batch])
    return store.commit(push_id)


def ids(store: RefStore, *filters: Filter) -> list[str]:
    return [r.person_id for r in store.query("residents", list(filters), offset=0, limit=10_000).rows]


def test_values_of_every_type_round_trip(store: RefStore) -> None:
    push(store, [person(1, updated="2024-04-01T09:30:00+09:00", fee="1200.5", active="true"),
                 person(2, name=None, birth=None, household="-9223372036854775808", active="0")])
    rows = {r.person_id: r for r in store.query("residents", [], offset=0, limit=10).rows}
    first, second = rows["P000001"], rows["P000002"]
    assert first.birth == date(1990, 1, 1)
    assert first.updated == datetime(2024, 4, 1, 0, 30)  # offsets are stored as UTC
    assert first.fee == Decimal("1200.50") and first.active is True
    assert second.name is None and second.birth is None and second.household == -2**63 and second.active is False


def test_full_push_replaces_and_diff_push_upserts(store: RefStore) -> None:
    first = push(store, [person(n) for n in range(1, 6)], mode="full")
    assert (first.version, first.inserted, first.deleted) == (1, 5, 0)
    second = push(store, [person(n) for n in (2, 3)] + [person(4, name="renamed"), person(9)], mode="full")
    assert (second.version, second.inserted, second.updated, second.deleted, second.unchanged) == (2, 1, 1, 2, 2)
    assert ids(store) == ["P000002", "P000003", "P000004", "P000009"]
    third = push(store, [person(1), person(4, name="again")], mode="diff")
    assert (third.version, third.inserted, third.updated, third.deleted) == (3, 1, 1, 0)
    assert ids(store) == ["P000001", "P000002", "P000003", "P000004", "P000009"]


def test_a_full_push_of_nothing_empties_the_dataset(store: RefStore) -> None:
    push(store, [person(1), person(2)], mode="full")
    result = push(store, [], mode="full")
    assert (result.deleted, ids(store)) == (2, [])


def test_delete_tombstones_and_a_later_push_revives(store: RefStore) -> None:
    push(store, [person(n) for n in range(1, 4)])
    result = store.delete("residents", [{"person_id": "P000002"}, {"person_id": "P000404"}])
    assert (result.version, result.deleted, result.unchanged) == (2, 1, 1)
    assert ids(store) == ["P000001", "P000003"]
    assert push(store, [person(2)]).inserted == 1
    assert ids(store) == ["P000001", "P000002", "P000003"]


def test_changes_after_several_versions(store: RefStore) -> None:
    push(store, [person(n) for n in range(1, 6)], mode="full")           # v1
    push(store, [person(2, name="two")])                                  # v2
    store.delete("residents", [{"person_id": "P000003"}])                 # v3
    push(store, [person(n) for n in (1, 2, 4, 5, 6)], mode="full")         # v4: only 6 is new
    since_1 = store.changes("residents", 1, offset=0, limit=100)
    assert since_1.version == 4
    assert [r.person_id for r in since_1.upserts] == ["P000002", "P000006"]
    assert since_1.upserts[0].name == "name 2"  # v4 set it back: Changes gives the current row
    assert [r.person_id for r in since_1.deletes] == ["P000003"]
    since_3 = store.changes("residents", 3, offset=0, limit=100)
    assert ([r.person_id for r in since_3.upserts], since_3.deletes) == (["P000002", "P000006"], [])
    assert store.changes("residents", 4, offset=0, limit=100).upserts == []
    assert len(store.changes("residents", 0, offset=0, limit=100).upserts) == 5


def test_filters_equality_and_ranges(store: RefStore) -> None:
    push(store, [person(n, birth=f"19{n:02d}-06-15", fee=f"{n}.25") for n in range(10, 20)])
    birth = Filter(column="birth", op="ge", value=date(1915, 1, 1))
    assert ids(store, birth, Filter(column="birth", op="lt", value=date(1917, 6, 15))) == ["P000015", "P000016"]
    assert ids(store, Filter(column="fee", op="gt", value=Decimal("18.25"))) == ["P000019"]
    assert ids(store, Filter(column="household", op="eq", value=3)) == ["P000010", "P000017"]
    assert len(ids(store, Filter(column="household", op="ne", value=3))) == 8
    assert ids(store, Filter(column="updated", op="eq", value=None)) == ids(store)


def test_paging_is_stable_and_detects_a_push_in_between(store: RefStore) -> None:
    push(store, [person(n) for n in range(250, 0, -1)])
    pages, offset, version = [], 0, None
    while True:
        page = store.query("residents", [], offset=offset, limit=60, version=version)
        version = page.version
        pages.append([r.person_id for r in page.rows])
        offset += len(page.rows)
        if not page.more:
            break
    flat = [i for p in pages for i in p]
    assert [len(p) for p in pages] == [60, 60, 60, 60, 10]
    assert flat == sorted(flat) and len(set(flat)) == 250
    push(store, [person(999)])
    with pytest.raises(VersionChanged):
        store.query("residents", [], offset=60, limit=60, version=version)


def test_staged_records_are_invisible_until_commit_and_abort_drops_them(store: RefStore) -> None:
    converter = Converter(store.dataset("residents").dataset, store.driver)
    push_id = store.begin_push("residents", "full", None)
    store.stage(push_id, "residents", [converter.row(person(1))])
    assert ids(store) == [] and store.version("residents") == 0
    store.abort(push_id)
    with pytest.raises(UnknownPush):
        store.commit(push_id)
    assert store.version("residents") == 0


def test_a_key_repeated_across_batches_refuses_the_whole_push(store: RefStore) -> None:
    push(store, [person(1)])
    with pytest.raises(InvalidRecord, match="repeats a key"):
        push(store, [person(2), person(3), person(2)], batch=2)
    assert ids(store) == ["P000001"] and store.version("residents") == 1


def test_unknown_dataset(store: RefStore) -> None:
    with pytest.raises(UnknownDataset):
        store.query("nope", [], offset=0, limit=1)


def test_read_only_view_shows_live_rows_in_declared_columns(store: RefStore, url: str) -> None:
    push(store, [person(1), person(2)])
    store.delete("residents", [{"person_id": "P000001"}])
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT * FROM refdb_residents")).mappings().all()
            assert [r["person_id"] for r in rows] == ["P000002"]
            assert list(rows[0]) == list(RESIDENTS["columns"])
            if engine.dialect.name == "sqlite":
                with pytest.raises(DBAPIError, match="cannot modify"):
                    connection.execute(text("DELETE FROM refdb_residents"))
    finally:
        engine.dispose()


def test_postgresql_sql_reader_may_select_the_view_and_nothing_else() -> None:
    role = f"bmrgw_reader_{uuid.uuid4().hex[:10]}"
    with pg_schema() as url:
        admin = create_engine(url)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE ROLE "{role}"'))
            schema = connection.execute(text("SELECT current_schema()")).scalar_one()
            connection.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))  # the DBA's step (README)
        try:
            declared = parse_refdb({"datasets": {"residents": {**RESIDENTS, "sql_readers": [role]}}})
            with refstore(url, declared) as store:
                push(store, [person(1)])

            def as_reader(sql: str) -> list[Any]:
                with admin.connect() as connection:
                    connection.execute(text(f'SET ROLE "{role}"'))
                    return list(connection.execute(text(sql)).all()) if sql.startswith("SELECT") else \
                        [connection.execute(text(sql)).rowcount]

            assert [r[0] for r in as_reader("SELECT person_id FROM refdb_residents")] == ["P000001"]
            for refused in ("DELETE FROM refdb_residents", "UPDATE refdb_residents SET name = 'x'",
                            "SELECT * FROM refdb__residents__rows", "SELECT * FROM refdb__residents__stage"):
                with pytest.raises(DBAPIError, match="permission denied"):
                    as_reader(refused)
        finally:
            with admin.begin() as connection:
                connection.execute(text(f'DROP OWNED BY "{role}"'))
                connection.execute(text(f'DROP ROLE "{role}"'))
            admin.dispose()


def test_schema_evolution_adds_columns_and_refuses_destructive_changes(url: str) -> None:
    with refstore(url, settings()) as store:
        push(store, [person(1)])
    grown = {**RESIDENTS, "columns": {**RESIDENTS["columns"], "ward": "string"}}
    with refstore(url, parse_refdb({"datasets": {"residents": grown}})) as store:
        assert ids(store) == ["P000001"]
        push(store, [person(2, ward="Chuo")])
        assert [r.ward for r in store.query("residents", [], offset=0, limit=5).rows] == [None, "Chuo"]
    engine = create_engine(url)
    assert "ward" in [c["name"] for c in inspect(engine).get_columns("refdb_residents")]
    engine.dispose()
    retyped = {**grown, "columns": {**grown["columns"], "household": "string"}}
    dropped = {**grown, "columns": {k: v for k, v in grown["columns"].items() if k != "fee"}}
    rekeyed = {**grown, "key": ["person_id", "name"]}
    for changed, message in ((retyped, "type changed from integer to string"),
                             (dropped, re.escape("column 'fee' (decimal(12,2)) was removed")),
                             (rekeyed, "key: changed")):
        with pytest.raises(ConfigError, match=message):
            with refstore(url, parse_refdb({"datasets": {"residents": changed}})):
                pass


SNAP = {"owner": "o", "key": ["id"], "columns": {"id": "integer", "gen": "integer"}}


def test_readers_see_one_version_while_full_pushes_commit(url: str) -> None:
    """No torn reads: every page read during pushes holds rows of exactly the version it reports."""
    rows = 3000
    stop = threading.Event()
    seen: list[tuple[int, set[int], int]] = []
    failures: list[BaseException] = []

    def reader(store: RefStore) -> None:
        try:
            while not stop.is_set():
                page = store.query("snap", [], offset=0, limit=rows)
                seen.append((page.version, {r.gen for r in page.rows}, len(page.rows)))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    with refstore(url, settings(snap=SNAP)) as store:
        threads = [threading.Thread(target=reader, args=(store,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for generation in range(1, 6):
                push(store, ({"id": str(n), "gen": str(generation)} for n in range(rows)), mode="full",
                     dataset="snap", batch=700)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert not failures
    during = [s for s in seen if s[0] > 0]
    assert len(during) >= 2, "the readers never saw a committed version"
    for version, generations, count in during:
        assert generations == {version} and count == rows, (version, generations, count)


def test_a_push_waits_for_another_sqlite_writer_longer_than_the_busy_timeout(tmp_path: Path) -> None:
    """SQLite has one writer: a commit that finds the lock held (a big push elsewhere) waits, not fails."""
    with refstore(f"sqlite:///{tmp_path}/locked.db", settings()) as store:
        converter = Converter(store.dataset("residents").dataset, store.driver)
        push_id = store.begin_push("residents", "full", None)
        store.stage(push_id, "residents", [converter.row(person(1))])
        holder = create_engine(f"sqlite:///{tmp_path}/locked.db")
        held = threading.Event()

        def hold_the_write_lock() -> None:
            with holder.connect() as connection:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                held.set()
                time.sleep(6.5)  # longer than the 5 s busy timeout of gateway.store
                connection.rollback()

        thread = threading.Thread(target=hold_the_write_lock)
        thread.start()
        held.wait()
        started = time.monotonic()
        result = store.commit(push_id)
        waited = time.monotonic() - started
        thread.join()
        holder.dispose()
        assert result.inserted == 1 and waited > 5
        assert ids(store) == ["P000001"]
