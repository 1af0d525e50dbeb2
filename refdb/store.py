"""Reference-DB operations on SQLAlchemy 2 Core: pushes, deletes, queries, changes, with versions.

Why readers always see a consistent snapshot, on SQLite and PostgreSQL alike
-----------------------------------------------------------------------------
A push travels in two phases.  *Upload*: batches of records go into the
dataset's staging table under the push id, each batch in its own short
transaction — nothing a reader can see changes, memory stays bounded by one
batch, and a crash loses nothing already acknowledged.  *Commit*: one
database transaction bumps the dataset version, applies the staged records
to the live rows with set-based SQL (``INSERT … SELECT … ON CONFLICT DO
UPDATE`` on SQLite; on PostgreSQL an ``UPDATE … FROM`` the staged records of
the rows they change, then an ``INSERT … SELECT`` of those whose key is new;
for a full push, first one ``UPDATE`` that tombstones every live row whose
key was not staged), empties the staging rows, and writes the
send/receive log record.  That transaction is the only thing that changes
what readers see, so readers get the old version until it commits and the
new one after, never a mix: a reader's query runs in one snapshot
(PostgreSQL ``REPEATABLE READ``; on SQLite a read transaction, which WAL
keeps apart from the writer).  The dataset's row in ``refdb__datasets`` is
updated first in the commit, so two commits of one dataset queue up on its
row lock instead of interleaving.

Paging reads the live table at the version current when the page is read;
each page carries that version and a caller may pass it back, so a push
committing between two pages is reported as ``VersionChanged`` instead of
silently shifting the pages (the caller restarts).  Old versions are not
kept: the rows table holds each key once, with the version that last
changed it and a tombstone for deletions — which is what ``Changes`` reads.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Engine,
    Row,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.sql import ColumnElement

from gateway.errors import InvalidRecord, InvalidRequest, UnknownDataset, UnknownPush, VersionChanged
from gateway.store import snapshot

from .bulk import DriverIntegrityError, bulk_insert
from .schema import DATASETS, DELETED, PUSH, PUSHES, VERSION, DatasetTables, translated, utcnow

__all__ = ["RefStore", "PushResult", "OpenPush", "Page", "ChangesPage", "Filter", "MODES", "OPERATORS", "MAX_LIMIT"]

log = logging.getLogger("bmrgw.refdb")
T = TypeVar("T")

MODES = ("full", "diff")
#: Filter operators: equality and ranges.
OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge")
MAX_LIMIT = 10_000
#: Pushes left open this long (client died) are dropped with their staged records.
STALE_PUSH = timedelta(hours=24)
_DELETE_CHUNK = 500
#: Seconds a write waits for another writer's SQLite lock (a 1,000,000-row commit) before giving up.
LOCK_WAIT = 300.0


@dataclass(frozen=True, kw_only=True)
class PushResult:
    """What a committed push changed."""

    dataset: str
    version: int
    mode: str
    received: int
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    bytes: int = 0
    digest: str = ""
    """SHA-256 chained over the batches' request bodies."""
    push_id: str = ""


@dataclass(frozen=True, kw_only=True)
class OpenPush:
    """A push between BeginPush and Commit or Abort."""

    dataset: str
    client: str | None
    received: int


@dataclass(frozen=True, kw_only=True)
class Filter:
    """``column op value`` with an already typed value."""

    column: str
    op: str
    value: Any


@dataclass(frozen=True, kw_only=True)
class Page:
    version: int
    rows: list[Row[Any]]
    more: bool


@dataclass(frozen=True, kw_only=True)
class ChangesPage:
    version: int
    upserts: list[Row[Any]]
    deletes: list[Row[Any]]
    more: bool


def _chain(digest: str, batch: str) -> str:
    """The push digest after one more request body (``batch`` is its SHA-256; empty: no new body)."""
    if not batch:
        return digest
    return hashlib.sha256((digest + batch).encode()).hexdigest()


OnCommit = Callable[[Connection, PushResult], None]


