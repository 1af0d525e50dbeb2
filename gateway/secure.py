"""The relay's WS-Security step: verify what a client must sign, sign what an endpoint wants signed.

A message needs this step when its client has ``clients.*.wss.verify`` or
its route has ``endpoints.*.wss.sign``.  The relay then reads it whole
(bounded by ``gateway.max_message_bytes``) and hands it here; the pure work
is :mod:`gateway.wss`, the state (certificates loaded once per file
version, signing keys, the replay records) is here.

Only plain SOAP envelopes can be signed or verified: a multipart body
(SwA/MTOM attachments) is refused with a clear fault rather than buffered.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from sqlalchemy import Engine

from routing.config import Client, GatewaySettings
from routing.table import Route

from .clock import Clock
from .errors import ConfigError, UnsupportedMediaType
from .ns import CT_SOAP11, CT_SOAP12
from .replay import ReplayGuard
from .wss import Signer, TimePolicy, load_certificate, sign_envelope, verify_envelope

__all__ = ["MessageSecurity", "message_security"]

#: Messages larger than this are signed/verified in a worker thread, off the event loop.
_INLINE_BYTES = 64 * 1024

T = TypeVar("T")


async def message_security(engine: Engine, clock: Clock) -> MessageSecurity:
    """The relay's WS-Security step on ``engine``'s store, its replay table created when missing."""
    guard = ReplayGuard(engine)
    await asyncio.to_thread(guard.ensure_schema)
    return MessageSecurity(guard, clock)


class MessageSecurity:
    """Verifies and signs whole envelopes for the relay."""

    def __init__(self, guard: ReplayGuard, clock: Clock) -> None:
        self._guard = guard
        self._clock = clock
        self._certs: dict[tuple[str, int, int], x509.Certificate] = {}
        self._signers: dict[tuple[Path, Path, str], Signer] = {}

    @staticmethod
    def needed(client: Client | None, route: Route) -> bool:
        return (client is not None and client.wss_verify is not None) or route.outbound.wss_sign is not None

    async def apply(self, body: bytes, *, content_type: str, client: Client | None, route: Route,
                    settings: GatewaySettings) -> bytes:
        """``body`` verified (when the client must sign) and signed (when the route wants it)."""
        if content_type not in (CT_SOAP11, CT_SOAP12):
            raise UnsupportedMediaType(f"WS-Security is applied to plain SOAP envelopes only, not {content_type} "
                                       "(attachments cannot be signed or verified by this gateway yet)")
        if client is not None and client.wss_verify is not None:
            await self._verify(body, self._certificate(client.wss_verify), settings)
        sign = route.outbound.wss_sign
        if sign is None:
            return body
        signer = self._signer(sign.key, sign.cert, route.outbound.fingerprint)
        now = self._clock.now().ts
        return await _run(len(body), lambda: sign_envelope(body, signer, now=now, ttl=settings.wss.sign_ttl,
                                                           max_bytes=settings.max_message_bytes))

    async def _verify(self, body: bytes, cert: x509.Certificate, settings: GatewaySettings) -> None:
        now = self._clock.now().ts
        policy = TimePolicy(clock_skew=settings.wss.clock_skew, max_ttl=settings.wss.max_ttl)
        verified = await _run(len(body), lambda: verify_envelope(body, cert, now=now, policy=policy,
                                                                 max_bytes=settings.max_message_bytes))
        await self._guard.remember(verified.digest, keep_until=verified.keep_until, now=now)

    def _certificate(self, path: str) -> x509.Certificate:
        """The PEM certificate at ``path``, read again only when the file changed."""
        try:
            st = os.stat(path)
            key = (path, st.st_mtime_ns, st.st_size)
            cert = self._certs.get(key)
            if cert is None:
                cert = self._certs[key] = load_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the WS-Security certificate {path}: {exc}") from exc
        return cert

    def _signer(self, key: Path, cert: Path, fingerprint: str) -> Signer:
        signer = self._signers.get((key, cert, fingerprint))
        if signer is None:
            try:
                signer = Signer.load(key.read_bytes(), cert.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load the WS-Security signing key {key}: {exc}") from exc
            self._signers[(key, cert, fingerprint)] = signer
        return signer


async def _run(size: int, work: Callable[[], T]) -> T:
    """Small messages inline (a thread hop costs more); big ones in a worker thread."""
    if size <= _INLINE_BYTES:
        return work()
    return await asyncio.to_thread(work)
