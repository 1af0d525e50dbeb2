"""Who is calling: client certificates and HTTP Basic → a configured client.

Secure communication of the standard (§4.5, table 4-10 (B)) and the access
rights of the intermediate-server platform spec (§4): once ``clients`` is
configured in endpoints.yaml, every request to ``/soap…``, ``/jx`` and
``/refdb`` must identify a client, and handlers ask :func:`client_of` who it
is before checking what it may do.  With no ``clients`` the gateway runs
open (development only).

A client is identified by

- its TLS client certificate (mutual TLS), matched on ``cert_subject``;
- HTTP Basic, matched on ``basic.user`` and checked against the scrypt
  ``basic.password_hash`` (see :mod:`gateway.security.passwords`);
- both, when its entry names both: then both must match.

A successful Basic check is remembered for a few minutes (keyed by a keyed
hash of the header, never the password itself), so a busy client does not
pay 50 ms of scrypt per request.  Failures from one address are slowed
down: after a few, each refusal waits longer, up to :data:`MAX_DELAY`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from cryptography import x509

from gateway.errors import GatewayError, Unauthorized
from routing.config import Client, Config, subject_key

from .passwords import hash_password, verify_password

__all__ = ["client_of", "auth_middleware", "Authenticator", "certificate_subject", "PROTECTED_PREFIXES",
           "cleartext_basic_warning"]

#: Paths whose POSTs need an identified client when ``clients`` is configured.
PROTECTED_PREFIXES = ("/soap", "/jx", "/refdb")
#: Refusals from one address before they are slowed down.
FREE_FAILURES = 3
#: The longest a refusal is held back, in seconds.
MAX_DELAY = 8.0
#: Seconds a failure counts against its address.
FAILURE_WINDOW = 300.0
#: Seconds a verified Basic login is remembered.
CACHE_SECONDS = 300.0
_CACHE_SIZE = 4096
_TRACKED_ADDRESSES = 10000
_CHALLENGE = 'Basic realm="bmrgw", charset="UTF-8"'
_KEY = web.RequestKey("client", Client)

Refused = Callable[[web.Request, Unauthorized, str | None], Awaitable[None]]


def client_of(request: web.Request) -> Client | None:
    """The authenticated caller of ``request``; ``None`` only when the gateway runs open."""
    return request.get(_KEY)


def certificate_subject(request: web.Request) -> str | None:
    """The RFC 4514 subject of the caller's TLS client certificate, if it presented one."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


@dataclass(frozen=True)
class _Login:
    user: str
    password: str


def _basic_login(header: str) -> _Login | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("the Authorization header is not valid HTTP Basic") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthorized("the Authorization header is not valid HTTP Basic")
    return _Login(user, password)


class _Throttle:
    """Counts recent failures per address and says how long to hold the next refusal."""

    def __init__(self) -> None:
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failed(self, address: str) -> float:
        now = time.monotonic()
        count, since = self._failures.pop(address, (0, now))
        if now - since > FAILURE_WINDOW:
            count, since = 0, now
        count += 1
        self._failures[address] = (count, since)
        while len(self._failures) > _TRACKED_ADDRESSES:
            self._failures.popitem(last=False)
        return 0.0 if count <= FREE_FAILURES else min(MAX_DELAY, 0.5 * 2 ** (count - FREE_FAILURES - 1))

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


class Authenticator:
    """Identifies the caller of one request against the configured clients."""

    def __init__(self) -> None:
        self._secret = os.urandom(32)
        self._verified: OrderedDict[bytes, tuple[Client, float]] = OrderedDict()
        self.throttle = _Throttle()
        # Unknown users cost a full hash check too, so timing does not tell which users exist.
        self._decoy = hash_password(base64.b64encode(os.urandom(18)).decode())

    async def identify(self, request: web.Request, clients: Mapping[str, Client]) -> Client:
        """The client making ``request``; raises :class:`Unauthorized` with the reason."""
        subject = certificate_subject(request)
        by_cert = _by_subject(clients, subject) if subject else None
        if subject and by_cert is None:
            raise Unauthorized(f"client certificate {subject!r} is not a configured client")
        header = request.headers.get("Authorization")
        login = _basic_login(header) if header else None
        if login is None:
            if by_cert is None:
                raise Unauthorized("authentication required: HTTP Basic or a client certificate")
            if by_cert.basic is not None:
                raise Unauthorized(f"client {by_cert.name!r} must also log in with HTTP Basic")
            return by_cert
        client = await self._check_basic(header or "", login, clients)
        if client.cert_subject is not None and by_cert is not client:
            raise Unauthorized(f"client {client.name!r} must also present its client certificate")
        return client

    async def _check_basic(self, header: str, login: _Login, clients: Mapping[str, Client]) -> Client:
        client = next((c for c in clients.values() if c.basic and c.basic.user == login.user), None)
        if client is None or client.basic is None:
            await asyncio.to_thread(verify_password, login.password, self._decoy)
            raise Unauthorized(f"unknown user {login.user[:64]!r} or wrong password")
        key = hmac.digest(self._secret, header.encode("utf-8", "surrogateescape"), hashlib.sha256)
        cached = self._verified.get(key)
        if cached is not None and cached[0] == client and cached[1] > time.monotonic():
            return client
        if not await asyncio.to_thread(verify_password, login.password, client.basic.password_hash):
            raise Unauthorized(f"unknown user {login.user[:64]!r} or wrong password")
        self._verified[key] = (client, time.monotonic() + CACHE_SECONDS)
        while len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return client


def _by_subject(clients: Mapping[str, Client], subject: str) -> Client | None:
    key = subject_key(subject)
    return next((c for c in clients.values() if c.cert_subject and subject_key(c.cert_subject) == key), None)


def _protected(request: web.Request) -> bool:
    return request.method == "POST" and any(
        request.path == p or request.path.startswith(p + "/") for p in PROTECTED_PREFIXES)


def auth_middleware(
    clients: Callable[[], Mapping[str, Client]],
    answer: Callable[[web.Request, GatewayError], web.Response],
    refused: Refused,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authenticate protected requests before their handler runs.

    ``clients`` gives the clients in force (they follow config reloads);
    ``answer`` renders a refusal as a SOAP fault; ``refused`` records it.
    """
    authenticator = Authenticator()

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        configured = clients()
        if not configured or not _protected(request):
            return await handler(request)
        address = request.remote or "-"
        try:
            request[_KEY] = await authenticator.identify(request, configured)
        except Unauthorized as exc:
            await asyncio.sleep(authenticator.throttle.failed(address))
            await refused(request, exc, _claimed(request))
            response = answer(request, exc)
            response.headers["WWW-Authenticate"] = _CHALLENGE
            return response
        authenticator.throttle.succeeded(address)
        return await handler(request)

    return middleware


def _claimed(request: web.Request) -> str | None:
    """Who the refused caller said it was, for the log (bounded, never the password)."""
    try:
        login = _basic_login(request.headers.get("Authorization", ""))
    except Unauthorized:
        login = None
    if login is not None:
        return f"user:{login.user[:64]}"
    subject = certificate_subject(request)
    return f"cert:{subject[:200]}" if subject else None


def cleartext_basic_warning(config: Config) -> str | None:
    """The startup warning when clients log in with Basic passwords but the gateway listens without TLS."""
    names = sorted(name for name, client in config.clients.items() if client.basic is not None)
    if not names or config.gateway.tls is not None:
        return None
    return (f"clients {', '.join(names)} log in with HTTP Basic passwords but gateway.tls is not set: the "
            "passwords cross the network in clear text (set gateway.tls, or make sure a TLS-terminating "
            "proxy is the only way in)")
