"""The JX protocol on the wire (JX手順, ``schemas/jx2004.wsdl`` and ``jx2007.wsdl``).

Requests are read incrementally: :class:`RequestReader` is an lxml *target*
parser fed chunk by chunk, so no tree is built and the base64 ``data`` of a
PutDocument flows through :class:`~gateway.jx.spool.Base64Spool` straight into a
temporary file (a small one stays in memory), hashed on the way — memory stays
flat whatever the document's size.
Responses are built by :func:`response_envelope`; a GetDocument answer is
cut around its ``data`` element (:func:`split_at_data`) so that the document
can be base64-encoded chunk by chunk between the two halves.

Both editions share one namespace; the 2007 edition adds the optional
``OptionalFormatType``/``OptionalDocumentType`` header fields.  Some 2007
clients are generated from WSDL copies whose namespace lost the hyphen of
``jedicos-xml`` (:data:`~gateway.ns.JX_HYPHENLESS`); requests in that variant
are accepted and answered in it.  The WSDL we publish keeps the strict one.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lxml import etree

from ..errors import MalformedMessage, MessageTooLarge
from ..ids import new_message_id
from ..ns import JX, JX_HYPHENLESS, SOAP11_ENV
from ..parser import PrologGuard, hardened_parser
from .spool import Base64Spool, Spool, SpoolWriter

__all__ = [
    "split_tag",
    "local_name",
    "OPERATIONS",
    "MessageHeader",
    "JxRequest",
    "Spool",
    "SpoolWriter",
    "Base64Spool",
    "RequestReader",
    "jx_namespace",
    "request_encoding",
    "operation_of_action",
    "response_envelope",
    "split_at_data",
    "DOCUMENT_FIELDS",
]

OPERATIONS = ("PutDocument", "GetDocument", "ConfirmDocument")
#: The text fields of a PutDocument / GetDocumentResponse besides ``data``, in WSDL order.
DOCUMENT_FIELDS = ("senderId", "receiverId", "formatType", "documentType", "compressType")
_REQUEST_FIELDS = {
    "PutDocument": ("messageId", "data", *DOCUMENT_FIELDS),
    "GetDocument": ("receiverId",),
    "ConfirmDocument": ("messageId", "senderId", "receiverId"),
}
_HEADER_FIELDS = ("From", "To", "MessageId", "Timestamp", "OptionalFormatType", "OptionalDocumentType")
#: Text of all small fields together; the document itself is not counted here.
MAX_FIELDS_TEXT = 64 * 1024
_ENVELOPE = f"{{{SOAP11_ENV}}}Envelope"
_HEADER = f"{{{SOAP11_ENV}}}Header"
_BODY = f"{{{SOAP11_ENV}}}Body"
_MUST_UNDERSTAND = f"{{{SOAP11_ENV}}}mustUnderstand"
#: Request namespaces accepted: the published one and the 2007 edition's variant some WSDL copies carry.
_ACCEPTED = frozenset({JX, JX_HYPHENLESS})


_DECLARED = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def request_encoding(first_bytes: bytes, charset: str | None) -> str | None:
    """The encoding to parse with: the XML declaration's if it names one, else the HTTP charset.

    Clients in the field send ``charset=utf-8`` over Shift_JIS documents that
    declare themselves correctly; the declaration is the better witness.
    """
    return None if _DECLARED.match(first_bytes[:200]) else charset


def jx_namespace(namespace: str | None) -> bool:
    """Whether ``namespace`` is the JX namespace, as published or as the hyphen-less ``…/jedicosxml/…`` variant."""
    return namespace in _ACCEPTED


def operation_of_action(action: str) -> str | None:
    """The operation a SOAPAction names (``"<ns>/PutDocument"``, quoted or not), if any."""
    value = action.strip().strip('"').strip()
    namespace, _, op = value.rpartition("/")
    return op if op in OPERATIONS and jx_namespace(namespace) else None


@dataclass(frozen=True, kw_only=True)
class MessageHeader:
    """The JX ``MessageHeader`` SOAP header block."""

    sender: str = ""
    """``From``."""
    to: str = ""
    """``To``."""
    message_id: str = ""
    """``MessageId`` of this SOAP message (not of the document)."""
    timestamp: str = ""
    format_type: str | None = None
    """2007 ``OptionalFormatType``: GetDocument returns only documents of this formatType."""
    document_type: str | None = None
    """2007 ``OptionalDocumentType``: GetDocument returns only documents of this documentType."""

    @property
    def edition_2007(self) -> bool:
        return self.format_type is not None or self.document_type is not None

    @classmethod
    def from_fields(cls, found: dict[str, str]) -> MessageHeader:
        return cls(sender=found.get("From", ""), to=found.get("To", ""), message_id=found.get("MessageId", ""),
                   timestamp=found.get("Timestamp", ""), format_type=found.get("OptionalFormatType"),
                   document_type=found.get("OptionalDocumentType"))

    def answer(self, *, gateway: str, format_type: str | None = None,
               document_type: str | None = None) -> MessageHeader:
        """The header of our response: addressed back, a new id, now; 2007 fields only for 2007 callers."""
        return MessageHeader(
            sender=self.to or gateway, to=self.sender, message_id=new_message_id(),
            timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            format_type=(format_type or "") if self.edition_2007 else None,
            document_type=(document_type or "") if self.edition_2007 else None,
        )


@dataclass(kw_only=True)
class JxRequest:
    """One parsed JX request."""

    operation: str
    namespace: str
    """The JX namespace variant the caller used (answers use it too)."""
    header: MessageHeader
    fields: dict[str, str]
    spool: Spool | None = None
    """PutDocument's decoded ``data``."""

    def field(self, name: str) -> str:
        return self.fields.get(name, "")


