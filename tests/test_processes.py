"""Real ``bmrgw serve`` processes: multi-hop routing, loops, hot reload, memory bound."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from .conftest import (
    BMRGW,
    GatewayProcess,
    RecordingBackend,
    free_port,
    message,
    sha256,
    soap11_headers,
    start_app,
)

StartGateway = Callable[..., GatewayProcess]


async def test_two_gateways_route_a_to_b_to_backend(
        gateway_process: StartGateway, backend: RecordingBackend, http: aiohttp.ClientSession) -> None:
    b = gateway_process({"endpoints": {"juki-west": {"url": f"{backend.url}/juki"}}}, name="dc-west")
    a = gateway_process({"endpoints": {"juki-west": {"via": "dc-west"}},
                         "peers": {"dc-west": {"url": f"{b.url}/soap"}}}, name="dc-east")
    body = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>juki-west</r:To>")
    async with http.post(f"{a.url}/soap", data=body, headers=soap11_headers()) as resp:
        assert resp.status == 200
        assert resp.headers["X-Message-Id"] == "msg-0001"
    seen = backend.seen[-1]
    assert (seen.sha256, seen.path) == (sha256(body), "/juki")
    assert seen.headers["Via"] == "1.1 dc-east, 1.1 dc-west"
    assert seen.headers["X-Message-Id"] == "msg-0001"


async def test_fallback_peer_routes_unknown_names_and_stops_at_the_way_back(
        gateway_process: StartGateway, backend: RecordingBackend, http: aiohttp.ClientSession) -> None:
    port_a, port_b = free_port(), free_port()
    gateway_process({"gateway": {"fallback_peer": "dc-east"}, "endpoints": {"zei": {"url": backend.url}},
                     "peers": {"dc-east": {"url": f"http://127.0.0.1:{port_a}/soap"}}}, name="dc-west", port=port_b)
    a = gateway_process({"gateway": {"fallback_peer": "dc-west"},
                         "peers": {"dc-west": {"url": f"http://127.0.0.1:{port_b}/soap"}}}, name="dc-east", port=port_a)
    body = message("valid/soap11-no-header.xml")
    async with http.post(f"{a.url}/soap/zei", data=body, headers=soap11_headers()) as resp:
        assert resp.status == 200
    assert backend.seen[-1].headers["Via"] == "1.1 dc-east, 1.1 dc-west"
    # Neither side knows "kokuho": dc-west must not send it back to dc-east.
    async with http.post(f"{a.url}/soap/kokuho", data=body, headers=soap11_headers()) as resp:
        text = await resp.text()
        assert resp.status == 404
    assert 'code="UnknownDestination"' in text and 'gateway="dc-west"' in text


async def test_loop_between_two_gateways_is_refused(
        gateway_process: StartGateway, http: aiohttp.ClientSession) -> None:
    port_a, port_b = free_port(), free_port()
    gateway_process({"endpoints": {"kaigo": {"via": "dc-east"}},
                     "peers": {"dc-east": {"url": f"http://127.0.0.1:{port_a}/soap"}}}, name="dc-west", port=port_b)
    a = gateway_process({"endpoints": {"kaigo": {"via": "dc-west"}},
                         "peers": {"dc-west": {"url": f"http://127.0.0.1:{port_b}/soap"}}}, name="dc-east", port=port_a)
    body = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>kaigo</r:To>")
    async with http.post(f"{a.url}/soap", data=body, headers=soap11_headers()) as resp:
        text = await resp.text()
        assert resp.status == 500
    assert 'code="RoutingLoop"' in text and 'gateway="dc-east"' in text


async def _tagged_backend(tag: str) -> tuple[web.AppRunner, str]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=f"<ok>{tag}</ok>", content_type="text/xml")
    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    return await start_app(app)


async def _load(http: aiohttp.ClientSession, url: str, body: bytes, stop: asyncio.Event,
                results: list[tuple[float, int, str]]) -> None:
    while not stop.is_set():
        async with http.post(url, data=body, headers=soap11_headers()) as resp:
            results.append((time.monotonic(), resp.status, await resp.text()))


async def _healthz(http: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, Any]:
    async with http.get(f"{gw.url}/healthz") as resp:
        return dict(await resp.json())


async def _wait_for(check: Callable[[], Any], timeout: float) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.slow
async def test_hot_reload_under_continuous_load(
        gateway_process: StartGateway, http: aiohttp.ClientSession) -> None:
    old_runner, old_url = await _tagged_backend("old")
    new_runner, new_url = await _tagged_backend("new")
    config: dict[str, Any] = {"endpoints": {"demo": {"url": old_url}}}
    gw = gateway_process(config, name="dc-reload")
    results: list[tuple[float, int, str]] = []
    stop = asyncio.Event()
    load = [asyncio.create_task(_load(http, f"{gw.url}/soap", message("valid/soap11-routing-header.xml"), stop, results))
            for _ in range(8)]
    try:
        await asyncio.sleep(0.5)
        # The operator's way: the CLI rewrites the file atomically.
        edit = await asyncio.create_subprocess_exec(
            *BMRGW, "endpoints", "set", "demo", "--url", new_url, "--config", str(gw.config),
            stdout=asyncio.subprocess.DEVNULL)
        assert await edit.wait() == 0
        changed = time.monotonic()
        applied = await _wait_for(lambda: any(t > changed and "new" in text for t, _, text in results), 2.0)
        # An invalid file on disk leaves the new table in force and is reported.
        gw.config.write_text("endpoints: {demo: {url: 'not a url'}}\n")
        await asyncio.sleep(1.2)
        health = await _healthz(http, gw)
        assert "endpoints.demo.url" in health["config"]["error"]
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*load)
        await old_runner.cleanup()
        await new_runner.cleanup()
    assert applied < 2.0
    assert len(results) > 100
    assert [r for r in results if r[1] != 200] == []
    assert "new" in results[-1][2]


@pytest.mark.slow
async def test_500_mb_each_way_keeps_gateway_rss_under_150_mb(
        gateway_process: StartGateway, http: aiohttp.ClientSession) -> None:
    size = 500 * 1024 * 1024
    chunk = b"0123456789abcdef" * 4096  # 64 KiB
    envelope = message("valid/soap11-routing-header.xml")
    head, tail = envelope.split(b"<d:text>")
    head += b"<d:text>"
    body_size = len(head) + size + len(tail)
    received = hashlib.sha256()
    sent = hashlib.sha256()

    async def sink_and_answer(request: web.Request) -> web.StreamResponse:
        async for part in request.content.iter_chunked(1 << 20):
            received.update(part)
        response = web.StreamResponse(headers={"Content-Type": "text/xml"})
        response.content_length = size
        await response.prepare(request)
        for _ in range(size // len(chunk)):
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", sink_and_answer)
    runner, backend_url = await start_app(app)
    gw = gateway_process({"gateway": {"max_message_bytes": 2 * size},
                          "endpoints": {"demo": {"url": backend_url, "timeout": 120}}}, name="dc-big")

    async def produce() -> AsyncIterator[bytes]:
        for piece in (head, *(chunk for _ in range(size // len(chunk))), tail):
            sent.update(piece)
            yield piece

    try:
        got = 0
        async with http.post(f"{gw.url}/soap", data=produce(), headers={**soap11_headers(), "Content-Length": str(body_size)},
                             timeout=aiohttp.ClientTimeout(total=600)) as resp:
            assert resp.status == 200
            async for part in resp.content.iter_chunked(1 << 20):
                got += len(part)
        peak_mib = gw.peak_rss_kib() / 1024
    finally:
        await runner.cleanup()
    assert received.hexdigest() == sent.hexdigest()
    assert got == size
    print(f"gateway peak RSS after 500 MB each way: {peak_mib:.1f} MiB")
    assert peak_mib < 150


def test_cli_help_explains_commands(tmp_path: Path) -> None:
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "--help"], capture_output=True, text=True, check=True)
    assert "serve" in out.stdout and "demo-backend" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints: {x: {url: 'nope'}}\n")
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "endpoints.x.url" in run.stderr and "Traceback" not in run.stderr

