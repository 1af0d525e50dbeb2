"""The hardened parser and the relay's head scanner, over the files in tests/data."""

from __future__ import annotations

import pytest

from gateway.errors import MalformedMessage, MessageTooLarge
from gateway.ns import SoapVersion
from gateway.parser import EnvelopeHead, HeadScanner, parse, scan_head

from .conftest import DATA, message

ROUTING = "{urn:bmrgw:routing:1}Routing"

EXPECTED = {
    "soap11-routing-header.xml": EnvelopeHead(version=SoapVersion.V11, to="demo", sender="juki", message_id="msg-0001"),
    "soap12-routing-header.xml": EnvelopeHead(version=SoapVersion.V12, to="demo", sender="zei"),
    "soap11-wsa-to.xml": EnvelopeHead(version=SoapVersion.V11, to="demo"),
    "soap12-wsa-to.xml": EnvelopeHead(version=SoapVersion.V12, to="demo"),
    "soap11-no-header.xml": EnvelopeHead(version=SoapVersion.V11),
    "soap11-shift-jis.xml": EnvelopeHead(version=SoapVersion.V11, to="demo", sender="介護"),
    # CP932 (①, ㈱, 髙) labelled Shift_JIS, as Japanese systems write it: read as Windows-31J (WHATWG).
    "soap11-cp932-labelled-shift-jis.xml": EnvelopeHead(version=SoapVersion.V11, to="cityhall-a", sender="介護",
                                                        message_id="cp932-0001"),
}
INVALID = sorted(p.name for p in (DATA / "invalid").iterdir() if p.is_file())  # invalid/wss/: test_wss_trust.py
#: Wrong only from the Body's start tag on, where the scanner stops reading by design (see
#: test_scanner_stops_at_the_end_of_the_header); scan_head, which reads small envelopes whole, refuses them.
PAST_THE_HEAD = {"body-before-header.xml", "two-bodies-second-empty.xml", "two-bodies-soap11.xml",
                 "two-bodies-soap12.xml", "xinclude-in-place-of-the-body.xml",
                 "two-bodies-second-after-8-kib.xml", "header-after-body-after-8-kib.xml",
                 "content-after-envelope-end-after-8-kib.xml", "envelope-unclosed-after-8-kib.xml"}


def scan(data: bytes, step: int, max_bytes: int = 64 * 1024) -> EnvelopeHead:
    scanner = HeadScanner(routing_header=ROUTING, max_bytes=max_bytes)
    for i in range(0, len(data), step):
        head = scanner.feed(data[i:i + step])
        if head is not None:
            return head
    return scanner.finish()


def test_every_valid_file_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in (DATA / "valid").iterdir() if p.is_file())


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("step", [1, 7, 100_000])
def test_head_of_valid_messages(name: str, step: int) -> None:
    assert scan(message(f"valid/{name}"), step) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(set(INVALID) - PAST_THE_HEAD))
@pytest.mark.parametrize("step", [1, 100_000])
def test_invalid_messages_are_malformed(name: str, step: int) -> None:
    with pytest.raises(MalformedMessage):
        scan(message(f"invalid/{name}"), step)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_whole_small_envelope_gives_the_same_head(name: str) -> None:
    assert scan_head(message(f"valid/{name}"), routing_header=ROUTING) == EXPECTED[name]


@pytest.mark.parametrize("name", INVALID)
def test_whole_small_invalid_envelopes_are_malformed(name: str) -> None:
    with pytest.raises(MalformedMessage):
        scan_head(message(f"invalid/{name}"), routing_header=ROUTING)


def test_scanner_stops_at_the_end_of_the_header() -> None:
    head = message("valid/soap11-routing-header.xml")
    end = head.index(b"</soap:Header>") + len(b"</soap:Header>")
    # Whatever follows the header is never parsed, even if it is not XML.
    assert scan(head[:end] + b"<<<not xml at all", 100_000).to == "demo"


def test_header_larger_than_the_limit_is_refused() -> None:
    padding = b"<pad>" + b"x" * 5000 + b"</pad>"
    data = message("valid/soap11-routing-header.xml").replace(b"<soap:Header>", b"<soap:Header>" + padding)
    with pytest.raises(MessageTooLarge):
        scan(data, 1024, max_bytes=2048)


def test_configured_routing_qname() -> None:
    data = (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>'
            b'<x:Route xmlns:x="urn:example:route"><x:To>zei</x:To></x:Route></s:Header><s:Body/></s:Envelope>')
    scanner = HeadScanner(routing_header="{urn:example:route}Route", max_bytes=4096)
    assert (scanner.feed(data) or scanner.finish()).to == "zei"


def test_whole_document_parse_refuses_dtd_and_keeps_entities_unexpanded() -> None:
    with pytest.raises(MalformedMessage, match="DTD"):
        parse(message("invalid/dtd-billion-laughs.xml"), max_bytes=1 << 20)
    with pytest.raises(MalformedMessage, match="DTD"):
        parse(message("invalid/dtd-external-entity.xml"), max_bytes=1 << 20)


def test_whole_document_parse_size_limit() -> None:
    with pytest.raises(MessageTooLarge):
        parse(b"<a>" + b"x" * 100 + b"</a>", max_bytes=50)
    assert parse(b"<a>x</a>", max_bytes=50).text == "x"




@pytest.mark.parametrize("label", ["Shift_JIS", "SJIS", "Windows-31J", "windows-31j", "CP932", "MS932"])
@pytest.mark.parametrize("step", [7, 100_000])
def test_every_label_of_windows_31j_reads_cp932(label: str, step: int) -> None:
    """What a converting endpoint writes (Windows-31J, the IANA name) and what senders write (Shift_JIS) parse."""
    body = message("valid/soap11-cp932-labelled-shift-jis.xml").replace(b'"Shift_JIS"', f'"{label}"'.encode())
    expected = EXPECTED["soap11-cp932-labelled-shift-jis.xml"]
    assert scan(body, step) == expected
    assert scan_head(body, routing_header=ROUTING) == expected
    assert parse(body, max_bytes=1 << 20).find(".//{urn:bmrgw:demo:1}text").text.startswith("表示ソフト")
