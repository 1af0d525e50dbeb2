"""The one hardened XML parser: the only way bytes become elements in bmrgw.

No DTDs (SOAP forbids them; a DOCTYPE is refused outright), no entity
expansion, no network access, libxml2's limits with ``huge_tree`` off
(nesting depth 256, 10 MB per text node), and our own size limits on top.

Implements SPEC "Version 2" → "Hostile input never stalls the gateway":
no parser here opens a file, a device or a URL a message names.  Two locks,
both on every parser made here:

- :class:`PrologGuard` reads the bytes before the root element *before*
  libxml2 does, and refuses a DOCTYPE (or any other declaration) there, so
  libxml2 never sees one.  It also refuses encodings in which it could not
  read the prolog as libxml2 will (UTF-32, EBCDIC, UTF-7, ISO-2022, UTF-16
  without a byte order mark) and bytes that contradict their declaration.
- a deny-all resolver: should libxml2 still want a DTD, entity or XInclude,
  the load is refused before any file is opened.

Both answer ``DTDs are not allowed in messages``, whether or not a named
file exists.

:class:`HeadScanner` is the relay's incremental form: it is fed the first
chunks of a request and stops as soon as the SOAP Header has ended (or the
Body has begun), so only the bytes needed to find the routing key are parsed.
"""

from __future__ import annotations

import codecs
import functools
import re
import threading
from dataclasses import dataclass
from typing import Any

from lxml import etree

from .errors import MalformedMessage, MessageTooLarge
from .ns import AP_URN_PREFIX, SOAP11_ENV, SOAP12_ENV, WSA, WSA_2004, SoapVersion

__all__ = ["parse", "scan_head", "HeadScanner", "EnvelopeHead", "PrologGuard", "hardened_parser", "PARSER_OPTIONS",
           "SCAN_WHOLE"]

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


_NO_DTD = "DTDs are not allowed in messages"


class _DenyAll(etree.Resolver):  # type: ignore[misc]  # lxml's stubs leave Resolver untyped
    """Resolves nothing: libxml2 gets no DTD, entity or XInclude a message names, and opens no file for it."""

    def resolve(self, system_url: str | None, public_id: str | None, context: object) -> None:
        raise MalformedMessage(_NO_DTD)


_DENY_ALL = _DenyAll()


def hardened_parser(**options: Any) -> etree.XMLParser:
    """An lxml parser with :data:`PARSER_OPTIONS` and the deny-all resolver (``options``: target, encoding)."""
    parser = etree.XMLParser(**PARSER_OPTIONS, **options)
    parser.resolvers.add(_DENY_ALL)
    return parser


def _refuse_dtd(element: etree._Element) -> None:
    if element.getroottree().docinfo.doctype:
        raise MalformedMessage(_NO_DTD)


