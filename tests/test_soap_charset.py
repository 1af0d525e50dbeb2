"""Character profiles on the SOAP relay: envelopes converted for a CP932 partner and its answers back to
UTF-8, refuse and substitute with the counts in the log record, and WS-Security-signed messages, which are
never converted unless the gateway re-signs them (issue 23, items 2 and 4)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.logs.records import LogRecord
from gateway.logs.tables import LogFilter
from gateway.security.passwords import hash_password
from gateway.security.wss import Signer, sign_envelope

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import GatewayFactory, RecordingBackend, Seen, soap11_headers, soap12_headers
from .records import records
from .test_auth import basic
from .test_relay import fault_of
from .xmlsec import needs_xmlsec1, xmlsec_verify

__all__ = ["dev_pki"]

HASH = hash_password("pw")
#: NEC/IBM extensions (①, ㈱, 髙) and half-width kana: CP932 has them, Shift_JIS proper does not.
TEXT = "①㈱髙 ﾔﾏﾀﾞ ﾀﾛｳ 住民記録"
#: What the partner answers: CP932 labelled Shift_JIS, as such systems do.
ANSWER = ('<?xml version="1.0" encoding="Shift_JIS"?>\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
          f'<s:Body><r xmlns="urn:city">{TEXT} 髙橋</r></s:Body></s:Envelope>')


def envelope(text: str = TEXT, *, to: str = "city", message_id: str = "sc-1") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n'
            f'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:d="urn:bmrgw:demo:1">'
            f'<soap:Header><r:Routing xmlns:r="urn:bmrgw:routing:1"><r:To>{to}</r:To><r:From>juki</r:From>'
            f'<r:MessageId>{message_id}</r:MessageId></r:Routing></soap:Header>'
            f'<soap:Body><d:Echo><d:text>{text}</d:text></d:Echo></soap:Body></soap:Envelope>').encode()


def as_partner_gets(body: bytes) -> bytes:
    """``body`` as the partner must receive it: its declaration naming Windows-31J, in CP932."""
    return body.decode().replace('encoding="utf-8"', 'encoding="Windows-31J"', 1).encode("cp932")


async def cp932_answer(request: web.Request, seen: Seen) -> web.StreamResponse:
    return web.Response(body=ANSWER.encode("cp932"), headers={"Content-Type": "text/xml; charset=Shift_JIS"})


def config(tmp_path: Path, backend: RecordingBackend, *, unmappable: str = "substitute",
           pki: DevPki | None = None, sign: bool = False) -> dict[str, Any]:
    backend.behaviour = cp932_answer
    city: dict[str, Any] = {"url": f"{backend.url}/city", "timeout": 5,
                            "charset": {"encoding": "cp932", "unmappable": unmappable}}
    clients: dict[str, Any] = {}
    if pki is not None:
        clients = {"juki-app": {"basic": {"user": "juki", "password_hash": HASH}, "allow": ["*"],
                                "senders": ["juki"], "wss": {"verify": str(pki.signing.cert)}},
                   "zei-app": {"basic": {"user": "zei", "password_hash": HASH}, "allow": ["*"], "senders": ["juki"]}}
        if sign:
            city["wss"] = {"sign": {"key": str(pki.signing2.key), "cert": str(pki.signing2.cert)}}
    return {"gateway": {"name": "gw-sc", "db": f"sqlite:///{tmp_path}/sc.db"}, "clients": clients,
            "endpoints": {"city": city, "plain": {"url": f"{backend.url}/plain", "timeout": 5}}}


def record(tmp_path: Path, message_id: str, direction: str = "response") -> LogRecord:
    found = [r for r in records(tmp_path / "sc.db", LogFilter(kind="relay", message_id=message_id))
             if r.direction == direction]
    assert len(found) == 1, found
    return found[0]


async def test_an_envelope_goes_out_in_cp932_and_its_answer_comes_back_in_utf8(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, backend))
    body = envelope()
    async with http.post(f"{url}/soap", data=body, headers=soap11_headers()) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer
        assert resp.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert answer == ANSWER.replace('encoding="Shift_JIS"', 'encoding="UTF-8"').encode()
    seen = backend.seen[-1]
    assert seen.path == "/city"
    assert seen.headers["Content-Type"] == "text/xml; charset=Windows-31J"
    assert seen.body == as_partner_gets(body)
    assert seen.headers["Content-Length"] == str(len(seen.body))
    request = record(tmp_path, "sc-1", "request")
    assert (request.bytes_in, request.bytes_out) == (len(body), len(seen.body)), "as received, as sent on"
    response = record(tmp_path, "sc-1")
    assert response.charset_substitutions is None, "nothing was lost"
    assert (response.bytes_in, response.bytes_out) == (len(ANSWER.encode("cp932")), len(answer))


async def test_other_endpoints_still_get_the_bytes_as_they_came(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, backend))
    body = envelope(to="plain", message_id="sc-plain")
    async with http.post(f"{url}/soap", data=body, headers=soap11_headers()) as resp:
        assert resp.status == 200
    assert backend.seen[-1].body == body and backend.seen[-1].headers["Content-Type"] == "text/xml; charset=utf-8"


async def test_a_streamed_envelope_converts_with_characters_across_chunks(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, backend))
    body = envelope(TEXT * 12_000, message_id="sc-big")  # ~430 KB: over SMALL_BODY, so it streams
    assert len(body) > 256 * 1024

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4099):  # odd sizes: multi-byte characters fall across chunks
            yield body[start:start + 4099]

    async with http.post(f"{url}/soap", data=chunks(), headers=soap11_headers()) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer
    assert answer == ANSWER.replace('encoding="Shift_JIS"', 'encoding="UTF-8"').encode()
    expected = as_partner_gets(body)
    assert backend.seen[-1].size == len(expected) and backend.seen[-1].body == expected
    assert backend.seen[-1].headers["Content-Type"] == "text/xml; charset=Windows-31J"
    request = record(tmp_path, "sc-big", "request")
    assert (request.bytes_in, request.bytes_out) == (len(body), len(expected))


async def test_substitutions_are_counted_in_the_log_record(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, backend))
    body = envelope("😀 and 𠀋 and 😀 ①", message_id="sc-sub")
    async with http.post(f"{url}/soap", data=body, headers=soap11_headers()) as resp:
        assert resp.status == 200, await resp.read()
    assert backend.seen[-1].body == as_partner_gets(envelope("〓 and 〓 and 〓 ①", message_id="sc-sub"))
    response = record(tmp_path, "sc-sub")
    assert response.charset_substitutions == "3 (U+1F600 ×2, U+2000B ×1)"
    assert response.to_json()["charset_substitutions"] == response.charset_substitutions
    assert record(tmp_path, "sc-sub", "request").charset_substitutions is None


async def test_refuse_is_a_client_fault_naming_the_character_and_sends_nothing(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, backend, unmappable="refuse"))
    async with http.post(f"{url}/soap", data=envelope("ok 😀", message_id="sc-ref"), headers=soap11_headers()) as resp:
        answer = await resp.read()
        assert resp.status == 422, answer
    assert fault_of(answer) == ("1.1", "soap:Client", "UnmappableCharacter")
    assert b"U+1F600" in answer and b"line 2" in answer
    assert backend.seen == []
    response = record(tmp_path, "sc-ref")
    assert (response.fault_code, response.http_status) == ("UnmappableCharacter", 422)


async def test_refuse_in_a_streamed_envelope_is_a_client_fault(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, backend, unmappable="refuse"))
    body = envelope(TEXT * 12_000 + "😀", message_id="sc-ref-big")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    async with http.post(f"{url}/soap", data=chunks(), headers=soap11_headers()) as resp:
        answer = await resp.read()
        assert resp.status == 422, answer
    assert fault_of(answer)[2] == "UnmappableCharacter" and b"U+1F600" in answer
    assert all(seen.size < len(as_partner_gets(body)) for seen in backend.seen), "never the whole message"


def client_signed(pki: DevPki, body: bytes) -> bytes:
    signer = Signer.load(pki.signing.key.read_bytes(), pki.signing.cert.read_bytes())
    return sign_envelope(body, signer, now=dt.datetime.now(dt.timezone.utc), ttl=300, max_bytes=1 << 20)


async def test_a_signed_message_is_not_converted_without_wss_sign(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
        dev_pki: DevPki) -> None:
    url = await gateway(config(tmp_path, backend, pki=dev_pki))
    for user, message_id in (("juki", "sc-sig-1"), ("zei", "sc-sig-2")):  # verified by the gateway, or not
        signed = client_signed(dev_pki, envelope(message_id=message_id))
        async with http.post(f"{url}/soap", data=signed, headers={**soap11_headers(), **basic(user, "pw")}) as resp:
            answer = await resp.read()
            assert resp.status == 422, answer
        assert fault_of(answer) == ("1.1", "soap:Client", "SignedNotConvertible")
        assert b"wss.sign" in answer
    assert backend.seen == []
    # The same signed message to an endpoint that does not convert passes unchanged.
    signed = client_signed(dev_pki, envelope(to="plain", message_id="sc-sig-3"))
    async with http.post(f"{url}/soap", data=signed, headers={**soap11_headers(), **basic("juki", "pw")}) as resp:
        assert resp.status == 200
    assert backend.seen[-1].body == signed


@needs_xmlsec1
async def test_a_signed_message_is_converted_and_re_signed_with_wss_sign(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
        dev_pki: DevPki) -> None:
    url = await gateway(config(tmp_path, backend, pki=dev_pki, sign=True))
    signed = client_signed(dev_pki, envelope(message_id="sc-resign"))
    async with http.post(f"{url}/soap", data=signed, headers={**soap11_headers(), **basic("juki", "pw")}) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer
    seen = backend.seen[-1]
    assert seen.body is not None
    assert seen.headers["Content-Type"] == "text/xml; charset=Windows-31J"
    assert seen.headers["Content-Length"] == str(len(seen.body))
    assert seen.body.startswith(b'<?xml version="1.0" encoding="Windows-31J"?>')
    assert TEXT.encode("cp932") in seen.body, "the text is in CP932"
    done = xmlsec_verify(seen.body, dev_pki.signing2)  # the endpoint verifies over the bytes it received
    assert done.returncode == 0, done.stderr.decode()
    assert b"SignedInfo References (ok/all): 3/3" in done.stderr
    tampered = seen.body.replace("髙".encode("cp932"), "高".encode("cp932"), 1)
    assert xmlsec_verify(tampered, dev_pki.signing2).returncode != 0, "the signature covers the converted text"


async def test_a_client_that_must_sign_is_still_verified_before_conversion(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
        dev_pki: DevPki) -> None:
    url = await gateway(config(tmp_path, backend, pki=dev_pki, sign=True))
    forged = client_signed(dev_pki, envelope(message_id="sc-forged")).replace("住民記録".encode(), "改ざん".encode())
    async with http.post(f"{url}/soap", data=forged, headers={**soap11_headers(), **basic("juki", "pw")}) as resp:
        answer = await resp.read()
    assert fault_of(answer)[2] == "InvalidSignature"
    assert backend.seen == []


async def test_soap12_keeps_its_action_and_gets_the_charset(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, backend))
    body = envelope(message_id="sc-12").replace(b"http://schemas.xmlsoap.org/soap/envelope/",
                                                b"http://www.w3.org/2003/05/soap-envelope")
    async with http.post(f"{url}/soap", data=body, headers=soap12_headers()) as resp:
        assert resp.status == 200, await resp.read()
    assert backend.seen[-1].body == as_partner_gets(body)
    assert backend.seen[-1].headers["Content-Type"] == ('application/soap+xml; charset=Windows-31J; '
                                                       'action="urn:bmrgw:demo:1/Echo"')


async def test_an_envelope_in_another_encoding_is_refused_for_a_converting_endpoint(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, backend))
    body = envelope(message_id="sc-sjis").decode().replace('encoding="utf-8"', 'encoding="Shift_JIS"').encode("cp932")
    async with http.post(f"{url}/soap", data=body, headers={**soap11_headers(), "Content-Type": "text/xml"}) as resp:
        answer = await resp.read()
        assert resp.status == 415, answer
    assert b"send UTF-8" in answer and backend.seen == []


async def test_a_streamed_signed_message_is_refused_from_its_head(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path,
        dev_pki: DevPki) -> None:
    url = await gateway(config(tmp_path, backend, pki=dev_pki))
    signed = client_signed(dev_pki, envelope(TEXT * 12_000, message_id="sc-sig-big"))
    assert len(signed) > 256 * 1024

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(signed), 4099):
            yield signed[start:start + 4099]

    async with http.post(f"{url}/soap", data=chunks(), headers={**soap11_headers(), **basic("zei", "pw")}) as resp:
        answer = await resp.read()
        assert resp.status == 422, answer
    assert fault_of(answer)[2] == "SignedNotConvertible" and backend.seen == []


async def test_the_partners_unmappable_codes_in_an_answer(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    answer_bytes = ANSWER.encode("cp932").replace("髙橋".encode("cp932"), b"\xf0\x50")  # a private code, no table

    async def private(request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.Response(body=answer_bytes, headers={"Content-Type": "text/xml; charset=Windows-31J"})

    url = await gateway(config(tmp_path, backend))  # substitute
    backend.behaviour = private
    async with http.post(f"{url}/soap", data=envelope(message_id="sc-ans"), headers=soap11_headers()) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer
    assert answer == ANSWER.replace('encoding="Shift_JIS"', 'encoding="UTF-8"').replace("髙橋", "〓").encode()
    assert record(tmp_path, "sc-ans").charset_substitutions == "1 (0xF050 ×1)"


async def test_refuse_in_an_answer_is_a_server_fault(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async def private(request: web.Request, seen: Seen) -> web.StreamResponse:
        return web.Response(body=b"<r>\xf0\x50</r>", headers={"Content-Type": "text/xml"})

    url = await gateway(config(tmp_path, backend, unmappable="refuse"))
    backend.behaviour = private
    async with http.post(f"{url}/soap", data=envelope(message_id="sc-ans-ref"), headers=soap11_headers()) as resp:
        answer = await resp.read()
        assert resp.status == 500, answer
    assert fault_of(answer) == ("1.1", "soap:Server", "EndpointUnavailable") and b"0xF050" in answer
