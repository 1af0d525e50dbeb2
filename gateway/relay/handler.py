"""The SOAP relay: ``POST /soap`` and ``POST /soap/{ap}`` (capabilities A and C).

One request, start to finish:

1. check the hop list in ``Via`` (RoutingLoop) and the declared size;
2. read just enough of the body for :class:`~gateway.parser.HeadScanner` to
   find the routing key (routing header, ``wsa:To``, or the path);
3. resolve the destination in the live :class:`~routing.table.RouteTable`
   and check that the client may reach it and may claim the sender the
   message names (SPEC.md "Who a message says it is from");
4. POST the body byte for byte — the bytes already read, then the rest as it
   arrives (:class:`~gateway.relay.streamed.RequestBody`: the size limit and
   the whole envelope's outline, :mod:`gateway.relay.outline`, are checked as
   it passes) — with its Content-Type and SOAPAction, our ``Via`` hop,
   ``X-Message-Id`` and the authenticated client's name in ``X-Bmrgw-Client``;
5. stream the answer back unchanged: status, content type, body, faults.

An endpoint with a character profile (``endpoints.NAME.charset``) gets the
envelope in its encoding and answers in it: steps 4 and 5 then pass through
:mod:`gateway.charset.envelopes` (after every check above, on the caller's
UTF-8), and a signed envelope goes there only when the gateway re-signs it.

SwA and MTOM requests (``multipart/related``) take the same path: the
routing key is read from the root part (:class:`attachments.mime.RootExtractor`
follows the framing), the whole body is forwarded byte for byte under
``gateway.max_attachment_bytes``, and a truncated body is MalformedMessage.

Any :class:`~gateway.errors.GatewayError` becomes a SOAP fault in the
caller's SOAP version.  Small bodies (under ``SMALL_BODY``) are read whole,
which is faster; anything bigger streams, so memory does not grow with size.

Every exchange leaves two records in the send/receive log (capability G):
one for the request, one for the response, with sizes and SHA-256 of the
bytes as they passed.  A :class:`Trace` collects those facts on the way.
No answer is complete before its records are durable (SPEC.md Version 2):
a streamed answer holds back its last chunk until the group commit holds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable
from typing import Protocol

from aiohttp import web

from attachments.mime import CT_RELATED, RootExtractor, parse_related
from gateway.charset import CharsetProfile
from gateway.charset.envelopes import (
    check_convertible, endpoint_profile, for_signing, recode_envelope, signed_for_partner,
)
from gateway.charset.recode import Recoding, recode_reply
from gateway.errors import (
    ClientFault,
    EndpointUnavailable,
    Forbidden,
    GatewayError,
    MalformedMessage,
    MessageTooLarge,
    RoutingLoop,
    UnsupportedMediaType,
)
from gateway.ids import new_message_id
from gateway.logs.clock import Clock
from gateway.logs.journal import Journal
from gateway.metrics import Metrics
from gateway.ns import H_CLIENT, H_MESSAGE_ID, H_SOAPACTION, H_VIA, SoapVersion
from gateway.parser import SCAN_WHOLE, EnvelopeHead, HeadScanner, scan_head
from gateway.security.message import MessageSecurity
from gateway.soap import fault_content_type, gateway_fault, version_for
from routing.config import Client
from routing.settings import GatewaySettings
from routing.table import Route, RouteTable
from routing.watch import LiveTable

from .resilience import may_have_sent, sent_to
from .answer import SERVER, SMALL_BODY, record_durably, respond
from .call import Answer, Call, RequestCall
from .outline import EnvelopeOutline, check_outline
from .streamed import RequestBody, check_chunk, receive
from .trace import Exchange, Trace, check_loggable
from .upstream import Upstream

__all__ = ["Relay", "Deposit", "MAX_HOPS", "SMALL_BODY", "SERVER"]

log = logging.getLogger("bmrgw.relay")

#: A message that already passed more gateways than this is refused as a loop.
MAX_HOPS = 8

#: Bodies in memory are parsed in slices of this size, stopping after the Header.
_SCAN_SLICE = 8192

# End-to-end request headers that travel to the endpoint; everything else
# (Authorization, Cookie, hop-by-hop headers, a caller's own X-Bmrgw-Client)
# stays at the gateway.
_FORWARD_REQUEST = ("Content-Type", H_SOAPACTION, "Content-Length", "Accept", "Accept-Encoding",
                    "Accept-Language", "User-Agent")


def passed_gateways(via: str) -> list[str]:
    """The received-by names of an HTTP ``Via`` header, in order."""
    names = []
    for hop in via.split(","):
        parts = hop.split()
        if len(parts) >= 2:
            names.append(parts[1])
    return names


def check_hops(via: str, gateway: str) -> list[str]:
    """The gateways already passed; raises RoutingLoop when this is a loop."""
    passed = passed_gateways(via)
    if gateway in passed:
        raise RoutingLoop(f"message already passed gateway {gateway!r} (Via: {via})", detail=via)
    if len(passed) > MAX_HOPS:
        raise RoutingLoop(f"message passed {len(passed)} gateways, more than {MAX_HOPS}", detail=via)
    return passed


def destination_of(head: EnvelopeHead, path_ap: str | None) -> str:
    """The destination business AP from the path or the envelope; they must agree."""
    if path_ap and head.to and path_ap != head.to:
        raise MalformedMessage(f"the path names {path_ap!r} but the routing header names {head.to!r}")
    destination = path_ap or head.to
    if not destination:
        raise MalformedMessage("no destination: add the routing header (r:To), wsa:To urn:bmrgw:ap:NAME, "
                               "or POST to /soap/NAME")
    return destination


def authorise(client: Client | None, destination: str) -> None:
    """Refuse a destination the client's ``allow`` list does not name (open mode allows all)."""
    if client is not None and not client.may_reach(destination):
        raise Forbidden(f"client {client.name!r} may not send to {destination!r}", destination=destination)


