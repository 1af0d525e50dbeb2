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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from yarl import URL

from gateway.charset.table import CharsetProfile, profile_from
from gateway.errors import ConfigError, ConfigUnreadable
from gateway.security.dsig import weak_key
from refdb.config import RefdbSettings, parse_refdb

from . import fields as read
from .fields import MAX_TIMEOUT, NAME_PATTERN
from .outbound import OUTBOUND_KEYS, Outbound, outbound_from
from .settings import GatewaySettings, gateway_settings

_ENDPOINT_LIMIT_KEYS = ("max_concurrent", "queue_timeout")
#: Keys only an endpoint with a url has (the HTTP API relay's).
_URL_ONLY_KEYS = ("forward_credentials", "charset")
#: Most failover URLs one endpoint may list.
MAX_URLS = 16

__all__ = [
    "Config",
    "UrlEndpoint",
    "PeerEndpoint",
    "MailboxEndpoint",
    "Endpoint",
    "Peer",
    "BasicLogin",
    "Client",
    "load_config",
    "parse_text",
    "parse_config",
    "NAME_PATTERN",
    "ECHO_URL_PREFIX",
]

#: Business-AP, peer and gateway names: safe in URL paths and the HTTP Via header.

DEFAULT_TIMEOUT = 30.0
DEFAULT_QUEUE_TIMEOUT = 5.0

_NOT_YET = "is not supported by this version of bmrgw yet"
#: How ``bmrgw hash-password`` hashes start (see gateway/passwords.py).
HASH_PREFIX = "$scrypt$"


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
    charset: CharsetProfile | None = None
    """The partner's character profile (``charset: {encoding, gaiji, unmappable, reduce}``); ``None``: UTF-8 as is."""
    forward_credentials: bool = False
    """HTTP API relay (``/api``): pass the caller's ``Cookie`` and ``Authorization`` on to this endpoint
    (never a Basic login the gateway itself checked). Off: the endpoint sees neither."""

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
    """JX sender ids it may put documents as (PutDocument, and the sender of a mailbox deposit)."""
    senders: frozenset[str] | None = None
    """Business-AP names it may name as the sender (``r:From``); ``*`` for all. ``None``: its own name."""
    wss_verify: str | None = None
    """PEM certificate its WS-Security signatures must verify with (absolute path), if required."""
    admin: bool = False
    """Whether it may open the operator's console (``/console``) and change state there."""

    def may_reach(self, destination: str) -> bool:
        return "*" in self.allow or destination in self.allow

    def may_receive_jx(self, receiver_id: str) -> bool:
        return "*" in self.jx_receive or receiver_id in self.jx_receive

    def may_send_jx(self, sender_id: str) -> bool:
        return "*" in self.jx_send or sender_id in self.jx_send

    def may_claim(self, sender: str) -> bool:
        """Whether a message of this client may name ``sender`` as its sender (``r:From``)."""
        if self.senders is None:
            return sender == self.name
        return "*" in self.senders or sender in self.senders


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
    disabled: frozenset[str] = frozenset()
    """Endpoints taken out of service (``endpoints.NAME.disabled: true``): answered EndpointUnavailable at once."""

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
        raise ConfigUnreadable(f"cannot read the config file {path}: {exc.strerror or exc} "
                               "(name it with --config PATH)") from exc
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
        root = read.mapping(data, "(top level)")
        read.known(root, "(top level)", {"gateway", "clients", "endpoints", "peers", "refdb"})
        base = source.parent if source else Path.cwd()
        peers = _peers(read.section(root, "peers"), base)
        gateway = gateway_settings(read.section(root, "gateway"), db, frozenset(peers), base)
        endpoints = _endpoints(read.section(root, "endpoints"), peers, base)
        disabled = _disabled(read.section(root, "endpoints"))
        clients = _clients(read.section(root, "clients"), base)
        refdb = parse_refdb(root.get("refdb"), clients=frozenset(clients))
    except ConfigError as exc:
        raise ConfigError(where + exc.reason) from exc
    return Config(source=source, gateway=gateway, endpoints=endpoints, peers=peers, clients=clients, refdb=refdb,
                  disabled=disabled)


def _disabled(raw: Any) -> frozenset[str]:
    """The names with ``disabled: true`` (a key every kind of endpoint may carry; read apart from its kind)."""
    found = set()
    for name, value in read.mapping(raw, "endpoints").items():
        flag = value.get("disabled", False) if isinstance(value, Mapping) else False
        if not isinstance(flag, bool):
            raise ConfigError(f"endpoints.{name}.disabled: must be true or false, not {flag!r}")
        if flag:
            found.add(name)
    return frozenset(found)


