"""The refdb SOAP messages (``schemas/refdb.wsdl``, namespace ``urn:bmrgw:refdb:1``): reading and writing.

Requests are read incrementally: :class:`RequestReader` is fed the body in
chunks, parses them with the hardened parser options, and hands each
``record`` of an Upsert and each ``key`` of a Delete to a callback as soon
as it has ended, then frees it — so a request's memory does not grow with
the number of records.  Everything else of the operation element (dataset,
mode, filters, …) is small and kept.  The operation's scalar children come
before the record list, as the WSDL's sequences say, so the callback knows
the dataset when the first record arrives.

A record is a list of ``field`` elements with ``name`` and ``value``
attributes (no ``value`` attribute = NULL)::

    <r:record><r:field name="person_id" value="P0001"/><r:field name="note"/></r:record>

Attributes rather than child elements: a record then costs lxml a third of
the elements, which halves the parsing time of a big push.

Responses are built with lxml (they are bounded: a page holds at most
:data:`refdb.store.MAX_LIMIT` records).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lxml import etree

from gateway.errors import InvalidRecord, MalformedMessage, MessageTooLarge
from gateway.ns import REFDB, SOAP11_ENV, SOAP12_ENV, SoapVersion
from gateway.parser import PARSER_OPTIONS

__all__ = ["OPERATIONS", "RequestReader", "Fields", "fields_of", "envelope", "element", "add_records", "q"]

OPERATIONS = ("Upsert", "BeginPush", "Commit", "Abort", "Delete", "Query", "Changes")
_ENVELOPES = {f"{{{SOAP11_ENV}}}Envelope": SoapVersion.V11, f"{{{SOAP12_ENV}}}Envelope": SoapVersion.V12}

Fields = dict[str, str | None]


def q(name: str) -> str:
    """Clark name of a refdb element."""
    return f"{{{REFDB}}}{name}"


_FIELD = q("field")
#: Streamed children: (operation, list element, item element).
_STREAMED = {("Upsert", q("records"), q("record")), ("Delete", q("keys"), q("key"))}
_SCALARS = {q(n): n for n in ("dataset", "mode", "pushId", "offset", "limit", "version", "sinceVersion")}
_WATCHED = [*_ENVELOPES, *(q(op) for op in OPERATIONS), *_SCALARS, q("record"), q("key")]


def fields_of(item: etree._Element, number: int) -> Fields:
    """The ``field`` children of a record or key as name → text (None when there is no value)."""
    found: Fields = {}
    for field in item:  # attributes and plain iteration: lxml's find() goes through Python ElementPath
        if field.tag != _FIELD:
            continue
        name = field.get("name")
        if not name:
            raise InvalidRecord(f"record {number}: a field has no name", record=number)
        if name in found:
            raise InvalidRecord(f"record {number}: field {name!r} appears twice", record=number, field=name)
        found[name] = field.get("value")
    return found


class RequestReader:
    """Incremental reader of one refdb request envelope.

    ``on_item(operation, scalars, fields, number)`` is called for every
    streamed record or key, with the scalar children read so far.  After
    :meth:`close`, :attr:`operation` names the operation and :attr:`call` is
    its element (streamed items removed).
    """

    def __init__(self, on_item: Callable[[str, Mapping[str, str], Fields, int], None], max_bytes: int) -> None:
        self._on_item = on_item
        self._max_bytes = max_bytes
        self._seen = 0
        # Only the elements named here reach Python; fields are read from their record in one go.
        self._parser = etree.XMLPullParser(events=("start", "end"), tag=_WATCHED, **PARSER_OPTIONS)
        self._items = 0
        self.version: SoapVersion | None = None
        self.operation: str | None = None
        self.call: etree._Element | None = None
        self.scalars: dict[str, str] = {}

    def feed(self, chunk: bytes) -> None:
        self._seen += len(chunk)
        if self._seen > self._max_bytes:
            raise MessageTooLarge(f"request exceeds the limit of {self._max_bytes} bytes; "
                                  "push big datasets in batches (BeginPush, Upsert with pushId, Commit)",
                                  detail="gateway.max_message_bytes")
        try:
            self._parser.feed(chunk)
            self._events()
        except etree.XMLSyntaxError as exc:
            raise MalformedMessage(f"not well-formed XML: {exc}") from exc

    def close(self) -> None:
        try:
            root = self._parser.close()
            self._events()
        except etree.XMLSyntaxError as exc:
            raise MalformedMessage(f"not well-formed XML: {exc}") from exc
        if self.version is None:
            raise MalformedMessage(f"root element {root.tag} is not a SOAP Envelope")
        if self.call is None:
            body = root.find(f"{{{self.version.envelope_ns}}}Body")
            found = body[0].tag if body is not None and len(body) else "nothing"
            raise MalformedMessage(f"the SOAP Body holds {found}, not a refdb operation "
                                   f"({', '.join(OPERATIONS)} in {REFDB})")

    def _events(self) -> None:
        for event, node in self._parser.read_events():
            if event == "start":
                self._start(node)
            elif self.call is not None:
                self._end(node)

    def _start(self, node: etree._Element) -> None:
        if node.tag in _ENVELOPES:
            if node.getparent() is None:
                if node.getroottree().docinfo.doctype:
                    raise MalformedMessage("DTDs are not allowed in messages")
                self.version = _ENVELOPES[node.tag]
            return
        parent = node.getparent()
        if self.call is None and self.version is not None and parent is not None \
                and parent.tag == f"{{{self.version.envelope_ns}}}Body":
            self.operation, self.call = etree.QName(node).localname, node

    def _end(self, node: etree._Element) -> None:
        parent = node.getparent()
        if parent is None:
            return
        if parent is self.call:
            if node.tag in _SCALARS:
                self.scalars[_SCALARS[node.tag]] = (node.text or "").strip()
        elif parent.getparent() is self.call and (self.operation, parent.tag, node.tag) in _STREAMED:
            self._items += 1
            self._on_item(self.operation or "", self.scalars, fields_of(node, self._items), self._items)
            node.clear()
            while node.getprevious() is not None:
                del parent[0]
            parent.remove(node)


# -- responses -----------------------------------------------------------------

def envelope(version: SoapVersion, operation: str) -> tuple[etree._Element, etree._Element]:
    """A response envelope and its ``<r:{operation}Response>`` element to fill."""
    env_ns = version.envelope_ns
    root = etree.Element(f"{{{env_ns}}}Envelope", nsmap={"soap": env_ns, "r": REFDB})
    body = etree.SubElement(root, f"{{{env_ns}}}Body")
    return root, etree.SubElement(body, q(f"{operation}Response"))


def element(parent: etree._Element, name: str, value: Any) -> etree._Element:
    child = etree.SubElement(parent, q(name))
    if value is not None:
        child.text = "true" if value is True else "false" if value is False else str(value)
    return child


def add_records(parent: etree._Element, tag: str, rows: Iterable[Iterable[tuple[str, str | None]]]) -> None:
    """Append ``<r:{tag}>`` elements, one per row of (name, text) pairs."""
    for row in rows:
        record = etree.SubElement(parent, q(tag))
        for name, text in row:
            field = etree.SubElement(record, _FIELD, name=name)
            if text is not None:
                field.set("value", text)
