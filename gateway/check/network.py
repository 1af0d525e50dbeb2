"""The network items of the connection test: DNS, TCP, the gateway's certificate, the site's client
certificate and the two clocks."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import aiohttp

from gateway.logs.clock import combined_offset, parse_server, query_all

from .result import Probe, Result
from .site import Site

__all__ = ["dns", "tcp", "tls", "client_cert", "ntp", "site_context", "session"]


def _where(site: Site) -> tuple[str, int]:
    url = site.url
    assert url.host is not None
    return url.host, url.port or (443 if url.scheme == "https" else 80)


async def dns(site: Site, probe: Probe, result: Result) -> Result:
    host, port = _where(site)
    try:
        found = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                       site.timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return result.failed(f"{host} does not resolve: {getattr(exc, 'strerror', None) or exc or 'timed out'}",
                             "check the host name in 'gateway:' and the site's DNS (the LGWAN DNS) or hosts file")
    probe.addresses = sorted({str(info[4][0]) for info in found})
    return result.passed(f"{host} → {', '.join(probe.addresses)}")


async def tcp(site: Site, probe: Probe, result: Result) -> Result:
    host, port = _where(site)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), site.timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or f"no answer within {site.timeout:g} s"
        return result.failed(f"cannot connect to {host}:{port}: {why}",
                             "check that the gateway runs (bmrgw status on its host), the port, and the firewalls "
                             "and routes between the site and the data centre")
    writer.close()
    await writer.wait_closed()
    return result.passed(f"{host}:{port} accepts connections")


def site_context(site: Site, *, with_cert: bool) -> ssl.SSLContext:
    """A TLS 1.2+ client context trusting ``site.ca`` (or the system) and, if asked, presenting ``site.cert``."""
    context = ssl.create_default_context(cafile=str(site.ca) if site.ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if with_cert and site.cert is not None:
        context.load_cert_chain(site.cert, site.key)
    return context


async def tls(site: Site, probe: Probe, result: Result) -> Result:
    host, port = _where(site)
    if site.url.scheme != "https":
        return result.skipped("the gateway URL is http: no TLS (only acceptable on a closed test network)")
    try:
        peer = await asyncio.wait_for(asyncio.to_thread(
            _server_certificate, host, port, site_context(site, with_cert=False), site.timeout), site.timeout * 2)
    except ssl.SSLCertVerificationError as exc:
        return result.failed(f"the gateway's certificate is not accepted: {exc.verify_message}", _tls_fix(exc, host))
    except (OSError, asyncio.TimeoutError) as exc:
        return result.failed(f"TLS handshake failed: {exc or 'timed out'}",
                             "check that the port serves TLS (gateway.tls) and allows TLS 1.2 or later")
    subject = ", ".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
    issuer = ", ".join(f"{k}={v}" for rdn in peer.get("issuer", ()) for k, v in rdn)
    return result.passed(f"{subject} issued by {issuer}, valid until {peer.get('notAfter')}; name {host} matches")


def _server_certificate(host: str, port: int, context: ssl.SSLContext, timeout: float) -> Any:
    """The gateway's certificate once it verified, by a handshake over memory BIOs: it is judged before
    this side's last flight is even sent, so a gateway that then drops a caller without a client
    certificate cannot blur the verdict on its own certificate."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        while True:
            try:
                tls.do_handshake()
                return tls.getpeercert()
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("the gateway closed the connection during the TLS handshake")
                incoming.write(data)


def _tls_fix(exc: ssl.SSLCertVerificationError, host: str) -> str:
    message = exc.verify_message or ""
    if "hostname" in message.lower() or "ip address mismatch" in message.lower():
        return f"connect with the name the gateway's certificate holds (not {host}), or have it reissued with {host}"
    if "expired" in message:
        return "the data centre must renew the gateway's certificate (bmrgw pki csr / pki install)"
    return ("'ca:' must name the root (LGPKI application CA) that issued the gateway's certificate; the gateway "
            "must send its intermediate certificates (bmrgw pki install does)")


async def client_cert(site: Site, probe: Probe, result: Result) -> Result:
    """The site's client certificate (or none) gets an answer from ``/healthz``."""
    probe.context = site_context(site, with_cert=True) if site.url.scheme == "https" else None
    try:
        async with session(site, probe) as http, http.get(f"{site.gateway}/healthz") as resp:
            await resp.read()
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        if site.cert is None:
            return result.failed(f"the gateway closes the connection without a client certificate: {_why(exc)}",
                                 "configure cert and key: the site's certificate for mutual TLS")
        return result.failed(f"the gateway refuses the site's certificate {site.cert}: {_why(exc)}",
                             "the gateway's gateway.tls.client_ca must hold the CA that issued the site's "
                             "certificate, and the certificate must be valid; send the data centre your CA chain")
    if site.url.scheme != "https" or site.cert is None:
        return result.skipped("no client certificate configured, and the gateway answers without one")
    return result.passed(f"{site.cert.name} accepted (HTTP {resp.status} from /healthz)")


def _why(exc: BaseException) -> str:
    inner = exc.__cause__ or exc.__context__ or exc
    return str(getattr(inner, "reason", None) or inner or type(inner).__name__)


def session(site: Site, probe: Probe) -> aiohttp.ClientSession:
    """An HTTP session to the gateway as the site: its TLS context, a fresh connection each time."""
    connector = aiohttp.TCPConnector(ssl=probe.context if probe.context is not None else False, force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=site.timeout))


async def ntp(site: Site, probe: Probe, result: Result) -> Result:
    """The site's clock (its NTP servers', or its system clock) against the gateway's corrected time."""
    site_offset, source = 0.0, "the site's system clock"
    if site.ntp:
        samples = await query_all([parse_server(s) for s in site.ntp], timeout=min(site.timeout, 5.0))
        offset = combined_offset(samples)
        if offset is None:
            errors = "; ".join(f"{s.server}: {s.error}" for s in samples)
            return result.failed(f"none of the site's NTP servers answered ({errors})",
                                 "check 'ntp:' and that UDP port 123 to those servers is open")
        site_offset, source = offset, f"the site's NTP ({', '.join(site.ntp)})"
    async with session(site, probe) as http:
        began = time.time()
        async with http.get(f"{site.gateway}/healthz") as resp:
            body = await resp.json(content_type=None)
        ended = time.time()
    state = body.get("ntp", {})
    if "time" not in state:
        return result.skipped("the gateway does not show its time in /healthz (an older version)")
    difference = state["time"] - ((began + ended) / 2 + site_offset)
    slack = (ended - began) / 2
    servers = ", ".join(s.get("server", "?") for s in state.get("servers", ())) or "none configured"
    seen = (f"gateway {'synced' if state.get('synced') else 'NOT synced'} (NTP {servers}) is {difference:+.3f} s "
            f"against {source} (±{slack:.3f} s)")
    if abs(difference) - slack > site.max_offset:
        return result.failed(f"the clocks differ by {difference:+.3f} s, more than {site.max_offset:g} s: {seen}",
                             "site and gateway must sync to the same NTP servers (gateway.ntp.servers; the site's "
                             "'ntp:'): WS-Security timestamps and the send/receive log depend on it")
    return result.passed(seen)
