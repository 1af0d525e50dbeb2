"""Tables of the reference DB, created or migrated from the dataset declarations at start.

Per dataset ``D`` (SQLAlchemy 2 Core, the same on SQLite and PostgreSQL):

``refdb__D__rows``
    one row per key: the declared columns, ``_version`` (the dataset version
    that last inserted, changed or deleted it) and ``_deleted`` (a tombstone,
    so that :func:`refdb.store.changes` can report deletions).
``refdb__D__stage``
    records of pushes still being uploaded, by push id; invisible to readers.
``refdb_D`` (a view)
    the live rows, declared columns only: the read-only SQL interface for DC
    applications with database access.

Shared: ``refdb__datasets`` (current version and the applied declaration of
each dataset) and ``refdb__pushes`` (open pushes).

Migration compares the declaration with the one applied last time: new
columns are added (NULL in existing rows) and the view is recreated; a
removed column, a changed type or a changed key is refused with a
:class:`~gateway.errors.ConfigError` that says what changed, because bmrgw
never drops or rewrites data on its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Date,
    DateTime,
    Engine,
    Index,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    insert,
    not_,
    select,
    text,
    update,
)
from sqlalchemy import Column as SqlColumn
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.types import TypeEngine

from gateway.errors import ConfigError, RefdbUnavailable
from gateway.store import create_tables, db_reason, lock_schema

from .config import Column, ColumnType, Dataset, RefdbSettings
from .grants import sync_grants

__all__ = ["DatasetTables", "META", "DATASETS", "PUSHES", "tables_for", "ensure_schema", "translated", "utcnow"]

META = MetaData()
DATASETS = Table(
    "refdb__datasets", META,
    SqlColumn("name", String(64), primary_key=True),
    SqlColumn("version", BigInteger, nullable=False),
    SqlColumn("columns", Text, nullable=False),  # JSON [[name, declared type], ...] in table order
    SqlColumn("key", Text, nullable=False),  # JSON [name, ...]
    SqlColumn("updated", DateTime, nullable=False),
)
PUSHES = Table(
    "refdb__pushes", META,
    SqlColumn("id", String(64), primary_key=True),
    SqlColumn("dataset", String(64), nullable=False),
    SqlColumn("mode", String(8), nullable=False),
    SqlColumn("client", Text),
    SqlColumn("state", String(8), nullable=False),  # open | failed
    SqlColumn("received", BigInteger, nullable=False),
    SqlColumn("bytes", BigInteger, nullable=False),
    SqlColumn("digest", String(64), nullable=False),
    SqlColumn("created", DateTime, nullable=False),
    SqlColumn("touched", DateTime, nullable=False),
)

VERSION = "_version"
DELETED = "_deleted"
PUSH = "_push"


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """SQLAlchemy errors become :class:`RefdbUnavailable` with the driver's first line."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise RefdbUnavailable(f"{what}: {db_reason(exc)}") from exc


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def sql_type(column: Column) -> TypeEngine[Any]:
    """The SQL type of a declared column (decimals keep their scale on both databases)."""
    types: dict[ColumnType, TypeEngine[Any]] = {
        ColumnType.STRING: Text(), ColumnType.INTEGER: BigInteger(), ColumnType.DATE: Date(),
        ColumnType.DATETIME: DateTime(), ColumnType.BOOLEAN: Boolean(),
    }
    if column.type is ColumnType.DECIMAL:
        return Numeric(column.precision, column.scale)
    return types[column.type]


@dataclass(frozen=True)
class DatasetTables:
    """The live-rows and staging tables of one dataset, on their own MetaData."""

    dataset: Dataset
    rows: Table
    stage: Table


def tables_for(dataset: Dataset, order: list[str] | None = None) -> DatasetTables:
    """Tables of ``dataset``; ``order`` is the stored column order (new columns come last)."""
    metadata = MetaData()
    names = _ordered(dataset, order)
    columns = {c.name: c for c in dataset.columns}
    keys = set(dataset.key)

    def declared() -> list[SqlColumn[Any]]:
        return [SqlColumn(n, sql_type(columns[n]), primary_key=n in keys, nullable=n not in keys,
                          autoincrement=False) for n in names]

    prefix = f"refdb__{dataset.name}"
    rows = Table(f"{prefix}__rows", metadata, *declared(),
                 SqlColumn(VERSION, BigInteger, nullable=False),
                 SqlColumn(DELETED, Boolean, nullable=False),
                 Index(f"ix_{prefix}__version", VERSION))
    stage = Table(f"{prefix}__stage", metadata, SqlColumn(PUSH, String(64), primary_key=True), *declared())
    return DatasetTables(dataset, rows, stage)


def _ordered(dataset: Dataset, order: list[str] | None) -> list[str]:
    declared = [c.name for c in dataset.columns]
    if not order:
        return declared
    return [n for n in order if n in declared] + [n for n in declared if n not in order]


