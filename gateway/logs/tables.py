"""The send/receive log's tables: schema, append under the chain head's lock, and reads.

One SQLAlchemy Core table of records and one of chain heads, unchanged on
SQLite (WAL) and PostgreSQL.  Appends seal each record onto its node's chain
(:func:`gateway.logs.records.seal`) in the caller's transaction; SQLAlchemy
errors become :class:`~gateway.errors.JournalUnavailable` here and nowhere else.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError
from sqlalchemy.sql import ColumnElement

from gateway.errors import JournalUnavailable, WriterError
from gateway.store import DRIVERS, create_tables, db_reason, insert_rows, sqlite_datetime

from .records import COLUMNS, GENESIS, LogRecord, check_text, column_values, seal, stored

__all__ = [
    "LogTables",
    "TABLES",
    "Head",
    "LogFilter",
    "log_tables",
    "ensure_schema",
    "has_log",
    "to_row",
    "from_row",
    "append",
    "read",
    "read_chain",
    "read_new",
    "heads",
    "head_of",
    "head_seqs",
    "translated",
    
    "transient",
]


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn SQLAlchemy errors into :class:`JournalUnavailable` (one line, no traceback on the CLI)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise JournalUnavailable(f"{what}: {db_reason(exc)}") from exc




def transient(exc: Exception) -> bool:
    """Worth retrying: connection, lock and chain-race errors; not a value the store refuses."""
    if isinstance(exc, WriterError):
        return exc.transient
    return isinstance(exc, DBAPIError) and not isinstance(exc, DataError)


@dataclass(frozen=True)
class LogTables:
    """The log table and its chain-head table, on their own MetaData."""

    metadata: MetaData
    log: Table
    head: Table


def log_tables(name: str = "exchange_log") -> LogTables:
    """Define the tables under ``name`` (tests and side-by-side stores use other names)."""
    metadata = MetaData()
    ident = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER keys
    log_table = Table(
        name, metadata,
        Column("id", ident, primary_key=True, autoincrement=True),
        Column("node", String(128), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("ts", DateTime, nullable=False),  # naive UTC: same on both databases
        Column("ntp_offset", Double, nullable=False),
        Column("ntp_synced", Boolean, nullable=False),
        Column("message_id", Text),
        Column("kind", String(32), nullable=False),
        Column("direction", String(16), nullable=False),
        Column("from_ap", Text),
        Column("to_ap", Text),
        Column("endpoint", Text),
        Column("status", String(8), nullable=False),
        Column("bytes_in", BigInteger, nullable=False),
        Column("bytes_out", BigInteger, nullable=False),
        Column("duration_ms", Double, nullable=False),
        Column("sha256", String(64)),
        Column("client", Text),
        Column("http_status", Integer),
        Column("fault_code", Text),
        Column("charset_substitutions", Text),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
        UniqueConstraint("node", "seq", name=f"uq_{name}_node_seq"),
        Index(f"ix_{name}_ts", "ts"),
        Index(f"ix_{name}_message_id", "message_id"),
    )
    head = Table(
        f"{name}_head", metadata,
        Column("node", String(128), primary_key=True),
        Column("seq", BigInteger, nullable=False),
        Column("hash", String(64), nullable=False),
        Column("archived_seq", BigInteger, nullable=False),
        Column("archived_hash", String(64), nullable=False),
        Column("archive", Text),
        Column("updated", DateTime, nullable=False),
    )
    return LogTables(metadata, log_table, head)


TABLES = log_tables()


@dataclass(frozen=True, kw_only=True)
class Head:
    """Where a chain stands: its last record, and the last record moved to an archive file."""

    node: str
    seq: int
    hash: str
    archived_seq: int = 0
    archived_hash: str = GENESIS
    archive: str | None = None
    """File name (in the archive directory) of the newest archive holding this chain."""


def ensure_schema(engine: Engine, tables: LogTables = TABLES) -> None:
    """Create the tables if missing (safe when another node does it at the same moment)."""
    with translated("cannot create the send/receive log tables"):
        create_tables(engine, tables.metadata)
        _add_columns(engine, tables.log)


#: Columns added to the log table after stores were created with it: (name, SQL type).
_ADDED = (("charset_substitutions", "TEXT"),)


#: (database URL, table) of stores known to have every column: read-only commands on an older store
#: (which they must not change) select the columns it has.
_COMPLETE: set[tuple[str, str]] = set()


def _select(engine: Engine, table: Table) -> Any:
    """``SELECT`` of the log table's columns that the store has."""
    key = (str(engine.url), table.name)
    if key in _COMPLETE:
        return select(table)
    try:
        present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    except SQLAlchemyError:
        return select(table)  # no table yet: the callers find that out themselves
    if all(column.name in present for column in table.c):
        _COMPLETE.add(key)
        return select(table)
    return select(*[column for column in table.c if column.name in present])


