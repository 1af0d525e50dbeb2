"""The ``refdb:`` section of endpoints.yaml → frozen dataset declarations (SPEC.md "endpoints.yaml").

::

    refdb:
      max_concurrent: 8                # requests worked on at once (one thread each)
      queue_timeout: 5                 # seconds a request waits for a turn, then GatewayBusy
      datasets:
        residents:
          owner: cityhall-a-app        # the client that pushes
          readers: [kaigo-app]         # clients that query
          sql_readers: [kaigo_reader]  # PostgreSQL roles that may SELECT the view refdb_residents
          key: [person_id]
          columns: {person_id: string, name: string, birth: date, fee: "decimal(12,2)"}

Column types: ``string``, ``integer``, ``decimal`` (``decimal(P,S)``, default
``decimal(15,2)``), ``date``, ``datetime``, ``boolean``.  Dataset and column
names become SQL identifiers (tables, the view ``refdb_<dataset>``), so they
are lower-case letters, digits and single underscores.  This module only
validates; :mod:`refdb.schema` turns declarations into tables.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.errors import ConfigError
from routing import fields as read

__all__ = ["ColumnType", "Column", "Dataset", "RefdbSettings", "parse_refdb"]

#: Dataset names: the view is ``refdb_<name>``, internal tables ``refdb__<name>__…``, so no ``__``.
DATASET_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
#: Column names: SQL identifiers that need no quoting; a leading ``_`` is reserved for bookkeeping.
COLUMN_NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_DATASET_NAME = 40
MAX_COLUMN_NAME = 60
#: PostgreSQL truncates identifiers beyond 63 bytes.
MAX_ROLE_NAME = 63
_DECIMAL = re.compile(r"decimal(?:\((\d+),\s*(\d+)\))?")
#: Beyond 15 significant digits SQLite's NUMERIC affinity would round through a double.
MAX_DECIMAL_PRECISION = 15


class ColumnType(enum.Enum):
    """The column types a dataset may declare."""

    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    DATE = "date"
    DATETIME = "datetime"
    BOOLEAN = "boolean"


@dataclass(frozen=True, kw_only=True)
class Column:
    name: str
    """Column name (a SQL identifier)."""
    type: ColumnType
    """Declared type; values are validated against it."""
    precision: int = 0
    """Total digits (decimal only)."""
    scale: int = 0
    """Digits after the point (decimal only)."""

    @property
    def declared(self) -> str:
        """The type as written in endpoints.yaml (and stored to detect changes)."""
        if self.type is ColumnType.DECIMAL:
            return f"decimal({self.precision},{self.scale})"
        return str(self.type.value)


@dataclass(frozen=True, kw_only=True)
class Dataset:
    name: str
    """Dataset name; the read-only SQL view is ``refdb_<name>``."""
    owner: str
    """The client that pushes (Upsert, Delete)."""
    readers: frozenset[str] = frozenset()
    """The clients that query (Query, Changes)."""
    key: tuple[str, ...]
    """Key columns, in order: they identify a record and order query results."""
    columns: tuple[Column, ...]
    """All columns in declaration order (keys included)."""
    sql_readers: frozenset[str] = frozenset()
    """PostgreSQL roles granted SELECT on this dataset's view, and on no other (created by the DBA)."""

    @property
    def view(self) -> str:
        return f"refdb_{self.name}"

    def column(self, name: str) -> Column | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None


@dataclass(frozen=True, kw_only=True)
class RefdbSettings:
    datasets: Mapping[str, Dataset] = field(default_factory=lambda: MappingProxyType({}))
    """Dataset name → declaration."""
    max_concurrent: int = 8
    """Requests ``/refdb`` works on at once, each in its own thread; the rest wait for a turn."""
    queue_timeout: float = 5.0
    """Seconds a request waits for a turn before it is answered ``GatewayBusy`` (503)."""


