"""The relay's fast way upstream: small bodies over pooled keep-alive connections, without ClientSession.

Profiling the 1 KiB relay (bench/PROFILE.md) put a fifth of the gateway's
CPU in ``ClientSession._request`` and what it builds per call — a
``ClientRequest`` with its URL, auto-headers, payload object and writer, a
``ClientResponse``, a connector lookup, trace and timer contexts — for what a
pass-through proxy needs as one ``write`` and one parse.  :class:`Pool` does
just that for a body already in memory of at most 64 KiB (the common SOAP
message; bigger and streamed bodies keep :class:`~gateway.relay.upstream.HttpUpstream`'s
aiohttp path, with its pacing):

* one list of idle keep-alive connections per (scheme, host, port, TLS
  context), most recently used first, dropped after ``IDLE_SECONDS``;
* the request head and body serialised into one ``bytes`` and written once;
* the answer parsed by the very protocol object aiohttp's connector uses
  (:class:`aiohttp.client_proto.ResponseHandler`, llhttp in C), with the same
  limits (8190-byte lines and fields, 128 headers), the same read timeout
  (the route's ``timeout`` for the first byte and every later gap) and the same
  exceptions — so an endpoint's malformed or smuggling answer (duplicate
  ``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``, bad
  chunking) fails exactly as it did, and :func:`~gateway.relay.upstream.translate`
  turns every failure into the same gateway fault with the same words.

A connection goes back to the pool only when its answer was read to the end
and neither side asked to close it; anything else closes it.

Any method can be sent (the HTTP API relay's GET, PUT, PATCH, DELETE too).
A keep-alive connection the endpoint closed while idle is never written to
when the close was seen (``is_connected``): a new connection is opened, for
any method.  When the close crosses the request — the connection drops with
nothing of the answer read — the request is sent once more on a fresh
connection only for an idempotent method (RFC 9112 §9.3.1), which is
aiohttp's own rule (``ClientSession._request``: ``IDEMPOTENT_METHODS``, one
retry on ``ServerDisconnectedError``/``ClientOSError``, never after a
connect failure); a POST or PATCH that may have arrived is never sent twice.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.http import HttpProcessingError, RawResponseMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

from gateway.errors import EndpointUnavailable, UpstreamError
from routing.table import Route

__all__ = ["Pool", "PooledReply", "IDLE_SECONDS", "MAX_IDLE", "IDEMPOTENT"]

#: An idle connection older than this is closed rather than reused (aiohttp's connector: 15 s).
IDLE_SECONDS = 15.0
#: Idle connections kept per endpoint; more are closed when given back.
MAX_IDLE = 256
#: aiohttp's client defaults, kept so that an answer is refused exactly when it was before.
_MAX_LINE, _MAX_FIELD, _MAX_HEADERS, _READ_BUFSIZE = 8190, 8190, 128, 2**16

#: Methods sent once more when the connection drops before any of the answer arrived (aiohttp's set).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

_Key = tuple[str, str, int, "ssl.SSLContext | None"]
#: Characters a URL must not carry unquoted on the request line.
_TO_QUOTE = frozenset(' \t"<>\\^`{|}\r\n')


class _Target:
    """Where a URL's requests go: the pool key, the Host header, the request target; parsed once."""

    __slots__ = ("key", "host", "port", "tls", "start")

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if https else 80)
        self.tls = context if https else None
        self.key: _Key = (parts.scheme, self.host, self.port, self.tls)
        default = (https and self.port == 443) or (not https and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.start = f" {target} HTTP/1.1\r\nHost: {host if default else f'{host}:{self.port}'}\r\n"


class Pool:
    """Keep-alive connections per endpoint, and one request over them."""

    def __init__(self, translate: Callable[[BaseException, Route], UpstreamError]) -> None:
        self._translate = translate
        self._idle: dict[_Key, list[tuple[float, ResponseHandler]]] = {}
        self._targets: dict[tuple[str, ssl.SSLContext], _Target] = {}
        self._closed = False

    @staticmethod
    def takes(url: str, headers: Mapping[str, str]) -> bool:
        """Whether the request can be written as it is: headers without CR or LF (aiohttp refuses them),
        a URL of plain ASCII with nothing to quote and no user:password (aiohttp quotes the one and turns
        the other into Basic credentials; those rare URLs keep its path)."""
        if not url.isascii() or "@" in url or any(c in url for c in _TO_QUOTE):
            return False
        return not any("\r" in v or "\n" in v for v in headers.values())

    async def post(self, route: Route, url: str, headers: Mapping[str, str], body: bytes,
                   context: ssl.SSLContext, method: str = "POST") -> PooledReply:
        """Send ``method`` (the caller's bytes: no header is added but Host) and wait for the answer's head."""
        target = self._targets.get((url, context))
        if target is None:
            if len(self._targets) >= 4096:
                self._targets.clear()
            target = self._targets[(url, context)] = _Target(url, context)
        request = (method + target.start + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                   + "\r\n").encode("utf-8") + body
        retry = method in IDEMPOTENT
        while True:
            proto = self._reuse(target.key)  # (not ``or``: an empty protocol's queue is falsy)
            if proto is None:
                proto = await self._connect(route, target, url)
            try:
                message, payload = await self._exchange(route, proto, request)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                proto.close()
                if not retry:
                    raise self._translate(exc, route) from exc
                retry = False  # nothing of the answer came: an idempotent request goes once more
                continue
            except HttpProcessingError as exc:
                proto.close()
                raise EndpointUnavailable(f"{route.endpoint} sent an invalid HTTP response: {exc.message}",
                                          destination=route.destination, endpoint=route.endpoint) from exc
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                proto.close()
                raise self._translate(exc, route) from exc
            except BaseException:
                proto.close()
                raise
            return PooledReply(message, payload, proto, lambda exc: self._translate(exc, route),
                               lambda: self._give_back(target.key, proto))

    @staticmethod
    async def _exchange(route: Route, proto: ResponseHandler,
                        request: bytes) -> tuple[RawResponseMessage, StreamReader]:
        """Write ``request`` and read up to the final answer's head (1xx interim answers are skipped)."""
        proto.set_response_params(read_timeout=route.timeout, read_bufsize=_READ_BUFSIZE, auto_decompress=False,
                                  max_line_size=_MAX_LINE, max_field_size=_MAX_FIELD, max_headers=_MAX_HEADERS)
        transport = proto.transport
        if transport is None:  # closed between the check and now
            raise aiohttp.ServerDisconnectedError()
        transport.write(request)
        proto.start_timeout()
        while True:
            message, payload = await proto.read()
            if not 100 <= message.code <= 199 or message.code == 101:
                return message, payload

    def _reuse(self, key: _Key) -> ResponseHandler | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        too_old = time.monotonic() - IDLE_SECONDS
        while idle:
            since, proto = idle.pop()
            if since > too_old and proto.is_connected() and not proto.should_close:
                return proto
            proto.close()
        return None

    async def _connect(self, route: Route, target: _Target, url: str) -> ResponseHandler:
        loop = asyncio.get_running_loop()
        connection_key = ConnectionKey(target.host, target.port, target.tls is not None, target.tls or True,
                                       None, None, None)
        try:
            async with asyncio.timeout(route.timeout):
                _, proto = await loop.create_connection(
                    lambda: ResponseHandler(loop), target.host, target.port, ssl=target.tls,
                    server_hostname=target.host if target.tls is not None else None)
        except TimeoutError as exc:
            cause: Exception = aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}")
            raise self._translate(cause, route) from cause
        except ssl.CertificateError as exc:
            cause = aiohttp.ClientConnectorCertificateError(connection_key, exc)
            raise self._translate(cause, route) from cause
        except ssl.SSLError as exc:
            cause = aiohttp.ClientConnectorSSLError(connection_key, exc)
            raise self._translate(cause, route) from cause
        except OSError as exc:
            cause = aiohttp.ClientConnectorError(connection_key, exc)
            raise self._translate(cause, route) from cause
        return proto

    def _give_back(self, key: _Key, proto: ResponseHandler) -> None:
        if self._closed or proto.should_close or not proto.is_connected():
            proto.close()
            return
        idle = self._idle.setdefault(key, [])
        now = time.monotonic()
        while idle and idle[0][0] < now - IDLE_SECONDS:  # the oldest first: close what expired
            idle.pop(0)[1].close()
        if len(idle) >= MAX_IDLE:
            proto.close()
            return
        idle.append((now, proto))

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for _, proto in idle:
                proto.close()
        self._idle.clear()


