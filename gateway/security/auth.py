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

A password check costs ~50 ms of scrypt, so checks are kept from slowing
anyone else down (SPEC.md "Hostile input never stalls the gateway"):

- they run in a small thread pool of their own
  (:class:`~gateway.security.passwords.PasswordChecks`), never in the
  default executor that the JX store and others use; when ``CHECK_QUEUE``
  checks already wait, the next login is refused at once (503
  ``GatewayBusy``, :class:`LoginBusy`) instead of queueing.  Its threads run
  at the lowest CPU priority (nice 19): hashing takes only CPU that the event
  loops and the log writer leave over, so a flood slows the password checks
  down, not the service.  Checks from addresses that failed lately queue
  behind the others and may not take the places kept for them, so a client
  logging in for the first time during a flood is still checked;
- a per-address throttle applies *before* the hash: after
  :data:`FREE_FAILURES` failed checks (counting checks still running), each
  further check from that address is held back 0.5, 1, 2, … up to
  :data:`MAX_DELAY` seconds, and one that would wait longer is refused at
  once unchecked (429 ``TooManyRequests``, :class:`LoginThrottled`).  Only
  :data:`FAILURE_WINDOW` seconds without a failure forget them — a valid
  login does not;
- a successful check is remembered for :data:`CACHE_SECONDS` (keyed by an
  HMAC, under a per-process random key, of the address and the header —
  never the password itself), so a busy client does not pay scrypt per
  request, and its verified logins pass without meeting the throttle.  A
  user who failed from an address meets the throttle there even with a
  remembered login: guessing its password must never be faster than the
  throttle allows.

A refusal that cost no password check (throttled, pool full, no or bad
credentials) is counted per address and logged as one ``auth-tally``
record per interval (:mod:`gateway.security.tally`); a refusal after a
check is logged on its own.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from cryptography import x509

from gateway.errors import GatewayError, LoginBusy, LoginThrottled, Unauthorized
from routing.config import Client, Config, subject_key

from .passwords import PasswordChecks, hash_password
from .tally import RefusalTally
from .tls import certificate_key_problem

__all__ = ["client_of", "auth_middleware", "install_auth", "Authenticator", "PasswordChecks", "certificate_subject",
           "PROTECTED_PREFIXES", "cleartext_basic_warning", "AUTHENTICATOR", "claimed_identity"]

#: Paths whose POSTs need an identified client when ``clients`` is configured (under ``/api/``, every method).
PROTECTED_PREFIXES = ("/soap", "/jx", "/refdb")
#: Refusals from one address before they are slowed down.
FREE_FAILURES = 3
#: The longest a refusal is held back, in seconds.
MAX_DELAY = 8.0
#: Seconds without a failure after which an address's failures are forgotten.
FAILURE_WINDOW = 300.0
#: Seconds a verified Basic login is remembered.
CACHE_SECONDS = 300.0
_CACHE_SIZE = 4096
_TRACKED_ADDRESSES = 10000
_TRACKED_USERS = 32  # per address; beyond, every user of that address is treated as guessed at
_CHALLENGE = 'Basic realm="bmrgw", charset="UTF-8"'
_KEY = web.RequestKey("client", Client)
_CHECKED = web.RequestKey("password_checked", bool)

Refused = Callable[[web.Request, GatewayError, str | None], Awaitable[None]]


def client_of(request: web.Request) -> Client | None:
    """The authenticated caller of ``request``; ``None`` only when the gateway runs open."""
    return request.get(_KEY)


def certificate_subject(request: web.Request) -> str | None:
    """The RFC 4514 subject of the caller's TLS client certificate, if it presented one."""
    cert = peer_certificate(request)
    return None if cert is None else cert.subject.rfc4514_string()


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The caller's TLS client certificate, if it presented one."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


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


@dataclass(eq=False)
class _Address:
    failures: int = 0
    last_failure: float = 0.0
    checking: int = 0
    """Checks admitted and not finished: they count as failures until they end."""
    next_start: float = 0.0
    """When the last held-back check was let through (the next one waits after it)."""
    users: set[str] = field(default_factory=set)
    everyone: bool = False
    busy_until: float = 0.0
    """Until when its checks rank behind others' because one was refused busy (not a failure: no delay)."""


