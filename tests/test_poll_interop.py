"""``bmrgw poll`` against a JX server that is not bmrgw (issue 21 interop): a strict one from the WSDL alone."""

from __future__ import annotations

import asyncio
import gzip
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import BMRGW, start_app, write_yaml
from .jxhelp import action, envelope, put_envelope
from .jxstrict import StrictJx, new_server, strict_app

CSV = "氏名,住所\r\n山田 太郎,表示ソフト①\r\n".encode("cp932")


@pytest.fixture
async def strict() -> AsyncIterator[tuple[StrictJx, str]]:
    server = new_server()
    runner, base = await start_app(strict_app(server))
    yield server, base
    await runner.cleanup()


async def poll_once(config: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*BMRGW, "poll", "--config", str(config), "--once",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_poll_receives_confirms_and_uploads_with_a_strict_foreign_server(
        strict: tuple[StrictJx, str], tmp_path: Path) -> None:
    server, base = strict
    server.add("plain-1", CSV, receiver="1310001", document_type="住民.csv")
    server.add("packed-2", gzip.compress(CSV * 1000), receiver="1310001", compress_type="gzip",
               document_type="住民-大.csv")
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "回答.csv").write_bytes(CSV)
    config = tmp_path / "poll.yaml"
    write_yaml(config, {"partners": {"other-vendor": {
        "server": f"{base}/jx", "receiver_id": "1310001", "send_to": "OTHER-DC", "out": "in", "outbox": "outbox",
        "names": "documentType", "compression": "zip"}}})
    code, out = await poll_once(config)
    assert code == 0 and server.refused == [], (out, server.refused)
    assert (tmp_path / "in" / "住民.csv").read_bytes() == CSV
    assert (tmp_path / "in" / "住民-大.csv").read_bytes() == CSV * 1000
    assert [d.confirmed for d in server.documents[:2]] == [True, True]
    uploaded = server.documents[2]
    assert (uploaded.fields["documentType"], uploaded.fields["compressType"], uploaded.fields["senderId"]) == (
        "回答.csv", "zip", "1310001")
    assert zipfile.ZipFile(io.BytesIO(uploaded.data)).read("回答.csv") == CSV
    assert server.requests.count("GetDocument") == 3 and server.requests.count("ConfirmDocument") == 2


async def test_the_strict_server_is_strict(strict: tuple[StrictJx, str], http: aiohttp.ClientSession) -> None:
    """What the interop test relies on: requests the WSDL does not allow are refused."""
    server, base = strict
    no_compress_type = envelope("PutDocument", [("messageId", "m"), ("data", "eA=="), ("senderId", "s"),
                                                ("receiverId", "r"), ("formatType", "F"), ("documentType", "d")])
    wrong_order = put_envelope("m", b"x").replace(b"<jx:messageId>m</jx:messageId>", b"").replace(
        b"</jx:compressType>", b"</jx:compressType><jx:messageId>m</jx:messageId>")
    for body, headers in ((no_compress_type, action("PutDocument")), (wrong_order, action("PutDocument")),
                          (put_envelope("m", b"x"), action("GetDocument")),
                          (put_envelope("m", b"x", header={"From": "x"}), action("PutDocument"))):
        async with http.post(f"{base}/jx", data=body, headers=headers) as resp:
            assert resp.status == 500
    assert len(server.refused) == 4 and server.documents == []
    async with http.post(f"{base}/jx", data=put_envelope("m", b"x"), headers=action("PutDocument")) as resp:
        assert resp.status == 200 and len(server.documents) == 1


async def test_hyphenless_partner_namespace_with_a_server_built_from_such_a_wsdl(tmp_path: Path) -> None:
    server = new_server(hyphenless=True)
    runner, base = await start_app(strict_app(server))
    try:
        server.add("doc-1", CSV, receiver="1310001")
        (tmp_path / "outbox").mkdir()
        for namespace in ("published", "hyphenless"):
            (tmp_path / "outbox" / f"{namespace}.csv").write_bytes(b"ok")
            config = tmp_path / f"{namespace}.yaml"
            write_yaml(config, {"partners": {"dc": {"server": f"{base}/jx", "receiver_id": "1310001",
                                                    "out": "in", "outbox": "outbox", "namespace": namespace}}})
            code, out = await poll_once(config)
            if namespace == "published":  # the server knows only its copy's namespace: refused, and said so
                assert code == 1 and "fault failure: GetDocument: the gateway answered with a fault" in out, out
                assert server.refused and server.documents[0].confirmed is False
            else:
                assert code == 0, out
        assert (tmp_path / "in" / "doc-1").read_bytes() == CSV and server.documents[0].confirmed
        assert [d.fields["documentType"] for d in server.documents[1:]] == ["hyphenless.csv"]
        assert (tmp_path / "outbox" / "failed" / "published.csv").exists()  # refused with a fault: set aside
    finally:
        await runner.cleanup()
