"""The send/receive log's writer process: sealing and inserting off the gateway's interpreter.

Capability (G) asks that every exchange be logged; the standard does not
let logging slow the relay down much.  Sealing a record (canonical JSON,
SHA-256 of the chain) and SQLAlchemy's row handling are Python work: in a
thread they hold the GIL the event loop needs, and the measured cost was
40–48 % of the relay's throughput (bench/PROFILE.md).  In a process of its
own they run on the other core; the gateway only packs each record into a
tuple and sends a batch over a socket.  The child runs at the lowest CPU
priority (``SCHED_IDLE``): on a busy machine it takes only CPU that nothing
else wants, and with the bench's load on 2 cores that raised the logged
relay from 0.83 × to 0.94 × the unlogged one.

The gateway's side is asyncio: a batch is written to the socket and the
reply awaited on the event loop itself.  No thread waits on the child, so no
GIL hand-over per batch (that cost about 40 µs of the event loop's time per
relayed exchange when a thread did the waiting).

Protocol: frames of an 8-byte big-endian length and a pickle.  The parent
sends one batch (a list of packed records) and awaits one reply —
``("ok", count)`` once the batch is committed, or ``("error", transient,
reason)``.  The child owns its own engine on the same store URL.  It exits
when the socket closes, so a gateway killed with -9 does not leave it
behind; a child that dies is started again for the next try.  Processes come
from a fork server with this module preloaded: starting one costs
milliseconds, and no thread of the gateway is ever forked.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import socket
import struct
from typing import IO, Any

from .errors import ServerFault

__all__ = ["WriterProcess", "WriterError"]

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["gateway.writer", "gateway.journal", "gateway.chain", "gateway.store"])
_STOP_TIMEOUT = 5.0
_LENGTH = struct.Struct("!Q")


class WriterError(ServerFault, RuntimeError):
    """Raised when the writer process could not commit a batch; ``transient`` says whether to retry."""

    code = "LogUnavailable"

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


class WriterProcess:
    """One writer process for one node's chain, driven from the event loop."""

    def __init__(self, url: str, node: str, table: str) -> None:
        self._args = (url, node, table)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._lock = asyncio.Lock()  # one batch at a time: replies are matched to requests by order

    async def start(self) -> None:
        """Start the child now, so the first records do not wait for it to connect."""
        async with self._lock:
            await self._ensure()

    async def commit(self, packed: list[tuple[Any, ...]]) -> int:
        """Commit one batch of packed records; returns how many were written."""
        async with self._lock:
            reader, writer = await self._ensure()
            try:
                writer.write(_frame(packed))
                await writer.drain()
                reply = await _receive(reader)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                await self._reap()
                raise WriterError(f"the log writer process stopped ({exc or type(exc).__name__})",
                                  transient=True) from exc
            except asyncio.CancelledError:
                await asyncio.shield(self._reap())  # the reply would answer the next batch otherwise
                raise
        if reply[0] == "ok":
            return int(reply[1])
        raise WriterError(str(reply[2]), transient=bool(reply[1]))

    async def stop(self) -> None:
        """Close the socket; the child finishes its batch, if any, and exits."""
        async with self._lock:
            await self._reap(_STOP_TIMEOUT)

    async def _ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The streams to a running child, started (and connected to the store) if need be."""
        if self._streams is not None and self._process is not None and self._process.is_alive():
            return self._streams
        await self._reap()
        parent, child = socket.socketpair()
        process = _CONTEXT.Process(target=_main, args=(child, *self._args), daemon=True,
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


def _join(process: multiprocessing.process.BaseProcess, grace: float) -> None:
    process.join(grace)
    if process.is_alive():
        process.kill()
        process.join()


def _yield_cpu() -> None:
    """Run the child at the lowest CPU priority, so that it never takes a core from the event loop.

    A late batch only grows (and gets cheaper per record); a late event loop
    is a slower relay.  Under sustained overload the queue fills and
    :meth:`gateway.journal.Journal.admit` holds new exchanges back, which
    frees the CPU the writer needs: the gateway then relays at the pace it
    can log.
    """
    try:
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.nice(19)
    except OSError:
        pass  # not allowed here (a locked-down container): normal priority still works


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def _receive(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(length))


def _read_frame(stream: IO[bytes]) -> Any | None:
    """The child's blocking read of one frame; None when the parent has closed the socket."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    return pickle.loads(data) if len(data) == length else None


def _main(sock: socket.socket, url: str, node: str, table: str) -> None:
    """The child: commit each batch it receives, answer, exit when the socket closes."""
    from .journal import TABLES, _reason, _transient, append, log_tables, unpack
    from .store import Store

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    _yield_cpu()
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
                    with store.engine.begin() as connection:
                        append(connection, [unpack(values) for values in packed], node=node, tables=tables)
                except Exception as exc:  # every failure goes back to the parent, which decides
                    sock.sendall(_frame(("error", _transient(exc), _reason(exc))))
                else:
                    sock.sendall(_frame(("ok", len(packed))))
        except OSError:
            return  # the parent went away mid-reply
        finally:
            store.close()
