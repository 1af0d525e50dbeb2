"""Writing a staged batch at driver speed (:func:`gateway.store.insert_rows`).

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

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table

from gateway.store import insert_rows

from .config import Dataset

__all__ = ["bulk_insert", "DriverIntegrityError"]


class DriverIntegrityError(Exception):
    """A key already staged (:meth:`refdb.store.RefStore.stage` turns the store's IntegrityError into this)."""


def bulk_insert(connection: Connection, table: Table, dataset: Dataset, rows: Sequence[tuple[Any, ...]],
                fixed: dict[str, Any]) -> None:
    """Insert ``rows`` (the dataset's columns in order, values for this connection's driver) plus
    the ``fixed`` columns into ``table``; a repeated key raises SQLAlchemy's ``IntegrityError``."""
    head = tuple(fixed.values())
    insert_rows(connection, table, [*fixed, *(c.name for c in dataset.columns)],
                map(head.__add__, rows))  # C-level: no Python call per row