class _Throttle:
    """Failed password checks per address, and when the next check from there may start."""

    def __init__(self) -> None:
        self._addresses: OrderedDict[str, _Address] = OrderedDict()

    def _entry(self, address: str, now: float) -> _Address:
        entry = self._addresses.pop(address, None) or _Address()
        if entry.failures and now - entry.last_failure > FAILURE_WINDOW:
            entry.failures, entry.users, entry.everyone = 0, set(), False
        self._addresses[address] = entry
        while len(self._addresses) > _TRACKED_ADDRESSES:
            self._addresses.popitem(last=False)
        return entry

    def failing(self, address: str) -> bool:
        """Whether a check from ``address`` queues behind those of other addresses: the address failed a
        check lately, had one refused because the pool was full, or has another one in flight."""
        entry = self._addresses.get(address)
        return entry is not None and (entry.failures > 0 or entry.checking > 1
                                      or entry.busy_until > time.monotonic())

    def busy(self, address: str) -> None:
        """A check from ``address`` was refused because the pool was full (a flood meets the pool first)."""
        self._entry(address, time.monotonic()).busy_until = time.monotonic() + FAILURE_WINDOW

    def suspect(self, address: str, user: str) -> bool:
        """Whether ``user`` failed a check from ``address`` lately (its remembered login must not skip the throttle)."""
        entry = self._addresses.get(address)
        return entry is not None and entry.failures > 0 and (entry.everyone or user in entry.users)

    def admit(self, address: str) -> float:
        """Let one check from ``address`` start; returns the seconds to hold it first.

        Raises :class:`LoginThrottled` when it would have to wait longer than MAX_DELAY.
        """
        now = time.monotonic()
        entry = self._entry(address, now)
        pending = entry.failures + entry.checking
        if pending < FREE_FAILURES:
            entry.checking += 1
            return 0.0
        start = max(now, entry.next_start) + min(MAX_DELAY, 0.5 * 2.0 ** (pending - FREE_FAILURES))
        if start - now > MAX_DELAY:
            retry = max(1, math.ceil(entry.next_start - now))
            raise LoginThrottled(f"too many failed logins from {address}: password not checked, "
                                 f"try again in {retry} s", retry_after=retry)
        entry.checking += 1
        entry.next_start = start
        return start - now

    def done(self, address: str, user: str, *, failed: bool) -> None:
        """A check admitted by :meth:`admit` ended (``failed``: it ran and did not match)."""
        entry = self._entry(address, time.monotonic())
        entry.checking = max(0, entry.checking - 1)
        if not failed:
            return  # a valid login resets nothing: it is no evidence the address stopped guessing
        entry.failures += 1
        entry.last_failure = time.monotonic()
        if len(entry.users) < _TRACKED_USERS:
            entry.users.add(user[:64])
        else:
            entry.everyone = True


@dataclass(frozen=True)
class _Remembered:
    client: Client
    until: float


class Authenticator:
    """Identifies the caller of one request against the configured clients."""

    def __init__(self, checks: PasswordChecks | None = None) -> None:
        self._secret = os.urandom(32)
        self._verified: OrderedDict[bytes, _Remembered] = OrderedDict()
        self.throttle = _Throttle()
        self.checks = checks or PasswordChecks()
        # Unknown users cost a full hash check too, so timing does not tell which users exist.
        self._decoy = hash_password(base64.b64encode(os.urandom(18)).decode())

    def close(self) -> None:
        self.checks.close()

    async def identify(self, request: web.Request, clients: Mapping[str, Client]) -> Client:
        """The client making ``request``; raises :class:`Unauthorized` with the reason
        (:class:`LoginThrottled` or :class:`LoginBusy` when its password was not checked)."""
        cert = peer_certificate(request)
        subject = None if cert is None else cert.subject.rfc4514_string()
        if cert is not None and (weak := certificate_key_problem(cert)):
            raise Unauthorized(f"client certificate {subject!r} has {weak}")  # OpenSSL let it through: DSA
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
        client = await self._check_basic(request, header or "", login, clients)
        if client.cert_subject is not None and by_cert is not client:
            raise Unauthorized(f"client {client.name!r} must also present its client certificate")
        return client

    def remembered(self, header: str, address: str, clients: Mapping[str, Client]) -> Client | None:
        """The client whose Basic login ``header`` from ``address`` was verified lately and may pass
        without a check (:meth:`identify` returns it at once); ``None`` when it needs the full way."""
        try:
            login = _basic_login(header)
        except Unauthorized:
            return None
        if login is None:
            return None
        client, key = self._lookup(header, address, login, clients)
        if client is not None and self._remembered(key, client) and not self.throttle.suspect(address, login.user):
            return client
        return None

    def _lookup(self, header: str, address: str, login: _Login,
                clients: Mapping[str, Client]) -> tuple[Client | None, bytes]:
        client = next((c for c in clients.values() if c.basic and c.basic.user == login.user), None)
        return client, hmac.digest(self._secret, f"{address}\0{header}".encode("utf-8", "surrogateescape"),
                                   hashlib.sha256)

    async def _check_basic(self, request: web.Request, header: str, login: _Login,
                           clients: Mapping[str, Client]) -> Client:
        address = request.remote or "-"
        client, key = self._lookup(header, address, login, clients)
        if client is not None and self._remembered(key, client) and not self.throttle.suspect(address, login.user):
            return client
        hold = self.throttle.admit(address)
        failed = False
        try:
            if hold:
                await asyncio.sleep(hold)
            if client is not None and self._remembered(key, client):
                return client
            stored = client.basic.password_hash if client is not None and client.basic is not None else self._decoy
            try:
                matched = await self.checks.verify(login.password, stored, suspect=self.throttle.failing(address))
            except LoginBusy:
                self.throttle.busy(address)
                raise
            request[_CHECKED] = True
            if client is None or not matched:
                failed = True
                raise Unauthorized(f"unknown user {login.user[:64]!r} or wrong password")
        finally:
            self.throttle.done(address, login.user, failed=failed)
        self._remember(key, client)
        return client

    def _remembered(self, key: bytes, client: Client) -> bool:
        found = self._verified.get(key)
        return found is not None and found.client == client and found.until > time.monotonic()

    def _remember(self, key: bytes, client: Client) -> None:
        self._verified[key] = _Remembered(client, time.monotonic() + CACHE_SECONDS)
        while len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)


