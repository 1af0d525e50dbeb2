"""Passing an endpoint's answer back to the caller (the relay's last step, :mod:`gateway.relay.handler`).

Status, headers (less the hop-by-hop ones) and body unchanged; a small answer is
read whole, a bigger one streams, and its last chunk waits until the exchange's
log records are durable (SPEC.md Version 2, "no answered exchange without its
record").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from multidict import CIMultiDict

from gateway.errors import JournalUnavailable, UpstreamError
from gateway.logs.journal import Journal
from gateway.logs.records import Entry, describe
from gateway.ns import H_MESSAGE_ID

from .call import Answer, Call
from .trace import Exchange, Trace
from .upstream import Reply

__all__ = ["respond", "record_durably", "SERVER", "SMALL_BODY"]

log = logging.getLogger("bmrgw.relay")

#: Bodies up to this size are read whole instead of streamed.
SMALL_BODY = 256 * 1024
#: Our Server header: the product, not the versions of the libraries under it.
SERVER = "bmrgw"
# Response headers the gateway sets itself or that describe one hop only.
_DROP_RESPONSE = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Connection", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Content-Length", "Date", "Server",
))


def _reply_headers(reply: Reply, exchange: Exchange) -> CIMultiDict[str]:
    headers = CIMultiDict((k, v) for k, v in reply.headers.items() if k.lower() not in _DROP_RESPONSE)
    headers[H_MESSAGE_ID] = exchange.message_id
    headers["Server"] = SERVER
    return headers


async def respond(call: Call, reply: Reply, exchange: Exchange, trace: Trace,
                  durable: Callable[[], Awaitable[None]]) -> Answer:
    """Pass the upstream's answer back unchanged (status, headers, body); a streamed answer's last
    chunk waits for ``durable`` (an answer read whole is returned: the handler waits before sending)."""
    headers = _reply_headers(reply, exchange)
    trace.http_status = reply.status
    trace.status = "ok" if reply.status < 300 else "fault"
    if reply.content_length is not None and reply.content_length <= SMALL_BODY:
        body = await reply.read()
        trace.sent_response(body)
        return Answer(reply.status, reply.reason, headers, body)
    sink = await call.stream(reply.status, reply.reason, headers, reply.content_length)
    held: bytes | None = None
    try:
        async for chunk in reply.chunks():
            trace.sent_response(chunk)
            if held is not None:
                await sink.write(held)
            held = chunk
    except (UpstreamError, aiohttp.ClientError, TimeoutError) as exc:
        # The status line is already sent: the only honest signal left is to
        # cut the connection so the caller sees an incomplete answer.
        log.warning("%s broke off its answer to message %s: %s", exchange.route.endpoint, exchange.message_id, exc)
        call.abort()
        raise ConnectionResetError("upstream broke off its answer") from exc
    await durable()
    if held is not None:
        await sink.write(held)
    await sink.write_eof()
    return Answer(reply.status, reply.reason, headers, None)


async def record_durably(journal: Journal, entries: Sequence[Entry], call: Call, *, answering: bool,
                         whole: Entry, log: logging.Logger) -> None:
    """Hand an exchange's log ``entries`` to the journal.  When ``answering``, return once the last one
    is durable, or abort ``call``'s connection and raise: no complete answer leaves without its records
    (SOAP and ``/api`` alike).  ``log`` gets ``whole``, the exchange, when it could not be logged."""
    try:
        for entry in entries[:-1]:
            await journal.record(entry)
        if not answering:
            await journal.record(entries[-1])
            return
        # The future is this caller's own and the journal bounds the wait (durable_wait): no
        # timer or shield per exchange.
        if not await (await journal.record(entries[-1], durable=True)):
            raise JournalUnavailable(f"not durable within {journal.durable_wait:g} s, or refused")
    except JournalUnavailable as exc:
        log.error("send/receive log unavailable (%s); exchange not logged: %s", exc.reason, describe(whole))
        if not answering:
            return
        call.abort()
        raise ConnectionResetError("the exchange's log records are not durable: answer withheld") from None
