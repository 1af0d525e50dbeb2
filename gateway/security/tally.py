"""Refused logins that cost no password check, logged as counts per address (issue 17).

SPEC.md "Hostile input never stalls the gateway": password checks of
unknown or wrong credentials must not slow the service down for
authenticated clients.  The throttle and the bounded check pool turn most
of a wrong-password flood away before any hashing
(:mod:`gateway.security.auth`), but each refusal used to be one
send/receive-log record, and an honest exchange's answer waits until the
batch its records are committed in is durable: a flood of thousands of
refusals a second put their commits in front of every honest answer.

So a refusal answered without a password check — throttled
(``TooManyRequests``), check pool full (``GatewayBusy``), no or malformed
credentials or an unknown certificate (``Unauthorized``) — is counted here,
per caller address and fault, and :data:`TALLY_SECONDS` after the first
one of an interval the count goes to the log as one record:

- ``kind``: ``auth-tally``; ``direction`` ``request``; ``status`` ``fault``;
- ``endpoint``: the caller's address (what the count is about);
- ``client``: who the first refused request of the interval claimed to be
  (``user:NAME`` or ``cert:SUBJECT``);
- ``bytes_in``: the number of requests refused (in this kind, a count, not bytes);
- ``ts``: the first refusal; ``duration_ms``: from the first to the last;
- ``http_status`` and ``fault_code``: the refusal's.

A refusal after a real password check keeps a record of its own.  Every
refused login is thus accounted for, as itself or in a count.  At shutdown
(``on_shutdown``, before the log closes) every open count is written, and
refusals after that are recorded one by one.  Counts still open when the
process is killed (-9) are lost: at most :data:`TALLY_SECONDS` of refusals
that never reached a password check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from gateway.errors import GatewayError, JournalUnavailable
from gateway.keys import CLOCK, JOURNAL
from gateway.logs.clock import Now
from gateway.logs.journal import Journal
from gateway.logs.records import LogRecord

__all__ = ["RefusalTally", "TALLY_SECONDS", "TALLY_KIND", "prompt_record"]

log = logging.getLogger(__name__)

#: Seconds one count covers, from the first refusal it holds.
TALLY_SECONDS = 10.0
#: ``kind`` of the log records that carry counts.
TALLY_KIND = "auth-tally"
#: Counts held at once; beyond, the oldest is written early (memory stays bounded under any flood).
MAX_COUNTS = 10_000
#: How often open counts are looked at for writing.
_SWEEP = 1.0


async def prompt_record(journal: Journal, entry: LogRecord) -> None:
    """Queue a refusal's record so that its batch is committed at once, at normal priority; wait for nothing.

    A batch nobody waits for runs in the writer at idle priority
    (:mod:`gateway.logs.writer`); on a busy machine it takes long, and an
    honest exchange whose records arrive meanwhile waits behind it before its
    answer may leave.  Refusals come in floods, so their batches must not be
    idle-priority ones.  The refusal's answer does not wait for its record
    (nothing to hold back: no exchange happened), only the batch is prompt.
    """
    await journal.record(entry, durable=True)


@dataclass(eq=False)
class _Count:
    first: Now
    started: float
    last: float
    claimed: str | None
    http_status: int
    count: int = 1


class RefusalTally:
    """Counts unchecked login refusals per (address, fault) and writes each count once per interval."""

    def __init__(self, app: web.Application, *, seconds: float = TALLY_SECONDS) -> None:
        self._app = app
        self._seconds = seconds
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def install(self) -> None:
        """Sweep while the app runs; write every open count when it shuts down (before the log closes)."""
        self._app.on_startup.append(self._start)
        self._app.on_shutdown.append(self._stop)

    async def add(self, request: web.Request, error: GatewayError, claimed: str | None) -> None:
        """Count one refusal of ``request`` (written on its own once the tally has shut down)."""
        address = request.remote or "-"
        if self._closed:
            await self._write(address, error.code, self._new(error, claimed))
            return
        key = (address, error.code)
        found = self._counts.get(key)
        if found is not None:
            found.count += 1
            found.last = time.monotonic()
            return
        self._counts[key] = self._new(error, claimed)
        if len(self._counts) > MAX_COUNTS:
            (old_address, code), oldest = self._counts.popitem(last=False)
            await self._write(old_address, code, oldest)

    def _new(self, error: GatewayError, claimed: str | None) -> _Count:
        now = time.monotonic()
        return _Count(first=self._app[CLOCK].now(), started=now, last=now, claimed=claimed,
                      http_status=error.http_status)

    async def _start(self, _app: web.Application) -> None:
        self._task = asyncio.create_task(self._sweep(), name="refusal-tally")

    async def _stop(self, _app: web.Application) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush(everything=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP)
            await self.flush()

    async def flush(self, *, everything: bool = False) -> None:
        """Write the counts whose interval is over (``everything``: all of them)."""
        due = time.monotonic() - self._seconds
        ready = [key for key, count in self._counts.items() if everything or count.started <= due]
        for key in ready:
            await self._write(*key, self._counts.pop(key))

    async def _write(self, address: str, code: str, count: _Count) -> None:
        journal = self._app.get(JOURNAL)
        if journal is None:
            return
        entry = LogRecord.at(count.first, kind=TALLY_KIND, direction="request", status="fault",
                             endpoint=address[:256], client=count.claimed, http_status=count.http_status,
                             fault_code=code, bytes_in=count.count,
                             duration_ms=1000.0 * (count.last - count.started))
        try:
            await prompt_record(journal, entry)
        except JournalUnavailable as exc:
            log.error("send/receive log unavailable (%s); refused logins not logged: %s", exc.reason,
                      entry.to_json())
