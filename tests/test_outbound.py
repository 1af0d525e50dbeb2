"""Outbound security: https upstreams verified against ``ca``, client certificates, Basic credentials.

Every upstream here is a real TLS server on loopback with certificates made by
gateway.pki; the gateway relays to it as it would to a business AP.
"""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.errors import ConfigError
from gateway.security.pki import Issued
from routing.config import parse_config

from .certs import DevPki, dev_pki  # noqa: F401  (fixture)
from .conftest import GatewayFactory, message, soap11_headers
from .test_relay import fault_of

__all__ = ["dev_pki"]

BODY = message("valid/soap11-routing-header.xml")


class TlsBackend:
    """An https backend that records the Authorization header and client certificate it saw."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else None
        self.seen.append({"path": request.path, "authorization": request.headers.get("Authorization"),
                          "client_cn": subject.get("commonName") if subject else None,
                          "body": await request.read()})
        return web.Response(body=b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
                                 b"<s:Body><ok/></s:Body></s:Envelope>", content_type="text/xml")


TlsFactory = Callable[..., Awaitable[TlsBackend]]


@pytest.fixture
async def tls_backend(dev_pki: DevPki) -> AsyncIterator[TlsFactory]:
    runners: list[web.AppRunner] = []

    async def start(cert: Issued | None = None, *, client_ca: Issued | None = None,
                    host: str = "localhost") -> TlsBackend:
        backend = TlsBackend()
        app = web.Application()
        app.router.add_post("/{tail:.*}", backend.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=dev_pki.server_context(cert, client_ca=client_ca))
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        backend.url = f"https://{host}:{port}"
        return backend

    yield start
    for runner in runners:
        await runner.cleanup()


async def relay(http: aiohttp.ClientSession, base: str) -> tuple[int, bytes]:
    async with http.post(f"{base}/soap", data=BODY, headers=soap11_headers()) as resp:
        return resp.status, await resp.read()


def endpoint(url: str, **security: Any) -> dict[str, Any]:
    return {"gateway": {"name": "gw-tls"}, "endpoints": {"demo": {"url": f"{url}/demo", "timeout": 5, **security}}}


def as_str(**files: Path) -> dict[str, str]:
    return {k: str(v) for k, v in files.items()}


async def test_https_upstream_verified_against_ca(gateway: GatewayFactory, tls_backend: TlsFactory,
                                                  dev_pki: DevPki, http: aiohttp.ClientSession) -> None:
    backend = await tls_backend()
    status, body = await relay(http, await gateway(endpoint(backend.url, **as_str(ca=dev_pki.ca.cert))))
    assert status == 200, body
    assert backend.seen[0]["body"] == BODY and backend.seen[0]["path"] == "/demo"


async def test_ip_address_host_verified_by_san(gateway: GatewayFactory, tls_backend: TlsFactory,
                                              dev_pki: DevPki, http: aiohttp.ClientSession) -> None:
    backend = await tls_backend(host="127.0.0.1")
    status, body = await relay(http, await gateway(endpoint(backend.url, **as_str(ca=dev_pki.ca.cert))))
    assert status == 200, body


@pytest.mark.parametrize(("cert", "problem"), [
    ("other_server", "unable to get local issuer certificate"),
    ("self_signed", "self-signed certificate"),
    ("server_expired", "certificate has expired"),
    ("server_wrong_host", "Hostname mismatch"),
])
async def test_untrusted_upstream_certificates_are_refused(
    gateway: GatewayFactory, tls_backend: TlsFactory, dev_pki: DevPki, http: aiohttp.ClientSession,
    cert: str, problem: str,
) -> None:
    backend = await tls_backend(getattr(dev_pki, cert))
    status, body = await relay(http, await gateway(endpoint(backend.url, **as_str(ca=dev_pki.ca.cert))))
    assert status == 500
    assert fault_of(body)[2] == "EndpointUnavailable"
    assert b"TLS certificate of demo is not accepted" in body and problem.encode() in body
    assert backend.seen == []


async def test_without_ca_the_system_trust_store_still_verifies(
    gateway: GatewayFactory, tls_backend: TlsFactory, dev_pki: DevPki, http: aiohttp.ClientSession,
) -> None:
    backend = await tls_backend(dev_pki.self_signed)
    status, body = await relay(http, await gateway(endpoint(backend.url)))
    assert status == 500 and fault_of(body)[2] == "EndpointUnavailable"
    assert b"self-signed certificate" in body and backend.seen == []


async def test_client_certificate_to_an_upstream_that_requires_one(
    gateway: GatewayFactory, tls_backend: TlsFactory, dev_pki: DevPki, http: aiohttp.ClientSession,
) -> None:
    backend = await tls_backend(client_ca=dev_pki.ca)
    files = as_str(ca=dev_pki.ca.cert, cert=dev_pki.client.cert, key=dev_pki.client.key)
    status, body = await relay(http, await gateway(endpoint(backend.url, **files)))
    assert status == 200, body
    assert backend.seen[0]["client_cn"] == "client"


async def test_missing_client_certificate_is_a_clear_fault(
    gateway: GatewayFactory, tls_backend: TlsFactory, dev_pki: DevPki, http: aiohttp.ClientSession,
) -> None:
    backend = await tls_backend(client_ca=dev_pki.ca)
    status, body = await relay(http, await gateway(endpoint(backend.url, **as_str(ca=dev_pki.ca.cert))))
    assert status == 500 and fault_of(body)[2] == "EndpointUnavailable"
    # OpenSSL's alert when it arrives in time, else a reset with the gateway's hint.
    assert b"certificate required" in body or b"requires a TLS client certificate" in body, body
    assert backend.seen == []


async def test_basic_credentials_from_environment(
    gateway: GatewayFactory, tls_backend: TlsFactory, dev_pki: DevPki, http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEMO_PW", "s3cret:パス")
    backend = await tls_backend()
    base = await gateway(endpoint(backend.url, ca=str(dev_pki.ca.cert),
                                  basic={"user": "gw", "password_env": "DEMO_PW"}))
    async with http.post(f"{base}/soap", data=BODY,
                         headers={**soap11_headers(), "Authorization": "Basic Y2FsbGVyOnB3"}) as resp:
        assert resp.status == 200
    # The gateway's own credentials go upstream; the caller's never do.
    expected = "Basic " + base64.b64encode("gw:s3cret:パス".encode()).decode()
    assert backend.seen[0]["authorization"] == expected


async def test_basic_credentials_from_file_to_a_peer(
    gateway: GatewayFactory, tls_backend: TlsFactory, dev_pki: DevPki, http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    (tmp_path / "peer.pw").write_text("peer-pw\n")
    backend = await tls_backend()
    base = await gateway({
        "gateway": {"name": "gw-tls"},
        "endpoints": {"demo": {"via": "dc-west"}},
        "peers": {"dc-west": {"url": f"{backend.url}/soap", "ca": str(dev_pki.ca.cert),
                              "basic": {"user": "dc-east", "password_file": "peer.pw"}}},
    })
    status, body = await relay(http, base)
    assert status == 200, body
    assert backend.seen[0]["path"] == "/soap/demo"
    assert backend.seen[0]["authorization"] == "Basic " + base64.b64encode(b"dc-east:peer-pw").decode()


# -- configuration ------------------------------------------------------------------

def test_outbound_settings_are_parsed_and_resolved(dev_pki: DevPki, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIGO_PW", "pw")
    folder = dev_pki.ca.cert.parent
    config = parse_config(endpoint("https://localhost:1", ca="ca.pem", cert="client.pem", key="client-key.pem",
                                   basic={"user": "gw", "password_env": "KAIGO_PW"}),
                          source=folder / "endpoints.yaml")
    out = config.endpoints["demo"].outbound  # type: ignore[union-attr]
    assert (out.ca, out.cert, out.key) == (folder / "ca.pem", folder / "client.pem", folder / "client-key.pem")
    assert out.basic is not None and (out.basic.user, out.basic.password) == ("gw", "pw")
    assert "pw'" not in repr(out.basic)  # the password never shows in a repr or a log line


@pytest.mark.parametrize(("security", "message"), [
    ({"basic": {"user": "gw", "password": "plain"}}, "basic.password: a plain password does not belong"),
    ({"basic": {"user": "gw", "password_env": "BMRGW_TEST_UNSET"}}, "environment variable BMRGW_TEST_UNSET is not set"),
    ({"basic": {"user": "gw", "password_file": "/nonexistent/pw"}}, "basic.password_file: no such file"),
    ({"basic": {"user": "gw"}}, "exactly one of password_env or password_file"),
    ({"basic": {"user": "a:b", "password_env": "X"}}, "cannot contain ':'"),
    ({"ca": "/nonexistent/ca.pem"}, "endpoints.demo.ca: no such file '/nonexistent/ca.pem'"),
    ({"cert": "{client}"}, "needs both cert and key"),
    ({"cert": "{client}", "key": "{sign_key}"}, "does not belong to cert"),
    ({"ca": "{client_key}"}, "does not hold PEM certificate"),
    ({"key": "{client}", "cert": "{client}"}, "does not hold an unencrypted PEM private key"),
])
def test_bad_outbound_settings_name_the_problem(dev_pki: DevPki, security: dict[str, Any], message: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BMRGW_TEST_UNSET", raising=False)
    names = {"client": dev_pki.client.cert, "client_key": dev_pki.client.key, "sign_key": dev_pki.signing.key}
    filled = {k: v.format(**names) if isinstance(v, str) else v for k, v in security.items()}
    with pytest.raises(ConfigError) as info:
        parse_config(endpoint("https://localhost:1", **filled))
    assert message in info.value.reason


def test_tls_files_on_a_plain_http_url_are_refused(dev_pki: DevPki) -> None:
    with pytest.raises(ConfigError, match="only apply to an https:// url"):
        parse_config(endpoint("http://127.0.0.1:1", ca=str(dev_pki.ca.cert)))


def test_tls_settings_on_a_via_endpoint_are_refused(dev_pki: DevPki) -> None:
    with pytest.raises(ConfigError, match="set the ca on the peer"):
        parse_config({"endpoints": {"x": {"via": "p", "ca": str(dev_pki.ca.cert)}},
                      "peers": {"p": {"url": "https://localhost:1/soap"}}})


def test_tls_context_is_tls12_or_newer(dev_pki: DevPki) -> None:
    from gateway.relay.upstream import tls_context
    from routing.outbound import Outbound
    ctx = tls_context(Outbound(ca=dev_pki.ca.cert))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


def test_endpoints_show_tells_how_the_upstream_is_secured(dev_pki: DevPki, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from .conftest import BMRGW, write_yaml
    config = endpoint("https://localhost:1", ca=str(dev_pki.ca.cert), cert=str(dev_pki.client.cert),
                      key=str(dev_pki.client.key), basic={"user": "gw", "password_env": "DEMO_PW"},
                      wss={"sign": {"key": str(dev_pki.signing.key), "cert": str(dev_pki.signing.cert)}})
    write_yaml(tmp_path / "endpoints.yaml", config)
    shown = subprocess.run([*BMRGW, "endpoints", "show", "demo", "--config", str(tmp_path / "endpoints.yaml")],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "DEMO_PW": "s3cret"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"trusts:      {dev_pki.ca.cert}" in lines
    assert f"client cert: {dev_pki.client.cert}" in lines
    assert f"signs with:  {dev_pki.signing.cert}" in lines
    assert "basic:       user gw, password from environment variable DEMO_PW" in lines
    assert "s3cret" not in shown.stdout
    missing = subprocess.run([*BMRGW, "endpoints", "show", "demo", "--config", str(tmp_path / "endpoints.yaml")],
                             capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "DEMO_PW"})
    assert missing.returncode == 2 and "environment variable DEMO_PW is not set" in missing.stderr