@dataclass(eq=False)
class _Target:
    """lxml parser target: tracks where it is and keeps only what a JX request holds."""

    spool_dir: Path
    limit: int
    durable: bool = True
    sealed: bool = False
    """Seal the spooled document under a throw-away key (``gateway.encryption``)."""
    memory: int = 0
    """Keep a document of up to this many bytes in memory (:class:`SpoolWriter`)."""
    understood: frozenset[str] = frozenset()
    """Header blocks processed before parsing (a verified wsse:Security)."""
    path: list[str] = field(default_factory=list)
    namespace: str | None = None
    operation: str | None = None
    header: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    spool: Base64Spool | None = None
    text: list[str] = field(default_factory=list)
    text_size: int = 0
    header_seen: bool = False
    body_seen: bool = False

    def doctype(self, *_: Any) -> None:
        raise MalformedMessage("DTDs are not allowed in messages")

    def start(self, tag: str, attrib: Any, nsmap: Any = None) -> None:
        depth = len(self.path)
        self.path.append(tag)
        if depth == 0 and tag != _ENVELOPE:
            raise MalformedMessage(f"root element {tag} is not a SOAP 1.1 Envelope")
        if depth == 1:
            self._envelope_child(tag)
        elif depth == 2 and self.path[1] == _HEADER:
            _check_understood(tag, attrib, self.understood)
        elif depth == 2 and self.path[1] == _BODY:
            self._operation(tag)
        elif depth == 3 and self.path[1] == _BODY and local_name(tag) == "data" and self.operation == "PutDocument":
            self.spool = Base64Spool(self.spool_dir, limit=self.limit, durable=self.durable, sealed=self.sealed,
                                     memory=self.memory)
        self.text = []

    def _envelope_child(self, tag: str) -> None:
        if tag == _HEADER and not self.body_seen and not self.header_seen:
            self.header_seen = True
            return
        if tag == _BODY and not self.body_seen:
            self.body_seen = True
            return
        raise MalformedMessage(f"unexpected {tag} in the SOAP Envelope")

    def _operation(self, tag: str) -> None:
        namespace, local = split_tag(tag)
        if self.operation is not None:
            raise MalformedMessage(f"more than one element in the SOAP Body ({tag})")
        if not jx_namespace(namespace) or local not in OPERATIONS:
            raise MalformedMessage(f"{tag} is not a JX operation (PutDocument, GetDocument, ConfirmDocument "
                                   f"in {JX})")
        self.operation, self.namespace = local, namespace

    def data(self, text: str) -> None:
        if self._in_data():
            assert self.spool is not None
            self.spool.write_text(text)
            return
        self.text_size += len(text)
        if self.text_size > MAX_FIELDS_TEXT:
            raise MessageTooLarge(f"the JX fields hold more than {MAX_FIELDS_TEXT} characters of text")
        self.text.append(text)

    def _in_data(self) -> bool:
        return self.spool is not None and len(self.path) == 4 and local_name(self.path[3]) == "data"

    def end(self, tag: str) -> None:
        depth = len(self.path)
        self.path.pop()
        if depth == 3 and self.path[1] == _HEADER:
            return
        if depth == 4 and self.path[1] == _HEADER and _is_message_header(self.path[2]):
            self._keep(self.header, tag, _HEADER_FIELDS)
        elif depth == 4 and self.path[1] == _BODY and self.operation is not None:
            if not self._in_data_end(tag):
                self._keep(self.fields, tag, _REQUEST_FIELDS[self.operation])
        self.text = []

    def _in_data_end(self, tag: str) -> bool:
        return self.spool is not None and local_name(tag) == "data"

    def _keep(self, into: dict[str, str], tag: str, names: tuple[str, ...]) -> None:
        namespace, local = split_tag(tag)
        if local in names and (namespace is None or jx_namespace(namespace)):
            if local in into:
                raise MalformedMessage(f"{local} appears twice")
            into[local] = "".join(self.text).strip()

    def close(self) -> None:
        return None


