"""The gateway's own settings: the ``gateway:`` section of endpoints.yaml (SPEC.md "endpoints.yaml").

Parsed once into frozen keyword-only dataclasses, like the endpoint table in
:mod:`routing.config`, which holds these as :attr:`Config.gateway`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.ns import ROUTING

from . import fields as read
from .fields import MAX_TIMEOUT

__all__ = ["GatewaySettings", "Listen", "NtpSettings", "LogSettings", "JxSettings", "JxRetention", "TlsSettings", "WssSettings",
           "LimitSettings", "BreakerSettings", "EncryptionSettings", "gateway_settings"]

@dataclass(frozen=True, kw_only=True)
class Listen:
    host: str = "127.0.0.1"
    """Address the gateway listens on."""
    port: int = 8080
    """TCP port the gateway listens on."""


@dataclass(frozen=True, kw_only=True)
class NtpSettings:
    servers: tuple[str, ...] = ()
    """NTP servers, ``host`` or ``host:port``."""
    interval: float = 64.0
    """Seconds between NTP queries."""
    max_step: float = 1.0
    """Seconds: after the first sync a larger correction needs most of ``servers`` to agree on it."""


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    enabled: bool = True
    """Write the send/receive log. The standard requires it; only benchmarks turn it off."""
    retention_days: int | None = None
    """Archive records older than this many days, once a day; ``None`` keeps them in the store."""


@dataclass(frozen=True, kw_only=True)
class EncryptionSettings:
    """Content at rest sealed per organisation (``gateway.encryption``, README "Data at rest")."""

    master_key: str
    """The master key file (``bmrgw keys init PATH``), absolute path; it wraps every organisation's data key."""


@dataclass(frozen=True, kw_only=True)
class JxRetention:
    """``gateway.jx.retention``: what the running gateway deletes by itself, in bounded batches, logged.

    ``retention: 30d`` is short for ``{confirmed: 30d}``; ``retention: null`` keeps everything.
    """

    confirmed_seconds: float | None = 30 * 86400.0
    """Delete confirmed documents this long after their confirm (``confirmed: 30d``); null keeps them."""
    dead_seconds: float | None = None
    """Delete dead letters this long after they arrived (``dead: 90d``); null (the default) keeps them."""
    every: float = 3600.0
    """Time between two sweeps (``every: 1h``); the first runs when the gateway starts."""
    batch: int = 500
    """Documents deleted per transaction."""


@dataclass(frozen=True, kw_only=True)
class JxSettings:
    """The JX polling relay (``gateway.jx``, SPEC.md capability (E))."""

    lease_seconds: float = 300.0
    """How long a handed-out document is reserved for its poller before it is handed out again."""
    max_deliveries: int = 10
    """Hand-outs without a confirm after which a document is parked as a dead letter."""
    retention_days: int | None = 30
    """The older spelling of ``retention: {confirmed: Nd}`` (days; null keeps confirmed documents)."""
    retention: JxRetention = field(default_factory=JxRetention)
    """What the running gateway deletes by itself, in batches, each logged: durations like ``30d``."""
    max_document_bytes: int = 1024 * 1024 * 1024
    """Largest document accepted by PutDocument (decoded bytes)."""
    blobs: str = "auto"
    """Where document bytes live: ``files`` (under ``data_dir``), ``database``, or ``auto``
    (the database on PostgreSQL, so nodes share only the database; on SQLite documents up to
    64 KiB in the database, in the put's transaction, larger ones in files)."""
    max_pending_documents: int = 10000
    """Documents waiting (ready or leased) for one receiver id; beyond, puts and deposits are ``QuotaExceeded``."""
    max_pending_bytes: int = 10 * 1024 ** 3
    """Bytes of the documents waiting for one receiver id; beyond, puts and deposits are ``QuotaExceeded``."""


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    cert: str
    """PEM server certificate (chain), absolute path."""
    key: str
    """PEM private key of the server certificate, absolute path."""
    client_ca: str | None = None
    """PEM CA bundle; when set, every caller must present a certificate it issued (mutual TLS)."""
    crl: str | None = None
    """PEM (one or more) or DER certificate revocation list(s) of the client_ca CAs, absolute path; a
    client certificate they revoke is refused at the handshake.  Read again on SIGHUP."""