#: The app's authenticator, for handlers that identify callers themselves (the console: GETs too,
#: answered in HTML), sharing its throttle and password-check pool with the middleware.
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


def _by_subject(clients: Mapping[str, Client], subject: str) -> Client | None:
    key = subject_key(subject)
    return next((c for c in clients.values() if c.cert_subject and subject_key(c.cert_subject) == key), None)


def _protected(request: web.Request) -> bool:
    if request.path.startswith("/api/"):  # the HTTP API relay: every method
        return True
    return request.method == "POST" and any(
        request.path == p or request.path.startswith(p + "/") for p in PROTECTED_PREFIXES)


def auth_middleware(
    clients: Callable[[], Mapping[str, Client]],
    answer: Callable[[web.Request, GatewayError], web.Response],
    refused: Refused,
    authenticator: Authenticator | None = None,
    tally: RefusalTally | None = None,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Authenticate protected requests before their handler runs.

    ``clients`` gives the clients in force (they follow config reloads);
    ``answer`` renders a refusal as a SOAP fault; ``refused`` records it —
    or, when it cost no password check and there is a ``tally``, counts it there.
    """
    checker = authenticator or Authenticator()

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        configured = clients()
        if not configured or not _protected(request):
            return await handler(request)
        try:
            request[_KEY] = await checker.identify(request, configured)
        except (Unauthorized, LoginThrottled, LoginBusy) as exc:
            if tally is not None and not request.get(_CHECKED, False):
                await tally.add(request, exc, claimed_identity(request))
            else:
                await refused(request, exc, claimed_identity(request))
            return _refusal(answer(request, exc), exc)
        return await handler(request)

    return middleware


def install_auth(app: web.Application, clients: Callable[[], Mapping[str, Client]],
                 answer: Callable[[web.Request, GatewayError], web.Response], refused: Refused) -> None:
    """Add :func:`auth_middleware` to ``app``; its password-check pool ends with the app, and its
    counts of unchecked refusals are written when the app shuts down."""
    authenticator = app[AUTHENTICATOR] = Authenticator()
    tally = RefusalTally(app)
    tally.install()

    async def close(_app: web.Application) -> None:
        authenticator.close()

    app.middlewares.append(auth_middleware(clients, answer, refused, authenticator, tally))
    app.on_cleanup.append(close)


def _refusal(response: web.Response, error: GatewayError) -> web.Response:
    if isinstance(error, LoginThrottled):
        response.headers["Retry-After"] = str(math.ceil(error.retry_after))
    elif isinstance(error, LoginBusy):
        response.headers["Retry-After"] = "1"
    else:
        response.headers["WWW-Authenticate"] = _CHALLENGE
    return response


def claimed_identity(request: web.Request) -> str | None:
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
