"""WS-Security for SOAP envelopes: sign and verify (OASIS WSS 1.0, X.509 Token Profile).

Capability (B) of SPEC.md, message level.  Pure transforms over bytes:

* :func:`sign_envelope` adds a ``wsse:Security`` header holding the signer's
  certificate (``wsse:BinarySecurityToken``), a ``wsu:Timestamp`` and an
  XML-DSig signature (RSA-SHA256, exclusive C14N) over the Body and the
  Timestamp; it replaces any Security header already addressed to the
  ultimate receiver (a message carries one per receiver).
* :func:`verify_envelope` requires such a header, checks the signature with
  the certificate configured for the caller, checks that it covers the
  actual Body and the Timestamp (no signature wrapping), and checks the
  Timestamp against the clock.  The caller records
  :attr:`Verified.digest` to refuse replays.

Signatures of the WS-I Basic Security Profile shape (exclusive C14N, RSA with
SHA-2) — what we sign and what WS-Security stacks send — are signed and checked
here directly with lxml's C14N and cryptography: signxml's general verifier
re-parses the document per reference, which cost more than the whole relay.
Any other XML-DSig shape is verified by signxml.  SHA-1 is refused either way.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import uuid
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature as BadSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from gateway.errors import ConfigError, Expired, GatewayError, InvalidSignature, MalformedMessage
from gateway.ns import DSIG, EXC_C14N, RSA_SHA256, SHA256, WSS_BASE64, WSS_X509V3, WSSE, WSU, SoapVersion
from gateway.parser import hardened_parser, parse

__all__ = ["Signer", "Verified", "TimePolicy", "sign_envelope", "sign_root", "verify_envelope", "verify_root",
           "load_certificate"]

_ID = f"{{{WSU}}}Id"
_SECURITY = f"{{{WSSE}}}Security"
_TIMESTAMP = f"{{{WSU}}}Timestamp"
_TOKEN = f"{{{WSSE}}}BinarySecurityToken"
_SIGNATURE = f"{{{DSIG}}}Signature"
_NS = {"ds": DSIG, "wsse": WSSE, "wsu": WSU}
_ENVELOPES = {f"{{{v.envelope_ns}}}Envelope": v.envelope_ns for v in SoapVersion}
#: Digests and signatures we accept from others; the same strength we use ourselves.
_METHODS = frozenset(m for m in SignatureMethod if m.name.startswith(("RSA_SHA", "ECDSA_SHA"))
                     and "SHA1" not in m.name)
_DIGESTS = frozenset(d for d in DigestAlgorithm if d.name.startswith("SHA") and d.name != "SHA1")
_RSA_METHODS: dict[str | None, type[hashes.HashAlgorithm]] = {
    RSA_SHA256: hashes.SHA256,
    SignatureMethod.RSA_SHA384.value: hashes.SHA384,
    SignatureMethod.RSA_SHA512.value: hashes.SHA512,
}
_DIGEST_METHODS: dict[str | None, type[hashes.HashAlgorithm]] = {
    SHA256: hashes.SHA256,
    DigestAlgorithm.SHA384.value: hashes.SHA384,
    DigestAlgorithm.SHA512.value: hashes.SHA512,
}
#: Elements whose Id attribute (any namespace: wsu:Id, Id) has the value $uri.
_BY_ID = etree.XPath("//*[@*[local-name() = 'Id'] = $uri]")


@dataclass(frozen=True)
class Signer:
    """A signing key and its certificate, loaded once."""

    key: PrivateKeyTypes
    cert: x509.Certificate
    token: str = field(init=False)
    """The certificate as BinarySecurityToken text (base64 DER)."""

    def __post_init__(self) -> None:
        der = self.cert.public_bytes(serialization.Encoding.DER)
        object.__setattr__(self, "token", base64.b64encode(der).decode("ascii"))

    @classmethod
    def load(cls, key_pem: bytes, cert_pem: bytes) -> Signer:
        return cls(key=serialization.load_pem_private_key(key_pem, password=None),
                   cert=x509.load_pem_x509_certificate(cert_pem))


@dataclass(frozen=True, kw_only=True)
class TimePolicy:
    """How far a Timestamp may be from the gateway's (NTP-corrected) clock."""

    clock_skew: float = 300.0
    """Seconds of clock difference tolerated on Created and Expires."""
    max_ttl: float = 3600.0
    """Longest Created→Expires lifetime accepted; also bounds a Timestamp without Expires."""


