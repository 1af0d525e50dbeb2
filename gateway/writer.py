"""The send/receive log's writer process: sealing and inserting off the gateway's interpreter.

Capability (G) asks that every exchange be logged; the standard does not
let logging slow the relay down much.  Sealing a record (canonical JSON,
SHA-256 of the chain) and SQLAlchemy's row handling are Python work: in a
thread they hold the GIL the event loop needs, and the measured cost was
40–48 % of the relay's throughput (bench/PROFILE.md).  In a process of its
own they run on the other core; the gateway only packs each record into a
tuple and sends a batch over a pipe.

Protocol: the parent sends one batch (a list of packed records) and waits
for one reply — ``("ok", count)`` once the batch is committed, or
``("error", transient, reason)``.  The child owns its own engine on the same
store URL.  It exits when the pipe closes, so a gateway killed with -9 does
not leave it behind; a child that dies is started again for the next try.
Processes come from a fork server with this module preloaded: starting one
costs milliseconds, and no thread of the gateway is ever forked.
"""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.connection import Connection as Pipe
from typing import Any

from .errors import ServerFault

__all__ = ["WriterProcess", "WriterError"]

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["gateway.writer", "gateway.journal", "gateway.chain", "gateway.store"])
_STOP_TIMEOUT = 5.0


class WriterError(ServerFault, RuntimeError):
    """Raised when the writer process could not commit a batch; ``transient`` says whether to retry."""

    code = "LogUnavailable"

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


class WriterProcess:
    """One writer process for one node's chain; :meth:`commit` is blocking (call it from a thread)."""

    def __init__(self, url: str, node: str, table: str) -> None:
        self._args = (url, node, table)
        self._pipe: Pipe | None = None
        self._process: multiprocessing.process.BaseProcess | None = None

    def start(self) -> None:
        """Start the child now, so the first records do not wait for it to connect."""
        self._ensure()

    def commit(self, packed: list[tuple[Any, ...]]) -> int:
        """Commit one batch of packed records; returns how many were written."""
        pipe = self._ensure()
        try:
            pipe.send(packed)
            reply = pipe.recv()
        except (EOFError, OSError) as exc:
            self._reap()
            raise WriterError(f"the log writer process stopped ({exc or type(exc).__name__})",
                              transient=True) from exc
        if reply[0] == "ok":
            return int(reply[1])
        raise WriterError(str(reply[2]), transient=bool(reply[1]))

    def stop(self) -> None:
        """Close the pipe; the child finishes its batch, if any, and exits."""
        self._reap(_STOP_TIMEOUT)

    def _ensure(self) -> Pipe:
        """The pipe to a running child, started (and connected to the store) if need be."""
        if self._pipe is not None and self._process is not None and self._process.is_alive():
            return self._pipe
        self._reap()
        parent, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(target=_main, args=(child, *self._args), daemon=True,
                                   name=f"bmrgw-log-writer-{self._args[1]}")
        process.start()
        child.close()
        self._pipe, self._process = parent, process
        try:
            reply = parent.recv()
        except (EOFError, OSError) as exc:
            self._reap()
            raise WriterError("the log writer process did not start", transient=True) from exc
        if reply[0] != "ready":
            self._reap()
            raise WriterError(f"the log writer process cannot reach the store: {reply[2]}", transient=True)
        return parent

    def _reap(self, grace: float = 0.1) -> None:
        """Close the pipe and wait ``grace`` seconds for the child to exit before killing it."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._process is not None:
            self._process.join(grace)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            self._process = None


def _main(pipe: Pipe, url: str, node: str, table: str) -> None:
    """The child: commit each batch it receives, answer, exit when the pipe closes."""
    from .journal import TABLES, _reason, _transient, append, log_tables, unpack
    from .store import Store

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    tables = TABLES if table == TABLES.log.name else log_tables(table)
    store = Store(url)
    try:
        try:
            store.ping()  # connect (and load the driver) before the first batch
        except Exception as exc:
            pipe.send(("error", True, str(exc)))
            return
        pipe.send(("ready",))
        while True:
            try:
                packed = pipe.recv()
            except (EOFError, OSError):
                return
            try:
                with store.engine.begin() as connection:
                    append(connection, [unpack(values) for values in packed], node=node, tables=tables)
            except Exception as exc:  # every failure goes back to the parent, which decides
                pipe.send(("error", _transient(exc), _reason(exc)))
            else:
                pipe.send(("ok", len(packed)))
    finally:
        store.close()
