"""One caller's request as the relay sees it, whichever HTTP server parsed it, and the answer it gets.

The relay's exchange (:meth:`gateway.relay.handler.Relay.exchange`) reads a
:class:`Call` and returns an :class:`Answer`; it never sees the HTTP server.
Two servers make calls:

* :class:`RequestCall` — aiohttp's ``web.Request`` (every request that is not
  the fast path's: streamed and multipart bodies, HTTP/1.0, ``Expect``, …);
* :class:`gateway.relay.fast.FastCall` — the relay's own protocol for the
  common plain SOAP POST (:mod:`gateway.relay.fast`).

Both give the same answers because everything after the HTTP layer is the
same code; only reading the body and writing the answer differ.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

from gateway.security.auth import client_of
from routing.config import Client

__all__ = ["Call", "Sink", "Answer", "RequestCall"]

#: Response headers in the order they are sent (a CIMultiDict where an upstream may repeat one).
Headers = CIMultiDict[str] | dict[str, str]


class Sink(Protocol):
    """Where a streamed answer's body goes once its status line and headers are sent."""

    async def write(self, chunk: bytes) -> None: ...

    async def write_eof(self) -> None: ...


class Call(Protocol):
    """What the relay needs of one caller's request."""

    client: Client | None
    """The authenticated client (``None`` when the gateway runs open)."""

    @property
    def headers(self) -> Mapping[str, str]:
        """The request headers, case-insensitive (a ``CIMultiDict``: the first of repeated ones)."""
        ...

    content_type: str
    """The media type of Content-Type, lower case, as aiohttp parses it."""
    content_length: int | None
    ap: str | None
    """The business AP of ``/soap/{ap}`` or ``/api/{ap}/...``."""
    version: str
    """The HTTP version, ``"1.1"`` (for ``Via``)."""
    method: str
    """The request method (the API relay passes it on)."""
    target: str
    """The raw request target, path and query, as the request line gave it (the API relay checks it)."""
    remote: str | None
    """The caller's address (its rate bucket when it is not a client)."""
    body_exists: bool
    """Whether the request has a body at all (``Content-Length`` over 0, or chunked)."""

    def read(self) -> Awaitable[bytes]:
        """The whole body (only called for a Content-Length up to SMALL_BODY)."""
        ...

    def received(self) -> bool:
        """Whether the whole body is already here (reading it needs no timer then)."""
        ...

    def readany(self) -> Awaitable[bytes]:
        """The next bytes of the body; ``b""`` at its end."""
        ...

    def abort(self) -> None:
        """Cut the caller's connection: the only honest signal once an answer began."""
        ...

    async def stream(self, status: int, reason: str | None, headers: Headers, length: int | None) -> Sink:
        """Send a streamed answer's status line and headers."""
        ...


class Answer:
    """The relay's answer: whole (``body``), or already sent through :meth:`Call.stream` (``body is None``)."""

    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str | None, headers: Headers, body: bytes | None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class _Streamed:
    """aiohttp's prepared ``StreamResponse`` as a :class:`Sink`."""

    __slots__ = ("response",)

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response

    async def write(self, chunk: bytes) -> None:
        await self.response.write(chunk)

    async def write_eof(self) -> None:
        await self.response.write_eof()


class RequestCall:
    """aiohttp's ``web.Request`` as a :class:`Call`."""

    __slots__ = ("request", "client", "headers", "content_type", "content_length", "ap", "version", "method", "target",
                 "remote", "body_exists", "_sent")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.client = client_of(request)
        self.headers = request.headers
        self.content_type = request.content_type
        self.content_length = request.content_length
        self.ap = request.match_info.get("ap")
        self.version = f"{request.version.major}.{request.version.minor}"
        self.method = request.method
        self.target = request.raw_path
        self.remote = request.remote
        self.body_exists = request.body_exists
        self._sent: web.StreamResponse | None = None

    def read(self) -> Awaitable[bytes]:
        return self.request.read()

    def received(self) -> bool:
        return self.request.content.is_eof()

    def readany(self) -> Awaitable[bytes]:
        return self.request.content.readany()

    def abort(self) -> None:
        if self.request.transport is not None:
            self.request.transport.abort()

    async def stream(self, status: int, reason: str | None, headers: Headers, length: int | None) -> Sink:
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        if length is not None:
            response.content_length = length
        await response.prepare(self.request)
        self._sent = response
        return _Streamed(response)

    def response(self, answer: Answer) -> web.StreamResponse:
        """The aiohttp response for ``answer``."""
        if answer.body is None:
            assert self._sent is not None
            return self._sent
        return web.Response(status=answer.status, reason=answer.reason, body=answer.body,
                            headers=answer.headers)
