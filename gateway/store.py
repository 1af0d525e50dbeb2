"""The gateway's database: one SQLAlchemy engine from ``gateway.db``.

SQLite (WAL mode, under ``var/``) is the embedded default; PostgreSQL is the
production and multi-node store, reached by the same SQLAlchemy 2 code.
``postgresql://`` URLs use the psycopg 3 driver.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, event, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from gateway.errors import StoreUnavailable
from routing.config import Config

from .durable import private_dir, private_file
from .errors import ConfigError

__all__ = ["Store", "database_url", "existing_url", "insert_rows", "snapshot", "sqlite_datetime", "DRIVERS",
           "create_tables", "lock_schema", "db_reason", "private_sqlite"]

#: The dialects whose drivers :func:`insert_rows` hands rows to directly.
DRIVERS = ("postgresql", "sqlite")
#: Passes of :func:`create_tables` (more than one only where no schema lock exists: SQLite).
_CREATE_TRIES = 3


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements all read one snapshot of the database, while writers go on:
    PostgreSQL ``REPEATABLE READ``; on SQLite one read transaction, which WAL keeps apart from the writer."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                yield connection
            return
        connection.exec_driver_sql("BEGIN")  # pysqlite would not open a read transaction by itself
        try:
            yield connection
        finally:
            connection.rollback()


def lock_schema(connection: Connection) -> None:
    """Hold off other nodes' schema changes in this database schema until ``connection``'s transaction ends.

    ``checkfirst`` cannot make creation safe: two PostgreSQL nodes that both
    find a table missing both create it, and one fails on the catalog's
    unique index of row types (``pg_type_typname_nsp_index``).  A
    transaction-level advisory lock keyed on the schema makes the second
    wait, then find the tables.  SQLite needs none (see :func:`create_tables`).
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('bmrgw schema ' || current_schema()))"))


def create_tables(engine: Engine, metadata: MetaData) -> None:
    """Create ``metadata``'s missing tables; safe when other nodes create the same ones at the same moment."""
    for attempt in range(_CREATE_TRIES):
        try:
            with engine.begin() as connection:
                lock_schema(connection)
                metadata.create_all(connection)
            return
        except SQLAlchemyError:
            # SQLite runs each CREATE on its own: a process that lost the race finds the table on the next pass.
            if attempt == _CREATE_TRIES - 1 or engine.dialect.name == "postgresql":
                raise


def database_url(config: Config) -> str:
    """``gateway.db`` with relative SQLite paths made absolute and the psycopg driver chosen."""
    try:
        url = make_url(config.gateway.db)
    except ArgumentError as exc:
        raise ConfigError(f"gateway.db: {config.gateway.db!r} is not a database URL") from exc
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        # Any other dialect would fail later, importing a driver bmrgw never installs.
        raise ConfigError(f"the store URL {config.gateway.db!r} (--db, $BMRGW_DB_URL or gateway.db) names "
                          f"{url.get_backend_name()}; bmrgw stores in sqlite:///PATH or postgresql://USER@HOST/DB")
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = config.resolve_path(url.database)
        private_sqlite(path)
        url = url.set(database=str(path))
    return url.render_as_string(hide_password=False)


def existing_url(config: Config, *, read_only: bool = True) -> str:
    """``gateway.db`` for commands that must not create a store: a SQLite file must exist
    (:class:`StoreUnavailable` otherwise), and is opened read-only (``mode=ro``) when ``read_only``.

    :func:`database_url` creates the folder of a SQLite file, and SQLite creates a missing file
    on connect: a mistyped ``--db`` would come back as an empty, "clean" store.
    """
    try:
        url = make_url(config.gateway.db)
    except ArgumentError as exc:
        raise ConfigError(f"gateway.db: {config.gateway.db!r} is not a database URL") from exc
    if url.get_backend_name() != "sqlite":
        return database_url(config)
    if url.database in (None, "", ":memory:"):
        raise StoreUnavailable(f"{config.gateway.db} is an in-memory database: there is no store to read")
    path = config.resolve_path(url.database)
    if not path.is_file():
        raise StoreUnavailable(f"the store {path} does not exist (gateway.db or --db)")
    if read_only:
        url = url.set(database=f"file:{path}", query={**url.query, "mode": "ro", "uri": "true"})
    else:
        url = url.set(database=str(path))
    return url.render_as_string(hide_password=False)


