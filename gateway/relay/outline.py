"""The outline of a whole envelope, checked as it streams through the relay (issue 17).

:func:`gateway.parser.scan_head` checks a small envelope whole: a root SOAP
Envelope holding an optional Header and exactly one Body, and nothing after
it.  A bigger one streams: the relay parses only its head to route it
(:class:`gateway.parser.HeadScanner`), so a second ``soap:Body`` (WS-I BP
R1011; WS-Security's signature covers one Body, an endpoint may read the
other), other Envelope children after the Body, or bytes after the
Envelope's end used to reach the endpoint unseen.

:class:`EnvelopeOutline` is fed every byte of the envelope (the root part of
a multipart/related body) as it passes, by the same hardened parser as
everything else (:func:`gateway.parser.hardened_parser`, after a
:class:`gateway.parser.PrologGuard`: no DTD, no entity, no file, no URL),
in bounded memory: the parser builds no tree — a target that keeps a depth
and the Envelope's children so far — so libxml2 holds only the token it is
reading (names and attribute values within its limits with ``huge_tree``
off).  It costs libxml2's parse plus about a microsecond of Python per
element: a 100 MiB envelope of a few big text nodes costs a few tenths of a
second, one of millions of small elements seconds.

What the relay does with a refusal found mid-stream (:mod:`gateway.relay.handler`):
it holds back each chunk until the next one has been checked, and the
last one until the end of the envelope has been, so the endpoint never
receives a complete body the gateway refuses; the upstream request is
aborted mid-body, and the caller gets a ``MalformedMessage`` fault — or, in
the rare case where the endpoint had already begun a streamed answer
(it answered before reading the whole request), the caller's connection is
cut before that answer's last chunk: never the endpoint's answer as a
success.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from gateway.errors import MalformedMessage
from gateway.ns import SOAP11_ENV, SOAP12_ENV
from gateway.parser import PrologGuard, hardened_parser

__all__ = ["EnvelopeOutline", "check_outline"]

#: Deepest nesting accepted: libxml2's own limit with ``huge_tree`` off, which it enforces only when it
#: builds a tree (this parser builds none), and what keeps its stack of open names bounded.
MAX_DEPTH = 256
_ENVELOPE_NS = {f"{{{SOAP11_ENV}}}Envelope": SOAP11_ENV, f"{{{SOAP12_ENV}}}Envelope": SOAP12_ENV}


class _Outline:
    """lxml parser target: follows the depth, checks the root and the Envelope's children."""

    def __init__(self) -> None:
        self.depth = 0
        self.header = ""
        self.body = ""
        self.children = 0
        self.body_seen = False
        self.refused = False
        """A callback raised: lxml then calls :meth:`close`, whose own complaint must not hide the first."""

    def start(self, tag: str, _attrib: Any) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.refused = True
            raise MalformedMessage(f"not well-formed XML: elements nested deeper than {MAX_DEPTH}")
        if self.depth == 2:
            self._child(tag)
        elif self.depth == 1:
            ns = _ENVELOPE_NS.get(tag)
            if ns is None:
                self.refused = True
                raise MalformedMessage(f"root element {tag} is not a SOAP 1.1 or 1.2 Envelope")
            self.header, self.body = f"{{{ns}}}Header", f"{{{ns}}}Body"

    def _child(self, tag: str) -> None:
        self.children += 1
        if tag == self.body and not self.body_seen:
            self.body_seen = True
        elif tag != self.header or self.children > 1:
            where = "after its Body" if self.body_seen else "before its Body"
            self.refused = True
            raise MalformedMessage(f"the SOAP Envelope holds {tag} {where}")

    def end(self, _tag: str) -> None:
        self.depth -= 1

    def close(self) -> None:
        if not self.body_seen and not self.refused:
            raise MalformedMessage("the SOAP Envelope has no Body")


class EnvelopeOutline:
    """Fed a whole envelope chunk by chunk; raises :class:`MalformedMessage` as soon as its outline is wrong."""

    def __init__(self) -> None:
        self._guard = PrologGuard()
        self._made: etree.XMLParser | None = None  # made once the prolog told the encoding
        self.closed = False

    @property
    def _parser(self) -> etree.XMLParser:
        if self._made is None:
            encoding = self._guard.parse_as
            self._made = hardened_parser(target=_Outline(), **({} if encoding is None else {"encoding": encoding}))
        return self._made

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the envelope (none after :meth:`close`)."""
        try:
            data = self._guard.feed(chunk)
            if data:
                self._parser.feed(data)
        except etree.XMLSyntaxError as exc:
            raise MalformedMessage(f"not well-formed XML: {exc}") from exc

    def close(self) -> None:
        """The envelope has ended: raises if it is incomplete or lacks its Body.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            rest = self._guard.close()
            if rest:
                self._parser.feed(rest)
            self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise MalformedMessage(f"not well-formed XML: {exc}") from exc


def check_outline(envelope: bytes) -> None:
    """Check the outline of a whole envelope already in memory."""
    outline = EnvelopeOutline()
    outline.feed(envelope)
    outline.close()
