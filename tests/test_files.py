"""File transfer through a real gateway to a real receiving AP: round trips, resume, hostile input."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import pty
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from attachments.message import read_part_reply
from attachments.parts import FileInfo, plan
from attachments.staging import STAGING_DIR
from attachments.transfer.receiver import ReceiveOptions, make_receiver_app
from attachments.transfer.sender import SendOptions, part_message, send_file
from attachments.zipstream import ZipWriter
from gateway.ns import SoapVersion

from .conftest import BMRGW, GatewayFactory, start_app

PART = 64 * 1024


@dataclass
class Site:
    """A gateway with one endpoint ``files`` served by a receiving AP publishing into ``dir``."""

    gateway: str
    receiver: str
    dir: Path


@pytest.fixture
async def site(gateway: GatewayFactory, tmp_path: Path) -> AsyncIterator[Site]:
    folder = tmp_path / "inbox"
    runner, receiver = await start_app(make_receiver_app(ReceiveOptions(directory=folder, max_file_bytes=64 << 20)))
    gw = await gateway({"gateway": {"name": "gw-files"}, "endpoints": {"files": {"url": f"{receiver}/files"}}})
    yield Site(gateway=gw, receiver=receiver, dir=folder)
    await runner.cleanup()


def _file(tmp_path: Path, size: int, name: str = "juki-2024.dat") -> Path:
    path = tmp_path / "outbox" / name
    path.parent.mkdir(exist_ok=True)
    # Half random, half repetitive: zip must really compress and really round-trip.
    path.write_bytes((os.urandom(size // 2) + b"0123456789" * (size // 10 + 1))[:size])
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != STAGING_DIR)


@pytest.mark.parametrize("size", [0, 1, PART, PART + 1], ids=["0-bytes", "1-byte", "one-part", "one-byte-over"])
@pytest.mark.parametrize(("mtom", "zipped", "version"), [
    (False, False, SoapVersion.V11), (True, False, SoapVersion.V12),
    (False, True, SoapVersion.V12), (True, True, SoapVersion.V11)], ids=["swa", "mtom-1.2", "swa-zip-1.2", "mtom-zip"])
async def test_round_trip_edges(site: Site, tmp_path: Path, size: int, mtom: bool, zipped: bool,
                                version: SoapVersion) -> None:
    path = _file(tmp_path, size)
    options = SendOptions(path=path, to="files", gateway=site.gateway, zip=zipped, part_size=PART, mtom=mtom,
                          version=version, sender="juki")
    result = await send_file(options)
    assert result.published == path.name and result.skipped == 0
    assert result.info.part_count == len(plan(result.info.stream_size, PART))
    if not zipped:
        assert result.info.part_count == (2 if size == PART + 1 else 1)
    assert _digest(site.dir / path.name) == _digest(path)
    assert _visible(site.dir) == [path.name]


async def test_resume_sends_only_the_missing_parts(site: Site, tmp_path: Path) -> None:
    path = _file(tmp_path, 5 * PART + 123)
    options = SendOptions(path=path, to="files", gateway=site.gateway, part_size=PART)
    first = await send_file(SendOptions(**{**options.__dict__, "only_parts": frozenset({1, 3, 4})}))
    assert (first.sent, first.published) == (3, None)
    assert _visible(site.dir) == [], "nothing is visible until the file is complete"
    second = await send_file(options)
    assert (second.skipped, second.sent, second.published) == (3, 3, path.name)
    assert _digest(site.dir / path.name) == _digest(path)
    third = await send_file(options)
    assert (third.sent, third.published) == (0, path.name), "a finished transfer is not sent again"


async def _post_part(http: aiohttp.ClientSession, url: str, info: FileInfo, part_no: int, data: bytes,
                     declared: bytes | None = None, *, mtom: bool = False) -> tuple[int, bytes]:
    """POST one PutFilePart whose attachment is ``data`` (declared with the hash of ``declared``)."""
    part = info.part(part_no, hashlib.sha256(data if declared is None else declared).hexdigest())
    headers, head, tail = part_message(info, part, to="files", mtom=mtom)
    headers["Content-Length"] = str(len(head) + len(data) + len(tail))
    async with http.post(f"{url}/soap", data=head + data + tail, headers=headers) as resp:
        return resp.status, await resp.read()


def _info(data: bytes, name: str = "a.csv", *, part_size: int = PART, **changes: Any) -> FileInfo:
    fields: dict[str, Any] = dict(file_id="t-" + hashlib.sha256(data).hexdigest()[:16], file_name=name,
                                  file_size=len(data), file_sha256=hashlib.sha256(data).hexdigest(), compression="none",
                                  stream_size=len(data), part_size=part_size,
                                  part_count=len(plan(len(data), part_size)))
    fields.update(changes)
    return FileInfo(**fields)


async def test_resent_part_is_acknowledged_as_duplicate(site: Site, http: aiohttp.ClientSession) -> None:
    data = os.urandom(PART + 10)
    info = _info(data)
    for expected in ("stored", "duplicate"):
        status, answer = await _post_part(http, site.gateway, info, 1, data[:PART])
        assert status == 200 and read_part_reply(answer).status == expected
    status, answer = await _post_part(http, site.gateway, info, 2, data[PART:], mtom=True)
    assert read_part_reply(answer).status == "complete"
    status, answer = await _post_part(http, site.gateway, info, 2, data[PART:])
    reply = read_part_reply(answer)
    assert (reply.status, reply.published, reply.parts_received) == ("complete", "a.csv", 2)
    assert (site.dir / "a.csv").read_bytes() == data


async def test_part_that_does_not_match_its_checksum_is_refused(site: Site, http: aiohttp.ClientSession) -> None:
    data = os.urandom(1000)
    info = _info(data)
    changed = data[:-1] + bytes([data[-1] ^ 0xFF])  # (a fixed last byte was the random one 1 run in 256)
    status, answer = await _post_part(http, site.gateway, info, 1, changed, declared=data)
    assert status == 400 and b'code="ChecksumMismatch"' in answer
    status, answer = await _post_part(http, site.gateway, info, 1, data[:-1], declared=data[:-1])
    assert status == 400 and b"999 bytes, not 1000" in answer
    assert _visible(site.dir) == []


@pytest.mark.parametrize("name", ["../../etc/cron.d/x", "/tmp/abs", "..", "CON", "nul.txt", "a\tb", "two\nlines", "sub\\dir"])
async def test_hostile_file_names_are_refused(site: Site, http: aiohttp.ClientSession, name: str,
                                              tmp_path: Path) -> None:
    data = b"payload"
    status, answer = await _post_part(http, site.gateway, _info(data, name), 1, data)
    assert status == 400 and b'code="UnsafeFileName"' in answer
    assert _visible(site.dir) == [] and not (tmp_path / "etc").exists()


async def test_zip_bomb_is_refused_and_nothing_is_published(site: Site, http: aiohttp.ClientSession) -> None:
    writer = ZipWriter("bomb.bin")
    bomb = io.BytesIO()
    bomb.write(writer.start())
    for _ in range(32):
        bomb.write(writer.write(bytes(1 << 20)))
    bomb.write(writer.finish())
    blob = bomb.getvalue()
    info = FileInfo(file_id="bomb", file_name="bomb.bin", file_size=32 << 20, file_sha256="0" * 64,
                    compression="zip", stream_size=len(blob), part_size=len(blob), part_count=1)
    status, answer = await _post_part(http, site.gateway, info, 1, blob)
    assert status == 413 and b'code="ZipBomb"' in answer
    assert _visible(site.dir) == []


async def test_truncated_part_is_not_recorded(site: Site, http: aiohttp.ClientSession) -> None:
    data = os.urandom(5000)
    info = _info(data)
    part = info.part(1, hashlib.sha256(data).hexdigest())
    headers, head, tail = part_message(info, part, to="files")
    body = head + data  # the closing boundary never comes
    headers["Content-Length"] = str(len(body))
    async with http.post(f"{site.receiver}/files", data=body, headers=headers) as resp:
        assert resp.status == 400 and b'code="MalformedMessage"' in await resp.read()
    async with http.post(f"{site.receiver}/files", data=b"<x", headers={"Content-Type": "text/xml"}) as resp:
        assert resp.status == 400
    status, answer = await _post_part(http, site.gateway, info, 1, data)
    assert read_part_reply(answer).status == "complete", "the truncated attempt left nothing behind"


async def test_receiver_serves_its_wsdl(site: Site, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{site.receiver}/files?wsdl") as resp:
        assert resp.status == 200 and b'targetNamespace="urn:bmrgw:file:1"' in await resp.read()


# -- the CLI ---------------------------------------------------------------------

async def _bmrgw(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*BMRGW, *args], capture_output=True, text=True, timeout=60)


async def test_cli_send_success_and_exit_codes(site: Site, tmp_path: Path) -> None:
    path = _file(tmp_path, 3 * PART)
    done = await _bmrgw("send", str(path), "--to", "files", "--gateway", site.gateway, "--part-size", "64K",
                        "--zip", "--mtom")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "no progress bar without a terminal"
    assert f"sent {path.name} ({3 * PART} bytes" in done.stdout and "complete as juki-2024.dat" in done.stdout
    assert _digest(site.dir / path.name) == _digest(path)

    unknown = await _bmrgw("send", str(path), "--to", "nowhere", "--gateway", site.gateway)
    assert unknown.returncode == 1 and "refused (UnknownDestination)" in unknown.stderr
    missing = await _bmrgw("send", str(tmp_path / "nope"), "--to", "files", "--gateway", site.gateway)
    assert missing.returncode == 2 and "not a readable file" in missing.stderr
    reserved = _file(tmp_path, 10, name="aux.txt")
    unsafe = await _bmrgw("send", str(reserved), "--to", "files", "--gateway", site.gateway)
    assert unsafe.returncode == 2 and "reserved device name" in unsafe.stderr
    down = await _bmrgw("send", str(path), "--to", "files", "--gateway", "http://127.0.0.1:9/soap")
    assert down.returncode == 3 and "run the same command again to resume" in down.stderr
    bad_size = await _bmrgw("send", str(path), "--to", "files", "--gateway", site.gateway, "--part-size", "0")
    assert bad_size.returncode == 2 and "positive byte count" in bad_size.stderr
    for result in (unknown, missing, unsafe, down, bad_size):
        assert "Traceback" not in result.stderr


async def test_cli_send_shows_progress_on_a_terminal(site: Site, tmp_path: Path) -> None:
    path = _file(tmp_path, 2 * PART)
    master, slave = pty.openpty()
    try:
        proc = await asyncio.to_thread(
            subprocess.run, [*BMRGW, "send", str(path), "--to", "files", "--gateway", site.gateway,
                             "--part-size", "64K"], stdout=subprocess.PIPE, stderr=slave, timeout=60)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"128.0 KiB / 128.0 KiB" in shown and b"100.0%" in shown and b"ETA" in shown and b"/s" in shown


def test_cli_help_explains_send_and_receive() -> None:
    send = subprocess.run([*BMRGW, "send", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--part-size" in send and "--mtom" in send and "Exit codes" in send and "resume" in send
    receive = subprocess.run([*BMRGW, "receive", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--dir" in receive and "--max-ratio" in receive


async def test_disk_failure_is_a_storage_fault(site: Site, http: aiohttp.ClientSession) -> None:
    data = os.urandom(PART + 5)
    info = _info(data)
    status, _ = await _post_part(http, site.gateway, info, 1, data[:PART])
    assert status == 200
    stream = site.dir / STAGING_DIR / info.file_id / "data"
    stream.unlink()
    stream.mkdir()  # the stream file cannot be opened any more
    status, answer = await _post_part(http, site.gateway, info, 2, data[PART:])
    assert status == 500 and b'code="StorageFailed"' in answer
    assert _visible(site.dir) == []


async def test_status_query_finishes_a_transfer_whose_publishing_was_interrupted(site: Site, tmp_path: Path) -> None:
    from attachments.staging import Staging
    path = _file(tmp_path, 2 * PART + 7)
    options = SendOptions(path=path, to="files", gateway=site.gateway, part_size=PART)
    # All parts stored by an earlier receiver process that stopped before publishing.
    await send_file(SendOptions(**{**options.__dict__, "only_parts": frozenset({1, 2})}))
    staging = Staging(site.dir, max_file_bytes=1 << 30)
    info = (await asyncio.to_thread(_prepared_info, options))
    part = info.part(3, hashlib.sha256(path.read_bytes()[2 * PART:]).hexdigest())
    writer = staging.writer(info, part)
    assert writer is not None
    writer.write(path.read_bytes()[2 * PART:])
    writer.commit()
    assert _visible(site.dir) == []
    result = await send_file(options)
    assert (result.sent, result.skipped, result.published) == (0, 3, path.name)
    assert _digest(site.dir / path.name) == _digest(path)


def _prepared_info(options: SendOptions) -> FileInfo:
    import tempfile

    from attachments.transfer.sender import prepare
    with tempfile.TemporaryDirectory() as spool:
        return prepare(options, Path(spool)).info


async def test_file_crosses_two_data_centres(gateway: GatewayFactory, tmp_path: Path) -> None:
    folder = tmp_path / "west-inbox"
    runner, receiver = await start_app(make_receiver_app(ReceiveOptions(directory=folder)))
    try:
        west = await gateway({"gateway": {"name": "dc-west"}, "endpoints": {"files": {"url": f"{receiver}/files"}}})
        east = await gateway({"gateway": {"name": "dc-east"}, "endpoints": {"files": {"via": "dc-west"}},
                              "peers": {"dc-west": {"url": f"{west}/soap"}}})
        path = _file(tmp_path, 3 * PART + 1)
        result = await send_file(SendOptions(path=path, to="files", gateway=east, part_size=PART, zip=True,
                                             mtom=True))
    finally:
        await runner.cleanup()
    assert result.published == path.name and _digest(folder / path.name) == _digest(path)
