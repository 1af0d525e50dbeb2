"""The relay's fast path as :class:`~gateway.relay.limits.ListenSite` sees it (:mod:`gateway.relay.fast`).

ListenSite puts each connection it admits on the fast path's protocol, counts
those connections against ``max_connections``, runs its header clock on the
heads the fast path takes, and drains them when the gateway stops; these
protocols are all it knows of it (the fast path imports the relay, which the
listening site must not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sized
from typing import Protocol

__all__ = ["Fast", "FastPath"]


class Fast(Protocol):
    """A fast-path connection as ListenSite's header clock sees it (:class:`gateway.relay.fast.FastConnection`)."""

    heads: int
    """Request heads it took."""

    @property
    def idle(self) -> bool:
        """Between requests."""
        ...

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class FastPath(Protocol):
    """The relay's fast path as ListenSite sees it (:class:`gateway.relay.fast.FastPath`)."""

    @property
    def connections(self) -> Sized: ...

    def connection(self, handover: Callable[[bytes], None]) -> Fast: ...

    async def drain(self, timeout: float) -> None: ...