def parse(data: bytes, *, max_bytes: int) -> etree._Element:
    """Parse a whole document of at most ``max_bytes`` with the hardened parser."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"document of {len(data)} bytes exceeds the limit of {max_bytes}")
    encoding = PrologGuard.check(data)
    try:
        root = etree.fromstring(data, hardened_parser() if encoding is None else hardened_parser(encoding=encoding))
    except etree.XMLSyntaxError as exc:
        raise MalformedMessage(f"not well-formed XML: {exc}") from exc
    _refuse_dtd(root)
    return root


#: Longest prolog (XML declaration, comments, processing instructions) held back before the root element.
MAX_PROLOG = 64 * 1024
#: :meth:`PrologGuard.check` looks at this much first: any real prolog ends within it.
_FIRST = 4096
_SPACE = re.compile(r"[ \t\r\n]*")
_ENCODING = re.compile(r"""\s+encoding\s*=\s*["']([^"']*)["']""")
_UTF16 = frozenset({"utf-16", "utf-16-le", "utf-16-be"})
_UTF8 = frozenset({"utf-8", "utf-8-sig"})
#: The usual prolog, in bytes: an optional XML declaration, whitespace, then a start tag (not "<\0": UTF-16/32).
_PLAIN = re.compile(rb"(<\?xml[ \t\r\n][^<>]*\?>)?[ \t\r\n]*<[^!?\x00]")
_PLAIN_ENCODING = re.compile(rb"""\s+encoding\s*=\s*["']([^"']*)["']""")


class PrologGuard:
    """Reads a document's prolog before libxml2 does and refuses a DOCTYPE in it.

    A DTD can only come before the root element; once the root's start tag is
    seen, nothing libxml2 could load is left.  :meth:`feed` returns the bytes
    to hand on to the parser: nothing while the prolog is still open, then
    everything held back, then each chunk as it is.  The prolog is read in the
    document's encoding, which must be one this reading agrees with libxml2 on:
    ASCII-compatible (UTF-8, Shift_JIS, ISO-8859-*, …) or UTF-16 with a byte
    order mark, and the one the document (and ``encoding``, an override such as
    an HTTP charset) declares.

    A document labelled ``Shift_JIS`` is read as Windows-31J (CP932), the
    superset Japanese systems actually write (NEC and IBM extensions: ①, ㈱,
    髙), as the WHATWG Encoding Standard reads that label; libxml2 alone reads
    it strictly and refuses those characters.  :attr:`parse_as` tells the
    parser, which is then created with that encoding.  The bytes are never
    re-encoded: the relay forwards them as they came.
    """

    def __init__(self, encoding: str | None = None) -> None:
        self._override = _codec(encoding) if encoding is not None else None
        self._held = bytearray()
        self._first = b""  # the first bytes, until they tell the encoding
        self._decoder: codecs.IncrementalDecoder | None = None
        self._family = ""
        self._text = ""
        self._pos = 0  # start of the first prolog item not yet complete
        self._search = 0  # where the search for that item's end goes on
        self._declared = False  # the encoding declaration (or its absence) was checked
        self._done = False
        self.parse_as: str | None = None
        """The encoding the parser must be told (``cp932`` for a Shift_JIS label), once the prolog passed."""

    @classmethod
    def check(cls, data: bytes, encoding: str | None = None) -> str | None:
        """Refuses a whole document in memory if its prolog holds a DTD or an encoding it cannot vouch for;
        returns the encoding to parse it with (:attr:`parse_as`)."""
        if encoding is None and _plain(data):
            return _windows_31j(data)
        guard = cls(encoding)
        if not guard._take(data[:_FIRST], final=len(data) <= _FIRST):
            guard._take(data[_FIRST:], final=True)
        return guard.parse_as

    def feed(self, chunk: bytes) -> bytes:
        """The bytes the parser may have now (see the class docstring)."""
        if self._done:
            return chunk
        self._held += chunk
        if not self._take(chunk, final=False):
            if len(self._held) > MAX_PROLOG:
                raise MalformedMessage(f"not well-formed XML: no root element within the first {MAX_PROLOG} bytes")
            return b""
        return self.close()

    def close(self) -> bytes:
        """The document has ended: whatever is still held back (the parser then says what is wrong with it)."""
        if not self._done:
            self._take(b"", final=True)
        held, self._held = bytes(self._held), bytearray()
        return held

    def _take(self, chunk: bytes, *, final: bool) -> bool:
        """Reads ``chunk``; True once the prolog is known to be harmless (or the document ended)."""
        if self._decoder is None and not self._first and self._override is None and _plain(chunk):
            self._done = True
            self.parse_as = _windows_31j(chunk)
            return True
        if self._decoder is None:
            self._first += chunk
            if len(self._first) < 4 and not final:
                return False
            chunk = self._start(self._first)
        try:
            assert self._decoder is not None
            self._text += self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"not well-formed XML: not {self._family}: {exc.reason}") from exc
        self._done = self._walk() or final
        if self._done:
            self._text = ""
        return self._done

    def _start(self, first: bytes) -> bytes:
        """Picks the decoder by the first bytes (XML 1.0 appendix F); returns the bytes to decode."""
        if first.startswith(b"\xef\xbb\xbf"):
            self._family, first = "UTF-8", first[3:]
        elif first[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"):
            raise MalformedMessage("unsupported encoding: UTF-32")
        elif first[:2] in (b"\xff\xfe", b"\xfe\xff"):
            self._family = "UTF-16"
        elif b"\0" in first[:4]:
            raise MalformedMessage("unsupported encoding: UTF-16 without a byte order mark, or UTF-32")
        else:
            self._family = "ASCII"
        self._decoder = codecs.getincrementaldecoder("utf-16" if self._family == "UTF-16" else "latin-1")()
        return first

    def _walk(self) -> bool:
        """Skips whole prolog items; True at the root element, False while an item is incomplete."""
        text, pos = self._text, self._pos
        while True:
            pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # [ \t\r\n]* always matches
            if pos != self._pos:
                self._pos, self._search = pos, 0
            if text.startswith("<?", pos):
                end = self._end_of(text, pos, "?>")
            elif text.startswith("<!--", pos):
                end = self._end_of(text, pos, "-->")
            elif text.startswith("<!", pos):
                raise MalformedMessage(_NO_DTD)  # a DOCTYPE, or another declaration only a DTD may hold
            elif len(text) - pos < 4 and "<!--".startswith(text[pos:]):
                return False  # "", "<", "<!", "<!-": too early to tell
            elif text[pos] != "<":
                raise MalformedMessage("not well-formed XML: text before the root element")
            else:
                self._declaration(None)
                return True
            if end < 0:
                return False
            if not self._declared:
                self._declaration(text[pos:end] if pos == 0 and text.startswith("<?xml", 0) else None)
            pos = end

    def _end_of(self, text: str, pos: int, closing: str) -> int:
        """Where the item at ``pos`` ends, or -1; the next search starts where this one stopped."""
        start = max(pos + 2, self._search)
        end = text.find(closing, start)
        if end < 0:
            self._search = max(start, len(text) - len(closing) + 1)
            return -1
        return end + len(closing)

    def _declaration(self, declaration: str | None) -> None:
        """Checks the encoding a document declares (``declaration`` is its XML declaration, if any)."""
        if self._declared:
            return
        self._declared = True
        found = _ENCODING.search(declaration) if declaration is not None else None
        declared = _codec(found.group(1)) if found is not None else None
        encoding = self._override or declared
        if encoding is None:
            return
        if encoding in _WINDOWS_31J:
            self.parse_as = "cp932"
        if self._family == "UTF-16":
            agrees = encoding in _UTF16
        elif self._family == "UTF-8":
            agrees = encoding in _UTF8
        else:
            agrees = _ascii_compatible(encoding)
        if not agrees:
            raise MalformedMessage(f"unsupported encoding: {encoding} over bytes in {self._family}")


def _plain(first: bytes) -> bool:
    """Whether ``first`` starts with the usual prolog in an ASCII-compatible encoding: the relay's fast path."""
    plain = _PLAIN.match(first)
    return plain is not None and (plain.group(1) is None or _plain_declaration(plain.group(1)))


