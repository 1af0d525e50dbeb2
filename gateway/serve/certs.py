"""Certificates reloaded without a restart, and their expiry (README "Bringing a site live").

The gateway watches every certificate file its config names, twice a second
like the config watcher (:mod:`routing.watch`):

* the server certificate and key, ``client_ca`` and ``crl``
  (``gateway.tls``): a whole new server context is built from the files
  and, only if that succeeds, swapped into the listening socket's
  :class:`~gateway.security.tls.ReloadingContext` — new connections get
  it, open ones keep theirs, none fails.  A context that cannot be built
  (a certificate caught between its key's and its own rename, a CRL signed
  by the wrong CA) leaves the one in force and is logged once;
* the outbound files of endpoints and peers (``ca``, ``cert``, ``key``,
  ``wss.sign``): the config is reloaded, whose fingerprint of those files
  gives the upstream seam fresh client contexts.

SIGHUP does both at once.  Each certificate's expiry (and each CRL's next
update) is shown in ``/healthz``, ``/status`` (``bmrgw status``) and the
metric ``bmrgw_certificate_expiry_seconds``; from 30 days before, it is
flagged and the gateway warns once a day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from gateway.errors import ConfigError
from gateway.security.tls import ReloadingContext, server_context
from routing.config import Config
from routing.outbound import Outbound
from routing.settings import TlsSettings
from routing.watch import POLL_SECONDS, LiveTable

__all__ = ["CertificateWatch", "CERTS", "WARN_DAYS", "Expiry"]

log = logging.getLogger("bmrgw.tls")

#: From this many days before a certificate expires, it is flagged and warned about.
WARN_DAYS = 30
_DAY = 86400.0

Identity = tuple[tuple[str, int, int, int] | tuple[str], ...]


@dataclass(frozen=True, kw_only=True)
class Expiry:
    """One certificate (or CRL) in force and when it runs out."""

    role: str
    """``server``, ``client_ca``, ``crl``, ``endpoint NAME``, ``peer NAME``, ``endpoint NAME ca``, …"""
    path: str
    subject: str
    not_after: dt.datetime
    """End of validity (a CRL: its nextUpdate)."""

    def seconds_left(self, now: float) -> float:
        return self.not_after.timestamp() - now

    def as_json(self, now: float) -> dict[str, Any]:
        left = self.seconds_left(now)
        return {"role": self.role, "path": self.path, "subject": self.subject,
                "not_after": self.not_after.isoformat(), "days_left": round(left / _DAY, 1),
                "warning": left < WARN_DAYS * _DAY, "expired": left <= 0}


class CertificateWatch:
    """The certificate files of the config in force: their state, reloads and expiries."""

    def __init__(self, live: LiveTable) -> None:
        self.live = live
        self.context: ReloadingContext | None = None
        self.error: str | None = None
        self.reloads = 0
        self.expiries: tuple[Expiry, ...] = ()
        self._server_seen: tuple[TlsSettings | None, Identity] | None = None
        self._server_failed: tuple[TlsSettings | None, Identity] | None = None
        self._outbound_seen: Identity | None = None
        self._config_seen: Config | None = None
        self._warned: dict[str, float] = {}

    # -- the listening socket's context ---------------------------------------------

    def listen_context(self) -> ReloadingContext | None:
        """The context to listen with (``None`` without ``gateway.tls``); :class:`ConfigError` if unusable."""
        tls = self.live.current.config.gateway.tls
        if tls is None:
            return None
        seen = (tls, _identity(_server_files(tls)))
        self.context = ReloadingContext(server_context(tls))
        self._server_seen = seen
        self._inventory()
        return self.context

    def reload_server(self, why: str) -> bool:
        """Build a new server context from the files now; swap it in if it works.  True when swapped."""
        tls = self.live.current.config.gateway.tls
        seen = (tls, _identity(_server_files(tls)) if tls is not None else ())
        if self.context is None or tls is None:
            if tls is not None and seen != self._server_failed:
                log.warning("%s: gateway.tls is set, but the gateway listens without TLS: restart it", why)
                self._server_failed = seen
            return False
        try:
            fresh = server_context(tls)
        except ConfigError as exc:
            return self._refused(seen, why, exc.reason)
        self.context.current = fresh  # one assignment: each new connection takes this one or the old
        self._server_seen, self._server_failed, self.error = seen, None, None
        self.reloads += 1
        self._inventory()
        log.warning("%s: TLS reloaded (%s): new connections use it", why, _what(tls))
        return True

    def _refused(self, seen: tuple[TlsSettings | None, Identity], why: str, reason: str) -> bool:
        if seen != self._server_failed:  # once per state of the files, not twice a second
            log.error("%s: TLS certificates NOT reloaded, the ones in force stay: %s", why, reason)
        self._server_failed, self.error = seen, reason
        return False

    # -- watching -------------------------------------------------------------------

    def poll(self, reload_config: Callable[[], None]) -> None:
        """One look at the files: reload what changed."""
        config = self.live.current.config
        outbound = _identity(_outbound_files(config))
        if config is not self._config_seen:  # the config watcher (or SIGHUP) loaded it: files read already
            self._config_seen = config
            self._inventory()
        elif self._outbound_seen is not None and outbound != self._outbound_seen:
            log.warning("an endpoint's or peer's certificate file changed: reloading the config")
            reload_config()
            config = self._config_seen = self.live.current.config
            outbound = _identity(_outbound_files(config))
            self._inventory()
        self._outbound_seen = outbound
        tls = config.gateway.tls
        seen = (tls, _identity(_server_files(tls)) if tls is not None else ())
        if seen not in (self._server_seen, self._server_failed) and (self.context is not None or tls is not None):
            self.reload_server("certificate files changed")
        self._warn()

    async def watch(self, reload_config: Callable[[], None], *, interval: float = POLL_SECONDS) -> None:
        """Poll until cancelled."""
        self._inventory()
        self._config_seen = self.live.current.config
        self._outbound_seen = _identity(_outbound_files(self._config_seen))
        while True:
            await asyncio.sleep(interval)
            try:
                self.poll(reload_config)
            except OSError as exc:  # a file vanished between two looks: the next poll sees the new state
                log.debug("certificate watch: %s", exc)

    # -- expiry ---------------------------------------------------------------------

    def _inventory(self) -> None:
        self.expiries = tuple(_expiries(self.live.current.config))

    def _warn(self) -> None:
        now = time.time()
        for item in self.expiries:
            left = item.seconds_left(now)
            if left < WARN_DAYS * _DAY and now - self._warned.get(item.role + item.path, 0.0) > _DAY:
                self._warned[item.role + item.path] = now
                log.warning("certificate %s (%s, %s) %s", item.role, item.subject, item.path,
                            "HAS EXPIRED" if left <= 0 else f"expires in {left / _DAY:.0f} days: renew it "
                            "(bmrgw pki csr, then bmrgw pki install)")

    def status(self) -> dict[str, Any]:
        """For ``/healthz`` and ``/status``."""
        now = time.time()
        listed = [e.as_json(now) for e in self.expiries]
        return {"reloads": self.reloads, "error": self.error, "certificates": listed,
                "warnings": [f"{c['role']} {c['subject']} expires {c['not_after']}" for c in listed if c["warning"]]}


#: The app's certificate watch (set by :func:`gateway.serve.app.make_app`).
CERTS = web.AppKey("certs", CertificateWatch)


def _what(tls: TlsSettings) -> str:
    named = [("server certificate", tls.cert), ("client CA", tls.client_ca), ("CRL", tls.crl)]
    return ", ".join(f"{what} {path}" for what, path in named if path is not None)


def _server_files(tls: TlsSettings) -> list[str]:
    return [f for f in (tls.cert, tls.key, tls.client_ca, tls.crl) if f is not None]


def _outbounds(config: Config) -> Iterator[tuple[str, Outbound]]:
    for name, ep in config.endpoints.items():
        outbound = getattr(ep, "outbound", None)
        if isinstance(outbound, Outbound):
            yield f"endpoint {name}", outbound
    for name, peer in config.peers.items():
        yield f"peer {name}", peer.outbound


def _outbound_files(config: Config) -> list[str]:
    files: list[str] = []
    for _, out in _outbounds(config):
        files += [str(p) for p in (out.ca, out.cert, out.key) if p is not None]
        if out.wss_sign is not None:
            files += [str(out.wss_sign.key), str(out.wss_sign.cert)]
    return files


def _identity(files: list[str]) -> Identity:
    found: list[tuple[str, int, int, int] | tuple[str]] = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            found.append((name,))
            continue
        found.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


def _expiries(config: Config) -> Iterator[Expiry]:
    tls = config.gateway.tls
    wanted: list[tuple[str, Path | str | None]] = []
    if tls is not None:
        wanted += [("server", tls.cert), ("client_ca", tls.client_ca)]
    for role, out in _outbounds(config):
        wanted += [(role, out.cert), (f"{role} ca", out.ca)]
        if out.wss_sign is not None:
            wanted.append((f"{role} wss", out.wss_sign.cert))
    for role, path in wanted:
        if path is not None:
            yield from _read(role, str(path))
    if tls is not None and tls.crl is not None:
        yield from _crls(tls.crl)


def _read(role: str, path: str) -> Iterator[Expiry]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError):
        return
    # A server file holds its chain: the first certificate is the one that matters; a CA bundle: all.
    for cert in certs[:1] if role == "server" or not role.endswith(("ca", "client_ca")) else certs:
        yield Expiry(role=role, path=path, subject=cert.subject.rfc4514_string(), not_after=cert.not_valid_after_utc)


def _crls(path: str) -> Iterator[Expiry]:
    end = b"-----END X509 CRL-----"
    try:
        data = Path(path).read_bytes()
        crls = ([x509.load_pem_x509_crl(b + end) for b in data.split(end)[:-1]] if end in data
                else [x509.load_der_x509_crl(data)])
    except (OSError, ValueError):
        return
    for crl in crls:
        if crl.next_update_utc is not None:
            yield Expiry(role="crl", path=path, subject=crl.issuer.rfc4514_string(), not_after=crl.next_update_utc)
