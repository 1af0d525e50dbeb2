"""What a site's connection test needs to know (``bmrgw check --site SITE.yaml``, or flags).

SITE.yaml, written by the site with the values the data centre gave it::

    name: city-a                      # the site, as the report names it
    gateway: https://gw.example.lg.jp:8443
    ca: trust/lgpki-root.pem          # trust anchor for the gateway's certificate
    cert: tls/site.pem                # client certificate (mutual TLS), with key
    key: tls/site-key.pem
    basic: {user: city-a, password_env: BMRGW_PASSWORD}   # or password_file
    sender: juki                      # r:From of the test messages (a business-AP name the site may claim)
    echo: echo                        # the gateway's echo endpoint (endpoints.echo.echo: true)
    ntp: [ntp.example.lg.jp]          # the site's own NTP servers (default: its system clock)
    max_offset: 1.0                   # seconds the two clocks may differ
    jx: {sender: "1310001", receiver: "9999999"}  # test ids: Put as sender to receiver, then Get and Confirm
    refdb: {dataset: residents, file: residents.csv}  # a site that pushes: the push, aborted instead of committed
    files: {to: filecheck, size: 262144, part_size: 65536}  # a test file, in parts, to the DC's test receiver
    timeout: 10

Relative file names resolve against the folder of SITE.yaml.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from yarl import URL

from gateway.errors import UsageError

__all__ = ["Site", "JxTest", "RefdbTest", "FilesTest", "load_site"]

_KEYS = {"name", "gateway", "ca", "cert", "key", "basic", "sender", "echo", "ntp", "max_offset", "jx", "refdb",
         "files", "timeout"}


@dataclass(frozen=True, kw_only=True)
class JxTest:
    sender: str
    """JX senderId the site puts as (one of its client's ``jx.send``)."""
    receiver: str
    """Test receiver id: the site must be allowed to put to it and to poll it (``jx.receive``)."""


@dataclass(frozen=True, kw_only=True)
class RefdbTest:
    dataset: str
    """The dataset the site pushes."""
    file: Path
    """Records as ``bmrgw refdb push`` reads them (CSV or JSON lines)."""


@dataclass(frozen=True, kw_only=True)
class FilesTest:
    to: str
    """The data centre's test receiver (a ``bmrgw receive`` business AP)."""
    size: int = 256 * 1024
    """Bytes of the test file (random, made for each run)."""
    part_size: int = 64 * 1024
    """Bytes per part: small, so the round trip crosses several parts."""


@dataclass(frozen=True, kw_only=True)
class Site:
    """One site's view of the gateway it is about to go live with."""

    gateway: str
    """Base URL of the gateway (``https://host:port``)."""
    name: str = "site"
    """The site, as the report names it."""
    ca: Path | None = None
    """Trust anchor(s) for the gateway's certificate; ``None``: the system's."""
    cert: Path | None = None
    """Client certificate for mutual TLS (PEM, may hold its chain)."""
    key: Path | None = None
    """Its private key."""
    user: str | None = None
    """HTTP Basic user."""
    password: str | None = None
    """HTTP Basic password (read from ``password_env`` or ``password_file``)."""
    sender: str | None = None
    """``r:From`` of the test messages; ``None`` leaves it out."""
    echo: str | None = None
    """The gateway's echo endpoint; ``None`` skips the relay round trip."""
    ntp: tuple[str, ...] = ()
    """The site's NTP servers; empty compares the site's system clock."""
    max_offset: float = 1.0
    """Seconds the site's and the gateway's clocks may differ."""
    jx: JxTest | None = None
    """The JX round trip; ``None`` skips it."""
    refdb: RefdbTest | None = None
    """The refdb dry-run push; ``None`` skips it (a site that does not push)."""
    files: FilesTest | None = None
    """The file-transfer round trip; ``None`` skips it."""
    timeout: float = 10.0
    """Seconds each step may take."""

    @property
    def url(self) -> URL:
        return URL(self.gateway)


def load_site(path: Path) -> Site:
    """SITE.yaml as a :class:`Site`; :class:`UsageError` naming what is wrong."""
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except YAMLError as exc:
        raise UsageError(f"{path} is not YAML: {exc}") from exc
    if not isinstance(raw, dict) or "gateway" not in raw:
        raise UsageError(f"{path}: needs at least 'gateway: https://host:port'")
    unknown = set(raw) - _KEYS
    if unknown:
        raise UsageError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_KEYS))})")
    return site_from(raw, path.resolve().parent, str(path))


def site_from(raw: dict[str, Any], base: Path, where: str) -> Site:
    """A :class:`Site` from a mapping (SITE.yaml's, or one the flags make)."""
    gateway = str(raw["gateway"])
    if URL(gateway).scheme not in ("http", "https") or not URL(gateway).host:
        raise UsageError(f"{where}: gateway {gateway!r} must be an http(s) URL (https://host:port)")
    file = {k: (base / str(raw[k])) for k in ("ca", "cert", "key") if raw.get(k)}
    if ("cert" in file) != ("key" in file):
        raise UsageError(f"{where}: a client certificate needs both cert and key")
    user, password = _basic(raw.get("basic"), base, where)
    jx = raw.get("jx")
    if jx is not None and not (isinstance(jx, dict) and "sender" in jx and "receiver" in jx):
        raise UsageError(f"{where}: jx needs sender and receiver ids")
    ntp = raw.get("ntp") or ()
    refdb, files = raw.get("refdb"), raw.get("files")
    if files is not None and not (isinstance(files, dict) and "to" in files):
        raise UsageError(f"{where}: files needs to: the test receiver's business-AP name")
    if refdb is not None and not (isinstance(refdb, dict) and "dataset" in refdb and "file" in refdb):
        raise UsageError(f"{where}: refdb needs dataset and file")
    return Site(gateway=gateway.rstrip("/"), name=str(raw.get("name", "site")), ca=file.get("ca"),
                cert=file.get("cert"), key=file.get("key"), user=user, password=password,
                sender=str(raw["sender"]) if raw.get("sender") else None,
                echo=str(raw["echo"]) if raw.get("echo") else None,
                ntp=tuple(str(s) for s in ([ntp] if isinstance(ntp, str) else ntp)),
                max_offset=float(raw.get("max_offset", 1.0)),
                jx=JxTest(sender=str(jx["sender"]), receiver=str(jx["receiver"])) if jx else None,
                refdb=RefdbTest(dataset=str(refdb["dataset"]), file=base / str(refdb["file"])) if refdb else None,
                files=FilesTest(to=str(files["to"]), size=int(files.get("size", 256 * 1024)),
                                part_size=int(files.get("part_size", 64 * 1024))) if files else None,
                timeout=float(raw.get("timeout", 10.0)))


def _basic(raw: Any, base: Path, where: str) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    if not isinstance(raw, dict) or "user" not in raw:
        raise UsageError(f"{where}: basic needs user and password_env or password_file")
    if "password_env" in raw:
        password = os.environ.get(str(raw["password_env"]))
        if password is None:
            raise UsageError(f"{where}: basic.password_env: ${raw['password_env']} is not set")
    elif "password_file" in raw:
        try:
            password = (base / str(raw["password_file"])).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"{where}: basic.password_file: {exc.strerror or exc}") from exc
    else:
        raise UsageError(f"{where}: basic needs password_env or password_file (never the password itself)")
    return str(raw["user"]), password
