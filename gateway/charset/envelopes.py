"""The SOAP relay's side of character profiles: envelopes to the partner's encoding, signed ones only re-signed.

The relay (:mod:`gateway.relay.handler`) routes and checks an envelope on
the caller's UTF-8 bytes, then hands it here on its way out: an endpoint
with a converting ``charset`` gets it in its encoding — the XML declaration
and the ``Content-Type`` charset naming it, converted at once when it was read
whole (so ``unmappable: refuse`` faults before anything is sent), else as it
streams — and its answer comes back as UTF-8 (:mod:`gateway.charset.recode`,
shared with the API relay).

A WS-Security signature covers the characters of the envelope; converting
may change them (a substitution) and a receiver decodes the partner's bytes
with its own tables, so a signed envelope (a ``wsse:Security`` header with a
``ds:Signature``) is never converted as it is: :func:`refuse_signed` answers
SignedNotConvertible, unless the endpoint has ``wss.sign``.  Then the relay
verifies the client's signature as ever, converts (:func:`for_signing`: the
envelope the partner will decode, as UTF-8), signs that, and
:func:`signed_for_partner` writes the signed envelope in the partner's
encoding: the signature holds over the partner's bytes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable

from lxml import etree

from gateway.errors import MalformedMessage, SignedNotConvertible, UnsupportedMediaType
from gateway.ns import DSIG, SOAP11_ENV, SOAP12_ENV, WSSE
from gateway.parser import hardened_parser

from .bodies import convert_whole, declare, with_charset
from .convert import ToPartner
from .recode import Recoding, recode_request
from routing.config import Config, UrlEndpoint
from routing.table import Route

from .table import CharsetProfile

__all__ = ["endpoint_profile", "check_convertible", "recode_envelope", "refuse_foreign_encoding", "is_signed",
           "for_signing", "signed_for_partner"]

_DECLARED = re.compile(rb"""\A(?:\xef\xbb\xbf)?<\?xml[^>]*?\sencoding\s*=\s*["']([^"']*)["']""")
_LXML_DECLARATION = re.compile(r"<\?xml[^>]*\?>")
_UTF8 = (b"utf-8", b"utf8", b"us-ascii", b"ascii")
_HEADERS = (f"{{{SOAP11_ENV}}}Header", f"{{{SOAP12_ENV}}}Header")
_BODIES = (f"{{{SOAP11_ENV}}}Body", f"{{{SOAP12_ENV}}}Body")
_SECURITY = f"{{{WSSE}}}Security"
_SIGNATURE = f"{{{DSIG}}}Signature"
#: Head bytes are parsed in slices of this size, stopping at the Body.
_SLICE = 8192


def endpoint_profile(config: Config, route: Route) -> CharsetProfile | None:
    """The route's endpoint's character profile when it converts (a peer's profile is applied at the peer)."""
    if route.mailbox is not None:
        return None
    found = config.endpoints.get(route.endpoint)
    profile = found.charset if isinstance(found, UrlEndpoint) else None
    return profile if profile is not None and profile.converts else None


def check_convertible(profile: CharsetProfile, route: Route, content_type: str, head: bytes) -> None:
    """A converting endpoint takes plain UTF-8 envelopes, and signed ones only when it re-signs them
    (``head``: the envelope's first bytes, the whole Header at least)."""
    refuse_foreign_encoding(profile, content_type, head, route.destination)
    if route.outbound.wss_sign is None and is_signed(head):
        refuse_signed(profile, route.endpoint, route.destination)


def recode_envelope(profile: CharsetProfile, headers: dict[str, str], body: bytes | AsyncIterable[bytes],
                    recoding: Recoding, destination: str) -> bytes | AsyncIterable[bytes]:
    """The envelope in the partner's encoding, ``headers`` changed to say so (in place).

    A body already converted (and signed) by :func:`signed_for_partner` only gets its charset named."""
    if recoding.converted:
        headers["Content-Type"] = with_charset(headers.get("Content-Type", ""), profile.label)
        return body
    return recode_request(profile, headers, body, recoding, destination)


def refuse_foreign_encoding(profile: CharsetProfile, content_type: str, head: bytes, destination: str) -> None:
    """An envelope for a converting endpoint must be plain SOAP in UTF-8: the profile converts from UTF-8 only."""
    if not content_type.lower().startswith(("text/xml", "application/soap+xml")):
        raise UnsupportedMediaType(
            f"endpoint {destination!r} converts to {profile.label}, which the gateway does not do for "
            f"{content_type.split(';', 1)[0]} messages (SwA/MTOM: attachments travel as sent, under their "
            f"checksums): send a plain SOAP envelope, or for a file convert it at its ends (bmrgw send --charset "
            f"{profile.encoding}, bmrgw receive --charset {profile.encoding}) and route it to an endpoint "
            "without charset", destination=destination)
    declared = _DECLARED.match(head)
    if declared is not None and declared.group(1).lower() not in _UTF8:
        raise UnsupportedMediaType(f"the envelope is declared {declared.group(1).decode('ascii', 'replace')}; "
                                   f"send UTF-8 and the gateway converts it to {profile.label} for {destination!r}",
                                   destination=destination)


class _Finder:
    """A parser target that notes a ``wsse:Security`` header holding a ``ds:Signature``, up to the Body."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.signed = False
        self.done = False

    def start(self, tag: str, attrib: object) -> None:
        self.path.append(tag)
        depth = len(self.path)
        if depth == 2 and tag in _BODIES:
            self.done = True
        elif depth == 4 and tag == _SIGNATURE and self.path[1] in _HEADERS and self.path[2] == _SECURITY:
            self.signed = self.done = True

    def end(self, tag: str) -> None:
        self.path.pop()

    def close(self) -> None:
        return None


def is_signed(head: bytes) -> bool:
    """Whether the envelope whose first bytes (the whole Header at least) are ``head`` is WS-Security-signed."""
    if DSIG.encode() not in head or WSSE.encode() not in head:
        return False  # the usual case, without parsing
    finder = _Finder()
    parser = hardened_parser(target=finder)
    try:
        for start in range(0, len(head), _SLICE):
            parser.feed(head[start:start + _SLICE])
            if finder.done:
                break
    except etree.XMLSyntaxError as exc:
        raise MalformedMessage(f"not well-formed XML: {exc}") from exc
    return finder.signed


def refuse_signed(profile: CharsetProfile, endpoint: str, destination: str) -> None:
    """Refuse a signed envelope for an endpoint that converts and does not re-sign."""
    raise SignedNotConvertible(
        f"the message is signed (WS-Security) and endpoint {endpoint!r} converts to {profile.label}, which would "
        f"break the signature: the gateway re-signs converted messages only when endpoints.{endpoint}.wss.sign "
        "is configured", destination=destination)


def for_signing(profile: CharsetProfile, whole: bytes, recoding: Recoding, destination: str) -> bytes:
    """``whole`` converted for the partner (``unmappable`` applies, losses counted), as the partner will read
    it, in UTF-8: the envelope to sign.  Marks ``recoding`` as converted."""
    partner = convert_whole(whole, ToPartner(profile, losses=recoding.losses, destination=destination), xml=True)
    try:
        text = partner.decode(profile.codec)  # as a receiver decodes it: gaiji as their private code points
    except UnicodeDecodeError as exc:
        raise SignedNotConvertible(f"the converted message holds a gaiji code {profile.label} does not define "
                                   f"({partner[exc.start:exc.end].hex().upper()}): a receiver could not verify "
                                   "a signature over it", destination=destination) from exc
    recoding.converted = True
    return declare(text.encode("utf-8"), "UTF-8")


def signed_for_partner(profile: CharsetProfile, signed: bytes) -> bytes:
    """The signed UTF-8 envelope of :func:`for_signing` in the partner's encoding, its declaration naming it.

    Every character in it came from decoding the partner's bytes (the signature's own are ASCII), so each
    encodes back to the code it was read from (or, for CP932's duplicate codes, one that reads the same)."""
    text = signed.decode("utf-8")
    found = _LXML_DECLARATION.match(text)
    return f'<?xml version="1.0" encoding="{profile.label}"?>'.encode() + text[found.end() if found else 0:].encode(
        profile.codec)
