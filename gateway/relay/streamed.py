"""A streamed request body on its way upstream: size limit, caller timeouts, envelope outline.

The relay (:mod:`gateway.relay.handler`) reads the head of a big body to
route it and hands the endpoint a :class:`RequestBody`: the chunks already
read, then the rest as it arrives.  Every chunk is counted against the size
limit and fed to the envelope's outline check (:mod:`gateway.relay.outline`)
before the chunk before it goes on; the last one goes only once the body
proved complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol

import aiohttp

from attachments.mime import RootExtractor
from gateway.errors import GatewayError, MalformedMessage, MessageTooLarge, RequestTimeout

from .outline import EnvelopeOutline
from .trace import Trace

__all__ = ["RequestBody", "check_chunk", "receive"]


class Source(Protocol):
    """Where the body's bytes come from: aiohttp's ``StreamReader``, or a :class:`~gateway.relay.call.Call`."""

    def readany(self) -> Awaitable[bytes]: ...


class RequestBody:
    """The request body as it goes upstream: the bytes already read, then the rest.

    Counts bytes against the size limit and checks the envelope's outline
    (:mod:`gateway.relay.outline`; ``outline=None`` for bodies that are not
    envelopes, the API relay's) while streaming; an error here is kept in
    :attr:`error` because aiohttp wraps whatever a body iterator raises.
    """

    def __init__(self, prefix: list[bytes], stream: Source, *, trace: Trace, limit: int,
                 timeout: float, outline: EnvelopeOutline | None, framer: RootExtractor | None = None) -> None:
        self._prefix = prefix
        self._stream = stream
        self._trace = trace
        self._limit = limit
        self._timeout = timeout
        self._outline = outline
        self._framer = framer
        self.error: GatewayError | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # Each chunk waits until the next one was checked, and the last one until the body proved
        # complete (the envelope's end, a multipart body's framing): the endpoint never gets a
        # complete body the gateway refuses, nor a truncated one that looks whole.
        held = self._prefix.pop() if self._prefix else None
        for chunk in self._prefix:
            yield chunk
        self._prefix = []
        try:
            while chunk := await receive(self._stream.readany(), self._timeout):
                self._trace.took_request(chunk)
                if self._trace.request_bytes > self._limit:
                    raise MessageTooLarge(f"message exceeds the limit of {self._limit} bytes")
                if self._outline is not None:
                    check_chunk(self._outline, self._framer, chunk)
                if held is not None:
                    yield held
                held = chunk
            if self._framer is not None:
                self._framer.finish()
            if self._outline is not None:
                self._outline.close()
            if held is not None:
                yield held
        except GatewayError as exc:
            self.error = exc
            raise

    @property
    def head(self) -> bytes:
        """The bytes read before forwarding (the whole Header at least), while it has not begun."""
        return b"".join(self._prefix)


async def receive(read: Awaitable[bytes], timeout: float | None) -> bytes:
    """Await bytes from the caller, translating a stall or a broken body into faults."""
    try:
        if timeout is None:
            return await read
        async with asyncio.timeout(timeout):
            return await read
    except TimeoutError as exc:
        raise RequestTimeout(f"the caller sent nothing for {timeout:g} s") from exc
    except (aiohttp.ClientPayloadError, ConnectionResetError) as exc:
        raise MalformedMessage(f"the request body is incomplete: {exc}") from exc


def check_chunk(outline: EnvelopeOutline, framer: RootExtractor | None, chunk: bytes) -> bytes:
    """Feed the envelope's bytes in ``chunk`` to the outline check; returns them."""
    root = chunk if framer is None else framer.feed(chunk)
    if root:
        outline.feed(root)
    if framer is not None and framer.root_ended:
        outline.close()
    return root