def _add_columns(engine: Engine, table: Table) -> None:
    """Add the columns a store made by an older version lacks (another node may be doing the same)."""
    for name, kind in _ADDED:
        if name in {c["name"] for c in inspect(engine).get_columns(table.name)}:
            continue
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN {name} {kind}')
        except SQLAlchemyError:
            if name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                raise


def has_log(connection: Connection, tables: LogTables = TABLES) -> bool:
    return inspect(connection).has_table(tables.log.name)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def to_row(record: LogRecord) -> dict[str, Any]:
    """Column values of a record."""
    row = dict(zip(COLUMNS, column_values(record), strict=True))
    row["ts"] = record.ts.replace(tzinfo=None)
    return row


def from_row(row: Row[Any]) -> LogRecord:
    """A record from a row of the log table (a column an older store lacks reads as None)."""
    values = {name: getattr(row, name, None) for name in COLUMNS}
    values["ts"] = row.ts.replace(tzinfo=UTC)
    return stored(values)


def append(connection: Connection, entries: Sequence[LogRecord], *, node: str,
           tables: LogTables = TABLES, key: bytes | None = None) -> list[LogRecord]:
    """Chain ``entries`` onto ``node``'s chain inside the caller's transaction (keyed links with
    ``key``); returns them sealed."""
    check_text("node", node)
    driver = _DriverHead.of(connection, tables.head)
    seq, prev = _lock_head(connection, tables, node) if driver is None else driver.lock(connection, tables.head, node)
    sealed: list[LogRecord] = []
    for entry in entries:
        seq += 1
        record = seal(entry, node=node, seq=seq, prev_hash=prev, key=key)
        prev = record.hash
        sealed.append(record)
    if sealed:
        _insert(connection, tables.log, sealed)
        if driver is None:
            connection.execute(update(tables.head).where(tables.head.c.node == node)
                               .values(seq=seq, hash=prev, updated=_utcnow()))
        else:
            driver.move(connection, node, seq, prev)
    return sealed


class _DriverHead:
    """The chain head's lock, read and move as two driver statements per batch.

    Building and compiling SQLAlchemy statements cost the writer about 0.8 ms per batch
    (bench/PROFILE.md), more than the commit itself; relayed exchanges come in batches of
    tens while every answer waits for its commit.  ``UPDATE … RETURNING`` takes the row lock
    (PostgreSQL) or the write lock (SQLite) and reads the head in one statement.
    """

    _cache: dict[tuple[str, str], _DriverHead] = {}

    def __init__(self, dialect: str, table: str, quote: Any) -> None:
        mark = "?" if dialect == "sqlite" else "%s"
        name = quote(table)
        self.sqlite = dialect == "sqlite"
        self.lock_sql = f"UPDATE {name} SET seq = seq WHERE node = {mark} RETURNING seq, hash"
        self.move_sql = f"UPDATE {name} SET seq = {mark}, hash = {mark}, updated = {mark} WHERE node = {mark}"

    @classmethod
    def of(cls, connection: Connection, head: Table) -> _DriverHead | None:
        """The statements for this connection's dialect, or None where SQLAlchemy must build them."""
        dialect = connection.dialect.name
        if dialect not in DRIVERS or (dialect == "sqlite" and sqlite3.sqlite_version_info < (3, 35)):
            return None  # RETURNING came with SQLite 3.35
        found = cls._cache.get((dialect, head.name))
        if found is None:
            found = cls._cache[(dialect, head.name)] = cls(dialect, head.name,
                                                           connection.dialect.identifier_preparer.quote)
        return found

    def lock(self, connection: Connection, head: Table, node: str) -> tuple[int, str]:
        row = self._run(connection, self.lock_sql, (node,))
        if row is None:  # a new chain (or a head row someone deleted: verify reports that)
            _create_head(connection, head, node)
            row = self._run(connection, self.lock_sql, (node,))
            assert row is not None
        return int(row[0]), str(row[1])

    def move(self, connection: Connection, node: str, seq: int, last: str) -> None:
        now = _utcnow()
        self._run(connection, self.move_sql, (seq, last, sqlite_datetime(now) if self.sqlite else now, node))

    @staticmethod
    def _run(connection: Connection, sql: str, params: tuple[Any, ...]) -> Any:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        driver = connection.dialect.loaded_dbapi
        cursor: Any = raw.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description is not None else None
        except driver.Error as exc:
            raise DBAPIError.instance(sql, params, exc, driver.Error) from exc
        finally:
            cursor.close()


