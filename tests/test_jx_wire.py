"""JX requests on the wire: the incremental reader and the response envelopes (pure functions)."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import MalformedMessage, MessageTooLarge
from gateway.jx.wire import (
    MessageHeader,
    RequestReader,
    jx_namespace,
    operation_of_action,
    response_envelope,
    split_at_data,
)
from gateway.ns import JX, JX_HYPHENLESS

DATA = Path(__file__).parent / "data" / "jx"
VALID = sorted((DATA / "valid").glob("*.xml"))
INVALID = sorted((DATA / "invalid").glob("*.xml"))
TEXT = "こんにちは、JX手順".encode()


def read(data: bytes, spool: Path, *, chunk: int = 7, limit: int = 1 << 20, encoding: str | None = None):  # type: ignore[no-untyped-def]
    reader = RequestReader(spool, max_document_bytes=limit, encoding=encoding)
    for start in range(0, len(data), chunk):
        reader.feed(data[start:start + chunk])
    return reader.finish()


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_requests_parse_in_tiny_chunks(path: Path, tmp_path: Path) -> None:
    request = read(path.read_bytes(), tmp_path)
    assert request.operation == path.stem.split("-")[0].capitalize() + "Document"
    assert jx_namespace(request.namespace)
    assert request.header.sender in ("DC", "1310001")
    if request.operation == "PutDocument":
        assert request.spool is not None
        assert request.spool.path.read_bytes() == TEXT
        assert request.spool.sha256 == hashlib.sha256(TEXT).hexdigest()
        assert request.field("receiverId") == "1310001"


def test_2007_header_fields_and_compress_type(tmp_path: Path) -> None:
    request = read((DATA / "valid" / "put-2007-wrapped-data.xml").read_bytes(), tmp_path)
    assert request.header.edition_2007
    assert (request.header.format_type, request.header.document_type) == ("XML", "kaigo")
    assert request.field("compressType") == "zip"


def test_shift_jis_text_is_decoded(tmp_path: Path) -> None:
    request = read((DATA / "valid" / "put-shift-jis.xml").read_bytes(), tmp_path)
    assert request.field("documentType") == "住民異動"


def test_content_type_charset_overrides_a_missing_declaration(tmp_path: Path) -> None:
    body = (DATA / "valid" / "put-shift-jis.xml").read_bytes().split(b"?>", 1)[1]
    request = read(body, tmp_path, encoding="shift_jis")
    assert request.field("documentType") == "住民異動"


def test_hyphenless_namespace_is_kept_for_the_answer(tmp_path: Path) -> None:
    request = read((DATA / "valid" / "put-hyphenless-namespace.xml").read_bytes(), tmp_path)
    assert request.namespace == JX_HYPHENLESS


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_requests_are_refused_and_leave_no_file(path: Path, tmp_path: Path) -> None:
    with pytest.raises(MalformedMessage):
        read(path.read_bytes(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_document_over_the_limit_is_refused_while_streaming(tmp_path: Path) -> None:
    body = (DATA / "valid" / "put-2004.xml").read_bytes().replace(
        b"44GT44KT44Gr44Gh44Gv44CBSljmiYvpoIY=", base64.b64encode(b"x" * 5000))
    with pytest.raises(MessageTooLarge):
        read(body, tmp_path, chunk=512, limit=4096)
    assert list(tmp_path.iterdir()) == []


def test_large_document_text_beyond_libxml2_node_limit(tmp_path: Path) -> None:
    # 12 MiB of base64 in one text node: more than libxml2's 10 MB limit for a tree node.
    payload = bytes(range(256)) * (9 * 4096)
    body = (DATA / "valid" / "put-2004.xml").read_bytes().replace(
        b"44GT44KT44Gr44Gh44Gv44CBSljmiYvpoIY=", base64.b64encode(payload))
    request = read(body, tmp_path, chunk=65536, limit=1 << 30)
    assert request.spool is not None and request.spool.size == len(payload)
    assert request.spool.sha256 == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize(("action", "op"), [
    (f'"{JX}/PutDocument"', "PutDocument"),
    (f"{JX}/GetDocument", "GetDocument"),
    (f'"{JX_HYPHENLESS}/ConfirmDocument"', "ConfirmDocument"),
    ('"urn:other/GetDocument"', None),
    (f'"{JX}/DeleteDocument"', None),
])
def test_soap_action(action: str, op: str | None) -> None:
    assert operation_of_action(action) == op


def test_get_document_answer_splits_around_the_data(tmp_path: Path) -> None:
    header = MessageHeader(sender="1310001", to="DC", message_id="h", timestamp="t", format_type="CSV")
    answer = header.answer(gateway="gw", format_type="XML", document_type="kaigo")
    before, after = split_at_data(JX, answer, True, "doc-1#data-x#", {"senderId": "DC", "receiverId": "1310001"})
    root = etree.fromstring(before + base64.b64encode(b"abc") + after)
    ns = {"jx": JX, "s": "http://schemas.xmlsoap.org/soap/envelope/"}
    assert root.findtext(".//jx:GetDocumentResponse/jx:data", namespaces=ns) == "YWJj"
    assert root.findtext(".//jx:GetDocumentResponse/jx:messageId", namespaces=ns) == "doc-1#data-x#"
    assert root.findtext(".//jx:MessageHeader/jx:To", namespaces=ns) == "1310001"
    assert root.findtext(".//jx:MessageHeader/jx:OptionalDocumentType", namespaces=ns) == "kaigo"


def test_2004_callers_get_no_2007_header_fields() -> None:
    answer = MessageHeader(sender="a", to="b").answer(gateway="gw")
    body = response_envelope(JX, "PutDocument", answer, [("PutDocumentResult", "true")])
    assert b"Optional" not in body
    root = etree.fromstring(body)
    assert root.findtext(f".//{{{JX}}}PutDocumentResult") == "true"
    assert root.findtext(f".//{{{JX}}}From") == "b"


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_a_small_document_stays_in_memory_and_a_larger_one_spills_to_its_file(tmp_path: Path, sealed: bool) -> None:
    from gateway.jx.wire import SpoolWriter

    small = SpoolWriter(tmp_path, limit=1 << 20, memory=100, sealed=sealed)
    for piece in (b"a" * 60, b"b" * 40):
        small.write(piece)
    assert small.in_memory
    spool = small.finish()
    assert spool.data == b"a" * 60 + b"b" * 40 and spool.sha256 == hashlib.sha256(spool.data).hexdigest()
    assert list(tmp_path.iterdir()) == [], "no file for a document held in memory"
    assert b"".join(spool.chunks(7)) == spool.data
    spool.discard()

    big = SpoolWriter(tmp_path, limit=1 << 20, memory=100, sealed=sealed)
    big.write(b"a" * 60)
    big.write(b"b" * 41)  # one byte beyond: what was held goes into the file with it
    assert not big.in_memory
    spilled = big.finish()
    assert spilled.data is None and spilled.size == 101
    assert (spilled.path.read_bytes() == b"a" * 60 + b"b" * 41) is not sealed, "sealed on disk when encrypting"
    assert b"".join(spilled.chunks(16)) == b"a" * 60 + b"b" * 41
    spilled.discard()
    assert list(tmp_path.iterdir()) == []

    over = SpoolWriter(tmp_path, limit=50, memory=100)
    with pytest.raises(MessageTooLarge):
        over.write(b"x" * 51)  # the limit holds in memory too
    over.abort()
