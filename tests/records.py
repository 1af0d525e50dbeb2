"""Reading a gateway's send/receive log back in tests."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine

from gateway.journal import LogFilter, LogRecord, read


def relay_records(db: Path, kind: str = "relay") -> list[LogRecord]:
    """Every record of ``kind`` (by default the relay's) in the SQLite store ``db``."""
    engine = create_engine(f"sqlite:///{db}")
    try:
        return list(read(engine, LogFilter(kind=kind)))
    finally:
        engine.dispose()
