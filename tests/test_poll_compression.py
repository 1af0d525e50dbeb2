"""JX ``compressType`` through the real ``bmrgw poll`` (issue 21, item 5): gzip and zip both ways, bombs refused."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from attachments.zipstream import ZipWriter
from gateway.cli import main

from .conftest import BMRGW, GatewayFactory, write_yaml
from .jxhelp import put

#: Compressible and not: CP932 text, then random bytes (2 MiB + 5 bytes: not a multiple of any chunk).
ORIGINAL = "住民記録,異動,表示\r\n".encode("cp932") * 60_000 + os.urandom(2 * 1024 * 1024 + 5)


async def poll_once(config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*BMRGW, "poll", "--config", str(config), "--once",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


def stored(capsys: pytest.CaptureFixture[str], gateway_config: Path, receiver: str, save: Path) -> dict[str, Any]:
    """The one document waiting for ``receiver``, its stored bytes saved to ``save``."""
    assert main(["jx", "list", "--receiver", receiver, "--format", "json", "--config", str(gateway_config)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr()[0].splitlines()]
    assert len(rows) == 1
    assert main(["jx", "show", rows[0]["message_id"], "--save", str(save), "--config", str(gateway_config)]) == 0
    capsys.readouterr()
    row: dict[str, Any] = rows[0]
    return row


@pytest.mark.parametrize("kind", ["gzip", "zip"])
async def test_compressed_upload_is_stored_as_sent_and_received_decompressed(
        kind: str, gateway: GatewayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = await gateway({"gateway": {"name": "dc-zip", "data_dir": str(tmp_path / "var")}})
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "住民.csv").write_bytes(ORIGINAL)
    up = tmp_path / "up.yaml"
    write_yaml(up, {"partners": {"cityhall": {"server": f"{url}/jx", "receiver_id": "1310001", "out": "in-city",
                                              "outbox": "outbox", "send_to": "DC", "compression": kind}}})
    code, out = await poll_once(up)
    assert code == 0 and "sent 住民.csv as" in out and f", {kind})" in out, out

    row = stored(capsys, tmp_path / "endpoints-0.yaml", "DC", tmp_path / "stored.bin")
    wire = (tmp_path / "stored.bin").read_bytes()
    assert row["compress_type"] == kind and row["document_type"] == "住民.csv"
    assert len(wire) < len(ORIGINAL) * 0.7  # the gateway keeps what was sent: compressed
    unpacked = gzip.decompress(wire) if kind == "gzip" else zipfile.ZipFile(io.BytesIO(wire)).read("住民.csv")
    assert unpacked == ORIGINAL  # and it is a standard gzip / zip, readable by any tool

    down = tmp_path / "down.yaml"
    write_yaml(down, {"partners": {"dc": {"server": f"{url}/jx", "receiver_id": "DC", "out": "in-dc",
                                          "names": "documentType"}}})
    code, out = await poll_once(down)
    assert code == 0, out
    assert (tmp_path / "in-dc" / "住民.csv").read_bytes() == ORIGINAL
    assert not [p for p in (tmp_path / "in-dc").iterdir() if p.name.endswith(".part")]


def zip_of(data: bytes, name: str = "member", *, times: int = 1) -> bytes:
    writer = ZipWriter(name)
    return writer.start() + b"".join(writer.write(data) for _ in range(times)) + writer.finish()


def gzip_of(data: bytes, *, times: int = 1) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(packer.compress(data) for _ in range(times)) + packer.flush()


MIB = bytes(1024 * 1024)


BAD = {
    "gzip bomb": ("gzip", gzip_of(MIB, times=300), "inflates more than 200 times"),
    "zip bomb": ("zip", zip_of(MIB, times=300), "inflates more than 200 times"),
    "over the size limit": ("gzip", gzip.compress(os.urandom(3 * 1024 * 1024)), "inflates beyond 2097152 bytes"),
    "truncated gzip": ("gzip", gzip.compress(b"x" * 100_000)[:-20], "truncated"),
    "not a zip": ("zip", b"this is plain text and no zip file at all", "not a zip stream"),
    "unknown compressType": ("lzh", b"-lh5- archive", "neither gzip nor zip"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_compressed_documents_are_refused_and_not_confirmed(
        case: str, gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    kind, data, reason = BAD[case]
    url = await gateway({"gateway": {"name": "dc-bomb", "data_dir": str(tmp_path / "var")}})
    assert (await put(http, url, "doc-1", data, compress_type=kind)).result is True
    config = tmp_path / "poll.yaml"
    write_yaml(config, {"partners": {"dc": {"server": f"{url}/jx", "receiver_id": "1310001", "out": "in",
                                            "max_document_bytes": 2 * 1024 * 1024}}})
    code, out = await poll_once(config)
    assert code == 1, out
    assert "compression failure" in out and reason in out and "1 failed (1 compression)" in out, out
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [".bmrgw-poll"]  # nothing half-written
    assert main(["jx", "list", "--state", "delivered", "--format", "json",
                 "--config", str(tmp_path / "endpoints-0.yaml")]) == 0
    assert [json.loads(line)["message_id"] for line in capsys.readouterr()[0].splitlines()] == ["doc-1"]


async def test_decompress_false_saves_the_document_as_it_came(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway({"gateway": {"name": "dc-raw", "data_dir": str(tmp_path / "var")}})
    packed = gzip.compress(ORIGINAL)
    assert (await put(http, url, "raw.gz", packed, compress_type="gzip")).result is True
    config = tmp_path / "poll.yaml"
    write_yaml(config, {"partners": {"dc": {"server": f"{url}/jx", "receiver_id": "1310001", "out": "in",
                                            "decompress": False}}})
    code, out = await poll_once(config)
    assert code == 0, out
    assert (tmp_path / "in" / "raw.gz").read_bytes() == packed
