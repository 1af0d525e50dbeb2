"""The one hardened XML parser: the only way bytes become elements in bmrgw.

No DTDs (SOAP forbids them; a DOCTYPE is refused outright), no entity
expansion, no network access, libxml2's limits with ``huge_tree`` off
(nesting depth 256, 10 MB per text node), and our own size limits on top.

:class:`HeadScanner` is the relay's incremental form: it is fed the first
chunks of a request and stops as soon as the SOAP Header has ended (or the
Body has begun), so only the bytes needed to find the routing key are parsed.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

from lxml import etree

from .errors import MalformedMessage, MessageTooLarge
from .ns import AP_URN_PREFIX, SOAP11_ENV, SOAP12_ENV, WSA, WSA_2004, SoapVersion

__all__ = ["parse", "scan_head", "HeadScanner", "EnvelopeHead", "PARSER_OPTIONS", "SCAN_WHOLE"]

PARSER_OPTIONS: dict[str, Any] = dict(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    collect_ids=False,
)

_ENVELOPES = {f"{{{SOAP11_ENV}}}Envelope": SoapVersion.V11, f"{{{SOAP12_ENV}}}Envelope": SoapVersion.V12}
_WSA_TO = (f"{{{WSA}}}To", f"{{{WSA_2004}}}To")
_SOAP_TAGS = (f"{{{SOAP11_ENV}}}*", f"{{{SOAP12_ENV}}}*")


def _refuse_dtd(element: etree._Element) -> None:
    if element.getroottree().docinfo.doctype:
        raise MalformedMessage("DTDs are not allowed in messages")


def parse(data: bytes, *, max_bytes: int) -> etree._Element:
    """Parse a whole document of at most ``max_bytes`` with the hardened parser."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"document of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        root = etree.fromstring(data, etree.XMLParser(**PARSER_OPTIONS))
    except etree.XMLSyntaxError as exc:
        raise MalformedMessage(f"not well-formed XML: {exc}") from exc
    _refuse_dtd(root)
    return root


@dataclass(frozen=True, kw_only=True)
class EnvelopeHead:
    """What the relay needs from the start of an envelope."""

    version: SoapVersion
    """SOAP version given by the Envelope's namespace."""
    to: str | None = None
    """Destination from the routing header, or from ``wsa:To`` ``urn:bmrgw:ap:{name}``."""
    sender: str | None = None
    """Sender business-AP name from the routing header."""
    message_id: str | None = None
    """MessageId from the routing header."""


def scan_head(data: bytes, *, routing_header: str) -> EnvelopeHead:
    """The head of a whole small envelope already in memory.

    For a few KiB, one C-speed parse of the whole document is three times
    cheaper than the incremental scanner, and reads no more bytes than its
    first slice would.  The relay uses it up to ``SCAN_WHOLE`` bytes.
    """
    try:
        root = etree.fromstring(data, _whole_parser())
    except etree.XMLSyntaxError as exc:
        raise MalformedMessage(f"not well-formed XML: {exc}") from exc
    version = _envelope_version(root)
    children = [child for child in root if isinstance(child.tag, str)]
    header = children[0] if children and children[0].tag == f"{{{version.envelope_ns}}}Header" else None
    body = children[1 if header is not None else 0] if len(children) > (header is not None) else None
    if body is None or body.tag != f"{{{version.envelope_ns}}}Body":
        what = body.tag if body is not None else "no Body"
        raise MalformedMessage(f"the SOAP Envelope must hold an optional Header and a Body, found {what}")
    return _head(version, header, routing_header) if header is not None else EnvelopeHead(version=version)


#: Bodies up to this size are parsed whole by :func:`scan_head`.
SCAN_WHOLE = 8192