@dataclass(frozen=True, kw_only=True)
class Verified:
    """What a valid signature told us."""

    digest: str
    """SHA-256 of the decoded SignatureValue: the key of the replay record."""
    created: dt.datetime
    keep_until: dt.datetime
    """Until when a replay of this signature could still pass the time checks."""


def load_certificate(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# -- signing -------------------------------------------------------------------------

def sign_envelope(data: bytes, signer: Signer, *, now: dt.datetime, ttl: float, max_bytes: int) -> bytes:
    """``data`` with a fresh Timestamp and a signature over Body and Timestamp, in its own encoding."""
    return sign_root(parse(data, max_bytes=max_bytes), signer, now=now, ttl=ttl)


def sign_root(root: etree._Element, signer: Signer, *, now: dt.datetime, ttl: float) -> bytes:
    """:func:`sign_envelope` of an envelope already parsed (it is changed in place)."""
    env = _envelope_ns(root)
    body = _ensure_id(_body(root, env), "id")
    header = _header(root, env, create=True)
    assert header is not None
    for old in _default_security(header, env):
        header.remove(old)
    security = _security_header(header, env)
    token_id = _token(security, signer)
    timestamp = _timestamp(security, now, ttl)
    signature = etree.SubElement(security, _SIGNATURE, nsmap={"ds": DSIG})
    info = _signed_info(signature, [body, timestamp])
    value = _sign_bytes(signer.key, _c14n(info))
    etree.SubElement(signature, f"{{{DSIG}}}SignatureValue").text = base64.b64encode(value).decode("ascii")
    signature.append(_key_info(token_id))
    encoding = root.getroottree().docinfo.encoding or "utf-8"
    return bytes(etree.tostring(root, encoding=encoding, xml_declaration=True))


def _signed_info(signature: etree._Element, targets: list[etree._Element]) -> etree._Element:
    """SignedInfo with one exclusive-C14N, SHA-256 Reference per target (WS-I BSP profile)."""
    info = etree.SubElement(signature, f"{{{DSIG}}}SignedInfo")
    etree.SubElement(info, f"{{{DSIG}}}CanonicalizationMethod", Algorithm=EXC_C14N)
    etree.SubElement(info, f"{{{DSIG}}}SignatureMethod", Algorithm=RSA_SHA256)
    for target in targets:
        ref = etree.SubElement(info, f"{{{DSIG}}}Reference", URI=f"#{target.get(_ID)}")
        etree.SubElement(etree.SubElement(ref, f"{{{DSIG}}}Transforms"), f"{{{DSIG}}}Transform", Algorithm=EXC_C14N)
        etree.SubElement(ref, f"{{{DSIG}}}DigestMethod", Algorithm=SHA256)
        digest = hashlib.sha256(_c14n(target)).digest()
        etree.SubElement(ref, f"{{{DSIG}}}DigestValue").text = base64.b64encode(digest).decode("ascii")
    return info


def _sign_bytes(key: PrivateKeyTypes, data: bytes) -> bytes:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("WS-Security signing needs an RSA key")
    return bytes(key.sign(data, padding.PKCS1v15(), hashes.SHA256()))


def _c14n(element: etree._Element, prefixes: list[str] | None = None) -> bytes:
    """Exclusive XML canonicalization 1.0 without comments of ``element``'s subtree."""
    return bytes(etree.tostring(element, method="c14n", exclusive=True, with_comments=False,
                                inclusive_ns_prefixes=prefixes))


def _security_header(header: etree._Element, env: str) -> etree._Element:
    security = etree.Element(_SECURITY, nsmap={"wsse": WSSE, "wsu": WSU})
    security.set(f"{{{env}}}mustUnderstand", "1")
    header.insert(0, security)
    return security


def _token(security: etree._Element, signer: Signer) -> str:
    token = etree.SubElement(security, _TOKEN, EncodingType=WSS_BASE64, ValueType=WSS_X509V3)
    token.set(_ID, f"X509-{uuid.uuid4().hex}")
    token.text = signer.token
    return token.get(_ID) or ""


def _timestamp(security: etree._Element, now: dt.datetime, ttl: float) -> etree._Element:
    stamp = etree.SubElement(security, _TIMESTAMP)
    stamp.set(_ID, f"TS-{uuid.uuid4().hex}")
    etree.SubElement(stamp, f"{{{WSU}}}Created").text = _xsd_time(now)
    etree.SubElement(stamp, f"{{{WSU}}}Expires").text = _xsd_time(now + dt.timedelta(seconds=ttl))
    return stamp


def _key_info(token_id: str) -> etree._Element:
    key_info = etree.Element(f"{{{DSIG}}}KeyInfo", nsmap={"ds": DSIG})
    ref = etree.SubElement(etree.SubElement(key_info, f"{{{WSSE}}}SecurityTokenReference", nsmap={"wsse": WSSE}),
                           f"{{{WSSE}}}Reference")
    ref.set("URI", f"#{token_id}")
    ref.set("ValueType", WSS_X509V3)
    return key_info


def _ensure_id(element: etree._Element, prefix: str) -> etree._Element:
    """``element`` with a wsu:Id, declared with the ``wsu`` prefix (a copy in place when one is added)."""
    if element.get(_ID):
        return element
    parent = element.getparent()
    assert parent is not None
    # lxml cannot add a namespace declaration to an existing element: rebuild the
    # element with it and move the children over (no copy of the content). Its own
    # declarations come along: QNames in content (xsi:type="d:T") may rely on them.
    own = {p: uri for p, uri in element.nsmap.items() if parent.nsmap.get(p) != uri}
    nsmap = {**own, "wsu": WSU} if own.get("wsu", WSU) == WSU else own
    fresh = etree.SubElement(parent, element.tag, attrib=dict(element.attrib), nsmap=nsmap)
    fresh.set(_ID, f"{prefix}-{uuid.uuid4().hex}")
    fresh.text, fresh.tail = element.text, element.tail
    fresh.extend(list(element))
    parent.replace(element, fresh)
    return fresh


def _xsd_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- verifying -----------------------------------------------------------------------

def verify_envelope(data: bytes, cert: x509.Certificate, *, now: dt.datetime, policy: TimePolicy,
                    max_bytes: int) -> Verified:
    """Check the WS-Security header of ``data`` against ``cert`` and the clock; raise on any problem."""
    return verify_root(parse(data, max_bytes=max_bytes), cert, now=now, policy=policy)


def verify_root(root: etree._Element, cert: x509.Certificate, *, now: dt.datetime,
                policy: TimePolicy) -> Verified:
    """:func:`verify_envelope` of an envelope already parsed (it is not changed)."""
    env = _envelope_ns(root)
    security = _the_security_header(root, env)
    timestamp = _one(security, _TIMESTAMP, "wsu:Timestamp")
    signature = _one(security, _SIGNATURE, "ds:Signature")
    if len(root.findall(f"{{{env}}}Body")) != 1:
        raise MalformedMessage("the Envelope must have exactly one Body")
    _check_token(security, cert)
    try:
        _check_signature(root, env, cert, now, signature, timestamp)
    except GatewayError:
        raise
    except (ValueError, TypeError, etree.LxmlError) as exc:  # malformed signature parts (lengths, encodings)
        raise InvalidSignature(f"the signature cannot be checked: {exc}") from exc
    created, keep_until = check_time(timestamp, now, policy)
    # The replay key is the decoded value: base64 has several spellings of the same bytes.
    value = _b64(signature.findtext("ds:SignatureValue", namespaces=_NS), "SignatureValue")
    return Verified(digest=hashlib.sha256(value).hexdigest(), created=created, keep_until=keep_until)


def _b64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except ValueError as exc:
        raise InvalidSignature(f"the {what} is not base64: {exc}") from exc


def _the_security_header(root: etree._Element, env: str) -> etree._Element:
    header = _header(root, env, create=False)
    found = _default_security(header, env) if header is not None else []
    if not found:
        raise InvalidSignature("the message must be signed: it has no wsse:Security header")
    if len(found) > 1:
        raise InvalidSignature("the message has more than one wsse:Security header for this receiver")
    return found[0]


def _one(security: etree._Element, tag: str, what: str) -> etree._Element:
    found = security.findall(tag)
    if len(found) != 1:
        raise InvalidSignature(f"the wsse:Security header must hold exactly one {what}, not {len(found)}")
    return found[0]


def _check_token(security: etree._Element, cert: x509.Certificate) -> None:
    """A clear message when the sender signed with another certificate than the one configured."""
    for token in security.findall(_TOKEN):
        try:
            sent = x509.load_der_x509_certificate(_b64(token.text, "BinarySecurityToken"))
        except ValueError as exc:
            raise InvalidSignature(f"the BinarySecurityToken is not an X.509 certificate: {exc}") from exc
        if sent != cert:
            raise InvalidSignature(f"signed with certificate {sent.subject.rfc4514_string()}, but this client's "
                                   f"messages must be signed with {cert.subject.rfc4514_string()}")


def _check_signature(root: etree._Element, env: str, cert: x509.Certificate, now: dt.datetime,
                     signature: etree._Element, timestamp: etree._Element) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise InvalidSignature(f"the signing certificate {cert.subject.rfc4514_string()} is not valid now "
                               f"(valid {_xsd_time(cert.not_valid_before_utc)} to {_xsd_time(cert.not_valid_after_utc)})")
    signed = _verify_profile(root, signature, cert)
    if signed is None:
        signed = _verify_other(root, env, cert, now)
    # Reference URIs resolve to exactly one element (ambiguous ones are refused),
    # so a URI equal to the real Body's Id means the real Body was signed.
    for element, what in ((_body(root, env), "the soap:Body"), (timestamp, "the wsu:Timestamp")):
        if f"#{_id_of(element)}" not in signed:
            raise InvalidSignature(f"the signature does not cover {what}")


def _verify_profile(root: etree._Element, signature: etree._Element, cert: x509.Certificate) -> set[str] | None:
    """Verify a signature of the WS-I Basic Security Profile shape (exclusive C14N, RSA, SHA-2).

    Returns the reference URIs it covers, or ``None`` when the signature uses
    another shape, which :func:`_verify_other` (signxml) then handles.
    """
    info = signature.find("ds:SignedInfo", namespaces=_NS)
    if info is None:
        raise InvalidSignature("the ds:Signature has no SignedInfo")
    c14n = info.find("ds:CanonicalizationMethod", namespaces=_NS)
    method = _algorithm(info.find("ds:SignatureMethod", namespaces=_NS))
    prefixes = _exc_c14n_prefixes(c14n)
    public = cert.public_key()
    if prefixes is None or method not in _RSA_METHODS or not isinstance(public, rsa.RSAPublicKey):
        return None
    references = [_profile_reference(ref) for ref in info.iterfind("ds:Reference", namespaces=_NS)]
    if not references or any(r is None for r in references):
        return None
    value = _b64(signature.findtext("ds:SignatureValue", namespaces=_NS), "SignatureValue")
    try:
        public.verify(value, _c14n(info, prefixes), padding.PKCS1v15(), _RSA_METHODS[method]())
    except BadSignature as exc:
        raise InvalidSignature(f"the signature value does not verify with {cert.subject.rfc4514_string()}") from exc
    for reference in references:
        assert reference is not None
        _check_digest(root, reference)
    return {r.uri for r in references if r is not None}


@dataclass(frozen=True)
class _Reference:
    uri: str
    prefixes: list[str]
    digest: type[hashes.HashAlgorithm]
    value: bytes


def _profile_reference(ref: etree._Element) -> _Reference | None:
    uri = ref.get("URI") or ""
    transforms = ref.findall("ds:Transforms/ds:Transform", namespaces=_NS)
    algorithm = _algorithm(ref.find("ds:DigestMethod", namespaces=_NS))
    prefixes = _exc_c14n_prefixes(transforms[0]) if len(transforms) == 1 else None
    if not uri.startswith("#") or prefixes is None or algorithm not in _DIGEST_METHODS:
        return None
    value = _b64(ref.findtext("ds:DigestValue", namespaces=_NS), "DigestValue")
    return _Reference(uri=uri, prefixes=prefixes, digest=_DIGEST_METHODS[algorithm], value=value)


def _algorithm(method: etree._Element | None) -> str | None:
    return method.get("Algorithm") if method is not None else None


def _exc_c14n_prefixes(method: etree._Element | None) -> list[str] | None:
    """The InclusiveNamespaces PrefixList of an exclusive-C14N method; ``None`` if it is another method."""
    if method is None or method.get("Algorithm") != EXC_C14N:
        return None
    inclusive = method.find(f"{{{EXC_C14N}}}InclusiveNamespaces")
    prefixes = (inclusive.get("PrefixList") or "").split() if inclusive is not None else []
    return None if "#default" in prefixes else prefixes


def _check_digest(root: etree._Element, reference: _Reference) -> None:
    found = _BY_ID(root, uri=reference.uri[1:])
    if len(found) != 1:
        raise InvalidSignature(f"reference {reference.uri} names {len(found)} elements, not exactly one")
    target = found[0]
    assert isinstance(target, etree._Element)
    digest = hashes.Hash(reference.digest())
    digest.update(_c14n(target, reference.prefixes))
    if not hmac.compare_digest(digest.finalize(), reference.value):
        raise InvalidSignature(f"the content signed as {reference.uri} was changed after signing (digest mismatch)")


def _verify_other(root: etree._Element, env: str, cert: x509.Certificate, now: dt.datetime) -> set[str]:
    """Any other XML-DSig shape, verified by signxml (SHA-1 still refused)."""
    config = SignatureConfiguration(
        location=f"./{{{env}}}Header/{{{WSSE}}}Security/", expect_references=True,
        signature_methods=_METHODS, digest_algorithms=_DIGESTS, verification_time=now,
    )
    try:
        # signxml re-parses copies of the (already parsed, DTD-free) tree: with our parser, not its own.
        results = XMLVerifier().verify(root, x509_cert=cert, id_attribute="Id", expect_config=config,
                                       parser=hardened_parser())
    except SignXMLException as exc:
        raise InvalidSignature(f"the signature does not verify: {exc}") from exc
    assert isinstance(results, list)
    return {str(ref.get("URI")) for ref in results[0].signature_xml.iterfind("ds:SignedInfo/ds:Reference",
                                                                              namespaces=_NS)}


def _id_of(element: etree._Element) -> str | None:
    for name, value in element.attrib.items():
        if etree.QName(name).localname == "Id":
            return str(value)
    return None


def check_time(timestamp: etree._Element, now: dt.datetime, policy: TimePolicy) -> tuple[dt.datetime, dt.datetime]:
    """(Created, keep-until) of a valid Timestamp; raises :class:`Expired` when outside the window."""
    skew = dt.timedelta(seconds=policy.clock_skew)
    max_ttl = dt.timedelta(seconds=policy.max_ttl)
    created = _xsd_datetime(timestamp, "Created", required=True)
    assert created is not None
    expires = _xsd_datetime(timestamp, "Expires", required=False) or created + max_ttl
    if created > now + skew:
        raise Expired(f"the Timestamp was created in the future ({_xsd_time(created)}; "
                      f"now {_xsd_time(now)}, allowed clock skew {policy.clock_skew:g} s)")
    if expires < created:
        raise Expired("the Timestamp expires before it was created")
    if expires - created > max_ttl:
        raise Expired(f"the Timestamp's lifetime of {(expires - created).total_seconds():g} s exceeds the "
                      f"maximum of {policy.max_ttl:g} s")
    if expires + skew < now:
        raise Expired(f"the message expired at {_xsd_time(expires)} (now {_xsd_time(now)}, "
                      f"allowed clock skew {policy.clock_skew:g} s)")
    return created, expires + skew


def _xsd_datetime(timestamp: etree._Element, name: str, *, required: bool) -> dt.datetime | None:
    text = timestamp.findtext(f"wsu:{name}", namespaces=_NS)
    if text is None:
        if required:
            raise Expired(f"the Timestamp has no {name}")
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise MalformedMessage(f"wsu:{name} {text!r} is not an xsd:dateTime") from exc
    if value.tzinfo is None:
        raise MalformedMessage(f"wsu:{name} {text!r} has no time zone (WS-Security times are UTC)")
    return value


# -- envelope structure ----------------------------------------------------------------

def _envelope_ns(root: etree._Element) -> str:
    env = _ENVELOPES.get(root.tag)
    if env is None:
        raise MalformedMessage("the root element is not a SOAP Envelope")
    return env


def _header(root: etree._Element, env: str, *, create: bool) -> etree._Element | None:
    first = root[0] if len(root) else None
    if first is not None and first.tag == f"{{{env}}}Header":
        return first
    if not create:
        return None
    header = etree.Element(f"{{{env}}}Header")
    root.insert(0, header)
    return header


def _body(root: etree._Element, env: str) -> etree._Element:
    body = root.find(f"{{{env}}}Body")
    if body is None:
        raise MalformedMessage("the Envelope has no Body")
    return body


def _default_security(header: etree._Element, env: str) -> list[etree._Element]:
    """Security headers for the ultimate receiver (no actor / role)."""
    actor = "actor" if env == SoapVersion.V11.envelope_ns else "role"
    return [h for h in header.iterchildren(_SECURITY) if h.get(f"{{{env}}}{actor}") is None]
