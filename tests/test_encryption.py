"""Content at rest sealed per organisation, end to end through a real in-process gateway
(SPEC.md "Data at rest, per organisation"): nothing of a document's content is in the database
files or under data_dir, Get returns the exact bytes, and tampered content is refused, never served."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import create_engine, text

from gateway.cli import main
from gateway.crypto.seal import CHUNK, HEADER_BYTES, TAG_BYTES
from gateway.logs.tables import LogFilter, read

from .conftest import GatewayFactory, message, soap11_headers
from .jxhelp import confirm, get, put


def marker() -> bytes:
    return f"MARKER-{uuid.uuid4().hex}-SECRET".encode()


def forms(mark: bytes) -> list[bytes]:
    """The marker raw and in base64 at each of the three alignments (inner quartets only)."""
    out = [mark]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + mark)
        out.append(encoded[4:-4])
    return out


def found_in(mark: bytes, *roots: Path) -> list[str]:
    """Files under ``roots`` holding the marker in any of its forms."""
    hits = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if any(form in data for form in forms(mark)):
                hits.append(str(path.relative_to(root.parent)))
    return hits


@pytest.fixture
def master_key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "master.key"
    assert main(["keys", "init", str(path)]) == 0
    return path


def documents(mark: bytes) -> dict[str, bytes]:
    big = os.urandom(700_000) + mark + b"z" * 700_000  # > 1 MiB, marker in the middle
    return {"small": b"resident list " + mark, "big": big, "chunk-edge": (mark * (CHUNK // len(mark) + 1))[:CHUNK]}


async def round_trip(http: aiohttp.ClientSession, url: str, docs: dict[str, bytes], mark: bytes) -> None:
    for name, data in docs.items():
        assert (await put(http, url, name, data, receiver="1310001")).result is True
    envelope = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>cityhall</r:To>")
    envelope = envelope.replace(b"</soap:Body>", b"<m>" + mark + b"</m></soap:Body>")
    async with http.post(f"{url}/soap", data=envelope, headers=soap11_headers()) as resp:
        assert resp.status == 200
        mailbox_id = resp.headers["X-Message-Id"]
    got = {}
    for _ in range(len(docs)):
        answer = await get(http, url, "1310001")
        got[answer.text(".//jx:messageId")] = answer.data
    assert got == docs, "Get returns the exact bytes"
    answer = await get(http, url, "1320002")
    assert answer.text(".//jx:messageId") == mailbox_id and answer.data == envelope


def config(tmp_path: Path, key: Path | None, **gateway: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"name": "gw", "db": f"sqlite:///{tmp_path}/db/bmrgw.db",
                               "data_dir": str(tmp_path / "var"), **gateway}
    if key is not None:
        section["encryption"] = {"master_key": str(key)}
    return {"gateway": section, "endpoints": {"cityhall": {"mailbox": "1320002"}}}


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain-control"])
@pytest.mark.parametrize("blobs", ["files", "database"])
async def test_no_content_at_rest_on_sqlite(gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession,
                                            master_key: Path, encrypted: bool, blobs: str) -> None:
    mark = marker()
    url = await gateway(config(tmp_path, master_key if encrypted else None, jx={"blobs": blobs}))
    await round_trip(http, url, documents(mark), mark)
    hits = found_in(mark, tmp_path / "db", tmp_path / "var")
    if encrypted:
        assert hits == []
    else:
        assert hits, "the scan finds the marker when nothing is sealed (so it would see a leak)"


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain-control"])
async def test_no_content_in_postgresql_rows(pg_url: str, gateway: GatewayFactory, tmp_path: Path,
                                             http: aiohttp.ClientSession, master_key: Path, encrypted: bool) -> None:
    mark = marker()
    url = await gateway(config(tmp_path, master_key if encrypted else None, db=pg_url))
    await round_trip(http, url, documents(mark), mark)
    engine = create_engine(pg_url)
    try:
        with engine.connect() as c:
            stored = b"".join(bytes(row[0]) for row in c.execute(text("SELECT data FROM jx_blob ORDER BY doc_seq, part")))
            logged = c.execute(text("SELECT * FROM exchange_log")).all()
    finally:
        engine.dispose()
    leaked = [form for form in forms(mark) if form in stored or form.decode() in repr(logged)]
    assert leaked == [] if encrypted else leaked


async def test_the_log_keeps_metadata_only(gateway: GatewayFactory, tmp_path: Path,
                                           http: aiohttp.ClientSession, master_key: Path) -> None:
    mark = marker()
    url = await gateway(config(tmp_path, master_key))
    await round_trip(http, url, documents(mark), mark)
    engine = create_engine(f"sqlite:///{tmp_path}/db/bmrgw.db")
    try:
        records = [r.to_json() for r in read(engine, LogFilter(kind="jx"))]
    finally:
        engine.dispose()
    assert records and all(mark.decode() not in repr(r) for r in records)
    assert {r["sha256"] for r in records if r["endpoint"] == "jx:PutDocument"}


def test_keys_init_writes_a_private_key_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new" / "master.key"
    old = os.umask(0o022)
    try:
        assert main(["keys", "init", str(path)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(base64.b64decode(path.read_text().strip())) == 32
    before = path.read_bytes()
    assert main(["keys", "init", str(path)]) == 1
    assert "never overwritten" in capsys.readouterr().err
    assert path.read_bytes() == before


# -- tamper on disk -----------------------------------------------------------------


def blob_file(tmp_path: Path) -> Path:
    [path] = list((tmp_path / "var" / "jx" / "blobs").glob("*.doc"))
    return path


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def swap_first_chunks(path: Path) -> None:
    data = path.read_bytes()
    whole = CHUNK + TAG_BYTES
    a, b = data[HEADER_BYTES:HEADER_BYTES + whole], data[HEADER_BYTES + whole:HEADER_BYTES + 2 * whole]
    path.write_bytes(data[:HEADER_BYTES] + b + a + data[HEADER_BYTES + 2 * whole:])


def move_to_another_receiver(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/db/bmrgw.db")
    try:
        with engine.begin() as c:
            c.execute(text("UPDATE jx_document SET receiver_id = '1320002' WHERE message_id = 'doc-t'"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("tamper", ["flipped-byte", "swapped-chunks", "moved-receiver"])
async def test_tampered_documents_are_refused_as_corrupt_and_logged(
        gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession, master_key: Path, tamper: str) -> None:
    url = await gateway(config(tmp_path, master_key, jx={"blobs": "files"}))
    data = os.urandom(3 * CHUNK)
    assert (await put(http, url, "doc-t", data, receiver="1310001")).result is True
    if tamper == "flipped-byte":
        flip(blob_file(tmp_path), HEADER_BYTES + CHUNK + 40)
    elif tamper == "swapped-chunks":
        swap_first_chunks(blob_file(tmp_path))
    else:  # to a receiver with a data key of its own: the content is not sealed under it
        assert (await put(http, url, "doc-other", b"theirs", receiver="1320002")).result is True
        move_to_another_receiver(tmp_path)
    answer = await get(http, url, "1320002" if tamper == "moved-receiver" else "1310001")
    assert answer.status == 500 and answer.fault_code == "DocumentCorrupt"
    assert data not in answer.root.xpath("string()").encode()
    engine = create_engine(f"sqlite:///{tmp_path}/db/bmrgw.db")
    try:
        for _ in range(50):
            faults = [r for r in read(engine, LogFilter(kind="jx")) if r.fault_code == "DocumentCorrupt"]
            if faults:
                break
            await asyncio.sleep(0.05)
    finally:
        engine.dispose()
    assert faults and faults[0].endpoint == "jx:GetDocument" and faults[0].message_id == "doc-t"


async def test_documents_stored_before_encryption_are_still_served(gateway: GatewayFactory, tmp_path: Path,
                                                                   http: aiohttp.ClientSession, master_key: Path) -> None:
    url = await gateway(config(tmp_path, None))
    assert (await put(http, url, "old", b"stored before encryption", receiver="1310001")).result is True
    url = await gateway(config(tmp_path, master_key))
    assert (await put(http, url, "new", b"stored sealed", receiver="1310001")).result is True
    got = [(await get(http, url, "1310001")).data for _ in range(2)]
    assert got == [b"stored before encryption", b"stored sealed"]
    assert (await confirm(http, url, "old", receiver="1310001")).result is True


# -- staged file parts (bmrgw receive) ------------------------------------------------


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plain-control"])
@pytest.mark.parametrize("zipped", [False, True], ids=["raw", "zip"])
async def test_staged_file_parts_hold_no_content(gateway: GatewayFactory, tmp_path: Path, master_key: Path,
                                                 encrypted: bool, zipped: bool) -> None:
    from attachments.staging import STAGING_DIR
    from attachments.transfer.receiver import ReceiveOptions, make_receiver_app
    from attachments.transfer.sender import SendOptions, send_file
    from gateway.crypto import KeyRing, MasterKey, Vault
    from gateway.store import Store

    from .conftest import start_app

    keys = Store(f"sqlite:///{tmp_path}/receiver-keys.db")
    vault = Vault(KeyRing(keys.engine, [MasterKey.load(master_key)])) if encrypted else None
    inbox = tmp_path / "inbox"
    runner, receiver = await start_app(make_receiver_app(ReceiveOptions(
        directory=inbox, max_file_bytes=16 << 20, vault=vault, org="files")))
    try:
        url = await gateway(config(tmp_path, None) | {"endpoints": {"files": {"url": f"{receiver}/files"}}})
        mark = marker()
        source = tmp_path / "out" / "juki.csv"
        source.parent.mkdir()
        # Incompressible, so that even zipped it takes several parts; deflate keeps the first marker literal.
        source.write_bytes(b"".join(os.urandom(1000) + mark for _ in range(200)))
        options = SendOptions(path=source, to="files", gateway=url, part_size=64 * 1024, zip=zipped)
        first = await send_file(SendOptions(**{**options.__dict__, "only_parts": frozenset({1, 2})}))
        assert first.published is None and first.sent == 2
        # Zipped, the marker is Huffman-coded: the zip's own local header is then the witness.
        hits = found_in(mark, inbox / STAGING_DIR) if not zipped else \
            [str(p) for p in (inbox / STAGING_DIR).rglob("*") if p.is_file() and b"PK\x03\x04" in p.read_bytes()]
        assert (hits == []) if encrypted else hits, "the control run proves the scan sees staged content"
        done = await send_file(options)
        assert done.published == "juki.csv"
        assert (inbox / "juki.csv").read_bytes() == source.read_bytes()
    finally:
        await runner.cleanup()
        keys.close()


async def test_a_tampered_staged_part_is_refused_and_the_transfer_starts_again(
        gateway: GatewayFactory, tmp_path: Path, master_key: Path) -> None:
    from attachments.staging import STAGING_DIR
    from attachments.transfer.receiver import ReceiveOptions, make_receiver_app
    from attachments.transfer.sender import SendOptions, send_file
    from gateway.crypto import KeyRing, MasterKey, Vault
    from gateway.errors import SendError
    from gateway.store import Store

    from .conftest import start_app

    keys = Store(f"sqlite:///{tmp_path}/receiver-keys.db")
    inbox = tmp_path / "inbox"
    runner, receiver = await start_app(make_receiver_app(ReceiveOptions(
        directory=inbox, max_file_bytes=16 << 20, vault=Vault(KeyRing(keys.engine, [MasterKey.load(master_key)])),
        org="files")))
    try:
        url = await gateway(config(tmp_path, None) | {"endpoints": {"files": {"url": f"{receiver}/files"}}})
        source = tmp_path / "report.csv"
        source.write_bytes(os.urandom(200_000))
        options = SendOptions(path=source, to="files", gateway=url, part_size=64 * 1024)
        await send_file(SendOptions(**{**options.__dict__, "only_parts": frozenset({1, 2, 3})}))
        [sealed] = [p for p in (inbox / STAGING_DIR).rglob("sealed/2")]
        flip(sealed, HEADER_BYTES + 10)
        with pytest.raises(SendError, match="DocumentCorrupt"):
            await send_file(options)
        assert not (inbox / "report.csv").exists(), "nothing of a tampered transfer is published"
        done = await send_file(options)
        assert done.published == "report.csv" and (inbox / "report.csv").read_bytes() == source.read_bytes()
    finally:
        await runner.cleanup()
        keys.close()


@pytest.mark.parametrize("size", [0, 10, CHUNK, 3 * CHUNK + 7])
def test_a_sealed_spool_holds_no_plaintext_even_while_uploading(tmp_path: Path, size: int) -> None:
    from gateway.jx.wire import SpoolWriter

    mark = marker()
    data = (mark * (size // len(mark) + 1))[:size]
    writer = SpoolWriter(tmp_path / "tmp", limit=1 << 30, sealed=True)
    writer.write(data[:size // 2])
    assert writer._file is not None
    writer._file.flush()
    assert found_in(mark, tmp_path / "tmp") == [], "mid-upload"
    writer.write(data[size // 2:])
    spool = writer.finish()
    assert found_in(mark, tmp_path / "tmp") == []
    assert b"".join(spool.chunks(100_000)) == data and spool.size == size
    plain = SpoolWriter(tmp_path / "plain", limit=1 << 30)
    plain.write(data)
    assert size < len(mark) or found_in(mark, tmp_path / "plain"), "the scan sees an unsealed spool"
    plain.abort()