class RefStore:
    """The reference DB of the declared datasets on one engine (thread-safe: no shared state)."""

    def __init__(self, engine: Engine, tables: Mapping[str, DatasetTables]) -> None:
        self.engine = engine
        self.tables = dict(tables)

    @property
    def driver(self) -> str:
        """The dialect whose driver gets staged rows (see :class:`refdb.values.Converter`)."""
        return str(self.engine.dialect.name)

    def dataset(self, name: str | None) -> DatasetTables:
        found = self.tables.get(name or "")
        if found is None:
            raise UnknownDataset(f"no dataset {name!r} is declared under refdb.datasets", detail=name)
        return found

    def _write(self, what: str, work: Callable[[Connection], T], *, duplicates: bool = False) -> T:
        """Run ``work`` in one write transaction.

        SQLite has one writer at a time, and the commit of a big push holds
        the lock for longer than the driver's 5 s busy timeout: a write that
        finds the database locked waits and tries again, up to
        :data:`LOCK_WAIT` seconds, instead of failing the caller's push.
        With ``duplicates``, a key already staged comes out as :class:`DriverIntegrityError`.
        """
        deadline = time.monotonic() + LOCK_WAIT
        delay = 0.05
        with translated(what):
            while True:
                try:
                    with self.engine.begin() as connection:
                        return work(connection)
                except IntegrityError as exc:
                    if not duplicates:
                        raise
                    raise DriverIntegrityError(str(exc.orig)) from exc
                except OperationalError as exc:
                    if "database is locked" not in str(exc.orig) or time.monotonic() + delay > deadline:
                        raise
                log.info("refdb: the database is locked by another writer; %s again in %.2f s", what, delay)
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    # -- pushes ----------------------------------------------------------------

    def begin_push(self, dataset: str, mode: str, client: str | None) -> str:
        """Open a push; its batches are staged until :meth:`commit`."""
        self.dataset(dataset)
        if mode not in MODES:
            raise InvalidRequest(f"mode must be full or diff, not {mode!r}")
        push_id = str(uuid.uuid4())
        now = utcnow()

        def work(connection: Connection) -> None:
            self._expire(connection, now)
            connection.execute(insert(PUSHES).values(
                id=push_id, dataset=dataset, mode=mode, client=client, state="open", received=0,
                bytes=0, digest="", created=now, touched=now))

        self._write("cannot open the push", work)
        return push_id

    def _expire(self, connection: Connection, now: Any) -> None:
        stale = connection.execute(select(PUSHES.c.id, PUSHES.c.dataset)
                                   .where(PUSHES.c.touched < now - STALE_PUSH)).all()
        for push_id, dataset in stale:
            self._drop(connection, push_id, dataset)

    def _drop(self, connection: Connection, push_id: str, dataset: str) -> None:
        tables = self.tables.get(dataset)
        if tables is not None:
            connection.execute(delete(tables.stage).where(tables.stage.c[PUSH] == push_id))
        connection.execute(delete(PUSHES).where(PUSHES.c.id == push_id))

    def stage(self, push_id: str, dataset: str, rows: Sequence[tuple[Any, ...]], *,
              size: int = 0, digest: str = "", first: int = 1) -> int:
        """Stage a batch of rows made by a :class:`~refdb.values.Converter` for :attr:`driver`;
        returns how many records the push holds now.

        ``first`` is the number of the batch's first record in the push, for
        the fault when a key repeats one staged by an earlier batch.
        """
        tables = self.dataset(dataset)

        def work(connection: Connection) -> int:
            push = self._open(connection, push_id, dataset)
            if rows:
                bulk_insert(connection, tables.stage, tables.dataset, rows, {PUSH: push_id})
            received = int(push.received) + len(rows)
            connection.execute(update(PUSHES).where(PUSHES.c.id == push_id).values(
                received=received, bytes=PUSHES.c.bytes + size, digest=_chain(push.digest, digest),
                touched=utcnow()))
            return received

        try:
            return self._write("cannot stage the records", work, duplicates=True)
        except DriverIntegrityError:
            self.fail(push_id)
            raise InvalidRecord(f"a record in the batch starting at record {first} repeats a key already pushed "
                                f"in push {push_id}; the push is refused", record=first) from None

    def _open(self, connection: Connection, push_id: str, dataset: str | None = None) -> Row[Any]:
        push = connection.execute(select(PUSHES).where(PUSHES.c.id == push_id).with_for_update()).first()
        if push is None or push.state != "open" or (dataset is not None and push.dataset != dataset):
            state = "unknown" if push is None else ("refused" if push.state != "open" else
                                                    f"for dataset {push.dataset!r}")
            raise UnknownPush(f"push {push_id!r} is {state}: begin a new push", detail=push_id)
        return push

    def fail(self, push_id: str) -> None:
        """Refuse a push after a bad batch: its staged records go, and it can no longer commit."""
        def work(connection: Connection) -> None:
            push = connection.execute(select(PUSHES).where(PUSHES.c.id == push_id)).first()
            if push is not None:
                self._drop(connection, push_id, push.dataset)
                connection.execute(insert(PUSHES).values(**{**push._mapping, "state": "failed", "touched": utcnow()}))

        self._write("cannot refuse the push", work)

    def abort(self, push_id: str) -> None:
        """Drop an open push and its staged records."""
        def work(connection: Connection) -> None:
            self._drop(connection, push_id, self._open(connection, push_id).dataset)

        self._write("cannot abort the push", work)

    def open_push(self, push_id: str) -> OpenPush:
        """An open push: its dataset and client (for access checks) and how many records it holds."""
        with translated("cannot read the push"), self.engine.connect() as connection:
            push = self._open(connection, push_id)
            return OpenPush(dataset=str(push.dataset), client=push.client, received=int(push.received))

    def commit(self, push_id: str, on_commit: OnCommit | None = None) -> PushResult:
        """Apply the staged records as the next version, in one transaction."""
        def work(connection: Connection) -> PushResult:
            push = self._open(connection, push_id)
            tables = self.dataset(push.dataset)
            version = _bump(connection, push.dataset)
            inserted, changed, deleted = _apply(connection, tables, push_id, version, full=push.mode == "full")
            received = int(push.received)
            result = PushResult(dataset=push.dataset, version=version, mode=push.mode, received=received,
                                inserted=inserted, updated=changed - inserted, deleted=deleted,
                                unchanged=received - changed, bytes=int(push.bytes), digest=push.digest,
                                push_id=push_id)
            connection.execute(delete(tables.stage).where(tables.stage.c[PUSH] == push_id))
            connection.execute(delete(PUSHES).where(PUSHES.c.id == push_id))
            if on_commit is not None:
                on_commit(connection, result)
            return result

        return self._write("cannot commit the push", work)

    # -- deletes ---------------------------------------------------------------

    def delete(self, dataset: str, keys: Sequence[dict[str, Any]], on_commit: OnCommit | None = None) -> PushResult:
        """Tombstone the rows with these keys as the next version."""
        tables = self.dataset(dataset)
        rows = tables.rows
        columns = [rows.c[k] for k in tables.dataset.key]
        def work(connection: Connection) -> PushResult:
            version = _bump(connection, dataset)
            deleted = 0
            for start in range(0, len(keys), _DELETE_CHUNK):
                chunk = [tuple(key[c.name] for c in columns) for key in keys[start:start + _DELETE_CHUNK]]
                match = tuple_(*columns).in_(chunk) if len(columns) > 1 else columns[0].in_([k[0] for k in chunk])
                deleted += connection.execute(update(rows).where(match, not_(rows.c[DELETED]))
                                              .values({VERSION: version, DELETED: True})).rowcount
            result = PushResult(dataset=dataset, version=version, mode="delete", received=len(keys), inserted=0,
                                updated=0, deleted=deleted, unchanged=len(keys) - deleted)
            if on_commit is not None:
                on_commit(connection, result)
            return result

        return self._write("cannot delete", work)

    # -- reading ---------------------------------------------------------------

    def query(self, dataset: str, filters: Sequence[Filter], *, offset: int, limit: int,
              version: int | None = None) -> Page:
        """Live rows matching all filters, ordered by key."""
        tables = self.dataset(dataset)
        rows = tables.rows
        stmt = (select(*_declared(tables)).where(not_(rows.c[DELETED]), *(_condition(rows, f) for f in filters))
                .order_by(*(rows.c[k] for k in tables.dataset.key)).offset(offset).limit(limit + 1))
        with translated("cannot query"), snapshot(self.engine) as connection:
            current = _version(connection, dataset, version)
            found = list(connection.execute(stmt))
        return Page(version=current, rows=found[:limit], more=len(found) > limit)

    def changes(self, dataset: str, since: int, *, offset: int, limit: int,
                version: int | None = None) -> ChangesPage:
        """Rows inserted, changed or deleted after version ``since``, ordered by key."""
        tables = self.dataset(dataset)
        rows = tables.rows
        stmt = (select(*_declared(tables), rows.c[DELETED]).where(rows.c[VERSION] > since)
                .order_by(*(rows.c[k] for k in tables.dataset.key)).offset(offset).limit(limit + 1))
        with translated("cannot read changes"), snapshot(self.engine) as connection:
            current = _version(connection, dataset, version)
            found: list[Row[Any]] = list(connection.execute(stmt))
        page = found[:limit]
        return ChangesPage(version=current, upserts=[r for r in page if not r._mapping[DELETED]],
                           deletes=[r for r in page if r._mapping[DELETED]], more=len(found) > limit)

    def version(self, dataset: str) -> int:
        self.dataset(dataset)
        with translated("cannot read the version"), self.engine.connect() as connection:
            return _version(connection, dataset, None)