def _endpoints(raw: Any, peers: Mapping[str, Peer], base: Path) -> Mapping[str, Endpoint]:
    out: dict[str, Endpoint] = {}
    for name, value in read.mapping(raw, "endpoints").items():
        out[read.name(name, "endpoints key")] = endpoint_from(name, value, peers, base)
    return MappingProxyType(out)


def endpoint_from(name: str, raw: Any, peers: Mapping[str, Peer], base: Path | None = None) -> Endpoint:
    """Validate one ``endpoints.<name>`` entry; relative file names resolve against ``base``."""
    path = f"endpoints.{name}"
    m = {k: v for k, v in read.mapping(raw, path).items() if k != "disabled"}  # see _disabled
    read.known(m, path, {"url", "urls", "via", "mailbox", "echo", "timeout", *OUTBOUND_KEYS, "wss",
                         *_ENDPOINT_LIMIT_KEYS, *_URL_ONLY_KEYS})
    kinds = [k for k in ("url", "urls", "via", "mailbox", "echo") if k in m]
    if len(kinds) != 1:
        raise ConfigError(f"{path}: needs exactly one of url or via (or urls, a failover list; or mailbox: ID "
                          "for a JX mailbox; or echo: true for the connection-test echo)")
    if "mailbox" in m:
        return _mailbox(name, m, path)
    if "echo" in m:
        return _echo(name, m, path)
    if "via" in m:
        for key in ("timeout", *OUTBOUND_KEYS, "wss", *_ENDPOINT_LIMIT_KEYS, *_URL_ONLY_KEYS):
            if key in m:
                raise ConfigError(f"{path}.{key}: set the {key} on the peer, not on a via endpoint")
        via = read.string(m["via"], f"{path}.via")
        if via not in peers:
            raise ConfigError(f"{path}.via: no peer named {via!r} under peers")
        return PeerEndpoint(name=name, via=via)
    urls = _urls(m, path)
    outbound = outbound_from(m, path, urls[0], base or Path.cwd(), signing=True)
    if len({URL(u).scheme for u in urls}) > 1 and outbound != Outbound():
        raise ConfigError(f"{path}.urls: mix of http and https URLs with ca/cert/key/basic/wss set")
    return UrlEndpoint(
        name=name,
        url=urls[0],
        timeout=read.number(m.get("timeout", DEFAULT_TIMEOUT), f"{path}.timeout", low=0.001, high=MAX_TIMEOUT),
        outbound=outbound,
        urls=urls if "urls" in m else (),
        **_endpoint_limits(m, path),
        forward_credentials=read.flag(m.get("forward_credentials", False), f"{path}.forward_credentials"),
        charset=profile_from(m["charset"], f"{path}.charset", base or Path.cwd()) if "charset" in m else None,
    )


#: JX receiver ids: printable ASCII without blanks, as the JX ids of city halls are.
JX_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,128}")


def _mailbox(name: str, m: Mapping[str, Any], path: str) -> MailboxEndpoint:
    for key in ("timeout", *OUTBOUND_KEYS, "wss", *_ENDPOINT_LIMIT_KEYS, *_URL_ONLY_KEYS):
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


#: The URL of an ``echo: true`` endpoint is this prefix and its name; the gateway answers it itself
#: (gateway/serve/echo.py), echoing the envelope, for ``bmrgw check``.
ECHO_URL_PREFIX = "echo:"


def _echo(name: str, m: Mapping[str, Any], path: str) -> UrlEndpoint:
    if m["echo"] is not True:
        raise ConfigError(f"{path}.echo: write echo: true (or leave it out), not {m['echo']!r}")
    for key in ("timeout", *OUTBOUND_KEYS, "wss", *_ENDPOINT_LIMIT_KEYS, *_URL_ONLY_KEYS):
        if key in m:
            raise ConfigError(f"{path}.{key}: the echo endpoint is answered by the gateway itself; it has no {key}")
    return UrlEndpoint(name=name, url=f"{ECHO_URL_PREFIX}{name}")


