"""The relay's fast path: the common plain SOAP POST and ``/api`` request without aiohttp's server in between.

Each caller connection starts here (:class:`FastConnection`, behind
:class:`~gateway.relay.limits.ListenSite`'s connection caps and header
clock).  A request takes the fast path only when its head is in the narrow
form below (checked by :mod:`gateway.relay.fastform`) — everything else, from
the first byte that does not fit, goes to aiohttp's request handler with every
byte buffered so far, and the connection stays aiohttp's for good.  aiohttp
therefore still gives every answer to malformed, ambiguous or unusual input
(the 400s for smuggling, 413, 417, 431, HTTP/1.0, chunked bodies, …) exactly
as before.

**The fast form** (all of it, checked on the bytes with two compiled
patterns, in C):

* request line ``POST /soap HTTP/1.1`` or ``POST /soap/NAME HTTP/1.1``, NAME
  of ``A-Z a-z 0-9 _ - .`` not starting with a dot, no query; or (the API
  relay's) ``METHOD /api/NAME[/SEGMENT…][/][?QUERY] HTTP/1.1`` with METHOD one
  of GET, DELETE, POST, PUT, PATCH, each SEGMENT of ``A-Z a-z 0-9 - . _ ~``
  not starting with a dot (no ``.``/``..``, no empty one but a trailing
  slash), QUERY of ``A-Z a-z 0-9 - . _ ~ = & , : +`` — no ``%``, backslash, NUL or
  other doubtful byte, so :mod:`gateway.api.path` would take the target
  unchanged and its refusals stay aiohttp's path's;
* at most :data:`MAX_FIELDS` header lines, the whole head within
  :data:`MAX_HEAD` bytes, every line ending in CR LF, every name a token,
  every value visible ASCII with inner spaces or tabs (no NUL, no bare CR or
  LF, no obs-fold, no byte over 0x7E), no name twice;
* ``Host`` present; ``Content-Length`` present, digits only, no leading
  zero, 1 to :data:`MAX_BODY` (64 KiB) — for ``/api`` GET and DELETE instead
  absent or ``0`` (no body);
* no ``Transfer-Encoding``, ``Expect``, ``Connection``, ``Upgrade``, ``TE``,
  ``Trailer``, ``Keep-Alive``, ``Proxy-Connection``, ``Content-Encoding``;
* no bytes of a next request in what arrived with it (aiohttp parses
  pipelined requests at once and answers a malformed one instead of both);
* for ``/soap``, Content-Type's media type (parsed by aiohttp's own function)
  ``text/xml`` or ``application/soap+xml`` (``/api`` passes any on);
* the caller needs no password check and no refusal: the gateway runs open,
  or its Basic login was verified lately from this address
  (:meth:`~gateway.security.auth.Authenticator.remembered`) and it presented
  no client certificate; and, for a POST, its rate limit has a token left
  (the rate-limit middleware counts POSTs; the API relay itself takes other
  methods' tokens, on either path).

A request in that form is read whole (its body is at most 64 KiB), handed to
the same :meth:`~gateway.relay.handler.Relay.exchange` (or
:meth:`~gateway.api.handler.ApiRelay.exchange`) aiohttp's handler calls, and
the answer is written as aiohttp writes it (same status line, headers in the
same order, ``Content-Length`` and ``Date`` last).  Requests on
one connection are answered in order; an idle connection closes after
``gateway.keepalive_timeout``; a fault sent before the whole body arrived
waits up to :data:`LINGER` seconds for the rest (aiohttp's lingering), then
closes.  With ``gateway.access_log`` set every request takes aiohttp's path
(it writes the access log).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Protocol, cast

from aiohttp.helpers import rfc822_formatted_time

from gateway.security.auth import Authenticator
from routing.config import Client
from routing.watch import LiveTable

from .call import Answer, Call, Headers
from .fastform import MAX_BODY, MAX_FIELDS, MAX_HEAD, Head, parse_head, prefixes
from .limits import RateLimiter

__all__ = ["FastPath", "FastConnection", "FastCall", "Exchanger", "parse_head", "MAX_BODY", "MAX_HEAD", "MAX_FIELDS",
           "LINGER"]

log = logging.getLogger("bmrgw.relay")

#: Seconds the rest of a body may take after its answer was sent (aiohttp's lingering_time).
LINGER = 10.0
#: Unanswered bytes buffered on one connection before reading pauses.
_BUFFER = 2 * (MAX_HEAD + MAX_BODY)
_REASONS = {status.value: status.phrase for status in HTTPStatus}  # aiohttp's REASON_PHRASES
_EMPTY = frozenset((204, 304, *range(100, 200)))  # statuses without a body (aiohttp: no Content-Length)


class Exchanger(Protocol):
    """A relay's exchange core: :class:`~gateway.relay.handler.Relay`, :class:`~gateway.api.ApiRelay`."""

    def exchange(self, call: Call) -> Awaitable[Answer]: ...


