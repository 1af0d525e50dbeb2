"""Certificates reloaded without a restart: the server certificate replaced under load (real TLS clients
connecting continuously) switches with no failed request within 2 s; the client CA and an endpoint's
client certificate follow their files; a half-replaced pair keeps the old one; expiry is shown."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .conftest import BMRGW, GatewayFactory, RecordingBackend, free_port, message, start_app, write_yaml
from .golive import Office, issue_pair, make_office

BODY = message("valid/soap11-routing-header.xml")


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    conf: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def trusting(office: Office, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(office.root))
    if client is not None:
        context.load_cert_chain(*client)
    return context


def get_json(url: str, context: ssl.SSLContext) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5, context=context) as resp:  # noqa: S310 - loopback
        data: dict[str, Any] = json.loads(resp.read())
        return data


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(tls: dict[str, str], office: Office, client: tuple[Path, Path] | None = None,
              endpoints: dict[str, Any] | None = None) -> Served:
        port = free_port()
        conf = tmp_path / "conf"
        path = conf / "endpoints.yaml"
        write_yaml(path, {"gateway": {"name": "gw-reload", "listen": {"host": "127.0.0.1", "port": port},
                                      "db": f"sqlite:///{tmp_path}/reload.db", "data_dir": str(tmp_path / "var"),
                                      "tls": tls},
                          "endpoints": endpoints or {"demo": {"url": "http://127.0.0.1:9/"}}})
        proc = subprocess.Popen([*BMRGW, "serve", "--config", str(path), "--log-level", "WARNING"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        served = Served(proc=proc, port=port, config=path, conf=conf)
        started.append(served)
        deadline = time.monotonic() + 20
        while True:
            try:
                get_json(f"{served.url}/healthz", trusting(office, client))
                return served
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the gateway did not come up"
                time.sleep(0.1)

    yield start
    for s in started:
        s.proc.terminate()
        try:
            s.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
        if s.proc.stderr:
            s.proc.stderr.close()


def conf_with_trust(tmp_path: Path, office: Office) -> Path:
    conf = tmp_path / "conf"
    (conf / "trust").mkdir(parents=True, exist_ok=True)
    (conf / "trust" / "root.pem").write_bytes(office.root.read_bytes())
    return conf


async def exchange(port: int, context: ssl.SSLContext) -> tuple[int, bytes]:
    """One POST /soap on a new TLS connection: the HTTP status and the server certificate it was shown."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(b"POST /soap HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=utf-8\r\n"
                     b'SOAPAction: "urn:bmrgw:demo:1/Echo"\r\nConnection: close\r\n'
                     + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, der


