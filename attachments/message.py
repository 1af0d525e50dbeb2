"""The file-transfer messages of ``urn:bmrgw:file:1`` (``schemas/file.wsdl``), built and read.

``PutFilePart`` carries one part as an attachment: in MTOM its ``part``
element holds ``<xop:Include href="cid:…"/>``, in SwA it holds the
``cid:`` URI itself (a WS-I swaRef).  ``GetFileStatus`` asks which parts a
receiver already has, so a sender can resume.  Requests carry the routing
header, so they are ordinary SOAP messages to the gateway.  Parsing goes
through the one hardened parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from lxml import etree

from gateway.errors import MalformedMessage
from gateway.ns import FILE, ROUTING, XOP, SoapVersion
from gateway.parser import parse

from .parts import FileInfo

__all__ = ["PutFilePart", "FileStatusReply", "PartReply", "put_file_part", "get_file_status", "read_request",
           "routed_request", "part_reply", "status_reply", "read_part_reply", "read_status_reply", "MAX_ENVELOPE_BYTES"]

#: File-transfer envelopes are small; anything bigger is not one of ours.
MAX_ENVELOPE_BYTES = 64 * 1024
_F = f"{{{FILE}}}"


@dataclass(frozen=True, kw_only=True)
class PutFilePart:
    """A PutFilePart request as the receiver reads it."""

    info: FileInfo
    part_no: int
    part_sha256: str
    content_id: str
    """Content-ID of the attachment part, with angle brackets."""


@dataclass(frozen=True, kw_only=True)
class PartReply:
    file_id: str
    part_no: int
    status: str
    """``stored``, ``duplicate`` or ``complete`` (the file is published)."""
    parts_received: int
    published: str | None = None


@dataclass(frozen=True, kw_only=True)
class FileStatusReply:
    file_id: str
    parts: frozenset[int]
    part_count: int | None
    published: str | None


def _envelope(version: SoapVersion, body: etree._Element, *, to: str | None = None, sender: str | None = None,
              message_id: str | None = None) -> bytes:
    env = version.envelope_ns
    root = etree.Element(f"{{{env}}}Envelope", nsmap={"soap": env, "f": FILE})
    if to is not None:
        routing = etree.SubElement(etree.SubElement(root, f"{{{env}}}Header"), f"{{{ROUTING}}}Routing",
                                   nsmap={"r": ROUTING})
        for name, value in (("To", to), ("From", sender), ("MessageId", message_id)):
            if value is not None:
                etree.SubElement(routing, f"{{{ROUTING}}}{name}").text = value
    etree.SubElement(root, f"{{{env}}}Body").append(body)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def _fields(parent: etree._Element, values: dict[str, object]) -> None:
    for name, value in values.items():
        if value is not None:
            etree.SubElement(parent, _F + name).text = str(value)


def put_file_part(info: FileInfo, part_no: int, part_sha256: str, *, content_id: str, mtom: bool,
                  version: SoapVersion, to: str, sender: str | None = None, message_id: str | None = None) -> bytes:
    """The root envelope of one PutFilePart; ``content_id`` names the attachment (no brackets)."""
    body = etree.Element(_F + "PutFilePart")
    _fields(body, {"fileId": info.file_id, "fileName": info.file_name, "partNo": part_no,
                   "partCount": info.part_count, "partSha256": part_sha256, "fileSha256": info.file_sha256,
                   "fileSize": info.file_size, "compression": info.compression, "streamSize": info.stream_size,
                   "partSize": info.part_size})
    part = etree.SubElement(body, _F + "part")
    if mtom:
        etree.SubElement(part, f"{{{XOP}}}Include", nsmap={"xop": XOP}).set("href", f"cid:{content_id}")
    else:
        part.text = f"cid:{content_id}"
    return _envelope(version, body, to=to, sender=sender, message_id=message_id)


def get_file_status(file_id: str, *, version: SoapVersion, to: str, sender: str | None = None,
                    message_id: str | None = None) -> bytes:
    body = etree.Element(_F + "GetFileStatus")
    _fields(body, {"fileId": file_id})
    return _envelope(version, body, to=to, sender=sender, message_id=message_id)


def part_reply(reply: PartReply, version: SoapVersion) -> bytes:
    body = etree.Element(_F + "PutFilePartResponse")
    _fields(body, {"fileId": reply.file_id, "partNo": reply.part_no, "status": reply.status,
                   "partsReceived": reply.parts_received, "published": reply.published})
    return _envelope(version, body)


def status_reply(reply: FileStatusReply, version: SoapVersion) -> bytes:
    body = etree.Element(_F + "GetFileStatusResponse")
    _fields(body, {"fileId": reply.file_id, "partCount": reply.part_count,
                   "parts": " ".join(str(n) for n in sorted(reply.parts)), "published": reply.published})
    return _envelope(version, body)


def body_of(envelope: bytes) -> tuple[SoapVersion, etree._Element]:
    """The SOAP version and the first Body child of an envelope."""
    return _body(parse(envelope, max_bytes=MAX_ENVELOPE_BYTES))


def _body(root: etree._Element) -> tuple[SoapVersion, etree._Element]:
    for version in SoapVersion:
        if root.tag == f"{{{version.envelope_ns}}}Envelope":
            bodies = root.findall(f"{{{version.envelope_ns}}}Body")
            if len(bodies) > 1:
                raise MalformedMessage("the SOAP Envelope has more than one Body")
            body = bodies[0] if bodies else None
            child = next((c for c in body if isinstance(c.tag, str)), None) if body is not None else None
            if child is None:
                raise MalformedMessage("the SOAP Body is empty")
            return version, child
    raise MalformedMessage(f"root element {root.tag} is not a SOAP Envelope")


def _text(element: etree._Element, name: str, *, required: bool = True) -> str | None:
    value = element.findtext(_F + name)
    if value is None and required:
        raise MalformedMessage(f"{etree.QName(element).localname} has no {name}")
    return value.strip() if value is not None else None


def _int(element: etree._Element, name: str) -> int:
    text = _text(element, name) or ""
    if not text.isdigit() or len(text) > 20:
        raise MalformedMessage(f"{name} must be a non-negative integer, not {text[:40]!r}")
    return int(text)


def _content_id(part: etree._Element | None) -> str:
    if part is None:
        raise MalformedMessage("PutFilePart has no part element")
    include = part.find(f"{{{XOP}}}Include")
    href = include.get("href", "") if include is not None else (part.text or "").strip()
    if not href.startswith("cid:") or len(href) < 5:
        raise MalformedMessage("PutFilePart's part must reference its attachment: xop:Include href or cid: URI")
    return f"<{unquote(href[4:])}>"


def read_put(element: etree._Element) -> PutFilePart:
    """The fields of a PutFilePart element."""
    info = FileInfo(file_id=_text(element, "fileId") or "", file_name=_text(element, "fileName") or "",
                    file_size=_int(element, "fileSize"), file_sha256=(_text(element, "fileSha256") or "").lower(),
                    compression=_text(element, "compression") or "", stream_size=_int(element, "streamSize"),
                    part_size=_int(element, "partSize"), part_count=_int(element, "partCount"))
    return PutFilePart(info=info, part_no=_int(element, "partNo"),
                       part_sha256=(_text(element, "partSha256") or "").lower(),
                       content_id=_content_id(element.find(_F + "part")))


def read_request(envelope: bytes) -> tuple[SoapVersion, PutFilePart | str]:
    """A PutFilePart, or the fileId of a GetFileStatus."""
    version, operation, _ = routed_request(envelope)
    return version, operation


def routed_request(envelope: bytes) -> tuple[SoapVersion, PutFilePart | str, str | None]:
    """Like :func:`read_request`, with the sender the routing header names (``r:From``), if any."""
    root = parse(envelope, max_bytes=MAX_ENVELOPE_BYTES)
    version, element = _body(root)
    sender = root.findtext(f"{{{version.envelope_ns}}}Header/{{{ROUTING}}}Routing/{{{ROUTING}}}From")
    sender = sender.strip() or None if sender is not None else None
    if element.tag == _F + "PutFilePart":
        return version, read_put(element), sender
    if element.tag == _F + "GetFileStatus":
        return version, _text(element, "fileId") or "", sender
    raise MalformedMessage(f"{element.tag} is not an operation of {FILE} (PutFilePart, GetFileStatus)")


def read_part_reply(envelope: bytes) -> PartReply:
    _, element = body_of(envelope)
    if element.tag != _F + "PutFilePartResponse":
        raise MalformedMessage(f"expected a PutFilePartResponse, got {element.tag}")
    return PartReply(file_id=_text(element, "fileId") or "", part_no=_int(element, "partNo"),
                     status=_text(element, "status") or "", parts_received=_int(element, "partsReceived"),
                     published=_text(element, "published", required=False))


def read_status_reply(envelope: bytes) -> FileStatusReply:
    _, element = body_of(envelope)
    if element.tag != _F + "GetFileStatusResponse":
        raise MalformedMessage(f"expected a GetFileStatusResponse, got {element.tag}")
    parts = (_text(element, "parts", required=False) or "").split()
    if not all(p.isdigit() for p in parts):
        raise MalformedMessage("GetFileStatusResponse parts must be part numbers")
    count = _text(element, "partCount", required=False)
    return FileStatusReply(file_id=_text(element, "fileId") or "", parts=frozenset(int(p) for p in parts),
                           part_count=int(count) if count and count.isdigit() else None,
                           published=_text(element, "published", required=False))