def _clients(raw: Any, base: Path) -> Mapping[str, Client]:
    out: dict[str, Client] = {}
    users: dict[str, str] = {}
    subjects: dict[tuple[tuple[str, str], ...], str] = {}
    for name, value in read.mapping(raw, "clients").items():
        client = _client(read.name(name, "clients key"), value, base)
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
    m = read.mapping(raw, path)
    read.known(m, path, {"basic", "cert_subject", "allow", "senders", "jx", "wss", "admin"})
    if "basic" not in m and "cert_subject" not in m:
        raise ConfigError(f"{path}: needs basic or cert_subject (or both) to identify the client")
    jx = read.mapping(read.section(m, "jx"), f"{path}.jx")
    read.known(jx, f"{path}.jx", {"receive", "send"})
    wss = read.mapping(read.section(m, "wss"), f"{path}.wss")
    read.known(wss, f"{path}.wss", {"verify"})
    subject = m.get("cert_subject")
    if subject is not None:
        subject = read.string(subject, f"{path}.cert_subject")
        if not subject_key(subject):
            raise ConfigError(f"{path}.cert_subject: {subject!r} is not a subject like CN=juki-app,O=Example")
    return Client(
        name=name,
        basic=_basic_login(m["basic"], f"{path}.basic") if "basic" in m else None,
        cert_subject=subject,
        allow=read.names(m.get("allow", []), f"{path}.allow", wildcard=True),
        senders=read.names(m["senders"], f"{path}.senders", wildcard=True) if "senders" in m else None,
        jx_receive=read.names(jx.get("receive", []), f"{path}.jx.receive", wildcard=True),
        jx_send=read.names(jx.get("send", []), f"{path}.jx.send", wildcard=True),
        wss_verify=_verify_cert(wss["verify"], f"{path}.wss.verify", base) if "verify" in wss else None,
        admin=_flag(m.get("admin", False), f"{path}.admin"),
    )


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: must be true or false, not {value!r}")
    return value


def _verify_cert(value: Any, path: str, base: Path) -> str:
    """A PEM certificate file strong enough to sign with (RSA-2048 / P-256 at least)."""
    file = read.file(value, path, base)
    try:
        cert = x509.load_pem_x509_certificate(Path(file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {file} does not hold a PEM certificate: {exc}") from exc
    weak = weak_key(cert.public_key())
    if weak is not None:
        raise ConfigError(f"{path}: {file} ({cert.subject.rfc4514_string()}) has {weak}")
    return file


def _basic_login(raw: Any, path: str) -> BasicLogin:
    m = read.mapping(raw, path)
    if "password" in m:
        raise ConfigError(f"{path}: plain passwords are not accepted; use password_hash from bmrgw hash-password")
    read.known(m, path, {"user", "password_hash"})
    user = read.string(m.get("user"), f"{path}.user")
    if ":" in user:
        raise ConfigError(f"{path}.user: {user!r} may not contain ':' (HTTP Basic)")
    password_hash = read.string(m.get("password_hash"), f"{path}.password_hash")
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
    for name, value in read.mapping(raw, "peers").items():
        path = f"peers.{name}"
        m = read.mapping(value, path)
        read.known(m, path, {"url", "urls", "timeout", *OUTBOUND_KEYS, *_ENDPOINT_LIMIT_KEYS})
        if ("url" in m) == ("urls" in m):
            raise ConfigError(f"{path}: needs a url (or urls, a failover list)")
        urls = _urls(m, path)
        out[read.name(name, "peers key")] = Peer(
            name=name,
            url=urls[0],
            timeout=read.number(m.get("timeout", DEFAULT_TIMEOUT), f"{path}.timeout", low=0.001, high=MAX_TIMEOUT),
            outbound=outbound_from(m, path, urls[0], base, signing=False),
            **_endpoint_limits(m, path),
            urls=urls if "urls" in m else (),
        )
    return MappingProxyType(out)


# -- outbound security (endpoints.* and peers.*: ca, cert, key, basic, wss) ----------


def _urls(m: Mapping[str, Any], path: str) -> tuple[str, ...]:
    if "url" in m:
        return (read.url(m["url"], f"{path}.url"),)
    raw = m["urls"]
    if not isinstance(raw, list) or not raw or len(raw) > MAX_URLS:
        raise ConfigError(f"{path}.urls: must be a list of 1 to {MAX_URLS} URLs")
    urls = tuple(read.url(u, f"{path}.urls[{i}]") for i, u in enumerate(raw))
    if len(set(urls)) != len(urls):
        raise ConfigError(f"{path}.urls: lists the same URL twice")
    return urls


def _endpoint_limits(m: Mapping[str, Any], path: str) -> dict[str, Any]:
    limit = m.get("max_concurrent")
    return {
        "max_concurrent": None if limit is None else read.integer(limit, f"{path}.max_concurrent", low=1, high=100_000),
        "queue_timeout": read.number(m.get("queue_timeout", DEFAULT_QUEUE_TIMEOUT), f"{path}.queue_timeout",
                                 low=0, high=MAX_TIMEOUT),
    }


