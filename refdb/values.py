"""Record values: wire text ⇄ typed Python values, validated against a dataset's columns.

Pure functions, no I/O.  On the wire (SOAP ``field``/``value``, CSV cells,
JSON Lines values turned to text) every value is text:

============  ==========================================  =========================
type          accepted text                               written back as
============  ==========================================  =========================
string        any text without NUL                        as stored
integer       ``[+-]digits`` within 64 bits               ``123``
decimal(P,S)  ``[+-]digits[.digits]``, at most S decimals  ``12.50`` (exactly S)
              and P-S integer digits
date          ``YYYY-MM-DD``                              ``2024-04-01``
datetime      ISO 8601 ``YYYY-MM-DDTHH:MM[:SS[.ffffff]]``  ``2024-04-01T09:30:00``
              with optional offset (converted to UTC)
boolean       ``true``/``false``/``1``/``0``              ``true``/``false``
============  ==========================================  =========================

A missing value is NULL; key columns may not be NULL.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from itertools import repeat
from typing import Any

from gateway.store import sqlite_datetime

from .config import Column, ColumnType, Dataset

__all__ = ["BadValue", "FieldError", "parse_value", "format_value", "Converter", "Record"]

_INTEGER = re.compile(r"[+-]?\d{1,19}")
_DECIMAL = re.compile(r"[+-]?(\d*)(?:\.(\d*))?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?")
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_INT64 = 2**63


class BadValue(ValueError):
    """A value that does not fit its column; the message says why, without the column name."""


def _string(text: str, column: Column) -> str:
    if "\0" in text:
        raise BadValue("text may not contain NUL characters")
    return text


def _integer(text: str, column: Column) -> int:
    text = text.strip()
    if not _INTEGER.fullmatch(text):
        raise BadValue(f"{text!r} is not an integer")
    number = int(text)
    if not -_INT64 <= number < _INT64:
        raise BadValue(f"{text} does not fit in 64 bits")
    return number


def _decimal(text: str, column: Column) -> Decimal:
    text = text.strip()
    match = _DECIMAL.fullmatch(text)
    if not match or not (match[1] or match[2]):
        raise BadValue(f"{text!r} is not a decimal number")
    whole, fraction = match[1].lstrip("0"), (match[2] or "").rstrip("0")
    if len(fraction) > column.scale:
        raise BadValue(f"{text} has more than {column.scale} decimal places")
    if len(whole) > column.precision - column.scale:
        raise BadValue(f"{text} has more than {column.precision - column.scale} integer digits")
    try:
        return Decimal(text).quantize(Decimal(1).scaleb(-column.scale))
    except InvalidOperation:  # pragma: no cover - the pattern already excludes what Decimal refuses
        raise BadValue(f"{text!r} is not a decimal number") from None


def _date(text: str, column: Column) -> date:
    text = text.strip()
    try:
        if _DATE.fullmatch(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise BadValue(f"{text!r} is not a date (YYYY-MM-DD)")


def _datetime(text: str, column: Column) -> datetime:
    text = text.strip()
    try:
        if _DATETIME.fullmatch(text):
            value = datetime.fromisoformat(text)
            return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    except ValueError:
        pass
    raise BadValue(f"{text!r} is not a date and time (YYYY-MM-DDTHH:MM:SS, optional offset)")


def _boolean(text: str, column: Column) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise BadValue(f"{text!r} is not a boolean (true, false, 1, 0)")


_PARSERS: dict[ColumnType, Callable[[str, Column], Any]] = {
    ColumnType.STRING: _string, ColumnType.INTEGER: _integer, ColumnType.DECIMAL: _decimal,
    ColumnType.DATE: _date, ColumnType.DATETIME: _datetime, ColumnType.BOOLEAN: _boolean,
}


def parse_value(text: str | None, column: Column) -> Any:
    """The typed value of wire ``text`` for ``column`` (None for NULL); raises :class:`BadValue`."""
    return None if text is None else _PARSERS[column.type](text, column)


def format_value(value: Any, column: Column) -> str | None:
    """The wire text of a stored value (None for NULL)."""
    if value is None:
        return None
    kind = column.type
    if kind is ColumnType.DECIMAL:
        return f"{Decimal(str(value)):.{column.scale}f}"
    if kind is ColumnType.BOOLEAN:
        return "true" if value else "false"
    if kind in (ColumnType.DATE, ColumnType.DATETIME):
        return str(value.isoformat())
    return str(value)


# -- driver values ----------------------------------------------------------------
#
# A push hands its rows to the database driver directly (:mod:`refdb.bulk`), so
# a converter makes the values that SQLAlchemy's bind processing would have
# made: on SQLite its DATE/DATETIME storage strings, decimals as floats (what
# ``Numeric`` binds there) and booleans as 0/1; on PostgreSQL the typed values,
# which psycopg adapts itself, as on any other dialect (where SQLAlchemy binds them).

_ADAPTERS: dict[str, dict[ColumnType, Callable[[Any], Any]]] = {
    "sqlite": {ColumnType.DATE: date.isoformat, ColumnType.DATETIME: sqlite_datetime,
               ColumnType.DECIMAL: float, ColumnType.BOOLEAN: int},
}

# The common spellings, checked a whole column at a time by C code (regular expressions, ``map``);
# anything else (whitespace, offsets, non-ASCII digits, NULLs in a key) takes the value-by-value
# path, which accepts exactly what :func:`parse_value` accepts and names the first bad record.
_FAST_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_FAST_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FAST_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?")
_FAST_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}
_FAST_BOOLEAN_INT = {word: int(value) for word, value in _FAST_BOOLEAN.items()}

Texts = list[str]
ColumnConverter = Callable[[Texts], list[Any]]


class _Slow(Exception):
    """A column holds a value the column-at-a-time path does not take."""


def _check(ok: bool) -> None:
    if not ok:
        raise _Slow


def _fast_string(texts: Texts) -> list[Any]:
    _check(not any(map(str.__contains__, texts, repeat("\0"))))
    return texts


def _fast_integer(texts: Texts) -> list[Any]:
    _check(all(map(_FAST_INTEGER.fullmatch, texts)))
    numbers = list(map(int, texts))
    _check(not numbers or (-_INT64 <= min(numbers) and max(numbers) < _INT64))
    return numbers


def _fast_decimal(column: Column, driver: str) -> ColumnConverter:
    # At most P-S integer digits after leading zeros, at most S decimals before trailing zeros.
    pattern = re.compile(rf"[+-]?(?=\.?[0-9])0*[0-9]{{0,{column.precision - column.scale}}}"
                         rf"(?:\.[0-9]{{0,{column.scale}}}0*)?")
    exponent = Decimal(1).scaleb(-column.scale)

    def convert(texts: Texts) -> list[Any]:
        _check(all(map(pattern.fullmatch, texts)))
        if driver == "sqlite":
            return list(map(float, texts))
        return list(map(Decimal.quantize, map(Decimal, texts), repeat(exponent)))

    return convert


def _fast_date(driver: str) -> ColumnConverter:
    def convert(texts: Texts) -> list[Any]:
        _check(all(map(_FAST_DATE.fullmatch, texts)))
        dates = list(map(date.fromisoformat, texts))  # ValueError: not a day of the calendar
        return texts if driver == "sqlite" else dates  # YYYY-MM-DD is date.isoformat() already

    return convert


def _fast_datetime(driver: str) -> ColumnConverter:
    def convert(texts: Texts) -> list[Any]:
        _check(all(map(_FAST_DATETIME.fullmatch, texts)))
        values = list(map(datetime.fromisoformat, texts))
        if driver == "sqlite":  # as sqlite_datetime, without a Python call per value
            return list(map(datetime.isoformat, values, repeat(" "), repeat("microseconds")))
        return values

    return convert


def _fast_boolean(driver: str) -> ColumnConverter:
    table: dict[str, Any] = _FAST_BOOLEAN_INT if driver == "sqlite" else _FAST_BOOLEAN

    def convert(texts: Texts) -> list[Any]:
        return list(map(table.__getitem__, texts))  # KeyError: another spelling

    return convert


def _fast(column: Column, driver: str) -> ColumnConverter:
    kind = column.type
    if kind is ColumnType.STRING:
        return _fast_string
    if kind is ColumnType.INTEGER:
        return _fast_integer
    if kind is ColumnType.DECIMAL:
        return _fast_decimal(column, driver)
    if kind is ColumnType.DATE:
        return _fast_date(driver)
    if kind is ColumnType.DATETIME:
        return _fast_datetime(driver)
    return _fast_boolean(driver)


#: A wire record: field name → text (None: NULL), as :mod:`refdb.wire` reads it.
Record = dict[str, str | None]


class Converter:
    """Turns wire records (name → text) of one dataset into rows of driver values, naming what is wrong.

    ``driver`` is the SQLAlchemy dialect name of the database the rows go to
    (``sqlite``, ``postgresql``; anything else: typed Python values).  A row
    is a tuple in the dataset's column order, absent columns NULL.
    """

    def __init__(self, dataset: Dataset, driver: str = "") -> None:
        self.dataset = dataset
        self.names = tuple(c.name for c in dataset.columns)
        self._declared = frozenset(self.names)
        adapters = _ADAPTERS.get(driver, {})
        # name -> (position, parser, column, adapter), looked up once per value on the slow path
        self._slots = {c.name: (i, _PARSERS[c.type], c, adapters.get(c.type)) for i, c in enumerate(dataset.columns)}
        self._fast = {c.name: _fast(c, driver) for c in dataset.columns}
        self._keys = dataset.key
        self._key_positions = tuple(self.names.index(k) for k in dataset.key)
        #: A row's key, compared between rows (a value for a one-column key, else a tuple).
        self.key_values: Callable[[tuple[Any, ...]], Any] = operator.itemgetter(*self._key_positions)

    def rows(self, records: Sequence[Record]) -> list[tuple[Any, ...]]:
        """The rows of a batch; the first bad record (in order) raises :class:`FieldError` naming it.

        Records that name only declared columns, with values in their usual
        spelling, are converted a column at a time; any other batch record by record.
        """
        if not records:
            return []
        try:
            return self._by_column(records)
        except (_Slow, ValueError, KeyError):
            return [self._numbered_row(fields, number) for number, fields in enumerate(records)]

    def _by_column(self, records: Sequence[Record]) -> list[tuple[Any, ...]]:
        # Records may leave NULL columns out (a row does); a name not declared takes the slow path,
        # which names it.
        _check(all(map(self._declared.issuperset, map(dict.keys, records))))
        count = len(records)
        columns: list[Iterable[Any]] = []
        for name in self.names:
            texts = list(map(dict.get, records, repeat(name)))
            nulls = texts.count(None)
            if not nulls:
                columns.append(self._fast[name](texts))  # type: ignore[arg-type]  # (no None in them)
                continue
            _check(name not in self._keys)
            columns.append(repeat(None, count) if nulls == count else self._with_nulls(name, texts))
        return list(zip(*columns))

    def _with_nulls(self, name: str, texts: list[str | None]) -> list[Any]:
        position, parse, column, adapt = self._slots[name]
        typed = [None if text is None else parse(text, column) for text in texts]
        return typed if adapt is None else [None if value is None else adapt(value) for value in typed]

    def _numbered_row(self, fields: Record, number: int) -> tuple[Any, ...]:
        try:
            return self.row(fields)
        except FieldError as exc:
            exc.record = number
            raise

    def row(self, fields: Record) -> tuple[Any, ...]:
        """One row (absent columns NULL); a bad field raises :class:`FieldError`."""
        row: list[Any] = [None] * len(self.names)
        slots = self._slots
        for name, text in fields.items():
            slot = slots.get(name)
            if slot is None:
                raise FieldError(name, f"{self.dataset.name} has no column {name!r}")
            if text is None:
                continue
            position, parse, column, adapt = slot
            try:
                value = parse(text, column)
            except BadValue as exc:
                raise FieldError(name, str(exc)) from None
            row[position] = value if adapt is None else adapt(value)
        for position in self._key_positions:
            if row[position] is None:
                raise FieldError(self.names[position], "key columns may not be empty")
        return tuple(row)

    def key(self, fields: Record) -> dict[str, Any]:
        """The typed key columns of a record naming exactly the key (for SQLAlchemy statements)."""
        extra = sorted(set(fields) - set(self._keys))
        if extra:
            raise FieldError(extra[0], f"{extra[0]!r} is not a key column of {self.dataset.name}")
        typed = {}
        for name, text in fields.items():
            try:
                typed[name] = parse_value(text, self._slots[name][2])
            except BadValue as exc:
                raise FieldError(name, str(exc)) from None
        for name in self._keys:
            if typed.get(name) is None:
                raise FieldError(name, "key columns may not be empty")
        return {name: typed[name] for name in self._keys}

    def key_of(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """The key values of a row made by this converter."""
        return tuple(row[p] for p in self._key_positions)


class FieldError(ValueError):
    """A record's field is unknown or its value does not fit."""

    def __init__(self, field: str, reason: str, record: int | None = None) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason
        self.record = record
        """For a batch: the position of the bad record in it (from 0)."""
