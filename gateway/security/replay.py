"""Replay defence for WS-Security: each accepted signed message is remembered until it could no longer pass.

The key is :attr:`gateway.security.wss.Verified.digest`, a hash of what was
signed (the references' digest values), not of the signature's bytes: the
same signed content with a re-encoded signature (ECDSA's ``n - s``, another
base64 spelling) is the same message.

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
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, Engine, Float, MetaData, String, Table, bindparam, delete, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.errors import GatewayError, Replay, ReplayStoreUnavailable
from gateway.store import create_tables, db_reason

__all__ = ["ReplayGuard", "REPLAY_TABLE"]

_METADATA = MetaData()
REPLAY_TABLE = Table(
    "wss_replay", _METADATA,
    Column("digest", String(64), primary_key=True, comment="SHA-256 of the signed digest values"),
    Column("keep_until", Float, nullable=False, index=True, comment="Unix time after which it may go"),
)

#: Seconds between purges of expired records (per node).
PURGE_EVERY = 60.0

# Built once: building statements per message costs more than SQLite's insert itself.
_INSERT = insert(REPLAY_TABLE)
_PURGE = delete(REPLAY_TABLE).where(REPLAY_TABLE.c.keep_until < bindparam("now"))


@dataclass(eq=False)
class _Waiting:
    """One signature waiting for the next group commit."""

    digest: str
    keep_until: float
    now: float
    outcome: asyncio.Future[None]


class ReplayGuard:
    """Records accepted signatures in the store and refuses the ones seen before.

    Concurrent messages are written as one transaction (group commit): a
    commit costs a WAL write or an fsync, which per message would cap the
    secured relay's throughput.  If a batch holds a replay, its rows are
    retried one by one so each message gets its own answer.
    """

    def __init__(self, engine: Engine, *, purge_every: float = PURGE_EVERY) -> None:
        self._engine = engine
        self._purge_every = purge_every
        self._purged_at = 0.0
        self._waiting: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None

    def ensure_schema(self) -> None:
        create_tables(self._engine, _METADATA)

    async def remember(self, digest: str, *, keep_until: datetime, now: datetime) -> None:
        """Record ``digest``; raises :class:`Replay` when any node recorded it before."""
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(digest, keep_until.timestamp(), now.timestamp(), outcome))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await outcome

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            rows = [(w.digest, w.keep_until) for w in batch]
            try:
                results = await asyncio.to_thread(self.remember_batch, rows, max(w.now for w in batch))
            except Exception as exc:  # never leave a caller waiting: a bug here is a store failure to them
                results = [ReplayStoreUnavailable(f"the replay records are unavailable: {exc!r}") for _ in batch]
            except BaseException:
                for waiting in batch:
                    waiting.outcome.cancel()
                raise
            for waiting, result in zip(batch, results):
                _settle(waiting.outcome, result)

    def remember_batch(self, rows: list[tuple[str, float]], now: float) -> list[GatewayError | None]:
        """Record all ``rows`` (digest, keep-until); per row None or the error for its message."""
        try:
            self._write(rows, now)
            return [None] * len(rows)
        except IntegrityError:
            pass  # a replay among them (or the same signature twice in the batch): one by one
        except SQLAlchemyError as exc:
            return [_unavailable(exc) for _ in rows]
        results: list[GatewayError | None] = []
        for digest, keep_until in rows:
            try:
                self.remember_now(digest, keep_until, now)
                results.append(None)
            except (Replay, ReplayStoreUnavailable) as exc:
                results.append(exc)
        return results

    def remember_now(self, digest: str, keep_until: float, now: float) -> None:
        """Record one digest now; raises :class:`Replay` when it was recorded before."""
        try:
            self._write([(digest, keep_until)], now)
        except IntegrityError as exc:
            raise Replay("this signed message was already accepted once (the same signed content, however its "
                         "signature is encoded): a replay is refused") from exc
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc

    def _write(self, rows: list[tuple[str, float]], now: float) -> None:
        purge = time.monotonic() - self._purged_at >= self._purge_every
        with self._engine.begin() as connection:
            if purge:
                connection.execute(_PURGE, {"now": now})
            connection.execute(_INSERT, [{"digest": d, "keep_until": k} for d, k in rows])
        if purge:
            self._purged_at = time.monotonic()


def _unavailable(exc: SQLAlchemyError) -> ReplayStoreUnavailable:
    return ReplayStoreUnavailable(f"the replay records are unavailable: {db_reason(exc)}")


def _settle(outcome: asyncio.Future[None], result: GatewayError | None) -> None:
    if outcome.done():  # the caller went away meanwhile
        return
    if result is None:
        outcome.set_result(None)
    else:
        outcome.set_exception(result)