class PooledReply:
    """The :class:`~gateway.relay.upstream.Reply` of a pooled exchange."""

    __slots__ = ("status", "reason", "headers", "content_length", "_payload", "_proto", "_translate", "_back",
                 "_callbacks", "_done")

    def __init__(self, message: RawResponseMessage, payload: StreamReader, proto: ResponseHandler,
                 translate: Callable[[BaseException], UpstreamError], back: Callable[[], None]) -> None:
        self.status = message.code
        self.reason: str | None = message.reason
        self.headers: Mapping[str, str] = message.headers if isinstance(message.headers, CIMultiDictProxy) \
            else CIMultiDictProxy(message.headers)
        length = message.headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._payload = payload
        self._proto = proto
        self._translate = translate
        self._back = back
        self._callbacks: list[Callable[[], None]] = []
        self._done = False

    async def read(self) -> bytes:
        try:
            return await self._payload.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._proto.close()
            raise self._translate(exc) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._payload.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._proto.close()
            raise self._translate(exc) from exc

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        if self._payload.is_eof() and self._payload.exception() is None:
            self._back()
        else:
            self._proto.close()
        for callback in self._callbacks:
            callback()

    def when_released(self, callback: Callable[[], None]) -> None:
        if self._done:
            callback()
        else:
            self._callbacks.append(callback)
