"""Streaming MIME ``multipart/related`` for SOAP with Attachments and MTOM/XOP.

Implements the framing of RFC 2046 §5.1 and RFC 2387 as profiled by the WS-I
Attachments Profile 1.0 (SwA: ``type="text/xml"`` or
``type="application/soap+xml"``, root part named by ``start``) and by W3C
MTOM/XOP (``type="application/xop+xml"``, the SOAP version in
``start-info``), for SOAP 1.1 and 1.2.

Everything here is pure and incremental: :class:`MultipartReader` is fed
bytes as they arrive and returns events, so a part of any size passes
through a bounded buffer; the writer functions return the few bytes of
framing that go between parts, and the caller streams the parts themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from types import MappingProxyType

from gateway.errors import MalformedMessage, MessageTooLarge
from gateway.ns import CT_SOAP11, CT_SOAP12, SoapVersion

__all__ = [
    "CT_RELATED", "CT_XOP", "RelatedType", "parse_related", "MultipartReader", "Event", "PartStart", "PartData",
    "PartEnd", "root_content_type", "RootExtractor", "new_boundary", "part_head", "closing", "related_content_type",
]

CT_RELATED = "multipart/related"
CT_XOP = "application/xop+xml"

#: Largest header block of one part; real ones are a few hundred bytes.
MAX_PART_HEADER_BYTES = 16 * 1024
#: Spaces allowed after a boundary delimiter before its line ends (RFC 2046 transport padding).
_MAX_PADDING = 64
_BCHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
_SOAP_TYPES = {CT_SOAP11: SoapVersion.V11, CT_SOAP12: SoapVersion.V12}


@dataclass(frozen=True, kw_only=True)
class RelatedType:
    """The parameters of a ``multipart/related`` Content-Type header."""

    boundary: str
    type: str
    """Media type of the root part: text/xml or application/soap+xml (SwA), application/xop+xml (MTOM)."""
    start: str | None = None
    """Content-ID of the root part, with its angle brackets; None means the first part."""
    start_info: str | None = None
    """MTOM: the media type of the SOAP envelope inside the XOP root."""

    @property
    def mtom(self) -> bool:
        return self.type == CT_XOP

    @property
    def soap_version(self) -> SoapVersion | None:
        """The SOAP version the header announces, if it announces one."""
        announced = self.start_info if self.mtom else self.type
        return _SOAP_TYPES.get(announced.split(";")[0].strip()) if announced else None


def _params(header: str) -> tuple[str, dict[str, str]]:
    message = Message()
    message["Content-Type"] = header
    params = message.get_params() or []
    return message.get_content_type(), {k.lower(): str(v) for k, v in params[1:]}


def parse_related(header: str) -> RelatedType | None:
    """The parameters of a multipart/related Content-Type; None for any other media type."""
    mimetype, params = _params(header)
    if mimetype != CT_RELATED:
        return None
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 70 or not set(boundary) <= _BCHARS or boundary.endswith(" "):
        raise MalformedMessage(f"multipart/related needs a valid boundary parameter, not {boundary!r}")
    root_type = params.get("type", "").strip().lower()
    if root_type not in (CT_SOAP11, CT_SOAP12, CT_XOP):
        raise MalformedMessage(f"multipart/related type {root_type!r} is not text/xml, application/soap+xml "
                               f"(SwA) or {CT_XOP} (MTOM)")
    start_info = params.get("start-info", "").strip().lower() or None
    return RelatedType(boundary=boundary, type=root_type, start=params.get("start") or None, start_info=start_info)


# -- reading ---------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class PartStart:
    """A part begins; its headers (lower-case names) are complete."""

    index: int
    headers: Mapping[str, str]

    @property
    def content_id(self) -> str | None:
        return self.headers.get("content-id")

    @property
    def content_type(self) -> str:
        return _params(self.headers.get("content-type", "text/plain"))[0]


@dataclass(frozen=True)
class PartData:
    """The next bytes of the current part's body (a read-only view of the caller's chunk, or bytes)."""

    data: bytes | memoryview


@dataclass(frozen=True)
class PartEnd:
    """The current part ended."""

    index: int


Event = PartStart | PartData | PartEnd

_PREAMBLE, _DELIMITER, _HEADERS, _BODY, _DONE = range(5)


class MultipartReader:
    """An incremental multipart parser: :meth:`feed` bytes, get events; :meth:`close` at the end.

    Memory stays bounded by the chunk size plus a delimiter's length (and a
    part's header block while it is being read).
    """

    def __init__(self, boundary: str, *, max_header_bytes: int = MAX_PART_HEADER_BYTES) -> None:
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        # The first delimiter may open the body without a CRLF before it.
        self._buf = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._max_header = max_header_bytes
        self.parts = 0
        """Parts started so far."""
        self.emit_data = True
        """False: report part boundaries only, not the bytes of the parts (the relay after the root)."""

    @property
    def done(self) -> bool:
        """True once the closing delimiter was read."""
        return self._state == _DONE

    def feed(self, data: bytes) -> list[Event]:
        """The events completed by ``data``."""
        if self._state == _DONE:
            return []  # the epilogue carries nothing
        if self._state in (_PREAMBLE, _BODY) and len(data) > 2 * len(self._delimiter):
            passed = self._pass_through(data)
            if passed is not None:
                return passed
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        """The body ended; raises MalformedMessage unless the closing delimiter was read."""
        if self._state != _DONE:
            raise MalformedMessage("the multipart body is truncated: it ends before its closing boundary "
                                   f"(after {self.parts} part{'s' if self.parts != 1 else ''})")

    def _step(self, events: list[Event]) -> bool:
        if self._state in (_PREAMBLE, _BODY):
            return self._scan_body(events)
        if self._state == _DELIMITER:
            return self._after_delimiter(events)
        if self._state == _HEADERS:
            return self._headers(events)
        return False

    def _pass_through(self, data: bytes) -> list[Event] | None:
        """A chunk inside a part with no delimiter in it or at its joint (the common case of a
        big part): passed on without going through the buffer.  None if it needs the slow path."""
        delimiter, keep = self._delimiter, len(self._delimiter) - 1
        if data.find(delimiter) >= 0 or (bytes(self._buf) + data[:keep]).find(delimiter) >= 0:
            return None
        events: list[Event] = []
        if self._state == _BODY and self.emit_data:
            if self._buf:
                events.append(PartData(bytes(self._buf)))
            events.append(PartData(memoryview(data)[:-keep]))  # no copy of the big piece
        self._buf[:] = data[-keep:]
        return events

    def _scan_body(self, events: list[Event]) -> bool:
        buf, delimiter = self._buf, self._delimiter
        at = buf.find(delimiter)
        in_body = self._state == _BODY
        if at < 0:
            keep = len(delimiter) - 1
            if len(buf) > keep:
                if in_body and self.emit_data:
                    events.append(PartData(bytes(memoryview(buf)[:-keep])))
                del buf[:-keep]
            return False
        if in_body:
            if at and self.emit_data:
                events.append(PartData(bytes(memoryview(buf)[:at])))
            events.append(PartEnd(self.parts - 1))
        del buf[:at]
        self._state = _DELIMITER
        return True

    def _after_delimiter(self, events: list[Event]) -> bool:
        buf, size = self._buf, len(self._delimiter)
        if len(buf) < size + 2:
            return False
        if buf[size:size + 2] == b"--":
            self._state = _DONE
            if self.parts == 0:
                raise MalformedMessage("the multipart body has no parts")
            del buf[:]
            return False
        end = buf.find(b"\r\n", size)
        if end < 0 or buf[size:end].strip(b" \t"):
            if end >= 0 or len(buf) - size > _MAX_PADDING:
                raise MalformedMessage("a multipart boundary delimiter is followed by something other "
                                       "than a line end")
            return False
        del buf[:end + 2]
        self._state = _HEADERS
        return True

    def _headers(self, events: list[Event]) -> bool:
        buf = self._buf
        if buf[:2] == b"\r\n":
            block, rest = b"", 2
        else:
            end = buf.find(b"\r\n\r\n", 0, self._max_header + 4)
            if end < 0:
                if len(buf) > self._max_header:
                    raise MalformedMessage(f"a part's headers exceed {self._max_header} bytes or do not end")
                return False
            block, rest = bytes(buf[:end]), end + 4
        del buf[:rest]
        events.append(PartStart(index=self.parts, headers=_part_headers(block)))
        self.parts += 1
        self._state = _BODY
        return True


def _part_headers(block: bytes) -> Mapping[str, str]:
    headers: dict[str, str] = {}
    name = None
    for raw in block.split(b"\r\n") if block else []:
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and name is not None:
            headers[name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name or any(c in name for c in " \t"):
            raise MalformedMessage(f"malformed part header line {line[:80]!r}")
        headers[name] = value.strip()
    return MappingProxyType(headers)


class RootExtractor:
    """Follows a multipart/related body chunk by chunk for the relay.

    :meth:`feed` returns the root part's bytes found in a chunk (so the
    routing key can be read from them) and checks the framing of everything
    else; :meth:`finish` says whether the body was complete.  The root part
    is bounded by ``max_root_bytes`` (the envelope limit), the rest is not.
    """

    def __init__(self, related: RelatedType, *, max_root_bytes: int) -> None:
        self._related = related
        self._reader = MultipartReader(related.boundary)
        self._max_root = max_root_bytes
        self._in_root = False
        self.root_size = 0
        self.root_ended = False
        """True once the whole root part was seen."""

    def feed(self, chunk: bytes) -> bytes:
        root = []
        for event in self._reader.feed(chunk):
            if isinstance(event, PartStart):
                self._in_root = not self.root_ended and self._is_root(event)
            elif isinstance(event, PartData) and self._in_root:
                self.root_size += len(event.data)
                if self.root_size > self._max_root:
                    raise MessageTooLarge(f"the root part exceeds the envelope limit of {self._max_root} bytes")
                root.append(event.data)
            elif isinstance(event, PartEnd) and self._in_root:
                self._in_root, self.root_ended = False, True
                self._reader.emit_data = False  # from here on only the framing matters
        return b"".join(root)

    def finish(self) -> None:
        self._reader.close()
        if not self.root_ended:
            raise MalformedMessage(f"the multipart body has no root part {self._related.start or ''}".rstrip())

    def _is_root(self, part: PartStart) -> bool:
        start = self._related.start
        if start is not None and part.content_id != start:
            return False
        if start is None and part.index != 0:
            return False
        if part.content_type != self._related.type:
            raise MalformedMessage(f"the root part is {part.content_type}, but the multipart/related "
                                   f"type says {self._related.type}")
        return True


# -- writing ---------------------------------------------------------------------

def new_boundary() -> str:
    """A boundary that cannot occur in the parts (a random UUID)."""
    return f"uuid:{uuid.uuid4()}"


def part_head(boundary: str, headers: Sequence[tuple[str, str]], *, first: bool = False) -> bytes:
    """The delimiter line and header block that open a part."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"{'' if first else chr(13) + chr(10)}--{boundary}\r\n{lines}\r\n".encode("ascii")


def closing(boundary: str) -> bytes:
    """The closing delimiter that ends the multipart body."""
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def related_content_type(boundary: str, *, version: SoapVersion, mtom: bool, start: str,
                         action: str | None = None) -> str:
    """The HTTP Content-Type of an SwA or MTOM message."""
    if mtom:
        params = f'type="{CT_XOP}"; start="{start}"; start-info="{version.content_type}"'
    else:
        params = f'type="{version.content_type}"; start="{start}"'
    if action is not None and version is SoapVersion.V12:
        params += f'; action="{action}"'
    return f'{CT_RELATED}; {params}; boundary="{boundary}"'


def root_content_type(version: SoapVersion, *, mtom: bool, action: str | None = None) -> str:
    """The Content-Type of the root part carrying the envelope."""
    action_param = f'; action="{action}"' if action is not None and version is SoapVersion.V12 else ""
    if mtom:
        return f'{CT_XOP}; charset=utf-8; type="{version.content_type}"{action_param}'
    return f"{version.content_type}; charset=utf-8{action_param}"