def _declared(tables: DatasetTables) -> list[ColumnElement[Any]]:
    return [tables.rows.c[c.name] for c in tables.dataset.columns]


def _version(connection: Connection, dataset: str, expected: int | None) -> int:
    current = int(connection.execute(select(DATASETS.c.version).where(DATASETS.c.name == dataset)).scalar_one())
    if expected is not None and expected != current:
        raise VersionChanged(f"dataset {dataset!r} is at version {current}, not {expected}: "
                             "a push committed while paging; start again from offset 0", detail=str(current))
    return current


def _bump(connection: Connection, dataset: str) -> int:
    """The dataset's next version; taking the row lock first serialises commits of one dataset."""
    connection.execute(update(DATASETS).where(DATASETS.c.name == dataset)
                       .values(version=DATASETS.c.version + 1, updated=utcnow()))
    return int(connection.execute(select(DATASETS.c.version).where(DATASETS.c.name == dataset)).scalar_one())


_OPS: dict[str, Callable[[ColumnElement[Any], Any], ColumnElement[bool]]] = {
    "eq": lambda c, v: c == v if v is not None else c.is_(None),
    "ne": lambda c, v: c != v if v is not None else c.is_not(None),
    "lt": lambda c, v: c < v, "le": lambda c, v: c <= v,
    "gt": lambda c, v: c > v, "ge": lambda c, v: c >= v,
}


