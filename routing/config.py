"""endpoints.yaml → frozen, validated configuration objects (SPEC.md "endpoints.yaml").

The file is parsed once into keyword-only frozen dataclasses; nothing else in
the gateway reads YAML or the environment.  Validation reports the first
problem with its dotted path (``endpoints.kaigo.url: …``) as a
:class:`~gateway.errors.ConfigError`.

Keys of SPEC.md whose feature this version does not implement yet
(none at the moment) are refused rather than silently ignored:
an operator who configures a security feature must never get less security
by accident.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from yarl import URL

from gateway.errors import ConfigError
from gateway.ns import ROUTING
from refdb.config import RefdbSettings, parse_refdb

__all__ = [
    "Config",
    "GatewaySettings",
    "Listen",
    "NtpSettings",
    "LogSettings",
    "UrlEndpoint",
    "PeerEndpoint",
    "MailboxEndpoint",
    "JxSettings",
    "Endpoint",
    "Peer",
    "TlsSettings",
    "WssSettings",
    "BasicLogin",
    "Client",
    "Outbound",
    "BasicCredentials",
    "WssSign",
    "LimitSettings",
    "BreakerSettings",
    "load_config",
    "parse_text",
    "parse_config",
    "NAME_PATTERN",
]

#: Business-AP, peer and gateway names: safe in URL paths and the HTTP Via header.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 3600.0
DEFAULT_QUEUE_TIMEOUT = 5.0

_NOT_YET = "is not supported by this version of bmrgw yet"
#: How ``bmrgw hash-password`` hashes start (see gateway/passwords.py).
HASH_PREFIX = "$scrypt$"


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


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    enabled: bool = True
    """Write the send/receive log. The standard requires it; only benchmarks turn it off."""
    retention_days: int | None = None
    """Archive records older than this many days, once a day; ``None`` keeps them in the store."""


@dataclass(frozen=True, kw_only=True)
class JxSettings:
    """The JX polling relay (``gateway.jx``, SPEC.md capability (E))."""

    lease_seconds: float = 300.0
    """How long a handed-out document is reserved for its poller before it is handed out again."""
    max_deliveries: int = 10
    """Hand-outs without a confirm after which a document is parked as a dead letter."""
    retention_days: int | None = 30
    """Delete confirmed documents this many days after their confirm; ``None`` keeps them."""
    max_document_bytes: int = 1024 * 1024 * 1024
    """Largest document accepted by PutDocument (decoded bytes)."""
    blobs: str = "auto"
    """Where document bytes live: ``files`` (under ``data_dir``), ``database``, or ``auto``
    (files on SQLite, the database on PostgreSQL, so nodes share only the database)."""


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    cert: str
    """PEM server certificate (chain), absolute path."""
    key: str
    """PEM private key of the server certificate, absolute path."""
    client_ca: str | None = None
    """PEM CA bundle; when set, every caller must present a certificate it issued (mutual TLS)."""


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
    tls: TlsSettings | None = None
    """Serve HTTPS (and require client certificates) instead of plain HTTP."""
    limits: LimitSettings = field(default_factory=lambda: LimitSettings())
    """Connection and request-rate limits (resilience)."""
    breaker: BreakerSettings = field(default_factory=lambda: BreakerSettings())
    """When a URL's circuit opens and how long it stays open."""
    drain_timeout: float = 30.0
    """Seconds a stopping gateway lets requests in flight finish before it cuts them off."""
    wss: WssSettings = field(default_factory=lambda: WssSettings())
    """WS-Security time limits (signature verification and signing)."""
    jx: JxSettings = field(default_factory=JxSettings)
    """The JX polling relay."""
    max_attachment_bytes: int = 2 * 1024 * 1024 * 1024
    """Largest multipart/related (SwA, MTOM) request body relayed; its root part stays under the envelope limits."""


@dataclass(frozen=True, kw_only=True)
class BasicCredentials:
    user: str
    """HTTP Basic user name sent to the upstream."""
    password: str = field(repr=False)
    """The password, read at config load from ``password_env`` or ``password_file``."""
    source: str
    """Where the password came from (for messages; never the password itself)."""


@dataclass(frozen=True, kw_only=True)
class WssSign:
    key: Path
    """PEM private key that signs outgoing messages."""
    cert: Path
    """PEM certificate of that key, sent as the BinarySecurityToken."""


