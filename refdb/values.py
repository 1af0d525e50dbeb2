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

import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from .config import Column, ColumnType, Dataset

__all__ = ["BadValue", "FieldError", "parse_value", "format_value", "Converter"]

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


class Converter:
    """Turns wire records (name → text) of one dataset into row dicts, naming what is wrong."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._columns = {c.name: c for c in dataset.columns}
        # name -> (parser, column), looked up once per value on the push's hot path
        self._parsers = {c.name: (_PARSERS[c.type], c) for c in dataset.columns}
        self._keys = dataset.key

    def row(self, fields: Mapping[str, str | None]) -> dict[str, Any]:
        """A complete row (absent columns NULL); a bad field raises :class:`FieldError`."""
        row: dict[str, Any] = dict.fromkeys(self._columns)
        parsers = self._parsers
        for name, text in fields.items():
            if name not in parsers:
                raise FieldError(name, f"{self.dataset.name} has no column {name!r}")
            if text is None:
                continue
            parse, column = parsers[name]
            try:
                row[name] = parse(text, column)
            except BadValue as exc:
                raise FieldError(name, str(exc)) from None
        for name in self._keys:
            if row[name] is None:
                raise FieldError(name, "key columns may not be empty")
        return row

    def key(self, fields: Mapping[str, str | None]) -> dict[str, Any]:
        """The key columns of a record naming exactly the key."""
        extra = sorted(set(fields) - set(self._keys))
        if extra:
            raise FieldError(extra[0], f"{extra[0]!r} is not a key column of {self.dataset.name}")
        row = self.row(fields)
        return {k: row[k] for k in self._keys}


class FieldError(ValueError):
    """A record's field is unknown or its value does not fit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason
