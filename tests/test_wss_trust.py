"""WS-Security that holds (issue 18 findings 1, 2, 3 and 9; SPEC.md "WS-Security verification").

Each finding is reproduced as it was found live, first against the pure
verifier, then through a real loopback gateway: the Security header meant for
this gateway and no other, replay keyed on what was signed (an ECDSA ``n - s``
re-encoding is a Replay), the routing header under the signature, weak keys
refused.  The XSW corpus of tests/data/invalid/wss/ (written by its make.py
with a fixed key at a fixed time) is looped over at the end, against the
verifier at that time and against a gateway whose clock a shifted SNTP server
sets to it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree

from gateway.errors import ConfigError, InvalidSignature, MalformedMessage
from gateway.ns import DSIG, ROUTING
from gateway.security.wss import Signer, TimePolicy, Verified, sign_envelope, verify_envelope

from .certs import DevPki, dev_pki, ec_signing, signing_with  # noqa: F401  (fixture)
from .conftest import DATA, GatewayFactory, RecordingBackend, message
from .pg import pg_schema
from .sntp import SntpResponder
from .test_auth import basic
from .test_relay import fault_of
from .test_wss_relay import HASH, post
from .xmlsec import ECDSA_SHA256, needs_xmlsec1, signed_by_xmlsec1

__all__ = ["dev_pki"]

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
POLICY = TimePolicy(clock_skew=300, max_ttl=3600)
LIMIT = 1 << 20
CORPUS = DATA / "invalid" / "wss"
#: Signed for "capture"; the forger wants "demo".
FOR_CAPTURE = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>capture</r:To>")
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _load_make() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wss_corpus_make", CORPUS / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


xsw = _load_make()


def cert_of(issued: Any) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert.read_bytes())


def verify(data: bytes, issued: Any, *, now: dt.datetime = NOW) -> Verified:
    return verify_envelope(data, cert_of(issued), now=now, policy=POLICY, max_bytes=LIMIT)


def sign(data: bytes, issued: Any, *, now: dt.datetime = NOW) -> bytes:
    signer = Signer.load(issued.key.read_bytes(), issued.cert.read_bytes())
    return sign_envelope(data, signer, now=now, ttl=300, max_bytes=LIMIT)


def forged(data: bytes, forge: Any) -> bytes:
    root = etree.fromstring(data)
    forge(root)
    return bytes(etree.tostring(root))


def actor_trick(data: bytes, spelling: int) -> bytes:
    """Finding 1: the real signature in a header for another actor, a bogus one in the default header."""
    root = etree.fromstring(data)
    xsw.real_signature_in_actor_header(root)
    bogus = root.findall(f".//{{{DSIG}}}SignatureValue")[-1]
    bogus.text = base64.b64encode(f"bogus signature {spelling}".encode()).decode()
    return bytes(etree.tostring(root))


def s_to_n_minus_s(data: bytes, n: int) -> bytes:
    """Finding 2: the same ECDSA signature re-encoded as (r, n - s), which verifies too."""
    root = etree.fromstring(data)
    node = root.find(f".//{{{DSIG}}}SignatureValue")
    assert node is not None and node.text
    raw = base64.b64decode(node.text)
    half = len(raw) // 2
    r, s = raw[:half], int.from_bytes(raw[half:], "big")
    node.text = base64.b64encode(r + (n - s).to_bytes(half, "big")).decode()
    return bytes(etree.tostring(root))


def wss_config(tmp_path: Path, verify_cert: Path, backend_url: str, **gateway: Any) -> dict[str, Any]:
    return {
        "gateway": {"name": "gw-trust", "db": f"sqlite:///{tmp_path}/trust.db", **gateway},
        # the corpus's messages say r:From corpus (tests/data/invalid/wss/make.py)
        "clients": {"juki-app": {"basic": {"user": "juki", "password_hash": HASH}, "allow": ["*"],
                                 "senders": ["juki", "corpus"], "wss": {"verify": str(verify_cert)}}},
        "endpoints": {"capture": {"url": f"{backend_url}/capture", "timeout": 5},
                      "demo": {"url": f"{backend_url}/demo", "timeout": 5}},
    }


# -- finding 1: the Security header meant for this gateway, and only that one ----------------

def test_the_real_signature_in_another_actors_header_does_not_count(dev_pki: DevPki) -> None:
    signed = sign(FOR_CAPTURE, dev_pki.signing)
    verify(signed, dev_pki.signing)
    for spelling in range(3):
        with pytest.raises(InvalidSignature):
            verify(actor_trick(signed, spelling), dev_pki.signing)


def test_two_security_headers_meant_for_this_gateway_are_refused(dev_pki: DevPki) -> None:
    signed = sign(FOR_CAPTURE, dev_pki.signing)
    for forge in (xsw.second_security_header, xsw.next_actor_and_default):
        with pytest.raises(InvalidSignature, match="more than one wsse:Security header"):
            verify(forged(signed, forge), dev_pki.signing)


@pytest.mark.parametrize("role", ["http://schemas.xmlsoap.org/soap/actor/next", None])
def test_a_header_for_next_or_without_actor_is_the_one_verified(dev_pki: DevPki, role: str | None) -> None:
    root = etree.fromstring(sign(FOR_CAPTURE, dev_pki.signing))
    security = root[0][0]
    if role is not None:
        security.set("{http://schemas.xmlsoap.org/soap/envelope/}actor", role)
    verify(etree.tostring(root), dev_pki.signing)


async def test_the_actor_trick_is_not_accepted_again_on_any_node(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    signed = sign(FOR_CAPTURE, dev_pki.signing, now=dt.datetime.now(dt.timezone.utc))  # NOW is import time
    with pg_schema() as url:
        node_a = await gateway(wss_config(tmp_path, dev_pki.signing.cert, backend.url, db=url))
        node_b = await gateway(wss_config(tmp_path, dev_pki.signing.cert, backend.url, db=url, name="gw-b"))
        assert (await post(http, node_a, signed))[0] == 200
        for spelling, node in enumerate((node_a, node_b, node_b)):
            status, answer = await post(http, node, actor_trick(signed, spelling))
            assert (status, fault_of(answer)[2]) == (400, "InvalidSignature"), answer
        assert len(backend.seen) == 1


# -- finding 2: replays keyed on what was signed, not on the signature's bytes -----------------

@needs_xmlsec1
def test_ecdsa_n_minus_s_is_the_same_signed_message(dev_pki: DevPki, tmp_path: Path) -> None:
    signer = ec_signing(dev_pki.ca, "ec-sign", tmp_path)
    signed = signed_by_xmlsec1(FOR_CAPTURE, signer, now=NOW, method=ECDSA_SHA256)
    first = verify(signed, signer)
    second = verify(s_to_n_minus_s(signed, P256_N), signer)  # still a valid signature...
    assert second.digest == first.digest                      # ...of the same content: one replay key


@needs_xmlsec1
async def test_ecdsa_re_encoded_signature_is_a_replay_through_the_gateway(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    signer = ec_signing(dev_pki.ca, "ec-relay", tmp_path)
    base = await gateway(wss_config(tmp_path, signer.cert, backend.url))
    signed = signed_by_xmlsec1(FOR_CAPTURE, signer, method=ECDSA_SHA256)
    assert (await post(http, base, signed))[0] == 200
    status, answer = await post(http, base, s_to_n_minus_s(signed, P256_N))
    assert (status, fault_of(answer)[2]) == (400, "Replay"), answer
    assert len(backend.seen) == 1


def test_the_replay_key_is_the_signed_digests(dev_pki: DevPki) -> None:
    """Two signatures over the same content share a key; different content has another key."""
    signed = sign(FOR_CAPTURE, dev_pki.signing)
    again = sign(FOR_CAPTURE, dev_pki.signing)  # another Timestamp Id and time: other content
    assert verify(signed, dev_pki.signing).digest != verify(again, dev_pki.signing).digest


# -- finding 3: what the gateway routes on is signed -------------------------------------------

def test_a_message_signed_for_capture_cannot_be_sent_to_demo(dev_pki: DevPki) -> None:
    signed = sign(FOR_CAPTURE, dev_pki.signing)
    verify(signed, dev_pki.signing)
    with pytest.raises(InvalidSignature):
        verify(signed.replace(b"<r:To>capture</r:To>", b"<r:To>demo</r:To>"), dev_pki.signing)


@needs_xmlsec1
def test_a_routing_header_outside_the_signature_is_refused(dev_pki: DevPki) -> None:
    unsigned_route = signed_by_xmlsec1(FOR_CAPTURE, dev_pki.signing, now=NOW, sign_routing=False)
    with pytest.raises(InvalidSignature, match="does not cover the routing header"):
        verify(unsigned_route, dev_pki.signing)
    verify(signed_by_xmlsec1(FOR_CAPTURE, dev_pki.signing, now=NOW), dev_pki.signing)


def test_wsa_to_naming_the_destination_must_be_signed(dev_pki: DevPki) -> None:
    root = xsw.signed(*xsw.fixed_signer(), envelope=xsw.WSA_ENVELOPE)
    verify_envelope(etree.tostring(root), xsw.fixed_signer()[1], now=xsw.SIGNED_AT, policy=POLICY, max_bytes=LIMIT)
    unsigned = xsw.signed(*xsw.fixed_signer(), envelope=xsw.WSA_ENVELOPE, cover=("body", "timestamp"))
    with pytest.raises(InvalidSignature, match="does not cover the wsa:To"):
        verify_envelope(etree.tostring(unsigned), xsw.fixed_signer()[1], now=xsw.SIGNED_AT, policy=POLICY,
                        max_bytes=LIMIT)


def test_a_message_routed_by_its_path_needs_no_signed_routing_header(dev_pki: DevPki) -> None:
    verify(sign(message("valid/soap11-no-header.xml"), dev_pki.signing), dev_pki.signing)


async def test_edited_destination_is_refused_and_not_relayed(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, dev_pki: DevPki,
    tmp_path: Path,
) -> None:
    base = await gateway(wss_config(tmp_path, dev_pki.signing.cert, backend.url))
    now = dt.datetime.now(dt.timezone.utc)  # the gateway's clock, not the module's import time
    edited = sign(FOR_CAPTURE, dev_pki.signing, now=now).replace(b"<r:To>capture</r:To>", b"<r:To>demo</r:To>")
    status, answer = await post(http, base, edited)
    assert (status, fault_of(answer)[2]) == (400, "InvalidSignature"), answer
    assert backend.seen == []
    assert (await post(http, base, sign(FOR_CAPTURE, dev_pki.signing, now=now)))[0] == 200
    assert [seen.path for seen in backend.seen] == ["/capture"]


# -- finding 9: weak keys -----------------------------------------------------------------------

def test_rsa_1024_signatures_are_refused(dev_pki: DevPki, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak = signing_with(dev_pki.ca, "rsa-1024", key, tmp_path)
    signed = etree.tostring(xsw.signed(key, cert_of(weak), envelope=FOR_CAPTURE.decode(), at=NOW))
    with pytest.raises(InvalidSignature, match="RSA key of 1024 bits.*at least 2048"):
        verify(signed, weak)
    with pytest.raises(ConfigError, match="RSA key of 1024 bits"):  # nor does the gateway sign with one
        sign(FOR_CAPTURE, weak)


@needs_xmlsec1
def test_ec_keys_below_p256_are_refused(dev_pki: DevPki, tmp_path: Path) -> None:
    weak = ec_signing(dev_pki.ca, "p224", tmp_path, ec.SECP224R1())
    signed = signed_by_xmlsec1(FOR_CAPTURE, weak, now=NOW, method="http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256")
    with pytest.raises(InvalidSignature, match="EC key of 224 bits.*at least 256"):
        verify(signed, weak)


def test_weak_configured_keys_are_config_errors(dev_pki: DevPki, tmp_path: Path) -> None:
    from routing.config import parse_config
    weak = signing_with(dev_pki.ca, "rsa-1024-conf", rsa.generate_private_key(public_exponent=65537, key_size=1024),
                        tmp_path)
    with pytest.raises(ConfigError, match="clients.juki.wss.verify.*RSA key of 1024 bits"):
        parse_config({"clients": {"juki": {"basic": {"user": "j", "password_hash": HASH}, "allow": ["*"],
                                           "wss": {"verify": str(weak.cert)}}}})
    with pytest.raises(ConfigError, match="endpoints.demo.wss.sign.*RSA key of 1024 bits"):
        parse_config({"endpoints": {"demo": {"url": "http://127.0.0.1:1/x", "wss": {"sign": {
            "key": str(weak.key), "cert": str(weak.cert)}}}}})


# -- the XSW corpus -----------------------------------------------------------------------------

CORPUS_FILES = sorted(CORPUS.glob("*.xml"))
CORPUS_NOW = xsw.SIGNED_AT + dt.timedelta(seconds=60)


def test_the_corpus_is_complete() -> None:
    names = {path.stem for path in CORPUS_FILES}
    assert names == {*xsw.VARIANTS, "weak-rsa-1024"}
    assert (DATA / "valid" / "wss" / "signed-valid.xml").exists()


def test_the_corpus_control_verifies_at_its_time() -> None:
    control = message("valid/wss/signed-valid.xml")
    verify_envelope(control, xsw.fixed_signer()[1], now=CORPUS_NOW, policy=POLICY, max_bytes=LIMIT)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_every_corpus_variant_is_refused_by_the_verifier(path: Path) -> None:
    with pytest.raises((InvalidSignature, MalformedMessage)):
        verify_envelope(path.read_bytes(), xsw.fixed_signer()[1], now=CORPUS_NOW, policy=POLICY, max_bytes=LIMIT)


async def test_every_corpus_variant_is_refused_by_a_gateway_and_none_is_relayed(
    gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    with SntpResponder(shift=CORPUS_NOW.timestamp() - time.time()) as ntp:
        base = await gateway(wss_config(tmp_path, xsw.HERE / "signer.pem", backend.url,
                                        ntp={"servers": [ntp.address], "interval": 1}))
        await _wait_synced(http, base)
        refused = {}
        for path in CORPUS_FILES:
            status, answer = await post(http, base, path.read_bytes())
            refused[path.stem] = (status, fault_of(answer)[2] if status != 200 else "relayed")
        control = message("valid/wss/signed-valid.xml")
        assert (await post(http, base, control))[0] == 200  # the clock is right: the control passes once
        status, answer = await post(http, base, control)
        assert (status, fault_of(answer)[2]) == (400, "Replay")
    assert {name: outcome for name, outcome in refused.items()
            if outcome[0] != 400 or outcome[1] not in ("InvalidSignature", "MalformedMessage")} == {}
    assert [seen.path for seen in backend.seen] == ["/capture"]


async def _wait_synced(http: aiohttp.ClientSession, base: str) -> None:
    for _ in range(100):
        async with http.get(f"{base}/healthz") as resp:
            if (await resp.json())["ntp"]["synced"]:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the gateway never synced with the test's SNTP server")


def test_verification_without_a_routing_header_qname_uses_the_default(dev_pki: DevPki) -> None:
    """The routing header is found by the same QName the relay routes on (gateway.routing_header)."""
    other = FOR_CAPTURE.replace(ROUTING.encode(), b"urn:other:routing")
    signed = sign(other, dev_pki.signing)
    edited = signed.replace(b"<r:To>capture</r:To>", b"<r:To>demo</r:To>")
    with pytest.raises(InvalidSignature):
        verify_envelope(edited, cert_of(dev_pki.signing), now=NOW, policy=POLICY, max_bytes=LIMIT,
                        routing_header="{urn:other:routing}Routing")

