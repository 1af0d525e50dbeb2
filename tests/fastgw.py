"""Gateways started in this process the way ``bmrgw serve`` starts them, and raw HTTP to them: what the
fast path's tests (``test_relay_fast.py``, ``test_api_fast.py``) share.

:func:`start` runs :func:`gateway.serve.server.listen` (aiohttp's runner behind ListenSite with the fast
path in front) on a real loopback socket; :class:`Gateway` exposes the fast path's counters, so a test
knows which way a request went.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.relay.fast import FastPath
from gateway.relay.limits import ListenSite
from gateway.serve.app import AppOptions, make_app
from gateway.serve.server import listen
from routing.config import parse_config

from .conftest import write_yaml

__all__ = ["Gateway", "Start", "exchange", "normal", "start", "status_of"]


@dataclass
class Gateway:
    url: str
    site: ListenSite
    runner: web.AppRunner
    db: Path
    host: str
    port: int

    @property
    def fast(self) -> FastPath:
        assert isinstance(self.site.fast, FastPath)
        return self.site.fast


Start = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []

    async def run(config: dict[str, Any]) -> Gateway:
        gw = config.setdefault("gateway", {})
        gw.setdefault("name", "gw")
        gw.setdefault("db", f"sqlite:///{tmp_path}/gw-{len(runners)}.db")
        gw.setdefault("data_dir", str(tmp_path / f"var-{len(runners)}"))
        gw.setdefault("logs", {"enabled": True})
        source = tmp_path / f"endpoints-{len(runners)}.yaml"
        write_yaml(source, config)
        parsed = parse_config(config, source=source)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        runner, site = await listen(make_app(parsed, AppOptions(watch_config=False)), parsed, sock)
        runners.append(runner)
        port = sock.getsockname()[1]
        return Gateway(f"http://127.0.0.1:{port}", site, runner, tmp_path / f"gw-{len(runners) - 1}.db", "127.0.0.1", port)

    yield run
    for runner in runners:
        if runner.server is not None:
            await runner.cleanup()


async def exchange(gw: Gateway, *parts: bytes, quiet: float = 0.5, pause: float = 0.0) -> bytes:
    """Send ``parts`` (``pause`` s apart) on one connection; everything read until it closes or is quiet."""
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    try:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        received = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), quiet)
            except TimeoutError:
                return received
            except ConnectionResetError:
                return received + b"<reset>"
            if not chunk:
                return received + b"<closed>"
            received += chunk
    finally:
        writer.close()


def normal(data: bytes) -> bytes:
    """``data`` with message ids and ``Date`` values replaced (they change from run to run)."""
    data = re.sub(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", b"<id>", data)
    return re.sub(rb"Date: [^\r]*", b"Date: *", data)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])
