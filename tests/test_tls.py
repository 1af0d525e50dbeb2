"""Inbound TLS and mutual TLS with real certificates made by gateway.security.pki."""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning

from gateway.logs.tables import LogFilter
from gateway.security.pki import Issued, issue
from gateway.security.tls import client_key_problem, server_context
from gateway.serve.app import AppOptions, make_app
from routing.config import parse_config
from routing.settings import TlsSettings

from .certs import DevPki, dev_pki, signing_with  # noqa: F401  (fixture)
from .conftest import (
    BMRGW,
    GatewayFactory,
    RecordingBackend,
    free_port,
    message,
    soap11_headers,
    start_app,
    write_yaml,
)
from .test_auth import HASH, PASSWORD, _fault_code, _wait_records, basic


def client_context(pki: DevPki, cert: Issued | None = None) -> ssl.SSLContext:
    """What a business AP uses: trusts the development CA, presents ``cert`` if given."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def _tls(pki: DevPki, *, mutual: bool) -> dict[str, str]:
    found = {"cert": str(pki.server.cert), "key": str(pki.server.key)}
    if mutual:
        found["client_ca"] = str(pki.ca.cert)
    return found


def _config(tmp_path: Path, pki: DevPki, url: str, *, mutual: bool, clients: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    config: dict[str, Any] = {
        "gateway": {"name": "gw-tls", "db": f"sqlite:///{tmp_path}/tls.db", "tls": _tls(pki, mutual=mutual)},
        "endpoints": {"demo": {"url": url}},
    }
    if clients:
        config["clients"] = clients
    return config


async def _post(url: str, context: ssl.SSLContext, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        async with session.post(f"{url}/soap", data=message("valid/soap11-routing-header.xml"),
                                headers={**soap11_headers(), **(headers or {})}) as resp:
            return resp.status, await resp.read()


def test_only_tls12_and_up_with_forward_secret_aead_suites(dev_pki: DevPki) -> None:
    context = server_context(TlsSettings(cert=str(dev_pki.server.cert), key=str(dev_pki.server.key)))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_NONE  # no client_ca: no client certificate asked for
    suites = context.get_ciphers()
    assert suites and all(s["aead"] for s in suites)
    assert {s["kea"] for s in suites} <= {"kx-ecdhe", "kx-dhe", "kx-any"}  # kx-any: TLS 1.3


def test_mismatched_key_is_a_config_error(dev_pki: DevPki) -> None:
    from gateway.errors import ConfigError
    with pytest.raises(ConfigError, match="cannot use certificate"):
        server_context(TlsSettings(cert=str(dev_pki.server.cert), key=str(dev_pki.client.key)))


async def test_https_relay_and_an_untrusting_client(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path, dev_pki: DevPki) -> None:
    gw = await gateway(_config(tmp_path, dev_pki, backend.url, mutual=False))
    assert gw.startswith("https://")
    assert (await _post(gw, client_context(dev_pki)))[0] == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _post(gw, ssl.create_default_context())  # the system store does not know our CA
    assert len(backend.seen) == 1


async def test_mutual_tls_identifies_the_client_by_subject(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path, dev_pki: DevPki) -> None:
    clients = {"client-app": {"cert_subject": dev_pki.client.subject, "allow": ["demo"], "senders": ["juki"]}}
    gw = await gateway(_config(tmp_path, dev_pki, backend.url, mutual=True, clients=clients))
    status, _ = await _post(gw, client_context(dev_pki, dev_pki.client))
    assert status == 200
    assert {r.client for r in await _wait_records(tmp_path / "tls.db", LogFilter(), 2)} == {"client-app"}


@pytest.mark.parametrize("which", ["none", "other_client", "client_expired"])
async def test_mutual_tls_refuses_missing_foreign_and_expired_certificates(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path, dev_pki: DevPki, which: str) -> None:
    clients = {"client-app": {"cert_subject": dev_pki.client.subject, "allow": ["*"], "senders": ["juki"]}}
    gw = await gateway(_config(tmp_path, dev_pki, backend.url, mutual=True, clients=clients))
    cert = None if which == "none" else getattr(dev_pki, which)
    with pytest.raises(aiohttp.ClientError):
        await _post(gw, client_context(dev_pki, cert))
    assert backend.seen == []


async def test_certificate_of_an_unknown_subject_is_unauthorized(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path, dev_pki: DevPki) -> None:
    stranger = issue(dev_pki.ca, "client", "stranger")
    clients = {"client-app": {"cert_subject": dev_pki.client.subject, "allow": ["*"], "senders": ["juki"]}}
    gw = await gateway(_config(tmp_path, dev_pki, backend.url, mutual=True, clients=clients))
    status, body = await _post(gw, client_context(dev_pki, stranger))
    assert (status, _fault_code(body)) == (401, "Unauthorized")
    assert b"CN=stranger" in body
    assert backend.seen == []


async def test_client_with_certificate_and_password_needs_both(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path, dev_pki: DevPki) -> None:
    clients = {"client-app": {"cert_subject": dev_pki.client.subject, "allow": ["*"], "senders": ["juki"],
                              "basic": {"user": "juki", "password_hash": HASH}}}
    gw = await gateway(_config(tmp_path, dev_pki, backend.url, mutual=True, clients=clients))
    with_cert = client_context(dev_pki, dev_pki.client)
    status, body = await _post(gw, with_cert)
    assert (status, _fault_code(body)) == (401, "Unauthorized")
    assert b"must also log in" in body
    assert (await _post(gw, with_cert, basic("juki", PASSWORD)))[0] == 200
    assert len(backend.seen) == 1


def test_serve_listens_with_tls_and_refuses_a_bad_key(tmp_path: Path, dev_pki: DevPki) -> None:
    port = free_port()
    config: dict[str, Any] = {"gateway": {"name": "gw-tls", "listen": {"host": "127.0.0.1", "port": port},
                          "db": f"sqlite:///{tmp_path}/serve.db", "data_dir": str(tmp_path / "var"),
                          "tls": {"cert": str(dev_pki.server.cert), "key": str(dev_pki.client.key)}}}
    path = tmp_path / "tls.yaml"
    write_yaml(path, config)
    bad = subprocess.run([*BMRGW, "serve", "--config", str(path)], capture_output=True, timeout=30)
    assert bad.returncode == 2 and b"cannot use certificate" in bad.stderr
    config["gateway"]["tls"]["key"] = str(dev_pki.server.key)
    write_yaml(path, config)
    proc = subprocess.Popen([*BMRGW, "serve", "--config", str(path), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        health = _https_health(f"https://127.0.0.1:{port}/healthz", client_context(dev_pki), proc)
        assert health == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"https://127.0.0.1:{port}/soap".encode() in out


def _https_health(url: str, context: ssl.SSLContext, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                return int(resp.status)
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


# -- revocation: gateway.tls.crl (issue 18, finding 9) ---------------------------------------------

def write_crl(path: Path, ca: Issued, revoked: list[Issued], *, updated_ago: float = 60, der: bool = False) -> Path:
    """A CRL of ``ca`` revoking ``revoked``, last updated ``updated_ago`` seconds ago, valid a day."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - dt.timedelta(seconds=updated_ago)).next_update(now + dt.timedelta(days=1)))
    for issued in revoked:
        serial = x509.load_pem_x509_certificate(issued.cert.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - dt.timedelta(hours=1)).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("der", [False, True], ids=["pem", "der"])
