"""Failover, circuit breakers and limits: unit tests of the state machines, and fault injection
against real backend processes (tests/faulty.py) through a real gateway on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.errors import ConfigError, EndpointBusy, TooManyRequests
from gateway.logs.records import LogRecord
from gateway.relay.breaker import Breaker, Circuits, State
from gateway.relay.limits import Gate, RateLimiter
from gateway.security.passwords import hash_password
from routing.config import UrlEndpoint, parse_config
from routing.settings import BreakerSettings, LimitSettings
from routing.table import RouteTable

from .conftest import GatewayFactory, RecordingBackend, free_port, message, soap11_headers, start_app
from .records import relay_records

BODY = message("valid/soap11-no-header.xml")


# -- the state machines ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_n_failures_probes_once_and_closes_on_success() -> None:
    clock = FakeClock()
    seen: list[State] = []
    b = Breaker("http://x", BreakerSettings(failures=3, backoff=2, max_backoff=5), clock=clock,
                on_change=lambda br: seen.append(br.state))
    for _ in range(2):
        assert b.allow()
        b.failed("refused")
    assert b.state is State.CLOSED
    b.failed("refused")
    assert b.state is State.OPEN and not b.allow()  # type: ignore[comparison-overlap]  # mypy narrows the property
    clock.now += 2
    assert b.allow() and b.state is State.HALF_OPEN
    assert not b.allow(), "only one probe while half-open"
    b.failed("refused again")
    assert b.state is State.OPEN and b.backoff == 4
    clock.now += 3.9
    assert not b.allow()
    clock.now += 0.1
    assert b.allow()
    b.failed("still")
    assert b.backoff == 5, "the back-off doubles up to max_backoff"
    clock.now += 5
    assert b.allow()
    b.succeeded()
    assert (b.state, b.failures, b.backoff) == (State.CLOSED, 0, 2)
    assert seen == [State.OPEN, State.HALF_OPEN, State.OPEN, State.HALF_OPEN, State.OPEN, State.HALF_OPEN,
                    State.CLOSED]


def test_success_in_between_clears_the_count_and_an_abandoned_probe_frees_the_slot() -> None:
    clock = FakeClock()
    b = Breaker("http://x", BreakerSettings(failures=2, backoff=1), clock=clock)
    b.failed("a")
    b.succeeded()
    b.failed("b")
    assert b.state is State.CLOSED, "failures must be consecutive"
    b.failed("c")
    clock.now += 1
    assert b.allow()
    b.abandoned()
    assert b.allow(), "a probe that told nothing lets the next request probe"


def test_circuits_forget_urls_that_left_the_table_and_reset_closes() -> None:
    circuits = Circuits(BreakerSettings(failures=1))
    circuits.get("http://old").failed("x")
    circuits.get("http://kept").failed("x")
    assert circuits.keep({"http://kept", "http://new"}, BreakerSettings(failures=1)) == ["http://old"]
    assert circuits.get("http://old").state is State.CLOSED, "a URL back in the table starts closed"
    assert circuits.reset(["http://kept"]) == 1
    assert circuits.get("http://kept").state is State.CLOSED


async def test_gate_queues_in_order_and_refuses_after_the_queue_timeout() -> None:
    gate = Gate("slow", limit=1, timeout=0.2)
    await gate.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await gate.acquire()
        order.append(i)
        await asyncio.sleep(0.01)
        gate.release()

    waiters = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0.05)
    assert gate.queued == 3
    gate.release()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2] and gate.active == 0
    await gate.acquire()
    started = time.monotonic()
    with pytest.raises(EndpointBusy):
        await gate.acquire()
    assert 0.18 < time.monotonic() - started < 1.0
    assert (gate.active, gate.queued) == (1, 0)


def test_rate_limiter_token_bucket_per_caller() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    settings = LimitSettings(client_rate=2, client_burst=2)
    limiter.take("a", settings)
    limiter.take("a", settings)
    with pytest.raises(TooManyRequests):
        limiter.take("a", settings)
    limiter.take("b", settings)  # another caller has its own bucket
    clock.now += 0.5
    limiter.take("a", settings)  # one token back after 1/rate s
    assert limiter.refused == 1


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    ({"endpoints": {"a": {"urls": []}}}, "endpoints.a.urls: must be a list of 1 to 16 URLs"),
    ({"endpoints": {"a": {"urls": ["http://h/a", "ftp://h/a"]}}}, "endpoints.a.urls[1]"),
    ({"endpoints": {"a": {"urls": ["http://h/a", "http://h/a"]}}}, "the same URL twice"),
    ({"endpoints": {"a": {"url": "http://h/a", "urls": ["http://h/b"]}}}, "exactly one of url or via"),
    ({"endpoints": {"a": {"url": "http://h/a", "max_concurrent": 0}}}, "endpoints.a.max_concurrent"),
    ({"endpoints": {"a": {"url": "http://h/a", "queue_timeout": -1}}}, "endpoints.a.queue_timeout"),
    ({"peers": {"p": {"url": "http://h", "urls": ["http://g"]}}}, "peers.p: needs a url (or urls"),
    ({"gateway": {"breaker": {"failures": 0}}}, "gateway.breaker.failures"),
    ({"gateway": {"breaker": {"backoff": 10, "max_backoff": 5}}}, "gateway.breaker.max_backoff"),
    ({"gateway": {"limits": {"client_burst": 5}}}, "client_burst: only applies together with client_rate"),
    ({"gateway": {"limits": {"max_connections": "many"}}}, "gateway.limits.max_connections"),
    ({"gateway": {"limits": {"rate": 5}}}, "gateway.limits: unknown key 'rate'"),
    ({"gateway": {"drain_timeout": -1}}, "gateway.drain_timeout"),
    ({"gateway": {"header_timeout": 0}}, "gateway.header_timeout: must be a number between 0.1 and 3600"),
    ({"gateway": {"keepalive_timeout": "long"}}, "gateway.keepalive_timeout: must be a number"),
    ({"gateway": {"watchdog_timeout": 1}}, "gateway.watchdog_timeout: must be a number between 2 and 3600"),
    ({"gateway": {"limits": {"max_connections_per_address": 0}}}, "gateway.limits.max_connections_per_address"),
])
def test_invalid_resilience_settings_name_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config)
    assert message in info.value.reason


def test_resilience_settings_parse_with_defaults() -> None:
    config = parse_config({"gateway": {"limits": {"client_rate": 3}, "drain_timeout": 5},
                           "endpoints": {"a": {"urls": ["http://h1/a", "http://h2/a"], "max_concurrent": 4},
                                         "b": {"url": "http://h/b"}}})
    a, b = config.endpoints["a"], config.endpoints["b"]
    assert isinstance(a, UrlEndpoint) and isinstance(b, UrlEndpoint)
    assert (a.url, a.failover, a.max_concurrent, a.queue_timeout) == ("http://h1/a", ("http://h1/a", "http://h2/a"),
                                                                       4, 5.0)
    assert (b.failover, b.max_concurrent) == (("http://h/b",), None)
    assert config.gateway.limits.burst == 6 and config.gateway.drain_timeout == 5
    assert config.gateway.breaker == BreakerSettings()
    g = config.gateway
    assert (g.header_timeout, g.keepalive_timeout, g.watchdog_timeout) == (10.0, 30.0, 30.0)
    assert g.limits.max_connections_per_address is None


def test_endpoints_set_url_replaces_a_failover_list_only_when_told(tmp_path: Path) -> None:
    from gateway.cli import main
    from routing.config import load_config

    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints:\n  a:\n    urls: [http://h1/a, http://h2/a]   # two hosts\n    timeout: 5\n")
    assert main(["endpoints", "set", "a", "--url", "http://h3/a", "--config", str(path)]) == 2  # issue 22
    assert main(["endpoints", "set", "a", "--url", "http://h3/a", "--no-failover", "--config", str(path)]) == 0
    a = load_config(path).endpoints["a"]
    assert isinstance(a, UrlEndpoint) and a.failover == ("http://h3/a",) and a.timeout == 5


# -- fault injection with real backend processes -------------------------------------


class Faulty:
    """A tests/faulty.py process."""

    def __init__(self, mode: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/ap"
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.faulty", mode, str(self.port)],
                                     stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ready\n"

    async def got(self) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.to_thread(self.proc.stdout.readline)).decode().strip()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def faulty() -> Iterator[Callable[[str], Faulty]]:
    started: list[Faulty] = []

    def start(mode: str) -> Faulty:
        started.append(Faulty(mode))
        return started[-1]

    yield start
    for f in started:
        f.stop()


def _config(tmp_path: Path, endpoints: dict[str, Any], **gateway: Any) -> dict[str, Any]:
    return {"gateway": {"name": "gw-res", "db": f"sqlite:///{tmp_path}/res.db", **gateway}, "endpoints": endpoints}


async def _post_bytes(http: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async def chunks() -> Any:
        for i in range(0, len(body), 64 * 1024):
            yield body[i:i + 64 * 1024]

    async with http.post(url, data=chunks(), headers=soap11_headers()) as resp:
        await resp.read()
        return resp.status


def _refusing_url() -> str:
    return f"http://127.0.0.1:{free_port()}/gone"


async def _post(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with http.post(url, data=BODY, headers=headers or soap11_headers()) as resp:
        return resp.status, await resp.text()


async def _logged(db: Path, count: int, kind: str = "relay") -> list[LogRecord]:
    deadline = time.monotonic() + 3
    while len(found := await asyncio.to_thread(relay_records, db, kind)) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return found


async def test_refused_first_url_fails_over_to_the_second(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    dead = _refusing_url()
    gw = await gateway(_config(tmp_path, {"kaigo": {"urls": [dead, f"{backend.url}/kaigo"]}}))
    status, _ = await _post(http, f"{gw}/soap/kaigo")
    assert status == 200 and len(backend.seen) == 1
    request, response = await _logged(tmp_path / "res.db", 2)
    assert request.endpoint == response.endpoint == f"{backend.url}/kaigo", "the log names the URL it went to"
    async with http.get(f"{gw}/metrics") as resp:
        metrics = await resp.text()
    assert "bmrgw_failovers_total 1.0" in metrics


async def test_a_peer_with_two_urls_fails_over_to_the_second_gateway(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    west = await gateway({"gateway": {"name": "dc-west"}, "endpoints": {"juki": {"url": backend.url}}})
    config = _config(tmp_path, {"juki": {"via": "dc-west"}})
    east = await gateway({**config, "peers": {"dc-west": {"urls": [_refusing_url(), f"{west}/soap"]}}})
    status, _ = await _post(http, f"{east}/soap/juki")
    assert status == 200
    assert backend.seen[-1].headers["Via"] == "1.1 gw-res, 1.1 dc-west"


async def test_every_url_refusing_is_endpoint_unavailable(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, {"kaigo": {"urls": [_refusing_url(), _refusing_url()]}}))
    status, text = await _post(http, f"{gw}/soap/kaigo")
    assert status == 500 and 'code="EndpointUnavailable"' in text and "cannot connect" in text
    request, _ = await _logged(tmp_path / "res.db", 2)
    assert (request.status, request.bytes_out) == ("error", 0), "the log says nothing left the gateway"


async def test_a_streamed_body_fails_over_whole(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    from .conftest import sha256

    gw = await gateway(_config(tmp_path, {"kaigo": {"urls": [_refusing_url(), backend.url]}}))
    big = BODY.replace(b"<soap:Body>", b"<soap:Body><pad>" + b"p" * 1_000_000 + b"</pad>")
    assert (await _post_bytes(http, f"{gw}/soap/kaigo", big)) == 200
    assert (backend.seen[-1].size, backend.seen[-1].sha256) == (len(big), sha256(big))


async def test_backend_killed_mid_request_is_not_resent(
        gateway: GatewayFactory, backend: RecordingBackend, faulty: Callable[[str], Faulty],
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    victim = faulty("hang")
    gw = await gateway(_config(tmp_path, {"kaigo": {"urls": [victim.url, backend.url], "timeout": 10}}))
    call = asyncio.create_task(_post(http, f"{gw}/soap/kaigo"))
    assert await victim.got() == "got 1"
    victim.proc.kill()
    status, text = await call
    assert status == 500 and 'code="EndpointUnavailable"' in text
    assert backend.seen == [], "a request that reached a backend is never sent to another"


async def test_hanging_backend_times_out_and_is_not_resent(
        gateway: GatewayFactory, backend: RecordingBackend, faulty: Callable[[str], Faulty],
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    hang = faulty("hang")
    gw = await gateway(_config(tmp_path, {"kaigo": {"urls": [hang.url, backend.url], "timeout": 0.5}}))
    started = time.monotonic()
    status, text = await _post(http, f"{gw}/soap/kaigo")
    assert status == 500 and 'code="EndpointTimeout"' in text
    assert 0.4 < time.monotonic() - started < 5
    assert backend.seen == []


async def test_backend_not_accepting_connections_times_out_at_connect_and_fails_over(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    with socket.socket() as full, socket.socket() as filler:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # never accepts: once one connection waits, new ones hang in SYN
        filler.connect(full.getsockname())
        hung = f"http://127.0.0.1:{full.getsockname()[1]}/ap"
        gw = await gateway(_config(tmp_path, {"kaigo": {"urls": [hung, backend.url], "timeout": 0.5}}))
        started = time.monotonic()
        status, _ = await _post(http, f"{gw}/soap/kaigo")
    assert status == 200 and len(backend.seen) == 1, "nothing was sent to the hung one: safe to fail over"
    assert 0.4 < time.monotonic() - started < 5


async def test_backend_resetting_after_headers_is_endpoint_unavailable_and_not_resent(
        gateway: GatewayFactory, backend: RecordingBackend, faulty: Callable[[str], Faulty],
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    reset = faulty("reset")  # a small answer: the gateway reads it whole before answering
    gw = await gateway(_config(tmp_path, {"kaigo": {"urls": [reset.url, backend.url]}}))
    status, text = await _post(http, f"{gw}/soap/kaigo")
    assert status == 500 and 'code="EndpointUnavailable"' in text
    assert backend.seen == []


async def test_backend_resetting_a_streamed_answer_cuts_the_caller_off_and_is_not_resent(
        gateway: GatewayFactory, backend: RecordingBackend, faulty: Callable[[str], Faulty],
        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    reset = faulty("reset-big")
    gw = await gateway(_config(tmp_path, {"kaigo": {"urls": [reset.url, backend.url]}}))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{gw}/soap/kaigo", data=BODY, headers=soap11_headers()) as resp:
            assert resp.status == 200
            await resp.read()
    assert backend.seen == []
    _, response = await _logged(tmp_path / "res.db", 2)
    assert response.status == "error", "the broken answer is logged as an error"


async def _metric(http: aiohttp.ClientSession, gw: str, line_start: str) -> float | None:
    async with http.get(f"{gw}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return None


async def _answering(port: int, delay: float = 0.0) -> web.AppRunner:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(delay)
        return web.Response(text="<ok/>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner, _ = await start_app(app, port)
    return runner


async def test_breaker_open_half_open_close_cycle(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/kaigo"
    gw = await gateway(_config(tmp_path, {"kaigo": {"url": url}}, breaker={"failures": 2, "backoff": 0.5}))
    state = f'bmrgw_circuit_state{{url="{url}"}}'
    for _ in range(2):
        status, text = await _post(http, f"{gw}/soap/kaigo")
        assert "cannot connect" in text
    assert await _metric(http, gw, state) == 2
    runner = await _answering(port, delay=1.0)  # the probe stays in flight while we look
    try:
        status, text = await _post(http, f"{gw}/soap/kaigo")
        assert status == 500 and "circuit of" in text and "is open" in text, "open: fail fast, no connection"
        await asyncio.sleep(0.5)
        probe = asyncio.create_task(_post(http, f"{gw}/soap/kaigo"))
        await asyncio.sleep(0.1)
        assert await _metric(http, gw, state) == 1
        status, text = await _post(http, f"{gw}/soap/kaigo")
        assert status == 500 and "is open" in text, "half-open lets one probe through, no more"
        assert (await probe)[0] == 200
        assert await _metric(http, gw, state) == 0
        assert (await _post(http, f"{gw}/soap/kaigo"))[0] == 200
    finally:
        await runner.cleanup()


async def test_changing_an_endpoints_url_resets_its_breaker(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    from .conftest import write_yaml

    dead = _refusing_url()
    config = _config(tmp_path, {"kaigo": {"url": dead}}, breaker={"failures": 1, "backoff": 60})
    gw = await gateway(config, watch=True)
    await _post(http, f"{gw}/soap/kaigo")
    assert await _metric(http, gw, f'bmrgw_circuit_state{{url="{dead}"}}') == 2
    config["endpoints"]["kaigo"]["url"] = backend.url
    write_yaml(tmp_path / "endpoints-0.yaml", config)
    deadline = time.monotonic() + 5
    while (status := (await _post(http, f"{gw}/soap/kaigo"))[0]) != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert status == 200
    assert await _metric(http, gw, f'bmrgw_circuit_state{{url="{dead}"}}') is None, "the old URL's breaker is gone"


async def test_endpoint_at_its_limit_queues_then_refuses_with_endpoint_busy(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    port = free_port()
    runner = await _answering(port, delay=0.6)
    try:
        gw = await gateway(_config(tmp_path, {"slow": {"url": f"http://127.0.0.1:{port}/slow", "max_concurrent": 2,
                                                       "queue_timeout": 0.3}}))
        results = await asyncio.gather(*(_post(http, f"{gw}/soap/slow") for _ in range(4)))
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 200, 503, 503]
        assert all('code="EndpointBusy"' in text for status, text in results if status == 503)
    finally:
        await runner.cleanup()


async def test_slots_come_back_after_streamed_answers_and_failures(
        gateway: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    big = b"<a>" + b"x" * (1024 * 1024) + b"</a>"  # over SMALL_BODY: the answer streams

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=big, content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner, base = await start_app(app)
    try:
        gw = await gateway(_config(tmp_path, {
            "big": {"url": base, "max_concurrent": 1, "queue_timeout": 0.5},
            "gone": {"url": _refusing_url(), "max_concurrent": 1, "queue_timeout": 0.5}}))
        for _ in range(3):
            async with http.post(f"{gw}/soap/big", data=BODY, headers=soap11_headers()) as resp:
                assert resp.status == 200 and len(await resp.read()) == len(big)
            assert (await _post(http, f"{gw}/soap/gone"))[0] == 500
        for name in ("big", "gone"):
            assert await _metric(http, gw, f'bmrgw_endpoint_in_flight{{endpoint="{name}"}}') == 0
    finally:
        await runner.cleanup()


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


async def _latencies(http: aiohttp.ClientSession, url: str, count: int, concurrency: int) -> list[float]:
    samples: list[float] = []

    async def one_after_another(n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            status, _ = await _post(http, url)
            assert status == 200
            samples.append(time.perf_counter() - started)

    await asyncio.gather(*(one_after_another(count // concurrency) for _ in range(concurrency)))
    return samples


async def _held_backend(release: asyncio.Event) -> tuple[web.AppRunner, str]:
    """A backend that answers only once ``release`` is set: a slow endpoint the test can switch."""
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.Response(text="<ok/>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    return await start_app(app)


async def test_a_slow_endpoint_at_its_limit_does_not_delay_a_fast_one(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path) -> None:
    release = asyncio.Event()
    slow, slow_url = await _held_backend(release)
    endpoints = {"fast": {"url": backend.url},
                 "slow": {"url": f"{slow_url}/slow", "max_concurrent": 5, "queue_timeout": 30}}
    unloaded: list[float] = []
    loaded: list[float] = []
    try:
        gw = await gateway(_config(tmp_path, endpoints, logs={"enabled": False}))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await _latencies(http, f"{gw}/soap/fast", 100, 4)  # warm-up
            # Rounds alternate, so that other work on the shared machine hits both sides alike.
            # The test process carries the whole suite's heap; a full collection in one round
            # would measure pytest, not the gateway (which runs alone in production).
            gc.collect()
            gc.freeze()
            for _ in range(5):
                unloaded.append(_p99(await _latencies(http, f"{gw}/soap/fast", 500, 4)))
                release.clear()
                load = [asyncio.create_task(_post(http, f"{gw}/soap/slow")) for _ in range(50)]
                while (await _metric(http, gw, 'bmrgw_endpoint_queued{endpoint="slow"}') or 0) < 40:
                    await asyncio.sleep(0.01)
                loaded.append(_p99(await _latencies(http, f"{gw}/soap/fast", 500, 4)))
                assert await _metric(http, gw, 'bmrgw_endpoint_queued{endpoint="slow"}') == 45, \
                    "the slow endpoint stayed at its limit, with its queue, while the fast one was measured"
                release.set()
                assert [status for status, _ in await asyncio.gather(*load)] == [200] * 50
    finally:
        gc.unfreeze()
        release.set()
        await slow.cleanup()
    # The median round of each: one round's p99 swings by a third on a shared machine.
    base, under = statistics.median(unloaded), statistics.median(loaded)
    print(f"fast endpoint p99 (median of 5 rounds): unloaded {base * 1000:.2f} ms, slow endpoint at its limit "
          f"{under * 1000:.2f} ms; rounds {[round(x * 1000, 2) for x in unloaded]} {[round(x * 1000, 2) for x in loaded]}")
    # 20 % as the issue asks, plus 1 ms of scheduling jitter on a shared 2-core machine.
    assert under <= base * 1.2 + 0.001


async def test_client_over_its_rate_gets_429_and_another_client_does_not(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path) -> None:
    clients = {name: {"basic": {"user": name, "password_hash": hash_password("pw-" + name)}, "allow": ["*"]}
               for name in ("juki-app", "zei-app")}
    config = _config(tmp_path, {"kaigo": {"url": backend.url}}, limits={"client_rate": 1, "client_burst": 2})
    gw = await gateway({**config, "clients": clients})
    auth = {name: {"Authorization": aiohttp.encode_basic_auth(name, "pw-" + name)} for name in clients}
    async with aiohttp.ClientSession() as http:
        statuses = [(await _post(http, f"{gw}/soap/kaigo", headers={**soap11_headers(), **auth["juki-app"]}))[0]
                    for _ in range(3)]
        async with http.post(f"{gw}/soap/kaigo", data=BODY, headers={**soap11_headers(), **auth["juki-app"]}) as resp:
            text = await resp.text()
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert 'code="TooManyRequests"' in text and "client juki-app" in text
        assert statuses == [200, 200, 429]
        assert (await _post(http, f"{gw}/soap/kaigo", headers={**soap11_headers(), **auth["zei-app"]}))[0] == 200
        assert (await _metric(http, gw, "bmrgw_rate_limited_total")) == 2
    assert len(backend.seen) == 3
    refusals = await _logged(tmp_path / "res.db", 2, kind="limit")
    assert {(r.kind, r.status, r.fault_code, r.http_status, r.client) for r in refusals} == {
        ("limit", "fault", "TooManyRequests", 429, "juki-app")}


async def test_open_mode_rate_limits_per_remote_address(
        gateway: GatewayFactory, backend: RecordingBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    gw = await gateway(_config(tmp_path, {"kaigo": {"url": backend.url}}, limits={"client_rate": 0.5}))
    assert [(await _post(http, f"{gw}/soap/kaigo"))[0] for _ in range(2)] == [200, 429]
    async with http.get(f"{gw}/healthz") as resp:
        assert resp.status == 200, "only POSTs count against the rate"


# -- circuit state and resets through the store (SQLite and PostgreSQL) ---------------


@pytest.mark.parametrize("backend_kind", ["sqlite", "postgresql"])
async def test_two_processes_publish_circuits_and_a_reset_reaches_both(backend_kind: str, tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from gateway.relay.resilience import Resilience
    from gateway.serve.control import Publisher, read_circuits, request_reset
    from routing.watch import LiveTable

    from .pg import pg_schema

    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path}/c.db" if backend_kind == "sqlite" else stack.enter_context(pg_schema())
        engine = create_engine(url)
        stack.callback(engine.dispose)
        config = parse_config({"gateway": {"breaker": {"failures": 1, "backoff": 300}},
                               "endpoints": {"kaigo": {"urls": ["http://h1/k", "http://h2/k"]}}})
        nodes = []
        for node in ("gw.w1", "gw.w2"):
            res = Resilience(LiveTable(config))
            res.plan(RouteTable(config).resolve("kaigo"))  # builds the plans from the table
            publisher = Publisher(engine, node, res)
            await publisher.sync()
            nodes.append((res, publisher))
        for res, publisher in nodes:
            res.circuits.get("http://h1/k").failed("refused")
            await publisher.sync()
        rows = await asyncio.to_thread(read_circuits, engine)
        assert [(r.node, r.url, r.state) for r in rows] == [("gw.w1", "http://h1/k", "open"),
                                                            ("gw.w2", "http://h1/k", "open")]
        await asyncio.to_thread(request_reset, engine, "kaigo")
        for res, publisher in nodes:
            await publisher.sync()
            assert res.circuits.get("http://h1/k").state is State.CLOSED
        assert await asyncio.to_thread(read_circuits, engine) == []
        await asyncio.to_thread(nodes[0][1].withdraw)
