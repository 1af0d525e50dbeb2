"""Mailbox endpoints: a relayed SOAP message stored as a JX document (SPEC.md "endpoints.yaml").

An endpoint ``{mailbox: ID}`` names an access-restricted site that cannot be
called: the relay hands the message to :class:`Mailbox`, which stores the
request body byte for byte (SOAP envelope and any attachments) as a JX
document for receiver ``ID`` — ``formatType`` ``SOAP``, ``documentType`` the
message's Content-Type (SOAP version, MIME boundary of attachments) — and
answers the sender ``<r:Accepted xmlns:r="urn:bmrgw:routing:1" messageId="…"/>``.
A mailbox at its quota (``QuotaExceeded``) or a data disk below
``gateway.min_free_bytes`` (``InsufficientStorage``) refuses the message
before it is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

from lxml import etree

from gateway.logs.clock import Clock
from gateway.logs.records import LogRecord
from routing.table import Route

from ..ns import ROUTING, SoapVersion
from .store import DocumentStore, NewDocument
from .wire import Spool, SpoolWriter

__all__ = ["Mailbox", "accepted_envelope", "FORMAT_SOAP"]

FORMAT_SOAP = "SOAP"
#: Stored messages are read from the caller in writes of at most this many bytes at once.
_SMALL = 256 * 1024


def accepted_envelope(version: SoapVersion, message_id: str) -> bytes:
    """The sender's answer: the message is stored for its receiver."""
    env = version.envelope_ns
    envelope = etree.Element(f"{{{env}}}Envelope", nsmap={"soap": env})
    accepted = etree.SubElement(etree.SubElement(envelope, f"{{{env}}}Body"), f"{{{ROUTING}}}Accepted",
                                nsmap={"r": ROUTING})
    accepted.set("messageId", message_id)
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


class Mailbox:
    """Stores relayed messages for mailbox endpoints; the relay's ``deposit`` seam."""

    def __init__(self, store: DocumentStore, clock: Clock, *, max_bytes: int) -> None:
        self.store = store
        self.clock = clock
        self.max_bytes = max_bytes

    async def __call__(self, route: Route, message_id: str, sender: str | None, client: str | None,
                       content_type: str, version: SoapVersion, body: bytes | AsyncIterable[bytes]) -> bytes:
        """Store ``body`` for ``route.mailbox``; returns the Accepted envelope."""
        assert route.mailbox is not None
        await asyncio.to_thread(self.store.check_room, route.mailbox)  # before a byte of it is stored
        spool = await self._spool(body)
        new = NewDocument(message_id=message_id, sender_id=sender or "", receiver_id=route.mailbox,
                          format_type=FORMAT_SOAP, document_type=content_type, compress_type="", source="mailbox")
        record = LogRecord.at(self.clock.now(), kind="jx", direction="request", status="ok",
                              message_id=message_id, from_ap=sender, to_ap=route.mailbox,
                              endpoint="jx:mailbox", bytes_in=spool.size, sha256=spool.sha256, client=client)
        await asyncio.to_thread(self.store.put, new, spool, record)
        return accepted_envelope(version, message_id)

    async def _spool(self, body: bytes | AsyncIterable[bytes]) -> Spool:
        sealed = self.store.vault.sealing  # the spool is fsynced only if it becomes a blob file (files.place)
        writer = SpoolWriter(self.store.spool_dir, limit=self.max_bytes, durable=False,
                             sealed=sealed)
        try:
            if isinstance(body, bytes):
                writer.write(body)
            else:
                async for chunk in body:
                    if len(chunk) > _SMALL or writer.size > _SMALL:
                        await asyncio.to_thread(writer.write, chunk)
                    else:
                        writer.write(chunk)
            return await asyncio.to_thread(writer.finish)
        except BaseException:
            writer.abort()
            raise
