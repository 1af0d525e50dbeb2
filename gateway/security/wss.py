"""WS-Security for SOAP envelopes: sign and verify (OASIS WSS 1.0, X.509 Token Profile).

Capability (B) of SPEC.md, message level; "Version 2" → "WS-Security
verification".  Pure transforms over bytes:

* :func:`sign_envelope` adds a ``wsse:Security`` header holding the signer's
  certificate (``wsse:BinarySecurityToken``), a ``wsu:Timestamp`` and an
  XML-DSig signature (RSA- or ECDSA-SHA256, exclusive C14N) over the Body,
  the Timestamp and the header blocks that name the destination (routing
  header, ``wsa:To``); it replaces any Security header already addressed to
  the receiver (a message carries one per receiver).
* :func:`verify_envelope` takes the one Security header addressed to this
  gateway (no actor/role, ``next``, or SOAP 1.2's ultimate receiver; a second
  one is refused, a header for another actor is ignored), checks its one
  signature with the certificate configured for the caller, checks that the
  elements the signature covers *are* the Body, that header's Timestamp and
  the destination header blocks the relay routes on (by identity after
  resolving each reference, so no signature wrapping), and checks the
  Timestamp against the clock.  :attr:`Verified.digest`, the replay key, is
  a hash of the signed digests: re-encoding a signature (base64 spelling,
  ECDSA's ``n - s``) does not make a new message.

Signatures of the WS-I Basic Security Profile shape (exclusive C14N, RSA or
ECDSA with SHA-2) are checked here directly with lxml's C14N and
cryptography; signxml's general verifier re-parses the document per
reference, which costs more than the whole relay.  Any other XML-DSig shape is
verified by signxml, pinned to the same Signature element.  SHA-1 and keys
below RSA-2048 / P-256 are refused either way.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from lxml import etree
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from gateway.errors import ConfigError, GatewayError, InvalidSignature
from gateway.ns import DSIG, EXC_C14N, SHA256, WSS_BASE64, WSS_X509V3, WSSE, WSU
from gateway.parser import hardened_parser, parse

from .dsig import (
    DEFAULT_ROUTING_HEADER,
    DIGEST_METHODS,
    ID,
    SECURITY,
    SIGNATURE,
    SIGNXML_DIGESTS,
    SIGNXML_METHODS,
    TIMESTAMP,
    TOKEN,
    b64,
    c14n,
    destination_headers,
    envelope_ns,
    envelope_parts,
    header_of,
    ids,
    method_for,
    security_headers,
    sign_value,
    verify_value,
    weak_key,
)
from .timestamp import TimePolicy, check_time, xsd_time

__all__ = ["Signer", "Verified", "TimePolicy", "sign_envelope", "sign_root", "declared_encoding", "verify_envelope",
           "verify_root", "load_certificate", "DEFAULT_ROUTING_HEADER"]

#: An XML declaration's encoding name at the very start of a document (after a UTF-8 byte order mark).
_DECLARED = re.compile(rb"""\A(?:\xef\xbb\xbf)?<\?xml\s[^>]*?\bencoding\s*=\s*["']([A-Za-z][\w.-]{0,39})["']""")
# Paths in Clark notation: lxml looks up a prefixed path with a namespaces mapping afresh on every call.
_SIGNED_INFO = f"{{{DSIG}}}SignedInfo"
_C14N_METHOD = f"{{{DSIG}}}CanonicalizationMethod"
_SIGNATURE_METHOD = f"{{{DSIG}}}SignatureMethod"
_SIGNATURE_VALUE = f"{{{DSIG}}}SignatureValue"
_REFERENCE = f"{{{DSIG}}}Reference"
_TRANSFORMS = f"{{{DSIG}}}Transforms/{{{DSIG}}}Transform"
_DIGEST_METHOD = f"{{{DSIG}}}DigestMethod"
_DIGEST_VALUE = f"{{{DSIG}}}DigestValue"
_DIGEST_VALUES = f"{{{DSIG}}}Reference/{{{DSIG}}}DigestValue"


@dataclass(frozen=True)
class Signer:
    """A signing key and its certificate, loaded once; keys below RSA-2048 / P-256 are refused."""

    key: PrivateKeyTypes
    cert: x509.Certificate
    token: str = field(init=False)
    """The certificate as BinarySecurityToken text (base64 DER)."""

    def __post_init__(self) -> None:
        weak = weak_key(self.cert.public_key())
        if weak is not None:
            raise ConfigError(f"the WS-Security signing certificate {self.cert.subject.rfc4514_string()} has {weak}")
        method_for(self.key)  # an RSA or EC key, or ConfigError now rather than at the first message
        der = self.cert.public_bytes(serialization.Encoding.DER)
        object.__setattr__(self, "token", base64.b64encode(der).decode("ascii"))

    @classmethod
    def load(cls, key_pem: bytes, cert_pem: bytes) -> Signer:
        return cls(key=serialization.load_pem_private_key(key_pem, password=None),
                   cert=x509.load_pem_x509_certificate(cert_pem))


@dataclass(frozen=True, kw_only=True)
class Verified:
    """What a valid signature told us."""

    digest: str
    """The replay key: SHA-256 over the signed references' digest values, in SignedInfo order."""
    created: dt.datetime
    keep_until: dt.datetime
    """Until when a replay of this signature could still pass the time checks."""
    digests: tuple[tuple[etree._Element, bytes], ...] = field(default=(), repr=False, compare=False)
    """The covered elements whose SHA-256 over exclusive C14N (no InclusiveNamespaces) was checked, with
    that digest: :func:`sign_root` of the same, unchanged tree reuses them instead of canonicalising again."""


def load_certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


@dataclass(frozen=True)
class _Facts:
    """What verification asks of a configured certificate for every message, worked out once."""

    der: bytes
    public_key: PublicKeyTypes
    weak: str | None
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime


@functools.lru_cache(maxsize=128)
def _facts(cert: x509.Certificate) -> _Facts:
    """The configured certificates are few (one per client); a new file version is a new certificate."""
    public_key = cert.public_key()
    return _Facts(der=cert.public_bytes(serialization.Encoding.DER), public_key=public_key,
                  weak=weak_key(public_key), subject=cert.subject.rfc4514_string(),
                  not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)


# -- signing -------------------------------------------------------------------------

def sign_envelope(data: bytes, signer: Signer, *, now: dt.datetime, ttl: float, max_bytes: int,
                  routing_header: str = DEFAULT_ROUTING_HEADER) -> bytes:
    """``data`` with a fresh Timestamp and a signature over Body, Timestamp and destination headers."""
    return sign_root(parse(data, max_bytes=max_bytes), signer, now=now, ttl=ttl, routing_header=routing_header,
                     declared=declared_encoding(data))


def declared_encoding(data: bytes) -> str | None:
    """The encoding name an envelope's XML declaration gives, as written (``Shift_JIS``), if any."""
    found = _DECLARED.match(data[:512])
    return found.group(1).decode("ascii") if found else None


def sign_root(root: etree._Element, signer: Signer, *, now: dt.datetime, ttl: float,
              routing_header: str = DEFAULT_ROUTING_HEADER, declared: str | None = None,
              digests: Iterable[tuple[etree._Element, bytes]] = ()) -> bytes:
    """:func:`sign_envelope` of an envelope already parsed (it is changed in place); ``declared`` is the
    encoding its declaration named (:func:`declared_encoding`), kept when the parser read it under another
    name (a ``Shift_JIS`` label is read as CP932).  ``digests`` are :attr:`Verified.digests` of a
    verification of this very tree, not changed since: a covered element that is signed again (the same
    element object) takes its digest from there instead of being canonicalised and hashed again."""
    env = envelope_ns(root)
    body = _ensure_id(envelope_parts(root, env)[1], "id")
    header = header_of(root, env, create=True)
    assert header is not None
    for old in security_headers(header, env):
        header.remove(old)
    destinations = [_ensure_id(block, "to") for block, _ in destination_headers(header, routing_header)]
    security = _security_header(signer, now, ttl, method_for(signer.key), [body, *destinations])
    security.set(f"{{{env}}}mustUnderstand", "1")
    header.insert(0, security)
    timestamp, signature = security[1], security[2]
    info = signature[0]
    known = list(digests)
    # Digests and signature over the header in place, as a verifier canonicalises them.
    for target, ref in zip([body, timestamp, *destinations], info[2:]):
        digest = next((d for element, d in known if element is target), None) or hashlib.sha256(c14n(target)).digest()
        ref[2].text = base64.b64encode(digest).decode("ascii")
    signature[1].text = base64.b64encode(sign_value(signer.key, c14n(info))).decode("ascii")
    encoding = root.getroottree().docinfo.encoding or "utf-8"
    if declared is None or declared.lower() == encoding.lower():
        return bytes(etree.tostring(root, encoding=encoding, xml_declaration=True))
    body = etree.tostring(root, encoding=encoding, xml_declaration=False)
    return f"<?xml version='1.0' encoding='{declared}'?>\n".encode("ascii") + bytes(body)


def _security_header(signer: Signer, now: dt.datetime, ttl: float, method: str,
                     targets: list[etree._Element]) -> etree._Element:
    """The Security header to sign (WS-I BSP profile), parsed from one piece of text rather than built
    element by element: BinarySecurityToken, Timestamp, then ds:Signature with an exclusive-C14N, SHA-256
    Reference to ``targets[0]`` (the Body), the Timestamp and each further target, in that order; digest
    and signature values empty, for :func:`sign_root` to fill in.  The Ids of the targets may come from
    the client: they are written escaped (:func:`_attribute`)."""
    token_id, stamp_id = f"X509-{uuid.uuid4().hex}", f"TS-{uuid.uuid4().hex}"
    uris = [_attribute(f"#{targets[0].get(ID)}"), f"#{stamp_id}", *(_attribute(f"#{t.get(ID)}") for t in targets[1:])]
    references = "".join(_REFERENCE_XML.format(uri=uri) for uri in uris)
    text = _SECURITY_XML.format(
        token_id=token_id, token=signer.token, stamp_id=stamp_id, created=xsd_time(now),
        expires=xsd_time(now + dt.timedelta(seconds=ttl)), method=method, references=references)
    return etree.fromstring(text)


def _attribute(value: str) -> str:
    """``value`` for a double-quoted attribute: markup characters and the whitespace a parser would
    normalise as character references (XML 1.0 §3.3.3), so it reads back exactly."""
    return value.translate(_ATTRIBUTE_ESCAPES)


_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                    "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
_SECURITY_XML = (
    f'<wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}">'
    f'<wsse:BinarySecurityToken EncodingType="{WSS_BASE64}" ValueType="{WSS_X509V3}" wsu:Id="{{token_id}}">'
    '{token}</wsse:BinarySecurityToken>'
    '<wsu:Timestamp wsu:Id="{stamp_id}"><wsu:Created>{created}</wsu:Created><wsu:Expires>{expires}</wsu:Expires>'
    '</wsu:Timestamp>'
    f'<ds:Signature xmlns:ds="{DSIG}"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm="{EXC_C14N}"/>'
    '<ds:SignatureMethod Algorithm="{method}"/>{references}</ds:SignedInfo><ds:SignatureValue></ds:SignatureValue>'
    '<ds:KeyInfo><wsse:SecurityTokenReference><wsse:Reference URI="#{token_id}" '
    f'ValueType="{WSS_X509V3}"/></wsse:SecurityTokenReference></ds:KeyInfo></ds:Signature></wsse:Security>'
)
_REFERENCE_XML = (
    f'<ds:Reference URI="{{uri}}"><ds:Transforms><ds:Transform Algorithm="{EXC_C14N}"/></ds:Transforms>'
    f'<ds:DigestMethod Algorithm="{SHA256}"/><ds:DigestValue></ds:DigestValue></ds:Reference>'
)


def _ensure_id(element: etree._Element, prefix: str) -> etree._Element:
    """``element`` with a wsu:Id, declared with the ``wsu`` prefix (a copy in place when one is added)."""
    if element.get(ID):
        return element
    parent = element.getparent()
    assert parent is not None
    # lxml cannot add a namespace declaration to an existing element: rebuild the
    # element with it and move the children over (no copy of the content). Its own
    # declarations come along: QNames in content (xsi:type="d:T") may rely on them.
    own = {p: uri for p, uri in element.nsmap.items() if parent.nsmap.get(p) != uri}
    nsmap = {**own, "wsu": WSU} if own.get("wsu", WSU) == WSU else own
    fresh = etree.SubElement(parent, element.tag, attrib=dict(element.attrib), nsmap=nsmap)
    fresh.set(ID, f"{prefix}-{uuid.uuid4().hex}")
    fresh.text, fresh.tail = element.text, element.tail
    fresh.extend(list(element))
    parent.replace(element, fresh)
    return fresh


# -- verifying -----------------------------------------------------------------------

def verify_envelope(data: bytes, cert: x509.Certificate, *, now: dt.datetime, policy: TimePolicy,
                    max_bytes: int, routing_header: str = DEFAULT_ROUTING_HEADER) -> Verified:
    """Check the WS-Security header of ``data`` against ``cert`` and the clock; raise on any problem."""
    return verify_root(parse(data, max_bytes=max_bytes), cert, now=now, policy=policy,
                       routing_header=routing_header)


def verify_root(root: etree._Element, cert: x509.Certificate, *, now: dt.datetime, policy: TimePolicy,
                routing_header: str = DEFAULT_ROUTING_HEADER) -> Verified:
    """:func:`verify_envelope` of an envelope already parsed (it is not changed)."""
    env = envelope_ns(root)
    header, body = envelope_parts(root, env)
    security = _the_security_header(header, env)
    timestamp = _one(security, TIMESTAMP, "wsu:Timestamp")
    signature = _one(security, SIGNATURE, "ds:Signature")
    _check_keys(security, cert)
    try:
        covered, replay_key, digests = _check_signature(root, env, cert, now, signature, security)
    except GatewayError:
        raise
    except (ValueError, TypeError, etree.LxmlError) as exc:  # malformed signature parts (lengths, encodings)
        raise InvalidSignature(f"the signature cannot be checked: {exc}") from exc
    needed = [(body, "the soap:Body"), (timestamp, "the wsu:Timestamp"), *destination_headers(header, routing_header)]
    _require_covered(covered, needed)
    created, keep_until = check_time(timestamp, now, policy)
    return Verified(digest=replay_key, created=created, keep_until=keep_until, digests=digests)


def _the_security_header(header: etree._Element | None, env: str) -> etree._Element:
    found = security_headers(header, env)
    if len(found) == 1:
        return found[0]
    if found:
        raise InvalidSignature("the message has more than one wsse:Security header for this gateway (no actor/role, "
                               "next or ultimate receiver): which one counts would be ambiguous")
    others = header is not None and header.find(SECURITY) is not None
    raise InvalidSignature("the message must be signed: it has no wsse:Security header"
                           + (" for this gateway, only for other actors/roles" if others else ""))


def _one(security: etree._Element, tag: str, what: str) -> etree._Element:
    found = security.findall(tag)
    if len(found) != 1:
        raise InvalidSignature(f"the wsse:Security header must hold exactly one {what}, not {len(found)}")
    return found[0]


def _check_keys(security: etree._Element, cert: x509.Certificate) -> None:
    """Weak keys, and a clear message when the sender signed with another certificate than the configured one."""
    facts = _facts(cert)
    if facts.weak is not None:
        raise InvalidSignature(f"the configured signing certificate {facts.subject} has {facts.weak}")
    for token in security.findall(TOKEN):
        der = b64(token.text, "BinarySecurityToken")
        if der == facts.der:  # the configured certificate itself, checked above (what a client always sends)
            continue
        try:
            sent = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise InvalidSignature(f"the BinarySecurityToken is not an X.509 certificate: {exc}") from exc
        weak = weak_key(sent.public_key())
        if weak is not None:
            raise InvalidSignature(f"the message is signed with {sent.subject.rfc4514_string()}, which has {weak}")
        if sent != cert:
            raise InvalidSignature(f"signed with certificate {sent.subject.rfc4514_string()}, but this client's "
                                   f"messages must be signed with {cert.subject.rfc4514_string()}")


def _check_signature(root: etree._Element, env: str, cert: x509.Certificate, now: dt.datetime,
                     signature: etree._Element, security: etree._Element
                     ) -> tuple[list[etree._Element], str, tuple[tuple[etree._Element, bytes], ...]]:
    """The elements ``signature`` covers, once it verifies, the replay key, and the reusable digests
    (see :attr:`Verified.digests`)."""
    facts = _facts(cert)
    if not facts.not_before <= now <= facts.not_after:
        raise InvalidSignature(f"the signing certificate {facts.subject} is not valid now "
                               f"(valid {xsd_time(facts.not_before)} to {xsd_time(facts.not_after)})")
    info = signature.find(_SIGNED_INFO)
    if info is None:
        raise InvalidSignature("the ds:Signature has no SignedInfo")
    by_id = ids(root)
    checked = _verify_profile(by_id, info, signature, cert)
    if checked is None:
        _verify_other(root, env, cert, now, security)
        covered = [_resolve(by_id, ref.get("URI") or "") for ref in info.iterfind(_REFERENCE)]
        return covered, _replay_key(info), ()
    covered = [element for element, _ in checked]
    reusable = tuple((element, reference.value) for element, reference in checked
                     if not reference.prefixes and reference.digest is hashes.SHA256)
    return covered, _replay_key(info), reusable


def _require_covered(covered: list[etree._Element], needed: Iterable[tuple[etree._Element, str]]) -> None:
    # By identity: a reference that resolves to a look-alike (a moved or duplicated element,
    # another header block with the same name) does not cover the one the gateway uses.
    for element, what in needed:
        if not any(element is signed for signed in covered):
            raise InvalidSignature(f"the signature does not cover {what}")


def _replay_key(info: etree._Element) -> str:
    """SHA-256 over the decoded DigestValues of SignedInfo: what was signed, however the signature is spelled."""
    key = hashlib.sha256()
    for value in info.iterfind(_DIGEST_VALUES):
        digest = b64(value.text, "DigestValue")
        key.update(len(digest).to_bytes(2, "big") + digest)
    return key.hexdigest()


def _verify_profile(by_id: dict[str, list[etree._Element]], info: etree._Element, signature: etree._Element,
                    cert: x509.Certificate) -> list[tuple[etree._Element, _Reference]] | None:
    """Verify a signature of the WS-I Basic Security Profile shape (exclusive C14N, RSA or ECDSA, SHA-2).

    Returns the elements it covers, each with its (checked) reference, or
    ``None`` when the signature uses another shape, which
    :func:`_verify_other` (signxml) then handles.
    """
    prefixes = _exc_c14n_prefixes(info.find(_C14N_METHOD))
    method = _algorithm(info.find(_SIGNATURE_METHOD))
    if prefixes is None:
        return None
    references = [_profile_reference(ref) for ref in info.iterfind(_REFERENCE)]
    if not references or any(r is None for r in references):
        return None
    value = b64(signature.findtext(_SIGNATURE_VALUE), "SignatureValue")
    facts = _facts(cert)
    try:
        if not verify_value(facts.public_key, method, value, c14n(info, prefixes)):
            return None
    except InvalidSignature as exc:
        raise InvalidSignature(f"the signature value does not verify with {facts.subject}") from exc
    return [(_check_digest(by_id, reference), reference) for reference in references if reference is not None]


@dataclass(frozen=True)
class _Reference:
    uri: str
    prefixes: list[str]
    digest: type[hashes.HashAlgorithm]
    value: bytes


def _profile_reference(ref: etree._Element) -> _Reference | None:
    uri = ref.get("URI") or ""
    transforms = ref.findall(_TRANSFORMS)
    algorithm = _algorithm(ref.find(_DIGEST_METHOD))
    prefixes = _exc_c14n_prefixes(transforms[0]) if len(transforms) == 1 else None
    if not uri.startswith("#") or prefixes is None or algorithm not in DIGEST_METHODS:
        return None
    value = b64(ref.findtext(_DIGEST_VALUE), "DigestValue")
    return _Reference(uri=uri, prefixes=prefixes, digest=DIGEST_METHODS[algorithm], value=value)


def _algorithm(method: etree._Element | None) -> str | None:
    return method.get("Algorithm") if method is not None else None


def _exc_c14n_prefixes(method: etree._Element | None) -> list[str] | None:
    """The InclusiveNamespaces PrefixList of an exclusive-C14N method; ``None`` if it is another method."""
    if method is None or method.get("Algorithm") != EXC_C14N:
        return None
    inclusive = method.find(f"{{{EXC_C14N}}}InclusiveNamespaces")
    prefixes = (inclusive.get("PrefixList") or "").split() if inclusive is not None else []
    return None if "#default" in prefixes else prefixes


def _resolve(by_id: dict[str, list[etree._Element]], uri: str) -> etree._Element:
    found = by_id.get(uri[1:], []) if uri.startswith("#") else []
    if len(found) != 1:
        raise InvalidSignature(f"reference {uri!r} names {len(found)} elements, not exactly one")
    return found[0]


def _check_digest(by_id: dict[str, list[etree._Element]], reference: _Reference) -> etree._Element:
    target = _resolve(by_id, reference.uri)
    digest = hashes.Hash(reference.digest())
    digest.update(c14n(target, reference.prefixes))
    if not hmac.compare_digest(digest.finalize(), reference.value):
        raise InvalidSignature(f"the content signed as {reference.uri} was changed after signing (digest mismatch)")
    return target


def _verify_other(root: etree._Element, env: str, cert: x509.Certificate, now: dt.datetime,
                  security: etree._Element) -> None:
    """Any other XML-DSig shape, verified by signxml (SHA-1 still refused).

    signxml takes the first Signature under its ``location``: the location names
    our Security header by its position among the Header's Security blocks, so
    it checks the very signature :func:`verify_root` chose, not one addressed
    to another actor that happens to come first (issue 18, finding 1).
    """
    header = security.getparent()
    assert header is not None
    position = header.findall(SECURITY).index(security) + 1
    config = SignatureConfiguration(
        location=f"./{{{env}}}Header/{{{WSSE}}}Security[{position}]/", expect_references=True,
        signature_methods=SIGNXML_METHODS, digest_algorithms=SIGNXML_DIGESTS, verification_time=now,
    )
    try:
        # signxml re-parses copies of the (already parsed, DTD-free) tree: with our parser, not its own.
        XMLVerifier().verify(root, x509_cert=cert, id_attribute="Id", expect_config=config,
                             parser=hardened_parser())
    except SignXMLException as exc:
        raise InvalidSignature(f"the signature does not verify: {exc}") from exc
