"""Shared fixtures: real loopback servers (backends, gateways) and test messages."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from ruamel.yaml import YAML

from gateway.security.tls import server_context
from gateway.serve.app import AppOptions, make_app
from gateway.serve.demo import make_demo_app
from routing.config import parse_config

DATA = Path(__file__).parent / "data"
BMRGW = [sys.executable, "-m", "gateway.cli"]


def message(name: str) -> bytes:
    """A test message from tests/data (``valid/…`` or ``invalid/…``)."""
    return (DATA / name).read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Seen:
    """One request as a recording backend received it."""

    path: str
    headers: dict[str, str]
    sha256: str
    size: int
    body: bytes | None


@dataclass
class RecordingBackend:
    """A real HTTP backend that records what it receives and answers as told."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    behaviour: Callable[[web.Request, Seen], Awaitable[web.StreamResponse]] | None = None
    keep_bodies_up_to: int = 1024 * 1024


async def _record(backend: RecordingBackend, request: web.Request) -> web.StreamResponse:
    digest = hashlib.sha256()
    size = 0
    kept = bytearray()
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
        if size <= backend.keep_bodies_up_to:
            kept += chunk
    seen = Seen(path=request.path, headers=dict(request.headers), sha256=digest.hexdigest(), size=size,
                body=bytes(kept) if size <= backend.keep_bodies_up_to else None)
    backend.seen.append(seen)
    if backend.behaviour is not None:
        return await backend.behaviour(request, seen)
    version_ct = request.headers.get("Content-Type", "text/xml")
    answer = (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
              b'<s:Body><ok xmlns="urn:test">' + seen.sha256.encode() + b"</ok></s:Body></s:Envelope>")
    return web.Response(body=answer, headers={"Content-Type": version_ct, "X-Backend": "recording"})


async def start_app(app: web.Application, port: int = 0,
                    ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server) and server.sockets
    bound = server.sockets[0].getsockname()[1]
    return runner, f"{'https' if ssl_context else 'http'}://127.0.0.1:{bound}"


@pytest.fixture
async def backend() -> AsyncIterator[RecordingBackend]:
    rec = RecordingBackend()
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await _record(rec, request)

    app.router.add_route("*", "/{tail:.*}", handle)
    runner, base = await start_app(app)
    rec.url = base
    yield rec
    await runner.cleanup()


@pytest.fixture
async def demo_url() -> AsyncIterator[str]:
    """The demo business AP on a real port; its WSDL is at <url>?wsdl."""
    runner, base = await start_app(make_demo_app(name="demo"))
    yield f"{base}/demo"
    await runner.cleanup()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (:func:`tests.pg.pg_schema`) for a test's gateways.  Name it before
    ``gateway`` among the test's arguments: fixtures are torn down in reverse order, so the gateways
    stop before the schema is dropped (dropped under them, their log writer would retry its last
    batch until the 10 s shutdown deadline)."""
    from .pg import pg_schema

    with pg_schema() as url:
        yield url


GatewayFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Start gateways from a config mapping; returns the base URL of each."""
    runners: list[web.AppRunner] = []

    async def start(config: dict[str, Any], *, watch: bool = False, port: int = 0) -> str:
        config.setdefault("gateway", {}).setdefault("db", f"sqlite:///{tmp_path}/bmrgw-{len(runners)}.db")
        source = tmp_path / f"endpoints-{len(runners)}.yaml"
        write_yaml(source, config)
        parsed = parse_config(config, source=source)
        tls = server_context(parsed.gateway.tls) if parsed.gateway.tls else None
        runner, base = await start_app(make_app(parsed, AppOptions(watch_config=watch)), port, tls)
        runners.append(runner)
        return base

    yield start
    for runner in runners:
        await runner.cleanup()


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        YAML(typ="safe", pure=True).dump(data, fh)
    os.replace(tmp, path)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


# -- real gateway processes ----------------------------------------------------

@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    url: str
    config: Path

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"gateway at {url} did not become healthy")


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Run ``bmrgw serve`` as a real process on a free port."""
    procs: list[GatewayProcess] = []

    def start(config: dict[str, Any], *, name: str = "gw", port: int | None = None) -> GatewayProcess:
        port = port or free_port()
        gw = config.setdefault("gateway", {})
        gw.setdefault("name", name)
        gw.setdefault("listen", {"host": "127.0.0.1", "port": port})
        gw.setdefault("db", f"sqlite:///{tmp_path}/{name}.db")
        gw.setdefault("data_dir", str(tmp_path / f"{name}-var"))
        path = tmp_path / f"{name}.yaml"
        write_yaml(path, config)
        proc = subprocess.Popen([*BMRGW, "serve", "--config", str(path), "--log-level", "WARNING"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        gp = GatewayProcess(proc=proc, url=f"http://127.0.0.1:{port}", config=path)
        procs.append(gp)
        wait_healthy(gp.url, proc)
        return gp

    yield start
    for gp in procs:
        gp.proc.terminate()
        try:
            gp.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gp.proc.kill()
            gp.proc.wait()
        if gp.proc.stderr:
            gp.proc.stderr.close()


def soap11_headers(action: str = "urn:bmrgw:demo:1/Echo") -> dict[str, str]:
    return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"'}


def soap12_headers(action: str = "urn:bmrgw:demo:1/Echo") -> dict[str, str]:
    return {"Content-Type": f'application/soap+xml; charset=utf-8; action="{action}"'}