async def test_a_revoked_client_certificate_is_refused_at_the_handshake(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path, dev_pki: DevPki, der: bool) -> None:
    revoked = issue(dev_pki.ca, "client", "revoked", folder=tmp_path)
    config = _config(tmp_path, dev_pki, backend.url, mutual=True,
                     clients={"ok": {"cert_subject": dev_pki.client.subject, "allow": ["*"], "senders": ["juki"]},
                              "gone": {"cert_subject": revoked.subject, "allow": ["*"], "senders": ["juki"]}})
    config["gateway"]["tls"]["crl"] = str(write_crl(tmp_path / "ca.crl", dev_pki.ca, [revoked], der=der))
    gw = await gateway(config)
    with pytest.raises(aiohttp.ClientError):
        await _post(gw, client_context(dev_pki, revoked))
    assert (await _post(gw, client_context(dev_pki, dev_pki.client)))[0] == 200
    assert len(backend.seen) == 1


def test_crl_settings_are_checked_when_loaded(tmp_path: Path, dev_pki: DevPki) -> None:
    from gateway.errors import ConfigError
    from routing.config import parse_config
    garbage = tmp_path / "garbage.crl"
    garbage.write_bytes(b"not a CRL")
    foreign = write_crl(tmp_path / "other.crl", dev_pki.other_ca, [])
    cases = {
        "needs client_ca": {**_tls(dev_pki, mutual=False), "crl": str(foreign)},
        "not a CRL": {**_tls(dev_pki, mutual=True), "crl": str(garbage)},
        "not issued by a CA of client_ca": {**_tls(dev_pki, mutual=True), "crl": str(foreign)},
    }
    for problem, tls in cases.items():
        with pytest.raises(ConfigError, match=f"gateway.tls.crl.*{problem}"):
            server_context(parse_config({"gateway": {"tls": tls}}).gateway.tls)  # type: ignore[arg-type]


def test_sighup_reloads_the_crl(tmp_path: Path, dev_pki: DevPki) -> None:
    import os
    import signal
    port = free_port()
    later = issue(dev_pki.ca, "client", "revoked-later", folder=tmp_path)
    crl = write_crl(tmp_path / "ca.crl", dev_pki.ca, [], updated_ago=3600)
    config = {"gateway": {"name": "gw-crl", "listen": {"host": "127.0.0.1", "port": port},
                          "db": f"sqlite:///{tmp_path}/serve.db", "data_dir": str(tmp_path / "var"),
                          "tls": {**_tls(dev_pki, mutual=True), "crl": str(crl)}}}
    path = tmp_path / "crl.yaml"
    write_yaml(path, config)
    proc = subprocess.Popen([*BMRGW, "serve", "--config", str(path), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}/healthz"
    try:
        assert _https_health(url, client_context(dev_pki, later), proc) == 200
        write_crl(crl, dev_pki.ca, [later], updated_ago=60, der=True)  # newer, and now DER
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2, context=client_context(dev_pki, later)):
                    time.sleep(0.2)  # still accepted: the reload has not happened yet
            except OSError:
                break
        else:
            raise AssertionError("the revoked certificate was still accepted 15 s after SIGHUP")
        assert _https_health(url, client_context(dev_pki, dev_pki.client), proc) == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"CRL" in err and b"reloaded" in err