def ensure_schema(engine: Engine, settings: RefdbSettings) -> dict[str, DatasetTables]:
    """Create or migrate every declared dataset and give its view its sql_readers; returns the tables by name."""
    with translated("cannot create the reference DB tables"):
        create_tables(engine, META)
        found: dict[str, DatasetTables] = {}
        for dataset in settings.datasets.values():
            found[dataset.name] = _declare(engine, dataset)
        with engine.begin() as connection:
            sync_grants(connection, settings, connection.execute(select(DATASETS.c.name)).scalars())
        return found


def _declare(engine: Engine, dataset: Dataset) -> DatasetTables:
    """:func:`_ensure_dataset`, again when another node or worker declared the dataset at the same moment.

    On PostgreSQL the schema lock makes the second wait and find the stored row (an IntegrityError is
    left only for a row inserted between). SQLite has no such lock: two workers starting on a new
    database both find the dataset missing and one fails creating its tables ("already exists");
    on the next pass it finds what the other stored.
    """
    for attempt in range(_DECLARE_TRIES):
        try:
            return _ensure_dataset(engine, dataset)
        except IntegrityError:  # another node declared it first: migrate against what it stored
            continue
        except OperationalError as exc:
            if engine.dialect.name != "sqlite" or "already exists" not in str(exc) or attempt == _DECLARE_TRIES - 1:
                raise
    return _ensure_dataset(engine, dataset)


#: Passes of :func:`_declare` before a failure is taken as real.
_DECLARE_TRIES = 3


def _ensure_dataset(engine: Engine, dataset: Dataset) -> DatasetTables:
    with engine.begin() as connection:
        lock_schema(connection)  # a node declaring the same dataset now waits, then migrates what this one stored
        stored = connection.execute(
            select(DATASETS).where(DATASETS.c.name == dataset.name).with_for_update()).first()
        if stored is None:
            tables = tables_for(dataset)
            tables.rows.metadata.create_all(connection)
            _record(connection, tables, new=True)
        else:
            order = [name for name, _ in json.loads(stored.columns)]
            tables = tables_for(dataset, order)
            added = _check_evolution(dataset, json.loads(stored.columns), json.loads(stored.key))
            tables.rows.metadata.create_all(connection)  # a stage table lost by hand comes back
            for column in added:
                _add_column(connection, tables.rows, column)
                _add_column(connection, tables.stage, column)
            if added:
                _record(connection, tables, new=False)
        _create_view(connection, tables, replace=stored is not None)
    return tables


def _check_evolution(dataset: Dataset, stored_columns: list[list[str]], stored_key: list[str]) -> list[Column]:
    """The columns to add; refuses destructive changes with a message naming them."""
    where = f"refdb.datasets.{dataset.name}"
    how = ("bmrgw adds columns but never drops or retypes stored data: declare a new dataset, "
           "or migrate the tables by hand (README, 'Reference DB')")
    if list(dataset.key) != stored_key:
        raise ConfigError(f"{where}.key: changed from {stored_key} to {list(dataset.key)}; {how}")
    was = dict((name, declared) for name, declared in stored_columns)
    for name, declared in was.items():
        column = dataset.column(name)
        if column is None:
            raise ConfigError(f"{where}.columns: column {name!r} ({declared}) was removed; {how}")
        if column.declared != declared:
            raise ConfigError(f"{where}.columns.{name}: type changed from {declared} to {column.declared}; {how}")
    return [c for c in dataset.columns if c.name not in was]


def _add_column(connection: Connection, table: Table, column: Column) -> None:
    prep = connection.dialect.identifier_preparer
    kind = sql_type(column).compile(dialect=connection.dialect)
    connection.execute(text(f"ALTER TABLE {prep.quote(table.name)} ADD COLUMN {prep.quote(column.name)} {kind}"))


def _record(connection: Connection, tables: DatasetTables, *, new: bool) -> None:
    dataset = tables.dataset
    columns = [[c.name, dataset.column(c.name).declared] for c in tables.stage.columns  # type: ignore[union-attr]
               if c.name != PUSH]
    values = dict(columns=json.dumps(columns), key=json.dumps(list(dataset.key)), updated=utcnow())
    if new:
        connection.execute(insert(DATASETS).values(name=dataset.name, version=0, **values))
    else:
        connection.execute(update(DATASETS).where(DATASETS.c.name == dataset.name).values(**values))


def _create_view(connection: Connection, tables: DatasetTables, *, replace: bool) -> None:
    rows = tables.rows
    query = select(*(rows.c[c.name] for c in tables.stage.columns if c.name != PUSH)).where(not_(rows.c[DELETED]))
    body = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    name = connection.dialect.identifier_preparer.quote(tables.dataset.view)
    if connection.dialect.name == "postgresql":
        # CREATE OR REPLACE keeps the grants of the sql_readers; new columns may only come last.
        connection.execute(text(f"CREATE OR REPLACE VIEW {name} AS {body}"))
        return
    if replace:
        connection.execute(text(f"DROP VIEW IF EXISTS {name}"))
    connection.execute(text(f"CREATE VIEW IF NOT EXISTS {name} AS {body}"))