class FastPath:
    """What fast connections share: the relays (SOAP, and the API relay's unless ``api`` is ``None``), the
    live table, the authenticator and the rate limiter."""

    def __init__(self, *, relay: Callable[[], Exchanger], live: LiveTable, authenticator: Authenticator,
                 limiter: RateLimiter, keepalive_timeout: float, api: Callable[[], Exchanger] | None = None,
                 failure: Callable[[bool, str], bytes] | None = None) -> None:
        self.relay = relay
        self.api = api
        self.failure = failure
        """The answer aiohttp's handler gives when an exchange fails unexpectedly (a bug), given whether the
        request was for ``/api`` and its ``Accept`` header (:func:`gateway.serve.protocol.failure_answer`);
        ``None``: the connection is cut instead."""
        self.prefixes = prefixes(api is not None)
        self.live = live
        self.authenticator = authenticator
        self.limiter = limiter
        self.keepalive_timeout = keepalive_timeout
        self.connections: set[FastConnection] = set()
        self.exchanges = 0
        """Requests taken on the fast path."""
        self.handovers = 0
        """Connections handed to aiohttp's handler."""

    def connection(self, handover: Callable[[bytes], None]) -> FastConnection:
        return FastConnection(self, handover)

    async def drain(self, timeout: float) -> None:
        """Close idle connections now; give exchanges in flight up to ``timeout`` s, then cut them."""
        for connection in list(self.connections):
            connection.close_when_idle()
        busy = {c.done: c for c in self.connections if c.done is not None}
        if not busy:
            return
        _, late = await asyncio.wait(busy, timeout=timeout)  # the others close once answered
        for task in late:  # as aiohttp's shutdown: cancelled, each logs its exchange as cut off
            task.cancel()
        if late:
            await asyncio.wait(late)
        for task in late:
            busy[task].abort()


class FastCall:
    """One exchange on the fast path (the one object it makes per request besides the relay's own)."""

    __slots__ = ("client", "headers", "content_type", "content_length", "ap", "version", "method", "target",
                 "remote", "body_exists", "api", "answering", "_connection", "_body", "_waiter")

    def __init__(self, connection: FastConnection, head: Head, client: Client | None, remote: str) -> None:
        self.client = client
        self.headers = head.headers
        self.content_type = head.content_type
        self.content_length = head.content_length
        self.ap = head.ap
        self.version = "1.1"
        self.method = head.method
        self.target = head.target
        self.remote: str | None = remote
        self.body_exists = head.length > 0
        self.api = head.api
        self.answering = False
        """Whether the head of a streamed answer was written (an error can then only cut the connection)."""
        self._connection = connection
        self._body: bytes | None = None
        self._waiter: asyncio.Future[bytes] | None = None

    def arrived(self, body: bytes) -> None:
        self._body = body
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(body)

    def lost(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError("Connection lost"))

    def received(self) -> bool:
        return self._body is not None

    async def read(self) -> bytes:
        if self._body is not None:
            return self._body
        if self._connection.closed:
            raise ConnectionResetError("Connection lost")
        self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter

    async def readany(self) -> bytes:
        body, self._body = self._body, b""
        return body if body is not None else await self.read()

    def abort(self) -> None:
        self._connection.abort()

    async def stream(self, status: int, reason: str | None, headers: Headers, length: int | None) -> _Sink:
        chunked = length is None and status not in _EMPTY
        tail = ("Transfer-Encoding: chunked\r\n" if chunked else
                "" if length is None or status in _EMPTY else f"Content-Length: {length}\r\n")
        if length != 0 and status not in _EMPTY and "Content-Type" not in headers:
            tail += "Content-Type: application/octet-stream\r\n"
        self.answering = True
        self._connection.write(_head(status, reason, headers, tail))
        return _Sink(self._connection, chunked)