def private_sqlite(path: Path) -> None:
    """Create a SQLite database file 0600 in a 0700 folder before SQLite does (with the umask's mode);
    SQLite gives its ``-wal`` and ``-shm`` files the mode of the database file."""
    private_dir(path.parent)
    private_file(path)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # WAL lets readers run beside the writer; NORMAL sync is durable at each WAL checkpoint.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:  # a read-only connection (mode=ro) of a store not in WAL mode yet
        pass
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Store:
    """The engine and its health check; tables belong to the features that use them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        database = self.engine.url.database
        if self.engine.dialect.name == "sqlite" and database not in (None, "", ":memory:") \
                and Path(database).parent.is_dir():  # a missing folder stays an error of the store's (no ping)
            private_file(Path(database))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs and /healthz."""
        return make_url(self.url).render_as_string(hide_password=True)

    def ping(self) -> None:
        """Run a trivial query; raises :class:`StoreUnavailable` with the reason."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(db_reason(exc)) from exc

    def close(self) -> None:
        self.engine.dispose()


def sqlite_datetime(value: datetime) -> str:
    """A naive datetime as SQLAlchemy stores it in a SQLite DATETIME column (for :func:`insert_rows`)."""
    return value.isoformat(" ", "microseconds")


def insert_rows(connection: Connection, table: Table, names: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (values of the columns ``names``, in order) in the caller's transaction.

    For the bulk writers (log records, refdb staging): SQLAlchemy's
    per-value bind processing costs as much as the database itself for big
    batches, so on :data:`DRIVERS` the rows go to the driver as they are —
    ``COPY … FROM STDIN`` on PostgreSQL, ``executemany`` on SQLite.  The
    caller makes each value exactly what SQLAlchemy would have bound for
    that driver (SQLite: dates and times as its storage strings, :func:`sqlite_datetime`), so rows
    read back through SQLAlchemy are the same.  Any other dialect gets
    SQLAlchemy's ``executemany`` of the values.  A driver error comes out as
    SQLAlchemy would have raised it (``IntegrityError``, ``OperationalError``, …).
    """
    dialect = connection.dialect.name
    if dialect not in DRIVERS:
        connection.execute(insert(table), [dict(zip(names, row)) for row in rows])
        return
    quote = connection.dialect.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in names)
    if dialect == "postgresql":
        sql = f"COPY {quote(table.name)} ({columns}) FROM STDIN"
    else:
        sql = f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({', '.join('?' * len(names))})"
    raw = connection.connection.dbapi_connection
    assert raw is not None
    driver = connection.dialect.loaded_dbapi
    cursor: Any = raw.cursor()  # the driver's own cursor: sqlite3 and psycopg take any iterable of rows
    try:
        if dialect == "postgresql":
            with cursor.copy(sql) as copy:
                write = copy.write_row
                for row in rows:
                    write(row)
        else:
            cursor.executemany(sql, rows)
    except driver.Error as exc:
        raise DBAPIError.instance(sql, None, exc, driver.Error) from exc
    finally:
        cursor.close()


def db_reason(exc: BaseException) -> str:
    """The first line of what the database driver said, without SQLAlchemy's SQL and parameters
    (one line: the CLI, ``/healthz`` and the log show it as is)."""
    inner = exc.orig if isinstance(exc, DBAPIError) else (exc.__cause__ or exc)
    text = str(inner).strip()
    return text.splitlines()[0] if text else type(exc).__name__
