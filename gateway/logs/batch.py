"""One group-commit batch of the send/receive log, as the event loop fills it.

The relay logs an exchange thousands of times a second, and every answer
waits for its records to be durable (SPEC.md Version 2).  What that may cost
the event loop per exchange is the values themselves: a batch is one flat
list that a relayed exchange's 23 values are *appended* to
(:class:`~gateway.logs.records.RelayExchange`, ``list.extend``: no tuple,
queue item or future is made for it) and that goes to the writer process as
it is (``marshal`` dumps it in C).  Other entries — a handful per JX
operation or file part, an API relay's exchange — are appended as one packed tuple each
(:func:`~gateway.logs.records.pack`); the writer tells the two apart by
type (a packed record is a tuple, an exchange's first value a float).

Callers who wait for durability (the relay, before the last bytes of an
answer leave) each get a future that the batch resolves once, when its
commit is answered; the batch also carries the one timer that bounds the
wait (:attr:`Batch.expiry`), so a caller needs no timer of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .records import Entry, RelayExchange, pack, unpack_entry

__all__ = ["Batch", "EXCHANGE_SIZE", "entries_of", "parts_of"]

#: Values of one relayed exchange in a batch's flat list.
EXCHANGE_SIZE = len(RelayExchange._fields)


class Batch:
    """Entries that go to the writer as one transaction, and who waits for them."""

    __slots__ = ("values", "count", "waiters", "positions", "expiry")

    def __init__(self) -> None:
        self.values: list[Any] = []
        """The entries packed flat: a relayed exchange's values, or a packed record's tuple."""
        self.count = 0
        """How many entries (an exchange is one entry, of two records)."""
        self.waiters: list[asyncio.Future[bool]] = []
        self.positions: list[int] = []
        """The entry each waiter waits for (its index among the batch's entries)."""
        self.expiry: asyncio.TimerHandle | None = None

    def add(self, entry: Entry) -> int:
        """Append ``entry``; returns its index in the batch."""
        if type(entry) is RelayExchange:  # the hot path: its values, straight into the list
            self.values.extend(entry)
        else:
            self.values.append(pack(entry))
        self.count += 1
        return self.count - 1

    def wait(self, loop: asyncio.AbstractEventLoop, index: int) -> asyncio.Future[bool]:
        """A future for entry ``index`` that turns True once it is committed, False if it never will be."""
        done = loop.create_future()
        self.waiters.append(done)
        self.positions.append(index)
        return done

    def settle(self, durable: bool) -> int:
        """Resolve every waiter still open; returns how many were."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        settled = 0
        for done in self.waiters:
            if not done.done():
                done.set_result(durable)
                settled += 1
        return settled

    def settle_each(self, committed: list[bool]) -> None:
        """Resolve each waiter by its own entry's outcome (after a batch was split to find a refused record)."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        for done, index in zip(self.waiters, self.positions, strict=True):
            if not done.done():
                done.set_result(committed[index])


def parts_of(values: list[Any]) -> list[list[Any]]:
    """A batch's flat values cut into one list per entry (to isolate a record the store refuses)."""
    parts: list[list[Any]] = []
    at = 0
    while at < len(values):
        if isinstance(values[at], tuple):
            parts.append([values[at]])
            at += 1
        else:
            parts.append(values[at:at + EXCHANGE_SIZE])
            at += EXCHANGE_SIZE
    return parts


def entries_of(values: list[Any]) -> list[Entry]:
    """The entries of flat values again (for the process log, when they cannot be logged where they belong)."""
    return [unpack_entry(part[0]) if isinstance(part[0], tuple) else RelayExchange._make(part) for part in parts_of(values)]