def authorise_sender(client: Client | None, sender: str | None, route: Route) -> None:
    """Refuse a sender (``r:From``) the client may not claim.

    A client claims the names of its ``senders`` list (by default its own
    name); a mailbox deposit's sender becomes the stored JX document's
    ``senderId``, so there a JX id of its ``jx.send`` list counts too.
    """
    if client is None or sender is None:
        return
    if client.may_claim(sender) or (route.mailbox is not None and client.may_send_jx(sender)):
        return
    raise Forbidden(f"client {client.name!r} may not send as {sender!r} (clients.{client.name}.senders"
                    f"{' or jx.send' if route.mailbox is not None else ''})",
                    destination=route.destination, detail=sender)


class Deposit(Protocol):
    """Stores a message for a mailbox route (:mod:`gateway.jx.mailbox`); returns the answer envelope."""

    async def __call__(self, route: Route, message_id: str, sender: str | None, client: str | None,
                       content_type: str, version: SoapVersion, body: bytes | AsyncIterable[bytes]) -> bytes: ...


class Relay:
    """The relay handler: the live route table, the upstream seam, metrics and the log."""

    def __init__(self, *, table: LiveTable, upstream: Upstream, metrics: Metrics,
                 clock: Clock, journal: Journal | None, security: MessageSecurity | None = None,
                 deposit: Deposit | None = None) -> None:
        self._table = table
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock
        self._journal = journal
        self._security = security
        self._deposit = deposit

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp's handler of ``POST /soap`` and ``/soap/{ap}``."""
        call = RequestCall(request)
        return call.response(await self.exchange(call))

    async def exchange(self, call: Call) -> Answer:
        """One relayed exchange, from the caller's parsed request to the answer (any HTTP server)."""
        table = self._table.current
        client = call.client
        trace = Trace(arrived=self._clock.read(), started=time.perf_counter(), client=client.name if client else None)
        version = _caller_version(call)
        recoding = Recoding()
        try:
            trace.message_id = call.headers.get(H_MESSAGE_ID)
            check_loggable(f"header {H_MESSAGE_ID}", "message_id", trace.message_id, trace)
            if self._journal is not None:
                await self._journal.admit()
            exchange, body = await self._prepare(call, table, trace)
            profile = endpoint_profile(table.config, exchange.route)
            if profile is not None:  # checked on the caller's bytes: plain UTF-8, not signed unless re-signed
                check_convertible(profile, exchange.route, call.headers.get("Content-Type", ""),
                                  body if isinstance(body, bytes) else body.head)
            if self._security is not None and self._security.needed(client, exchange.route):
                body = await self._secure(call, exchange, body, trace, table.config.gateway, profile, recoding)
            if exchange.route.mailbox is not None:
                answer = await self._store(call, exchange, body, trace, version)
            else:
                answer = await self._forward(call, exchange, body, trace, profile, recoding)
        except (ConnectionResetError, asyncio.CancelledError):  # cancelled: cut off at the drain timeout
            trace.status = "error"
            await self._finish(call, trace, recoding, answering=False)
            raise
        except GatewayError as exc:
            answer = self._fault(exc, version, table.config.gateway.name, trace)
        await self._finish(call, trace, recoding)  # an answer in memory leaves once its records are durable
        return answer

    async def _finish(self, call: Call, trace: Trace, recoding: Recoding, *,
                      answering: bool = True) -> None:
        self._metrics.observe(trace.label, trace.status, time.perf_counter() - trace.started)
        if not trace.logged:
            await self._log(call, trace, recoding, answering=answering)

    async def _log(self, call: Call, trace: Trace, recoding: Recoding, *, answering: bool = True) -> None:
        """Log the exchange; when ``answering``, return once its records are durable, or cut the
        connection (ConnectionResetError) if they cannot be: no complete answer without them."""
        trace.logged = True
        if self._journal is None:
            return
        if trace.message_id is None:
            trace.message_id = new_message_id()
        sent, received = recoding.sizes()  # sizes on the partner's side of a conversion
        if sent is not None:
            trace.forwarded_bytes = sent
        if received is not None:
            trace.response_in = received
        exchange = trace.exchange(self._clock.read())
        substitutions = recoding.losses.summary()
        # What a conversion lost goes on the response record (the two records then travel one by one).
        entries = exchange.records("relay", substitutions) if substitutions else (exchange,)
        await record_durably(self._journal, entries, call, answering=answering, whole=exchange, log=log)

    async def _prepare(self, call: Call, table: RouteTable,
                       trace: Trace) -> tuple[Exchange, bytes | RequestBody]:
        settings = table.config.gateway
        incoming_via = call.headers.get(H_VIA, "")
        passed = check_hops(incoming_via, settings.name)
        version, framer = self._check_media(call, settings)
        limit = settings.max_message_bytes if framer is None else settings.max_attachment_bytes
        if call.content_length is not None and call.content_length > limit:
            raise MessageTooLarge(f"message of {call.content_length} bytes exceeds the limit of {limit}")
        head, body = await self._read_head(call, settings, trace, framer, limit)
        check_loggable("the MessageId", "message_id", head.message_id, trace)
        trace.message_id = head.message_id or trace.message_id or new_message_id()
        check_loggable("the sender (From)", "from_ap", head.sender, trace)
        trace.sender = head.sender
        if version is not None and head.version is not version:
            raise MalformedMessage(f"Content-Type {call.content_type} announces SOAP {version.value} "
                                   f"but the Envelope is SOAP {head.version.value}")
        destination = destination_of(head, call.ap)
        check_loggable("the destination", "to_ap", destination, trace)
        trace.destination = destination
        authorise(call.client, destination)
        route = table.resolve(destination, passed=passed)
        trace.endpoint, trace.label = route.url, route.endpoint
        authorise_sender(call.client, head.sender, route)
        if route.disabled:  # SPEC "Operators": at once, without calling out
            raise EndpointUnavailable(f"endpoint {destination!r} is disabled by the operator "
                                      f"(bmrgw endpoints enable {destination})", destination=destination,
                                      endpoint=route.endpoint)
        hop = f"{call.version} {settings.name}"
        exchange = Exchange(route=route, message_id=trace.message_id,
                            via=f"{incoming_via}, {hop}" if incoming_via else hop)
        return exchange, body

    async def _secure(self, call: Call, exchange: Exchange, body: bytes | RequestBody,
                      trace: Trace, settings: GatewaySettings, profile: CharsetProfile | None,
                      recoding: Recoding) -> bytes:
        """WS-Security needs the whole envelope: read it (bounded), verify and/or sign it; for a converting
        endpoint, verify the caller's, convert, then sign what the partner gets."""
        assert self._security is not None
        if call.content_type == CT_RELATED:
            # The signature would have to cover the attachments (WSS SwA profile): not built.
            raise UnsupportedMediaType("WS-Security is required for this exchange, but it is not supported for "
                                       "SwA/MTOM (multipart/related) messages", destination=exchange.route.destination)
        whole = body if isinstance(body, bytes) else b"".join([chunk async for chunk in body])
        if profile is not None:
            await self._security.verify_client(whole, content_type=call.content_type, client=call.client,
                                               settings=settings)
            converted = for_signing(profile, whole, recoding, exchange.route.destination)
            signed = await self._security.apply(converted, content_type=call.content_type, client=None,
                                                route=exchange.route, settings=settings)
            trace.forwarded_bytes = len(secured := signed_for_partner(profile, signed))
            return secured
        secured = await self._security.apply(whole, content_type=call.content_type, client=call.client,
                                             route=exchange.route, settings=settings)
        if secured is not whole:
            trace.forwarded_bytes = len(secured)
        return secured

    @staticmethod
    def _check_media(call: Call,
                     settings: GatewaySettings) -> tuple[SoapVersion | None, RootExtractor | None]:
        """The announced SOAP version, and for SwA/MTOM the follower of the multipart framing."""
        if call.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise UnsupportedMediaType("compressed request bodies are not accepted")
        if call.content_type == CT_RELATED:
            related = parse_related(call.headers["Content-Type"])
            assert related is not None
            return related.soap_version, RootExtractor(related, max_root_bytes=settings.max_message_bytes)
        version = version_for(call.content_type)
        if version is None:
            raise UnsupportedMediaType(f"Content-Type {call.content_type!r} is not SOAP (text/xml or "
                                       "application/soap+xml, or multipart/related for attachments)")
        return version, None

    @staticmethod
    async def _read_head(call: Call, settings: GatewaySettings, trace: Trace,
                         framer: RootExtractor | None, limit: int) -> tuple[EnvelopeHead, bytes | RequestBody]:
        timeout = settings.client_timeout
        if call.content_length is not None and call.content_length <= SMALL_BODY:
            # Usually the whole small body came with the headers: no timer needed then.
            whole = await receive(call.read(), None if call.received() else timeout)
            trace.took_request(whole)
            envelope = whole if framer is None else _root_of(framer, whole)
            if len(envelope) <= min(SCAN_WHOLE, settings.max_header_bytes):
                return scan_head(envelope, routing_header=settings.routing_header), whole
            scanned = _scan(_scanner(settings), envelope)
            check_outline(envelope)  # the scan stopped after the head; the rest goes upstream too
            return scanned, whole
        scanner, outline = _scanner(settings), EnvelopeOutline()
        prefix: list[bytes] = []
        head = None
        while head is None:
            chunk = await receive(call.readany(), timeout)
            if not chunk:
                if framer is not None:
                    framer.finish()
                head = scanner.finish()
                break
            prefix.append(chunk)
            trace.took_request(chunk)
            if trace.request_bytes > limit:
                raise MessageTooLarge(f"message exceeds the limit of {limit} bytes")
            head = _feed_head(scanner, outline, framer, chunk)
        return head, RequestBody(prefix, call, trace=trace, limit=limit, timeout=timeout,
                                 outline=outline, framer=framer)

    async def _forward(self, call: Call, exchange: Exchange, body: bytes | RequestBody, trace: Trace,
                       profile: CharsetProfile | None, recoding: Recoding) -> Answer:
        incoming = call.headers
        headers = {k: incoming[k] for k in _FORWARD_REQUEST if k in incoming}
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))  # a signed body is longer than what arrived
        headers[H_VIA] = exchange.via
        headers[H_MESSAGE_ID] = exchange.message_id
        if trace.client is not None:
            headers[H_CLIENT] = trace.client
        sent: bytes | AsyncIterable[bytes] = body
        if profile is not None:  # to the partner's encoding (a converted body keeps RequestBody's error)
            sent = recode_envelope(profile, headers, body, recoding, exchange.route.destination)
            if isinstance(sent, bytes) and sent is not body:
                trace.forwarded_bytes = len(sent)
        trace.forwarded = True
        try:
            reply = await self._upstream.post(exchange.route, headers, sent)
        except GatewayError as exc:
            if (error := _error_of(sent)) is not None:
                trace.forwarded = False
                raise error from None
            trace.forwarded = may_have_sent(exc)
            raise
        trace.answered = time.perf_counter()
        trace.endpoint = sent_to(exchange.route)
        try:
            if (error := _error_of(sent)) is not None:
                trace.forwarded = False
                raise error
            if profile is not None:
                reply = await recode_reply(profile, reply, recoding, exchange.route.destination)
            answer = await respond(call, reply, exchange, trace, lambda: self._settle(call, sent, trace, recoding))
            if (error := _error_of(sent)) is not None:  # found while an answer was read whole
                trace.forwarded = False
                raise error
            return answer
        finally:
            reply.release()

    async def _settle(self, call: Call, body: bytes | AsyncIterable[bytes], trace: Trace,
                      recoding: Recoding) -> None:
        """Before a streamed answer's last chunk: the request body held up, and the records are durable."""
        if (error := _error_of(body)) is not None:
            call.abort()
            raise ConnectionResetError(f"the request body was refused after forwarding began: {error.reason}")
        await self._log(call, trace, recoding)

    async def _store(self, call: Call, exchange: Exchange, body: bytes | RequestBody,
                     trace: Trace, version: SoapVersion) -> Answer:
        """A mailbox route: store the message as a JX document and answer Accepted."""
        if self._deposit is None:
            raise EndpointUnavailable("JX mailboxes are not available", destination=exchange.route.destination)
        answer = await self._deposit(exchange.route, exchange.message_id, trace.sender, trace.client,
                                     call.headers.get("Content-Type", ""), version, body)
        trace.forwarded, trace.http_status = True, 200
        trace.sent_response(answer, relayed=False)
        return Answer(200, None, {"Content-Type": fault_content_type(version), "Server": SERVER,
                                  H_MESSAGE_ID: exchange.message_id}, answer)

    def _fault(self, error: GatewayError, version: SoapVersion, gateway: str, trace: Trace) -> Answer:
        log.info("fault %s: %s", error.code, error.reason)
        self._metrics.fault(error.code)
        body = gateway_fault(error, version, gateway=gateway)
        trace.status = "fault" if isinstance(error, ClientFault) else "error"
        trace.http_status, trace.fault_code = error.http_status, error.code
        trace.sent_response(body, relayed=False)
        headers = {"Content-Type": fault_content_type(version), "Server": SERVER}
        if trace.message_id is not None:
            headers[H_MESSAGE_ID] = trace.message_id
        return Answer(error.http_status, None, headers, body)