@dataclass(frozen=True, kw_only=True)
class Outbound:
    """How the gateway talks to one upstream (endpoint or peer): TLS trust, client identity.

    Equal values share one TLS context in the upstream seam; ``fingerprint``
    covers the files' contents, so a reload after a certificate was replaced
    builds a fresh context.
    """

    ca: Path | None = None
    """Trust anchor(s) for an https upstream; ``None`` trusts the system's CAs."""
    cert: Path | None = None
    """Client certificate presented to the upstream (mutual TLS)."""
    key: Path | None = None
    """Private key of ``cert``."""
    basic: BasicCredentials | None = None
    """HTTP Basic credentials sent to the upstream."""
    wss_sign: WssSign | None = None
    """Sign outgoing messages with WS-Security (endpoints only)."""
    fingerprint: str = ""
    """SHA-256 over the contents of the files above, as loaded."""


@dataclass(frozen=True, kw_only=True)
class UrlEndpoint:
    name: str
    """Business-AP name."""
    url: str
    """Where the business AP's SOAP service listens."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds to wait for the endpoint to answer."""
    outbound: Outbound = field(default_factory=Outbound)
    """TLS trust, client certificate, Basic credentials and signing for this endpoint."""
    urls: tuple[str, ...] = ()
    """Every URL in failover order (``url`` is the first); empty means just ``url``."""
    max_concurrent: int | None = None
    """Requests in flight to this endpoint at once; more wait in a queue. ``None``: no limit."""
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    """Seconds a request waits for a free slot before it is refused as EndpointBusy."""

    @property
    def failover(self) -> tuple[str, ...]:
        """The URLs to try, in order."""
        return self.urls or (self.url,)


@dataclass(frozen=True, kw_only=True)
class PeerEndpoint:
    name: str
    """Business-AP name."""
    via: str
    """Name of the peer gateway that holds this business AP."""


@dataclass(frozen=True, kw_only=True)
class MailboxEndpoint:
    name: str
    """Business-AP name."""
    mailbox: str
    """JX receiver id: messages for this name wait as JX documents until that receiver polls."""


Endpoint = UrlEndpoint | PeerEndpoint | MailboxEndpoint


@dataclass(frozen=True, kw_only=True)
class Peer:
    name: str
    """Peer gateway name; should equal that gateway's ``gateway.name``."""
    url: str
    """The peer's relay URL (``…/soap``); messages go to ``<url>/<ap>``."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds to wait for the peer to answer."""
    outbound: Outbound = field(default_factory=Outbound)
    """TLS trust, client certificate and Basic credentials for this peer."""
    max_concurrent: int | None = None
    """Requests in flight to this peer at once; more wait in a queue. ``None``: no limit."""
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT
    """Seconds a request waits for a free slot before it is refused as EndpointBusy."""
    urls: tuple[str, ...] = ()
    """Every URL of the peer in failover order (``url`` is the first); empty means just ``url``."""

    @property
    def failover(self) -> tuple[str, ...]:
        """The peer URLs to try, in order."""
        return self.urls or (self.url,)


@dataclass(frozen=True, kw_only=True)
class BasicLogin:
    user: str
    """HTTP Basic user name."""
    password_hash: str
    """Salted slow hash of the password, as printed by ``bmrgw hash-password``."""


@dataclass(frozen=True, kw_only=True)
class Client:
    """A caller of the gateway and what it may do (SPEC.md ``clients``)."""

    name: str
    """The client's name: the identity in the send/receive log."""
    basic: BasicLogin | None = None
    """HTTP Basic login; required in addition to the certificate when both are set."""
    cert_subject: str | None = None
    """Subject of the client certificate (RFC 4514, e.g. ``CN=juki-app,O=Example City``)."""
    allow: frozenset[str] = frozenset()
    """Destination business-AP names it may reach; ``*`` for all."""
    jx_receive: frozenset[str] = frozenset()
    """JX receiver ids it may poll for (GetDocument, ConfirmDocument)."""
    jx_send: frozenset[str] = frozenset()
    """JX sender ids it may put documents as (PutDocument)."""
    wss_verify: str | None = None
    """PEM certificate its WS-Security signatures must verify with (absolute path), if required."""

    def may_reach(self, destination: str) -> bool:
        return "*" in self.allow or destination in self.allow

    def may_receive_jx(self, receiver_id: str) -> bool:
        return "*" in self.jx_receive or receiver_id in self.jx_receive

    def may_send_jx(self, sender_id: str) -> bool:
        return "*" in self.jx_send or sender_id in self.jx_send