@dataclass(frozen=True, kw_only=True)
class WssSettings:
    clock_skew: float = 300.0
    """Seconds a signed message's wsu:Timestamp may differ from the gateway's NTP time."""
    max_ttl: float = 3600.0
    """Longest Timestamp lifetime (Created to Expires) accepted from clients."""
    sign_ttl: float = 300.0
    """Lifetime of the Timestamps the gateway adds when it signs."""


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    name: str = "bmrgw"
    """This gateway's name, used in the HTTP Via header and the logs."""
    listen: Listen = field(default_factory=Listen)
    """Where ``bmrgw serve`` listens."""
    db: str = "sqlite:///var/bmrgw.db"
    """SQLAlchemy URL of the store; relative SQLite paths are relative to the config file."""
    data_dir: str = "var"
    """Directory for local files; relative to the config file."""
    max_message_bytes: int = 10 * 1024 * 1024
    """Largest request body accepted for relay."""
    max_header_bytes: int = 64 * 1024
    """How far into a message the gateway reads to find the routing header."""
    client_timeout: float = 60.0
    """Seconds a caller may pause while sending its request before it is refused."""
    routing_header: str = f"{{{ROUTING}}}Routing"
    """Clark-notation QName of the routing header block."""
    fallback_peer: str | None = None
    """Peer that receives messages for names not held locally (DC-to-DC routing)."""
    ntp: NtpSettings = field(default_factory=NtpSettings)
    """Time synchronisation."""
    logs: LogSettings = field(default_factory=LogSettings)
    """The send/receive log."""
    log_key: str | None = None
    """Secret key file (``bmrgw logs keygen``), absolute path: keys the log's chain links and checkpoints."""
    log_checkpoints: str | None = None
    """Where the chain heads are checkpointed (with a key); ``None``: ``{data_dir}/log-checkpoints.jsonl``."""
    tls: TlsSettings | None = None
    """Serve HTTPS (and require client certificates) instead of plain HTTP."""
    limits: LimitSettings = field(default_factory=lambda: LimitSettings())
    """Connection and request-rate limits (resilience)."""
    breaker: BreakerSettings = field(default_factory=lambda: BreakerSettings())
    """When a URL's circuit opens and how long it stays open."""
    drain_timeout: float = 30.0
    """Seconds a stopping gateway lets requests in flight finish before it cuts them off."""
    header_timeout: float = 10.0
    """Seconds a connection has for its first request's complete headers (TLS handshake included), and a
    keep-alive follow-up from its first byte; otherwise the connection is closed without an answer."""
    keepalive_timeout: float = 30.0
    """Seconds a keep-alive connection may stay idle after an answer before the gateway closes it."""
    watchdog_timeout: float = 30.0
    """With ``--workers``: seconds a worker's event loop may stay silent before the supervisor kills it
    (SIGKILL) and starts it again."""
    wss: WssSettings = field(default_factory=lambda: WssSettings())
    """WS-Security time limits (signature verification and signing)."""
    jx: JxSettings = field(default_factory=JxSettings)
    """The JX polling relay."""
    max_attachment_bytes: int = 2 * 1024 * 1024 * 1024
    """Largest multipart/related (SwA, MTOM) request body relayed; its root part stays under the envelope limits."""
    min_free_bytes: int = 1024 ** 3
    """Free space the data disk keeps: below it, anything that would store data is ``InsufficientStorage``."""
    encryption: EncryptionSettings | None = None
    """Seal JX documents, mailbox messages and staged file parts per organisation; ``None``: stored as they are."""
    access_log: str | None = None
    """File for one line per HTTP request in the combined log format (as Apache and nginx write it), reopened
    when logrotate moves it; ``None``: no access log (the send/receive log records every exchange anyway)."""

    @property
    def local_url(self) -> str:
        """How a command on this host reaches this gateway: ``listen`` with a wildcard or
        ``localhost`` address taken as loopback, https when ``tls`` is set."""
        host = self.listen.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else "[::1]" if host == "::" else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.listen.port}"


# -- resilience: failover URLs, breaker, limits (README "Resilience") ------------------

_RESILIENCE_KEYS = ("limits", "breaker", "drain_timeout", "header_timeout", "keepalive_timeout", "watchdog_timeout")


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    max_connections: int | None = None
    """Open client connections per gateway process; more are answered 503 GatewayBusy. ``None``: no limit."""
    max_connections_per_address: int | None = None
    """Open connections per remote address (IPv6: per /64) and process; more are answered 503 GatewayBusy.
    ``None``: no cap — behind a load balancer every caller has the balancer's address."""
    client_rate: float | None = None
    """Requests per second one client (or, in open mode, one remote address) may send; ``None``: no limit."""
    client_burst: int | None = None
    """Requests a client may send at once above its rate; default twice the rate (at least 1)."""

    @property
    def burst(self) -> float:
        if self.client_burst is not None:
            return float(self.client_burst)
        return max(1.0, 2 * (self.client_rate or 0))


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    failures: int = 5
    """Consecutive connection failures or timeouts of one URL that open its circuit."""
    backoff: float = 5.0
    """Seconds an open circuit waits before it lets one probe through (half-open)."""
    max_backoff: float = 60.0
    """The wait doubles after each failed probe, up to this many seconds."""


