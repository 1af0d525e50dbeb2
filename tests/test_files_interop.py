"""A non-Python SOAP stack through the gateway: node-soap (npm ``soap``) sends MTOM.

The node client builds its own multipart/related body (its boundary, part
headers and Content-IDs); the gateway must pass it on byte for byte, and
``bmrgw receive`` must accept it as a PutFilePart of ``schemas/file.wsdl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from attachments.transfer.receiver import ReceiveOptions, make_receiver_app

from .conftest import GatewayFactory, RecordingBackend, start_app

NODE_CLIENT = Path(__file__).parent / "interop" / "files"
WSDL = Path(__file__).parent.parent / "schemas" / "file.wsdl"


@pytest.fixture(scope="module")
def node_client() -> Path:
    """The node-soap client, with its npm packages installed once (exact versions from package-lock.json)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the node-soap interop test")
    if not (NODE_CLIENT / "node_modules" / "soap").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, check=True,
                       capture_output=True, timeout=300)
    return NODE_CLIENT / "send.js"


async def _node_send(script: Path, endpoint: str, payload: Path, destination: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(script), str(WSDL), endpoint, str(payload), destination,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(300_000) + b"\r\n--uuid-lookalike\r\n" + os.urandom(1000))
    return path


async def test_node_soap_mtom_is_relayed_byte_for_byte(
        node_client: Path, payload: Path, gateway: GatewayFactory, backend: RecordingBackend) -> None:
    gw = await gateway({"endpoints": {"files": {"url": f"{backend.url}/files"}}})
    result = await _node_send(node_client, f"{gw}/soap", payload, "files")
    sent = result["sent"]
    assert sent["contentType"].startswith('multipart/related; type="application/xop+xml"')
    seen = backend.seen[-1]
    assert (seen.sha256, seen.size) == (sent["sha256"], sent["size"])
    assert seen.headers["Content-Type"] == sent["contentType"]


async def test_node_soap_mtom_file_part_is_received_through_the_gateway(
        node_client: Path, payload: Path, gateway: GatewayFactory, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    runner, receiver = await start_app(make_receiver_app(ReceiveOptions(directory=inbox)))
    try:
        db = tmp_path / "interop.db"
        gw = await gateway({"gateway": {"db": f"sqlite:///{db}"},
                            "endpoints": {"files": {"url": f"{receiver}/files"}}})
        result = await _node_send(node_client, f"{gw}/soap", payload, "files")
    finally:
        await runner.cleanup()
    assert result["ok"], result
    assert result["result"]["status"] == "complete" and result["result"]["published"] == "node-soap.bin"
    assert hashlib.sha256((inbox / "node-soap.bin").read_bytes()).hexdigest() == \
        hashlib.sha256(payload.read_bytes()).hexdigest()
    logged = await _logged_requests(db)
    assert [(r.bytes_in, r.sha256, r.from_ap) for r in logged] == [(result["sent"]["size"], result["sent"]["sha256"],
                                                                     "node-soap")]


async def _logged_requests(db: Path) -> list[Any]:
    """The request records, once the group commit wrote them (within 200 ms)."""
    for _ in range(40):
        found = await asyncio.to_thread(_all_requests, db)
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


def _all_requests(db: Path) -> list[Any]:
    from sqlalchemy import create_engine

    from gateway.logs.tables import LogFilter, read
    engine = create_engine(f"sqlite:///{db}")
    try:
        return [r for r in read(engine, LogFilter()) if r.direction == "request"]
    finally:
        engine.dispose()