def _insert(connection: Connection, table: Table, records: list[LogRecord]) -> None:
    """Insert sealed records through the driver (:func:`gateway.store.insert_rows`): ``ts`` as the
    naive UTC SQLAlchemy stores, in SQLite's DATETIME storage format there."""
    if connection.dialect.name == "sqlite":
        rows = [(sqlite_datetime(r.ts.replace(tzinfo=None)), *column_values(r)[1:]) for r in records]
    else:
        rows = [(r.ts.replace(tzinfo=None), *column_values(r)[1:]) for r in records]
    insert_rows(connection, table, COLUMNS, rows)


assert COLUMNS[0] == "ts", "_insert converts the first packed value"


def _lock_head(connection: Connection, tables: LogTables, node: str) -> tuple[int, str]:
    head = tables.head
    _create_head(connection, head, node)
    # A no-op write takes the row lock (PostgreSQL) or the write lock (SQLite) before we read,
    # so two writers of one chain queue up instead of both extending the same head.
    connection.execute(update(head).where(head.c.node == node).values(seq=head.c.seq))
    row = connection.execute(select(head.c.seq, head.c.hash).where(head.c.node == node)).one()
    return int(row.seq), str(row.hash)


def _create_head(connection: Connection, head: Table, node: str) -> None:
    values = dict(node=node, seq=0, hash=GENESIS, archived_seq=0, archived_hash=GENESIS, updated=_utcnow())
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(pg_insert(head).values(**values).on_conflict_do_nothing(index_elements=["node"]))
    elif dialect == "sqlite":
        connection.execute(sqlite_insert(head).values(**values).on_conflict_do_nothing(index_elements=["node"]))
    elif connection.execute(select(head.c.node).where(head.c.node == node)).first() is None:
        connection.execute(insert(head).values(**values))


@dataclass(frozen=True, kw_only=True)
class LogFilter:
    """Which records ``bmrgw logs`` shows; all conditions must hold."""

    since: datetime | None = None
    until: datetime | None = None
    ap: str | None = None
    """Business-AP name as sender or destination."""
    message_id: str | None = None
    status: str | None = None
    kind: str | None = None
    node: str | None = None

    def where(self, table: Table) -> list[ColumnElement[bool]]:
        c = table.c
        found: list[ColumnElement[bool]] = []
        if self.since is not None:
            found.append(c.ts >= _naive_utc(self.since))
        if self.until is not None:
            found.append(c.ts < _naive_utc(self.until))
        if self.ap is not None:
            found.append(or_(c.from_ap == self.ap, c.to_ap == self.ap))
        for name in ("message_id", "status", "kind", "node"):
            value = getattr(self, name)
            if value is not None:
                found.append(c[name] == value)
        return found


    def matches(self, record: LogRecord) -> bool:
        """Whether ``record`` passes every condition (for records read from archive files)."""
        if self.since is not None and record.ts < _aware_utc(self.since):
            return False
        if self.until is not None and record.ts >= _aware_utc(self.until):
            return False
        if self.ap is not None and self.ap not in (record.from_ap, record.to_ap):
            return False
        return all(getattr(self, name) in (None, getattr(record, name))
                   for name in ("message_id", "status", "kind", "node"))