@dataclass(frozen=True, kw_only=True)
class Config:
    source: Path | None = None
    """The file this was read from (relative paths resolve against its folder)."""
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    """Settings of this gateway."""
    endpoints: Mapping[str, Endpoint] = field(default_factory=lambda: MappingProxyType({}))
    """Business-AP name → endpoint."""
    peers: Mapping[str, Peer] = field(default_factory=lambda: MappingProxyType({}))
    """Peer gateway name → peer."""
    clients: Mapping[str, Client] = field(default_factory=lambda: MappingProxyType({}))
    """Client name → client; empty means open mode (development only: every caller may do anything)."""
    refdb: RefdbSettings = field(default_factory=RefdbSettings)
    """Reference-DB datasets (``refdb:``)."""

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        """A path from the config, made absolute against the config file's folder."""
        path = Path(value)
        return path if path.is_absolute() else self.base_dir / path


def load_config(path: str | Path, *, db: str | None = None) -> Config:
    """Read and validate an endpoints.yaml; ``db`` overrides ``gateway.db``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    return parse_text(text, source=path.resolve(), db=db)


def parse_text(text: str, *, source: Path | None = None, db: str | None = None) -> Config:
    """Validate YAML text as the gateway reads it (safe loader, then :func:`parse_config`)."""
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        where = f"{source}: " if source else ""
        # One line: the CLI and /healthz show errors on a single line.
        raise ConfigError(f"{where}not valid YAML: {' '.join(str(exc).split())}") from exc
    return parse_config(data if data is not None else {}, source=source, db=db)


def parse_config(data: Any, *, source: Path | None = None, db: str | None = None) -> Config:
    """Validate the YAML document ``data`` into a :class:`Config`."""
    where = f"{source}: " if source else ""
    try:
        root = _mapping(data, "(top level)")
        _known(root, "(top level)", {"gateway", "clients", "endpoints", "peers", "refdb"})
        base = source.parent if source else Path.cwd()
        peers = _peers(_section(root, "peers"), base)
        gateway = _gateway(_section(root, "gateway"), db, peers, base)
        endpoints = _endpoints(_section(root, "endpoints"), peers, base)
        clients = _clients(_section(root, "clients"), base)
        refdb = parse_refdb(root.get("refdb"), clients=frozenset(clients))
    except ConfigError as exc:
        raise ConfigError(where + exc.reason) from exc
    return Config(source=source, gateway=gateway, endpoints=endpoints, peers=peers, clients=clients, refdb=refdb)


def _gateway(raw: Any, db: str | None, peers: Mapping[str, Peer], base: Path) -> GatewaySettings:
    g = _mapping(raw, "gateway")
    allowed = {"name", "listen", "tls", "db", "data_dir", "max_message_bytes",
               "max_header_bytes", "client_timeout", "routing_header", "fallback_peer", "ntp", "logs", "wss", "jx",
               "max_attachment_bytes", *_RESILIENCE_KEYS}
    _known(g, "gateway", allowed)
    defaults = GatewaySettings()
    fallback = g.get("fallback_peer")
    if fallback is not None and fallback not in peers:
        raise ConfigError(f"gateway.fallback_peer: no peer named {fallback!r} under peers")
    return GatewaySettings(
        name=_name(g.get("name", defaults.name), "gateway.name"),
        listen=_listen(_section(g, "listen")),
        db=db or _str(g.get("db", defaults.db), "gateway.db"),
        data_dir=_str(g.get("data_dir", defaults.data_dir), "gateway.data_dir"),
        max_message_bytes=_int(g.get("max_message_bytes", defaults.max_message_bytes),
                               "gateway.max_message_bytes", low=1024),
        max_header_bytes=_int(g.get("max_header_bytes", defaults.max_header_bytes),
                              "gateway.max_header_bytes", low=1024, high=16 * 1024 * 1024),
        client_timeout=_number(g.get("client_timeout", defaults.client_timeout), "gateway.client_timeout",
                               low=0.01, high=MAX_TIMEOUT),
        routing_header=_qname(g.get("routing_header", defaults.routing_header)),
        fallback_peer=fallback,
        ntp=_ntp(_section(g, "ntp")),
        logs=_logs(_section(g, "logs")),
        tls=_tls(g["tls"], base) if g.get("tls") is not None else None,
        **_resilience(g),
        wss=_wss_settings(_section(g, "wss")),
        jx=_jx(_section(g, "jx")),
        max_attachment_bytes=_int(g.get("max_attachment_bytes", defaults.max_attachment_bytes),
                                  "gateway.max_attachment_bytes", low=1024),
    )


def _tls(raw: Any, base: Path) -> TlsSettings:
    m = _mapping(raw, "gateway.tls")
    _known(m, "gateway.tls", {"cert", "key", "client_ca"})
    for key in ("cert", "key"):
        if key not in m:
            raise ConfigError(f"gateway.tls: needs {key} (a PEM file)")
    client_ca = m.get("client_ca")
    return TlsSettings(
        cert=_file(m["cert"], "gateway.tls.cert", base),
        key=_file(m["key"], "gateway.tls.key", base),
        client_ca=None if client_ca is None else _file(client_ca, "gateway.tls.client_ca", base),
    )


def _listen(raw: Any) -> Listen:
    m = _mapping(raw, "gateway.listen")
    _known(m, "gateway.listen", {"host", "port"})
    return Listen(
        host=_str(m.get("host", Listen.host), "gateway.listen.host"),
        port=_int(m.get("port", Listen.port), "gateway.listen.port", low=0, high=65535),
    )


def _ntp(raw: Any) -> NtpSettings:
    m = _mapping(raw, "gateway.ntp")
    _known(m, "gateway.ntp", {"servers", "interval"})
    servers = m.get("servers") or []
    if not isinstance(servers, list) or not all(isinstance(s, str) and s for s in servers):
        raise ConfigError("gateway.ntp.servers: must be a list of host or host:port strings")
    interval = _number(m.get("interval", NtpSettings.interval), "gateway.ntp.interval", low=1, high=86400)
    return NtpSettings(servers=tuple(servers), interval=interval)


def _wss_settings(raw: Any) -> WssSettings:
    m = _mapping(raw, "gateway.wss")
    _known(m, "gateway.wss", {"clock_skew", "max_ttl", "sign_ttl"})
    d = WssSettings()
    return WssSettings(
        clock_skew=_number(m.get("clock_skew", d.clock_skew), "gateway.wss.clock_skew", low=0, high=86400),
        max_ttl=_number(m.get("max_ttl", d.max_ttl), "gateway.wss.max_ttl", low=1, high=7 * 86400),
        sign_ttl=_number(m.get("sign_ttl", d.sign_ttl), "gateway.wss.sign_ttl", low=1, high=86400),
    )


def _logs(raw: Any) -> LogSettings:
    m = _mapping(raw, "gateway.logs")
    _known(m, "gateway.logs", {"enabled", "retention_days"})
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"gateway.logs.enabled: must be true or false, not {enabled!r}")
    days = m.get("retention_days")
    return LogSettings(enabled=enabled, retention_days=None if days is None else
                       _int(days, "gateway.logs.retention_days", low=1, high=36500))


def _jx(raw: Any) -> JxSettings:
    m = _mapping(raw, "gateway.jx")
    _known(m, "gateway.jx", {"lease_seconds", "max_deliveries", "retention_days", "max_document_bytes", "blobs"})
    d = JxSettings()
    days = m.get("retention_days", d.retention_days)
    blobs = m.get("blobs", d.blobs)
    if blobs not in ("auto", "files", "database"):
        raise ConfigError(f"gateway.jx.blobs: must be auto, files or database, not {blobs!r}")
    return JxSettings(
        lease_seconds=_number(m.get("lease_seconds", d.lease_seconds), "gateway.jx.lease_seconds",
                              low=0.1, high=86400),
        max_deliveries=_int(m.get("max_deliveries", d.max_deliveries), "gateway.jx.max_deliveries",
                            low=1, high=1000),
        retention_days=None if days is None else _int(days, "gateway.jx.retention_days", low=1, high=36500),
        max_document_bytes=_int(m.get("max_document_bytes", d.max_document_bytes),
                                "gateway.jx.max_document_bytes", low=1024),
        blobs=blobs,
    )


def _endpoints(raw: Any, peers: Mapping[str, Peer], base: Path) -> Mapping[str, Endpoint]:
    out: dict[str, Endpoint] = {}
    for name, value in _mapping(raw, "endpoints").items():
        out[_name(name, "endpoints key")] = endpoint_from(name, value, peers, base)
    return MappingProxyType(out)


def endpoint_from(name: str, raw: Any, peers: Mapping[str, Peer], base: Path | None = None) -> Endpoint:
    """Validate one ``endpoints.<name>`` entry; relative file names resolve against ``base``."""
    path = f"endpoints.{name}"
    m = _mapping(raw, path)
    _known(m, path, {"url", "urls", "via", "mailbox", "timeout", *_OUTBOUND_KEYS, "wss", *_ENDPOINT_LIMIT_KEYS})
    kinds = [k for k in ("url", "urls", "via", "mailbox") if k in m]
    if len(kinds) != 1:
        raise ConfigError(f"{path}: needs exactly one of url or via (or urls, a failover list; or mailbox: ID "
                          "for a JX mailbox)")
    if "mailbox" in m:
        return _mailbox(name, m, path)
    if "via" in m:
        for key in ("timeout", *_OUTBOUND_KEYS, "wss", *_ENDPOINT_LIMIT_KEYS):
            if key in m:
                raise ConfigError(f"{path}.{key}: set the {key} on the peer, not on a via endpoint")
        via = _str(m["via"], f"{path}.via")
        if via not in peers:
            raise ConfigError(f"{path}.via: no peer named {via!r} under peers")
        return PeerEndpoint(name=name, via=via)
    urls = _urls(m, path)
    outbound = _outbound(m, path, urls[0], base or Path.cwd(), signing=True)
    if len({URL(u).scheme for u in urls}) > 1 and outbound != Outbound():
        raise ConfigError(f"{path}.urls: mix of http and https URLs with ca/cert/key/basic/wss set")
    return UrlEndpoint(
        name=name,
        url=urls[0],
        timeout=_number(m.get("timeout", DEFAULT_TIMEOUT), f"{path}.timeout", low=0.001, high=MAX_TIMEOUT),
        outbound=outbound,
        urls=urls if "urls" in m else (),
        **_endpoint_limits(m, path),
    )


#: JX receiver ids: printable ASCII without blanks, as the JX ids of city halls are.
JX_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")


def _mailbox(name: str, m: Mapping[str, Any], path: str) -> MailboxEndpoint:
    for key in ("timeout", *_OUTBOUND_KEYS, "wss", *_ENDPOINT_LIMIT_KEYS):
        if key in m:
            raise ConfigError(f"{path}.{key}: a mailbox endpoint stores messages; it has no {key}")
    mailbox = m["mailbox"]
    if isinstance(mailbox, int) and not isinstance(mailbox, bool):
        # YAML reads an unquoted 0131 as 131: refuse rather than lose digits.
        raise ConfigError(f"{path}.mailbox: write the receiver id in quotes (mailbox: \"{mailbox}\")")
    if not isinstance(mailbox, str) or not JX_ID_PATTERN.fullmatch(mailbox):
        raise ConfigError(f"{path}.mailbox: {mailbox!r} is not a JX receiver id "
                          "(1 to 128 printable ASCII characters, no blanks)")
    return MailboxEndpoint(name=name, mailbox=mailbox)


def _clients(raw: Any, base: Path) -> Mapping[str, Client]:
    out: dict[str, Client] = {}
    users: dict[str, str] = {}
    subjects: dict[tuple[tuple[str, str], ...], str] = {}
    for name, value in _mapping(raw, "clients").items():
        client = _client(_name(name, "clients key"), value, base)
        if client.basic is not None:
            if client.basic.user in users:
                raise ConfigError(f"clients.{name}.basic.user: {client.basic.user!r} is also the user of "
                                  f"clients.{users[client.basic.user]}")
            users[client.basic.user] = name
        if client.cert_subject is not None:
            key = subject_key(client.cert_subject)
            if key in subjects:
                raise ConfigError(f"clients.{name}.cert_subject: same subject as clients.{subjects[key]}")
            subjects[key] = name
        out[name] = client
    return MappingProxyType(out)


def _client(name: str, raw: Any, base: Path) -> Client:
    path = f"clients.{name}"
    m = _mapping(raw, path)
    _known(m, path, {"basic", "cert_subject", "allow", "jx", "wss"})
    if "basic" not in m and "cert_subject" not in m:
        raise ConfigError(f"{path}: needs basic or cert_subject (or both) to identify the client")
    jx = _mapping(_section(m, "jx"), f"{path}.jx")
    _known(jx, f"{path}.jx", {"receive", "send"})
    wss = _mapping(_section(m, "wss"), f"{path}.wss")
    _known(wss, f"{path}.wss", {"verify"})
    subject = m.get("cert_subject")
    if subject is not None:
        subject = _str(subject, f"{path}.cert_subject")
        if not subject_key(subject):
            raise ConfigError(f"{path}.cert_subject: {subject!r} is not a subject like CN=juki-app,O=Example")
    return Client(
        name=name,
        basic=_basic_login(m["basic"], f"{path}.basic") if "basic" in m else None,
        cert_subject=subject,
        allow=_names(m.get("allow", []), f"{path}.allow", wildcard=True),
        jx_receive=_names(jx.get("receive", []), f"{path}.jx.receive", wildcard=True),
        jx_send=_names(jx.get("send", []), f"{path}.jx.send", wildcard=True),
        wss_verify=_file(wss["verify"], f"{path}.wss.verify", base) if "verify" in wss else None,
    )


def _basic_login(raw: Any, path: str) -> BasicLogin:
    m = _mapping(raw, path)
    if "password" in m:
        raise ConfigError(f"{path}: plain passwords are not accepted; use password_hash from bmrgw hash-password")
    _known(m, path, {"user", "password_hash"})
    user = _str(m.get("user"), f"{path}.user")
    if ":" in user:
        raise ConfigError(f"{path}.user: {user!r} may not contain ':' (HTTP Basic)")
    password_hash = _str(m.get("password_hash"), f"{path}.password_hash")
    if not password_hash.startswith(HASH_PREFIX):
        raise ConfigError(f"{path}.password_hash: not a hash printed by 'bmrgw hash-password'")
    return BasicLogin(user=user, password_hash=password_hash)


def subject_key(subject: str) -> tuple[tuple[str, str], ...]:
    """A distinguished name as a comparable key: attribute order and type case do not matter.

    ``CN=juki-app, O=Example City`` and ``O=Example City,cn=juki-app`` give the
    same key; escaped commas (``\\,``) stay inside their value.
    """
    parts = [p.strip() for p in re.split(r"(?<!\\),", subject) if p.strip()]
    pairs = []
    for part in parts:
        attr, sep, value = part.partition("=")
        if not sep or not attr.strip() or not value.strip():
            return ()
        pairs.append((attr.strip().upper(), value.strip()))
    return tuple(sorted(pairs))


def _peers(raw: Any, base: Path) -> Mapping[str, Peer]:
    out: dict[str, Peer] = {}
    for name, value in _mapping(raw, "peers").items():
        path = f"peers.{name}"
        m = _mapping(value, path)
        _known(m, path, {"url", "urls", "timeout", *_OUTBOUND_KEYS, *_ENDPOINT_LIMIT_KEYS})
        if ("url" in m) == ("urls" in m):
            raise ConfigError(f"{path}: needs a url (or urls, a failover list)")
        urls = _urls(m, path)
        out[_name(name, "peers key")] = Peer(
            name=name,
            url=urls[0],
            timeout=_number(m.get("timeout", DEFAULT_TIMEOUT), f"{path}.timeout", low=0.001, high=MAX_TIMEOUT),
            outbound=_outbound(m, path, urls[0], base, signing=False),
            **_endpoint_limits(m, path),
            urls=urls if "urls" in m else (),
        )
    return MappingProxyType(out)


# -- outbound security (endpoints.* and peers.*: ca, cert, key, basic, wss) ----------

_OUTBOUND_KEYS = ("ca", "cert", "key", "basic")


def _outbound(m: Mapping[str, Any], path: str, url: str, base: Path, *, signing: bool) -> Outbound:
    """The ``ca``/``cert``/``key``/``basic`` (and for endpoints ``wss``) keys of one upstream."""
    if not any(k in m for k in (*_OUTBOUND_KEYS, "wss")):
        return Outbound()
    digest = hashlib.sha256()
    tls = {k: _pem_file(m[k], f"{path}.{k}", base, digest) for k in ("ca", "cert", "key") if k in m}
    if tls and URL(url).scheme != "https":
        raise ConfigError(f"{path}: {', '.join(sorted(tls))} only apply to an https:// url")
    if ("cert" in tls) != ("key" in tls):
        raise ConfigError(f"{path}: a client certificate needs both cert and key")
    _check_pem(tls, path)
    wss = _wss_sign(m["wss"], f"{path}.wss", base, digest) if "wss" in m else None
    basic = _basic(m["basic"], f"{path}.basic", base) if "basic" in m else None
    return Outbound(ca=tls.get("ca"), cert=tls.get("cert"), key=tls.get("key"), basic=basic,
                    wss_sign=wss, fingerprint=digest.hexdigest())


def _pem_file(value: Any, path: str, base: Path, digest: Any) -> Path:
    file = Path(_file(value, path, base))
    try:
        digest.update(file.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {file}: {exc.strerror or exc}") from exc
    return file


def _check_pem(files: Mapping[str, Path], path: str) -> None:
    """Refuse files that are not what their key says, so the mistake shows at load, not at first use."""
    loaded: dict[str, Any] = {}
    for key, file in files.items():
        data = file.read_bytes()
        try:
            if key == "key":
                loaded[key] = load_pem_private_key(data, password=None)
            else:
                loaded[key] = x509.load_pem_x509_certificates(data)[0]
        except (ValueError, TypeError) as exc:
            what = "an unencrypted PEM private key" if key == "key" else "PEM certificate(s)"
            raise ConfigError(f"{path}.{key}: {file} does not hold {what}: {exc}") from exc
    if "cert" in loaded and "key" in loaded and loaded["cert"].public_key() != loaded["key"].public_key():
        raise ConfigError(f"{path}: key {files['key']} does not belong to cert {files['cert']}")


def _wss_sign(raw: Any, path: str, base: Path, digest: Any) -> WssSign:
    m = _mapping(raw, path)
    _known(m, path, {"sign"})
    sign = _mapping(m.get("sign"), f"{path}.sign")
    _known(sign, f"{path}.sign", {"key", "cert"})
    files = {k: _pem_file(sign.get(k), f"{path}.sign.{k}", base, digest) for k in ("key", "cert")}
    _check_pem(files, f"{path}.sign")
    return WssSign(key=files["key"], cert=files["cert"])


def _basic(raw: Any, path: str, base: Path) -> BasicCredentials:
    m = _mapping(raw, path)
    if "password" in m:
        raise ConfigError(f"{path}.password: a plain password does not belong in endpoints.yaml; "
                          "use password_env (an environment variable) or password_file")
    _known(m, path, {"user", "password_env", "password_file"})
    user = _str(m.get("user"), f"{path}.user")
    if ":" in user:
        raise ConfigError(f"{path}.user: HTTP Basic user names cannot contain ':'")
    if ("password_env" in m) == ("password_file" in m):
        raise ConfigError(f"{path}: needs exactly one of password_env or password_file")
    if "password_env" in m:
        var = _str(m["password_env"], f"{path}.password_env")
        password = os.environ.get(var)
        if not password:
            raise ConfigError(f"{path}.password_env: environment variable {var} is not set or empty")
        return BasicCredentials(user=user, password=password, source=f"environment variable {var}")
    return BasicCredentials(user=user, password=_password_file(m["password_file"], path, base),
                            source=f"file {m['password_file']}")


def _password_file(value: Any, path: str, base: Path) -> str:
    file = Path(_file(value, f"{path}.password_file", base))
    try:
        # One line; the trailing newline an editor adds is not part of the password.
        password = file.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}.password_file: cannot read {file}: {exc}") from exc
    if not password:
        raise ConfigError(f"{path}.password_file: {file} is empty")
    return password


# -- resilience: failover URLs, breaker, limits (README "Resilience") ------------------

_RESILIENCE_KEYS = ("limits", "breaker", "drain_timeout")
_ENDPOINT_LIMIT_KEYS = ("max_concurrent", "queue_timeout")
#: Most failover URLs one endpoint may list.
MAX_URLS = 16


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    max_connections: int | None = None
    """Open client connections per gateway process; more are answered 503 GatewayBusy. ``None``: no limit."""
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
    """The ``limits``, ``breaker`` and ``drain_timeout`` keys of ``gateway``."""
    return {
        "limits": _limits(_mapping(_section(g, "limits"), "gateway.limits")),
        "breaker": _breaker(_mapping(_section(g, "breaker"), "gateway.breaker")),
        "drain_timeout": _number(g.get("drain_timeout", GatewaySettings.drain_timeout), "gateway.drain_timeout",
                                 low=0, high=MAX_TIMEOUT),
    }


def _limits(m: Mapping[str, Any]) -> LimitSettings:
    path = "gateway.limits"
    _known(m, path, {"max_connections", "client_rate", "client_burst"})
    conns, rate, burst = m.get("max_connections"), m.get("client_rate"), m.get("client_burst")
    if burst is not None and rate is None:
        raise ConfigError(f"{path}.client_burst: only applies together with client_rate")
    return LimitSettings(
        max_connections=None if conns is None else _int(conns, f"{path}.max_connections", low=1, high=1_000_000),
        client_rate=None if rate is None else _number(rate, f"{path}.client_rate", low=0.001, high=1e6),
        client_burst=None if burst is None else _int(burst, f"{path}.client_burst", low=1, high=1_000_000),
    )


def _breaker(m: Mapping[str, Any]) -> BreakerSettings:
    path, d = "gateway.breaker", BreakerSettings()
    _known(m, path, {"failures", "backoff", "max_backoff"})
    backoff = _number(m.get("backoff", d.backoff), f"{path}.backoff", low=0.01, high=MAX_TIMEOUT)
    top = _number(m.get("max_backoff", max(d.max_backoff, backoff)), f"{path}.max_backoff", low=backoff,
                  high=MAX_TIMEOUT)
    return BreakerSettings(failures=_int(m.get("failures", d.failures), f"{path}.failures", low=1, high=10_000),
                           backoff=backoff, max_backoff=top)


def _urls(m: Mapping[str, Any], path: str) -> tuple[str, ...]:
    if "url" in m:
        return (_url(m["url"], f"{path}.url"),)
    raw = m["urls"]
    if not isinstance(raw, list) or not raw or len(raw) > MAX_URLS:
        raise ConfigError(f"{path}.urls: must be a list of 1 to {MAX_URLS} URLs")
    urls = tuple(_url(u, f"{path}.urls[{i}]") for i, u in enumerate(raw))
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{path}.urls: lists the same URL twice")
    return urls


def _endpoint_limits(m: Mapping[str, Any], path: str) -> dict[str, Any]:
    limit = m.get("max_concurrent")
    return {
        "max_concurrent": None if limit is None else _int(limit, f"{path}.max_concurrent", low=1, high=100_000),
        "queue_timeout": _number(m.get("queue_timeout", DEFAULT_QUEUE_TIMEOUT), f"{path}.queue_timeout",
                                 low=0, high=MAX_TIMEOUT),
    }


# -- small typed readers -------------------------------------------------------

def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be a mapping, not {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: keys must be strings, not {key!r}")
    return value


def _section(m: Mapping[str, Any], key: str) -> Any:
    """A top-level or nested section; absent or empty (``key:``) means defaults."""
    value = m.get(key)
    return {} if value is None else value


def _known(m: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    unknown = sorted(set(m) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(allowed))})")


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{path}: must be a non-empty string")
    return value


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ConfigError(f"{path}: {value!r} is not a valid name (letters, digits, '.', '_', '-'; at most 64)")
    return value


def _int(value: Any, path: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{path}: must be an integer {bound}, not {value!r}")
    return value


def _number(value: Any, path: str, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{path}: must be a number between {low:g} and {high:g}, not {value!r}")
    return float(value)


def _url(value: Any, path: str) -> str:
    text = _str(value, path)
    try:
        url = URL(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: {text!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{path}: {text!r} must be an http:// or https:// URL with a host")
    return text


def _file(value: Any, path: str, base: Path) -> str:
    """An existing readable file named in the config, made absolute against the config's folder."""
    text = _str(value, path)
    resolved = Path(text) if Path(text).is_absolute() else base / text
    if not resolved.is_file():
        raise ConfigError(f"{path}: no such file {str(resolved)!r}")
    return str(resolved)


def _names(value: Any, path: str, *, wildcard: bool) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(f"{path}: must be a list of names")
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            raise ConfigError(f"{path}: write ids as quoted strings ('{item}'), so leading zeros survive")
        if not (wildcard and item == "*"):
            _name(item, path)
    return frozenset(value)


def _qname(value: Any) -> str:
    text = _str(value, "gateway.routing_header")
    if not re.fullmatch(r"\{[^{}\s]+\}[A-Za-z_][\w.-]*", text):
        raise ConfigError("gateway.routing_header: must be a QName in Clark notation, like {urn:bmrgw:routing:1}Routing")
    return text
