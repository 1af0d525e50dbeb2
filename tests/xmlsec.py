"""The xmlsec1 command-line tool (Debian's xmlsec1) as an independent WS-Security implementation.

It verifies what the gateway signs, and signs messages the gateway must
accept: a template with empty DigestValue/SignatureValue is filled in by
``xmlsec1 --sign``, which computes digests and signature with its own code.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from gateway.ns import DSIG, EXC_C14N, ROUTING, RSA_SHA256, SHA256, SOAP11_ENV, WSS_BASE64, WSS_X509V3, WSSE, WSU
from gateway.security.pki import Issued

XMLSEC1 = shutil.which("xmlsec1")
# Under CI (which installs it, see .ci/run) a missing xmlsec1 fails the tests instead of skipping them.
needs_xmlsec1 = pytest.mark.skipif(XMLSEC1 is None and not os.environ.get("CI"),
                                   reason="xmlsec1 is not installed (apt-get install xmlsec1)")
ID_ARGS = ["--id-attr:Id", "Body", "--id-attr:Id", f"{WSU}:Timestamp", "--id-attr:Id", f"{WSSE}:BinarySecurityToken",
           "--id-attr:Id", f"{ROUTING}:Routing"]
INCLUSIVE_C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"


def _run(args: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    assert XMLSEC1 is not None, "xmlsec1 is not installed (apt-get install xmlsec1)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "message.xml"
        path.write_bytes(data)
        return subprocess.run([XMLSEC1, *args, str(path)], capture_output=True, timeout=60)


def xmlsec_verify(data: bytes, cert: Issued) -> subprocess.CompletedProcess[bytes]:
    """``xmlsec1 --verify`` of a signed envelope with ``cert``'s public key."""
    return _run(["--verify", "--pubkey-cert-pem", str(cert.cert), *ID_ARGS], data)


def xmlsec_sign(template: bytes, signer: Issued) -> bytes:
    """``xmlsec1 --sign`` of a template made by :func:`template`."""
    done = _run(["--sign", "--privkey-pem", f"{signer.key},{signer.cert}", *ID_ARGS, "--output", "/dev/stdout"],
                template)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def template(envelope: bytes, signer: Issued, *, created: dt.datetime, expires: dt.datetime | None,
             c14n: str = EXC_C14N, method: str = RSA_SHA256, digest: str = SHA256,
             sign_body: bool = True, sign_routing: bool = True) -> bytes:
    """A SOAP 1.1 envelope with a wsse:Security header whose signature xmlsec1 fills in.

    A client that names its destination in the routing header signs that header
    too (SPEC.md "WS-Security verification"), as WS-Security stacks sign the
    WS-Addressing headers they route on; ``sign_routing=False`` leaves it out.
    """
    root = etree.fromstring(envelope)
    header = root.find(f"{{{SOAP11_ENV}}}Header")
    if header is None:
        header = etree.Element(f"{{{SOAP11_ENV}}}Header")
        root.insert(0, header)
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    assert body is not None
    body.set(f"{{{WSU}}}Id", "body-1")
    security = etree.Element(f"{{{WSSE}}}Security", nsmap={"wsse": WSSE, "wsu": WSU})
    header.insert(0, security)
    cert = x509.load_pem_x509_certificate(signer.cert.read_bytes())
    token = etree.SubElement(security, f"{{{WSSE}}}BinarySecurityToken", EncodingType=WSS_BASE64,
                             ValueType=WSS_X509V3)
    token.set(f"{{{WSU}}}Id", "token-1")
    token.text = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    stamp = etree.SubElement(security, f"{{{WSU}}}Timestamp")
    stamp.set(f"{{{WSU}}}Id", "ts-1")
    etree.SubElement(stamp, f"{{{WSU}}}Created").text = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    if expires is not None:
        etree.SubElement(stamp, f"{{{WSU}}}Expires").text = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    signature = etree.SubElement(security, f"{{{DSIG}}}Signature", nsmap={"ds": DSIG})
    info = etree.SubElement(signature, f"{{{DSIG}}}SignedInfo")
    etree.SubElement(info, f"{{{DSIG}}}CanonicalizationMethod", Algorithm=c14n)
    etree.SubElement(info, f"{{{DSIG}}}SignatureMethod", Algorithm=method)
    routing = header.find(f"{{{ROUTING}}}Routing")
    if routing is not None:
        routing.set(f"{{{WSU}}}Id", "routing-1")
    uris = (["#body-1"] if sign_body else []) + ["#ts-1"] + (["#routing-1"] if routing is not None and sign_routing
                                                             else [])
    for uri in uris:
        ref = etree.SubElement(info, f"{{{DSIG}}}Reference", URI=uri)
        etree.SubElement(etree.SubElement(ref, f"{{{DSIG}}}Transforms"), f"{{{DSIG}}}Transform", Algorithm=c14n)
        etree.SubElement(ref, f"{{{DSIG}}}DigestMethod", Algorithm=digest)
        etree.SubElement(ref, f"{{{DSIG}}}DigestValue")
    etree.SubElement(signature, f"{{{DSIG}}}SignatureValue")
    str_ = etree.SubElement(etree.SubElement(signature, f"{{{DSIG}}}KeyInfo"), f"{{{WSSE}}}SecurityTokenReference")
    etree.SubElement(str_, f"{{{WSSE}}}Reference", URI="#token-1", ValueType=WSS_X509V3)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def signed_by_xmlsec1(envelope: bytes, signer: Issued, *, now: dt.datetime | None = None,
                      ttl: float = 300, **options: object) -> bytes:
    """``envelope`` signed by xmlsec1 with a Timestamp valid from ``now`` for ``ttl`` seconds."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return xmlsec_sign(template(envelope, signer, created=now, expires=now + dt.timedelta(seconds=ttl),
                                **options), signer)  # type: ignore[arg-type]