def _resilience(g: Mapping[str, Any]) -> dict[str, Any]:
    """The ``limits``, ``breaker`` and timeout keys of ``gateway``."""
    d = GatewaySettings
    return {
        "limits": _limits(read.mapping(read.section(g, "limits"), "gateway.limits")),
        "breaker": _breaker(read.mapping(read.section(g, "breaker"), "gateway.breaker")),
        "drain_timeout": read.number(g.get("drain_timeout", d.drain_timeout), "gateway.drain_timeout",
                                 low=0, high=MAX_TIMEOUT),
        "header_timeout": read.number(g.get("header_timeout", d.header_timeout), "gateway.header_timeout",
                                      low=0.1, high=MAX_TIMEOUT),
        "keepalive_timeout": read.number(g.get("keepalive_timeout", d.keepalive_timeout),
                                         "gateway.keepalive_timeout", low=0.1, high=MAX_TIMEOUT),
        # Workers beat every 0.5 s: a shorter watchdog would kill a loop that is merely busy.
        "watchdog_timeout": read.number(g.get("watchdog_timeout", d.watchdog_timeout), "gateway.watchdog_timeout",
                                        low=2, high=MAX_TIMEOUT),
    }


def _limits(m: Mapping[str, Any]) -> LimitSettings:
    path = "gateway.limits"
    read.known(m, path, {"max_connections", "max_connections_per_address", "client_rate", "client_burst"})
    conns, rate, burst = m.get("max_connections"), m.get("client_rate"), m.get("client_burst")
    per_address = m.get("max_connections_per_address")
    if burst is not None and rate is None:
        raise ConfigError(f"{path}.client_burst: only applies together with client_rate")
    return LimitSettings(
        max_connections=None if conns is None else read.integer(conns, f"{path}.max_connections", low=1, high=1_000_000),
        max_connections_per_address=None if per_address is None else read.integer(
            per_address, f"{path}.max_connections_per_address", low=1, high=1_000_000),
        client_rate=None if rate is None else read.number(rate, f"{path}.client_rate", low=0.001, high=1e6),
        client_burst=None if burst is None else read.integer(burst, f"{path}.client_burst", low=1, high=1_000_000),
    )


def _breaker(m: Mapping[str, Any]) -> BreakerSettings:
    path, d = "gateway.breaker", BreakerSettings()
    read.known(m, path, {"failures", "backoff", "max_backoff"})
    backoff = read.number(m.get("backoff", d.backoff), f"{path}.backoff", low=0.01, high=MAX_TIMEOUT)
    top = read.number(m.get("max_backoff", max(d.max_backoff, backoff)), f"{path}.max_backoff", low=backoff,
                  high=MAX_TIMEOUT)
    return BreakerSettings(failures=read.integer(m.get("failures", d.failures), f"{path}.failures", low=1, high=10_000),
                           backoff=backoff, max_backoff=top)


