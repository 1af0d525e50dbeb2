"""Limits that keep one slow backend or one busy client from taking the gateway down.

* :class:`Gate` — an endpoint's (or peer's) ``max_concurrent`` requests in
  flight; more wait in a FIFO queue up to ``queue_timeout``, then
  :class:`~gateway.errors.EndpointBusy`.  Each endpoint has its own gate, so
  a slow endpoint at its limit only queues its own traffic.
* :class:`RateLimiter` — ``gateway.limits.client_rate`` requests per second
  per client name (per remote address in open mode), a token bucket of
  ``client_burst``; over it, :class:`~gateway.errors.TooManyRequests` (429)
  with ``Retry-After``.
* :class:`ListenSite` — a listening socket that answers connections beyond
  ``gateway.limits.max_connections`` with 503 ``GatewayBusy`` and closes them.

All limits are per gateway process (``--workers N`` multiplies them by N).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from gateway.errors import EndpointBusy, GatewayBusy, GatewayError, TooManyRequests
from gateway.ns import SoapVersion
from gateway.security.auth import client_of
from gateway.soap import fault_content_type, gateway_fault
from routing.settings import LimitSettings

__all__ = ["Gate", "RateLimiter", "rate_middleware", "ListenSite"]

#: Seconds a refused connection stays open for the caller to read its 503.
_LINGER = 2.0
#: Idle client buckets kept before the full ones are forgotten.
_MAX_BUCKETS = 10_000


class Gate:
    """At most ``limit`` holders at once; the others wait in order, each up to ``timeout`` s."""

    def __init__(self, name: str, limit: int, timeout: float) -> None:
        self.name = name
        self.limit = limit
        self.timeout = timeout
        self.active = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, or raise EndpointBusy after waiting ``timeout`` seconds."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot came just as we gave up: pass it on
            else:
                self._waiters.remove(waiter)
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise EndpointBusy(f"{self.name} already has {self.limit} requests in flight; none finished "
                                   f"within {self.timeout:g} s", endpoint=self.name) from None
            raise

    def release(self) -> None:
        """Give the slot to the longest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1


class RateLimiter:
    """Token buckets per caller: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self.refused = 0

    def take(self, caller: str, settings: LimitSettings) -> None:
        """Spend one token of ``caller``'s bucket, or raise TooManyRequests."""
        rate, burst = settings.client_rate, settings.burst
        if rate is None:
            return
        now = self._clock()
        tokens, at = self._buckets.get(caller, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1:
            self._buckets[caller] = (tokens, now)
            self.refused += 1
            wait = math.ceil((1 - tokens) / rate)
            raise TooManyRequests(f"{caller} sends more than {rate:g} requests per second; retry in {wait} s",
                                  detail=str(wait))
        if len(self._buckets) >= _MAX_BUCKETS and caller not in self._buckets:
            self._forget_full(now, rate, burst)
        self._buckets[caller] = (tokens - 1, now)

    def _forget_full(self, now: float, rate: float, burst: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * rate >= burst]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]


Fault = Callable[[web.Request, GatewayError], web.Response]
#: Records a refusal in the send/receive log: (request, error, client name or None).
Refused = Callable[[web.Request, GatewayError, str | None], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rate_middleware(limiter: RateLimiter, settings: Callable[[], LimitSettings], fault: Fault,
                    refused: Refused) -> Any:
    """Refuse a caller's POSTs over its rate with 429 (and log it); runs after authentication, so it knows the client."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST":
            client = client_of(request)
            caller = f"client {client.name}" if client is not None else f"address {request.remote}"
            try:
                limiter.take(caller, settings())
            except TooManyRequests as exc:
                response = fault(request, exc)
                response.headers["Retry-After"] = exc.detail or "1"
                await refused(request, exc, client.name if client is not None else None)
                return response
        return await handler(request)

    return middleware


class _Refusal(asyncio.Protocol):
    """Answers one connection over the limit with 503 GatewayBusy, then closes it.

    What the caller sends is read and dropped until it closes (or for
    :data:`_LINGER` s): closing with unread bytes would reset the connection,
    and the caller might never see the answer.
    """

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        stream.write(self._answer)
        asyncio.get_running_loop().call_later(_LINGER, stream.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # close our side too


def busy_answer(gateway: str, limit: int) -> bytes:
    """The raw HTTP 503 a connection over ``max_connections`` gets."""
    error = GatewayBusy(f"gateway {gateway} already holds {limit} connections; try again shortly")
    body = gateway_fault(error, SoapVersion.V11, gateway=gateway)
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {fault_content_type(SoapVersion.V11)}\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\nServer: bmrgw\r\n\r\n")
    return head.encode("ascii") + body


class ListenSite(web.BaseSite):
    """Serves the runner on a ready socket; connections beyond ``limit()`` are refused politely."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, ssl_context: ssl.SSLContext | None,
                 limit: Callable[[], int | None], answer: Callable[[int], bytes]) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._limit = limit
        self._answer = answer
        self.refused = 0

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            limit = self._limit()
            if limit is not None and len(server.connections) >= limit:
                self.refused += 1
                return _Refusal(self._answer(limit))
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, sock=self._sock, ssl=self._ssl_context,
                                                backlog=self._backlog)