def _check_understood(tag: str, attrib: Any, understood: frozenset[str]) -> None:
    """SOAP 1.1 §4.2.3: a header block we do not process may not be marked mustUnderstand."""
    if attrib.get(_MUST_UNDERSTAND) in ("1", "true") and not _is_message_header(tag) and tag not in understood:
        raise MalformedMessage(f"header block {tag} must be understood, and the JX server does not process it")


def _is_message_header(tag: str) -> bool:
    namespace, local = split_tag(tag)
    return local == "MessageHeader" and jx_namespace(namespace)


def split_tag(tag: str) -> tuple[str | None, str]:
    """``{ns}local`` → ``(ns, local)``; ``(None, tag)`` without a namespace."""
    if tag.startswith("{"):
        namespace, local = tag[1:].split("}", 1)
        return namespace, local
    return None, tag


def local_name(tag: str) -> str:
    """The local part of a Clark-notation tag."""
    return split_tag(tag)[1]


class RequestReader:
    """Feed a JX request's bytes as they arrive; :meth:`finish` returns the :class:`JxRequest`."""

    def __init__(self, spool_dir: Path, *, max_document_bytes: int, encoding: str | None = None,
                 durable: bool = True, understood: frozenset[str] = frozenset(), sealed: bool = False,
                 memory: int = 0) -> None:
        self._guard = PrologGuard(encoding)  # first: an unknown charset is the client's MalformedMessage
        self._target = _Target(spool_dir=spool_dir, limit=max_document_bytes, durable=durable, sealed=sealed,
                               understood=understood, memory=memory)
        self._parser = hardened_parser(target=self._target, encoding=encoding)

    def feed(self, chunk: bytes) -> None:
        try:
            chunk = self._guard.feed(chunk)
            if chunk:
                self._parser.feed(chunk)
        except etree.XMLSyntaxError as exc:
            self.abort()
            raise MalformedMessage(f"not well-formed XML: {exc}") from exc
        except (MalformedMessage, MessageTooLarge):
            self.abort()
            raise
        except LookupError as exc:  # an encoding libxml2 does not know
            self.abort()
            raise MalformedMessage(f"unsupported encoding: {exc}") from exc

    def finish(self) -> JxRequest:
        try:
            rest = self._guard.close()
            if rest:
                self._parser.feed(rest)
            self._parser.close()
        except etree.XMLSyntaxError as exc:
            self.abort()
            raise MalformedMessage(f"not well-formed XML: {exc}") from exc
        except MalformedMessage:
            self.abort()
            raise
        target = self._target
        try:
            return self._request(target)
        except (MalformedMessage, MessageTooLarge):
            self.abort()
            raise

    def _request(self, target: _Target) -> JxRequest:
        if target.operation is None or target.namespace is None:
            raise MalformedMessage("the SOAP Body holds no JX operation")
        wanted = _REQUEST_FIELDS[target.operation]
        missing = [n for n in wanted if n != "data" and n not in target.fields]
        if target.operation == "PutDocument" and target.spool is None:
            missing.insert(1, "data")
        if missing:
            raise MalformedMessage(f"{target.operation} lacks {', '.join(missing)}")
        spool = target.spool.finish() if target.spool is not None else None
        return JxRequest(operation=target.operation, namespace=target.namespace,
                         header=MessageHeader.from_fields(target.header), fields=target.fields, spool=spool)

    @property
    def has_document(self) -> bool:
        """Whether a document is being spooled to a file (then :meth:`finish` writes and closes it, perhaps
        fsyncs it: call it off the event loop)."""
        return self._target.spool is not None and not self._target.spool.in_memory

    def abort(self) -> None:
        """Drop the partial document, if any (a failed request leaves no file behind)."""
        if self._target.spool is not None:
            self._target.spool.abort()


