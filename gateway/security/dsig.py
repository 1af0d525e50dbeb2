"""XML-DSig and SOAP-envelope primitives for WS-Security (:mod:`gateway.security.wss`).

* Algorithms: exclusive C14N, RSA (PKCS#1 v1.5) and ECDSA with SHA-2, signing
  and checking a SignatureValue (ECDSA values are ``r || s``, XML-DSig 1.1
  §6.4.3); SHA-1 is never accepted.
* Key strength: :func:`weak_key` names keys below RSA-2048 or P-256
  (issue 18 finding 9), for messages and for the configuration alike.
* Envelope structure: which ``wsse:Security`` header blocks are addressed to
  this gateway (SOAP 1.1 §4.2.2 ``actor``, SOAP 1.2 part 1 §5.2.2 ``role``),
  and which header blocks name the destination the relay routes on (the
  same rule as :mod:`gateway.parser`: the first routing header block, the
  first ``wsa:To`` of each WS-Addressing version holding ``urn:bmrgw:ap:``).
"""

from __future__ import annotations

import binascii

from cryptography.exceptions import InvalidSignature as BadSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod

from gateway.errors import ConfigError, InvalidSignature, MalformedMessage
from gateway.ns import (
    AP_URN_PREFIX,
    DSIG,
    ECDSA_SHA256,
    ROUTING,
    RSA_SHA256,
    SHA256,
    SOAP11_ENV,
    SOAP12_ENV,
    WSA,
    WSA_2004,
    WSSE,
    WSU,
)

__all__ = ["ID", "SECURITY", "TIMESTAMP", "TOKEN", "SIGNATURE", "NS", "DEFAULT_ROUTING_HEADER", "MIN_RSA_BITS",
           "MIN_EC_BITS", "SIGNXML_METHODS", "SIGNXML_DIGESTS", "DIGEST_METHODS", "c14n", "b64", "weak_key",
           "method_for", "sign_value", "verify_value", "envelope_ns", "envelope_parts", "header_of",
           "for_this_gateway", "security_headers", "destination_headers", "ids"]

ID = f"{{{WSU}}}Id"
SECURITY = f"{{{WSSE}}}Security"
TIMESTAMP = f"{{{WSU}}}Timestamp"
TOKEN = f"{{{WSSE}}}BinarySecurityToken"
SIGNATURE = f"{{{DSIG}}}Signature"
NS = {"ds": DSIG, "wsse": WSSE, "wsu": WSU}
#: The routing header block when ``gateway.routing_header`` is not set.
DEFAULT_ROUTING_HEADER = f"{{{ROUTING}}}Routing"
MIN_RSA_BITS = 2048
MIN_EC_BITS = 256

_ENVELOPES = {f"{{{SOAP11_ENV}}}Envelope": SOAP11_ENV, f"{{{SOAP12_ENV}}}Envelope": SOAP12_ENV}
_WSA_TO = (f"{{{WSA}}}To", f"{{{WSA_2004}}}To")
#: The actor/role values that address a header block to this gateway.  SOAP 1.1: none (the
#: ultimate receiver) or "next" (the first SOAP node on the path, which is us).  SOAP 1.2: none,
#: "next" or "ultimateReceiver".  A block for any other actor is someone else's and is ignored.
_OURS = {
    SOAP11_ENV: (f"{{{SOAP11_ENV}}}actor", frozenset({None, "http://schemas.xmlsoap.org/soap/actor/next"})),
    SOAP12_ENV: (f"{{{SOAP12_ENV}}}role", frozenset({None, f"{SOAP12_ENV}/role/next",
                                                     f"{SOAP12_ENV}/role/ultimateReceiver"})),
}

_RSA_METHODS: dict[str, type[hashes.HashAlgorithm]] = {
    RSA_SHA256: hashes.SHA256,
    SignatureMethod.RSA_SHA384.value: hashes.SHA384,
    SignatureMethod.RSA_SHA512.value: hashes.SHA512,
}
_EC_METHODS: dict[str, type[hashes.HashAlgorithm]] = {
    ECDSA_SHA256: hashes.SHA256,
    SignatureMethod.ECDSA_SHA384.value: hashes.SHA384,
    SignatureMethod.ECDSA_SHA512.value: hashes.SHA512,
}
DIGEST_METHODS: dict[str | None, type[hashes.HashAlgorithm]] = {
    SHA256: hashes.SHA256,
    DigestAlgorithm.SHA384.value: hashes.SHA384,
    DigestAlgorithm.SHA512.value: hashes.SHA512,
}
#: What signxml may accept for the other signature shapes: the same strength as the fast path.
SIGNXML_METHODS = frozenset(m for m in SignatureMethod if m.name.startswith(("RSA_SHA", "ECDSA_SHA"))
                            and "SHA1" not in m.name)
SIGNXML_DIGESTS = frozenset(d for d in DigestAlgorithm if d.name.startswith("SHA") and d.name != "SHA1")


def c14n(element: etree._Element, prefixes: list[str] | None = None) -> bytes:
    """Exclusive XML canonicalization 1.0 without comments of ``element``'s subtree."""
    return bytes(etree.tostring(element, method="c14n", exclusive=True, with_comments=False,
                                inclusive_ns_prefixes=prefixes))


def b64(text: str | None, what: str) -> bytes:
    """Decoded base64 text (whitespace allowed, nothing else); :class:`InvalidSignature` otherwise.

    What ``base64.b64decode("".join(text.split()), validate=True)`` does on Python 3.11 (strict
    mode), without its Python layers: a message has eight or more base64 values."""
    try:
        return binascii.a2b_base64("".join((text or "").split()).encode("ascii"), strict_mode=True)
    except ValueError as exc:  # binascii.Error and UnicodeEncodeError are ValueErrors
        raise InvalidSignature(f"the {what} is not base64: {exc}") from exc


