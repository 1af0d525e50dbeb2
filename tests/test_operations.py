"""Operating real ``bmrgw serve`` processes: SIGTERM drain, SIGHUP reload, --workers, circuit
reset from the CLI, the global connection limit."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.serve import heap

from .conftest import BMRGW, RecordingBackend, free_port, message, soap11_headers, wait_healthy, write_yaml
from .records import relay_records

BODY = message("valid/soap11-no-header.xml")


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    config: Path
    db: Path
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text()

    def children(self) -> list[int]:
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in text.split()]


Serve = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started: list[Served] = []

    def start(endpoints: dict[str, Any], *, workers: int = 1, node: str | None = None, **gateway: Any) -> Served:
        port = free_port()
        db = tmp_path / "ops.db"
        config = {"gateway": {"name": "gw-ops", "listen": {"host": "127.0.0.1", "port": port},
                              "db": f"sqlite:///{db}", "data_dir": str(tmp_path / "var"), **gateway},
                  "endpoints": endpoints}
        path = tmp_path / "endpoints.yaml"
        write_yaml(path, config)
        stderr = tmp_path / f"serve-{len(started)}.log"
        with stderr.open("wb") as err:
            proc = subprocess.Popen([*BMRGW, "serve", "--config", str(path), "--workers", str(workers),
                                     *(["--node", node] if node else [])], stdout=err, stderr=err)
        served = Served(proc=proc, url=f"http://127.0.0.1:{port}", config=path, db=db, stderr=stderr)
        started.append(served)
        wait_healthy(served.url, proc, timeout=30)
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.terminate()
            try:
                served.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                served.proc.kill()
                served.proc.wait()


def _bmrgw(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BMRGW, *map(str, argv)], capture_output=True, text=True, timeout=60)


async def _slow_backend(delay: float) -> tuple[web.AppRunner, RecordingBackend]:
    from .conftest import start_app

    rec = RecordingBackend()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        rec.seen.append(None)  # type: ignore[arg-type]
        await asyncio.sleep(delay)
        return web.Response(text="<ok/>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner, rec.url = await start_app(app)
    return runner, rec


async def test_sigterm_during_100_requests_finishes_them_and_loses_no_record(serve: Serve) -> None:
    runner, backend = await _slow_backend(delay=1.0)
    try:
        gw = serve({"kaigo": {"url": backend.url}}, drain_timeout=20)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http:
            async def call(i: int) -> int | str:
                try:
                    async with http.post(f"{gw.url}/soap/kaigo", data=BODY,
                                         headers={**soap11_headers(), "X-Message-Id": f"m-{i}"}) as resp:
                        await resp.read()
                        return resp.status
                except aiohttp.ClientError as exc:
                    return type(exc).__name__

            calls = [asyncio.create_task(call(i)) for i in range(100)]
            deadline = time.monotonic() + 10
            while len(backend.seen) < 60 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            gw.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            late = await call(100)
            results = await asyncio.gather(*calls)
        assert await asyncio.to_thread(gw.proc.wait, 30) == 0
    finally:
        await runner.cleanup()
    assert late == "ClientConnectorError", "a stopping gateway accepts no new connection"
    completed = [r for r in results if r == 200]
    print(f"SIGTERM during 100 requests: {len(completed)} completed, {100 - len(completed)} never started")
    assert len(backend.seen) >= 60
    assert len(completed) == len(backend.seen), f"every request that reached the backend completed: {results}"
    assert all(r in (200, "ClientConnectorError", "ServerDisconnectedError", "ClientOSError") for r in results)
    records = await asyncio.to_thread(relay_records, gw.db)
    assert len(records) == 2 * len(completed), "both records of every completed exchange are in the log"
    assert {r.status for r in records} == {"ok"}
    assert "stopped; the send/receive log is flushed" in gw.log()
    assert _bmrgw("logs", "verify", "--config", gw.config).returncode == 0


async def test_a_request_still_running_at_the_drain_timeout_is_cut_off_and_logged(serve: Serve) -> None:
    runner, backend = await _slow_backend(delay=30.0)
    try:
        gw = serve({"kaigo": {"url": backend.url}}, drain_timeout=1)
        async with aiohttp.ClientSession() as http:
            call = asyncio.create_task(http.post(f"{gw.url}/soap/kaigo", data=BODY, headers=soap11_headers()))
            deadline = time.monotonic() + 10
            while not backend.seen and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            started = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(gw.proc.wait, 20) == 0
            assert time.monotonic() - started < 10, "the drain timeout bounds the stop"
            with pytest.raises(aiohttp.ClientError):
                await call
    finally:
        await runner.cleanup()
    records = await asyncio.to_thread(relay_records, gw.db)
    assert [(r.direction, r.status) for r in records] == [("request", "ok"), ("response", "error")]


async def test_sighup_reloads_at_once_and_keeps_the_old_table_when_invalid(
        serve: Serve, backend: RecordingBackend) -> None:
    gw = serve({"kaigo": {"url": backend.url}})
    text = gw.config.read_text()
    gw.config.write_text(text.replace("kaigo:", "zei:"))
    gw.proc.send_signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 5
        while "SIGHUP: config reloaded" not in gw.log() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with http.post(f"{gw.url}/soap/zei", data=BODY, headers=soap11_headers()) as resp:
            assert resp.status == 200
        gw.config.write_text(text.replace("kaigo:", "zei: {url: [not a url]}\n  x:"))
        gw.proc.send_signal(signal.SIGHUP)
        while "SIGHUP: config NOT reloaded" not in gw.log() and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.05)
        async with http.get(f"{gw.url}/healthz") as resp:
            health = await resp.json()
        assert health["config"]["error"], "the refused reload is reported"
        async with http.post(f"{gw.url}/soap/zei", data=BODY, headers=soap11_headers()) as resp:
            assert resp.status == 200, "the old table stays in force"
    assert "SIGHUP: config NOT reloaded, the previous table stays in force" in gw.log()


async def test_workers_share_the_port_restart_after_a_crash_and_keep_separate_chains(
        serve: Serve, backend: RecordingBackend) -> None:
    gw = serve({"kaigo": {"url": backend.url}}, workers=2, node="host-a")
    assert len(gw.children()) == 2
    ready = time.monotonic() + 20  # each worker starts its log writer before it listens
    while not all(f"worker {n}: relaying on" in gw.log() for n in (1, 2)) and time.monotonic() < ready:
        await asyncio.sleep(0.1)
    nodes: set[str] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for i in range(40):
            async with http.post(f"{gw.url}/soap/kaigo", data=BODY,
                                 headers={**soap11_headers(), "X-Message-Id": f"w-{i}"}) as resp:
                assert resp.status == 200
            async with http.get(f"{gw.url}/healthz") as resp:
                nodes.add((await resp.json())["log"]["node"])
        assert nodes == {"host-a.w1", "host-a.w2"}, "both workers answer on the one port"
        # The log is group-committed within 200 ms of an answer: let it land before the crash.
        deadline = time.monotonic() + 5
        while len(await asyncio.to_thread(relay_records, gw.db)) < 80 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        victim = gw.children()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (len(kids := gw.children()) < 2 or victim in kids) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(kids) == 2 and victim not in kids, "the supervisor started a new worker"
        while gw.log().count("worker 1: relaying on") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gw.log().count("SIGHUP: config reloaded") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert gw.log().count("SIGHUP: config reloaded") == 2, "the supervisor passes SIGHUP to every worker"
        for i in range(10):
            async with http.post(f"{gw.url}/soap/kaigo", data=BODY, headers=soap11_headers()) as resp:
                assert resp.status == 200
    gw.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 40) == 0
    records = await asyncio.to_thread(relay_records, gw.db)
    assert {r.node for r in records} == {"host-a.w1", "host-a.w2"}
    assert len(records) == 2 * 50
    assert _bmrgw("logs", "verify", "--config", gw.config).returncode == 0
    found = _bmrgw("logs", "--message-id", "w-7", "--format", "json", "--config", gw.config)
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 2


async def test_endpoints_reset_reaches_the_running_gateway(serve: Serve) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/kaigo"
    gw = serve({"kaigo": {"url": url}}, breaker={"failures": 1, "backoff": 300})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/soap/kaigo", data=BODY, headers=soap11_headers()) as resp:
            assert "cannot connect" in await resp.text()
        deadline = time.monotonic() + 5
        while "open" not in (listing := _bmrgw("endpoints", "list", "--config", gw.config).stdout).split() \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert f"kaigo    open   {url}  gw-ops" in listing
        from .conftest import start_app
        app = web.Application()

        async def answer(request: web.Request) -> web.Response:
            return web.Response(text="<ok/>", content_type="text/xml")

        app.router.add_post("/kaigo", answer)
        runner, _ = await start_app(app, port)
        try:
            async with http.post(f"{gw.url}/soap/kaigo", data=BODY, headers=soap11_headers()) as resp:
                assert "is open" in await resp.text(), "the circuit stays open for its 300 s back-off"
            done = await asyncio.to_thread(_bmrgw, "endpoints", "reset", "kaigo", "--config", gw.config)
            assert done.returncode == 0 and "circuits closed on every running gateway" in done.stdout
            async with http.post(f"{gw.url}/soap/kaigo", data=BODY, headers=soap11_headers()) as resp:
                assert resp.status == 200
        finally:
            await runner.cleanup()
    assert "circuits: all closed" in _bmrgw("endpoints", "list", "--config", gw.config).stdout
    unknown = _bmrgw("endpoints", "reset", "nosuch", "--config", gw.config)
    assert unknown.returncode == 1 and "nosuch" in unknown.stderr


async def test_connections_over_the_limit_get_503_gateway_busy(serve: Serve, backend: RecordingBackend) -> None:
    gw = serve({"kaigo": {"url": backend.url}}, limits={"max_connections": 2})
    port = int(gw.url.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.url}/healthz") as resp:
                text = await resp.text()
                assert resp.status == 503 and 'code="GatewayBusy"' in text
    finally:
        for sock in held:
            sock.close()
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/soap/kaigo", data=BODY, headers=soap11_headers()) as resp:
            assert resp.status == 200, "below the limit again, connections are served"
        async with http.get(f"{gw.url}/metrics") as resp:
            assert "bmrgw_connections_refused_total 1.0" in await resp.text()


def test_the_heap_settles_once_serving_and_again_after_a_reload() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        heap.resettle()  # a process that never settled its heap has nothing to re-settle
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == before
        heap.settle()
        assert gc.get_freeze_count() > 10_000, "modules and their objects are out of the collector's walk"
        assert gc.get_threshold() == (10_000, *before[1:])
        heap.resettle()  # after a reload: still settled
        assert gc.get_freeze_count() > 10_000 and gc.get_threshold() == (10_000, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
