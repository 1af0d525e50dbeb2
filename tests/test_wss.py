"""WS-Security: the gateway's signatures verify elsewhere, other stacks' signatures verify here,
and every bad message is refused with its fault code.

Interop partner: Debian's xmlsec1 command-line tool (tests/xmlsec.py), an
implementation of XML-DSig independent of ours; signxml verifies our output too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree
from signxml.verifier import SignatureConfiguration, XMLVerifier

from gateway.errors import Expired, InvalidSignature, MalformedMessage
from gateway.ns import DSIG, ROUTING, SOAP11_ENV, SOAP12_ENV, WSSE, WSU
from gateway.security.wss import Signer, TimePolicy, Verified, sign_envelope, verify_envelope

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import message
from .xmlsec import INCLUSIVE_C14N, RSA_SHA1, SHA1, needs_xmlsec1, signed_by_xmlsec1, xmlsec_verify

__all__ = ["dev_pki"]

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
POLICY = TimePolicy(clock_skew=300, max_ttl=3600)
LIMIT = 10 * 1024 * 1024
ENVELOPES = ["valid/soap11-routing-header.xml", "valid/soap12-routing-header.xml", "valid/soap11-no-header.xml",
             "valid/soap11-shift-jis.xml"]


def signer(issued: object) -> Signer:
    return Signer.load(issued.key.read_bytes(), issued.cert.read_bytes())  # type: ignore[attr-defined]


def cert(issued: object) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert.read_bytes())  # type: ignore[attr-defined]


def verify(data: bytes, issued: object, *, now: dt.datetime = NOW, policy: TimePolicy = POLICY) -> Verified:
    return verify_envelope(data, cert(issued), now=now, policy=policy, max_bytes=LIMIT)


def sign(data: bytes, pki: DevPki, *, now: dt.datetime = NOW, ttl: float = 300) -> bytes:
    return sign_envelope(data, signer(pki.signing), now=now, ttl=ttl, max_bytes=LIMIT)


def body_of(data: bytes) -> etree._Element:
    root = etree.fromstring(data)
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    return body if body is not None else root.find(f"{{{SOAP12_ENV}}}Body")


def same_content(a: etree._Element, b: etree._Element) -> bool:
    def c14n(e: etree._Element) -> bytes:
        return bytes(etree.tostring(e, method="c14n", exclusive=True))
    return [c14n(c) for c in a] == [c14n(c) for c in b] and len(a) > 0


# -- what the gateway signs ------------------------------------------------------------

@pytest.mark.parametrize("name", ENVELOPES)
def test_signed_envelope_verifies_and_keeps_the_body(dev_pki: DevPki, name: str) -> None:
    original = message(name)
    signed = sign(original, dev_pki)
    result = verify(signed, dev_pki.signing)
    assert result.created == NOW and len(result.digest) == 64
    assert same_content(body_of(original), body_of(signed))
    # The document keeps its encoding, so the Content-Type charset still holds.
    assert etree.fromstring(signed).getroottree().docinfo.encoding.lower() == \
        etree.fromstring(original).getroottree().docinfo.encoding.lower()


def test_signature_layout(dev_pki: DevPki) -> None:
    signed = etree.fromstring(sign(message("valid/soap11-routing-header.xml"), dev_pki, ttl=120))
    header = signed.find(f"{{{SOAP11_ENV}}}Header")
    assert header is not None
    security = header[0]
    assert security.tag == f"{{{WSSE}}}Security" and security.get(f"{{{SOAP11_ENV}}}mustUnderstand") == "1"
    assert [c.tag for c in security] == [f"{{{WSSE}}}BinarySecurityToken", f"{{{WSU}}}Timestamp",
                                         f"{{{DSIG}}}Signature"]
    stamp = security[1]
    assert stamp.findtext(f"{{{WSU}}}Created") == NOW.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    expires = NOW + dt.timedelta(seconds=120)
    assert stamp.findtext(f"{{{WSU}}}Expires") == expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    uris = [r.get("URI") for r in security.iterfind(f".//{{{DSIG}}}Reference")]
    body = signed.find(f"{{{SOAP11_ENV}}}Body")
    routing = header.find(f"{{{ROUTING}}}Routing")  # it names the destination: signed too
    assert body is not None and routing is not None
    assert uris == [f"#{body.get(f'{{{WSU}}}Id')}", f"#{stamp.get(f'{{{WSU}}}Id')}", f"#{routing.get(f'{{{WSU}}}Id')}"]


def test_a_second_signature_replaces_the_first_security_header(dev_pki: DevPki) -> None:
    twice = sign(sign(message("valid/soap11-routing-header.xml"), dev_pki), dev_pki)
    assert len(etree.fromstring(twice).findall(f".//{{{WSSE}}}Security")) == 1
    verify(twice, dev_pki.signing)


@needs_xmlsec1
@pytest.mark.parametrize("name", ENVELOPES)
def test_xmlsec1_verifies_what_the_gateway_signs(dev_pki: DevPki, name: str) -> None:
    signed = sign(message(name), dev_pki)
    done = xmlsec_verify(signed, dev_pki.signing)
    assert done.returncode == 0, done.stderr.decode()
    parts = 2 if name == "valid/soap11-no-header.xml" else 3  # Body, Timestamp (and the routing header)
    assert f"SignedInfo References (ok/all): {parts}/{parts}".encode() in done.stderr


@needs_xmlsec1
def test_xmlsec1_rejects_a_tampered_gateway_signature(dev_pki: DevPki) -> None:
    signed = sign(message("valid/soap11-routing-header.xml"), dev_pki)
    tampered = signed.replace("住民記録".encode(), "改ざん".encode())
    assert tampered != signed
    assert xmlsec_verify(tampered, dev_pki.signing).returncode != 0


def test_signxml_verifies_what_the_gateway_signs(dev_pki: DevPki) -> None:
    signed = etree.fromstring(sign(message("valid/soap11-routing-header.xml"), dev_pki))
    config = SignatureConfiguration(location=f"./{{{SOAP11_ENV}}}Header/{{{WSSE}}}Security/", expect_references=3)
    results = XMLVerifier().verify(signed, x509_cert=cert(dev_pki.signing), id_attribute="Id",
                                   expect_config=config)
    assert isinstance(results, list)
    assert {etree.QName(r.signed_xml).localname for r in results if r.signed_xml is not None} == {"Body", "Timestamp", "Routing"}


# -- what other stacks sign ------------------------------------------------------------

@needs_xmlsec1
@pytest.mark.parametrize("c14n", ["http://www.w3.org/2001/10/xml-exc-c14n#", INCLUSIVE_C14N])
def test_message_signed_by_xmlsec1_is_accepted(dev_pki: DevPki, c14n: str) -> None:
    signed = signed_by_xmlsec1(message("valid/soap11-routing-header.xml"), dev_pki.signing, now=NOW, c14n=c14n)
    result = verify(signed, dev_pki.signing)
    assert result.created == NOW
    assert result.keep_until == NOW + dt.timedelta(seconds=300 + POLICY.clock_skew)


@needs_xmlsec1
def test_sha1_signatures_are_refused(dev_pki: DevPki) -> None:
    signed = signed_by_xmlsec1(message("valid/soap11-routing-header.xml"), dev_pki.signing, now=NOW,
                               method=RSA_SHA1, digest=SHA1)
    with pytest.raises(InvalidSignature, match="does not verify"):
        verify(signed, dev_pki.signing)


# -- refusals ---------------------------------------------------------------------------

def test_tampered_body_is_refused(dev_pki: DevPki) -> None:
    signed = sign(message("valid/soap11-routing-header.xml"), dev_pki)
    tampered = signed.replace("住民記録".encode(), "改ざん".encode())
    with pytest.raises(InvalidSignature, match="changed after signing"):
        verify(tampered, dev_pki.signing)


@needs_xmlsec1
def test_tampered_body_signed_by_xmlsec1_is_refused(dev_pki: DevPki) -> None:
    signed = signed_by_xmlsec1(message("valid/soap11-routing-header.xml"), dev_pki.signing, now=NOW)
    with pytest.raises(InvalidSignature, match="changed after signing"):
        verify(signed.replace(b"<d:text>", b"<d:text>X"), dev_pki.signing)


def test_tampered_timestamp_is_refused(dev_pki: DevPki) -> None:
    signed = sign(message("valid/soap11-routing-header.xml"), dev_pki)
    later = (NOW + dt.timedelta(seconds=300)).strftime("%Y-%m-%dT%H:%M:%S.000Z").encode()
    much_later = (NOW + dt.timedelta(seconds=3000)).strftime("%Y-%m-%dT%H:%M:%S.000Z").encode()
    with pytest.raises(InvalidSignature, match="changed after signing"):
        verify(signed.replace(later, much_later), dev_pki.signing)


def test_signature_by_another_certificate_is_refused(dev_pki: DevPki) -> None:
    signed = sign_envelope(message("valid/soap11-routing-header.xml"), signer(dev_pki.signing2), now=NOW, ttl=300,
                           max_bytes=LIMIT)
    with pytest.raises(InvalidSignature, match="signed with certificate CN=sign2.*must be signed with CN=sign"):
        verify(signed, dev_pki.signing)


def test_other_key_without_a_token_is_refused(dev_pki: DevPki) -> None:
    signed = etree.fromstring(sign_envelope(message("valid/soap11-routing-header.xml"), signer(dev_pki.signing2),
                                            now=NOW, ttl=300, max_bytes=LIMIT))
    token = signed.find(f".//{{{WSSE}}}BinarySecurityToken")
    assert token is not None
    token.getparent().remove(token)
    with pytest.raises(InvalidSignature, match="does not verify with CN=sign"):
        verify(etree.tostring(signed), dev_pki.signing)


def test_unsigned_message_is_refused(dev_pki: DevPki) -> None:
    with pytest.raises(InvalidSignature, match="no wsse:Security header"):
        verify(message("valid/soap11-routing-header.xml"), dev_pki.signing)


@pytest.mark.parametrize(("removed", "problem"), [
    (f"{{{WSU}}}Timestamp", "exactly one wsu:Timestamp"),
    (f"{{{DSIG}}}Signature", "exactly one ds:Signature"),
])
def test_incomplete_security_header_is_refused(dev_pki: DevPki, removed: str, problem: str) -> None:
    signed = etree.fromstring(sign(message("valid/soap11-routing-header.xml"), dev_pki))
    element = signed.find(f".//{removed}")
    assert element is not None
    element.getparent().remove(element)
    with pytest.raises(InvalidSignature, match=problem):
        verify(etree.tostring(signed), dev_pki.signing)


def test_signature_wrapping_is_refused(dev_pki: DevPki) -> None:
    """The signed Body moved into the Header and a forged Body put in its place."""
    signed = etree.fromstring(sign(message("valid/soap11-routing-header.xml"), dev_pki))
    header, body = signed[0], signed[1]
    header.append(body)
    forged = etree.SubElement(signed, f"{{{SOAP11_ENV}}}Body")
    etree.SubElement(forged, "{urn:bmrgw:demo:1}Echo").text = "forged"
    with pytest.raises(InvalidSignature, match="does not cover the soap:Body"):
        verify(etree.tostring(signed), dev_pki.signing)


@needs_xmlsec1
def test_signature_over_the_timestamp_only_is_refused(dev_pki: DevPki) -> None:
    signed = signed_by_xmlsec1(message("valid/soap11-routing-header.xml"), dev_pki.signing, now=NOW, sign_body=False)
    with pytest.raises(InvalidSignature, match="does not cover the soap:Body"):
        verify(signed, dev_pki.signing)


@pytest.mark.parametrize(("signed_at", "ttl", "problem"), [
    (NOW - dt.timedelta(seconds=900), 300, "expired at"),            # expired 10 min ago, skew 5 min
    (NOW + dt.timedelta(seconds=600), 300, "created in the future"),  # sender's clock 10 min ahead
    (NOW, 7200, "lifetime of 7200 s exceeds the maximum of 3600 s"),
])
def test_timestamps_outside_the_window_are_expired(dev_pki: DevPki, signed_at: dt.datetime, ttl: float,
                                                  problem: str) -> None:
    signed = sign(message("valid/soap11-routing-header.xml"), dev_pki, now=signed_at, ttl=ttl)
    with pytest.raises(Expired, match=problem):
        verify(signed, dev_pki.signing)


def test_timestamps_within_the_skew_are_accepted(dev_pki: DevPki) -> None:
    # Expired 4 minutes ago, created 4 minutes "in the future": both within 300 s of skew.
    verify(sign(message("valid/soap11-routing-header.xml"), dev_pki, now=NOW - dt.timedelta(seconds=540)),
           dev_pki.signing)
    verify(sign(message("valid/soap11-routing-header.xml"), dev_pki, now=NOW + dt.timedelta(seconds=240)),
           dev_pki.signing)


@needs_xmlsec1
def test_timestamp_without_expires_is_bounded_by_the_maximum_ttl(dev_pki: DevPki) -> None:
    from .xmlsec import template, xmlsec_sign
    old = xmlsec_sign(template(message("valid/soap11-routing-header.xml"), dev_pki.signing,
                               created=NOW - dt.timedelta(seconds=4000), expires=None), dev_pki.signing)
    with pytest.raises(Expired, match="expired at"):
        verify(old, dev_pki.signing)


def test_expired_signing_certificate_is_refused(dev_pki: DevPki, tmp_path: Path) -> None:
    from gateway.security.pki import issue
    old = issue(dev_pki.ca, "signing", "old-sign", folder=tmp_path, start=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc),
                days=30)
    signed = sign_envelope(message("valid/soap11-routing-header.xml"), signer(old), now=NOW, ttl=300,
                           max_bytes=LIMIT)
    with pytest.raises(InvalidSignature, match="CN=old-sign is not valid now"):
        verify(signed, old)


def test_bad_timestamp_text_is_malformed(dev_pki: DevPki) -> None:
    signed = sign(message("valid/soap11-routing-header.xml"), dev_pki)
    created = NOW.strftime("%Y-%m-%dT%H:%M:%S.000Z").encode()
    with pytest.raises((MalformedMessage, InvalidSignature)):
        verify(signed.replace(created, b"yesterday"), dev_pki.signing)


# -- bmrgw wss ----------------------------------------------------------------------------

def test_wss_command_signs_and_verifies(dev_pki: DevPki, tmp_path: Path) -> None:
    import subprocess

    from .conftest import BMRGW
    source = tmp_path / "in.xml"
    source.write_bytes(message("valid/soap11-routing-header.xml"))
    signed = subprocess.run([*BMRGW, "wss", "sign", "--key", str(dev_pki.signing.key), "--cert",
                             str(dev_pki.signing.cert), str(source)], capture_output=True, timeout=60)
    assert signed.returncode == 0, signed.stderr
    verify(signed.stdout, dev_pki.signing, now=dt.datetime.now(dt.timezone.utc))
    good = subprocess.run([*BMRGW, "wss", "verify", "--cert", str(dev_pki.signing.cert)], input=signed.stdout,
                          capture_output=True, timeout=60)
    assert good.returncode == 0 and b"valid: signed by CN=sign" in good.stdout
    wrong = subprocess.run([*BMRGW, "wss", "verify", "--cert", str(dev_pki.signing2.cert)], input=signed.stdout,
                           capture_output=True, timeout=60)
    assert wrong.returncode == 1 and b"not valid (InvalidSignature)" in wrong.stderr
    missing = subprocess.run([*BMRGW, "wss", "sign", "--key", str(tmp_path / "none.pem"), "--cert",
                              str(dev_pki.signing.cert), str(source)], capture_output=True, timeout=60)
    assert missing.returncode == 2 and b"cannot read" in missing.stderr and b"Traceback" not in missing.stderr


def test_replay_key_ignores_how_the_signature_value_is_spelled(dev_pki: DevPki) -> None:
    """Whitespace or the unused bits of base64's last character must not make a replay look new."""
    signed = etree.fromstring(sign(message("valid/soap11-routing-header.xml"), dev_pki))
    value = signed.find(f".//{{{DSIG}}}SignatureValue")
    assert value is not None and value.text is not None and value.text.endswith("=")
    first = verify(etree.tostring(signed), dev_pki.signing)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    data = value.text.rstrip("=")
    padding = value.text[len(data):]
    # 256 signature bytes end in "==": the character before them carries 4 unused bits.
    respelled = data[:-1] + alphabet[alphabet.index(data[-1]) ^ 1] + padding
    assert respelled != value.text
    value.text = "\n".join([respelled[:100], respelled[100:]])
    second = verify(etree.tostring(signed), dev_pki.signing)
    assert second.digest == first.digest