@functools.lru_cache(maxsize=64)
def _plain_declaration(declaration: bytes) -> bool:
    """Whether an XML declaration names no encoding or an ASCII-compatible one (senders repeat theirs)."""
    declared = _PLAIN_ENCODING.search(declaration)
    return declared is None or _ascii_compatible(_codec(declared.group(1).decode("latin-1")))


def _windows_31j(first: bytes) -> str | None:
    """``cp932`` when the usual prolog at the start of ``first`` declares Shift_JIS (see :class:`PrologGuard`)."""
    plain = _PLAIN.match(first)
    return _sjis_declaration(plain.group(1)) if plain is not None and plain.group(1) is not None else None


@functools.lru_cache(maxsize=64)
def _sjis_declaration(declaration: bytes) -> str | None:
    declared = _PLAIN_ENCODING.search(declaration)
    return "cp932" if declared is not None and _codec(declared.group(1).decode("latin-1")) in _WINDOWS_31J else None


#: Labels read as Windows-31J: Shift_JIS as WHATWG reads it, and CP932 under any of its names (libxml2's
#: own tables know neither ``Windows-31J``, the IANA name a converting endpoint writes, nor all of CP932).
_WINDOWS_31J = frozenset({"shift_jis", "cp932"})


@functools.lru_cache(maxsize=64)
def _codec(name: str) -> str:
    """Python's name for the encoding ``name``; an unknown one is the client's error."""
    if name.strip().lower() in ("windows-31j", "csWindows31J".lower()):
        return "cp932"  # the IANA name, which Python's codecs do not know
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise MalformedMessage(f"unsupported encoding: {name[:40]!r}") from None


@functools.lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> bool:
    """Whether ``codec`` reads every ASCII byte as that ASCII character, whatever came before.

    Then the prolog means the same to the guard as to libxml2.  Not so for
    EBCDIC, UTF-7 (``+ADw-`` is ``<``), UTF-16/32, or ISO-2022 (escape
    sequences switch the meaning of later bytes).
    """
    if codec.startswith(("iso2022", "hz")):  # stateful: they pass plain ASCII through until an escape
        return False
    ascii = bytes(range(128))
    try:
        return ascii.decode(codec) == ascii.decode("ascii")
    except (UnicodeDecodeError, LookupError):
        return False


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
    encoding = PrologGuard.check(data)
    try:
        root = etree.fromstring(data, _whole_parser() if encoding is None else hardened_parser(encoding=encoding))
    except etree.XMLSyntaxError as exc:
        raise MalformedMessage(f"not well-formed XML: {exc}") from exc
    version = _envelope_version(root)
    children = [child for child in root if isinstance(child.tag, str)]
    header = children[0] if children and children[0].tag == f"{{{version.envelope_ns}}}Header" else None
    body = children[1 if header is not None else 0] if len(children) > (header is not None) else None
    if body is None or body.tag != f"{{{version.envelope_ns}}}Body":
        what = body.tag if body is not None else "no Body"
        raise MalformedMessage(f"the SOAP Envelope must hold an optional Header and a Body, found {what}")
    if len(children) > (header is not None) + 1:  # WS-I BP R1011; a second Body would reach the endpoint
        raise MalformedMessage(f"the SOAP Envelope holds {children[-1].tag} after its Body")
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
        self._guard = PrologGuard()
        self._pull: etree.XMLPullParser | None = None  # made once the prolog told the encoding

    @property
    def _parser(self) -> etree.XMLPullParser:
        if self._pull is None:
            options = PARSER_OPTIONS if self._guard.parse_as is None else {**PARSER_OPTIONS,
                                                                              "encoding": self._guard.parse_as}
            self._pull = etree.XMLPullParser(events=("start", "end"), tag=_SOAP_TAGS, **options)
            self._pull.resolvers.add(_DENY_ALL)
        return self._pull

    def feed(self, chunk: bytes) -> EnvelopeHead | None:
        """Feed the next bytes; returns the head once it is complete."""
        self._seen += len(chunk)
        try:
            chunk = self._guard.feed(chunk)
            if chunk:
                self._parser.feed(chunk)
            head = self._events() if self._pull is not None else None
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
            rest = self._guard.close()
            if rest:
                self._parser.feed(rest)
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
        parser = _local.parser = hardened_parser()
    return parser


def _text(value: str | None) -> str | None:
    value = value.strip() if value else None
    return value or None
