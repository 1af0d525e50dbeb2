"""Reading records to push from CSV and JSON Lines files, one record at a time.

CSV: UTF-8 (a BOM is skipped), the first row names the columns, an empty
cell is NULL.  JSON Lines: one object per line, ``null`` is NULL, numbers and
booleans are sent as their text; blank lines are skipped.  Both stream: memory
does not grow with the file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gateway.errors import FileError

from .wire import Fields

__all__ = ["read_records", "Progress"]


class Progress:
    """How far through the file the reader is, in bytes and records (for the progress bar)."""

    def __init__(self, path: Path) -> None:
        self.total = path.stat().st_size
        self.records = 0
        """Records read so far."""
        self._handle: IO[Any] | None = None

    def attach(self, handle: IO[Any]) -> None:
        self._handle = handle

    @property
    def done(self) -> int:
        try:
            return self._handle.buffer.tell() if self._handle is not None else 0  # type: ignore[attr-defined]
        except (OSError, ValueError, AttributeError):
            return self.total


def read_records(path: Path, progress: Progress | None = None) -> Iterator[Fields]:
    """The records of a ``.csv`` or ``.jsonl``/``.ndjson`` file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv(path, progress)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl(path, progress)
    raise FileError(f"{path}: give a .csv or .jsonl file")


def _open(path: Path, progress: Progress | None) -> IO[str]:
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise FileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if progress is not None:
        progress.attach(handle)
    return handle


def _csv(path: Path, progress: Progress | None) -> Iterator[Fields]:
    with _open(path, progress) as handle:
        rows = csv.reader(handle)
        try:
            header = next(rows)
            if len(set(header)) != len(header) or not all(header):
                raise FileError(f"{path}: the first row must name each column once")
            for row in rows:
                if len(row) != len(header):
                    if not row:
                        continue
                    raise FileError(f"{path}, line {rows.line_num}: {len(row)} cells, the header has {len(header)}")
                if progress is not None:
                    progress.records += 1
                yield {name: cell if cell != "" else None for name, cell in zip(header, row)}
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            raise FileError(f"{path}, line {rows.line_num}: {exc}") from exc


def _jsonl(path: Path, progress: Progress | None) -> Iterator[Fields]:
    with _open(path, progress) as handle:
        number = 0
        try:
            for number, line in enumerate(handle, 1):
                if line.strip():  # numbers stay their JSON text, so decimals keep every digit
                    record = _object(json.loads(line, parse_float=str, parse_int=str), path, number)
                    if progress is not None:
                        progress.records += 1
                    yield record
        except json.JSONDecodeError as exc:
            raise FileError(f"{path}, line {number}: not JSON: {exc.msg}") from exc
        except UnicodeDecodeError as exc:
            raise FileError(f"{path}, line {number + 1}: not UTF-8: {exc.reason}") from exc


def _object(value: Any, path: Path, number: int) -> Fields:
    if not isinstance(value, dict):
        raise FileError(f"{path}, line {number}: each line must be a JSON object")
    return {name: _text(item, path, number, name) for name, item in value.items()}


def _text(item: Any, path: Path, number: int, name: str) -> str | None:
    if item is None:
        return None
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (int, float, str)):
        return str(item)
    raise FileError(f"{path}, line {number}: {name!r} must be a string, number, boolean or null")