@pytest.mark.parametrize("element", ["SignatureValue", "DigestValue"])
def test_garbage_in_signature_values_is_invalid_signature(dev_pki: DevPki, element: str) -> None:
    signed = etree.fromstring(sign(message("valid/soap11-routing-header.xml"), dev_pki))
    node = signed.find(f".//{{{DSIG}}}{element}")
    assert node is not None
    node.text = "not*base64!"
    with pytest.raises(InvalidSignature, match="not base64"):
        verify(etree.tostring(signed), dev_pki.signing)
    node.text = "AAAA"  # valid base64, wrong length
    with pytest.raises(InvalidSignature):
        verify(etree.tostring(signed), dev_pki.signing)


def test_a_second_body_is_refused(dev_pki: DevPki) -> None:
    signed = etree.fromstring(sign(message("valid/soap11-routing-header.xml"), dev_pki))
    etree.SubElement(signed, f"{{{SOAP11_ENV}}}Body").text = "smuggled"
    with pytest.raises(MalformedMessage, match="exactly one Body"):
        verify(etree.tostring(signed), dev_pki.signing)


def test_declarations_on_the_body_survive_signing(dev_pki: DevPki) -> None:
    """A QName in content (xsi:type="d:Person") needs the prefix the Body declared."""
    envelope = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/>'
                b'<s:Body xmlns:d="urn:d" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
                b'<d:Put><item xsi:type="d:Person">x</item></d:Put></s:Body></s:Envelope>')
    signed = etree.fromstring(sign(envelope, dev_pki))
    item = signed.find(".//item")
    assert item is not None and item.nsmap.get("d") == "urn:d"
    verify(etree.tostring(signed), dev_pki.signing)