class _Sink:
    __slots__ = ("_connection", "_chunked")

    def __init__(self, connection: FastConnection, chunked: bool) -> None:
        self._connection = connection
        self._chunked = chunked

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        await self._connection.drained()

    async def write_eof(self) -> None:
        if self._chunked:
            self._connection.write(b"0\r\n\r\n")
        await self._connection.drained()


def _head(status: int, reason: str | None, headers: Headers, framing: str) -> bytes:
    """Status line and headers as aiohttp's response writes them: the given headers, then ``framing``
    (Content-Length or Transfer-Encoding, a default Content-Type), ``Date``."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    phrase = _REASONS.get(status, "") if reason is None else reason
    # The relay always sets Server (aiohttp would add its own after Date otherwise).
    return f"HTTP/1.1 {status} {phrase}\r\n{lines}{framing}Date: {rfc822_formatted_time()}\r\n\r\n".encode()


def whole(answer: Answer) -> bytes:
    """An answer read whole, as aiohttp's ``web.Response`` writes it."""
    body = answer.body or b""
    if answer.status in _EMPTY:
        return _head(answer.status, answer.reason, answer.headers, "")
    tail = f"Content-Length: {len(body)}\r\n"
    if body and "Content-Type" not in answer.headers:
        tail += "Content-Type: application/octet-stream\r\n"
    return _head(answer.status, answer.reason, answer.headers, tail) + body