def parse_refdb(raw: Any, *, clients: frozenset[str] = frozenset()) -> RefdbSettings:
    """Validate the ``refdb`` section (absent or empty means no datasets).

    With ``clients`` (the names under ``clients:``), owners and readers must be among them.
    """

    m = read.mapping({} if raw is None else raw, "refdb")
    if "read_role" in m:
        raise ConfigError("refdb.read_role: a role granted SELECT on every dataset's view reads datasets its "
                          "client may not query; name the roles of each dataset in "
                          "refdb.datasets.NAME.sql_readers instead")
    read.known(m, "refdb", {"datasets", "max_concurrent", "queue_timeout"})
    datasets = {name: _dataset(name, value) for name, value in
                read.mapping(m.get("datasets") or {}, "refdb.datasets").items()}
    if clients:
        for dataset in datasets.values():
            _known_clients(dataset, clients)
    return RefdbSettings(
        datasets=MappingProxyType(datasets),
        max_concurrent=read.integer(m.get("max_concurrent", 8), "refdb.max_concurrent", low=1, high=1024),
        queue_timeout=read.number(m.get("queue_timeout", 5.0), "refdb.queue_timeout", low=0, high=read.MAX_TIMEOUT))


def _dataset(name: str, raw: Any) -> Dataset:

    path = f"refdb.datasets.{name}"
    if not DATASET_NAME.fullmatch(name) or len(name) > MAX_DATASET_NAME:
        raise ConfigError(f"{path}: {name!r} is not a valid dataset name (lower-case letters and digits "
                          f"in words joined by single '_', at most {MAX_DATASET_NAME})")
    m = read.mapping(raw, path)
    read.known(m, path, {"owner", "readers", "sql_readers", "key", "columns"})
    listed = read.mapping(m.get("columns"), f"{path}.columns")
    columns = tuple(_column(f"{path}.columns", n, t) for n, t in listed.items())
    if not columns:
        raise ConfigError(f"{path}.columns: declare at least one column")
    key = _names(m.get("key"), f"{path}.key")
    if not key:
        raise ConfigError(f"{path}.key: name at least one key column")
    declared = {c.name for c in columns}
    for k in key:
        if k not in declared:
            raise ConfigError(f"{path}.key: {k!r} is not one of the columns")
    readers = _names(m.get("readers", []), f"{path}.readers")
    return Dataset(name=name, owner=_text(m.get("owner"), f"{path}.owner"), readers=frozenset(readers),
                   key=key, columns=columns, sql_readers=_roles(m.get("sql_readers", []), f"{path}.sql_readers"))


def _roles(raw: Any, path: str) -> frozenset[str]:
    roles = _names(raw, path) if raw else ()
    for role in roles:
        if not COLUMN_NAME.fullmatch(role) or len(role) > MAX_ROLE_NAME:
            raise ConfigError(f"{path}: {role!r} must be a PostgreSQL role name "
                              f"(lower-case letters, digits, _; at most {MAX_ROLE_NAME})")
    return frozenset(roles)


def _known_clients(dataset: Dataset, clients: frozenset[str]) -> None:
    path = f"refdb.datasets.{dataset.name}"
    if dataset.owner not in clients:
        raise ConfigError(f"{path}.owner: no client named {dataset.owner!r} under clients")
    for reader in sorted(dataset.readers - clients):
        raise ConfigError(f"{path}.readers: no client named {reader!r} under clients")


def _column(path: str, name: str, raw: Any) -> Column:
    if not COLUMN_NAME.fullmatch(name) or len(name) > MAX_COLUMN_NAME:
        raise ConfigError(f"{path}: {name!r} is not a valid column name (lower-case letter, then letters, "
                          f"digits, '_'; at most {MAX_COLUMN_NAME})")
    text = raw.strip().lower() if isinstance(raw, str) else raw
    decimal = _DECIMAL.fullmatch(text) if isinstance(text, str) else None
    if decimal:
        precision, scale = (int(decimal[1]), int(decimal[2])) if decimal[1] else (15, 2)
        if not 1 <= precision <= MAX_DECIMAL_PRECISION or scale > precision:
            raise ConfigError(f"{path}.{name}: decimal(P,S) needs 1 <= P <= {MAX_DECIMAL_PRECISION} "
                              f"and S <= P, not {raw!r}")
        return Column(name=name, type=ColumnType.DECIMAL, precision=precision, scale=scale)
    try:
        return Column(name=name, type=ColumnType(text))
    except ValueError:
        kinds = ", ".join(t.value for t in ColumnType)
        raise ConfigError(f"{path}.{name}: unknown type {raw!r} (one of {kinds}; decimal(P,S))") from None


def _names(raw: Any, path: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise ConfigError(f"{path}: must be a list of names")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"{path}: names a column or client twice")
    return tuple(raw)


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: must be a non-empty string")
    return value