# -- keys and signature values --------------------------------------------------------

def weak_key(key: PublicKeyTypes) -> str | None:
    """Why ``key`` is too weak to sign with (``"an RSA key of 1024 bits, ..."``), or ``None``."""
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= MIN_RSA_BITS else \
            f"an RSA key of {key.key_size} bits (at least {MIN_RSA_BITS} are required)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if key.curve.key_size >= MIN_EC_BITS else \
            f"an EC key of {key.curve.key_size} bits ({key.curve.name}; at least {MIN_EC_BITS}, P-256, are required)"
    return f"a {type(key).__name__} (only RSA and EC keys sign WS-Security messages)"


def method_for(key: PrivateKeyTypes) -> str:
    """The SignatureMethod the gateway signs with for ``key``."""
    if isinstance(key, rsa.RSAPrivateKey):
        return RSA_SHA256
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECDSA_SHA256
    raise ConfigError("WS-Security signing needs an RSA or EC key")


def sign_value(key: PrivateKeyTypes, data: bytes) -> bytes:
    """The SignatureValue of ``data`` (SHA-256), in XML-DSig's encoding for ``key``'s type."""
    if isinstance(key, rsa.RSAPrivateKey):
        return bytes(key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ConfigError("WS-Security signing needs an RSA or EC key")


def verify_value(key: PublicKeyTypes, method: str | None, value: bytes, data: bytes) -> bool:
    """Check ``value`` over ``data``: True when it verifies, False when ``method`` is not one this
    fast path handles for ``key`` (signxml then does); :class:`InvalidSignature` when it does not verify."""
    try:
        if isinstance(key, rsa.RSAPublicKey) and method in _RSA_METHODS:
            key.verify(value, data, padding.PKCS1v15(), _RSA_METHODS[method]())
            return True
        if isinstance(key, ec.EllipticCurvePublicKey) and method in _EC_METHODS:
            size = (key.curve.key_size + 7) // 8
            if len(value) != 2 * size:
                raise InvalidSignature(f"the ECDSA signature value has {len(value)} bytes, not {2 * size}")
            der = encode_dss_signature(int.from_bytes(value[:size], "big"), int.from_bytes(value[size:], "big"))
            key.verify(der, data, ec.ECDSA(_EC_METHODS[method]()))
            return True
    except BadSignature as exc:
        raise InvalidSignature("the signature value does not verify") from exc
    return False


# -- envelope structure ------------------------------------------------------------------

def envelope_ns(root: etree._Element) -> str:
    env = _ENVELOPES.get(root.tag)
    if env is None:
        raise MalformedMessage("the root element is not a SOAP Envelope")
    return env


def envelope_parts(root: etree._Element, env: str) -> tuple[etree._Element | None, etree._Element]:
    """(Header or None, Body); anything else among the Envelope's elements — a second Body or
    Header, an element after the Body — is refused, so no one can say which Body was meant."""
    children = [child for child in root if isinstance(child.tag, str)]
    tags = [child.tag for child in children]
    if tags == [f"{{{env}}}Body"]:
        return None, children[0]
    if tags == [f"{{{env}}}Header", f"{{{env}}}Body"]:
        return children[0], children[1]
    raise MalformedMessage("the Envelope must have exactly one Body, after at most one Header, and nothing else "
                           f"(found {', '.join(etree.QName(t).localname for t in tags) or 'nothing'})")


def header_of(root: etree._Element, env: str, *, create: bool) -> etree._Element | None:
    """The Envelope's Header (for signing; verification uses :func:`envelope_parts`)."""
    for child in root:
        if isinstance(child.tag, str):
            if child.tag == f"{{{env}}}Header":
                return child
            break
    if not create:
        return None
    header = etree.Element(f"{{{env}}}Header")
    root.insert(0, header)
    return header


def for_this_gateway(block: etree._Element, env: str) -> bool:
    """Whether header ``block`` is addressed to this gateway (see ``_OURS``)."""
    attribute, roles = _OURS[env]
    return block.get(attribute) in roles


def security_headers(header: etree._Element | None, env: str) -> list[etree._Element]:
    """The wsse:Security header blocks addressed to this gateway."""
    if header is None:
        return []
    return [block for block in header.iterchildren(SECURITY) if for_this_gateway(block, env)]


def destination_headers(header: etree._Element | None, routing_header: str) -> list[tuple[etree._Element, str]]:
    """The header blocks the relay may take the destination from, each with how to name it."""
    if header is None:
        return []
    found = []
    routing = header.find(routing_header)
    if routing is not None:
        found.append((routing, "the routing header"))
    for tag in _WSA_TO:
        to = header.find(tag)
        if to is not None and (to.text or "").strip().startswith(AP_URN_PREFIX):
            found.append((to, "the wsa:To header"))
    return found


#: Every attribute named ``Id`` in any namespace (``wsu:Id``, ``Id``, ...), in document order; compiled once.
_ID_ATTRIBUTES = etree.XPath("//@*[local-name()='Id']")


def ids(root: etree._Element) -> dict[str, list[etree._Element]]:
    """Every element by the value of its Id attributes (``wsu:Id``, ``Id``, any namespace): what a
    reference ``#value`` may resolve to.  One pass over the document (in libxml2) serves all references."""
    found: dict[str, list[etree._Element]] = {}
    attributes = _ID_ATTRIBUTES(root)
    assert isinstance(attributes, list)
    for value in attributes:
        assert isinstance(value, etree._ElementUnicodeResult)
        owner = value.getparent()
        assert owner is not None
        found.setdefault(str(value), []).append(owner)
    return found