def gateway_settings(raw: Any, db: str | None, peers: frozenset[str], base: Path) -> GatewaySettings:
    """Validate the ``gateway`` section; ``peers`` are the names a ``fallback_peer`` may take."""
    g = read.mapping(raw, "gateway")
    allowed = {"name", "listen", "tls", "db", "data_dir", "max_message_bytes",
               "max_header_bytes", "client_timeout", "routing_header", "fallback_peer", "ntp", "logs", "wss", "jx",
               "max_attachment_bytes", "min_free_bytes", "log_key", "log_checkpoints", "encryption",
               "access_log", *_RESILIENCE_KEYS}
    read.known(g, "gateway", allowed)
    defaults = GatewaySettings()
    fallback = g.get("fallback_peer")
    if fallback is not None and fallback not in peers:
        raise ConfigError(f"gateway.fallback_peer: no peer named {fallback!r} under peers")
    return GatewaySettings(
        name=read.name(g.get("name", defaults.name), "gateway.name"),
        listen=_listen(read.section(g, "listen")),
        db=db or read.string(g.get("db", defaults.db), "gateway.db"),
        data_dir=read.string(g.get("data_dir", defaults.data_dir), "gateway.data_dir"),
        max_message_bytes=read.integer(g.get("max_message_bytes", defaults.max_message_bytes),
                               "gateway.max_message_bytes", low=1024),
        max_header_bytes=read.integer(g.get("max_header_bytes", defaults.max_header_bytes),
                              "gateway.max_header_bytes", low=1024, high=16 * 1024 * 1024),
        client_timeout=read.number(g.get("client_timeout", defaults.client_timeout), "gateway.client_timeout",
                               low=0.01, high=MAX_TIMEOUT),
        routing_header=_qname(g.get("routing_header", defaults.routing_header)),
        fallback_peer=fallback,
        ntp=_ntp(read.section(g, "ntp")),
        logs=_logs(read.section(g, "logs")),
        log_key=None if g.get("log_key") is None else read.file(g["log_key"], "gateway.log_key", base),
        log_checkpoints=None if g.get("log_checkpoints") is None else _path(g["log_checkpoints"],
                                                                           "gateway.log_checkpoints", base),
        tls=_tls(g["tls"], base) if g.get("tls") is not None else None,
        **_resilience(g),
        wss=_wss_settings(read.section(g, "wss")),
        jx=_jx(read.section(g, "jx")),
        max_attachment_bytes=read.integer(g.get("max_attachment_bytes", defaults.max_attachment_bytes),
                                  "gateway.max_attachment_bytes", low=1024),
        min_free_bytes=read.integer(g.get("min_free_bytes", defaults.min_free_bytes), "gateway.min_free_bytes", low=0),
        encryption=_encryption(g["encryption"], base) if g.get("encryption") is not None else None,
        access_log=None if g.get("access_log") is None else _path(g["access_log"], "gateway.access_log", base),
    )


def _path(value: Any, path: str, base: Path) -> str:
    """A file the gateway writes, made absolute against the config's folder."""
    text = read.string(value, path)
    return text if Path(text).is_absolute() else str(base / text)


def _encryption(raw: Any, base: Path) -> EncryptionSettings:
    m = read.mapping(raw, "gateway.encryption")
    read.known(m, "gateway.encryption", {"master_key"})
    if "master_key" not in m:
        raise ConfigError("gateway.encryption: needs master_key (a file written by 'bmrgw keys init PATH')")
    return EncryptionSettings(master_key=read.file(m["master_key"], "gateway.encryption.master_key", base))


def _tls(raw: Any, base: Path) -> TlsSettings:
    m = read.mapping(raw, "gateway.tls")
    read.known(m, "gateway.tls", {"cert", "key", "client_ca", "crl"})
    for key in ("cert", "key"):
        if key not in m:
            raise ConfigError(f"gateway.tls: needs {key} (a PEM file)")
    client_ca, crl = m.get("client_ca"), m.get("crl")
    if crl is not None and client_ca is None:
        raise ConfigError("gateway.tls.crl: needs client_ca (a CRL says which client certificates are revoked)")
    return TlsSettings(
        cert=read.file(m["cert"], "gateway.tls.cert", base),
        key=read.file(m["key"], "gateway.tls.key", base),
        client_ca=None if client_ca is None else read.file(client_ca, "gateway.tls.client_ca", base),
        crl=None if crl is None else read.file(crl, "gateway.tls.crl", base),
    )


def _listen(raw: Any) -> Listen:
    m = read.mapping(raw, "gateway.listen")
    read.known(m, "gateway.listen", {"host", "port"})
    return Listen(
        host=read.string(m.get("host", Listen.host), "gateway.listen.host"),
        port=read.integer(m.get("port", Listen.port), "gateway.listen.port", low=0, high=65535),
    )


def _ntp(raw: Any) -> NtpSettings:
    m = read.mapping(raw, "gateway.ntp")
    read.known(m, "gateway.ntp", {"servers", "interval", "max_step"})
    servers = m.get("servers") or []
    if not isinstance(servers, list) or not all(isinstance(s, str) and s for s in servers):
        raise ConfigError("gateway.ntp.servers: must be a list of host or host:port strings")
    interval = read.number(m.get("interval", NtpSettings.interval), "gateway.ntp.interval", low=1, high=86400)
    max_step = read.number(m.get("max_step", NtpSettings.max_step), "gateway.ntp.max_step", low=0.001, high=86400)
    return NtpSettings(servers=tuple(servers), interval=interval, max_step=max_step)