# -- verify, then sign the same tree (the secured relay) -----------------------------------

@needs_xmlsec1
@pytest.mark.parametrize("digest", ["http://www.w3.org/2001/04/xmlenc#sha256",
                                    "http://www.w3.org/2001/04/xmlenc#sha512"])
def test_signing_after_verifying_reuses_only_sha256_exclusive_digests(dev_pki: DevPki, digest: str) -> None:
    """Verified.digests are the checked SHA-256 digests of exclusive C14N without a PrefixList; a message
    signed with SHA-512 references gives none.  Either way the gateway's signature over the same tree
    verifies with xmlsec1, which recomputes every digest from the bytes."""
    from gateway.parser import parse
    from gateway.security.wss import sign_root, verify_root

    signed = signed_by_xmlsec1(message("valid/soap11-routing-header.xml"), dev_pki.signing, now=NOW, digest=digest)
    root = parse(signed, max_bytes=LIMIT)
    verified = verify_root(root, cert(dev_pki.signing), now=NOW, policy=POLICY)
    if digest.endswith("sha256"):
        assert sorted(etree.QName(e).localname for e, _ in verified.digests) == ["Body", "Routing", "Timestamp"]
        for element, value in verified.digests:
            assert value == hashlib.sha256(etree.tostring(element, method="c14n", exclusive=True)).digest()
    else:
        assert verified.digests == ()
    again = sign_root(root, signer(dev_pki.signing2), now=NOW, ttl=300, digests=verified.digests)
    done = xmlsec_verify(again, dev_pki.signing2)
    assert done.returncode == 0, done.stderr.decode()
    verify(again, dev_pki.signing2)