def _aware_utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def read(engine: Engine, filters: LogFilter = LogFilter(), *, tables: LogTables = TABLES,
         limit: int | None = None) -> Iterator[LogRecord]:
    """Matching records by time (the newest ``limit`` if given), streamed."""
    t = tables.log
    stmt = _select(engine, t).where(*filters.where(t))
    if limit is not None:
        newest = stmt.order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit).subquery()
        stmt = select(newest).order_by(newest.c.ts, newest.c.node, newest.c.seq)
    else:
        stmt = stmt.order_by(t.c.ts, t.c.node, t.c.seq)
    with translated("cannot read the send/receive log"), engine.connect() as connection:
        if not has_log(connection, tables):
            return
        for row in connection.execute(stmt.execution_options(yield_per=1000)):
            yield from_row(row)


def read_chain(connection: Connection, node: str, *, tables: LogTables = TABLES,
               after: int = 0, upto: int | None = None) -> Iterator[LogRecord]:
    """One chain's records in seq order (``after`` < seq <= ``upto``), streamed."""
    t = tables.log
    stmt = _select(connection.engine, t).where(t.c.node == node, t.c.seq > after)
    if upto is not None:
        stmt = stmt.where(t.c.seq <= upto)
    for row in connection.execute(stmt.order_by(t.c.seq, t.c.id).execution_options(yield_per=1000)):
        yield from_row(row)


def head_of(engine: Engine, node: str, tables: LogTables = TABLES) -> tuple[int, str] | None:
    """``node``'s chain head (seq, hash), or None when it has none yet."""
    with translated("cannot read the send/receive log"), engine.connect() as connection:
        row = connection.execute(select(tables.head.c.seq, tables.head.c.hash)
                                 .where(tables.head.c.node == node)).first()
    return None if row is None else (int(row.seq), str(row.hash))


def heads(connection: Connection, tables: LogTables = TABLES) -> dict[str, Head]:
    """Every chain's head row, by node."""
    rows = connection.execute(select(tables.head)).all()
    return {r.node: Head(node=r.node, seq=r.seq, hash=r.hash, archived_seq=r.archived_seq,
                         archived_hash=r.archived_hash, archive=r.archive) for r in rows}


def head_seqs(engine: Engine, tables: LogTables = TABLES) -> dict[str, int]:
    """Each chain's last seq: the starting point for :func:`read_new`."""
    with translated("cannot read the send/receive log"), engine.connect() as connection:
        if not has_log(connection, tables):
            return {}
        return {node: h.seq for node, h in heads(connection, tables).items()}


def read_new(engine: Engine, after: Mapping[str, int], filters: LogFilter = LogFilter(), *,
             tables: LogTables = TABLES) -> tuple[list[LogRecord], dict[str, int]]:
    """Records committed since ``after`` (node → last seq seen), and the new positions.

    Per-chain seqs are assigned under the head lock, so they grow in commit
    order; reading up to each head's seq therefore never skips a record that
    commits later with a smaller number (auto-increment ids could).
    """
    found: list[LogRecord] = []
    positions = dict(after)
    with translated("cannot read the send/receive log"), engine.connect() as connection:
        if not has_log(connection, tables):
            return found, positions
        for node, head in heads(connection, tables).items():
            last = positions.get(node, 0)
            if head.seq > last:
                found.extend(_matching(connection, tables, filters, node, last, head.seq))
                positions[node] = head.seq
    found.sort(key=lambda r: (r.ts, r.node, r.seq))
    return found, positions


def _matching(connection: Connection, tables: LogTables, filters: LogFilter, node: str,
              after: int, upto: int) -> list[LogRecord]:
    t = tables.log
    stmt = _select(connection.engine, t).where(t.c.node == node, t.c.seq > after, t.c.seq <= upto,
                                               *filters.where(t))
    return [from_row(row) for row in connection.execute(stmt.order_by(t.c.seq))]
