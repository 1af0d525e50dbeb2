"""The HTTP API relay (/api/{ap}/{path}) against a real JSON backend on loopback: methods, query strings,
headers, path traversal, allow lists, peers and the send/receive log (issue 23, item 1)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.logs.tables import LogFilter
from gateway.security.passwords import hash_password

from .apihelp import JsonBackend, raw_request, start_json_backend
from .conftest import GatewayFactory
from .records import records

PASSWORD = "api-secret"
HASH = hash_password(PASSWORD)


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()}


@pytest.fixture
async def api() -> AsyncIterator[JsonBackend]:
    runner, backend = await start_json_backend()
    yield backend
    await runner.cleanup()


def config(tmp_path: Path, backend: JsonBackend, **endpoint: Any) -> dict[str, Any]:
    return {"gateway": {"name": "gw-api", "db": f"sqlite:///{tmp_path}/api.db"},
            "endpoints": {"kaigo": {"url": f"{backend.url}/kaigo/v1", **endpoint},
                          "zei": {"url": f"{backend.url}/zei"}}}


@pytest.mark.parametrize("method", ["POST", "GET", "PUT", "PATCH", "DELETE"])
async def test_every_method_reaches_the_path_below_the_endpoint_with_its_query(
        method: str, gateway: GatewayFactory, api: JsonBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, api))
    body = json.dumps({"氏名": "山田 太郎", "method": method}).encode() if method not in ("GET", "DELETE") else b""
    async with http.request(method, f"{url}/api/kaigo/persons/42?fields=name&q=%E5%B1%B1", data=body or None,
                            headers={"Content-Type": "application/json", "X-Message-Id": f"api-{method}"}) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
        assert resp.headers["X-Backend"] == "json" and resp.headers["ETag"] == '"v1"'
        assert resp.headers["X-Message-Id"] == f"api-{method}"
    assert answer["method"] == method
    assert answer["path"] == "/kaigo/v1/persons/42"
    assert answer["query"] == "fields=name&q=%E5%B1%B1"
    assert answer["sha256"] == hashlib.sha256(body).hexdigest() and answer["size"] == len(body)
    seen = api.seen[-1]["headers"]
    assert seen["Via"] == "1.1 gw-api" and seen["X-Message-Id"] == f"api-{method}"


async def test_the_endpoint_root_and_a_trailing_slash(gateway: GatewayFactory, api: JsonBackend,
                                                      http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, api))
    async with http.get(f"{url}/api/kaigo?x=1") as resp:
        assert (await resp.json())["path"] == "/kaigo/v1"
    async with http.get(f"{url}/api/kaigo/items/") as resp:
        assert (await resp.json())["path"] == "/kaigo/v1/items/"


@pytest.mark.parametrize("target", [
    "/api/kaigo/../zei/secret", "/api/kaigo/%2e%2e/zei/secret", "/api/kaigo/.%2E/zei", "/api/kaigo/a/%2E%2e/%2e%2e/x",
    "/api/kaigo//etc/passwd", "/api/kaigo/a%2F..%2F..%2Fzei", "/api/kaigo/a%5c..%5cx", "/api/kaigo/./x",
    "/api/kaigo/%00x",
])
async def test_a_path_never_climbs_out_of_the_endpoint(target: str, gateway: GatewayFactory, api: JsonBackend,
                                                      tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, api))
    status, headers, body = await raw_request(url, target)
    assert status == 400, body
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["code"] == "MalformedMessage"
    assert api.seen == [], "nothing reached the backend"


async def test_odd_but_harmless_segments_are_passed_on_encoded_once(gateway: GatewayFactory, api: JsonBackend,
                                                                    tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, api))
    status, _, body = await raw_request(url, "/api/kaigo/%E5%B1%B1%E7%94%B0/a..b/...?x=%2e%2e")
    assert status == 200, body
    seen = api.seen[-1]
    assert seen["raw_path"] == "/kaigo/v1/%E5%B1%B1%E7%94%B0/a..b/...?x=%2e%2e"


async def test_credentials_and_cookies_stay_at_the_gateway_unless_the_endpoint_says_so(
        gateway: GatewayFactory, api: JsonBackend, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    cfg = config(tmp_path, api)
    cfg["endpoints"]["open"] = {"url": f"{api.url}/open", "forward_credentials": True}
    url = await gateway(cfg)
    sent = {"Authorization": "Bearer token-1", "Cookie": "s=1", "X-Bmrgw-Client": "forged",
            "If-Match": '"v1"', "Proxy-Authorization": "Basic eA==", "Accept": "application/json"}
    async with http.put(f"{url}/api/kaigo/x", data=b"{}", headers=sent) as resp:
        assert resp.status == 200
    kept = api.seen[-1]["headers"]
    assert "Authorization" not in kept and "Cookie" not in kept and "Proxy-Authorization" not in kept
    assert "X-Bmrgw-Client" not in kept, "a caller's own X-Bmrgw-Client is never forwarded"
    assert kept["If-Match"] == '"v1"' and kept["Accept"] == "application/json"
    async with http.put(f"{url}/api/open/x", data=b"{}", headers=sent) as resp:
        assert resp.status == 200
    kept = api.seen[-1]["headers"]
    assert kept["Authorization"] == "Bearer token-1" and kept["Cookie"] == "s=1"
    assert "X-Bmrgw-Client" not in kept


async def test_clients_allow_lists_and_the_client_header(gateway: GatewayFactory, api: JsonBackend,
                                                         http: aiohttp.ClientSession, tmp_path: Path) -> None:
    cfg = config(tmp_path, api, forward_credentials=True)
    cfg["clients"] = {"kaigo-app": {"basic": {"user": "kaigo", "password_hash": HASH}, "allow": ["kaigo"]}}
    url = await gateway(cfg)
    async with http.get(f"{url}/api/kaigo/a") as resp:
        assert resp.status == 401 and resp.content_type == "application/problem+json"
        assert (await resp.json(content_type=None))["code"] == "Unauthorized"
        assert "WWW-Authenticate" in resp.headers
    for method in ("GET", "DELETE", "PATCH"):
        async with http.request(method, f"{url}/api/zei/a", headers=basic("kaigo")) as resp:
            problem = await resp.json(content_type=None)
            assert (resp.status, problem["code"], problem["destination"]) == (403, "Forbidden", "zei")
    async with http.get(f"{url}/api/kaigo/a", headers=basic("kaigo")) as resp:
        assert resp.status == 200
    seen = api.seen[-1]["headers"]
    assert seen["X-Bmrgw-Client"] == "kaigo-app"
    assert "Authorization" not in seen, "the gateway login is never passed on, even with forward_credentials"
    assert len(api.seen) == 1


async def test_the_log_holds_both_records_of_an_api_exchange(gateway: GatewayFactory, api: JsonBackend,
                                                             http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, api))
    body = b'{"a": 1}'
    async with http.post(f"{url}/api/kaigo/items?x=1", data=body, headers={"X-Message-Id": "api-log-1"}) as resp:
        answer = await resp.read()
    async with http.get(f"{url}/api/nowhere/x", headers={"X-Message-Id": "api-log-2"}) as resp:
        assert resp.status == 404
    found = records(tmp_path / "api.db", LogFilter(kind="api"))
    by_id = {(r.message_id, r.direction): r for r in found}
    request, response = by_id["api-log-1", "request"], by_id["api-log-1", "response"]
    assert request.kind == response.kind == "api"
    assert (request.to_ap, request.endpoint, request.status) == ("kaigo", f"{api.url}/kaigo/v1", "ok")
    assert request.bytes_in == request.bytes_out == len(body) and request.sha256 == hashlib.sha256(body).hexdigest()
    assert (response.http_status, response.status, response.bytes_out) == (200, "ok", len(answer))
    assert response.sha256 == hashlib.sha256(answer).hexdigest()
    refused = by_id["api-log-2", "response"]
    assert (refused.status, refused.fault_code, refused.http_status) == ("fault", "UnknownDestination", 404)
    assert by_id["api-log-2", "request"].bytes_out == 0, "nothing was sent on"
    assert not records(tmp_path / "api.db", LogFilter(kind="relay"))


async def test_metrics_count_api_exchanges(gateway: GatewayFactory, api: JsonBackend,
                                           http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, api))
    for _ in range(3):
        async with http.get(f"{url}/api/kaigo/a") as resp:
            assert resp.status == 200
    async with http.get(f"{url}/api/nowhere/a") as resp:
        assert resp.status == 404
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    assert 'bmrgw_requests_total{destination="kaigo",status="ok"} 3.0' in text
    assert 'bmrgw_gateway_faults_total{code="UnknownDestination"} 1.0' in text


async def test_through_a_peer_gateway(gateway: GatewayFactory, api: JsonBackend, http: aiohttp.ClientSession,
                                      tmp_path: Path) -> None:
    west = await gateway({"gateway": {"name": "dc-west", "db": f"sqlite:///{tmp_path}/west.db"},
                          "endpoints": {"juki": {"url": f"{api.url}/juki"}}})
    east = await gateway({"gateway": {"name": "dc-east", "db": f"sqlite:///{tmp_path}/east.db"},
                          "peers": {"dc-west": {"url": f"{west}/soap"}},
                          "endpoints": {"juki": {"via": "dc-west"}}})
    async with http.patch(f"{east}/api/juki/residents/7?since=2026-01-01", data=b'{"x":1}',
                          headers={"X-Message-Id": "via-1"}) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    assert (answer["method"], answer["path"], answer["query"]) == ("PATCH", "/juki/residents/7", "since=2026-01-01")
    assert api.seen[-1]["headers"]["Via"] == "1.1 dc-east, 1.1 dc-west"
    east_log = records(tmp_path / "east.db", LogFilter(kind="api"))
    assert {r.endpoint for r in east_log} == {f"{west}/soap/juki"}


async def test_a_loop_between_peers_is_refused(gateway: GatewayFactory, api: JsonBackend,
                                               http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, api))
    async with http.get(f"{url}/api/kaigo/a", headers={"Via": "1.1 dc-x, 1.1 gw-api"}) as resp:
        problem = await resp.json(content_type=None)
        assert (resp.status, problem["code"]) == (508, "RoutingLoop")
    assert api.seen == []


async def test_gateway_not_found_for_other_paths_and_methods(gateway: GatewayFactory, api: JsonBackend,
                                                            http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, api))
    async with http.request("OPTIONS", f"{url}/api/kaigo/a") as resp:
        assert resp.status == 405
    assert api.seen == []
