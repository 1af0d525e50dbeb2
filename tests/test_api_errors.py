"""The HTTP API relay's own errors as application/problem+json (RFC 9457) with the SOAP faults' codes,
and its failover rules, against real loopback servers (issue 23, item 1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.logs.tables import LogFilter

from .apihelp import JsonBackend, closing_server, raw_request, start_json_backend
from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import GatewayFactory, free_port, message, soap11_headers
from .records import records

__all__ = ["dev_pki"]


@pytest.fixture
async def api() -> AsyncIterator[JsonBackend]:
    runner, backend = await start_json_backend()
    yield backend
    await runner.cleanup()


def config(tmp_path: Path, endpoints: dict[str, Any], **gateway: Any) -> dict[str, Any]:
    return {"gateway": {"name": "gw-api", "db": f"sqlite:///{tmp_path}/api.db", **gateway}, "endpoints": endpoints}


async def problem(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The answer's problem details; checks the RFC 9457 members and the media type."""
    assert resp.content_type == "application/problem+json", await resp.text()
    body = json.loads(await resp.read())
    assert isinstance(body, dict)
    assert body["status"] == resp.status and body["title"] == body["code"]
    assert body["type"] == f"urn:bmrgw:fault:1#{body['code']}" and body["gateway"] == "gw-api"
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def test_unknown_destination_and_a_mailbox_are_404(gateway: GatewayFactory, http: aiohttp.ClientSession,
                                                          tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, {"box": {"mailbox": "1310001"}}))
    for ap in ("nowhere", "box"):
        async with http.get(f"{url}/api/{ap}/x", headers={"X-Message-Id": f"m-{ap}"}) as resp:
            body = await problem(resp)
            assert (resp.status, body["code"], body["message_id"]) == (404, "UnknownDestination", f"m-{ap}")
            assert resp.headers["X-Message-Id"] == f"m-{ap}"


async def test_unreachable_endpoint_is_502_and_opens_its_circuit(gateway: GatewayFactory,
                                                                 http: aiohttp.ClientSession, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/kaigo"
    url = await gateway(config(tmp_path, {"kaigo": {"url": dead}}, breaker={"failures": 2, "backoff": 30}))
    for _ in range(2):
        async with http.get(f"{url}/api/kaigo/x") as resp:
            body = await problem(resp)
            assert (resp.status, body["code"]) == (502, "EndpointUnavailable") and "cannot connect" in body["detail"]
    async with http.post(f"{url}/api/kaigo/x", data=b"{}") as resp:
        body = await problem(resp)
        assert (resp.status, body["code"], body["info"]) == (502, "EndpointUnavailable", "circuit open")
    async with http.post(f"{url}/soap/kaigo", data=message("valid/soap11-no-header.xml"), headers=soap11_headers()) as resp:
        assert "is open" in await resp.text(), "the SOAP relay and the API relay share the endpoint's circuit"


async def test_slow_endpoint_is_504(gateway: GatewayFactory, api: JsonBackend, http: aiohttp.ClientSession,
                                    tmp_path: Path) -> None:
    api.delay = 2.0
    url = await gateway(config(tmp_path, {"kaigo": {"url": api.url, "timeout": 0.3}}))
    async with http.delete(f"{url}/api/kaigo/x") as resp:
        body = await problem(resp)
        assert (resp.status, body["code"], body["endpoint"]) == (504, "EndpointTimeout", "kaigo")


async def test_busy_endpoint_is_503(gateway: GatewayFactory, api: JsonBackend, http: aiohttp.ClientSession,
                                    tmp_path: Path) -> None:
    api.delay = 1.0
    url = await gateway(config(tmp_path, {"kaigo": {"url": api.url, "max_concurrent": 1, "queue_timeout": 0.1}}))
    first = asyncio.create_task(http.get(f"{url}/api/kaigo/slow"))
    await asyncio.sleep(0.3)
    async with http.get(f"{url}/api/kaigo/x") as resp:
        body = await problem(resp)
        assert (resp.status, body["code"]) == (503, "EndpointBusy")
    async with await first as resp:
        assert resp.status == 200


async def test_disabled_endpoint_is_refused_without_calling_out(gateway: GatewayFactory, api: JsonBackend,
                                                                http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, {"kaigo": {"url": api.url, "disabled": True}}))
    async with http.put(f"{url}/api/kaigo/x", data=b"{}") as resp:
        body = await problem(resp)
        assert (resp.status, body["code"]) == (502, "EndpointUnavailable") and "disabled" in body["detail"]
    assert api.seen == []


async def test_rate_limit_counts_every_method(gateway: GatewayFactory, api: JsonBackend,
                                              http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, {"kaigo": {"url": api.url}}, limits={"client_rate": 0.5, "client_burst": 1}))
    async with http.get(f"{url}/api/kaigo/x") as resp:
        assert resp.status == 200
    for method in ("GET", "POST"):
        async with http.request(method, f"{url}/api/kaigo/x") as resp:
            body = await problem(resp)
            assert (resp.status, body["code"]) == (429, "TooManyRequests") and int(resp.headers["Retry-After"]) >= 1
    assert len(api.seen) == 1


