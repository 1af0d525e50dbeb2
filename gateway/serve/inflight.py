"""aiohttp's handlers running now, so that a stop can cut them at the one drain deadline.

aiohttp's ``Server.shutdown(timeout)`` waits ``timeout`` for a handler, then
cancels only the request's body and waits ``timeout`` again before it
cancels the handler: an exchange waiting for its endpoint (not reading its
body) held a stop for twice ``gateway.drain_timeout``.  Handlers run
through :meth:`InFlight.middleware` are cancelled at the deadline instead, as the
fast path's exchanges are (:meth:`gateway.relay.fast.FastPath.drain`); each
then logs its exchange as cut off, as it would at aiohttp's own cancel.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["InFlight"]


class InFlight:
    """The tasks of the requests being handled; :meth:`middleware` adds and removes them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def middleware(self) -> Middleware:
        """The outermost middleware of the app (insert it first)."""
        tasks = self._tasks

        @web.middleware
        async def tracked(request: web.Request, handler: Handler) -> web.StreamResponse:
            task = request.task
            tasks.add(task)
            try:
                return await handler(request)
            finally:
                tasks.discard(task)

        return tracked

    def cut(self) -> None:
        """Cancel every request still being handled (the drain deadline has come)."""
        for task in list(self._tasks):
            task.cancel()
