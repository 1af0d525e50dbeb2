"""The JX server at /jx against a real in-process gateway: zeep and raw requests, leases, mailboxes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lxml import etree
from sqlalchemy import create_engine

from gateway.logs.tables import LogFilter, read
from gateway.ns import JX, JX_HYPHENLESS
from routing.config import parse_config

from .conftest import GatewayFactory, message, soap11_headers, soap12_headers
from .jxhelp import NS, action, call, confirm, get, header, put, put_envelope, zeep_service

DATA = Path(__file__).parent / "data" / "jx"


def jx_config(tmp_path: Path, **jx: Any) -> dict[str, Any]:
    return {"gateway": {"name": "dc-jx", "data_dir": str(tmp_path / "var"), "jx": jx},
            "endpoints": {"cityhall-a": {"mailbox": "1310001"}}}


async def test_zeep_put_get_confirm(gateway: GatewayFactory, tmp_path: Path) -> None:
    url = await gateway(jx_config(tmp_path))
    svc = zeep_service(url)
    put_result = await asyncio.to_thread(
        svc.PutDocument, messageId="zeep-1", data=b"\x00binary\xff", senderId="DC", receiverId="1310001",
        formatType="BIN", documentType="tax", compressType="gzip", _soapheaders=header("DC"))
    assert put_result.body.PutDocumentResult is True
    got = await asyncio.to_thread(svc.GetDocument, receiverId="1310001", _soapheaders=header())
    body = got.body
    assert body.GetDocumentResult is True
    assert (body.messageId, body.data, body.senderId, body.receiverId) == ("zeep-1", b"\x00binary\xff", "DC", "1310001")
    assert (body.formatType, body.documentType, body.compressType) == ("BIN", "tax", "gzip")
    assert got.header.MessageHeader.To == "1310001"
    done = await asyncio.to_thread(svc.ConfirmDocument, messageId="zeep-1", senderId="DC", receiverId="1310001",
                                   _soapheaders=header())
    assert done.body.ConfirmDocumentResult is True
    again = await asyncio.to_thread(svc.ConfirmDocument, messageId="zeep-1", senderId="DC", receiverId="1310001",
                                    _soapheaders=header())
    assert again.body.ConfirmDocumentResult is False
    empty = await asyncio.to_thread(svc.GetDocument, receiverId="1310001", _soapheaders=header())
    assert empty.body.GetDocumentResult is False and not empty.body.messageId and not empty.body.data


async def test_zeep_2004_client_works_too(gateway: GatewayFactory, tmp_path: Path) -> None:
    url = await gateway(jx_config(tmp_path))
    svc = zeep_service(url, "2004")
    await asyncio.to_thread(svc.PutDocument, messageId="z4", data=b"abc", senderId="DC", receiverId="9",
                            formatType="", documentType="", compressType="", _soapheaders=header("DC"))
    got = await asyncio.to_thread(svc.GetDocument, receiverId="9", _soapheaders=header("9"))
    assert got.body.data == b"abc"


@pytest.mark.parametrize("name", ["put-2004", "put-2007-wrapped-data", "put-hyphenless-namespace", "put-shift-jis"])
async def test_sample_puts_are_stored_and_handed_out(name: str, gateway: GatewayFactory, tmp_path: Path,
                                                     http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    body = (DATA / "valid" / f"{name}.xml").read_bytes()
    answer = await call(http, url, "PutDocument", body)
    assert answer.status == 200 and answer.result is True
    namespace = JX_HYPHENLESS if "hyphenless" in name else JX
    assert answer.root.find(f".//{{{namespace}}}PutDocumentResult") is not None
    got = await get(http, url)
    assert got.result is True and got.data == "こんにちは、JX手順".encode()


async def test_put_is_idempotent_on_message_id(gateway: GatewayFactory, tmp_path: Path,
                                               http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    assert (await put(http, url, "same", b"one")).result is True
    assert (await put(http, url, "same", b"one")).result is True
    clash = await put(http, url, "same", b"two")
    assert clash.status == 500 and clash.fault_code == "DuplicateMessageId"
    assert clash.text(".//faultcode") == "soap:Client"
    first = await get(http, url)
    assert first.data == b"one"
    assert (await get(http, url)).result is False  # stored once


async def test_confirm_unknown_id_is_a_client_fault(gateway: GatewayFactory, tmp_path: Path,
                                                    http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    answer = await confirm(http, url, "never-stored")
    assert answer.status == 500 and answer.fault_code == "UnknownDocument"
    await put(http, url, "for-a", b"x", receiver="A")
    wrong = await confirm(http, url, "for-a", receiver="B")  # another receiver cannot confirm it
    assert wrong.fault_code == "UnknownDocument"


async def test_oldest_first_and_2007_filters(gateway: GatewayFactory, tmp_path: Path,
                                             http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    await put(http, url, "d1", b"1", format_type="CSV", document_type="juki")
    await put(http, url, "d2", b"2", format_type="XML", document_type="kaigo")
    await put(http, url, "d3", b"3", format_type="XML", document_type="zei")
    hdr = {"From": "1310001", "To": "DC", "MessageId": "h", "Timestamp": "t",
           "OptionalFormatType": "XML", "OptionalDocumentType": "zei"}
    only_zei = await get(http, url, header=hdr)
    assert only_zei.text(".//jx:messageId") == "d3"
    assert only_zei.text(".//jx:MessageHeader/jx:OptionalDocumentType") == "zei"
    oldest = await get(http, url)
    assert oldest.text(".//jx:messageId") == "d1"
    assert oldest.root.find(".//jx:OptionalFormatType", NS) is None  # a 2004 caller gets 2004 headers


async def test_lease_keeps_pollers_apart_and_expires(gateway: GatewayFactory, tmp_path: Path,
                                                     http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path, lease_seconds=3.0))  # longer than four polls on a busy machine
    for n in range(3):
        await put(http, url, f"L{n}", b"x")
    answers = await asyncio.gather(*(get(http, url) for _ in range(4)))
    ids = [a.text(".//jx:messageId") for a in answers if a.result]
    assert sorted(i or "" for i in ids) == ["L0", "L1", "L2"]  # three documents, three pollers, none twice
    await asyncio.sleep(3.1)
    again = await get(http, url)
    assert again.text(".//jx:messageId") == "L0"  # unconfirmed: handed out again after the lease


async def test_dead_letter_after_max_deliveries_never_blocks(gateway: GatewayFactory, tmp_path: Path,
                                                             http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path, lease_seconds=0.2, max_deliveries=2))
    await put(http, url, "poison", b"p")
    await put(http, url, "good", b"g")
    seen = []
    for _ in range(2):
        first = await get(http, url)
        seen.append(first.text(".//jx:messageId"))
        await asyncio.sleep(0.25)
    assert seen == ["poison", "poison"]
    nxt = await get(http, url)
    assert nxt.text(".//jx:messageId") == "good"  # poison is parked after 2 hand-outs
    assert (await confirm(http, url, "good")).result is True
    await asyncio.sleep(0.25)
    assert (await get(http, url)).result is False


@pytest.mark.parametrize("path", sorted((DATA / "invalid").glob("*.xml")), ids=lambda p: p.stem)
async def test_invalid_requests_get_soap11_faults_with_http_500(path: Path, gateway: GatewayFactory,
                                                                tmp_path: Path, http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    answer = await call(http, url, "PutDocument", path.read_bytes())
    assert answer.status == 500
    assert answer.text(".//faultcode") == "soap:Client"
    assert answer.fault_code == "MalformedMessage"
    assert list((tmp_path / "var" / "jx" / "blobs").iterdir()) == []
    assert [p for p in (tmp_path / "var" / "jx" / "tmp").rglob("*") if p.is_file()] == []


async def test_soap_action_must_match_the_operation(gateway: GatewayFactory, tmp_path: Path,
                                                    http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    async with http.post(f"{url}/jx", data=put_envelope("a", b"x"), headers=action("GetDocument")) as resp:
        text = await resp.text()
        assert resp.status == 500 and 'code="MalformedMessage"' in text
    async with http.post(f"{url}/jx", data=put_envelope("a", b"x"), headers=soap12_headers()) as resp:
        assert resp.status == 500 and "soap:Client" in await resp.text()


async def test_wsdl_names_this_gateway(gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    for query, optional in (("wsdl", True), ("wsdl=2004", False)):
        async with http.get(f"{url}/jx?{query}") as resp:
            assert resp.status == 200
            root = etree.fromstring(await resp.read())
        address = root.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
        assert address is not None and address.get("location") == f"{url}/jx"
        assert (b"OptionalFormatType" in etree.tostring(root)) is optional


async def test_every_operation_is_logged_put_with_its_document(gateway: GatewayFactory, tmp_path: Path,
                                                               http: aiohttp.ClientSession) -> None:
    config = jx_config(tmp_path)
    url = await gateway(config)
    data = b"logged document"
    await put(http, url, "log-1", data)
    engine = create_engine(config["gateway"]["db"])
    try:
        # No flush: the PutDocument record committed with the document itself.
        records = list(read(engine, LogFilter(kind="jx")))
        assert [(r.message_id, r.sha256, r.to_ap) for r in records] == [
            ("log-1", hashlib.sha256(data).hexdigest(), "1310001")]
        await get(http, url)
        await confirm(http, url, "log-1")
        await get(http, url)
        await confirm(http, url, "nope")
        await asyncio.sleep(0.5)  # the empty poll and the fault go through the group-commit writer
        records = list(read(engine, LogFilter(kind="jx")))
    finally:
        engine.dispose()
    endpoints = [(r.endpoint, r.status, r.message_id) for r in records]
    assert ("jx:GetDocument", "ok", "log-1") in endpoints
    assert ("jx:ConfirmDocument", "ok", "log-1") in endpoints
    assert ("jx:ConfirmDocument", "fault", "nope") in endpoints
    assert sum(1 for e in endpoints if e[0] == "jx:GetDocument") == 2


async def test_message_to_a_mailbox_endpoint_is_stored_and_accepted(gateway: GatewayFactory, tmp_path: Path,
                                                                    http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    for headers, name in ((soap11_headers(), "valid/soap11-routing-header.xml"),
                          (soap12_headers(), "valid/soap12-routing-header.xml")):
        body = message(name).replace(b"<r:To>demo</r:To>", b"<r:To>cityhall-a</r:To>")
        if b"msg-0001" in body:
            body = body.replace(b"msg-0001", name.encode())
        async with http.post(f"{url}/soap", data=body, headers=headers) as resp:
            assert resp.status == 200
            answer = etree.fromstring(await resp.read())
            message_id = resp.headers["X-Message-Id"]
        accepted = answer.find(".//{urn:bmrgw:routing:1}Accepted")
        assert accepted is not None and accepted.get("messageId") == message_id
        assert answer.tag.startswith("{" + ("http://schemas.xmlsoap.org" if "soap11" in name else "http://www.w3.org"))
        got = await get(http, url)
        assert got.result is True and got.data == body  # byte for byte
        assert got.text(".//jx:formatType") == "SOAP"
        assert got.text(".//jx:documentType") == headers["Content-Type"]
        assert got.text(".//jx:messageId") == message_id
        assert (await confirm(http, url, message_id, sender=got.text(".//jx:senderId") or "")).result is True


async def test_large_mailbox_message_streams_into_the_store(gateway: GatewayFactory, tmp_path: Path,
                                                            http: aiohttp.ClientSession) -> None:
    config = jx_config(tmp_path)
    config["gateway"]["max_message_bytes"] = 8 * 1024 * 1024
    url = await gateway(config)
    filler = b"<d:x>" + b"y" * (3 * 1024 * 1024) + b"</d:x>"
    body = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>cityhall-a</r:To>")
    body = body.replace(b"</soap:Body>", filler + b"</soap:Body>")

    async def chunks() -> Any:
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    async with http.post(f"{url}/soap", data=chunks(), headers=soap11_headers()) as resp:
        assert resp.status == 200
    got = await get(http, url)
    assert hashlib.sha256(got.data).hexdigest() == hashlib.sha256(body).hexdigest()


def test_mailbox_config_is_validated() -> None:
    config = parse_config({"endpoints": {"city": {"mailbox": "1310001"}},
                           "gateway": {"jx": {"lease_seconds": 60, "max_deliveries": 3, "retention_days": 7,
                                              "blobs": "database"}}})
    assert config.gateway.jx.lease_seconds == 60.0 and config.gateway.jx.blobs == "database"
    from gateway.errors import ConfigError
    for bad in ({"endpoints": {"city": {"mailbox": "has blank"}}},
                {"endpoints": {"city": {"mailbox": "1", "url": "http://127.0.0.1/"}}},
                {"gateway": {"jx": {"blobs": "s3"}}},
                {"gateway": {"jx": {"lease": 5}}}):
        with pytest.raises(ConfigError):
            parse_config(bad)



async def test_postgresql_keeps_document_bytes_in_the_database(pg_url: str, gateway: GatewayFactory,
                                                              tmp_path: Path, http: aiohttp.ClientSession) -> None:
    config = jx_config(tmp_path)
    config["gateway"]["db"] = pg_url
    url = await gateway(config)
    big = os.urandom(3 * 1024 * 1024 + 5)  # several 1 MiB parts
    assert (await put(http, url, "pg-big", big)).result is True
    assert (await put(http, url, "pg-big", big)).result is True
    assert (await put(http, url, "pg-big", b"other")).fault_code == "DuplicateMessageId"
    got = await get(http, url)
    assert got.data == big
    assert (await confirm(http, url, "pg-big")).result is True
    assert not list((tmp_path / "var" / "jx" / "blobs").iterdir())  # nothing on the local disk
    engine = create_engine(pg_url)
    try:
        with engine.connect() as c:
            parts = c.exec_driver_sql("SELECT count(*) FROM jx_blob").scalar()
    finally:
        engine.dispose()
    assert parts == 4


async def test_a_put_broken_off_mid_body_leaves_nothing(gateway: GatewayFactory, tmp_path: Path,
                                                        http: aiohttp.ClientSession) -> None:
    url = await gateway(jx_config(tmp_path))
    body = put_envelope("cut-off", os.urandom(600_000))
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /jx HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml; charset=utf-8\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)
    assert (await get(http, url)).result is False
    assert [p for p in (tmp_path / "var" / "jx").rglob("*") if p.is_file()] == []


async def test_retention_deletes_old_confirmed_documents_at_start(gateway: GatewayFactory, tmp_path: Path,
                                                                 http: aiohttp.ClientSession) -> None:
    config = jx_config(tmp_path, retention_days=2, blobs="files")  # small documents would be rows with auto
    config["gateway"]["db"] = f"sqlite:///{tmp_path}/retained.db"
    url = await gateway(config)
    for message_id in ("old", "recent", "unconfirmed"):
        await put(http, url, message_id, message_id.encode())
    for _ in range(2):
        got = await get(http, url)
        await confirm(http, url, got.text(".//jx:messageId") or "")
    engine = create_engine(config["gateway"]["db"])
    try:
        with engine.begin() as c:
            c.exec_driver_sql("UPDATE jx_document SET confirmed_ms = confirmed_ms - 3 * 86400000 "
                              "WHERE message_id = 'old'")
        await gateway(config)  # a second start on the same store runs retention at once
        await asyncio.sleep(0.5)
        with engine.connect() as c:
            left = sorted(row[0] for row in c.exec_driver_sql("SELECT message_id FROM jx_document"))
    finally:
        engine.dispose()
    assert left == ["recent", "unconfirmed"]
    assert len(list((tmp_path / "var" / "jx" / "blobs").iterdir())) == 2


async def test_metrics_show_mailbox_depth(gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.jx._GAUGE_INTERVAL", 0.1)
    url = await gateway(jx_config(tmp_path))
    for n in range(3):
        await put(http, url, f"m{n}", b"x")
    await get(http, url)
    await asyncio.sleep(0.4)
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    assert 'bmrgw_jx_documents{state="ready"} 2.0' in text
    assert 'bmrgw_jx_documents{state="leased"} 1.0' in text
    assert 'bmrgw_jx_documents{state="dead"} 0.0' in text
    oldest = [line for line in text.splitlines() if line.startswith("bmrgw_jx_oldest_waiting_seconds ")]
    assert oldest and 0 < float(oldest[0].split()[1]) < 60


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_sqlite_keeps_documents_up_to_64_kib_in_rows_and_larger_ones_in_files(
        gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession, encrypted: bool) -> None:
    from gateway.crypto import write_master_key
    from gateway.jx.engine import INLINE_BYTES

    config = jx_config(tmp_path)  # blobs: auto
    config["gateway"]["db"] = f"sqlite:///{tmp_path}/inline.db"
    if encrypted:
        write_master_key(tmp_path / "master.key")
        config["gateway"]["encryption"] = {"master_key": str(tmp_path / "master.key")}
    url = await gateway(config)
    sizes = {"row": INLINE_BYTES, "file": INLINE_BYTES + 1, "small": 1}
    sent = {message_id: os.urandom(size) for message_id, size in sizes.items()}
    for message_id, data in sent.items():
        assert (await put(http, url, message_id, data)).result is True
    engine = create_engine(config["gateway"]["db"])
    try:
        with engine.connect() as c:
            rows: dict[str, str | None] = dict(c.exec_driver_sql("SELECT message_id, blob FROM jx_document").all())
            stored: dict[str, bytes] = dict(c.exec_driver_sql("SELECT d.message_id, b.data FROM jx_document d JOIN jx_blob b "
                                            "ON b.doc_seq = d.seq").all())
    finally:
        engine.dispose()
    assert rows["row"] is None and rows["small"] is None and rows["file"] is not None
    files = list((tmp_path / "var" / "jx" / "blobs").iterdir())
    assert [p.name for p in files] == [rows["file"]]
    assert (bytes(stored["row"]) == sent["row"]) is not encrypted, "sealed in its row when encrypting"
    assert (files[0].read_bytes() == sent["file"]) is not encrypted
    got = {}
    for _ in sent:
        answer = await get(http, url)
        message_id = answer.text(".//jx:messageId") or ""
        got[message_id] = answer.data
        assert (await confirm(http, url, message_id)).result is True
    assert got == sent
    assert [p for p in (tmp_path / "var" / "jx" / "tmp").rglob("*") if p.is_file()] == [], "no spool left"
