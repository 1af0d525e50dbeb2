"""The send/receive log store (SPEC.md capability (G), "Log record").

One :class:`LogRecord` per exchange and direction — a relayed request, its
response, a JX operation, a refdb push, a file part — in one SQLAlchemy Core
table that works unchanged on SQLite (WAL) and PostgreSQL.

Writing.  :class:`Journal` keeps the request path free of database work:
:meth:`Journal.record` puts the record (or a relayed exchange's two, as one
:class:`RelayExchange` tuple) on a bounded queue and returns; a
writer process (:mod:`gateway.logs.writer`, so sealing and inserting never hold
the event loop's GIL, and the batch goes over a socket the event loop itself
waits on) commits whatever has accumulated as one transaction
(group commit).  The writer lets a batch gather for ``linger`` (50 ms),
counted from when the previous batch was taken: each batch costs the event
loop and the writer a fixed amount (a round trip, a transaction, the chain
head's lock), so batches of a few records cost several times more per record
than batches of hundreds, while records that already waited for a slow
commit go out as soon as it is done.  A record is durable within the linger
plus a commit's time, or two commits' times when it arrived during a commit
(well under 200 ms on a healthy store), and :meth:`Journal.close` flushes
everything.  When the queue is full — the store is slow or down — the
producer *waits* up to ``max_wait`` seconds for room and then gets
:class:`JournalUnavailable`: records are never dropped silently, and the
caller decides (the relay should refuse the exchange rather than relay it
unlogged).  An exchange whose effect is itself durable (a stored JX
document, a refdb push) is logged with :meth:`Journal.write_in` inside the
caller's own transaction instead, so the effect and its record commit or
vanish together.

Chaining.  Each node (gateway name, later plus a worker suffix) appends to
its own hash chain (see :mod:`gateway.logs.chain`).  The chain head — last seq
and hash, and where archiving stopped — lives in a second table and is
updated in the same transaction as the records; the head row is locked
first, so appends to one chain are serialised across processes and threads,
chains continue across restarts, and deleting the newest records is
detectable.  Two processes with different node names never touch each
other's chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Literal, overload

from sqlalchemy import (
    Connection,
    Engine,
)

from gateway.errors import JournalUnavailable
from gateway.store import db_reason

from .key import append_checkpoint, create_checkpoints
from .records import Entry, LogRecord, describe, pack
from .tables import TABLES, LogTables, append, ensure_schema, head_of, transient
from .writer import WriterProcess

__all__ = ["Journal", "Durable", "CHECKPOINT_INTERVAL"]

log = logging.getLogger(__name__)


# -- the record ----------------------------------------------------------------


# -- the tables ----------------------------------------------------------------


# -- appending -----------------------------------------------------------------


# -- the group-commit writer ---------------------------------------------------

#: Becomes True once an entry is committed, False if it never will be (:meth:`Journal.record`).
Durable = asyncio.Future[bool]
_Item = tuple[Entry, "Durable | None"]

#: How often a caller held back by a full log queue looks again (only under overload).
_ADMIT_POLL = 0.005
#: Seconds between checkpoints of the chain head (SPEC.md: at least every 10 s while writing).
CHECKPOINT_INTERVAL = 5.0


class Journal:
    """Appends records to one node's chain from a background group-commit writer.

    Use it inside the event loop::

        journal = Journal(store.engine, node=config.gateway.name)
        await journal.start()
        await journal.record(LogRecord.at(clock.now(), kind="relay", ...))
        await journal.close()
    """

    def __init__(self, engine: Engine, node: str, *, tables: LogTables = TABLES,
                 queue_size: int = 10_000, batch_size: int = 500, linger: float = 0.05,
                 max_wait: float = 2.0, key: bytes | None = None, checkpoints: Path | None = None,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL) -> None:
        if checkpoints is not None and key is None:
            raise ValueError("checkpoints are MACed with the log key: give the key too")
        self.engine = engine
        self.node = node
        self.tables = tables
        self.batch_size = batch_size
        self.linger = linger
        self.max_wait = max_wait
        self.written = 0
        self.batches = 0
        self.dropped = 0
        self.waits = 0
        self.last_error: str | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        self._waiting = 0
        """Queued entries someone awaits durability of: no linger while there are any."""
        self._hurry = asyncio.Event()
        if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
            raise ValueError("the send/receive log needs a database file or server, not an in-memory SQLite")
        self._writer = WriterProcess(engine.url.render_as_string(hide_password=False), node, tables.log.name, key)
        self._key = key
        self._checkpoints = checkpoints
        self._checkpoint_interval = checkpoint_interval
        self._head: tuple[int, str] | None = None
        """The chain's head after the writer's last commit."""
        self._checkpointed: tuple[int, str] | None = None
        self._written_in = False
        self._checkpointing: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[_Item] = []
        self._closed = False

    async def start(self) -> None:
        """Create the tables if needed and start the writer."""
        await asyncio.to_thread(ensure_schema, self.engine, self.tables)
        await self._writer.start()
        self._task = asyncio.create_task(self._run(), name=f"journal-{self.node}")
        if self._checkpoints is not None:
            await asyncio.to_thread(create_checkpoints, self._checkpoints)
            self._written_in = True  # checkpoint the head the chain has now (after a restart)
            await self._checkpoint()
            self._checkpointing = asyncio.create_task(self._checkpoint_loop(), name=f"checkpoints-{self.node}")

    @overload
    async def record(self, entry: Entry) -> None: ...
    @overload
    async def record(self, entry: Entry, *, durable: Literal[True]) -> Durable: ...

    async def record(self, entry: Entry, *, durable: bool = False) -> Durable | None:
        """Queue ``entry``; returns at once unless the queue is full (then waits up to ``max_wait``).

        With ``durable``, returns a future that turns ``True`` once the entry is committed (or
        ``False`` if it never will be: refused by the store, or given up at shutdown).  The writer
        does not let a batch linger while someone waits for one of its entries: a caller holds an
        answer back for it (:mod:`gateway.relay.handler`), and the batch forms anyway from what
        arrives during the commit before it.
        """
        if self._closed:
            raise JournalUnavailable("the send/receive log is closed")
        done: Durable | None = asyncio.get_running_loop().create_future() if durable else None
        item = (entry, done)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.waits += 1
            try:
                async with asyncio.timeout(self.max_wait):
                    await self._queue.put(item)
            except TimeoutError:
                raise JournalUnavailable(
                    f"the send/receive log is {self._queue.maxsize} records behind"
                    f" ({self.last_error or 'the store is slow'})") from None
        if done is not None:
            self._waiting += 1
            self._hurry.set()
        return done

    async def admit(self) -> None:
        """Return once the log can take an exchange's records; raise :class:`JournalUnavailable` if it cannot.

        The relay asks before it forwards anything, so that it refuses an
        exchange rather than relay one it cannot log.  A full queue first
        slows the caller down (up to ``max_wait``): under overload the
        gateway relays at the pace the store can log, and only a store that
        stays stuck turns into faults.
        """
        if self._closed or self._task is None or self._task.done():
            raise JournalUnavailable("the send/receive log is not running")
        if not self._queue.full():
            return
        self.waits += 1
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while self._queue.full():
            if asyncio.get_running_loop().time() > deadline:
                raise JournalUnavailable(f"the send/receive log is {self._queue.maxsize} records behind"
                                         f" ({self.last_error or 'the store is slow'})")
            await asyncio.sleep(_ADMIT_POLL)

    def write_in(self, connection: Connection, entry: LogRecord) -> LogRecord:
        """Append ``entry`` now, inside the caller's transaction (for durable effects); returns it sealed.

        Call it last before committing: it holds this chain's head lock until
        the caller's transaction ends.
        """
        self._written_in = True  # the next checkpoint reads the head from the store
        return append(connection, [entry], node=self.node, tables=self.tables, key=self._key)[0]

    async def flush(self) -> None:
        """Wait until every record queued so far is committed (or given up)."""
        await self._queue.join()

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new records, commit the queued ones (up to ``timeout`` s), stop the writer."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                for entry, _done in self._inflight:
                    log.error("send/receive log: commit unfinished at shutdown, maybe not logged: %s",
                              describe(entry))
                self._give_up(f"store unavailable at shutdown ({self.last_error})")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._give_up("the journal was closed before it was started")
        await self._writer.stop()
        if self._checkpointing is not None:
            self._checkpointing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointing
            await self._checkpoint()

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_interval)
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Append the chain's head to the checkpoint file if it moved since the last checkpoint."""
        assert self._checkpoints is not None and self._key is not None
        head = self._head
        try:
            if self._written_in:  # records appended in callers' transactions: the store knows the head
                self._written_in = False
                stored = await asyncio.to_thread(head_of, self.engine, self.node, self.tables)
                if stored is not None and (head is None or stored[0] > head[0]):
                    head = stored
            if head is None or head == self._checkpointed or head[0] == 0:
                return
            if self._checkpointed is not None and head[0] < self._checkpointed[0]:
                log.error("send/receive log: the chain head of %s moved back from seq %d to %d: "
                          "records were deleted outside the gateway", self.node, self._checkpointed[0], head[0])
                return
            await asyncio.to_thread(append_checkpoint, self._checkpoints, self._key, self.node, *head)
            self._checkpointed = head
        except (OSError, JournalUnavailable) as exc:
            log.error("send/receive log: cannot write a checkpoint to %s: %s", self._checkpoints, exc)

    def status(self) -> dict[str, Any]:
        """JSON-ready snapshot for ``/healthz`` and metrics."""
        running = self._task is not None and not self._task.done()
        return {"node": self.node, "running": running, "queued": self._queue.qsize(), "written": self.written,
                "batches": self.batches, "dropped": self.dropped, "producer_waits": self.waits,
                "last_error": self.last_error}

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        taken = loop.time()
        while True:
            batch = self._inflight = [await self._queue.get()]
            # Let a batch gather (per-batch costs dominate small batches) for ``linger`` from when the
            # previous one was taken: records that waited for its commit need not wait a linger more,
            # nor any batch someone awaits (it gathers during the commit before it).
            if (rest := self.linger - (loop.time() - taken)) > 0 and self._queue.qsize() + 1 < self.batch_size:
                self._hurry.clear()
                if not self._waiting:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._hurry.wait(), rest)
            taken = loop.time()
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                self._settle(batch, False)  # only what is still open: cancelled at shutdown mid-commit
                self._inflight = []
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[_Item]) -> None:
        backoff = 0.05
        while True:
            try:
                written, seq, last = await self._writer.commit([pack(entry) for entry, _done in batch],
                                                               urgent=any(done is not None for _e, done in batch))
            except Exception as exc:  # the writer must survive anything one batch can cause
                self.last_error = db_reason(exc)
                if not transient(exc):
                    await self._isolate(batch)
                    return
                log.warning("send/receive log: commit failed, retrying: %s", self.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                if seq:
                    self._head = (seq, last)
                self.written += written
                self.batches += 1
                self.last_error = None
                self._settle(batch, True)
                return

    def _settle(self, items: list[_Item], durable: bool) -> None:
        for _entry, done in items:
            if done is not None and not done.done():
                done.set_result(durable)
                self._waiting -= 1

    async def _isolate(self, batch: list[_Item]) -> None:
        # A record the database refuses must not block the ones behind it: split until it is alone.
        if len(batch) > 1:
            half = len(batch) // 2
            await self._commit(batch[:half])
            await self._commit(batch[half:])
            return
        self.dropped += 1
        self._settle(batch, False)
        log.error("send/receive log: record refused by the store (%s), not logged: %s",
                  self.last_error, describe(batch[0][0]))

    def _give_up(self, why: str) -> None:
        # Last resort: the records go to the process log rather than vanish.
        while not self._queue.empty():
            entry, done = item = self._queue.get_nowait()
            self._queue.task_done()
            self._settle([item], False)
            self.dropped += 1
            log.error("send/receive log: %s, not logged: %s", why, describe(entry))


# -- reading -------------------------------------------------------------------


