"""The relay's one seam to upstreams: POST a body to a route, get a streaming reply.

aiohttp's client errors are translated here, and only here, into
:class:`~gateway.errors.EndpointUnavailable` and
:class:`~gateway.errors.EndpointTimeout`.  Timeouts follow SPEC.md's
per-endpoint ``timeout``: it bounds the connect, the wait for the first byte
of the answer after the request was sent, and every later gap in the answer —
never the time it takes to upload a big body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Mapping
from typing import Protocol

import aiohttp
from yarl import URL

from routing.table import Route

from .errors import EndpointTimeout, EndpointUnavailable, UpstreamError

__all__ = ["Upstream", "HttpUpstream", "translate"]


class Upstream(Protocol):
    """Sends one request to a route and returns the reply once its headers arrived."""

    async def post(
        self, route: Route, headers: Mapping[str, str], body: bytes | AsyncIterable[bytes]
    ) -> aiohttp.ClientResponse: ...

    async def close(self) -> None: ...


def translate(exc: BaseException, route: Route) -> UpstreamError:
    """The gateway error for a failure talking to ``route``."""
    where = {"destination": route.destination, "endpoint": route.endpoint}
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return EndpointTimeout(f"{route.endpoint} did not answer within {route.timeout:g} s", **where)
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return EndpointUnavailable(f"cannot connect to {route.endpoint}: {reason}", **where)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return EndpointUnavailable(f"{route.endpoint} closed the connection without answering", **where)
    if isinstance(exc, aiohttp.ClientResponseError):
        return EndpointUnavailable(f"{route.endpoint} sent an invalid HTTP response: {exc.message}", **where)
    return EndpointUnavailable(f"connection to {route.endpoint} failed: {exc}", **where)


class HttpUpstream:
    """The aiohttp implementation: one pooled client session for all routes."""

    def __init__(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=15),
            # Bodies pass through as they are: no decompression, no cookies kept
            # between callers, no headers the caller did not send.
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        # Parsed once per distinct value: URL parsing and timeout objects are
        # measurable on the hot path of small messages.
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def post(
        self, route: Route, headers: Mapping[str, str], body: bytes | AsyncIterable[bytes]
    ) -> aiohttp.ClientResponse:
        url = self._urls.get(route.url) or self._urls.setdefault(route.url, URL(route.url))
        timeout = self._timeouts.get(route.timeout) or self._timeouts.setdefault(
            route.timeout, aiohttp.ClientTimeout(total=None, sock_connect=route.timeout, sock_read=route.timeout))
        try:
            return await self._session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise translate(exc, route) from exc

    async def close(self) -> None:
        await self._session.close()
