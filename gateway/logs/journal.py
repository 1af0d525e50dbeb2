"""The send/receive log store (SPEC.md capability (G), "Log record").

One :class:`LogRecord` per exchange and direction — a relayed request, its
response, a JX operation, a refdb push, a file part — in one SQLAlchemy Core
table that works unchanged on SQLite (WAL) and PostgreSQL.

Writing.  :class:`Journal` keeps the request path free of database work
and of per-record objects: :meth:`Journal.record` appends the record (or a
relayed exchange's two, as the values of one :class:`RelayExchange`) to the
open :class:`~gateway.logs.batch.Batch` — a flat list — and returns.  One
task takes the oldest batch, hands it to the writer process
(:mod:`gateway.logs.writer`, so sealing and inserting never hold the event
loop's GIL) as one ``marshal`` frame, and awaits its commit (group commit)
while the next batch fills: the relay itself never takes a lock or makes a
round trip.  A batch nobody waits for may gather for ``linger`` (50 ms),
counted from when the previous batch was taken: each batch costs the event
loop and the writer a fixed amount (a round trip, a transaction, the chain
head's lock), so batches of a few records cost several times more per
record than batches of hundreds, while records that already waited for a
slow commit go out as soon as it is done.  A batch that someone waits for
(``durable``: an answer is held back for it) does not linger.  A record is
durable within the linger plus a commit's time, or two commits' times when
it arrived during a commit (well under 200 ms on a healthy store), and
:meth:`Journal.close` flushes everything.  When ``queue_size`` entries are
queued — the store is slow or down — the producer *waits* up to
``max_wait`` seconds for room and then gets :class:`JournalUnavailable`:
records are never dropped silently, and the caller decides (the relay
refuses the exchange rather than relay it unlogged).  An exchange whose
effect is itself durable (a stored JX document, a refdb push) is logged with
:meth:`Journal.write_in` inside the caller's own transaction instead, so
the effect and its record commit or vanish together.

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
from collections import deque
from pathlib import Path
from typing import Any, Literal, overload

from sqlalchemy import (
    Connection,
    Engine,
)

from gateway.errors import JournalUnavailable
from gateway.store import db_reason

from .batch import Batch, entries_of, parts_of
from .key import append_checkpoint, create_checkpoints
from .records import Entry, LogRecord, describe
from .tables import TABLES, LogTables, append, ensure_schema, head_of, transient
from .writer import WriterProcess

__all__ = ["Journal", "Durable", "CHECKPOINT_INTERVAL", "DURABLE_WAIT"]

log = logging.getLogger(__name__)


# -- the group-commit writer ---------------------------------------------------

#: Becomes True once an entry is committed, False if it never will be (:meth:`Journal.record`).
Durable = asyncio.Future[bool]

#: How often a caller held back by a full log queue looks again (only under overload).
_ADMIT_POLL = 0.005
#: Seconds between checkpoints of the chain head (SPEC.md: at least every 10 s while writing).
CHECKPOINT_INTERVAL = 5.0
#: Seconds a caller waits at most for its records to be durable before they count as not durable.
DURABLE_WAIT = 10.0


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
                 checkpoint_interval: float = CHECKPOINT_INTERVAL, durable_wait: float = DURABLE_WAIT) -> None:
        if checkpoints is not None and key is None:
            raise ValueError("checkpoints are MACed with the log key: give the key too")
        self.engine = engine
        self.node = node
        self.tables = tables
        self.batch_size = batch_size
        self.linger = linger
        self.max_wait = max_wait
        self.durable_wait = durable_wait
        self.queue_size = queue_size
        self.written = 0
        self.batches = 0
        self.dropped = 0
        self.waits = 0
        self.last_error: str | None = None
        self._batches: deque[Batch] = deque([Batch()])
        """Batches not yet taken by the writer, oldest first; the last one is open (entries go there)."""
        self._queued = 0
        """Entries in :attr:`_batches` (the bound is ``queue_size``)."""
        self._inflight: Batch | None = None
        self._lingering = False
        self._wake = asyncio.Event()
        """Set when the writer task should look at the batches again: an entry arrived, someone waits."""
        self._room = asyncio.Event()
        self._room.set()
        self._drained: list[asyncio.Future[None]] = []
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

        With ``durable``, returns a future of this caller's own that turns ``True`` once the entry
        is committed, or ``False`` if it never will be (refused by the store, given up at
        shutdown) or is not within ``durable_wait`` seconds of the first waiter of its batch: no
        caller needs a timer of its own.  Cancelling it concerns only this caller.
        The writer does not let a batch linger while someone waits for one of its entries: a
        caller holds an answer back for it (:mod:`gateway.relay.handler`), and the batch forms
        anyway from what arrives during the commit before it.
        """
        if self._closed:
            raise JournalUnavailable("the send/receive log is closed")
        if self._queued >= self.queue_size:
            await self._wait_for_room()
        return self._add(entry, durable)

    def _add(self, entry: Entry, durable: bool) -> Durable | None:
        batch = self._batches[-1]
        if batch.count >= self.batch_size:
            batch = Batch()
            self._batches.append(batch)
        index = batch.add(entry)
        self._queued += 1
        if durable or not self._lingering or batch.count >= self.batch_size:
            self._wake.set()  # a lingering writer is woken only when it should stop lingering
        if not durable:
            return None
        loop = asyncio.get_running_loop()
        if batch.expiry is None:  # one timer per batch bounds every caller's wait
            batch.expiry = loop.call_later(self.durable_wait, batch.settle, False)
        return batch.wait(loop, index)

    async def _wait_for_room(self) -> None:
        self.waits += 1
        try:
            async with asyncio.timeout(self.max_wait):
                while self._queued >= self.queue_size and not self._closed:
                    self._room.clear()
                    await self._room.wait()
        except TimeoutError:
            raise JournalUnavailable(f"the send/receive log is {self.queue_size} records behind"
                                     f" ({self.last_error or 'the store is slow'})") from None
        if self._closed:
            raise JournalUnavailable("the send/receive log is closed")

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
        if self._queued < self.queue_size:
            return
        self.waits += 1
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while self._queued >= self.queue_size:
            if asyncio.get_running_loop().time() > deadline:
                raise JournalUnavailable(f"the send/receive log is {self.queue_size} records behind"
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
        if self._queued or self._inflight is not None:
            drained = asyncio.get_running_loop().create_future()
            self._drained.append(drained)
            await drained

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new records, commit the queued ones (up to ``timeout`` s), stop the writer."""
        if self._closed:
            return
        self._closed = True
        self._room.set()  # producers waiting for room see the journal closed
        if self._task is not None:
            try:
                await asyncio.wait_for(self.flush(), timeout)
            except TimeoutError:
                if self._inflight is not None:
                    for entry in entries_of(self._inflight.values):
                        log.error("send/receive log: commit unfinished at shutdown, maybe not logged: %s",
                                  describe(entry))
                self._give_up(f"store unavailable at shutdown ({self.last_error})")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._give_up("the journal was closed before it was started")
        self._settle_drained()
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
        return {"node": self.node, "running": running, "queued": self._queued, "written": self.written,
                "batches": self.batches, "dropped": self.dropped, "producer_waits": self.waits,
                "last_error": self.last_error}

    async def _run(self) -> None:
        """Take the oldest batch, commit it, repeat: the next batch fills while one commits."""
        loop = asyncio.get_running_loop()
        taken = loop.time()
        while True:
            while not self._batches[0].count:
                self._wake.clear()
                await self._wake.wait()
            # Let a batch gather (per-batch costs dominate small batches) for ``linger`` from when the
            # previous one was taken: records that waited for its commit need not wait a linger more,
            # nor any batch someone awaits (it gathers during the commit before it).
            batch = self._batches[0]
            if (rest := self.linger - (loop.time() - taken)) > 0 and not batch.waiters \
                    and len(self._batches) == 1 and batch.count < self.batch_size:
                self._wake.clear()
                self._lingering = True
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(rest):
                            while not batch.waiters and batch.count < self.batch_size:
                                await self._wake.wait()
                                self._wake.clear()
                finally:
                    self._lingering = False
            taken = loop.time()
            batch = self._take()
            try:
                await self._commit(batch)
            finally:
                batch.settle(False)  # only what is still open: cancelled at shutdown mid-commit
                self._inflight = None
                if not self._queued:
                    self._settle_drained()

    def _take(self) -> Batch:
        batch = self._inflight = self._batches.popleft()
        if not self._batches:
            self._batches.append(Batch())
        self._queued -= batch.count
        self._room.set()
        return batch

    def _settle_drained(self) -> None:
        drained, self._drained = self._drained, []
        for done in drained:
            if not done.done():
                done.set_result(None)

    async def _commit(self, batch: Batch) -> None:
        if await self._send(batch.values, batch.count, urgent=bool(batch.waiters)):
            batch.settle(True)
            return
        # A record the database refuses must not block the ones behind it: split until it is alone.
        committed: list[bool] = []
        for part, ok in await self._isolate(parts_of(batch.values)):
            committed.append(ok)
            if not ok:
                self.dropped += 1
                log.error("send/receive log: record refused by the store (%s), not logged: %s",
                          self.last_error, describe(entries_of(part)[0]))
        batch.settle_each(committed)

    async def _send(self, values: list[Any], count: int, *, urgent: bool) -> bool:
        """Commit ``values`` (retrying what is transient); False if the store refuses them."""
        backoff = 0.05
        while True:
            try:
                written, seq, last = await self._writer.commit(values, urgent=urgent)
            except Exception as exc:  # the writer must survive anything one batch can cause
                self.last_error = db_reason(exc)
                if not transient(exc):
                    return False
                log.warning("send/receive log: commit failed, retrying: %s", self.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                if seq:
                    self._head = (seq, last)
                self.written += written
                self.batches += 1
                self.last_error = None
                return True

    async def _isolate(self, parts: list[list[Any]]) -> list[tuple[list[Any], bool]]:
        if len(parts) == 1:
            return [(parts[0], await self._send(parts[0], 1, urgent=True))]
        half = len(parts) // 2
        found: list[tuple[list[Any], bool]] = []
        for side in (parts[:half], parts[half:]):
            if await self._send([value for part in side for value in part], len(side), urgent=True):
                found.extend((part, True) for part in side)
            else:
                found.extend(await self._isolate(side))
        return found

    def _give_up(self, why: str) -> None:
        # Last resort: the records go to the process log rather than vanish.
        while self._batches[0].count:
            batch = self._take()
            self._inflight = None
            batch.settle(False)
            for entry in entries_of(batch.values):
                self.dropped += 1
                log.error("send/receive log: %s, not logged: %s", why, describe(entry))


# -- reading -------------------------------------------------------------------