def test_ids_with_markup_and_whitespace_are_referenced_exactly(dev_pki: DevPki) -> None:
    """The gateway's Security header is written as text: Ids that came from the client (markup characters,
    a newline, a tab) must come back as the very same URIs, and no markup of theirs may enter the header."""
    hostile = ('<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
               f'xmlns:wsu="{WSU}"><soap:Header><r:Routing xmlns:r="{ROUTING}" '
               'wsu:Id="a&quot;&gt;&lt;ds:Reference URI=&quot;#x&quot;/&gt;&amp;&#10;&#9;&#13;\'b">'
               '<r:To>demo</r:To></r:Routing></soap:Header>'
               '<soap:Body wsu:Id="b&lt;&#10;{}"><x/></soap:Body></soap:Envelope>').encode()
    signed = sign(hostile, dev_pki)
    root = etree.fromstring(signed)
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    routing = root.find(f"{{{SOAP11_ENV}}}Header/{{{ROUTING}}}Routing")
    assert body is not None and routing is not None
    uris = [ref.get("URI") for ref in root.iter(f"{{{DSIG}}}Reference")]
    assert uris[0] == f"#{body.get(f'{{{WSU}}}Id')}" == "#b<\n{}"
    assert uris[2] == f"#{routing.get(f'{{{WSU}}}Id')}" == "#a\"><ds:Reference URI=\"#x\"/>&\n\t\r'b"
    assert len(uris) == 3  # no Reference smuggled in through an Id
    assert verify(signed, dev_pki.signing).digest
