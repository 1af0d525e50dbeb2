"""Writing a staged batch at driver speed: ``COPY`` on PostgreSQL, plain ``executemany`` on SQLite.

Staging is the one place where a push writes each record individually, so it
bypasses SQLAlchemy's per-value bind processing (which costs as much as the
database itself for 5,000-row batches) and hands the driver the rows as
:class:`refdb.values.Converter` made them for that driver — values exactly as
SQLAlchemy would have bound them, so rows read back through SQLAlchemy Core
look the same — in the caller's transaction, without touching a value again:
``COPY … FROM STDIN`` on PostgreSQL, ``executemany`` on SQLite.

Any other dialect gets SQLAlchemy's ``executemany`` of the typed values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.exc import DBAPIError

from .config import Dataset

__all__ = ["bulk_insert", "DriverIntegrityError", "DRIVERS"]

#: The dialects whose drivers get the rows directly.
DRIVERS = ("postgresql", "sqlite")


class DriverIntegrityError(Exception):
    """A key already staged, raised by the driver (translated from its own exception type)."""


def bulk_insert(connection: Connection, table: Table, dataset: Dataset, rows: Sequence[tuple[Any, ...]],
                fixed: dict[str, Any]) -> None:
    """Insert ``rows`` (the dataset's columns in order, values for this connection's driver) plus
    the ``fixed`` columns into ``table``."""
    dialect = connection.dialect.name
    declared = [c.name for c in dataset.columns]
    if dialect not in DRIVERS:
        connection.execute(insert(table), [{**fixed, **dict(zip(declared, row))} for row in rows])
        return
    names = [*fixed, *declared]
    quote = connection.dialect.identifier_preparer.quote
    columns = ", ".join(quote(n) for n in names)
    raw = connection.connection.dbapi_connection
    assert raw is not None
    driver = connection.dialect.loaded_dbapi
    if dialect == "postgresql":
        sql = f"COPY {quote(table.name)} ({columns}) FROM STDIN"
    else:
        sql = f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({', '.join('?' * len(names))})"
    head = tuple(fixed.values())
    complete = map(head.__add__, rows)  # C-level: no Python call per row
    cursor: Any = raw.cursor()  # the driver's own cursor: sqlite3 and psycopg take any iterable of rows
    try:
        if dialect == "postgresql":
            _copy(cursor, sql, complete)
        else:
            cursor.executemany(sql, complete)
    except driver.IntegrityError as exc:
        raise DriverIntegrityError(str(exc)) from exc
    except driver.Error as exc:  # as SQLAlchemy would have raised it: callers retry locks, translate the rest
        raise DBAPIError.instance(sql, None, exc, driver.Error) from exc
    finally:
        cursor.close()


def _copy(cursor: Any, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
    with cursor.copy(sql) as copy:
        write = copy.write_row
        for row in rows:
            write(row)
