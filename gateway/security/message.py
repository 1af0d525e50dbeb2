"""The relay's WS-Security step: verify what a client must sign, sign what an endpoint wants signed.

A message needs this step when its client has ``clients.*.wss.verify`` or
its route has ``endpoints.*.wss.sign``.  The relay then reads it whole
(bounded by ``gateway.max_message_bytes``) and hands it here; the pure work
is :mod:`gateway.security.wss`, the state (certificates loaded once per file
version, signing keys, the replay records) is here.

Only plain SOAP envelopes can be signed or verified: a multipart body
(SwA/MTOM attachments) is refused with a clear fault rather than buffered.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from sqlalchemy import Engine, event

from gateway.errors import ConfigError, GatewayError, UnsupportedMediaType, UsageError
from gateway.logs.clock import Clock
from gateway.ns import CT_SOAP11, CT_SOAP12
from gateway.parser import parse
from gateway.store import Store
from routing.config import Client
from routing.settings import GatewaySettings
from routing.table import Route

from .replay import ReplayGuard
from .wss import (
    Signer, TimePolicy, Verified, declared_encoding, load_certificate, sign_envelope, sign_root, verify_envelope, verify_root,
)

__all__ = ["MessageSecurity", "message_security", "add_wss_command"]

#: Messages larger than this are signed/verified in a worker thread, off the event loop.
_INLINE_BYTES = 64 * 1024

T = TypeVar("T")


async def message_security(engine: Engine, clock: Clock) -> MessageSecurity:
    """The relay's WS-Security step on ``engine``'s store, its replay table created when missing."""
    store = replay_store(engine)
    guard = ReplayGuard(store.engine if store is not None else engine)
    await asyncio.to_thread(guard.ensure_schema)
    return MessageSecurity(guard, clock, owned=store)


def replay_store(engine: Engine) -> Store | None:
    """Where SQLite keeps the replay records: a database file of its own beside the store.

    SQLite has one write lock per file and the send/receive log's writer
    process holds it for every batch; replay inserts waiting behind it sleep
    in SQLite's busy handler (tens of milliseconds each).  A single-node
    SQLite gateway loses nothing by a second file.  PostgreSQL (several nodes,
    row locks) keeps the records in the shared store, so all nodes agree:
    ``None`` means "use ``engine``".
    """
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    path = Path(url.database)
    own = url.set(database=str(path.with_name(f"{path.stem}-replay{path.suffix or '.db'}")))
    store = Store(own.render_as_string(hide_password=False))
    event.listen(store.engine, "connect", _synced)  # after the store's own pragmas (NORMAL)
    return store


def _synced(dbapi_connection: Any, _record: Any) -> None:
    """Each replay commit is fsynced: with the store's ``synchronous=NORMAL`` a power cut could undo
    records committed since the last WAL checkpoint, and a message accepted just before it would then
    pass once more within its Timestamp's window.  One fsync per group commit, not per message."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


class MessageSecurity:
    """Verifies and signs whole envelopes for the relay."""

    def __init__(self, guard: ReplayGuard, clock: Clock, *, owned: Store | None = None) -> None:
        self._guard = guard
        self._clock = clock
        self._owned = owned
        self._certs: dict[tuple[str, int, int], x509.Certificate] = {}
        self._signers: dict[tuple[Path, Path, str], Signer] = {}

    def close(self) -> None:
        """Release the replay store when it is one of our own (SQLite)."""
        if self._owned is not None:
            self._owned.close()

    @staticmethod
    def needed(client: Client | None, route: Route) -> bool:
        return (client is not None and client.wss_verify is not None) or route.outbound.wss_sign is not None

    async def apply(self, body: bytes, *, content_type: str, client: Client | None, route: Route,
                    settings: GatewaySettings) -> bytes:
        """``body`` verified (when the client must sign) and signed (when the route wants it)."""
        _plain_soap(content_type)
        # One parse serves both steps, and the signature reuses the digests the verification checked.
        root = await _run(len(body), lambda: parse(body, max_bytes=settings.max_message_bytes))
        digests: tuple[tuple[etree._Element, bytes], ...] = ()
        if client is not None and client.wss_verify is not None:
            digests = (await self._verify(root, len(body), self._certificate(client.wss_verify), settings)).digests
        sign = route.outbound.wss_sign
        if sign is None:
            return body
        signer = self._signer(sign.key, sign.cert, route.outbound.fingerprint)
        now = self._clock.now().ts
        declared = declared_encoding(body)
        return await _run(len(body), lambda: sign_root(root, signer, now=now, ttl=settings.wss.sign_ttl,
                                                       routing_header=settings.routing_header, declared=declared,
                                                       digests=digests))

    async def verify_client(self, body: bytes, *, content_type: str, client: Client | None,
                            settings: GatewaySettings) -> None:
        """For handlers other than the relay (JX, refdb): refuse ``body`` unless ``client``'s
        ``wss.verify`` is satisfied (signature, Timestamp, no replay); nothing to do otherwise."""
        if client is None or client.wss_verify is None:
            return
        _plain_soap(content_type)
        root = await _run(len(body), lambda: parse(body, max_bytes=settings.max_message_bytes))
        await self._verify(root, len(body), self._certificate(client.wss_verify), settings)

    async def _verify(self, root: etree._Element, size: int, cert: x509.Certificate,
                      settings: GatewaySettings) -> Verified:
        now = self._clock.now().ts
        policy = TimePolicy(clock_skew=settings.wss.clock_skew, max_ttl=settings.wss.max_ttl)
        verified = await _run(size, lambda: verify_root(root, cert, now=now, policy=policy,
                                                          routing_header=settings.routing_header))
        await self._guard.remember(verified.digest, keep_until=verified.keep_until, now=now)
        return verified

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