@dataclass
class Load:
    """Clients that each open a new TLS connection per request until stopped."""

    port: int
    context: ssl.SSLContext
    seen: list[tuple[float, int, bytes]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stopping: bool = False

    async def client(self) -> None:
        while not self.stopping:
            try:
                status, der = await self.exchange()
            except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            self.seen.append((time.monotonic(), status, der))
            if status != 200:
                self.failures.append(f"HTTP {status}")

    async def exchange(self) -> tuple[int, bytes]:
        return await exchange(self.port, self.context)


async def test_server_certificate_replaced_under_load_switches_with_no_failed_request(
        tmp_path: Path, serve: Callable[..., Served], backend: RecordingBackend) -> None:
    office = make_office(tmp_path / "office")
    conf = conf_with_trust(tmp_path, office)
    (conf / "tls").mkdir()
    old_cert, old_key = issue_pair(office, conf / "tls", "server")
    new_cert, new_key = issue_pair(office, tmp_path / "renewal", "server")
    served = serve({"cert": str(old_cert), "key": str(old_key)}, office,
                   endpoints={"demo": {"url": backend.url}})
    load = Load(served.port, trusting(office))
    clients = [asyncio.create_task(load.client()) for _ in range(4)]
    await asyncio.sleep(1.5)
    install_started = time.monotonic()
    done = await asyncio.to_thread(subprocess.run, [
        *BMRGW, "pki", "install", str(tmp_path / "renewal" / "server.cer"), "--key", str(new_key),
        "--chain", str(office.intermediate), "--config", str(served.config)], capture_output=True, text=True,
        timeout=60)
    installed_at = time.monotonic()
    assert done.returncode == 0, done.stderr
    await asyncio.sleep(3.0)
    load.stopping = True
    await asyncio.gather(*clients)
    new_der = x509.load_pem_x509_certificates(new_cert.read_bytes())[0].public_bytes(Encoding.DER)
    old_der = x509.load_pem_x509_certificates((conf / "tls" / "server.pem.prev").read_bytes())[0].public_bytes(Encoding.DER)
    assert load.failures == []
    assert {der for _, _, der in load.seen} == {old_der, new_der}
    first_new = min(t for t, _, der in load.seen if der == new_der)
    assert first_new - installed_at <= 2.0, f"the new certificate was served {first_new - installed_at:.2f} s late"
    assert all(der == new_der for t, _, der in load.seen if t > first_new)  # no flapping back
    assert len(load.seen) >= 40 and len(backend.seen) == len(load.seen)
    print(f"\n{len(load.seen)} requests, 0 failed; bmrgw pki install ran {installed_at - install_started:.2f} s; "
          f"new certificate first served {first_new - install_started:.2f} s after it started "
          f"({first_new - installed_at:+.2f} s from its end)")


async def accepted(port: int, context: ssl.SSLContext) -> bool:
    try:
        status, _ = await exchange(port, context)
    except (OSError, asyncio.TimeoutError, ssl.SSLError):
        return False
    return status != 0


async def test_client_ca_follows_its_file(tmp_path: Path, serve: Callable[..., Served]) -> None:
    office, other = make_office(tmp_path / "office"), make_office(tmp_path / "other", "Other")
    conf = conf_with_trust(tmp_path, office)
    server = issue_pair(office, conf, "server")
    ours = issue_pair(office, tmp_path / "c1", "city-a", purpose="client")
    theirs = issue_pair(other, tmp_path / "c2", "city-b", purpose="client")
    client_ca = conf / "client-ca.pem"
    client_ca.write_bytes(office.root.read_bytes() + office.intermediate.read_bytes())
    served = serve({"cert": str(server[0]), "key": str(server[1]), "client_ca": str(client_ca)}, office, ours)
    assert await accepted(served.port, trusting(office, ours))
    assert not await accepted(served.port, trusting(office, theirs))
    temp = conf / ".client-ca.new"
    temp.write_bytes(other.root.read_bytes() + other.intermediate.read_bytes())
    temp.replace(client_ca)
    began = time.monotonic()
    while not await accepted(served.port, trusting(office, theirs)):
        assert time.monotonic() - began < 2.0, "the new client CA was not in force within 2 s"
        await asyncio.sleep(0.05)
    assert not await accepted(served.port, trusting(office, ours))


async def test_a_half_replaced_pair_keeps_the_old_certificate_and_expiry_is_shown(
        tmp_path: Path, serve: Callable[..., Served]) -> None:
    office = make_office(tmp_path / "office")
    conf = conf_with_trust(tmp_path, office)
    cert, key = issue_pair(office, conf, "server", days=10)  # expires in 9 days: a warning
    served = serve({"cert": str(cert), "key": str(key)}, office)
    context = trusting(office)
    health = get_json(f"{served.url}/healthz", context)
    server = next(c for c in health["tls"]["certificates"] if c["role"] == "server")
    assert server["warning"] is True and 8.5 < server["days_left"] < 9.5 and server["subject"].startswith("CN=server")
    with urllib.request.urlopen(f"{served.url}/metrics", timeout=5, context=context) as resp:  # noqa: S310
        metrics = resp.read().decode()
    line = next(m for m in metrics.splitlines() if m.startswith('bmrgw_certificate_expiry_seconds{role="server"'))
    assert 8.5 * 86400 < float(line.rsplit(" ", 1)[1]) < 9.5 * 86400
    status = subprocess.run([*BMRGW, "status", "--url", served.url], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and "WARNING: renew soon" in status.stdout and "cert:       server" in status.stdout

    # A new certificate whose key has not arrived yet: the old pair stays served, the reason is shown.
    renewal, renewal_key = issue_pair(office, tmp_path / "renewal", "server")
    before = await exchange(served.port, context)
    cert.write_bytes(renewal.read_bytes())
    await asyncio.sleep(1.5)
    assert (await exchange(served.port, context))[1] == before[1]
    assert "key" in (get_json(f"{served.url}/healthz", context)["tls"]["error"] or "")
    key.write_bytes(renewal_key.read_bytes())
    began = time.monotonic()
    while (await exchange(served.port, context))[1] == before[1]:
        assert time.monotonic() - began < 2.0, "the completed pair was not served within 2 s"
        await asyncio.sleep(0.05)
    health = get_json(f"{served.url}/healthz", context)
    assert health["tls"]["error"] is None and health["tls"]["reloads"] == 1
    assert next(c for c in health["tls"]["certificates"] if c["role"] == "server")["warning"] is False


async def test_an_endpoint_client_certificate_follows_its_files(
        tmp_path: Path, gateway: GatewayFactory) -> None:
    office = make_office(tmp_path / "office")
    conf = conf_with_trust(tmp_path, office)
    backend_pair = issue_pair(office, tmp_path / "backend", "backend")
    old = issue_pair(office, conf, "gw-client", purpose="client", subject="CN=gw-client-old,O=LGPKI,C=JP")
    issue_pair(office, tmp_path / "renewal", "gw-client", purpose="client", subject="CN=gw-client-new,O=LGPKI,C=JP")
    callers: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        callers.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else "-")
        return web.Response(body=BODY, content_type="text/xml")

    backend_app = web.Application()
    backend_app.router.add_post("/{tail:.*}", handle)
    backend_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(office.root))
    backend_tls.load_cert_chain(*backend_pair)
    backend_tls.verify_mode = ssl.CERT_REQUIRED
    runner, backend_url = await start_app(backend_app, 0, backend_tls)
    try:
        base = await gateway({"gateway": {"name": "gw-out"},
                              "endpoints": {"demo": {"url": backend_url, "ca": str(office.root),
                                                     "cert": str(old[0]), "key": str(old[1])}}}, watch=True)
        config = next(tmp_path.glob("endpoints-*.yaml"))
        async with aiohttp.ClientSession() as session:
            async def relay() -> None:
                async with session.post(f"{base}/soap", data=BODY, headers={
                        "Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"urn:bmrgw:demo:1/Echo"'}) as r:
                    assert r.status == 200, await r.text()

            await relay()
            assert callers == ["gw-client-old"]
            done = await asyncio.to_thread(subprocess.run, [
                *BMRGW, "pki", "install", str(tmp_path / "renewal" / "gw-client.cer"),
                "--key", str(tmp_path / "renewal" / "gw-client-key.pem"), "--chain", str(office.intermediate),
                "--trust", str(conf / "trust"), "--config", str(config), "--endpoint", "demo"],
                capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            began = time.monotonic()
            while callers[-1] != "gw-client-new":
                assert time.monotonic() - began < 2.0, "the endpoint's new client certificate was not used in 2 s"
                await relay()
                await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()



def write_crl(path: Path, office: Office, revoked: list[x509.Certificate], *, ago: float) -> None:
    """A CRL of the office's intermediate CA revoking ``revoked``, issued ``ago`` seconds back."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes
    issued = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=ago)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(office.inter_cert.subject)
               .last_update(issued).next_update(issued + dt.timedelta(days=7)))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(issued).build())
    temp = path.with_name(f".{path.name}.new")
    temp.write_bytes(builder.sign(office.inter_key, hashes.SHA256()).public_bytes(Encoding.PEM))
    temp.replace(path)


async def test_a_new_crl_takes_effect_without_sighup(tmp_path: Path, serve: Callable[..., Served]) -> None:
    office = make_office(tmp_path / "office")
    conf = conf_with_trust(tmp_path, office)
    server = issue_pair(office, conf, "server")
    city = issue_pair(office, tmp_path / "c1", "city-a", purpose="client")
    client_ca, crl = conf / "client-ca.pem", conf / "ca.crl"
    client_ca.write_bytes(office.intermediate.read_bytes() + office.root.read_bytes())
    write_crl(crl, office, [], ago=3600)
    served = serve({"cert": str(server[0]), "key": str(server[1]), "client_ca": str(client_ca), "crl": str(crl)},
                   office, city)
    assert await accepted(served.port, trusting(office, city))
    write_crl(crl, office, [x509.load_pem_x509_certificates(city[0].read_bytes())[0]], ago=60)
    began = time.monotonic()
    while await accepted(served.port, trusting(office, city)):
        assert time.monotonic() - began < 2.0, "the revoked certificate was still accepted 2 s after the new CRL"
        await asyncio.sleep(0.05)
    other = issue_pair(office, tmp_path / "c2", "city-b", purpose="client")
    assert await accepted(served.port, trusting(office, other))  # only the revoked one is refused
    crl_entry = next(c for c in get_json(f"{served.url}/healthz", trusting(office, other))["tls"]["certificates"]
                     if c["role"] == "crl")
    assert "Application CA" in crl_entry["subject"] and 6.5 < crl_entry["days_left"] < 7.1