def _wss_settings(raw: Any) -> WssSettings:
    m = read.mapping(raw, "gateway.wss")
    read.known(m, "gateway.wss", {"clock_skew", "max_ttl", "sign_ttl"})
    d = WssSettings()
    return WssSettings(
        clock_skew=read.number(m.get("clock_skew", d.clock_skew), "gateway.wss.clock_skew", low=0, high=86400),
        max_ttl=read.number(m.get("max_ttl", d.max_ttl), "gateway.wss.max_ttl", low=1, high=7 * 86400),
        sign_ttl=read.number(m.get("sign_ttl", d.sign_ttl), "gateway.wss.sign_ttl", low=1, high=86400),
    )


def _logs(raw: Any) -> LogSettings:
    m = read.mapping(raw, "gateway.logs")
    read.known(m, "gateway.logs", {"enabled", "retention_days"})
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"gateway.logs.enabled: must be true or false, not {enabled!r}")
    days = m.get("retention_days")
    return LogSettings(enabled=enabled, retention_days=None if days is None else
                       read.integer(days, "gateway.logs.retention_days", low=1, high=36500))


def _jx(raw: Any) -> JxSettings:
    m = read.mapping(raw, "gateway.jx")
    read.known(m, "gateway.jx", {"lease_seconds", "max_deliveries", "retention_days", "max_document_bytes", "blobs",
                                 "max_pending_documents", "max_pending_bytes", "retention"})
    d = JxSettings()
    days = m.get("retention_days", d.retention_days)
    if "retention" in m and "retention_days" in m:
        raise ConfigError("gateway.jx: give retention or retention_days (its older spelling), not both")
    blobs = m.get("blobs", d.blobs)
    if blobs not in ("auto", "files", "database"):
        raise ConfigError(f"gateway.jx.blobs: must be auto, files or database, not {blobs!r}")
    return JxSettings(
        lease_seconds=read.number(m.get("lease_seconds", d.lease_seconds), "gateway.jx.lease_seconds",
                              low=0.1, high=86400),
        max_deliveries=read.integer(m.get("max_deliveries", d.max_deliveries), "gateway.jx.max_deliveries",
                            low=1, high=1000),
        retention_days=None if days is None else read.integer(days, "gateway.jx.retention_days", low=1, high=36500),
        retention=_retention(m["retention"]) if "retention" in m else
        JxRetention(confirmed_seconds=None if days is None else float(days) * 86400),
        max_document_bytes=read.integer(m.get("max_document_bytes", d.max_document_bytes),
                                "gateway.jx.max_document_bytes", low=1024),
        blobs=blobs,
        max_pending_documents=read.integer(m.get("max_pending_documents", d.max_pending_documents),
                                           "gateway.jx.max_pending_documents", low=1),
        max_pending_bytes=read.integer(m.get("max_pending_bytes", d.max_pending_bytes),
                                       "gateway.jx.max_pending_bytes", low=1),
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(value: Any, path: str) -> float:
    """Seconds of a duration written with its unit: ``45s``, ``30m``, ``12h``, ``30d``, ``2w``."""
    found = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if found is None or float(found[1]) <= 0:
        raise ConfigError(f"{path}: must be a duration with its unit, like 30d, 12h or 45s, not {value!r}")
    return float(found[1]) * _UNIT_SECONDS[found[2]]


def _retention(raw: Any) -> JxRetention:
    if raw is None:
        return JxRetention(confirmed_seconds=None)
    if not isinstance(raw, Mapping):
        return JxRetention(confirmed_seconds=duration(raw, "gateway.jx.retention"))
    read.known(raw, "gateway.jx.retention", {"confirmed", "dead", "every", "batch"})
    d, path = JxRetention(), "gateway.jx.retention"
    kept = {name: None if raw.get(name, "") is None else duration(raw[name], f"{path}.{name}")
            for name in ("confirmed", "dead") if name in raw}
    return JxRetention(
        confirmed_seconds=kept.get("confirmed", d.confirmed_seconds), dead_seconds=kept.get("dead", d.dead_seconds),
        every=duration(raw["every"], f"{path}.every") if "every" in raw else d.every,
        batch=read.integer(raw.get("batch", d.batch), f"{path}.batch", low=1, high=100_000))


def _qname(value: Any) -> str:
    text = read.string(value, "gateway.routing_header")
    if not re.fullmatch(r"\{[^{}\s]+\}[A-Za-z_][\w.-]*", text):
        raise ConfigError("gateway.routing_header: must be a QName in Clark notation, like {urn:bmrgw:routing:1}Routing")
    return text
