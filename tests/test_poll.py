"""``bmrgw poll``, the city hall's JX client, as a real process against real gateways."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.jx.poll import safe_name

from .conftest import BMRGW, GatewayFactory, GatewayProcess
from .jxhelp import get, put

StartGateway = Callable[..., GatewayProcess]


async def poll(*args: str | Path, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*BMRGW, "poll", *map(str, args), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


def config(tmp_path: Path) -> dict[str, Any]:
    return {"gateway": {"name": "dc-poll", "data_dir": str(tmp_path / "var")}}


@pytest.mark.parametrize(("message_id", "expected"), [
    ("doc-0001.csv", "doc-0001.csv"),
    ("../../etc/passwd", None),
    (".hidden", None),
    ("住民/異動", None),
])
def test_names_from_message_ids_are_safe(message_id: str, expected: str | None) -> None:
    name = safe_name(message_id)
    assert "/" not in name and not name.startswith(".") and name.isascii()
    if expected is not None:
        assert name == expected
    else:
        assert name != safe_name(message_id + "x")  # the hash keeps distinct ids apart


async def test_once_downloads_confirms_and_uploads(gateway: GatewayFactory, tmp_path: Path,
                                                   http: aiohttp.ClientSession) -> None:
    url = await gateway(config(tmp_path))
    docs = {f"doc-{n}": os.urandom(1000 + n) for n in range(5)}
    for message_id, data in docs.items():
        assert (await put(http, url, message_id, data)).result is True
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "kekka.csv").write_bytes(b"id,result\n1,ok\n")
    (outbox / ".still-writing").write_bytes(b"not yet")
    out = tmp_path / "in"
    code, text = await poll("--server", f"{url}/jx", "--receiver-id", "1310001", "--out", out,
                            "--outbox", outbox, "--sender-id", "1310001", "--once")
    assert code == 0, text
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == docs
    assert (await get(http, url)).result is False  # all confirmed
    assert (outbox / "sent" / "kekka.csv").exists() and not (outbox / "kekka.csv").exists()
    assert (outbox / ".still-writing").exists()
    uploaded = await get(http, url, receiver="DC")
    assert uploaded.data == b"id,result\n1,ok\n"
    assert uploaded.text(".//jx:documentType") == "kekka.csv"
    assert uploaded.text(".//jx:senderId") == "1310001"
    assert "received doc-0" in text and "sent kekka.csv" in text


async def test_redelivered_document_is_not_written_twice(gateway: GatewayFactory, tmp_path: Path,
                                                         http: aiohttp.ClientSession) -> None:
    url = await gateway(config(tmp_path))
    await put(http, url, "once-only", b"payload")
    out = tmp_path / "in"
    args = ("--server", f"{url}/jx", "--receiver-id", "1310001", "--out", out, "--once")
    assert (await poll(*args))[0] == 0
    (out / "once-only").rename(tmp_path / "processed")  # the city hall's system took it away
    # The confirm was lost (as if the client crashed after writing): the gateway hands it out again.
    code = subprocess.run([*BMRGW, "jx", "requeue", "once-only", "--config", str(tmp_path / "endpoints-0.yaml")],
                          capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    code2, text = await poll(*args)
    assert code2 == 0
    assert not (out / "once-only").exists()  # remembered across runs by messageId
    assert "received before" in text
    assert (await get(http, url)).result is False  # and confirmed again


async def test_once_against_a_dead_gateway_exits_1(tmp_path: Path) -> None:
    from .conftest import free_port
    started = time.monotonic()
    code, text = await poll("--server", f"http://127.0.0.1:{free_port()}/jx", "--receiver-id", "1",
                            "--out", tmp_path / "in", "--once")
    assert code == 1 and "unreachable" in text
    assert time.monotonic() - started < 30


@pytest.mark.slow
async def test_every_document_lands_once_across_a_gateway_restart(
        gateway_process: StartGateway, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    from .conftest import free_port
    port = free_port()
    cfg = config(tmp_path)
    cfg["gateway"]["jx"] = {"lease_seconds": 2}  # a document leased when the gateway died comes back soon
    gw = gateway_process(cfg, name="dc-poll", port=port)
    out = tmp_path / "in"
    proc = await asyncio.create_subprocess_exec(
        *BMRGW, "poll", "--server", f"{gw.url}/jx", "--receiver-id", "1310001", "--out", str(out),
        "--interval", "0.2", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    sent: dict[str, str] = {}
    try:
        for n in range(20):
            data = os.urandom(2000)
            sent[f"before-{n}"] = hashlib.sha256(data).hexdigest()
            assert (await put(http, gw.url, f"before-{n}", data)).result is True
        await asyncio.sleep(0.3)
        gw.proc.send_signal(signal.SIGKILL)  # mid-run, whatever the poller was doing
        gw.proc.wait()
        await asyncio.sleep(1.0)  # the poller meets a dead gateway and backs off
        gw2 = gateway_process(cfg, name="dc-poll", port=port)
        for n in range(20):
            data = os.urandom(2000)
            sent[f"after-{n}"] = hashlib.sha256(data).hexdigest()
            assert (await put(http, gw2.url, f"after-{n}", data)).result is True
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if len([p for p in out.iterdir() if p.is_file()]) >= len(sent) and (await get(http, gw2.url)).result is False:
                break
            await asyncio.sleep(0.3)
        assert proc.returncode is None, "the poller must survive the gateway being down"
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()}
    assert got == sent  # every document exactly once, none lost, none partial
    assert "unreachable" in err.decode()