# -- weak client keys (issue 18, item 9's rule for mTLS) -------------------------------------------

@pytest.fixture(scope="module")
def weak_client(dev_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Issued:
    """A real client certificate for a real RSA-1024 key, issued by the trusted CA."""
    return signing_with(dev_pki.ca, "weak", rsa.generate_private_key(public_exponent=65537, key_size=1024),
                        tmp_path_factory.mktemp("weak"))


@pytest.fixture(scope="module")
def dsa_client(dev_pki: DevPki, tmp_path_factory: pytest.TempPathFactory) -> Issued:
    """A real client certificate for a real DSA-2048 key, issued by the trusted CA."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        key = dsa.generate_private_key(key_size=2048)
    return signing_with(dev_pki.ca, "dsa", key, tmp_path_factory.mktemp("dsa"))


def old_client_context(pki: DevPki, cert: Issued) -> ssl.SSLContext:
    """An old business AP's TLS 1.2 client whose OpenSSL still offers weak keys (security level 0)."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert.cert, cert.key)
    return context


async def test_a_client_certificate_with_a_dsa_key_is_refused_and_logged(
        backend: RecordingBackend, tmp_path: Path, dev_pki: DevPki, dsa_client: Issued) -> None:
    # OpenSSL at security level 2 takes a DSA-2048 client certificate over TLS 1.2.
    clients = {"dsa-app": {"cert_subject": dsa_client.subject, "allow": ["*"], "senders": ["juki"]}}
    config = _config(tmp_path, dev_pki, backend.url, mutual=True, clients=clients)
    write_yaml(tmp_path / "endpoints.yaml", config)
    parsed = parse_config(config, source=tmp_path / "endpoints.yaml")
    assert parsed.gateway.tls is not None
    runner, gw = await start_app(make_app(parsed, AppOptions(watch_config=False)), 0, server_context(parsed.gateway.tls))
    try:
        status, body = await _post(gw, old_client_context(dev_pki, dsa_client))
    finally:
        await runner.cleanup()  # writes the refusal counts (issue 17's auth-tally records) to the log
    assert (status, _fault_code(body)) == (401, "Unauthorized")
    assert b"CN=dsa" in body and b"DSA key of 2048 bits" in body
    assert backend.seen == []
    refused = await _wait_records(tmp_path / "tls.db", LogFilter(status="fault"), 1)
    assert (refused[0].kind, refused[0].fault_code, refused[0].http_status, refused[0].client, refused[0].bytes_in) \
        == ("auth-tally", "Unauthorized", 401, "cert:CN=dsa", 1)


async def test_a_client_certificate_with_an_rsa_1024_key_is_refused_at_the_handshake(
        gateway: GatewayFactory, backend: RecordingBackend, tmp_path: Path, dev_pki: DevPki,
        weak_client: Issued) -> None:
    clients = {"weak-app": {"cert_subject": weak_client.subject, "allow": ["*"], "senders": ["juki"]}}
    gw = await gateway(_config(tmp_path, dev_pki, backend.url, mutual=True, clients=clients))
    with pytest.raises(aiohttp.ClientError):
        await _post(gw, old_client_context(dev_pki, weak_client))
    assert backend.seen == []
    context = server_context(TlsSettings(cert=str(dev_pki.server.cert), key=str(dev_pki.server.key),
                                         client_ca=str(dev_pki.ca.cert)))
    assert context.security_level == 2  # pinned by the gateway, not left to how Python was built


@pytest.mark.parametrize(("key", "problem"), [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA key of 1024 bits"),
    (lambda: ec.generate_private_key(ec.SECP192R1()), "EC key of 192 bits"),
    (lambda: ec.generate_private_key(ec.SECP224R1()), "EC key of 224 bits"),
    (lambda: dsa.generate_private_key(key_size=1024), "DSA key of 1024 bits"),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), None),
    (lambda: ec.generate_private_key(ec.SECP256R1()), None),
    (lambda: ed25519.Ed25519PrivateKey.generate(), None),
])
def test_the_client_key_rule_is_the_signing_key_rule(key: Any, problem: str | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)  # DSA
        public = key().public_key()
    found = client_key_problem(public)
    assert found is None if problem is None else (found is not None and problem in found)


def test_a_weak_client_ca_is_a_config_error(tmp_path: Path, dev_pki: DevPki, weak_client: Issued) -> None:
    from gateway.errors import ConfigError
    with pytest.raises(ConfigError, match="RSA key of 1024 bits"):
        server_context(TlsSettings(cert=str(dev_pki.server.cert), key=str(dev_pki.server.key),
                                   client_ca=str(weak_client.cert)))
