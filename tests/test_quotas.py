"""Quotas and disk space (issue 17, finding 4) against real loopback gateways and a real receiving AP.

SPEC.md "Data at rest, per organisation": ``gateway.jx.max_pending_documents``
and ``max_pending_bytes`` per receiver id (``QuotaExceeded``), and
``gateway.min_free_bytes`` (HTTP 503 ``InsufficientStorage``, nothing already
accepted lost).  A disk with less free space than ``min_free_bytes`` is made
without mocks: a threshold larger than any real disk.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lxml import etree
from sqlalchemy import create_engine

from attachments.parts import FileInfo
from attachments.staging import STAGING_DIR
from attachments.transfer.receiver import ReceiveOptions, make_receiver_app
from attachments.transfer.sender import part_message
from gateway.errors import RemoteFault

from .conftest import BMRGW, GatewayFactory, message, soap11_headers, start_app
from .jxhelp import confirm, get, put
from .refdb_support import person
from .test_refdb_service import start_gateway

#: More free space than any disk the tests run on has.
HUGE = 1 << 60
FAULT = "{urn:bmrgw:fault:1}Error"



def staged(folder: Path) -> list[str]:
    """Transfers staged under ``folder`` (the ``.senders`` register of who published what is not one)."""
    return sorted(p.name for p in (folder / STAGING_DIR).iterdir() if p.name != ".senders")

def _config(tmp_path: Path, *, min_free: int | None = None, **jx: Any) -> dict[str, Any]:
    gateway: dict[str, Any] = {"name": "dc-quota", "data_dir": str(tmp_path / "var"),
                               "db": f"sqlite:///{tmp_path}/quota.db", "jx": jx}
    if min_free is not None:
        gateway["min_free_bytes"] = min_free
    return {"gateway": gateway, "endpoints": {"cityhall-a": {"mailbox": "1310001"}}}


async def _deposit(http: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    """A relayed message for the mailbox endpoint cityhall-a (JX receiver 1310001)."""
    async with http.post(f"{url}/soap/cityhall-a", data=message("valid/soap11-no-header.xml"),
                         headers=soap11_headers()) as resp:
        error = etree.fromstring(await resp.read()).find(f".//{FAULT}")
        return resp.status, None if error is None else error.get("code")


async def test_pending_documents_per_receiver_are_limited(gateway: GatewayFactory, tmp_path: Path,
                                                          http: aiohttp.ClientSession) -> None:
    url = await gateway(_config(tmp_path, max_pending_documents=3))
    for n in range(3):
        assert (await put(http, url, f"q-{n}", b"waiting")).result is True
    over = await put(http, url, "q-3", b"one too many")
    assert (over.status, over.fault_code) == (500, "QuotaExceeded")
    assert over.text(".//faultcode") == "soap:Server"  # it succeeds later, once the receiver polled
    assert await _deposit(http, url) == (507, "QuotaExceeded")
    assert (await put(http, url, "q-0", b"waiting")).result is True  # the same document again is no new one
    assert (await put(http, url, "other-0", b"x", receiver="1310002")).result is True  # per receiver id

    got = await get(http, url)
    assert got.result is True and got.data == b"waiting"
    assert (await confirm(http, url, got.text(".//jx:messageId") or "")).result is True
    assert (await put(http, url, "q-3", b"room again")).result is True
    assert await _deposit(http, url) == (507, "QuotaExceeded")


async def test_pending_bytes_per_receiver_are_limited(gateway: GatewayFactory, tmp_path: Path,
                                                      http: aiohttp.ClientSession) -> None:
    url = await gateway(_config(tmp_path, max_pending_bytes=2048))
    assert (await put(http, url, "b-1", os.urandom(1500))).result is True
    over = await put(http, url, "b-2", os.urandom(600))
    assert over.fault_code == "QuotaExceeded"
    assert (await put(http, url, "b-3", os.urandom(548))).result is True  # exactly up to the quota
    assert (await put(http, url, "b-4", b"x")).fault_code == "QuotaExceeded"


def test_quota_defaults_and_validation() -> None:
    from gateway.errors import ConfigError
    from routing.config import parse_config

    settings = parse_config({"gateway": {}}).gateway
    assert (settings.jx.max_pending_documents, settings.jx.max_pending_bytes) == (10000, 10 << 30)
    assert settings.min_free_bytes == 1 << 30
    for bad in ({"min_free_bytes": -1}, {"jx": {"max_pending_documents": 0}}, {"jx": {"max_pending_bytes": "1G"}}):
        with pytest.raises(ConfigError):
            parse_config({"gateway": bad})


async def test_a_full_disk_refuses_every_store_and_loses_nothing(gateway: GatewayFactory, tmp_path: Path,
                                                                 http: aiohttp.ClientSession) -> None:
    roomy = await gateway(_config(tmp_path))
    assert (await put(http, roomy, "kept-1", b"accepted before the disk filled")).result is True
    full = await gateway(_config(tmp_path, min_free=HUGE))  # same database and data_dir

    refused = await put(http, full, "late-1", b"no room")
    assert (refused.status, refused.fault_code) == (503, "InsufficientStorage")
    assert await _deposit(http, full) == (503, "InsufficientStorage")
    assert list((tmp_path / "var" / "jx" / "blobs").iterdir()) == [], "small documents are database rows"
    engine = create_engine(f"sqlite:///{tmp_path}/quota.db")
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM jx_blob").scalar_one() == 1, "the refused ones left no bytes"
    engine.dispose()
    got = await get(http, full)  # what was accepted is still handed out and confirmed
    assert got.result is True and got.data == b"accepted before the disk filled"
    assert (await confirm(http, full, "kept-1")).result is True


async def test_a_full_disk_refuses_refdb_pushes(tmp_path: Path) -> None:
    runner, gw = await start_gateway(f"sqlite:///{tmp_path}/refdb.db", tmp_path, min_free_bytes=HUGE)
    try:
        with pytest.raises(RemoteFault) as caught:
            await gw.client(lambda c: c.upsert("residents", [person(1)]))
        assert (caught.value.remote_code, caught.value.status) == ("InsufficientStorage", 503)
        with pytest.raises(RemoteFault) as begun:
            await gw.client(lambda c: c.push("residents", (person(n) for n in range(3)), mode="full"))
        assert begun.value.remote_code == "InsufficientStorage"
        answer = await gw.client(lambda c: c.query("residents", limit=5))  # reading goes on
        assert answer.records == []
    finally:
        await runner.cleanup()


# -- bmrgw receive ------------------------------------------------------------------


async def _post_part(http: aiohttp.ClientSession, url: str, info: FileInfo, data: bytes) -> tuple[int, str | None]:
    part = info.part(1, hashlib.sha256(data).hexdigest())
    headers, head, tail = part_message(info, part, to="files")
    headers["Content-Length"] = str(len(head) + len(data) + len(tail))
    async with http.post(f"{url}/files", data=head + data + tail, headers=headers) as resp:
        error = etree.fromstring(await resp.read()).find(f".//{FAULT}") if resp.status != 200 else None
        return resp.status, None if error is None else error.get("code")


def _declared(file_id: str, size: int, part_size: int) -> FileInfo:
    return FileInfo(file_id=file_id, file_name=f"{file_id}.bin", file_size=size, file_sha256="0" * 64,
                    compression="none", stream_size=size, part_size=part_size, part_count=-(-size // part_size))


async def test_receive_refuses_declared_sizes_and_part_counts_before_staging(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    folder = tmp_path / "inbox"
    runner, url = await start_app(make_receiver_app(ReceiveOptions(directory=folder)))  # the defaults
    try:
        tiny_parts = _declared("sixty-gib", 60 << 30, 1)  # 60 GiB in 1-byte parts
        assert await _post_part(http, url, tiny_parts, b"\0") == (413, "MessageTooLarge")
        too_big = _declared("too-big", 100 << 40, 1 << 30)  # 100 TiB: beyond --max-file-bytes
        assert await _post_part(http, url, too_big, os.urandom(16)) == (413, "MessageTooLarge")
        assert staged(folder) == [], "nothing was staged"
    finally:
        await runner.cleanup()


async def test_receive_refuses_a_transfer_the_disk_cannot_hold(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    stats = os.statvfs(folder)
    keep = stats.f_bavail * stats.f_frsize - (512 << 20)  # 512 MiB may still be used
    runner, url = await start_app(make_receiver_app(ReceiveOptions(directory=folder, min_free_bytes=keep)))
    try:
        beyond = _declared("beyond-disk", 1 << 30, 64 << 20)  # within the limits, not within the disk
        assert await _post_part(http, url, beyond, os.urandom(16)) == (503, "InsufficientStorage")
        assert staged(folder) == [], "nothing was staged"
        data = b"fits"
        small = FileInfo(file_id="fits", file_name="fits.txt", file_size=len(data),
                         file_sha256=hashlib.sha256(data).hexdigest(), compression="none", stream_size=len(data),
                         part_size=1024, part_count=1)
        assert await _post_part(http, url, small, data) == (200, None)
        assert (folder / "fits.txt").read_bytes() == data
    finally:
        await runner.cleanup()


async def test_receive_on_a_full_disk_refuses_parts_and_stages_nothing(tmp_path: Path,
                                                                       http: aiohttp.ClientSession) -> None:
    folder = tmp_path / "inbox"
    runner, url = await start_app(make_receiver_app(ReceiveOptions(directory=folder, min_free_bytes=HUGE)))
    try:
        data = b"a small file"
        info = FileInfo(file_id="small", file_name="small.txt", file_size=len(data),
                        file_sha256=hashlib.sha256(data).hexdigest(), compression="none", stream_size=len(data),
                        part_size=1024, part_count=1)
        assert await _post_part(http, url, info, data) == (503, "InsufficientStorage")
        assert staged(folder) == [] and not (folder / "small.txt").exists()
    finally:
        await runner.cleanup()


def test_receive_options_name_the_limits() -> None:
    text = subprocess.run([*BMRGW, "receive", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--max-parts" in text and "--min-free-bytes" in text and "--max-file-bytes" in text
