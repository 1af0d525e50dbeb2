"""``bmrgw receive``: a ready-made receiving business AP for file transfer (capability D).

It serves ``urn:bmrgw:file:1`` (``schemas/file.wsdl``) on any path:
``PutFilePart`` as SwA or MTOM, SOAP 1.1 or 1.2, and ``GetFileStatus``.  A
part streams from the socket to its place in the staging file while it is
hashed (:mod:`attachments.staging`); it is recorded only when the whole
multipart body arrived intact and its size and SHA-256 match.  When the last
part is recorded the file is verified (and unzipped within the zip-bomb
limits) and published atomically into the folder.  A re-sent part is
answered ``duplicate`` without being written again.

Before anything of a transfer is staged, its declaration is held against the
limits: ``max_file_bytes`` and ``max_parts`` (413 ``MessageTooLarge``), and
the disk — a new transfer's declared size (and its unzipped size), or a
further part, must leave ``min_free_bytes`` free, else 503
``InsufficientStorage``.

With a character profile (``--charset``, :mod:`attachments.transfer.charset`)
each verified file, in the partner's encoding, is converted to UTF-8 (its
records checked first with ``--record-bytes``) in the staging folder before
it is published; what was substituted is logged and kept in
``.bmrgw-partial/<fileId>/converted.json``.  A file that cannot be converted
fails the last part's request with the fault (422 ``UnmappableCharacter`` or
``RecordLengthMismatch``, 400 ``MalformedMessage``) and is dropped.

A transfer belongs to its sender: the client the gateway authenticated
(``X-Bmrgw-Client``, which the gateway sets and never takes from a caller)
together with the business AP the routing header names (``r:From``, which
the gateway checked against that client's ``senders``).  A transfer that
would replace a file another sender published is refused
(``SenderMismatch``, :mod:`attachments.staging`).  The receiver must
therefore be reachable only through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from attachments.message import (
    MAX_ENVELOPE_BYTES,
    FileStatusReply,
    PartReply,
    PutFilePart,
    part_reply,
    routed_request,
    status_reply,
)
from attachments.mime import Event, MultipartReader, PartData, PartEnd, PartStart, RelatedType, parse_related
from attachments.parts import FileInfo, PartHasher, PartInfo
from attachments.staging import PartWriter, Sender, Staging
from gateway.crypto import Vault
from gateway.disk import FreeSpace
from gateway.durable import private_dir
from gateway.errors import (
    ClientFault,
    GatewayError,
    InsufficientStorage,
    MalformedMessage,
    MessageTooLarge,
    StorageFailed,
    UnmappableCharacter,
)
from gateway.ns import H_CLIENT, SoapVersion
from gateway.soap import fault_content_type, gateway_fault, version_for
from schemas import read as read_schema

from .charset import FileCharset, recode_file, summary

__all__ = ["ReceiveOptions", "FileReceiver", "make_receiver_app"]

log = logging.getLogger("bmrgw.receive")
#: Most code points kept in a transfer's converted.json (a partner's file may hold thousands of them).
_MOST_COUNTED = 1000


@dataclass(frozen=True, kw_only=True)
class ReceiveOptions:
    directory: Path
    """Where complete files are published."""
    max_file_bytes: int = 64 * 1024 ** 3
    """Largest file (and transmitted stream) accepted."""
    max_parts: int = 10000
    """Most parts a transfer may be declared in (64 GiB in the sender's default 64 MiB parts is 1024)."""
    min_free_bytes: int = 1024 ** 3
    """Free space the disk of ``directory`` keeps; a part that would leave less is refused."""
    max_ratio: float = 200.0
    """Largest inflate ratio of a zipped file."""
    name: str = "bmrgw-receive"
    """Name in the faults' ``g:Error gateway`` attribute."""
    keep_partial_days: float = 7.0
    """Transfers untouched this long are forgotten (checked at start and hourly)."""
    vault: Vault | None = None
    """Seals staged parts (``gateway.encryption`` of the receiver's config); ``None``: stored as they are."""
    org: str = ""
    """This receiving business-AP's name: the organisation whose data key seals its staged parts."""
    charset: FileCharset | None = None
    """Convert each file from the partner's encoding to UTF-8 (and check its records) before publishing it."""


class FileReceiver:
    """The request handler: one staging folder, one lock per transfer."""

    def __init__(self, options: ReceiveOptions) -> None:
        private_dir(options.directory)
        self._options = options
        self._staging = Staging(options.directory, max_file_bytes=options.max_file_bytes,
                                max_ratio=options.max_ratio, max_parts=options.max_parts, vault=options.vault,
                                org=options.org, convert=self._convert if options.charset is not None else None)
        self._space = FreeSpace([options.directory])
        self._locks: dict[str, asyncio.Lock] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        version = SoapVersion.V11
        try:
            related = parse_related(request.headers.get("Content-Type", ""))
            if related is not None:
                version = related.soap_version or version
                version, body = await self._multipart(request, related)
            else:
                version = version_for(request.content_type) or version
                version, body = await self._plain(request)
        except GatewayError as exc:  # first: some are OSErrors too (SenderMismatch is a PermissionError)
            log.warning("refused: %s: %s", exc.code, exc.reason)
            return await self._fault(request, exc, version)
        except OSError as exc:
            log.error("cannot store into %s: %s", self._options.directory, exc)
            return await self._fault(request, StorageFailed(f"the receiver cannot store the file: "
                                                            f"{exc.strerror or exc}"), version)
        return web.Response(body=body, content_type=version.content_type, charset="utf-8")

    async def _fault(self, request: web.Request, error: GatewayError, version: SoapVersion) -> web.Response:
        await _drain(request)
        status = error.http_status if isinstance(error, (ClientFault, InsufficientStorage)) else 500
        return web.Response(status=status, body=gateway_fault(error, version, gateway=self._options.name),
                            headers={"Content-Type": fault_content_type(version)})

    async def expire_forever(self) -> None:
        """Forget abandoned transfers now and then every hour."""
        max_age = self._options.keep_partial_days * 86400
        while True:
            gone = await asyncio.to_thread(self._staging.expire, max_age)
            if gone:
                log.info("forgot %d transfer(s) untouched for %g days", len(gone), self._options.keep_partial_days)
            await asyncio.sleep(_HOUR)

    async def _plain(self, request: web.Request) -> tuple[SoapVersion, bytes]:
        if request.content_length is not None and request.content_length > MAX_ENVELOPE_BYTES:
            raise MessageTooLarge(f"a file-transfer envelope is at most {MAX_ENVELOPE_BYTES} bytes")
        version, operation, sender = routed_request(await _envelope(request.content))
        if isinstance(operation, PutFilePart):
            raise MalformedMessage("PutFilePart needs its part as an attachment (multipart/related SwA or MTOM)")
        return version, status_reply(await self._status(operation, _sender(request, sender)), version)

    async def _status(self, file_id: str, sender: Sender) -> FileStatusReply:
        """What the receiver has of a transfer; another sender's transfer is not for this one to see."""
        self._staging.check_sender(file_id, sender)
        status = self._staging.status(file_id)
        if status.published is None and status.part_count and len(status.parts) == status.part_count:
            # Every part is here but the receiver stopped before publishing: finish now.
            async with self._lock(file_id):
                await asyncio.to_thread(self._staging.publish, file_id)
            status = self._staging.status(file_id)
        return FileStatusReply(file_id=file_id, parts=status.parts, part_count=status.part_count,
                               published=status.published)

    async def _multipart(self, request: web.Request, related: RelatedType) -> tuple[SoapVersion, bytes]:
        events = _events(request.content, MultipartReader(related.boundary))
        version, operation, sender = routed_request(await _root(events, related))
        if not isinstance(operation, PutFilePart):
            await _rest(events)
            return version, status_reply(await self._status(operation, _sender(request, sender)), version)
        async with self._lock(operation.info.file_id):
            reply = await self._put(operation, events, _sender(request, sender))
        log.info("file %s (%s) part %d/%d: %s", reply.file_id, operation.info.file_name, reply.part_no,
                 operation.info.part_count, reply.status)
        return version, part_reply(reply, version)

    @contextlib.asynccontextmanager
    async def _lock(self, file_id: str) -> AsyncIterator[None]:
        """One request at a time per transfer; the lock is dropped when nobody waits for it."""
        lock = self._locks.setdefault(file_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and self._locks.get(file_id) is lock:
                del self._locks[file_id]

    async def _put(self, put: PutFilePart, events: AsyncIterator[Event], sender: Sender) -> PartReply:
        info = put.info.check(max_file_bytes=self._options.max_file_bytes, max_parts=self._options.max_parts)
        part = info.part(put.part_no, put.part_sha256)
        self._check_room(info, part)
        self._staging.begin(info, sender)
        writer = self._staging.writer(info, part)
        try:
            await _attachment(events, put.content_id, writer or PartHasher(part))
            await _rest(events)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            self._staging.commit(writer, info.file_id)
        status = self._staging.status(info.file_id)
        if status.published is None and len(status.parts) == info.part_count:
            await asyncio.to_thread(self._staging.publish, info.file_id)
            status = self._staging.status(info.file_id)
            log.info("file %s published as %s", info.file_id, status.published)
        state = "complete" if status.published else "stored" if writer is not None else "duplicate"
        return PartReply(file_id=info.file_id, part_no=put.part_no, status=state,
                         parts_received=len(status.parts), published=status.published)


    def _convert(self, info: FileInfo, verified: Path, target: Path) -> tuple[Path, dict[str, object] | None]:
        """The verified file in UTF-8 (``target``), for :class:`Staging` to publish; its ``converted.json``."""
        charset = self._options.charset
        assert charset is not None
        try:
            result, losses = recode_file(verified, target, charset, to_partner=False,
                                         what=f"{info.file_name} as received")
        except UnmappableCharacter as exc:
            raise UnmappableCharacter(f"{info.file_name}: {exc.reason}; the file is not published",
                                      character=exc.character, position=exc.position, line=exc.line,
                                      column=exc.column) from exc
        except MalformedMessage as exc:
            raise MalformedMessage(f"{info.file_name}: {exc.reason}; the file is not published") from exc
        if charset.profile is None or not charset.converts:
            return result, None
        lost = summary(losses)
        log.info("file %s (%s) converted from %s to UTF-8: %d → %d bytes, %s", info.file_id, info.file_name,
                 charset.profile.encoding, info.file_size, os.path.getsize(result),
                 f"charset_substitutions {lost}" if lost else "nothing substituted")
        return result, {"file_name": info.file_name, "encoding": charset.profile.encoding,
                        "unmappable": charset.profile.unmappable, "bytes_received": info.file_size,
                        "bytes_published": os.path.getsize(result), "charset_substitutions": lost,
                        "substituted": losses.total, "counts": dict(losses.counts.most_common(_MOST_COUNTED))}

    def _check_room(self, info: FileInfo, part: PartInfo) -> None:
        """A new transfer must fit whole (with its unzipped and its converted copy); a further part itself."""
        if self._staging.started(info.file_id):
            need = part.size
        else:
            need = info.stream_size + (info.file_size if info.compression != "none" else 0)
            if self._options.charset is not None and self._options.charset.converts:
                need += 3 * info.file_size  # UTF-8 takes up to 3 bytes for 1 (half-width kana)
        self._space.check(self._options.min_free_bytes, need=need, what=f"receive file {info.file_id}")


def _sender(request: web.Request, routed_from: str | None) -> Sender:
    """Who sends: the client the gateway authenticated and the r:From it checked."""
    return Sender(client=request.headers.get(H_CLIENT), name=routed_from)


async def _events(content: aiohttp.StreamReader, reader: MultipartReader) -> AsyncIterator[Event]:
    try:
        async for chunk in content.iter_any():
            for event in reader.feed(chunk):
                yield event
    except (aiohttp.ClientPayloadError, ConnectionResetError) as exc:
        raise MalformedMessage(f"the request body is incomplete: {exc}") from exc
    reader.close()


async def _envelope(content: aiohttp.StreamReader) -> bytes:
    """A plain (not multipart) request body, at most MAX_ENVELOPE_BYTES."""
    body = bytearray()
    try:
        while chunk := await content.readany():
            body += chunk
            if len(body) > MAX_ENVELOPE_BYTES:
                raise MessageTooLarge(f"a file-transfer envelope is at most {MAX_ENVELOPE_BYTES} bytes")
    except (aiohttp.ClientPayloadError, ConnectionResetError) as exc:
        raise MalformedMessage(f"the request body is incomplete: {exc}") from exc
    return bytes(body)


async def _root(events: AsyncIterator[Event], related: RelatedType) -> bytes:
    """The root part, which must come first (as every SwA and MTOM sender writes it)."""
    first = await anext(events, None)
    if not isinstance(first, PartStart):
        raise MalformedMessage("the multipart body has no parts")
    if related.start is not None and first.content_id != related.start:
        raise MalformedMessage(f"the first part must be the root part {related.start}")
    root = bytearray()
    async for event in events:
        if isinstance(event, PartEnd):
            return bytes(root)
        if isinstance(event, PartData):
            root += event.data
            if len(root) > MAX_ENVELOPE_BYTES:
                raise MessageTooLarge(f"the root part exceeds {MAX_ENVELOPE_BYTES} bytes")
    raise MalformedMessage("the multipart body ends inside its root part")


async def _attachment(events: AsyncIterator[Event], content_id: str, sink: PartWriter | PartHasher) -> None:
    """Stream the attachment named ``content_id`` into ``sink`` and verify it."""
    start = await anext(events, None)
    if not isinstance(start, PartStart) or start.content_id != content_id:
        raise MalformedMessage(f"the part after the root must be the attachment {content_id}")
    async for event in events:
        if isinstance(event, PartEnd):
            sink.verify()
            return
        if isinstance(event, PartData):
            sink.write(event.data)
    raise MalformedMessage(f"the multipart body ends inside the attachment {content_id}")


async def _rest(events: AsyncIterator[Event]) -> None:
    """Read to the end, so a truncated body is refused before anything is recorded."""
    async for _ in events:
        pass


async def _drain(request: web.Request) -> None:
    """Read what the caller still sends (bounded), so it gets the fault instead of a reset."""
    try:
        async with asyncio.timeout(30):
            while await request.content.readany():
                pass
    except (TimeoutError, aiohttp.ClientPayloadError, ConnectionResetError):
        pass


RECEIVER = web.AppKey("receiver", FileReceiver)
_HOUR = 3600.0


def _expiry_ctx(receiver: FileReceiver) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(receiver.expire_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return ctx


def make_receiver_app(options: ReceiveOptions) -> web.Application:
    """The receiving AP: POST anywhere; ``GET ?wsdl`` serves ``schemas/file.wsdl``."""
    app = web.Application(client_max_size=MAX_ENVELOPE_BYTES + 1024)
    app[RECEIVER] = receiver = FileReceiver(options)
    app.cleanup_ctx.append(_expiry_ctx(receiver))

    async def post(request: web.Request) -> web.StreamResponse:
        return await request.app[RECEIVER].handle(request)

    async def wsdl(request: web.Request) -> web.Response:
        return web.Response(body=read_schema("file.wsdl"), content_type="text/xml", charset="utf-8")

    app.router.add_post("/{tail:.*}", post)
    app.router.add_get("/{tail:.*}", wsdl)
    return app