# -- responses -----------------------------------------------------------------


def response_envelope(namespace: str, operation: str, header: MessageHeader,
                      values: list[tuple[str, str]]) -> bytes:
    """``<OpResponse>`` with ``values`` (name, text) in order, and the MessageHeader, as UTF-8 bytes."""
    soap = f"{{{SOAP11_ENV}}}"
    envelope = etree.Element(f"{soap}Envelope", nsmap={"soap": SOAP11_ENV, "jx": namespace})
    head = etree.SubElement(etree.SubElement(envelope, f"{soap}Header"), f"{{{namespace}}}MessageHeader")
    for name, value in _header_values(header):
        etree.SubElement(head, f"{{{namespace}}}{name}").text = value
    answer = etree.SubElement(etree.SubElement(envelope, f"{soap}Body"), f"{{{namespace}}}{operation}Response")
    for name, value in values:
        etree.SubElement(answer, f"{{{namespace}}}{name}").text = value
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


def _header_values(header: MessageHeader) -> list[tuple[str, str]]:
    values = [("From", header.sender), ("To", header.to), ("MessageId", header.message_id),
              ("Timestamp", header.timestamp)]
    if header.format_type is not None:
        values.append(("OptionalFormatType", header.format_type))
    if header.document_type is not None:
        values.append(("OptionalDocumentType", header.document_type))
    return values


def split_at_data(namespace: str, header: MessageHeader, result: bool, message_id: str,
                  fields: dict[str, str]) -> tuple[bytes, bytes]:
    """A GetDocumentResponse in two halves: before and after the base64 text of ``data``."""
    mark = f"#data-{secrets.token_hex(16)}#"  # random: no field a client chose can contain it
    values = [("GetDocumentResult", "true" if result else "false"), ("messageId", message_id),
              ("data", mark), *((name, fields.get(name, "")) for name in DOCUMENT_FIELDS)]
    whole = response_envelope(namespace, "GetDocument", header, values)
    before, after = whole.split(mark.encode(), 1)
    return before, after
