"""Reading a gateway's send/receive log back in tests."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine

from gateway.journal import LogFilter, LogRecord, read


def relay_records(db: Path) -> list[LogRecord]:
    """Every ``relay`` record in the SQLite store ``db``."""
    engine = create_engine(f"sqlite:///{db}")
    try:
        return list(read(engine, LogFilter(kind="relay")))
    finally:
        engine.dispose()
