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
  ``gateway.limits.max_connections`` (or ``max_connections_per_address``) with
  503 ``GatewayBusy`` (problem details when the request line says ``/api``)
  and closes them, and closes a connection that has not sent its request
  headers within ``gateway.header_timeout`` (SPEC.md "Version 2" →
  "Hostile input never stalls the gateway").

All limits are per gateway process (``--workers N`` multiplies them by N).
"""

from __future__ import annotations

import asyncio
import ipaddress
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

from .front import Fast, FastPath

__all__ = ["Gate", "RateLimiter", "rate_middleware", "ListenSite", "busy_error", "busy_answer", "address_of",
           "api_request", "API_HEAD"]

#: Connections the kernel completes and queues for accept while the gateway is busy (it caps this at
#: net.core.somaxconn). aiohttp's default of 128 made a burst of 500 callers on a busy gateway lose
#: the rest: their handshakes were dropped and their requests reset (nginx: 511).
BACKLOG = 4096

#: Seconds a refused connection stays open for the caller to read its 503.
_LINGER = 2.0
#: Seconds a refused connection's answer waits for the start of its request line (/api or not).
_SNIFF = 1.0
#: Bytes of a request line read to tell an /api request (the longest method and "/api/" fit).
API_HEAD = 64
_METHOD = 20
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
        short = self._spend(caller, settings)
        if short is None:
            return
        tokens, now = short
        rate = settings.client_rate
        assert rate is not None
        self._buckets[caller] = (tokens, now)
        self.refused += 1
        wait = math.ceil((1 - tokens) / rate)
        raise TooManyRequests(f"{caller} sends more than {rate:g} requests per second; retry in {wait} s",
                              detail=str(wait))

    def spend(self, caller: str, settings: LimitSettings) -> bool:
        """Spend one token of ``caller``'s bucket if it has one; ``False`` (and nothing changed) if not."""
        return self._spend(caller, settings) is None

    def _spend(self, caller: str, settings: LimitSettings) -> tuple[float, float] | None:
        """Spend a token; or, when there is none, the bucket's tokens and the time they were counted."""
        rate, burst = settings.client_rate, settings.burst
        if rate is None:
            return None
        now = self._clock()
        tokens, at = self._buckets.get(caller, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1:
            return tokens, now
        if len(self._buckets) >= _MAX_BUCKETS and caller not in self._buckets:
            self._forget_full(now, rate, burst)
        self._buckets[caller] = (tokens - 1, now)
        return None

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
    """Answers one connection over a limit with 503 GatewayBusy, then closes it.

    The answer waits for the first bytes of the request line, no more than
    :data:`API_HEAD` of them and :data:`_SNIFF` s: a request for ``/api``
    gets problem details, any other (or one that says nothing in time) the
    SOAP fault.  What the caller sends is read and dropped until it closes
    (or for :data:`_LINGER` s): closing with unread bytes would reset the
    connection, and the caller might never see the answer.
    """

    def __init__(self, answer: Callable[[bool], bytes]) -> None:
        self._answer = answer
        self._head: bytes | None = b""
        self._transport: asyncio.Transport | None = None
        self._timers: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        loop = asyncio.get_running_loop()
        self._timers = [loop.call_later(_SNIFF, self._reply, False), loop.call_later(_LINGER, stream.close)]

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            return
        self._head += data[:API_HEAD - len(self._head)]
        api = api_request(self._head)
        if api is not None or len(self._head) >= API_HEAD:
            self._reply(bool(api))

    def eof_received(self) -> bool:
        self._reply(False)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._head = None
        for timer in self._timers:
            timer.cancel()

    def _reply(self, api: bool) -> None:
        if self._head is None or self._transport is None:
            return
        self._head = None
        self._transport.write(self._answer(api))


def api_request(head: bytes) -> bool | None:
    """Whether the request whose first bytes are ``head`` is for ``/api`` (origin form: ``GET /api/…``);
    ``None`` while too few have come to tell.  Nothing but a method of letters and a target that starts
    with ``/api/``, ``/api?`` or ``/api `` counts: whatever cannot be read as that is not an API request."""
    method, space, target = head.partition(b" ")
    if not space:
        return None if len(method) <= _METHOD and (not method or method.isalpha()) else False
    if not method.isalpha() or len(method) > _METHOD:
        return False
    for prefix in (b"/api/", b"/api?", b"/api "):
        if target.startswith(prefix):
            return True
    return None if b"/api/".startswith(target) else False


def busy_error(gateway: str, limit: int, address: str | None = None) -> GatewayBusy:
    """What refuses a connection over ``max_connections`` (or, with ``address``, over
    ``max_connections_per_address``)."""
    held = f"{limit} connections" if address is None else f"{limit} connections from {address}"
    return GatewayBusy(f"gateway {gateway} already holds {held}; try again shortly")


def busy_answer(gateway: str, limit: int, address: str | None = None) -> bytes:
    """The raw HTTP 503 SOAP fault of :func:`busy_error`."""
    error = busy_error(gateway, limit, address)
    body = gateway_fault(error, SoapVersion.V11, gateway=gateway)
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {fault_content_type(SoapVersion.V11)}\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\nServer: bmrgw\r\n\r\n")
    return head.encode("ascii") + body


def address_of(peer: Any) -> str:
    """The remote address a per-address cap counts: IPv4 as it is, IPv6 by its /64 (one host is
    usually given a whole /64, so counting single IPv6 addresses would cap nobody)."""
    try:
        ip = ipaddress.ip_address(peer[0])
    except (TypeError, IndexError, ValueError):
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _between_requests(handler: web.RequestHandler) -> bool:
    """Whether aiohttp's handler waits for the next request of its connection (the test aiohttp's
    own keep-alive timer makes, RequestHandler._process_keepalive: nothing public tells it)."""
    waiter = handler._waiter
    return waiter is not None and not waiter.done()


class _Guarded(asyncio.Protocol):
    """One client connection: aiohttp's request handler behind the header clock and the per-address cap.

    The header clock starts when the connection is accepted — before a TLS
    handshake, which it includes — and stops when aiohttp has parsed a whole
    request head.  After an answer it starts again at the first byte of the
    next request.  Bytes arriving never move it, so headers trickled a byte
    at a time are cut off like silence.  An expired connection is aborted
    without an answer (nginx does the same): whoever sends nothing reads nothing.
    An idle keep-alive connection is aiohttp's to close (``keepalive_timeout``).
    """

    def __init__(self, site: ListenSite, timeout: float) -> None:
        self._site = site
        self._fast: Fast | None = None
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._clock: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._expire)
        self._expired = False
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | Fast | None = None
        self._handler: web.RequestHandler | None = None
        self._address: str | None = None
        self._heads = 0
        """Request heads aiohttp had parsed when the clock last stopped."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream = cast(asyncio.Transport, transport)
        if self._expired:  # the TLS handshake alone took the whole header timeout
            stream.abort()
            return
        address = address_of(stream.get_extra_info("peername"))
        refusal = self._site.admit(address)
        if refusal is not None:
            self._stop()
            self._inner = _Refusal(refusal)
        elif self._site.fast is not None:
            self._address = address
            self._inner = self._fast = self._site.fast.connection(self._handover)
        else:
            self._address = address
            self._inner = self._handler = self._site.handler()
        self._inner.connection_made(stream)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        fast = self._fast
        if fast is not None:
            fast.data_received(data)
            if self._fast is not fast:  # handed over to aiohttp's handler (see _handover)
                return
            if fast.heads != self._heads:  # the fast path took a whole request head
                self._heads = fast.heads
                self._stop()
            elif self._clock is None and fast.idle:  # the first bytes of a follow-up
                self._clock = self._loop.call_later(self._timeout, self._expire)
            return
        self._inner.data_received(data)
        self._watch()

    def _handover(self, rest: bytes) -> None:
        """The fast path gives the connection, with the bytes not yet answered, to aiohttp's handler."""
        assert self._transport is not None
        self._fast = None
        self._heads = 0
        self._inner = self._handler = handler = self._site.handler()
        handler.connection_made(self._transport)
        if rest:
            handler.data_received(rest)
            if handler._request_count == 0 and self._clock is None:  # a new head begins: time it
                self._clock = self._loop.call_later(self._timeout, self._expire)
        self._watch()

    def _watch(self) -> None:
        """The header clock after aiohttp's handler took bytes."""
        handler = self._handler
        if handler is None:
            return
        if handler._request_count != self._heads:  # aiohttp parsed a whole request head
            self._heads = handler._request_count
            self._stop()
        elif self._clock is None and _between_requests(handler):  # the first bytes of a follow-up
            self._clock = self._loop.call_later(self._timeout, self._expire)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        if self._address is not None:
            self._site.release(self._address)
            self._address = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def _stop(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _expire(self) -> None:
        self._clock = None
        self._expired = True
        if self._fast is not None:
            if self._fast.heads == self._heads and self._transport is not None:
                self._site.timed_out()
                self._transport.abort()
            return
        handler = self._handler
        if self._transport is None or handler is None:
            return  # still in the TLS handshake: ssl_handshake_timeout ends it, or connection_made will
        if handler._request_count == self._heads:
            self._site.timed_out()
            self._transport.abort()  # not close(): a TLS peer that ignores close_notify would hold it on


class ListenSite(web.BaseSite):
    """Serves the runner on a ready socket: connections beyond ``limits().max_connections`` or
    ``max_connections_per_address`` are refused politely, and each must send its request headers
    within ``header_timeout`` seconds (see :class:`_Guarded`)."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, ssl_context: ssl.SSLContext | None,
                 limits: Callable[[], LimitSettings], answer: Callable[[int, str | None, bool], bytes],
                 header_timeout: float, timed_out: Callable[[], None] = lambda: None,
                 handler: Callable[[web.Server], web.RequestHandler] | None = None,
                 fast: FastPath | None = None, drain_timeout: float = 0.0,
                 cut: Callable[[], None] = lambda: None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=BACKLOG)
        self._cut = cut
        """Cancels aiohttp's handlers still running at the drain deadline (:mod:`gateway.serve.inflight`)."""
        self.fast = fast
        """The relay's fast path (:mod:`gateway.relay.fast`), which takes each connection first; or none."""
        self._drain_timeout = drain_timeout
        self._sock = sock
        self._limits = limits
        self._answer = answer
        self._handler = handler
        self._header_timeout = header_timeout
        self.timed_out = timed_out
        self._per_address: dict[str, int] = {}
        self.refused = 0

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    def handler(self) -> web.RequestHandler:
        """A new aiohttp request handler of the runner's server (``handler``'s, when given)."""
        server = self._runner.server
        assert server is not None
        return self._handler(server) if self._handler is not None else server()

    def admit(self, address: str) -> Callable[[bool], bytes] | None:
        """Count a connection from ``address``; or, when it is over its cap, the answer that refuses it
        (given whether the request is for /api)."""
        held = self._per_address.get(address, 0)
        cap = self._limits().max_connections_per_address
        if cap is not None and held >= cap:
            self.refused += 1
            return lambda api: self._answer(cap, address, api)
        self._per_address[address] = held + 1
        return None

    def release(self, address: str) -> None:
        held = self._per_address.pop(address) - 1
        if held:
            self._per_address[address] = held

    async def stop(self) -> None:
        """Stop listening; then the fast path's connections and aiohttp's drain together: each exchange in
        flight gets up to ``drain_timeout``, one deadline for both paths, and is cut off at it.

        aiohttp's runner would close its idle connections and wait for its handlers only after every
        site had stopped (so after the fast path's drain), and cancel a handler only after a second
        ``drain_timeout``; here its steps are taken at once (a turn of the loop, idle connections
        closed, handlers waited for) and ``cut`` cancels its handlers at the deadline.  The runner's
        own pass then finds no connection left."""
        await super().stop()
        server = self._runner.server
        draining = [] if self.fast is None else [self.fast.drain(self._drain_timeout)]
        if server is not None:
            await asyncio.sleep(0)  # requests accepted before the listener closed start to be handled
            server.pre_shutdown()
            draining.append(server.shutdown(self._drain_timeout))
        deadline = asyncio.get_running_loop().call_later(self._drain_timeout, self._cut)
        try:
            await asyncio.gather(*draining)
        finally:
            deadline.cancel()

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            limit = self._limits().max_connections
            held = len(server.connections) + (len(self.fast.connections) if self.fast is not None else 0)
            if limit is not None and held >= limit:
                self.refused += 1
                return _Refusal(lambda api: self._answer(limit, None, api))
            return _Guarded(self, self._header_timeout)

        loop = asyncio.get_running_loop()
        # Under TLS the handshake is part of the header phase; and a peer that will not answer our
        # close_notify gets no longer than that either (asyncio's defaults are 60 and 30 s).
        tls = self._header_timeout if self._ssl_context is not None else None
        self._server = await loop.create_server(protocol, sock=self._sock, ssl=self._ssl_context,
                                                backlog=self._backlog, ssl_handshake_timeout=tls,
                                                ssl_shutdown_timeout=tls)
