"""Write the XML-signature-wrapping (XSW) corpus: signed messages the gateway must refuse.

Run once from the repository root (``.venv/bin/python tests/data/invalid/wss/make.py``);
the files it writes are committed.  It signs with the fixed test key in this
folder (``signer-key.pem``, certificate ``signer.pem``, valid 2029-2039) at
the fixed time :data:`SIGNED_AT`; tests check the Timestamps against a clock
they control (a shifted SNTP server for the loopback gateway, ``now=`` for
the unit loop), so the files stay valid.  ``signed-valid.xml`` (in
tests/data/valid/wss/) is the control: the same signer, accepted once.

The signer here is deliberately independent of gateway.security.wss (lxml's
exclusive C14N and cryptography's RSA only), so a bug in the gateway's own
signing cannot hide one in its verification.  The families follow the XSW
literature (McIntosh & Austel 2005; Somorovsky et al. 2011, 2012): the
signed element moved, wrapped, or duplicated by Id, the Security header
addressed elsewhere or doubled, and what the gateway routes on left unsigned.

Each file's first line after the XML declaration is a comment saying what it tries.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

HERE = Path(__file__).resolve().parent
VALID = HERE.parents[1] / "valid" / "wss"
S = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DS = "http://www.w3.org/2000/09/xmldsig#"
WSA = "http://www.w3.org/2005/08/addressing"
R = "urn:bmrgw:routing:1"
EXC = "http://www.w3.org/2001/10/xml-exc-c14n#"
INCLUSIVE = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
X509V3 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
BASE64 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
ID = f"{{{WSU}}}Id"

#: When every file was signed; its Timestamp expires 300 s later.
SIGNED_AT = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
#: The destination the files were signed for, and the one a forger wants.
SIGNED_FOR, FORGED_TO = "capture", "demo"

ENVELOPE = f"""<soap:Envelope xmlns:soap="{S}" xmlns:d="urn:bmrgw:demo:1">
  <soap:Header>
    <r:Routing xmlns:r="{R}"><r:To>{SIGNED_FOR}</r:To><r:From>corpus</r:From><r:MessageId>xsw-1</r:MessageId></r:Routing>
  </soap:Header>
  <soap:Body><d:Echo><d:text>pay 10 yen</d:text></d:Echo></soap:Body>
</soap:Envelope>"""

WSA_ENVELOPE = f"""<soap:Envelope xmlns:soap="{S}" xmlns:d="urn:bmrgw:demo:1" xmlns:wsa="{WSA}">
  <soap:Header><wsa:To>urn:bmrgw:ap:{SIGNED_FOR}</wsa:To></soap:Header>
  <soap:Body><d:Echo><d:text>pay 10 yen</d:text></d:Echo></soap:Body>
