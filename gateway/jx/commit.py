"""Group commit of PutDocuments: the puts that arrive while one commit is being flushed to disk
are committed together in the next transaction — one disk flush (and one lock on the log's
chain head) for all of them instead of one each.

There is no committer thread: the first put thread to take the leader lock commits every put
waiting at that moment (its own among them) and then hands the lock on; a thread that finds
its put already committed by an earlier leader just returns.  A put's outcome is its own: one
refused (quota, a message id already taken) does not refuse the others of its transaction.
A put does not answer before the transaction holding it has committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.logs.records import LogRecord

from ..errors import DocumentStoreError
from .documents import NewDocument

__all__ = ["Pending", "GroupCommit"]


@dataclass(eq=False, kw_only=True)
class Pending:
    """One put waiting for its transaction: its row's values, its bytes for ``jx_blob`` (when they
    live in the database), its log record, and once committed its outcome."""

    new: NewDocument
    size: int
    sha256: str
    blob: str | None
    parts: list[bytes] | None
    record: LogRecord | None
    error: BaseException | None = None
    """Why this put was refused (set by the commit), or why the whole transaction failed."""
    done: threading.Event = field(default_factory=threading.Event)


class GroupCommit:
    """Commits waiting puts in batches through ``commit`` (which sets each refused put's ``error``
    and raises only when the transaction as a whole failed)."""

    def __init__(self, commit: Callable[[list[Pending]], None], *, timeout: float = 60.0,
                 most: int = 256) -> None:
        self._commit = commit
        self._timeout = timeout
        self._most = most
        self._queue: list[Pending] = []
        self._guard = threading.Lock()
        self._leader = threading.Lock()

    def submit(self, item: Pending) -> None:
        """Commit ``item`` (with whatever else is waiting); raises its refusal or the transaction's failure."""
        with self._guard:
            self._queue.append(item)
        while not item.done.is_set():
            if not self._leader.acquire(timeout=self._timeout):
                raise DocumentStoreError(f"cannot store the document: no commit in {self._timeout:g} s")
            try:
                if item.done.is_set():
                    break  # an earlier leader committed it
                with self._guard:
                    batch, self._queue = self._queue[:self._most], self._queue[self._most:]
                self._run(batch)
            finally:
                self._leader.release()
        if item.error is not None:
            raise item.error

    def _run(self, batch: list[Pending]) -> None:
        try:
            self._commit(batch)
        except BaseException as exc:
            # Each put thread raises an error of its own (one exception object is never raised in two).
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            for each in batch:
                if each.error is None:
                    each.error = DocumentStoreError(f"cannot store the document: {reason}")
            if not isinstance(exc, Exception):
                raise
        finally:
            for each in batch:
                each.done.set()
