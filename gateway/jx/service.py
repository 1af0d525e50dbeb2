"""The JX server at ``/jx`` (SPEC.md capability (E); JX手順 2004 and 2007 editions).

``POST /jx`` takes PutDocument, GetDocument and ConfirmDocument as
document/literal SOAP 1.1 with the ``MessageHeader`` header block, and
answers with the operation's response (boolean ``*Result`` and a
``MessageHeader``) or a SOAP 1.1 fault with HTTP 500 — 503 for
``InsufficientStorage`` (SPEC.md: a full data disk is HTTP 503), so that a
caller's HTTP retry logic comes back later.  ``GET /jx?wsdl``
serves the 2007 WSDL (``?wsdl=2004`` the 2004 one) with ``soap:address``
pointing at this gateway as the caller reached it.

Every operation leaves a record in the send/receive log (``kind: jx``).
Hand-outs, confirms, empty polls and faults go through the log's
group-commit writer, like relayed exchanges.  A PutDocument answers
``true`` only once both its document and its record are committed, so an
accepted document is never unlogged:

- on SQLite its record is written in the (group) transaction of the
  document (:attr:`DocumentStore.logs_inside`): every write holds the
  database's one write lock anyway, so the chain lock costs nothing more,
  and document and record share one disk flush;
- on PostgreSQL the document commits without the node's chain lock and its
  record goes through the group-commit writer (holding the chain head
  across the put's commit serialised every put of the node behind the
  writer's commits).  A crash, or a log that fails, between the two leaves
  a stored document whose sender saw no ``true``; it sends it again (same
  messageId, same content), gets ``true``, and that put is logged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from lxml import etree

import schemas
from gateway.errors import JournalUnavailable
from gateway.logs.clock import Clock, Now
from gateway.logs.journal import Journal
from gateway.logs.records import LogRecord
from gateway.security.auth import client_of
from gateway.security.message import MessageSecurity
from routing.config import Client
from routing.settings import GatewaySettings, JxSettings

from ..errors import (
    ClientFault,
    Forbidden,
    GatewayError,
    InsufficientStorage,
    MalformedMessage,
    MessageTooLarge,
    RequestTimeout,
    ServerFault,
)
from ..ns import H_JX_SHA256, H_SOAPACTION, WSSE, SoapVersion
from ..parser import parse
from ..soap import fault_content_type, gateway_fault
from .engine import INLINE_BYTES
from .store import Document, DocumentStore, Leased, NewDocument
from .wire import (
    JxRequest,
    MessageHeader,
    RequestReader,
    operation_of_action,
    request_encoding,
    response_envelope,
    split_at_data,
)

__all__ = ["JxService", "wsdl_for"]

log = logging.getLogger("bmrgw.jx")

#: Request bodies up to this size are read whole and parsed on the event loop.
_SMALL = 256 * 1024
#: Decoded document bytes of such a request held in memory instead of a spool file (the store's inline size).
_SPOOL_MEMORY = INLINE_BYTES
#: A document the hand-out read whole is finished on the event loop up to this size (its first piece is read
#: in the hand-out's thread).
_ON_LOOP = 2 * INLINE_BYTES
#: Base64 is written in pieces of this many bytes of document (a multiple of 3: no padding inside).
_B64_PIECE = 3 * 256 * 1024
_SERVER = "bmrgw"
_WSSE_SECURITY = f"{{{WSSE}}}Security"

def wsdl_for(edition: str, location: str) -> bytes:
    """The shipped WSDL of ``edition`` (2004 or 2007) with its ``soap:address`` set to ``location``."""
    document = parse(schemas.read(f"jx{edition}.wsdl"), max_bytes=1024 * 1024)
    for address in document.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address"):
        address.set("location", location)
    return bytes(etree.tostring(document, xml_declaration=True, encoding="utf-8"))


@dataclass(eq=False)
class Call:
    """What one JX call did, for its log record."""

    started: float = field(default_factory=time.perf_counter)
    operation: str = "-"
    message_id: str | None = None
    sender: str | None = None
    receiver: str | None = None
    client: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    sha256: str | None = None

    def record(self, now: Now, *, direction: str, status: str = "ok", fault_code: str | None = None,
               http_status: int | None = 200) -> LogRecord:
        return LogRecord.at(
            now, kind="jx", direction=direction, status=status, message_id=self.message_id,
            from_ap=self.sender, to_ap=self.receiver, endpoint=f"jx:{self.operation}",
            bytes_in=self.bytes_in, bytes_out=self.bytes_out, sha256=self.sha256, client=self.client,
            duration_ms=1000 * (time.perf_counter() - self.started), http_status=http_status,
            fault_code=fault_code)


class JxService:
    """The ``/jx`` handlers over one :class:`DocumentStore`."""

    def __init__(self, *, store: DocumentStore, settings: GatewaySettings, clock: Clock, journal: Journal | None,
                 security: Callable[[], MessageSecurity | None] = lambda: None) -> None:
        self.store = store
        self.gateway_settings = settings
        self.settings: JxSettings = settings.jx
        self.gateway = settings.name
        self.clock = clock
        self.journal = journal
        self.client_timeout = settings.client_timeout
        self.security = security

    # -- GET /jx?wsdl ------------------------------------------------------------

    async def wsdl(self, request: web.Request) -> web.Response:
        if "wsdl" not in request.query:
            raise web.HTTPNotFound(text="the JX service answers POST; its WSDL is at ?wsdl\n")
        edition = request.query.get("wsdl") or "2007"
        if edition not in ("2004", "2007"):
            raise web.HTTPNotFound(text="?wsdl, ?wsdl=2007 or ?wsdl=2004\n")
        location = str(request.url.with_query(None))
        return web.Response(body=wsdl_for(edition, location), content_type="text/xml", charset="utf-8")

    # -- POST /jx ----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        call = Call()
        client = client_of(request)
        call.client = client.name if client is not None else None
        try:
            if self.journal is not None:
                await self.journal.admit()
            jx = await self._read(request, call)
            return await self._dispatch(request, jx, call)
        except GatewayError as exc:
            return await self._fault(exc, call)

    async def _read(self, request: web.Request, call: Call) -> JxRequest:
        if request.content_type.lower() != "text/xml":
            raise MalformedMessage(f"JX is SOAP 1.1: Content-Type must be text/xml, not {request.content_type!r}")
        if operation_of_action(request.headers.get(H_SOAPACTION, "")) == "PutDocument":
            self.store.check_disk()  # before the document is spooled; the put checks again
        limit = self.settings.max_document_bytes * 4 // 3 + 1024 * 1024
        if request.content_length is not None and request.content_length > limit:
            raise MessageTooLarge(f"request of {request.content_length} bytes exceeds the limit of {limit}")
        client = client_of(request)
        if client is not None and client.wss_verify is not None:
            return await self._read_signed(request, call, client)
        first = await _receive(request, self.client_timeout)
        reader = self._reader(request, first)
        try:
            call.bytes_in = len(first)
            reader.feed(first)
            await self._feed(request, reader, call, limit)
            jx = await asyncio.to_thread(reader.finish) if reader.has_document else reader.finish()
        except BaseException:
            reader.abort()
            raise
        return self._checked(request, jx, call)

    def _checked(self, request: web.Request, jx: JxRequest, call: Call) -> JxRequest:
        self._check_action(request, jx)
        call.operation = jx.operation
        return jx

    def _reader(self, request: web.Request, first: bytes, understood: frozenset[str] = frozenset()) -> RequestReader:
        sealed = self.store.vault.sealing  # the spool is fsynced only if it becomes a blob file (files.place)
        # A small request's document stays in memory (at most _SPOOL_MEMORY bytes per request being read):
        # no spool file, no sealing and unsealing it under a throw-away key.
        small = request.content_length is not None and request.content_length <= _SMALL
        return RequestReader(self.store.spool_dir, max_document_bytes=self.settings.max_document_bytes,
                             encoding=request_encoding(first, request.charset), durable=False,
                             understood=understood, sealed=sealed, memory=_SPOOL_MEMORY if small else 0)

    async def _read_signed(self, request: web.Request, call: Call, client: Client) -> JxRequest:
        """A client with ``wss.verify`` signs its requests: read whole (up to gateway.max_message_bytes), verify, parse."""
        limit = self.gateway_settings.max_message_bytes
        chunks: list[bytes] = []
        while chunk := await _receive(request, self.client_timeout):
            call.bytes_in += len(chunk)
            if call.bytes_in > limit:
                raise MessageTooLarge(f"a signed JX request is verified whole: it may not exceed {limit} bytes",
                                      detail="gateway.max_message_bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        security = self.security()
        if security is None:
            raise ServerFault("WS-Security verification is not available")
        await security.verify_client(body, content_type=request.content_type, client=client,
                                     settings=self.gateway_settings)
        reader = self._reader(request, body, understood=frozenset({_WSSE_SECURITY}))
        try:
            await asyncio.to_thread(reader.feed, body)
            jx = await asyncio.to_thread(reader.finish)
        except BaseException:
            reader.abort()
            raise
        return self._checked(request, jx, call)

    async def _feed(self, request: web.Request, reader: RequestReader, call: Call, limit: int) -> None:
        small = request.content_length is not None and request.content_length <= _SMALL
        while chunk := await _receive(request, self.client_timeout):
            call.bytes_in += len(chunk)
            if call.bytes_in > limit:
                raise MessageTooLarge(f"request exceeds the limit of {limit} bytes")
            if small:
                reader.feed(chunk)
            else:  # parsing and decoding megabytes must not stall the event loop
                await asyncio.to_thread(reader.feed, chunk)

    @staticmethod
    def _check_action(request: web.Request, jx: JxRequest) -> None:
        action = request.headers.get(H_SOAPACTION, "").strip().strip('"')
        if action and operation_of_action(action) != jx.operation:
            if jx.spool is not None:
                jx.spool.discard()
            raise MalformedMessage(f"SOAPAction {action!r} does not name the body's operation {jx.operation}")

    async def _dispatch(self, request: web.Request, jx: JxRequest, call: Call) -> web.StreamResponse:
        handlers: dict[str, Callable[[web.Request, JxRequest, Call], Awaitable[web.StreamResponse]]] = {
            "PutDocument": self._put, "GetDocument": self._get, "ConfirmDocument": self._confirm}
        return await handlers[jx.operation](request, jx, call)

    async def _put(self, request: web.Request, jx: JxRequest, call: Call) -> web.StreamResponse:
        spool = jx.spool
        assert spool is not None
        new = NewDocument(message_id=jx.field("messageId"), sender_id=jx.field("senderId"),
                          receiver_id=jx.field("receiverId"), format_type=jx.field("formatType"),
                          document_type=jx.field("documentType"), compress_type=jx.field("compressType"))
        call.message_id, call.sender, call.receiver, call.sha256 = (new.message_id, new.sender_id,
                                                                    new.receiver_id, spool.sha256)
        try:
            _check_id(new.message_id, "messageId")
            _check_id(new.receiver_id, "receiverId")
            self._authorise(request, "send", new.sender_id)
        except GatewayError:
            spool.discard()
            raise
        body = response_envelope(jx.namespace, "PutDocument", jx.header.answer(gateway=self.gateway),
                                 [("PutDocumentResult", "true")])
        call.bytes_out = len(body)
        if self.journal is None or self.store.logs_inside:
            stored = await asyncio.to_thread(self.store.put, new, spool,
                                             call.record(self.clock.now(), direction="request"))
            if not stored:  # the same document again: already logged when it was stored
                await self._log(call.record(self.clock.now(), direction="request"))
            return _xml(body)
        # The document commits without the log's chain lock; its record goes through the group-commit
        # writer, and ``true`` waits until that is durable too (see the module docstring).
        await asyncio.to_thread(self.store.put, new, spool, None)
        done = await self.journal.record(call.record(self.clock.now(), direction="request"), durable=True)
        try:
            logged = await asyncio.wait_for(done, self.client_timeout)
        except TimeoutError:
            logged = False
        if not logged:
            raise JournalUnavailable("the send/receive log did not commit the PutDocument's record: the document "
                                     "is stored; send it again (same messageId) for a true")
        return _xml(body)

    async def _get(self, request: web.Request, jx: JxRequest, call: Call) -> web.StreamResponse:
        receiver = call.receiver = jx.field("receiverId")
        self._authorise(request, "receive", receiver)
        header = jx.header
        handed = await asyncio.to_thread(self._hand_out, receiver, header, call)
        if handed is None:
            before, after = split_at_data(jx.namespace, header.answer(gateway=self.gateway), False, "", {})
            call.message_id = header.message_id or None
            await self._log(call.record(self.clock.now(), direction="response"))
            return _xml(before + after)
        response, complete = await self._stream(request, jx, *handed)
        await self._log(call.record(self.clock.now(), direction="response", status="ok" if complete else "error"))
        return response

    def _hand_out(self, receiver: str, header: MessageHeader,
                  call: Call) -> tuple[Leased, Generator[bytes, None, None], bytes] | None:
        """In a worker thread: lease the next document and read (and, if sealed, authenticate) its first
        piece, in one hand-over — opening it may read a data key from the database, never on the event loop."""
        leased = self.store.hand_out(receiver, format_type=header.format_type, document_type=header.document_type)
        if leased is None:
            return None
        document = leased.document
        call.message_id, call.sender, call.sha256 = document.message_id, document.sender_id, document.sha256
        call.bytes_out = document.size
        chunks = self.store.chunks(document, _B64_PIECE, leased)
        try:
            # Before answering: a document whose bytes fail is refused with a fault, not begun and cut off.
            first = next(chunks, b"")
        except BaseException:
            chunks.close()
            raise
        return leased, chunks, first

    async def _stream(self, request: web.Request, jx: JxRequest, leased: Leased,
                      chunks: Generator[bytes, None, None], first: bytes) -> tuple[web.StreamResponse, bool]:
        """Send the document base64-encoded piece by piece; ``False`` when it had to be cut off."""
        document = leased.document
        fields = {"senderId": document.sender_id, "receiverId": document.receiver_id,
                  "formatType": document.format_type, "documentType": document.document_type,
                  "compressType": document.compress_type}
        header = jx.header.answer(gateway=self.gateway, format_type=document.format_type,
                                  document_type=document.document_type)
        before, after = split_at_data(jx.namespace, header, True, document.message_id, fields)
        # The rest of a document the hand-out read whole and small is in memory, its key in hand: the
        # generator finishes on the event loop (no thread hand-over).
        hop = not (leased.in_hand and document.size <= _ON_LOOP)
        response = web.StreamResponse(headers={"Content-Type": "text/xml; charset=utf-8", "Server": _SERVER,
                                               H_JX_SHA256: document.sha256})
        response.content_length = len(before) + 4 * ((document.size + 2) // 3) + len(after)
        try:
            await response.prepare(request)
            await response.write(before)
            sent = await self._write_data(response, document, chunks, first, hop)
        except ConnectionError as exc:  # the poller went away: the lease runs out and it is handed out again
            chunks.close()
            log.warning("document %s: the poller broke off the answer: %s", document.message_id, exc)
            return response, False
        if sent != document.size:
            log.error("document %s: %d of %d bytes could be read; connection cut", document.message_id,
                      sent, document.size)
            _cut(request)
            return response, False
        await response.write(after)
        await response.write_eof()
        return response, True

    async def _write_data(self, response: web.StreamResponse, document: Document,
                          chunks: Generator[bytes, None, None], first: bytes, hop: bool = True) -> int:
        """Write the base64 of the document's bytes; returns how many bytes could be read."""
        sent = 0
        carry = b""  # base64 pieces must be whole quartets: only the very last one may carry padding
        chunk = first
        try:
            while chunk:
                sent += len(chunk)
                chunk = carry + chunk
                whole = len(chunk) - len(chunk) % 3
                carry = chunk[whole:]
                await response.write(base64.b64encode(chunk[:whole]))
                chunk = await asyncio.to_thread(next, chunks, b"") if hop else next(chunks, b"")
            await response.write(base64.b64encode(carry))
        except GatewayError as exc:
            log.error("document %s: %s", document.message_id, exc.reason)
        finally:
            chunks.close()  # closes the blob file at once, not when the generator is collected
        return sent

    async def _confirm(self, request: web.Request, jx: JxRequest, call: Call) -> web.StreamResponse:
        call.message_id, call.sender = jx.field("messageId"), jx.field("senderId")
        call.receiver = jx.field("receiverId")
        self._authorise(request, "receive", call.receiver)

        document, first = await asyncio.to_thread(self.store.confirm, call.message_id, call.sender, call.receiver)
        call.sha256 = document.sha256
        await self._log(call.record(self.clock.now(), direction="request"))
        body = response_envelope(jx.namespace, "ConfirmDocument", jx.header.answer(gateway=self.gateway),
                                 [("ConfirmDocumentResult", "true" if first else "false")])
        return _xml(body)

    @staticmethod
    def _authorise(request: web.Request, what: str, jx_id: str) -> None:
        """``clients.*.jx``: a client receives only for its ``receive`` ids, sends only as its ``send`` ids."""
        client = client_of(request)
        if client is None:
            return  # open mode (no clients configured): development only
        allowed = client.may_send_jx(jx_id) if what == "send" else client.may_receive_jx(jx_id)
        if not allowed:
            raise Forbidden(f"client {client.name!r} may not {what} as JX id {jx_id!r}", detail=jx_id)

    async def _fault(self, error: GatewayError, call: Call) -> web.Response:
        log.info("jx fault %s: %s", error.code, error.reason)
        body = gateway_fault(error, SoapVersion.V11, gateway=self.gateway)
        status = "fault" if isinstance(error, ClientFault) else "error"
        call.bytes_out = len(body)
        http_status = error.http_status if isinstance(error, InsufficientStorage) else 500
        await self._log(call.record(self.clock.now(), direction="response" if call.operation == "GetDocument"
                                    else "request", status=status, fault_code=error.code, http_status=http_status))
        return web.Response(status=http_status, body=body,
                            headers={"Content-Type": fault_content_type(SoapVersion.V11), "Server": _SERVER})

    async def _log(self, record: LogRecord) -> None:
        if self.journal is None:
            return
        try:
            await self.journal.record(record)
        except JournalUnavailable as exc:
            log.error("send/receive log unavailable (%s); JX call not logged: %s", exc.reason, record.to_json())


def _check_id(value: str, name: str) -> None:
    if not value or len(value) > 256 or not value.isprintable():
        raise MalformedMessage(f"{name} must be 1 to 256 printable characters, not {value!r}")


def _xml(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": "text/xml; charset=utf-8", "Server": _SERVER})


def _cut(request: web.Request) -> None:
    # The status line and part of the body are out: cutting the connection is the
    # only way left to tell the caller the document is incomplete.
    if request.transport is not None:
        request.transport.abort()


async def _receive(request: web.Request, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            return await request.content.readany()
    except TimeoutError as exc:
        raise RequestTimeout(f"the caller sent nothing for {timeout:g} s") from exc
    except (aiohttp.ClientPayloadError, ConnectionResetError) as exc:
        raise MalformedMessage(f"the request body is incomplete: {exc}") from exc
