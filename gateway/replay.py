"""Replay defence for WS-Security: each accepted signature is remembered until it could no longer pass.

The record lives in the store (table ``wss_replay``), so several gateway
nodes on one PostgreSQL agree: the PRIMARY KEY insert decides which node
accepts a signature first, and every other node refuses it as a
:class:`~gateway.errors.Replay`.  A record is kept until its Timestamp's
Expires plus the allowed clock skew — after that the message fails the
time check anyway — and expired records are purged as new ones arrive.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from sqlalchemy import Column, Engine, Float, MetaData, String, Table, bindparam, delete, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .errors import Replay, ServerFault

__all__ = ["ReplayGuard", "ReplayStoreUnavailable", "REPLAY_TABLE"]

_METADATA = MetaData()
REPLAY_TABLE = Table(
    "wss_replay", _METADATA,
    Column("digest", String(64), primary_key=True, comment="SHA-256 of the SignatureValue"),
    Column("keep_until", Float, nullable=False, index=True, comment="Unix time after which it may go"),
)

#: Seconds between purges of expired records (per node).
PURGE_EVERY = 60.0

# Built once: building statements per message costs more than SQLite's insert itself.
_INSERT = insert(REPLAY_TABLE)
_PURGE = delete(REPLAY_TABLE).where(REPLAY_TABLE.c.keep_until < bindparam("now"))


class ReplayStoreUnavailable(ServerFault, RuntimeError):
    """Raised when the replay records cannot be read or written (store down)."""

    code = "StoreUnavailable"
    http_status = 503


class ReplayGuard:
    """Records accepted signatures in the store and refuses the ones seen before."""

    def __init__(self, engine: Engine, *, purge_every: float = PURGE_EVERY) -> None:
        self._engine = engine
        self._purge_every = purge_every
        self._purged_at = 0.0

    def ensure_schema(self) -> None:
        _METADATA.create_all(self._engine)

    async def remember(self, digest: str, *, keep_until: datetime, now: datetime) -> None:
        """Record ``digest``; raises :class:`Replay` when any node recorded it before."""
        await asyncio.to_thread(self.remember_now, digest, keep_until.timestamp(), now.timestamp())

    def remember_now(self, digest: str, keep_until: float, now: float) -> None:
        purge = time.monotonic() - self._purged_at >= self._purge_every
        try:
            with self._engine.begin() as connection:
                if purge:
                    connection.execute(_PURGE, {"now": now})
                connection.execute(_INSERT, {"digest": digest, "keep_until": keep_until})
        except IntegrityError as exc:
            raise Replay("this signed message was already accepted once (same signature value): "
                         "a replay is refused") from exc
        except SQLAlchemyError as exc:
            raise ReplayStoreUnavailable(f"the replay records are unavailable: "
                                         f"{str(exc.__cause__ or exc).splitlines()[0]}") from exc
        if purge:
            self._purged_at = time.monotonic()
