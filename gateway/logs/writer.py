"""The send/receive log's writer process: sealing and inserting off the gateway's interpreter.

Capability (G) asks that every exchange be logged; the standard does not
let logging slow the relay down much.  Sealing a record (canonical JSON,
SHA-256 of the chain) and SQLAlchemy's row handling are Python work: in a
thread they hold the GIL the event loop needs, and the measured cost was
40–48 % of the relay's throughput (bench/PROFILE.md).  In a process of its
own they run on the other core; the gateway only packs each record into a
tuple and sends a batch over a socket.  A relayed exchange, the hot path,
is not even made into records on the gateway's side: it travels as one
tuple (:class:`gateway.logs.journal.RelayExchange`) and the child builds its
request and response records, validation included.

Priority.  The child runs at the lowest CPU priority (``SCHED_IDLE``), so on
a busy machine it takes only CPU that nothing else wants: with the bench's
load on 2 cores that raised the logged relay from 0.83 × to 0.94 × the
unlogged one.  But an idle-priority process can starve behind any busy
process on the host, and a record must still be durable within 200 ms.  So
the gateway watches each batch: a reply later than ``_PATIENCE`` moves the
child to normal priority, and the next prompt reply lets it yield again:
the catch-up needs the CPU, not the batches after it (staying boosted for
20 more batches, as it once did, kept the child at normal priority most of
the time under the bench's load, bench/PROFILE.md).  Leaving ``SCHED_IDLE``
needs ``RLIMIT_NICE`` ≥ 20 or CAP_SYS_NICE (sched(7)); where the gateway has
neither (a systemd unit without ``LimitNICE=20``, a container without the
capability) the child simply stays at normal priority.  A batch that answers
wait for (:meth:`gateway.logs.journal.Journal.record` with ``durable``) is
urgent: the child runs it at normal priority from the start, since every
caller's answer waits for its commit.

The gateway's side is asyncio: a batch is written to the socket and the
reply awaited on the event loop itself.  No thread waits on the child, so no
GIL hand-over per batch (that cost about 40 µs of the event loop's time per
relayed exchange when a thread did the waiting).

Protocol: frames of an 8-byte big-endian length and a ``marshal`` dump
(plain tuples of str, int, float, bool and None: a quarter of pickle's cost
to the event loop, and nothing on this private socket pair needs more).  The
parent sends one batch (a list of packed records) and awaits one reply —
``("ok", count, seq, hash)`` (the chain's head) once the batch is committed, or ``("error", transient,
reason)``.  The child owns its own engine on the same store URL.  It exits
when the socket closes, so a gateway killed with -9 does not leave it
behind; a child that dies is started again for the next try.  Processes come
from a fork server with this module preloaded: starting one costs
milliseconds, and no thread of the gateway is ever forked.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import multiprocessing
import os
import signal
import socket
import struct
from typing import IO, Any

from gateway.errors import WriterError
from gateway.proctitle import name_process
from gateway.store import Store, db_reason

from .records import unpack_entries
from .tables import TABLES, append, log_tables, transient

__all__ = ["WriterProcess"]

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["gateway.logs.writer"])  # imports the tables, records and store it needs
_STOP_TIMEOUT = 5.0
_LENGTH = struct.Struct("!Q")
#: Seconds a batch's reply may take before the child is given normal priority.
_PATIENCE = 0.1
_CAP_SYS_NICE = 23  # bit in /proc/self/status CapEff

log = logging.getLogger(__name__)


class WriterProcess:
    """One writer process for one node's chain, driven from the event loop."""

    def __init__(self, url: str, node: str, table: str, key: bytes | None = None) -> None:
        self._args = (url, node, table, key)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._lock = asyncio.Lock()  # one batch at a time: replies are matched to requests by order
        self.yields = can_leave_idle()
        """Whether the child runs at idle priority (only where it can be boosted back)."""
        self.boosted = False

    async def start(self) -> None:
        """Start the child now, so the first records do not wait for it to connect."""
        async with self._lock:
            await self._ensure()

    async def commit(self, packed: list[Any], *, urgent: bool = False) -> tuple[int, int, str]:
        """Commit one batch of packed entries (:class:`gateway.logs.batch.Batch`'s values); returns how many records were written and the
        chain's head after them (seq, hash).  An ``urgent`` batch (answers wait for it) runs at
        normal priority: an idle-priority writer would make every answer wait for idle CPU."""
        async with self._lock:
            reader, writer = await self._ensure()
            if urgent:
                self._prioritise(boost=True, why="answers wait for this batch")
            try:
                writer.write(_frame(packed))
                await writer.drain()
                reply = await self._reply(reader, urgent)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                await self._reap()
                raise WriterError(f"the log writer process stopped ({exc or type(exc).__name__})",
                                  transient=True) from exc
            except asyncio.CancelledError:
                await asyncio.shield(self._reap())  # the reply would answer the next batch otherwise
                raise
        if reply[0] == "ok":
            return int(reply[1]), int(reply[2]), str(reply[3])
        raise WriterError(str(reply[2]), transient=bool(reply[1]))

    async def stop(self) -> None:
        """Close the socket; the child finishes its batch, if any, and exits."""
        async with self._lock:
            await self._reap(_STOP_TIMEOUT)

    async def _reply(self, reader: asyncio.StreamReader, urgent: bool = False) -> Any:
        """The child's reply; boosts the child if it is late, lets it yield again once it is prompt.

        Lateness is one timer callback per batch (no task, ``wait_for`` or shield around the read:
        that was a fifth of the event loop's cost per batch when answers wait for every batch)."""
        late = asyncio.get_running_loop().call_later(_PATIENCE, self._late)
        try:
            reply = await _receive(reader)
        finally:
            late.cancel()
        if self.boosted and not urgent:
            self._prioritise(boost=False)
        return reply

    def _late(self) -> None:
        self._prioritise(boost=True)

    def _prioritise(self, *, boost: bool, why: str | None = None) -> None:
        if not self.yields or self._process is None or self._process.pid is None or boost == self.boosted:
            return
        policy = os.SCHED_OTHER if boost else os.SCHED_IDLE
        try:
            os.sched_setscheduler(self._process.pid, policy, os.sched_param(0))
        except OSError as exc:  # the child just exited: the next batch starts a new one
            log.debug("send/receive log: cannot change the writer's priority: %s", exc)
            return
        self.boosted = boost
        if boost and why is None:
            log.info("send/receive log: the writer was late (> %g s); running it at normal priority", _PATIENCE)
        elif boost:
            log.debug("send/receive log: running the writer at normal priority: %s", why)

    async def _ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The streams to a running child, started (and connected to the store) if need be."""
        if self._streams is not None and self._process is not None and self._process.is_alive():
            return self._streams
        await self._reap()
        parent, child = socket.socketpair()
        self.boosted = False
        process = _CONTEXT.Process(target=_main, args=(child, *self._args, self.yields), daemon=True,
                                   name=f"bmrgw-log-writer-{self._args[1]}")
        try:
            await asyncio.to_thread(process.start)  # talks to the fork server: milliseconds, but blocking
        finally:
            child.close()
        self._process = process
        self._streams = await asyncio.open_unix_connection(sock=parent)
        try:
            reply = await _receive(self._streams[0])
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            await self._reap()
            raise WriterError("the log writer process did not start", transient=True) from exc
        if reply[0] != "ready":
            await self._reap()
            raise WriterError(f"the log writer process cannot reach the store: {reply[2]}", transient=True)
        return self._streams

    async def _reap(self, grace: float = 0.1) -> None:
        """Close the socket and wait ``grace`` seconds for the child to exit before killing it."""
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None
        process, self._process = self._process, None
        if process is not None:
            await asyncio.to_thread(_join, process, grace)


def can_leave_idle() -> bool:
    """Whether this process may move a child back from ``SCHED_IDLE`` to normal priority (sched(7))."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    import resource  # POSIX only: imported here so that bmrgw poll, which imports this module, runs on Windows

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or soft >= 20 or _has_cap_sys_nice()


