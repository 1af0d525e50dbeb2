"""The gateway's database: one SQLAlchemy engine from ``gateway.db``.

SQLite (WAL mode, under ``var/``) is the embedded default; PostgreSQL is the
production and multi-node store, reached by the same SQLAlchemy 2 code.
``postgresql://`` URLs use the psycopg 3 driver.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from routing.config import Config

from .errors import ConfigError

__all__ = ["Store", "database_url", "StoreUnavailable"]


class StoreUnavailable(Exception):
    """Raised when the store cannot be reached; carries the reason for /healthz."""


def database_url(config: Config) -> str:
    """``gateway.db`` with relative SQLite paths made absolute and the psycopg driver chosen."""
    try:
        url = make_url(config.gateway.db)
    except ArgumentError as exc:
        raise ConfigError(f"gateway.db: {config.gateway.db!r} is not a database URL") from exc
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = config.resolve_path(url.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        url = url.set(database=str(path))
    return url.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # WAL lets readers run beside the writer; NORMAL sync is durable at each WAL checkpoint.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Store:
    """The engine and its health check; tables belong to the features that use them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    @property
    def display_url(self) -> str:
        """The URL without its password, for logs and /healthz."""
        return make_url(self.url).render_as_string(hide_password=True)

    def ping(self) -> None:
        """Run a trivial query; raises :class:`StoreUnavailable` with the reason."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(str(exc.__cause__ or exc).splitlines()[0]) from exc

    def close(self) -> None:
        self.engine.dispose()