class HeadScanner:
    """Incrementally parses an envelope up to the end of its Header.

    Only events for elements in the two SOAP envelope namespaces reach Python
    (lxml filters the rest in C): Envelope, Header, Body and whatever else a
    sender put in those namespaces.  The routing key is read from the Header
    subtree once it has ended.
    """

    def __init__(self, *, routing_header: str, max_bytes: int) -> None:
        self._routing = routing_header
        self._max_bytes = max_bytes
        self._seen = 0
        self._version: SoapVersion | None = None
        self._parser = etree.XMLPullParser(events=("start", "end"), tag=_SOAP_TAGS, **PARSER_OPTIONS)

    def feed(self, chunk: bytes) -> EnvelopeHead | None:
        """Feed the next bytes; returns the head once it is complete."""
        self._seen += len(chunk)
        try:
            self._parser.feed(chunk)
            head = self._events()
        except etree.XMLSyntaxError as exc:
            raise MalformedMessage(f"not well-formed XML: {exc}") from exc
        if head is None and self._seen > self._max_bytes:
            raise MessageTooLarge(
                f"no end of the SOAP Header within the first {self._max_bytes} bytes",
                detail="gateway.max_header_bytes",
            )
        return head

    def finish(self) -> EnvelopeHead:
        """Called at the end of the body when the head was not complete yet."""
        try:
            root = self._parser.close()
            head = self._events()
        except etree.XMLSyntaxError as exc:
            raise MalformedMessage(f"not well-formed XML: {exc}") from exc
        if head is not None:
            return head
        if root is not None and root.tag not in _ENVELOPES:
            raise MalformedMessage(f"root element {root.tag} is not a SOAP 1.1 or 1.2 Envelope")
        raise MalformedMessage("the SOAP Envelope has no Body")

    def _events(self) -> EnvelopeHead | None:
        for event, element in self._parser.read_events():
            if self._version is None:
                self._version = _envelope_version(element)
                continue
            parent = element.getparent()
            if parent is None or parent.getparent() is not None:
                continue  # deeper than the Envelope's children: the Header's own business
            name = etree.QName(element)
            if name.namespace != self._version.envelope_ns or name.localname not in ("Header", "Body"):
                raise MalformedMessage(f"unexpected {element.tag} in the SOAP Envelope")
            if name.localname == "Body":
                return self._body(element)
            if event == "end":
                return _head(self._version, element, self._routing)
        return None

    def _body(self, body: etree._Element) -> EnvelopeHead:
        assert self._version is not None
        before = body.getprevious()
        if before is not None and (before.tag != f"{{{self._version.envelope_ns}}}Header"
                                   or before.getprevious() is not None):
            raise MalformedMessage(f"unexpected {before.tag} before the SOAP Body")
        return EnvelopeHead(version=self._version)


def _envelope_version(element: etree._Element) -> SoapVersion:
    """The SOAP version of a root Envelope element; refuses anything else and DTDs."""
    if element.getparent() is not None or element.tag not in _ENVELOPES:
        raise MalformedMessage(f"root element {element.getroottree().getroot().tag} is not a SOAP Envelope")
    _refuse_dtd(element)
    return _ENVELOPES[element.tag]


def _head(version: SoapVersion, header: etree._Element, routing_header: str) -> EnvelopeHead:
    """Read the routing key from a complete SOAP Header element."""
    fields = _routing_fields(routing_header)
    found: dict[str, str | None] = {}
    routing = header.find(routing_header)
    if routing is not None:
        for child in routing:
            name = fields.get(child.tag)
            if name is not None and name not in found:
                found[name] = _text(child.text)
    to = found.get("to")
    if to is None:
        for tag in _WSA_TO:
            wsa_to = _text(header.findtext(tag))
            if wsa_to and wsa_to.startswith(AP_URN_PREFIX):
                to = wsa_to[len(AP_URN_PREFIX):] or None
                break
    return EnvelopeHead(version=version, to=to, sender=found.get("sender"), message_id=found.get("message_id"))


@functools.cache
def _routing_fields(routing_header: str) -> dict[str, str]:
    """Child tag → EnvelopeHead field, for the routing header's namespace."""
    ns = routing_header[1:].split("}", 1)[0]
    return {f"{{{ns}}}To": "to", f"{{{ns}}}From": "sender", f"{{{ns}}}MessageId": "message_id"}


_local = threading.local()


def _whole_parser() -> etree.XMLParser:
    # lxml parsers may be reused, but only by one thread at a time.
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = etree.XMLParser(**PARSER_OPTIONS)
    return parser


def _text(value: str | None) -> str | None:
    value = value.strip() if value else None
    return value or None