def _has_cap_sys_nice() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except OSError:
        pass
    return False


def _join(process: multiprocessing.process.BaseProcess, grace: float) -> None:
    process.join(grace)
    if process.is_alive():
        process.kill()
        process.join()


def _frame(message: Any) -> bytes:
    data = marshal.dumps(message)
    return _LENGTH.pack(len(data)) + data


async def _receive(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return marshal.loads(await reader.readexactly(length))


def _read_frame(stream: IO[bytes]) -> Any | None:
    """The child's blocking read of one frame; None when the parent has closed the socket."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    return marshal.loads(data) if len(data) == length else None


def _main(sock: socket.socket, url: str, node: str, table: str, key: bytes | None, idle: bool) -> None:
    """The child: commit each batch it receives, answer, exit when the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    name_process(f"log writer of {node}")
    if idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    tables = TABLES if table == TABLES.log.name else log_tables(table)
    store = Store(url)
    with sock, sock.makefile("rb") as incoming:
        try:
            try:
                store.ping()  # connect (and load the driver) before the first batch
            except Exception as exc:
                sock.sendall(_frame(("error", True, str(exc))))
                return
            sock.sendall(_frame(("ready",)))
            while (packed := _read_frame(incoming)) is not None:
                try:
                    records = unpack_entries(packed)
                    with store.engine.begin() as connection:
                        sealed = append(connection, records, node=node, tables=tables, key=key)
                except Exception as exc:  # every failure goes back to the parent, which decides
                    sock.sendall(_frame(("error", transient(exc), db_reason(exc))))
                else:
                    last = (sealed[-1].seq, sealed[-1].hash) if sealed else (0, "")
                    sock.sendall(_frame(("ok", len(records), *last)))
        except OSError:
            return  # the parent went away mid-reply
        finally:
            store.close()
