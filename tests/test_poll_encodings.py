"""Encodings seen in the field (issue 21, item 7): CP932 payloads and Japanese names arrive byte-exact.

Real CP932 bytes: 表 and ソ end in 0x5C (a backslash in ASCII), ①, ㈱ and №
exist only in CP932 (NEC row 13), ～ ∥ － ￢ map differently in CP932 and
strict Shift_JIS.  A relay that decoded and re-encoded anything would change
or refuse them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import BMRGW, GatewayFactory, message, write_yaml
from .jxhelp import get, put

CSV = "氏名,住所,備考\r\n山田 太郎,東京都千代田区,表示ソフト①㈱№～∥－￢\r\n髙橋 花子,神奈川県,能力\r\n".encode("cp932")


def test_the_sample_really_is_cp932_only() -> None:
    assert b"\x95\x5c" in CSV and b"\x83\x5c" in CSV and b"\x87\x40" in CSV  # 表, ソ, ①
    with pytest.raises(UnicodeDecodeError):
        CSV.decode("shift_jis")
    with pytest.raises(UnicodeDecodeError):
        CSV.decode("utf-8")


async def poll(*args: str | Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*BMRGW, "poll", *map(str, args), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def config(tmp_path: Path) -> dict[str, Any]:
    return {"gateway": {"name": "dc-enc", "data_dir": str(tmp_path / "var")},
            "endpoints": {"cityhall-a": {"mailbox": "1310001"}}}


async def test_cp932_document_and_its_japanese_name_arrive_unchanged(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path))
    name = "住民異動（表示） 2026年4月.csv"
    assert (await put(http, url, "cp932-csv", CSV, document_type=name)).result is True
    poll_yaml = tmp_path / "poll.yaml"
    write_yaml(poll_yaml, {"partners": {"dc": {"server": f"{url}/jx", "receiver_id": "1310001", "out": "in",
                                               "names": "documentType"}}})
    code, out = await poll("--config", poll_yaml, "--once")
    assert code == 0, out
    assert (tmp_path / "in" / name).read_bytes() == CSV


async def test_shift_jis_labelled_cp932_xml_document_is_not_re_encoded(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path))
    body = message("valid/soap11-cp932-labelled-shift-jis.xml")  # labelled Shift_JIS, as CP932 often is
    assert (await put(http, url, "sjis-xml-1", body, format_type="XML", document_type="申請.xml")).result is True
    code, out = await poll("--server", f"{url}/jx", "--receiver-id", "1310001", "--out", tmp_path / "in", "--once")
    assert code == 0, out
    assert (tmp_path / "in" / "sjis-xml-1").read_bytes() == body  # CRLFs, 0x5C trail bytes, NEC row 13: all kept
    assert (await get(http, url)).result is False