class FastConnection(asyncio.Protocol):
    """One caller connection while its requests are in the fast form (see the module's docstring).

    ``handover`` is called, once, with every byte not yet answered when a
    request is not in the fast form; the connection is aiohttp's from then on
    and this object is done with it.
    """

    def __init__(self, path: FastPath, handover: Callable[[bytes], None]) -> None:
        self._path = path
        self._handover = handover
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._remote = "-"
        self._certified = False
        self.heads = 0
        """Request heads taken so far (the header clock of ListenSite stops at each)."""
        self.done: asyncio.Task[None] | None = None
        """The exchange in flight."""
        self._call: FastCall | None = None
        self._owed = 0
        """Body bytes of the current request not yet in the buffer (read or, after an early answer, dropped)."""
        self._timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None
        self._reading = True
        self._closing = False
        self.closed = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream = cast(asyncio.Transport, transport)
        peer = stream.get_extra_info("peername")
        self._remote = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        ssl_object = stream.get_extra_info("ssl_object")
        self._certified = ssl_object is not None and bool(ssl_object.getpeercert(binary_form=True))
        self._path.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.done is not None:  # an exchange in flight: its body, or bytes of the next request
            call = self._call
            if call is not None and not call.received() and len(self._buffer) >= self._owed:
                call.arrived(self._take(self._owed))
                self._owed = 0
            elif len(self._buffer) > _BUFFER and self._reading and self._transport is not None:
                self._reading = False
                self._transport.pause_reading()
            return
        if self._owed:  # lingering: the rest of a body that was answered early
            self._drop()
            if self._owed:
                return
        self._cancel_timer()  # the keep-alive wait, or the lingering that just ended
        self._next()

    def eof_received(self) -> bool | None:
        return None  # close (as aiohttp's handler)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._path.connections.discard(self)
        if self._call is not None:
            self._call.lost()
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("Connection lost"))
            self._writable.exception()  # retrieved: nobody may be waiting
        self._transport = None

    # -- what FastCall and FastPath use

    @property
    def idle(self) -> bool:
        """Between requests: nothing in flight, nothing owed (ListenSite starts its header clock on new bytes)."""
        return self.done is None and not self._owed

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drained(self) -> None:
        if self.closed:
            raise ConnectionResetError("Cannot write to closing transport")
        if self._writable is not None:
            await self._writable

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close_when_idle(self) -> None:
        self._closing = True
        if self.done is None and self._transport is not None:
            self._transport.close()

    # -- requests

    def _next(self) -> None:
        """Start the request at the front of the buffer, hand the connection over, or wait for bytes."""
        if self._closing:
            if self._transport is not None:
                self._transport.close()
            return
        buffer = self._buffer
        if not self._reading and len(buffer) <= _BUFFER and self._transport is not None:
            self._reading = True
            self._transport.resume_reading()
        if not buffer:
            self._timer = self._loop.call_later(self._path.keepalive_timeout, self._idle_out)
            return
        start = bytes(buffer[:12])
        if not any(prefix.startswith(start[:len(prefix)]) for prefix in self._path.prefixes):
            return self._give_up()
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(buffer) >= MAX_HEAD:
                return self._give_up()
            # Part of a head: ListenSite's header clock runs from the next bytes on; if none come, the
            # connection closes after keepalive_timeout, as aiohttp's does.
            self._timer = self._loop.call_later(self._path.keepalive_timeout, self._idle_out)
            return
        head = parse_head(bytes(buffer[:end + 2]), api=self._path.api is not None)
        admitted = None if head is None else self._admit(head)
        if head is None or admitted is None:
            return self._give_up()
        if len(buffer) > end + 4 + head.length:
            # Bytes of a next request came with this one: aiohttp parses them at once and answers a
            # malformed one with 400 instead of both; pipelining is its to handle.
            return self._give_up()
        del buffer[:end + 4]
        self.heads += 1
        self._path.exchanges += 1
        call = self._call = FastCall(self, head, admitted[0], self._remote)
        if len(buffer) >= head.length:
            call.arrived(self._take(head.length))
        else:
            self._owed = head.length
        exchanger = self._path.api if head.api and self._path.api is not None else self._path.relay
        self.done = self._loop.create_task(self._exchange(call, exchanger()))

    def _admit(self, head: Head) -> tuple[Client | None] | None:
        """The caller, as the auth and rate-limit middlewares would let it pass without a check or a
        refusal; ``None`` when aiohttp's path must decide."""
        config = self._path.live.current.config
        client = None
        if config.clients:
            header = head.headers.get("Authorization")
            if self._certified or header is None:
                return None
            client = self._path.authenticator.remembered(header, self._remote, config.clients)
            if client is None or client.cert_subject is not None:
                return None
        caller = f"client {client.name}" if client is not None else f"address {self._remote}"
        # The rate-limit middleware counts POSTs; the API relay takes other methods' tokens itself.
        if head.method == "POST" and not self._path.limiter.spend(caller, config.gateway.limits):
            return None
        return (client,)

    async def _exchange(self, call: FastCall, exchanger: Exchanger) -> None:
        try:
            answer = await exchanger.exchange(call)
            if answer.body is not None:
                self.write(whole(answer))
        except ConnectionResetError:
            self.abort()  # already cut where it was raised, or the caller went away
        except Exception:
            log.exception("Error handling request")
            failure = self._path.failure
            if call.answering or failure is None:
                self.abort()
            else:  # aiohttp's answer to a failing handler; the connection closes after it, as there
                self.write(failure(call.api, call.headers.get("Accept", "")))
                self._closing = True
        finally:
            self.done, self._call = None, None
        if self.closed:
            return
        if call.received():
            self._owed = 0
        else:  # answered before the whole body came (a fault): read and drop the rest, for a while
            self._owed = max(0, self._owed - len(self._buffer))
            self._buffer.clear()
            if self._owed:
                self._timer = self._loop.call_later(LINGER, self.abort)
                return
        self._next()

    def _take(self, count: int) -> bytes:
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        return taken

    def _drop(self) -> None:
        dropped = min(self._owed, len(self._buffer))
        del self._buffer[:dropped]
        self._owed -= dropped

    def _give_up(self) -> None:
        """Not the fast form: aiohttp's handler gets the connection with everything not yet answered."""
        self._path.connections.discard(self)
        self._path.handovers += 1
        self._cancel_timer()
        if not self._reading and self._transport is not None:
            self._transport.resume_reading()
        rest, self._buffer = bytes(self._buffer), bytearray()
        self._transport = None
        self._handover(rest)

    def _idle_out(self) -> None:
        self._timer = None
        if self.idle and self._transport is not None:
            self._transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