def _condition(rows: Table, f: Filter) -> ColumnElement[bool]:
    return _OPS[f.op](rows.c[f.column], f.value)


def _apply(connection: Connection, tables: DatasetTables, push_id: str, version: int,
           *, full: bool) -> tuple[int, int, int]:
    """Staged records → live rows; returns (inserted, inserted + updated, deleted)."""
    rows, stage, dataset = tables.rows, tables.stage, tables.dataset
    mine = stage.c[PUSH] == push_id
    same_key = and_(*(rows.c[k] == stage.c[k] for k in dataset.key))
    inserted = int(connection.execute(
        select(func.count()).select_from(stage)
        .where(mine, ~exists().where(same_key, not_(rows.c[DELETED])))).scalar_one())
    deleted = 0
    if full:
        deleted = connection.execute(update(rows).where(not_(rows.c[DELETED]), ~exists().where(mine, same_key))
                                     .values({VERSION: version, DELETED: True})).rowcount
    if connection.dialect.name == "postgresql":
        changed = _update(connection, tables, mine, same_key, version)
        changed += _insert(connection, tables, mine, same_key, version)
    else:  # one upsert: as fast there, and UPDATE … FROM would need SQLite 3.33
        changed = connection.execute(_upsert(tables, mine, version)).rowcount
    return inserted, changed, deleted


def _update(connection: Connection, tables: DatasetTables, mine: ColumnElement[bool],
            same_key: ColumnElement[bool], version: int) -> int:
    """Staged records whose key has a row that is deleted or differs: that row takes their values."""
    rows, stage, dataset = tables.rows, tables.stage, tables.dataset
    values = [c.name for c in dataset.columns if c.name not in dataset.key]
    differs = or_(rows.c[DELETED], *(rows.c[n].is_distinct_from(stage.c[n]) for n in values))
    return int(connection.execute(update(rows).where(mine, same_key, differs).values(
        {**{n: stage.c[n] for n in values}, VERSION: version, DELETED: False})).rowcount)


def _insert(connection: Connection, tables: DatasetTables, mine: ColumnElement[bool],
            same_key: ColumnElement[bool], version: int) -> int:
    """Staged records whose key has no row at all, live or deleted: new rows.

    A plain ``INSERT … SELECT`` where no row has the key, rather than ``ON CONFLICT DO UPDATE``:
    PostgreSQL inserts each row of an upsert speculatively, which took 0.7 s for 100,000 new rows
    (this, 0.37–0.46 s).  No other commit adds rows of this dataset meanwhile: :func:`_bump` holds
    its row lock.
    """
    rows, stage, dataset = tables.rows, tables.stage, tables.dataset
    names = [c.name for c in dataset.columns]
    source = (select(*(stage.c[n] for n in names), literal(version, BigInteger), literal(False, Boolean))
              .where(mine, ~exists().where(same_key)))
    stmt = insert(rows).from_select([*names, VERSION, DELETED], source).execution_options(preserve_rowcount=True)
    return int(connection.execute(stmt).rowcount)


def _upsert(tables: DatasetTables, mine: ColumnElement[bool], version: int) -> Any:
    """SQLite: staged records inserted, or onto the row with their key if it is deleted or differs."""
    rows, stage, dataset = tables.rows, tables.stage, tables.dataset
    names = [c.name for c in dataset.columns]
    source = select(*(stage.c[n] for n in names), literal(version, BigInteger), literal(False, Boolean)).where(mine)
    stmt = sqlite_insert(rows).from_select([*names, VERSION, DELETED], source)
    values = [n for n in names if n not in dataset.key]
    return stmt.on_conflict_do_update(
        index_elements=list(dataset.key),
        set_={**{n: stmt.excluded[n] for n in values}, VERSION: version, DELETED: False},
        where=or_(rows.c[DELETED], *(rows.c[n].is_distinct_from(stmt.excluded[n]) for n in values)),
    ).execution_options(preserve_rowcount=True)
