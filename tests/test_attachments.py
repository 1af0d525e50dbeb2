"""attachments/: MIME multipart/related, zip stream, parts manifest, reassembly, file names (pure parts)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import zipfile
from pathlib import Path

import pytest
from lxml import etree

from attachments.mime import (
    MultipartReader,
    PartData,
    PartStart,
    RootExtractor,
    closing,
    new_boundary,
    parse_related,
    part_head,
    related_content_type,
)
from attachments.names import safe_file_name
from attachments.parts import FileInfo, Manifest, file_id_for, plan
from attachments.staging import STAGING_DIR, Staging
from attachments.zipstream import ZipLimits, ZipReader, ZipWriter
from gateway.errors import ChecksumMismatch, MalformedMessage, MessageTooLarge, UnsafeFileName, ZipBomb
from gateway.ns import SoapVersion
from schemas import read

MIME = Path(__file__).parent / "data" / "mime"


def mime_file(path: Path) -> tuple[str, bytes]:
    """(Content-Type, body) of a test message in tests/data/mime."""
    head, body = path.read_bytes().split(b"\r\n\r\n", 1)
    return head.decode().split(":", 1)[1].strip(), body


def chunked(data: bytes, seed: int, most: int = 300) -> list[bytes]:
    rnd = random.Random(seed)
    out, at = [], 0
    while at < len(data):
        size = rnd.randint(1, most)
        out.append(data[at:at + size])
        at += size
    return out


def read_parts(content_type: str, body: bytes, seed: int) -> list[tuple[dict[str, str], bytes]]:
    related = parse_related(content_type)
    assert related is not None
    reader = MultipartReader(related.boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    # Odd seeds: tiny chunks (the buffered path); even: big ones (the pass-through path too).
    for chunk in chunked(body, seed, most=300 if seed % 2 else 3000):
        for event in reader.feed(chunk):
            if isinstance(event, PartStart):
                parts.append((dict(event.headers), b""))
            elif isinstance(event, PartData):
                parts[-1] = (parts[-1][0], parts[-1][1] + event.data)
    reader.close()
    return parts


# -- MIME ------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((MIME / "valid").iterdir()), ids=lambda p: p.name)
def test_valid_mime_files_read_the_same_in_any_chunking(path: Path) -> None:
    content_type, body = mime_file(path)
    whole = read_parts(content_type, body, seed=0)
    assert whole, "no parts read"
    for seed in range(1, 6):
        assert read_parts(content_type, body, seed) == whole
    # The standard library's MIME parser agrees on the parts' bodies.
    import email
    import email.message
    parsed = email.message_from_bytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    parts = parsed.get_payload()
    assert isinstance(parts, list)
    assert [p.get_payload(decode=True) or b"" for p in parts if isinstance(p, email.message.Message)] == [
        b for _, b in whole]


def test_attachment_bytes_survive_exactly() -> None:
    content_type, body = mime_file(MIME / "valid" / "mtom-soap11.mime")
    (root_headers, root), (att_headers, attachment) = read_parts(content_type, body, seed=7)
    assert root_headers["content-id"] == "<root@test>" and b"xop:Include" in root
    assert att_headers["content-id"] == "<att1@test>"
    assert attachment == bytes(range(256)) * 8 + b"\r\n--not-the-boundary\r\n" + "住民記録".encode()


@pytest.mark.parametrize("path", sorted((MIME / "invalid").iterdir()), ids=lambda p: p.name)
def test_invalid_mime_files_are_malformed_for_the_relay(path: Path) -> None:
    from gateway.parser import scan_head
    content_type, body = mime_file(path)
    with pytest.raises(MalformedMessage):
        related = parse_related(content_type)
        assert related is not None
        extractor = RootExtractor(related, max_root_bytes=1 << 20)
        root = b"".join(extractor.feed(chunk) for chunk in chunked(body, 3))
        extractor.finish()
        head = scan_head(root, routing_header="{urn:bmrgw:routing:1}Routing")
        if head.version is not related.soap_version:  # as the relay compares them
            raise MalformedMessage("versions disagree")


def test_root_part_is_bounded_by_the_envelope_limit() -> None:
    content_type, body = mime_file(MIME / "valid" / "swa-soap11.mime")
    related = parse_related(content_type)
    assert related is not None
    with pytest.raises(MessageTooLarge):
        RootExtractor(related, max_root_bytes=100).feed(body)


def test_writer_output_reads_back_and_announces_versions() -> None:
    boundary = new_boundary()
    body = (part_head(boundary, [("Content-Type", "text/xml"), ("Content-ID", "<r>")], first=True) + b"<e/>"
            + part_head(boundary, [("Content-ID", "<a>")]) + b"\r\n--" + closing(boundary))
    for version in SoapVersion:
        for mtom in (False, True):
            content_type = related_content_type(boundary, version=version, mtom=mtom, start="<r>", action="urn:a")
            related = parse_related(content_type)
            assert related is not None and related.soap_version is version and related.mtom is mtom
            assert related.start == "<r>" and related.boundary == boundary
    parts = read_parts(related_content_type(boundary, version=SoapVersion.V11, mtom=False, start="<r>"), body, 1)
    assert [b for _, b in parts] == [b"<e/>", b"\r\n--"]


def test_not_multipart_is_none_and_bad_boundaries_are_refused() -> None:
    assert parse_related("text/xml; charset=utf-8") is None
    for bad in ('boundary=""', 'boundary="' + "x" * 71 + '"', 'boundary="a\tb"'):
        with pytest.raises(MalformedMessage):
            parse_related(f'multipart/related; type="text/xml"; {bad}')


# -- zip -------------------------------------------------------------------------

def _zip(data: bytes, name: str = "f.bin", chunk: int = 65536) -> bytes:
    writer = ZipWriter(name, mtime=1_700_000_000)
    out = writer.start()
    for at in range(0, len(data), chunk):
        out += writer.write(data[at:at + chunk])
    return out + writer.finish()


def _unzip(blob: bytes, limits: ZipLimits, seed: int = 0) -> bytes:
    reader = ZipReader(limits)
    out = b"".join(b"".join(reader.feed(c)) for c in chunked(blob, seed, most=70000))
    reader.close()
    return out


@pytest.mark.parametrize("size", [0, 1, 65536, 3_000_001])
def test_zip_round_trip_and_standard_tools_agree(size: int, tmp_path: Path) -> None:
    data = (os.urandom(size // 3) + b"abc" * size)[:size]
    blob = _zip(data)
    assert _unzip(blob, ZipLimits(max_bytes=size)) == data
    assert zipfile.ZipFile(io.BytesIO(blob)).read("f.bin") == data
    (tmp_path / "a.zip").write_bytes(blob)
    assert subprocess.run(["unzip", "-tq", str(tmp_path / "a.zip")], capture_output=True).returncode == 0


def test_zips_written_by_other_tools_are_read(tmp_path: Path) -> None:
    data = os.urandom(100_000) + b"z" * 500_000
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", method) as archive:
            archive.writestr("x", data)
        assert _unzip(buffer.getvalue(), ZipLimits(max_bytes=len(data))) == data
    (tmp_path / "x").write_bytes(data)
    subprocess.run(["zip", "-q", "-X", "x.zip", "x"], cwd=tmp_path, check=True)
    assert _unzip((tmp_path / "x.zip").read_bytes(), ZipLimits(max_bytes=len(data))) == data


def test_zip_bomb_refused_by_ratio_before_it_inflates() -> None:
    bomb = _zip(b"\0" * (64 << 20), chunk=1 << 20)  # 64 MiB of zeros in ~64 KiB
    reader = ZipReader(ZipLimits(max_bytes=1 << 40, max_ratio=100))
    produced = 0
    with pytest.raises(ZipBomb, match="times"):
        for chunk in chunked(bomb, 1, most=4096):
            produced += sum(map(len, reader.feed(chunk)))
    assert produced <= 100 * len(bomb)


def test_zip_bomb_refused_at_the_declared_size_nothing_beyond() -> None:
    data = os.urandom(50_000)
    reader = ZipReader(ZipLimits(max_bytes=len(data) - 1))
    produced = 0
    with pytest.raises(ZipBomb, match="beyond"):
        produced += sum(map(len, reader.feed(_zip(data))))
    assert produced == 0 or produced < len(data)


def test_broken_zips_are_refused() -> None:
    data = os.urandom(10_000)
    blob = bytearray(_zip(data))
    with pytest.raises(MalformedMessage, match="truncated"):
        _unzip(bytes(blob[:len(blob) // 2]), ZipLimits(max_bytes=len(data)))
    with pytest.raises(MalformedMessage, match="not a zip"):
        _unzip(b"PK\x05\x06" + bytes(40), ZipLimits(max_bytes=10))
    blob[60] ^= 0xFF  # inside the deflate data
    with pytest.raises((ChecksumMismatch, MalformedMessage, Exception)):
        _unzip(bytes(blob), ZipLimits(max_bytes=len(data)))
    two = io.BytesIO()
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a", b"1")
        archive.writestr("b", b"2")
    with pytest.raises(MalformedMessage, match="more than one"):
        _unzip(two.getvalue(), ZipLimits(max_bytes=10))


# -- parts and manifest ------------------------------------------------------------

@pytest.mark.parametrize(("size", "part", "sizes"), [
    (0, 4, [0]), (1, 4, [1]), (4, 4, [4]), (5, 4, [4, 1]), (12, 4, [4, 4, 4])])
def test_manifest_cuts_parts_at_the_edges(size: int, part: int, sizes: list[int]) -> None:
    data = os.urandom(size)
    manifest = Manifest.build(chunked(data, 2, most=3), part)
    assert [p.size for p in manifest.parts] == sizes == [s for _, _, s in plan(size, part)]
    assert manifest.stream_sha256 == hashlib.sha256(data).hexdigest()
    for p in manifest.parts:
        assert p.sha256 == hashlib.sha256(data[p.offset:p.offset + p.size]).hexdigest()


def _info(data: bytes, part_size: int, name: str = "report.csv", **changes: object) -> FileInfo:
    digest = hashlib.sha256(data).hexdigest()
    fields: dict[str, object] = dict(
        file_id=file_id_for(digest, name, "none", part_size), file_name=name, file_size=len(data),
        file_sha256=digest, compression="none", stream_size=len(data), part_size=part_size,
        part_count=len(plan(len(data), part_size)))
    fields.update(changes)
    return FileInfo(**fields)  # type: ignore[arg-type]


def test_file_info_checks_every_field() -> None:
    data = b"x" * 10
    assert _info(data, 4).check(max_file_bytes=100)
    with pytest.raises(MalformedMessage, match="partCount"):
        _info(data, 4, part_count=2).check(max_file_bytes=100)
    with pytest.raises(MessageTooLarge):
        _info(data, 4).check(max_file_bytes=9)
    with pytest.raises(MalformedMessage, match="fileId"):
        _info(data, 4, file_id="../x").check(max_file_bytes=100)
    with pytest.raises(MalformedMessage, match="streamSize"):
        _info(data, 4, stream_size=11, part_count=3).check(max_file_bytes=100)
    with pytest.raises(MalformedMessage, match="partNo"):
        _info(data, 4).part(4, "0" * 64)


# -- file names --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "a\\b", "/etc/passwd", "C:evil", "..", ".", ".hidden",
                                  "bad\x00name", "tab\tname", "new\nline", "CON", "nul.txt", "com1", "LPT9.log",
                                  "trailing.", " lead", "", "rtl\u202egnp.exe", "x" * 256])
def test_unsafe_file_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeFileName):
        safe_file_name(name)


@pytest.mark.parametrize("name", ["report.csv", "住民記録_2024.zip", "a b.txt", "CONFIG.sys", "x" * 255])
def test_ordinary_file_names_pass(name: str) -> None:
    assert safe_file_name(name) == name


# -- staging and publishing -----------------------------------------------------------

def _store(staging: Staging, info: FileInfo, data: bytes, part_no: int, sent: bytes | None = None) -> bool:
    part = info.part(part_no, hashlib.sha256(data[(part_no - 1) * info.part_size:][:info.part_size]).hexdigest())
    writer = staging.writer(info, part)
    if writer is None:
        return False
    writer.write(data[part.offset:part.offset + part.size] if sent is None else sent)
    staging.commit(writer, info.file_id)
    return True


def test_parts_in_any_order_publish_only_when_complete(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    info = _info(data, 3000)
    staging = Staging(tmp_path, max_file_bytes=1 << 20)
    staging.begin(info)
    for part_no in (4, 2, 1):
        assert _store(staging, info, data, part_no)
        assert sorted(p.name for p in tmp_path.iterdir()) == [STAGING_DIR], "nothing visible before completion"
    assert not _store(staging, info, data, 2), "a duplicate is not written again"
    assert staging.status(info.file_id).parts == {1, 2, 4}
    assert _store(staging, info, data, 3)
    assert staging.publish(info.file_id) == tmp_path / "report.csv"
    assert (tmp_path / "report.csv").read_bytes() == data
    assert staging.status(info.file_id).published == "report.csv"
    assert not _store(staging, info, data, 1), "parts of a published file are duplicates"


def test_a_part_that_does_not_match_is_refused_and_not_recorded(tmp_path: Path) -> None:
    data = os.urandom(1000)
    info = _info(data, 600)
    staging = Staging(tmp_path, max_file_bytes=1 << 20)
    staging.begin(info)
    with pytest.raises(ChecksumMismatch, match="partSha256"):
        _store(staging, info, data, 1, sent=bytes(600))
    with pytest.raises(ChecksumMismatch, match="not 600"):
        _store(staging, info, data, 1, sent=data[:599])
    with pytest.raises(ChecksumMismatch, match="longer"):
        _store(staging, info, data, 2, sent=data[600:] + b"x")
    assert staging.status(info.file_id).parts == frozenset()


def test_a_changed_description_of_the_same_transfer_is_refused(tmp_path: Path) -> None:
    data = os.urandom(1000)
    staging = Staging(tmp_path, max_file_bytes=1 << 20)
    staging.begin(_info(data, 600))
    with pytest.raises(MalformedMessage, match="different"):
        staging.begin(_info(data, 600, file_name="other.csv", file_id=_info(data, 600).file_id))


def test_whole_file_checksum_failure_publishes_nothing(tmp_path: Path) -> None:
    data = os.urandom(1000)
    info = _info(data, 600, file_sha256="0" * 64)
    staging = Staging(tmp_path, max_file_bytes=1 << 20)
    staging.begin(info)
    _store(staging, info, data, 1)
    _store(staging, info, data, 2)
    with pytest.raises(ChecksumMismatch, match="fileSha256"):
        staging.publish(info.file_id)
    assert [p.name for p in tmp_path.iterdir()] == [STAGING_DIR]
    assert staging.status(info.file_id).parts == frozenset(), "a failed stream is dropped for a clean resend"


def test_zipped_transfer_unzips_and_a_bomb_leaves_nothing(tmp_path: Path) -> None:
    data = os.urandom(20_000) + b"q" * 30_000
    blob = _zip(data)
    digest = hashlib.sha256(data).hexdigest()
    info = FileInfo(file_id="zipped", file_name="data.bin", file_size=len(data), file_sha256=digest,
                    compression="zip", stream_size=len(blob), part_size=10_000, part_count=len(plan(len(blob), 10_000)))
    staging = Staging(tmp_path, max_file_bytes=16 << 20)
    staging.begin(info)
    for part_no in range(1, info.part_count + 1):
        _store(staging, info, blob, part_no)
    staging.publish(info.file_id)
    assert (tmp_path / "data.bin").read_bytes() == data

    bomb = _zip(b"\0" * (8 << 20), chunk=1 << 20)
    lie = FileInfo(file_id="bomb", file_name="bomb.bin", file_size=8 << 20, file_sha256=digest, compression="zip",
                   stream_size=len(bomb), part_size=len(bomb), part_count=1)
    staging.begin(lie)
    _store(staging, lie, bomb, 1)
    with pytest.raises(ZipBomb):
        staging.publish("bomb")
    assert sorted(p.name for p in tmp_path.iterdir()) == [STAGING_DIR, "data.bin"]
    assert not (tmp_path / STAGING_DIR / "bomb").exists()


def test_a_crash_between_rename_and_marker_is_recovered(tmp_path: Path) -> None:
    data = os.urandom(1000)
    info = _info(data, 600)
    staging = Staging(tmp_path, max_file_bytes=1 << 20)
    staging.begin(info)
    _store(staging, info, data, 1)
    _store(staging, info, data, 2)
    staging.publish(info.file_id)
    (tmp_path / STAGING_DIR / info.file_id / "published").unlink()  # as if it crashed before the marker
    restarted = Staging(tmp_path, max_file_bytes=1 << 20)
    assert restarted.publish(info.file_id) == tmp_path / "report.csv"
    assert restarted.status(info.file_id).published == "report.csv"
    assert (tmp_path / "report.csv").read_bytes() == data


# -- the messages against schemas/file.wsdl -------------------------------------------

def _file_schema() -> etree.XMLSchema:
    wsdl = etree.fromstring(read("file.wsdl"))
    schema = wsdl.find(".//{http://www.w3.org/2001/XMLSchema}schema")
    assert schema is not None
    return etree.XMLSchema(schema)


@pytest.mark.parametrize("mtom", [False, True], ids=["swa", "mtom"])
@pytest.mark.parametrize("version", list(SoapVersion), ids=lambda v: f"soap{v.value}")
def test_messages_follow_the_wsdl_and_read_back(mtom: bool, version: SoapVersion) -> None:
    from attachments.message import (
        FileStatusReply,
        PartReply,
        body_of,
        get_file_status,
        part_reply,
        put_file_part,
        read_part_reply,
        read_request,
        read_status_reply,
        status_reply,
    )
    schema = _file_schema()
    info = _info(b"x" * 10, 4)
    put = put_file_part(info, 2, "a" * 64, content_id="p@x", mtom=mtom, version=version, to="files", sender="juki")
    status = get_file_status(info.file_id, version=version, to="files")
    reply = PartReply(file_id=info.file_id, part_no=2, status="stored", parts_received=1)
    state = FileStatusReply(file_id=info.file_id, parts=frozenset({1, 3}), part_count=3, published=None)
    for envelope in (put, status, part_reply(reply, version), status_reply(state, version)):
        schema.assertValid(body_of(envelope)[1])
    assert read_request(put) == (version, read_request(put)[1])
    request = read_request(put)[1]
    assert not isinstance(request, str)
    assert (request.info, request.part_no, request.part_sha256, request.content_id) == (info, 2, "a" * 64, "<p@x>")
    assert read_request(status)[1] == info.file_id
    assert read_part_reply(part_reply(reply, version)) == reply
    assert read_status_reply(status_reply(state, version)) == state


def test_zip64_local_header_sizes_are_read() -> None:
    data = os.urandom(70_000)
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", method) as archive:
            with archive.open("big", "w", force_zip64=True) as member:  # as a zip of > 4 GiB is written
                member.write(data)
        blob = buffer.getvalue()
        assert b"\x01\x00\x10\x00" in blob[:100], "a ZIP64 extra field in the local header"
        assert _unzip(blob, ZipLimits(max_bytes=len(data))) == data


def test_untouched_transfers_expire_and_fresh_ones_stay(tmp_path: Path) -> None:
    data = os.urandom(1000)
    old, fresh = _info(data, 600), _info(data, 600, file_id="fresh")
    staging = Staging(tmp_path, max_file_bytes=1 << 20)
    for info in (old, fresh):
        staging.begin(info)
        _store(staging, info, data, 1)
    week_ago = os.path.getmtime(tmp_path / STAGING_DIR / fresh.file_id) - 8 * 86400
    for path in (tmp_path / STAGING_DIR / old.file_id).rglob("*"):
        os.utime(path, (week_ago, week_ago))
    os.utime(tmp_path / STAGING_DIR / old.file_id, (week_ago, week_ago))
    assert staging.expire(7 * 86400) == [old.file_id]
    assert staging.status(old.file_id).parts == frozenset()
    assert staging.status(fresh.file_id).parts == {1}
