"""Writing a staged batch at driver speed: ``COPY`` on PostgreSQL, plain ``executemany`` on SQLite.

Staging is the one place where a push writes each record individually, so it
bypasses SQLAlchemy's per-value bind processing (which costs as much as the
database itself for 5,000-row batches) and hands the driver ready values in
the caller's transaction.  The values are exactly what SQLAlchemy would have
bound, so rows read back through SQLAlchemy Core look the same:

- PostgreSQL: psycopg adapts ``date``, ``datetime``, ``Decimal`` and ``bool``
  itself; the rows go through ``COPY … FROM STDIN``.
- SQLite: dates and times as SQLAlchemy's storage strings, decimals as text
  (the ``NUMERIC`` column converts them), booleans as 0/1.

Any other dialect gets SQLAlchemy's ``executemany``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Table, insert
from sqlalchemy.exc import DBAPIError

from .config import ColumnType, Dataset

__all__ = ["bulk_insert", "DriverIntegrityError"]


class DriverIntegrityError(Exception):
    """A key already staged, raised by the driver (translated from its own exception type)."""


def _sqlite_datetime(value: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format, so comparisons and reads agree.
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_date(value: date) -> str:
    return value.isoformat()


_SQLITE: dict[ColumnType, Callable[[Any], Any]] = {
    ColumnType.DATE: _sqlite_date, ColumnType.DATETIME: _sqlite_datetime,
    ColumnType.DECIMAL: str, ColumnType.BOOLEAN: int,
}


def bulk_insert(connection: Connection, table: Table, dataset: Dataset, rows: Sequence[dict[str, Any]],
                fixed: dict[str, Any]) -> None:
    """Insert ``rows`` (declared columns) plus the ``fixed`` columns into ``table``."""
    dialect = connection.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        connection.execute(insert(table), [{**fixed, **row} for row in rows])
        return
    names = [*fixed, *(c.name for c in dataset.columns)]
    quote = connection.dialect.identifier_preparer.quote
    columns = ", ".join(quote(n) for n in names)
    raw = connection.connection.dbapi_connection
    assert raw is not None
    driver = connection.dialect.loaded_dbapi
    if dialect == "postgresql":
        sql = f"COPY {quote(table.name)} ({columns}) FROM STDIN"
    else:
        sql = f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({', '.join('?' * len(names))})"
    cursor = raw.cursor()
    try:
        (_copy if dialect == "postgresql" else _executemany)(cursor, sql, dataset, rows, fixed)
    except driver.IntegrityError as exc:
        raise DriverIntegrityError(str(exc)) from exc
    except driver.Error as exc:  # as SQLAlchemy would have raised it: callers retry locks, translate the rest
        raise DBAPIError.instance(sql, None, exc, driver.Error) from exc
    finally:
        cursor.close()


def _copy(cursor: Any, sql: str, dataset: Dataset, rows: Sequence[dict[str, Any]], fixed: dict[str, Any]) -> None:
    names = [c.name for c in dataset.columns]
    head = tuple(fixed.values())
    with cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(head + tuple(row[n] for n in names))


def _executemany(cursor: Any, sql: str, dataset: Dataset, rows: Sequence[dict[str, Any]],
                 fixed: dict[str, Any]) -> None:
    head = tuple(fixed.values())
    adapters = [(c.name, _SQLITE.get(c.type)) for c in dataset.columns]

    def values(row: dict[str, Any]) -> tuple[Any, ...]:
        return head + tuple(row[n] if a is None or row[n] is None else a(row[n]) for n, a in adapters)

    cursor.executemany(sql, map(values, rows))