def _error_of(body: bytes | AsyncIterable[bytes]) -> GatewayError | None:
    """What stopped a streamed body (:class:`RequestBody`, or it converted): aiohttp wraps what they raise."""
    error = getattr(body, "error", None)
    return error if isinstance(error, GatewayError) else None


def _caller_version(call: Call) -> SoapVersion:
    """The SOAP version the caller speaks, for its faults (SOAP 1.1 when it cannot be told)."""
    version = version_for(call.content_type)
    if version is None and call.content_type == CT_RELATED:
        try:
            related = parse_related(call.headers["Content-Type"])
        except MalformedMessage:
            related = None
        version = related.soap_version if related is not None else None
    return version or SoapVersion.V11


def _root_of(framer: RootExtractor, whole: bytes) -> bytes:
    """The root part of a whole multipart body in memory; its framing must be complete."""
    root = framer.feed(whole)
    framer.finish()
    return root


def _feed_head(scanner: HeadScanner, outline: EnvelopeOutline, framer: RootExtractor | None,
               chunk: bytes) -> EnvelopeHead | None:
    """Feed the envelope's bytes in ``chunk`` (all of it, or the root part's share) to the scanner."""
    root = check_chunk(outline, framer, chunk)
    head = scanner.feed(root) if root else None
    if head is None and framer is not None and framer.root_ended:
        head = scanner.finish()
    return head


def _scanner(settings: GatewaySettings) -> HeadScanner:
    return HeadScanner(routing_header=settings.routing_header, max_bytes=settings.max_header_bytes)


def _scan(scanner: HeadScanner, whole: bytes) -> EnvelopeHead:
    """Feed a body already in memory slice by slice, so parsing stops after the Header."""
    view = memoryview(whole)
    for start in range(0, len(whole), _SCAN_SLICE):
        head = scanner.feed(bytes(view[start:start + _SCAN_SLICE]))
        if head is not None:
            return head
    return scanner.finish()