</soap:Envelope>"""


def fixed_signer() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """The committed test key and its self-signed certificate (made on first run)."""
    key_path, cert_path = HERE / "signer-key.pem", HERE / "signer.pem"
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed(key, "xsw-corpus")
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _self_signed(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2029, 1, 1, tzinfo=dt.timezone.utc))
            .not_valid_after(dt.datetime(2039, 1, 1, tzinfo=dt.timezone.utc))
            .sign(key, hashes.SHA256()))


def _c14n(element: etree._Element) -> bytes:
    return bytes(etree.tostring(element, method="c14n", exclusive=True, with_comments=False))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def signed(key: rsa.RSAPrivateKey, cert: x509.Certificate, *, envelope: str = ENVELOPE,
           cover: tuple[str, ...] = ("body", "timestamp", "routing"), at: dt.datetime = SIGNED_AT) -> etree._Element:
    """``envelope`` with a Security header signed at ``at`` over the parts named in ``cover``."""
    root = etree.fromstring(envelope.encode())
    header, body = root[0], root[1]
    security = etree.Element(f"{{{WSSE}}}Security", nsmap={"wsse": WSSE, "wsu": WSU})
    security.set(f"{{{S}}}mustUnderstand", "1")
    header.insert(0, security)
    token = etree.SubElement(security, f"{{{WSSE}}}BinarySecurityToken", EncodingType=BASE64, ValueType=X509V3)
    token.set(ID, "token-1")
    token.text = _b64(cert.public_bytes(serialization.Encoding.DER))
    stamp = etree.SubElement(security, f"{{{WSU}}}Timestamp")
    stamp.set(ID, "ts-1")
    etree.SubElement(stamp, f"{{{WSU}}}Created").text = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    expires = at + dt.timedelta(seconds=300)
    etree.SubElement(stamp, f"{{{WSU}}}Expires").text = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    body.set(ID, "body-1")
    parts = {"body": body, "timestamp": stamp}
    destination = header.find(f"{{{R}}}Routing")
    if destination is None:
        destination = header.find(f"{{{WSA}}}To")
    if destination is not None:
        destination.set(ID, "to-1")
        parts["routing"] = destination
    # Ids are set before any digest: wsu:Id on the Body changes its canonical form.
    root = etree.fromstring(etree.tostring(root))
    by_id = {e.get(ID): e for e in root.iter() if e.get(ID)}
    targets = [by_id[parts[name].get(ID)] for name in cover if name in parts]
    security = root[0][0]
    signature = etree.SubElement(security, f"{{{DS}}}Signature", nsmap={"ds": DS})
    info = etree.SubElement(signature, f"{{{DS}}}SignedInfo")
    etree.SubElement(info, f"{{{DS}}}CanonicalizationMethod", Algorithm=EXC)
    etree.SubElement(info, f"{{{DS}}}SignatureMethod", Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")
    for target in targets:
        ref = etree.SubElement(info, f"{{{DS}}}Reference", URI=f"#{target.get(ID)}")
        etree.SubElement(etree.SubElement(ref, f"{{{DS}}}Transforms"), f"{{{DS}}}Transform", Algorithm=EXC)
        etree.SubElement(ref, f"{{{DS}}}DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256")
        etree.SubElement(ref, f"{{{DS}}}DigestValue").text = _b64(hashlib.sha256(_c14n(target)).digest())
    value = key.sign(_c14n(info), padding.PKCS1v15(), hashes.SHA256())
    etree.SubElement(signature, f"{{{DS}}}SignatureValue").text = _b64(value)
    reference = etree.SubElement(etree.SubElement(etree.SubElement(signature, f"{{{DS}}}KeyInfo"),
                                                  f"{{{WSSE}}}SecurityTokenReference"), f"{{{WSSE}}}Reference")
    reference.set("URI", "#token-1")
    reference.set("ValueType", X509V3)
    return root


# -- the variants: each takes a correctly signed envelope and returns the forgery ---------

def _parts(root: etree._Element) -> tuple[etree._Element, etree._Element, etree._Element]:
    header, body = root[0], root[1]
    security = header.find(f"{{{WSSE}}}Security")
    assert security is not None
    return header, body, security


def _forged_body(root: etree._Element, *, keep_id: bool) -> etree._Element:
    """Replace the Body by a forged one; returns the original (detached)."""
    _, body, _ = _parts(root)
    forged = etree.Element(f"{{{S}}}Body")
    if keep_id:
        forged.set(ID, body.get(ID) or "")
    etree.SubElement(forged, "{urn:bmrgw:demo:1}Echo").text = "pay 1000000 yen"
    root.replace(body, forged)
    return body


def body_moved_into_header(root: etree._Element) -> None:
    """XSW1-like: the signed Body moved into a header block, a forged Body without Id in its place."""
    header = root[0]
    wrapper = etree.SubElement(header, "{urn:attacker}Wrapper")
    wrapper.append(_forged_body(root, keep_id=False))


def body_duplicated_id(root: etree._Element) -> None:
    """The forged Body carries the signed Body's wsu:Id; the original hides in a header block."""
    header = root[0]
    etree.SubElement(header, "{urn:attacker}Wrapper").append(_forged_body(root, keep_id=True))


def body_wrapped_in_security(root: etree._Element) -> None:
    """The signed Body moved inside the wsse:Security header (XSW in the Security element)."""
    _, _, security = _parts(root)
    security.append(_forged_body(root, keep_id=False))