def _plain_soap(content_type: str) -> None:
    if content_type not in (CT_SOAP11, CT_SOAP12):
        raise UnsupportedMediaType(f"WS-Security is applied to plain SOAP envelopes only, not {content_type} "
                                   "(attachments cannot be signed or verified by this gateway yet)")


async def _run(size: int, work: Callable[[], T]) -> T:
    """Small messages inline (a thread hop costs more); big ones in a worker thread."""
    if size <= _INLINE_BYTES:
        return work()
    return await asyncio.to_thread(work)


# -- bmrgw wss: sign and verify one message by hand --------------------------------------

def add_wss_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bmrgw wss sign`` and ``bmrgw wss verify``."""
    p = commands.add_parser(
        "wss", help="sign or verify one SOAP message with WS-Security (for trying and checking by hand)",
        description="Sign a SOAP envelope the way the gateway signs for endpoints.*.wss.sign, or verify "
        "one the way it verifies for clients.*.wss.verify (signature, Timestamp; no replay record).",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    sign = actions.add_parser("sign", help="print FILE (or stdin) signed: Timestamp + signature over Body and routing header",
                              description="Print the envelope in FILE (or stdin) with a wsse:Security header: "
                              "the certificate, a wsu:Timestamp and an RSA- or ECDSA-SHA256 signature over Body, "
                              "Timestamp and the routing header / wsa:To when present.")
    sign.add_argument("file", nargs="?", type=Path, help="the envelope (default: stdin)")
    sign.add_argument("--key", type=Path, required=True, help="PEM private key (e.g. from bmrgw pki)")
    sign.add_argument("--cert", type=Path, required=True, help="PEM certificate of that key")
    sign.add_argument("--ttl", type=float, default=300.0, help="seconds the Timestamp is valid (default 300)")
    sign.set_defaults(run=_sign)
    verify = actions.add_parser("verify", help="check the WS-Security signature of FILE (or stdin)",
                                description="Check that the envelope in FILE (or stdin) is signed by --cert over "
                                "its Body, Timestamp and routing header / wsa:To (when present), and that the "
                                "Timestamp is current. Exit 0 if so, 1 if not.")
    verify.add_argument("file", nargs="?", type=Path, help="the envelope (default: stdin)")
    verify.add_argument("--cert", type=Path, required=True, help="PEM certificate the signature must verify with")
    verify.add_argument("--clock-skew", type=float, default=300.0, help="seconds of clock difference (default 300)")
    verify.add_argument("--max-ttl", type=float, default=3600.0, help="longest Timestamp lifetime (default 3600)")
    verify.set_defaults(run=_verify_command)
    p.set_defaults(run=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _read(file: Path | None) -> bytes:
    try:
        return file.read_bytes() if file is not None else sys.stdin.buffer.read()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from exc


def _pem(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _sign(args: argparse.Namespace) -> int:
    try:
        signer = Signer.load(_pem(args.key), _pem(args.cert))
    except ValueError as exc:
        raise ConfigError(f"{args.key} / {args.cert}: not a PEM key and certificate: {exc}") from exc
    if not _matches(signer):  # else the signature verifies with no certificate, here or at the receiver
        raise UsageError(f"{args.key} does not match {args.cert}: the certificate holds another public key "
                         "(give the key it was issued for)")
    now = datetime.now(UTC)
    sys.stdout.buffer.write(sign_envelope(_read(args.file), signer, now=now, ttl=args.ttl, max_bytes=1 << 30))
    return 0


def _matches(signer: Signer) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return signer.key.public_key().public_bytes(*spki) == signer.cert.public_key().public_bytes(*spki)


def _verify_command(args: argparse.Namespace) -> int:
    try:
        cert = load_certificate(_pem(args.cert))
    except ValueError as exc:
        raise ConfigError(f"{args.cert}: not a PEM certificate: {exc}") from exc
    policy = TimePolicy(clock_skew=args.clock_skew, max_ttl=args.max_ttl)
    try:
        verified = verify_envelope(_read(args.file), cert, now=datetime.now(UTC), policy=policy, max_bytes=1 << 30)
    except GatewayError as exc:
        print(f"not valid ({exc.code}): {exc.reason}", file=sys.stderr)
        return 1
    print(f"valid: signed by {cert.subject.rfc4514_string()} over Body, Timestamp and destination headers, created "
          f"{verified.created.isoformat()}")
    return 0
