"""endpoints.yaml → frozen, validated configuration objects (SPEC.md "endpoints.yaml").

The file is parsed once into keyword-only frozen dataclasses; nothing else in
the gateway reads YAML or the environment.  Validation reports the first
problem with its dotted path (``endpoints.kaigo.url: …``) as a
:class:`~gateway.errors.ConfigError`.

Keys of SPEC.md whose feature this version does not implement yet
(``gateway.tls``, ``clients``, per-endpoint ``ca``/``basic``/``wss``,
``mailbox`` endpoints, ``refdb``) are refused rather than silently ignored:
an operator who configures TLS must never get plain HTTP by accident.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from yarl import URL

from gateway.errors import ConfigError
from gateway.ns import ROUTING

__all__ = [
    "Config",
    "GatewaySettings",
    "Listen",
    "NtpSettings",
    "LogSettings",
    "UrlEndpoint",
    "PeerEndpoint",
    "Endpoint",
    "Peer",
    "load_config",
    "parse_text",
    "parse_config",
    "NAME_PATTERN",
]

#: Business-AP, peer and gateway names: safe in URL paths and the HTTP Via header.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 3600.0

_NOT_YET = "is not supported by this version of bmrgw yet"


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
    max_attachment_bytes: int = 2 * 1024 * 1024 * 1024
    """Largest multipart/related (SwA, MTOM) request body relayed; its root part stays under the envelope limits."""


@dataclass(frozen=True, kw_only=True)
class UrlEndpoint:
    name: str
    """Business-AP name."""
    url: str
    """Where the business AP's SOAP service listens."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds to wait for the endpoint to answer."""


@dataclass(frozen=True, kw_only=True)
class PeerEndpoint:
    name: str
    """Business-AP name."""
    via: str
    """Name of the peer gateway that holds this business AP."""


Endpoint = UrlEndpoint | PeerEndpoint


@dataclass(frozen=True, kw_only=True)
class Peer:
    name: str
    """Peer gateway name; should equal that gateway's ``gateway.name``."""
    url: str
    """The peer's relay URL (``…/soap``); messages go to ``<url>/<ap>``."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds to wait for the peer to answer."""


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
        for key in ("clients", "refdb"):
            if root.get(key):
                raise ConfigError(f"{key}: {_NOT_YET}")
        peers = _peers(_section(root, "peers"))
        gateway = _gateway(_section(root, "gateway"), db, peers)
        endpoints = _endpoints(_section(root, "endpoints"), peers)
    except ConfigError as exc:
        raise ConfigError(where + exc.reason) from exc
    return Config(source=source, gateway=gateway, endpoints=endpoints, peers=peers)


def _gateway(raw: Any, db: str | None, peers: Mapping[str, Peer]) -> GatewaySettings:
    g = _mapping(raw, "gateway")
    allowed = {"name", "listen", "tls", "db", "data_dir", "max_message_bytes",
               "max_header_bytes", "client_timeout", "routing_header", "fallback_peer", "ntp", "logs",
               "max_attachment_bytes"}
    _known(g, "gateway", allowed)
    if g.get("tls"):
        raise ConfigError(f"gateway.tls {_NOT_YET}")
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
        max_attachment_bytes=_int(g.get("max_attachment_bytes", defaults.max_attachment_bytes),
                                  "gateway.max_attachment_bytes", low=1024),
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


def _logs(raw: Any) -> LogSettings:
    m = _mapping(raw, "gateway.logs")
    _known(m, "gateway.logs", {"enabled", "retention_days"})
    enabled = m.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"gateway.logs.enabled: must be true or false, not {enabled!r}")
    days = m.get("retention_days")
    return LogSettings(enabled=enabled, retention_days=None if days is None else
                       _int(days, "gateway.logs.retention_days", low=1, high=36500))


def _endpoints(raw: Any, peers: Mapping[str, Peer]) -> Mapping[str, Endpoint]:
    out: dict[str, Endpoint] = {}
    for name, value in _mapping(raw, "endpoints").items():
        out[_name(name, "endpoints key")] = endpoint_from(name, value, peers)
    return MappingProxyType(out)


def endpoint_from(name: str, raw: Any, peers: Mapping[str, Peer]) -> Endpoint:
    """Validate one ``endpoints.<name>`` entry."""
    path = f"endpoints.{name}"
    m = _mapping(raw, path)
    _known(m, path, {"url", "via", "mailbox", "timeout", "ca", "basic", "wss"})
    for key in ("ca", "basic", "wss", "mailbox"):
        if key in m:
            raise ConfigError(f"{path}.{key} {_NOT_YET}")
    kinds = [k for k in ("url", "via") if k in m]
    if len(kinds) != 1:
        raise ConfigError(f"{path}: needs exactly one of url or via")
    if "via" in m:
        if "timeout" in m:
            raise ConfigError(f"{path}.timeout: set the timeout on the peer, not on a via endpoint")
        via = _str(m["via"], f"{path}.via")
        if via not in peers:
            raise ConfigError(f"{path}.via: no peer named {via!r} under peers")
        return PeerEndpoint(name=name, via=via)
    return UrlEndpoint(
        name=name,
        url=_url(m["url"], f"{path}.url"),
        timeout=_number(m.get("timeout", DEFAULT_TIMEOUT), f"{path}.timeout", low=0.001, high=MAX_TIMEOUT),
    )


def _peers(raw: Any) -> Mapping[str, Peer]:
    out: dict[str, Peer] = {}
    for name, value in _mapping(raw, "peers").items():
        path = f"peers.{name}"
        m = _mapping(value, path)
        _known(m, path, {"url", "timeout", "ca", "basic"})
        for key in ("ca", "basic"):
            if key in m:
                raise ConfigError(f"{path}.{key} {_NOT_YET}")
        if "url" not in m:
            raise ConfigError(f"{path}: needs a url")
        out[_name(name, "peers key")] = Peer(
            name=name,
            url=_url(m["url"], f"{path}.url"),
            timeout=_number(m.get("timeout", DEFAULT_TIMEOUT), f"{path}.timeout", low=0.001, high=MAX_TIMEOUT),
        )
    return MappingProxyType(out)


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


def _qname(value: Any) -> str:
    text = _str(value, "gateway.routing_header")
    if not re.fullmatch(r"\{[^{}\s]+\}[A-Za-z_][\w.-]*", text):
        raise ConfigError("gateway.routing_header: must be a QName in Clark notation, like {urn:bmrgw:routing:1}Routing")
    return text
