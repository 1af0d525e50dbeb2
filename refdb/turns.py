"""How many ``/refdb`` requests are worked on at once (``refdb.max_concurrent``), and what the rest get.

Each request works in a thread of its own; a request waits here, holding no
thread, until one of the turns is free, and after ``refdb.queue_timeout`` it
is answered :class:`~gateway.errors.GatewayBusy` — so a flood of slow callers
cannot pile up threads.
"""

from __future__ import annotations

import asyncio

from gateway.errors import GatewayBusy

from .config import RefdbSettings

__all__ = ["Turns"]


class Turns:
    """The turns of ``refdb.max_concurrent``; a reload that changes it starts a new count."""

    def __init__(self, settings: RefdbSettings) -> None:
        self._size = settings.max_concurrent
        self._free = asyncio.Semaphore(self._size)

    async def take(self, settings: RefdbSettings) -> asyncio.Semaphore:
        """Wait for a turn; returns what to release it on (requests holding an old count keep theirs)."""
        if self._size != settings.max_concurrent:
            self._size, self._free = settings.max_concurrent, asyncio.Semaphore(settings.max_concurrent)
        free = self._free
        try:
            async with asyncio.timeout(settings.queue_timeout):
                await free.acquire()
        except TimeoutError:
            raise GatewayBusy(f"the reference DB is working on {settings.max_concurrent} requests and none ended "
                              f"within {settings.queue_timeout:g} s; try again later",
                              detail="refdb.max_concurrent") from None
        return free