async def test_too_large_bodies_are_413(gateway: GatewayFactory, api: JsonBackend, http: aiohttp.ClientSession,
                                        tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, {"kaigo": {"url": api.url}}, max_attachment_bytes=4096))
    async with http.post(f"{url}/api/kaigo/x", data=b"x" * 5000) as resp:
        body = await problem(resp)
        assert (resp.status, body["code"]) == (413, "MessageTooLarge")

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000
    async with http.post(f"{url}/api/kaigo/x", data=chunked()) as resp:
        if resp.status != 200:  # the refusal may come before or after the endpoint answered
            assert (await problem(resp))["code"] == "MessageTooLarge"
    assert all(seen["size"] <= 4096 + 1000 for seen in api.seen), "never more than the limit passed on"


async def test_a_stalled_caller_is_408(gateway: GatewayFactory, api: JsonBackend, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, {"kaigo": {"url": api.url}}, client_timeout=0.5))
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/kaigo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 408") and b"application/problem+json" in head
    assert api.seen == []


async def test_compressed_bodies_and_signing_endpoints_are_415(gateway: GatewayFactory, api: JsonBackend,
                                                               http: aiohttp.ClientSession, tmp_path: Path,
                                                               dev_pki: DevPki) -> None:
    sign = {"sign": {"key": str(dev_pki.signing.key), "cert": str(dev_pki.signing.cert)}}
    url = await gateway(config(tmp_path, {"kaigo": {"url": api.url}, "signed": {"url": api.url, "wss": sign}}))
    async with http.post(f"{url}/api/kaigo/x", data=b"\x1f\x8b", headers={"Content-Encoding": "gzip"}) as resp:
        assert (resp.status, (await problem(resp))["code"]) == (415, "MalformedMessage")
    async with http.post(f"{url}/api/signed/x", data=b"{}") as resp:
        body = await problem(resp)
        assert resp.status == 415 and "WS-Security" in body["detail"]
    assert api.seen == []


async def test_gateway_errors_are_logged_with_their_codes(gateway: GatewayFactory, http: aiohttp.ClientSession,
                                                          tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/kaigo"
    url = await gateway(config(tmp_path, {"kaigo": {"url": dead}}))
    async with http.get(f"{url}/api/kaigo/x", headers={"X-Message-Id": "dead-1"}) as resp:
        assert resp.status == 502
    status, _, _ = await raw_request(url, "/api/kaigo/%2e%2e/x", headers={"X-Message-Id": "climb-1"})
    assert status == 400
    found = {(r.message_id, r.direction): r for r in records(tmp_path / "api.db", LogFilter(kind="api"))}
    dead_answer = found["dead-1", "response"]
    assert (dead_answer.status, dead_answer.fault_code, dead_answer.http_status) == ("error", "EndpointUnavailable",
                                                                                    502)
    assert found["dead-1", "request"].bytes_out == 0, "a refused connection sent nothing"
    assert found["climb-1", "response"].fault_code == "MalformedMessage"


# -- failover: only when nothing can have left the gateway -----------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_fails_over_when_the_connection_is_refused(method: str, gateway: GatewayFactory, api: JsonBackend,
                                                         http: aiohttp.ClientSession, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/kaigo"
    url = await gateway(config(tmp_path, {"kaigo": {"urls": [dead, f"{api.url}/kaigo"]}}))
    async with http.request(method, f"{url}/api/kaigo/items?x=1", data=b'{"n": 1}',
                            headers={"X-Message-Id": f"fo-{method}"}) as resp:
        answer = await resp.json()
        assert resp.status == 200
    assert (answer["path"], answer["query"]) == ("/kaigo/items", "x=1"), "the path survives the failover"
    logged = {r.direction: r for r in records(tmp_path / "api.db", LogFilter(kind="api"))}
    assert logged["response"].endpoint == f"{api.url}/kaigo"


@pytest.mark.parametrize(("method", "tries"), [("POST", 1), ("PATCH", 1), ("GET", 2), ("DELETE", 2)])
async def test_never_resends_a_request_that_may_have_arrived(method: str, tries: int, gateway: GatewayFactory, api: JsonBackend,
                                                             http: aiohttp.ClientSession, tmp_path: Path) -> None:
    server, closing, got = await closing_server()
    try:
        url = await gateway(config(tmp_path, {"kaigo": {"urls": [f"{closing}/kaigo", f"{api.url}/kaigo"]}}))
        async with http.request(method, f"{url}/api/kaigo/pay", data=b'{"amount": 100}') as resp:
            body = await problem(resp)
            assert (resp.status, body["code"]) == (502, "EndpointUnavailable")
    finally:
        server.close()
        await server.wait_closed()
    # An idempotent request whose connection closed before any answer is retried once on the same
    # connection's URL (RFC 9112 §9.3.1, aiohttp's own rule); a POST or PATCH never.
    assert len(got) == tries and all(g.startswith(f"{method} /kaigo/pay ".encode()) for g in got)
    assert api.seen == [], "the request reached the first URL, so it was not sent again to the second"