def body_wrapped_in_forged_body(root: etree._Element) -> None:
    """The signed Body nested inside the forged Body's payload, so an Id lookup still finds it."""
    original = _forged_body(root, keep_id=False)
    etree.SubElement(root[1], "{urn:attacker}Wrapper").append(original)


def second_body(root: etree._Element) -> None:
    """A second soap:Body after the signed one (an endpoint might read the last)."""
    extra = etree.SubElement(root, f"{{{S}}}Body")
    etree.SubElement(extra, "{urn:bmrgw:demo:1}Echo").text = "pay 1000000 yen"


def second_security_header(root: etree._Element) -> None:
    """Two Security headers for the ultimate receiver: which one counts is ambiguous."""
    header, _, security = _parts(root)
    header.insert(0, copy.deepcopy(security))


def real_signature_in_actor_header(root: etree._Element) -> None:
    """Finding 1 of issue 18: the real signature moved to a header for another actor, a bogus
    inclusive-C14N signature in the default header next to the real Timestamp."""
    header, _, security = _parts(root)
    elsewhere = etree.Element(f"{{{WSSE}}}Security", nsmap={"wsse": WSSE})
    elsewhere.set(f"{{{S}}}actor", "urn:somebody-else")
    signature = security.find(f"{{{DS}}}Signature")
    assert signature is not None
    token = security.find(f"{{{WSSE}}}BinarySecurityToken")
    assert token is not None
    elsewhere.extend([token, signature])
    header.insert(0, elsewhere)
    bogus = etree.SubElement(security, f"{{{DS}}}Signature", nsmap={"ds": DS})
    info = etree.SubElement(bogus, f"{{{DS}}}SignedInfo")
    etree.SubElement(info, f"{{{DS}}}CanonicalizationMethod", Algorithm=INCLUSIVE)
    etree.SubElement(info, f"{{{DS}}}SignatureMethod", Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha256")
    etree.SubElement(bogus, f"{{{DS}}}SignatureValue").text = _b64(b"any bytes make a new replay key")


def only_actor_header(root: etree._Element) -> None:
    """The only Security header is addressed to another actor: nothing was signed for this gateway."""
    _, _, security = _parts(root)
    security.set(f"{{{S}}}actor", "urn:somebody-else")


def next_actor_and_default(root: etree._Element) -> None:
    """A copy for actor "next" beside the default one: both are meant for this gateway."""
    header, _, security = _parts(root)
    twin = copy.deepcopy(security)
    twin.set(f"{{{S}}}actor", "http://schemas.xmlsoap.org/soap/actor/next")
    header.append(twin)


def signature_outside_security(root: etree._Element) -> None:
    """The ds:Signature moved out of wsse:Security into the Header."""
    header, _, security = _parts(root)
    signature = security.find(f"{{{DS}}}Signature")
    assert signature is not None
    header.append(signature)


def timestamp_wrapped(root: etree._Element) -> None:
    """The signed Timestamp hidden in a wrapper; a fresh unsigned one with a far Expires in its place."""
    header, _, security = _parts(root)
    stamp = security.find(f"{{{WSU}}}Timestamp")
    assert stamp is not None
    fresh = etree.Element(f"{{{WSU}}}Timestamp")
    etree.SubElement(fresh, f"{{{WSU}}}Created").text = SIGNED_AT.strftime("%Y-%m-%dT%H:%M:%SZ")
    etree.SubElement(fresh, f"{{{WSU}}}Expires").text = (SIGNED_AT + dt.timedelta(seconds=3000)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    security.replace(stamp, fresh)
    etree.SubElement(header, "{urn:attacker}Wrapper").append(stamp)


def routing_edited(root: etree._Element) -> None:
    """Finding 3 of issue 18: signed for capture, r:To edited to demo."""
    to = root.find(f".//{{{R}}}To")
    assert to is not None
    to.text = FORGED_TO


def routing_wrapped(root: etree._Element) -> None:
    """The signed routing header hidden in a wrapper; an unsigned one to demo put first."""
    header = root[0]
    routing = header.find(f"{{{R}}}Routing")
    assert routing is not None
    etree.SubElement(header, "{urn:attacker}Wrapper").append(routing)
    header.insert(0, _routing_to(FORGED_TO))


def routing_second_header_first(root: etree._Element) -> None:
    """An unsigned routing header to demo before the signed one (the gateway routes on the first)."""
    root[0].insert(0, _routing_to(FORGED_TO))


def _routing_to(name: str) -> etree._Element:
    routing = etree.Element(f"{{{R}}}Routing", nsmap={"r": R})
    etree.SubElement(routing, f"{{{R}}}To").text = name
    return routing


def _unchanged(root: etree._Element) -> None:
    """The forgery is in how it was signed (see :data:`SIGNED_AS`)."""


#: file name -> (what the signature covers, which envelope, the forgery)
VARIANTS: dict[str, tuple[tuple[str, ...], str, Callable[[etree._Element], None]]] = {
    "body-moved-into-header": (("body", "timestamp", "routing"), ENVELOPE, body_moved_into_header),
    "body-duplicated-id": (("body", "timestamp", "routing"), ENVELOPE, body_duplicated_id),
    "body-wrapped-in-security": (("body", "timestamp", "routing"), ENVELOPE, body_wrapped_in_security),
    "body-wrapped-in-forged-body": (("body", "timestamp", "routing"), ENVELOPE, body_wrapped_in_forged_body),
    "second-body": (("body", "timestamp", "routing"), ENVELOPE, second_body),
    "second-security-header": (("body", "timestamp", "routing"), ENVELOPE, second_security_header),
    "actor-real-signature-elsewhere": (("body", "timestamp", "routing"), ENVELOPE, real_signature_in_actor_header),
    "actor-other-only": (("body", "timestamp", "routing"), ENVELOPE, only_actor_header),
    "actor-next-and-default": (("body", "timestamp", "routing"), ENVELOPE, next_actor_and_default),
    "signature-outside-security": (("body", "timestamp", "routing"), ENVELOPE, signature_outside_security),
    "body-not-signed": (("timestamp", "routing"), ENVELOPE, _unchanged),
    "timestamp-not-signed": (("body", "routing"), ENVELOPE, _unchanged),
    "timestamp-wrapped": (("body", "timestamp", "routing"), ENVELOPE, timestamp_wrapped),
    "routing-not-signed": (("body", "timestamp"), ENVELOPE, _unchanged),
    "routing-edited": (("body", "timestamp", "routing"), ENVELOPE, routing_edited),
    "routing-wrapped": (("body", "timestamp", "routing"), ENVELOPE, routing_wrapped),
    "routing-second-header-first": (("body", "timestamp", "routing"), ENVELOPE, routing_second_header_first),
    "wsa-to-not-signed": (("body", "timestamp"), WSA_ENVELOPE, _unchanged),
}


def write_all() -> list[Path]:
    key, cert = fixed_signer()
    VALID.mkdir(parents=True, exist_ok=True)
    written = [_write(VALID / "signed-valid.xml", signed(key, cert), "correctly signed: the control, accepted once")]
    for name, (cover, envelope, forge) in VARIANTS.items():
        root = signed(key, cert, envelope=envelope, cover=cover)
        forge(root)
        written.append(_write(HERE / f"{name}.xml", root, (forge.__doc__ or "").split("\n")[0]
                              if forge is not _unchanged else f"signed over {', '.join(cover)} only"))
    written.append(_write(HERE / "weak-rsa-1024.xml", _weak(), "signed by an RSA-1024 key (its token says so)"))
    return written


def _weak() -> etree._Element:
    """Signed by a throwaway RSA-1024 key (made afresh each run: nothing can sign with it again)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return signed(key, _self_signed(key, "xsw-corpus"))


def _write(path: Path, root: etree._Element, what: str) -> Path:
    root.getroottree().getroot().addprevious(etree.Comment(f" {what} "))
    path.write_bytes(etree.tostring(root.getroottree(), xml_declaration=True, encoding="utf-8"))
    return path


if __name__ == "__main__":
    for made in write_all():
        print(made.relative_to(Path.cwd()) if made.is_relative_to(Path.cwd()) else made, file=sys.stdout)
