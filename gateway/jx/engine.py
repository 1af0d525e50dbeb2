"""The JX store's database engines: SQLite pragmas and write locks, relaxed commits, error translation.

SQLAlchemy and file-system errors become :class:`~gateway.errors.DocumentStoreError`
here (:func:`translated`), once for the whole JX package.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    event,
)
from sqlalchemy.exc import SQLAlchemyError

from gateway.store import db_reason

from ..errors import DocumentStoreError

__all__ = ["INLINE_BYTES", "WriteTurns", "blobs_in_database", "inline_bytes", "translated", "prepare_engine", "relaxed"]

#: ``gateway.jx.blobs: auto`` on SQLite: documents up to this size go to ``jx_blob`` rows, in the
#: transaction of their row (one WAL flush), not to files (a file fsync and a folder fsync more).
INLINE_BYTES = 64 * 1024


def blobs_in_database(setting: str, dialect: str) -> bool:
    """Whether all document bytes go to ``jx_blob`` (``gateway.jx.blobs``; ``auto``: on PostgreSQL)."""
    return setting == "database" or (setting == "auto" and dialect == "postgresql")


def inline_bytes(setting: str, dialect: str) -> int:
    """Documents of up to this many bytes go to ``jx_blob``, larger ones to files (``-1``: none;
    ``auto`` on SQLite: :data:`INLINE_BYTES`)."""
    if blobs_in_database(setting, dialect):
        return sys.maxsize
    return INLINE_BYTES if setting == "auto" else -1


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """SQLAlchemy and file-system errors become :class:`DocumentStoreError` (one line)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise DocumentStoreError(f"{what}: {db_reason(exc)}") from exc
    except OSError as exc:
        raise DocumentStoreError(f"{what}: {exc.strerror or exc}") from exc


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def connect(dbapi_connection: Any, _record: Any) -> None:
        # FULL: fsync at each commit, not at checkpoints. And let SQLAlchemy's
        # BEGIN below be the only transaction control.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()
        dbapi_connection.isolation_level = None
    return connect


def _sqlite_begin_immediate(connection: Connection) -> None:
    # Take the write lock up front: a lease reads then writes, and a deferred
    # transaction could not upgrade its stale read snapshot under concurrency.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _pg_relaxed(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("SET synchronous_commit TO OFF")
    cursor.close()
    dbapi_connection.commit()


def prepare_engine(engine: Engine, *, durable: bool, relaxed: bool = False) -> Engine:
    """Set up an engine of the JX store (SQLite: BEGIN IMMEDIATE; FULL sync when ``durable``).

    ``relaxed``: on PostgreSQL every transaction of the engine commits without waiting for the
    disk (``synchronous_commit off`` for its sessions), as :func:`relaxed` does for one — without
    that statement's round trip in each hand-out and confirm."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas("FULL" if durable else "NORMAL"))
        event.listen(engine, "begin", _sqlite_begin_immediate)
    elif relaxed and engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _pg_relaxed)
    return engine


def relaxed(c: Connection) -> None:
    """This transaction need not wait for the disk (see the module docstring)."""
    if c.dialect.name == "postgresql":
        c.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


class WriteTurns:
    """On SQLite, this process's write transactions of the JX store one at a time, in a queue.

    SQLite has one write lock per database; a connection that finds it taken sleeps in its busy
    handler (1, 2, 5, 10 … 100 ms) and tries again, so under load threads of one process waited
    tens of milliseconds for a lock freed long before (bench/PROFILE.md, JX part).  Threads queue
    here instead and each gets the lock as the one before lets go; other processes (the log
    writer, a second gateway, ``bmrgw`` commands) still meet in SQLite's busy handler.
    Elsewhere (PostgreSQL: row locks) this does nothing.
    """

    def __init__(self, engine: Engine, *, timeout: float = 10.0) -> None:
        self._lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self._timeout = timeout

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self._lock is None:
            yield
            return
        if not self._lock.acquire(timeout=self._timeout):
            raise DocumentStoreError(f"the JX store is busy: no write turn in {self._timeout:g} s")
        try:
            yield
        finally:
            self._lock.release()
