"""``bmrgw poll``, the city hall's JX client, as a real process against real gateways."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.jx.poll import safe_name

from .conftest import BMRGW, GatewayFactory, GatewayProcess, write_yaml
from .jxhelp import MIB, action, block, get, put, streamed_put

StartGateway = Callable[..., GatewayProcess]


async def poll(*args: str | Path, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*BMRGW, "poll", *map(str, args), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


def config(tmp_path: Path) -> dict[str, Any]:
    return {"gateway": {"name": "dc-poll", "data_dir": str(tmp_path / "var")}}


#: What Windows refuses in a file name (besides "/" and NUL, which Linux refuses too).
WINDOWS_FORBIDDEN = set('<>:"\\|?*') | {chr(n) for n in range(32)}
WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(10)), *(f"LPT{n}" for n in range(10))}


def windows_valid(name: str) -> bool:
    return (bool(name) and not (set(name) & WINDOWS_FORBIDDEN) and "/" not in name and not name.endswith((".", " "))
            and name.split(".")[0].upper() not in WINDOWS_DEVICES and len(name.encode("utf-8")) <= 255)


@pytest.mark.parametrize(("message_id", "expected"), [
    ("doc-0001.csv", "doc-0001.csv"),
    ("住民異動_20260401.csv", "住民異動_20260401.csv"),  # issue 21 item 7: Japanese names stay as they are
    ("ｶﾅ 半角 ＆ 全角.txt", "ｶﾅ 半角 ＆ 全角.txt"),
    ("../../etc/passwd", None),
    (".hidden", None),
    ("住民/異動", None),
    ("C:\\Windows\\system.ini", None),
    ("CON", None),
    ("nul.txt", None),
    ("report.csv.", None),
    ("a:b|c?.csv", None),
    ("x" * 300, None),
])
def test_names_are_safe_on_linux_and_windows(message_id: str, expected: str | None) -> None:
    name = safe_name(message_id)
    assert windows_valid(name) and not name.startswith("."), name
    if expected is not None:
        assert name == expected
    else:
        assert name != message_id and name != safe_name(message_id + "x")  # the hash keeps distinct ids apart


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


async def test_8_000_000_byte_document_is_received_byte_exact(gateway: GatewayFactory, tmp_path: Path,
                                                            http: aiohttp.ClientSession) -> None:
    # Issue 21: over ~7.5 MB the zeep client died on "Text node too long", said "unreachable",
    # counted the document as received and exited 0 -- the document was never written.
    url = await gateway(config(tmp_path))
    data = os.urandom(8_000_000)
    assert (await put(http, url, "big-8m", data)).result is True
    out = tmp_path / "in"
    code, text = await poll("--server", f"{url}/jx", "--receiver-id", "1310001", "--out", out, "--once")
    assert code == 0, text
    assert hashlib.sha256((out / "big-8m").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(p.name for p in out.iterdir()) == [".bmrgw-poll", "big-8m"]  # no temporary file left
    assert (await get(http, url)).result is False  # confirmed


def poll_measured(*args: str | Path, timeout: float) -> tuple[int, str, int]:
    """Run ``bmrgw poll``; its exit code, output and peak RSS in KiB (VmHWM, sampled every 20 ms).

    Not ``ru_maxrss``: at exec the kernel folds the forking pytest's own peak into it.
    """
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen([*BMRGW, "poll", *map(str, args)], stdout=output, stderr=subprocess.STDOUT)
        peak, deadline = 0, time.monotonic() + timeout
        while proc.poll() is None:
            assert time.monotonic() < deadline, "bmrgw poll did not finish in time"
            peak = max(peak, _vm_hwm(proc.pid))
            time.sleep(0.02)
        output.seek(0)
        return proc.returncode, output.read().decode(), peak


def _vm_hwm(pid: int) -> int:
    """VmHWM of ``pid`` once it runs ``bmrgw poll`` (before its exec, /proc shows the forking pytest)."""
    try:
        if b"gateway.cli" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return 0
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)


HUGE = pytest.mark.skipif(not os.environ.get("BMRGW_POLL_1GIB"), reason="1 GiB: set BMRGW_POLL_1GIB=1 to run")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("size", [200 * MIB, pytest.param(1024 * MIB, marks=HUGE)], ids=["200MiB", "1GiB"])
async def test_large_document_is_streamed_to_disk_with_bounded_memory(
        size: int, gateway_process: StartGateway, tmp_path: Path) -> None:
    gw = gateway_process({"gateway": {"max_message_bytes": MIB}}, name="dc-big")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as http:
        body = streamed_put("big", size)
        async with http.post(f"{gw.url}/jx", data=body, headers=action("PutDocument")) as resp:
            assert resp.status == 200, await resp.text()
    expected = hashlib.sha256()
    for n in range(size // MIB):
        expected.update(block(n))
    out = tmp_path / "in"
    started = time.monotonic()
    code, text, peak = await asyncio.to_thread(
        poll_measured, "--server", f"{gw.url}/jx", "--receiver-id", "1310001", "--out", out, "--once", timeout=1500)
    elapsed = time.monotonic() - started
    assert code == 0, text
    got = hashlib.sha256()
    with (out / "big").open("rb") as fh:
        while piece := fh.read(MIB):
            got.update(piece)
    assert got.hexdigest() == expected.hexdigest()
    print(f"bmrgw poll: {size // MIB} MiB in {elapsed:.1f} s ({size / MIB / elapsed:.0f} MiB/s), "
          f"peak RSS {peak // 1024} MiB")
    assert 0 < peak < 150 * 1024, f"bmrgw poll peaked at {peak // 1024} MiB receiving {size // MIB} MiB"
    assert "round done: 1 received" in text


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("compression", ["", "gzip"], ids=["plain", "gzip"])
async def test_large_upload_is_streamed_from_disk_with_bounded_memory(
        compression: str, gateway_process: StartGateway, tmp_path: Path) -> None:
    # Uploads went through zeep, which held the file, its base64 and the envelope in memory at once.
    gw = gateway_process({"gateway": {"max_message_bytes": MIB}}, name="dc-up")
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    size = 200 * MIB
    expected = hashlib.sha256()
    with (outbox / "big.bin").open("wb") as fh:
        for n in range(size // MIB):
            fh.write(block(n))
            expected.update(block(n))
    poll_yaml = tmp_path / "poll.yaml"
    write_yaml(poll_yaml, {"partners": {"up": {"server": f"{gw.url}/jx", "receiver_id": "1310001", "out": "in",
                                               "outbox": "outbox", "compression": compression or "none"}}})
    started = time.monotonic()
    code, text, peak = await asyncio.to_thread(poll_measured, "--config", poll_yaml, "--once", timeout=800)
    elapsed = time.monotonic() - started
    assert code == 0, text
    listed = subprocess.run([*BMRGW, "jx", "list", "--receiver", "DC", "--format", "json", "--config",
                             str(gw.config)], capture_output=True, text=True, check=True)
    row = json.loads(listed.stdout)
    assert row["compress_type"] == compression
    if not compression:
        assert (row["size"], row["sha256"]) == (size, expected.hexdigest())
    else:
        assert row["size"] < size // 2
    print(f"bmrgw poll upload ({compression or 'plain'}): {size // MIB} MiB in {elapsed:.1f} s, "
          f"peak RSS {peak // 1024} MiB")
    assert 0 < peak < 150 * 1024, f"bmrgw poll peaked at {peak // 1024} MiB sending {size // MIB} MiB"


async def test_once_against_a_dead_gateway_exits_1(tmp_path: Path) -> None:
    from .conftest import free_port
    started = time.monotonic()
    code, text = await poll("--server", f"http://127.0.0.1:{free_port()}/jx", "--receiver-id", "1",
                            "--out", tmp_path / "in", "--once")
    assert code == 1 and "network failure: GetDocument: connection refused" in text
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
            documents = [p for p in out.iterdir() if p.is_file() and not p.name.startswith(".")]  # not temp files
            if len(documents) >= len(sent) and (await get(http, gw2.url)).result is False:
                break
            await asyncio.sleep(0.3)
        assert proc.returncode is None, "the poller must survive the gateway being down"
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()
           and not p.name.startswith(".")}
    assert got == sent  # every document exactly once, none lost, none partial
    assert "network failure" in err.decode()
