"""Reading a gateway's send/receive log back in tests."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine

from gateway.logs.records import LogRecord
from gateway.logs.tables import LogFilter, read


def records(db: Path, where: LogFilter = LogFilter()) -> list[LogRecord]:
    """The records matching ``where`` in the SQLite store ``db``."""
    engine = create_engine(f"sqlite:///{db}")
    try:
        return list(read(engine, where))
    finally:
        engine.dispose()


def relay_records(db: Path, kind: str = "relay") -> list[LogRecord]:
    """Every record of ``kind`` (by default the relay's) in the SQLite store ``db``."""
    return records(db, LogFilter(kind=kind))
