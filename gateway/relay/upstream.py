"""The relay's one seam to upstreams: POST a body to a route, get a streaming :class:`Reply`.

:class:`Upstream` is one method returning the gateway's own :class:`Reply`
(status, headers, a body read whole or in chunks), so the relay never sees an
aiohttp type and a test can swap the upstream (``AppOptions.upstream``).

aiohttp's client errors are translated here, and only here, into
:class:`~gateway.errors.EndpointUnavailable` and
:class:`~gateway.errors.EndpointTimeout`.  Timeouts follow SPEC.md's
per-endpoint ``timeout``: it bounds the connect, every wait for the endpoint
to take the next chunk of a request body (an endpoint that stops reading an
upload would otherwise hold the request forever: aiohttp starts its read
timer only once the whole body is written), the wait for the first byte of
the answer after the request was sent, and every later gap in the answer —
never the time it takes to upload a big body that keeps moving.

Outbound security (SPEC.md ``endpoints.*.ca|basic``, and ``cert``/``key``
for a client certificate) is applied here too: each distinct
:class:`~routing.config.Outbound` gets one TLS client context and one
Authorization header value, built when a route first uses it after a
config (re)load.  https upstreams are always verified — against ``ca`` when
set, else the system's trust store — and a certificate that does not verify
is an EndpointUnavailable naming the problem, never a silent accept.

A body in memory of at most 64 KiB — the common SOAP message — goes the
pooled fast way of :mod:`gateway.relay.pool` (same parser, limits, timeouts
and faults, without ClientSession's per-call machinery); bigger and streamed
bodies go through aiohttp's ClientSession.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from gateway.errors import EndpointTimeout, EndpointUnavailable, UpstreamError
from routing.outbound import Outbound
from routing.table import Route

from .pool import Pool

__all__ = ["Upstream", "Reply", "HttpUpstream", "HttpReply", "translate", "never_sent", "tls_context"]

#: Distinct outbound settings kept before the cache starts afresh (reloads add new ones).
_MAX_HOPS_CACHED = 4096
#: A body of at most this many bytes is written without waiting for the endpoint to take it (aiohttp
#: waits on the socket above 64 KiB), so it cannot stall; a longer one goes in chunks of this size.
_UNPACED = 64 * 1024


class Reply(Protocol):
    """An upstream's answer, once its headers arrived; reading its body raises only gateway errors."""

    status: int
    reason: str | None
    headers: Mapping[str, str]
    content_length: int | None
    """Declared body length, or ``None`` when the body is chunked or ends with the connection."""

    async def read(self) -> bytes:
        """The whole body (:class:`~gateway.errors.UpstreamError` when it breaks off)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (:class:`~gateway.errors.UpstreamError` when it breaks off)."""
        ...

    def release(self) -> None:
        """Give the connection back (reading the rest) or close it; the reply is done."""
        ...

    def when_released(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the connection is given back or closed."""
        ...


class Upstream(Protocol):
    """Sends one request to a route and returns the reply once its headers arrived."""

    async def post(self, route: Route, headers: Mapping[str, str], body: bytes | AsyncIterable[bytes]) -> Reply: ...

    async def close(self) -> None: ...


def translate(exc: BaseException, route: Route) -> UpstreamError:
    """The gateway error for a failure talking to ``route``."""
    where = {"destination": route.destination, "endpoint": route.endpoint}
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = _verify_message(exc.certificate_error)
        return EndpointUnavailable(f"the TLS certificate of {route.endpoint} is not accepted: {why}",
                                   detail=why, **where)
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        why = _ssl_reason(exc)
        return EndpointUnavailable(f"TLS with {route.endpoint} failed: {why}", detail=why, **where)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return EndpointTimeout(f"{route.endpoint} did not answer within {route.timeout:g} s", **where)
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or str(exc.os_error)
        return EndpointUnavailable(f"cannot connect to {route.endpoint}: {reason}", **where)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return EndpointUnavailable(f"{route.endpoint} closed the connection without answering{_hint(route)}",
                                   **where)
    if isinstance(exc, aiohttp.ClientResponseError):
        return EndpointUnavailable(f"{route.endpoint} sent an invalid HTTP response: {exc.message}", **where)
    return EndpointUnavailable(f"connection to {route.endpoint} failed: {exc}{_hint(route)}", **where)


def never_sent(error: UpstreamError) -> bool:
    """Whether the failure happened before any byte of the request left: only then is a retry safe."""
    return isinstance(error.__cause__, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))


class HttpReply:
    """The :class:`Reply` of :class:`HttpUpstream`: an aiohttp response whose errors are translated here."""

    __slots__ = ("status", "reason", "headers", "content_length", "_response", "_route")

    def __init__(self, response: aiohttp.ClientResponse, route: Route) -> None:
        self.status = response.status
        self.reason = response.reason
        self.headers: Mapping[str, str] = response.headers
        self.content_length = response.content_length
        self._response = response
        self._route = route

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc, self._route) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate(exc, self._route) from exc

    def release(self) -> None:
        self._response.release()

    def when_released(self, callback: Callable[[], None]) -> None:
        connection = self._response.connection
        if connection is None:  # the whole answer is in already
            callback()
        else:
            connection.add_callback(callback)


def _hint(route: Route) -> str:
    # Under TLS 1.3 a server that wants a client certificate refuses only after
    # the handshake, and the client often sees nothing but a reset.
    if route.outbound.cert is None and route.url.startswith("https:"):
        return "; if it requires a TLS client certificate, configure cert and key for it"
    return ""


def _verify_message(error: BaseException) -> str:
    message = getattr(error, "verify_message", None)
    return str(message) if message else str(error)


def _ssl_reason(exc: BaseException) -> str:
    error = getattr(exc, "os_error", exc)
    reason = getattr(error, "reason", None)
    if reason:
        # OpenSSL's reason code, e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED: say it in words.
        return str(reason).lower().replace("_", " ")
    return str(error)


def tls_context(outbound: Outbound) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the upstream and presents ``outbound.cert``."""
    ctx = ssl.create_default_context(cafile=str(outbound.ca) if outbound.ca else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if outbound.cert is not None:
        ctx.load_cert_chain(outbound.cert, outbound.key)
    return ctx


@dataclass(frozen=True)
class _Hop:
    """What one Outbound turns into on the wire, built once."""

    ssl: ssl.SSLContext
    authorization: str | None


def _hop(outbound: Outbound) -> _Hop:
    basic = outbound.basic
    auth = None
    if basic is not None:
        # RFC 7617 with charset=UTF-8: Japanese passwords travel as UTF-8.
        auth = "Basic " + base64.b64encode(f"{basic.user}:{basic.password}".encode()).decode("ascii")
    return _Hop(ssl=tls_context(outbound), authorization=auth)


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
        self._hops: dict[Outbound, _Hop] = {}
        self._pool = Pool(translate)

    async def post(self, route: Route, headers: Mapping[str, str], body: bytes | AsyncIterable[bytes]) -> Reply:
        if isinstance(body, bytes) and len(body) <= _UNPACED:  # the common SOAP message: the pooled fast way
            hop = self._hops.get(route.outbound) or self._new_hop(route.outbound)
            if hop.authorization is not None:
                headers = {**headers, "Authorization": hop.authorization}
            if Pool.takes(route.url, headers):
                return await self._pool.post(route, route.url, headers, body, hop.ssl)
        return HttpReply(await self._send(route, headers, body), route)

    async def _send(
        self, route: Route, headers: Mapping[str, str], body: bytes | AsyncIterable[bytes]
    ) -> aiohttp.ClientResponse:
        url = self._urls.get(route.url) or self._urls.setdefault(route.url, URL(route.url))
        timeout = self._timeouts.get(route.timeout) or self._timeouts.setdefault(
            route.timeout, aiohttp.ClientTimeout(total=None, sock_connect=route.timeout, sock_read=route.timeout))
        deadline: asyncio.Timeout | None = None
        try:
            hop = self._hops.get(route.outbound) or self._new_hop(route.outbound)
            if hop.authorization is not None:
                headers = {**headers, "Authorization": hop.authorization}
            if isinstance(body, bytes) and len(body) <= _UNPACED:
                return await self._session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False, ssl=hop.ssl
                )
            async with asyncio.timeout(None) as deadline:
                paced = _Paced(body, deadline, route.timeout)
                try:
                    return await self._session.post(
                        url, data=paced, headers=headers, timeout=timeout, allow_redirects=False, ssl=hop.ssl
                    )
                finally:
                    paced.settle()
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():  # (not aiohttp's own timeouts)
                raise EndpointTimeout(f"{route.endpoint} took none of the request for {route.timeout:g} s",
                                      destination=route.destination, endpoint=route.endpoint) from exc
            raise translate(exc, route) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise translate(exc, route) from exc

    def _new_hop(self, outbound: Outbound) -> _Hop:
        if len(self._hops) >= _MAX_HOPS_CACHED:
            self._hops.clear()
        hop = self._hops[outbound] = _hop(outbound)
        return hop

    async def close(self) -> None:
        self._pool.close()
        await self._session.close()


class _Paced:
    """A request body as aiohttp writes it upstream, with ``deadline`` set ``seconds`` ahead while each
    chunk is being written (aiohttp asks for the next one once the socket took it) and cleared while
    the caller's next chunk is awaited (``gateway.client_timeout`` bounds that).

    :meth:`settle` ends the deadline's use: the answer came, maybe before the whole body went, and
    the rest goes under the answer's own timeouts.
    """

    def __init__(self, body: bytes | AsyncIterable[bytes], deadline: asyncio.Timeout, seconds: float) -> None:
        self._body = body
        self._deadline: asyncio.Timeout | None = deadline
        self._seconds = seconds

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        async for chunk in _chunks(self._body):
            if self._deadline is not None:
                self._deadline.reschedule(loop.time() + self._seconds)
            yield chunk
            if self._deadline is not None:
                self._deadline.reschedule(None)

    def settle(self) -> None:
        self._deadline = None


async def _chunks(body: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        for start in range(0, len(body), _UNPACED):
            yield body[start:start + _UNPACED]
        return
    async for chunk in body:
        yield chunk


# Public for gateway.api (the HTTP API relay), which sends other methods than POST to a path below
# the endpoint's URL with the same pacing of the request body and the same outbound credentials.
Paced = _Paced
outbound_hop = _hop
