"""Who may use the console and how its forms are protected (SPEC.md "Operators").

- Every console request (GETs too) is identified as the relay's callers
  are — HTTP Basic or a client certificate, through the app's
  :class:`~gateway.security.auth.Authenticator`, so the password throttle
  and the scrypt pool are shared — and only a client with ``admin: true``
  is let in: 401 (with a Basic challenge) without valid credentials, 403
  for a known client that is not an admin, and 403 when no client is an
  admin (an open gateway has no console).
- Forms that change state carry a CSRF token: an HMAC, under a secret
  shared by every process on the store, of a random session id (a cookie,
  ``HttpOnly; SameSite=Strict``, scoped to ``/console``) and the client's
  name.  A POST must carry the token that matches its cookie and must not
  come from another origin (``Origin`` and ``Sec-Fetch-Site`` checked when
  the browser sends them, as every current one does).  The secret lives in
  the store, not the process: with ``--workers N`` the page and the POST
  may meet different processes.
- Every answer forbids framing, scripts and sniffing (a strict CSP): the
  pages need none of it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import Column, Engine, Float, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.errors import Forbidden, GatewayError, Unauthorized
from gateway.keys import LIVE
from gateway.security.auth import AUTHENTICATOR, claimed_identity
from gateway.store import create_tables
from routing.config import Client

__all__ = ["Visit", "SESSION_COOKIE", "SECRET", "load_secret", "identify", "csrf_token", "check_post",
           "HEADERS", "set_session", "secure", "challenge_headers", "claimed"]

SESSION_COOKIE = "bmrgw_console"
SECRET = web.AppKey("console_secret", bytes)
_CHALLENGE = 'Basic realm="bmrgw console", charset="UTF-8"'

#: Sent with every console answer.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_meta = MetaData()
_SECRET_TABLE = Table(
    "console_secret", _meta,
    Column("name", String(32), primary_key=True),
    Column("value", String(128), nullable=False),
    Column("created", Float, nullable=False),
)


def load_secret(engine: Engine) -> bytes:
    """The CSRF secret every process on this store shares (made by the first one that asks)."""
    create_tables(engine, _meta)
    query = select(_SECRET_TABLE.c.value).where(_SECRET_TABLE.c.name == "csrf")
    with engine.connect() as connection:
        found = connection.execute(query).scalar()
    if found is None:
        try:
            with engine.begin() as connection:
                connection.execute(insert(_SECRET_TABLE).values(
                    name="csrf", value=secrets.token_urlsafe(48), created=time.time()))
        except IntegrityError:  # another process made it first: take theirs
            pass
        with engine.connect() as connection:
            found = connection.execute(query).scalar_one()
    return str(found).encode()


@dataclass(frozen=True)
class Visit:
    """An admitted console request: who, and its session (new when the cookie must be set)."""

    client: Client
    session: str
    new_session: bool

    def token(self, secret: bytes) -> str:
        return csrf_token(secret, self.session, self.client.name)


async def identify(request: web.Request) -> Visit:
    """The admin making ``request``: :class:`Unauthorized` (401) without valid credentials,
    :class:`Forbidden` (403) for a client that is not an admin, or the throttle's refusals."""
    clients = request.app[LIVE].current.config.clients
    if not any(c.admin for c in clients.values()):
        raise Forbidden("no client has admin: true in endpoints.yaml: the console is closed")
    client = await request.app[AUTHENTICATOR].identify(request, clients)
    if not client.admin:
        raise Forbidden(f"client {client.name!r} is not an admin (clients.{client.name}.admin: true)",
                        detail=client.name)
    session = request.cookies.get(SESSION_COOKIE, "")
    if not _well_formed(session):
        return Visit(client, secrets.token_urlsafe(32), True)
    return Visit(client, session, False)


def _well_formed(session: str) -> bool:
    return 32 <= len(session) <= 64 and all(ch.isalnum() or ch in "-_" for ch in session)


def csrf_token(secret: bytes, session: str, client: str) -> str:
    """The token a form of ``session`` (for ``client``) must carry."""
    mac = hmac.digest(secret, f"csrf\0{session}\0{client}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def check_post(request: web.Request, visit: Visit, secret: bytes, sent: str | None) -> None:
    """Refuse (:class:`Forbidden`) a state-changing POST from another origin or without its session's token."""
    name = visit.client.name
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site[:32]})", detail=name)
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise Forbidden(f"request from another origin refused ({origin[:100]})", detail=name)
    if visit.new_session:
        raise Forbidden("no console session: open the page again and repeat", detail=name)
    if not sent or not hmac.compare_digest(sent.encode(), visit.token(secret).encode()):
        raise Forbidden("missing or wrong CSRF token: open the page again and repeat", detail=name)


def set_session(response: web.StreamResponse, request: web.Request, visit: Visit) -> None:
    """Give a new session its cookie (strict, script-proof, only for the console's paths)."""
    if visit.new_session:
        response.set_cookie(SESSION_COOKIE, visit.session, path="/console", httponly=True, samesite="Strict",
                            secure=request.secure)


def secure(response: web.StreamResponse) -> web.StreamResponse:
    """The console's security headers on ``response``."""
    response.headers.update(HEADERS)
    return response


def challenge_headers(error: GatewayError) -> dict[str, str]:
    """A Basic challenge for a 401, so that a browser asks for the login."""
    return {"WWW-Authenticate": _CHALLENGE} if isinstance(error, Unauthorized) else {}


def claimed(request: web.Request, error: GatewayError) -> str | None:
    """Who a refused caller was or said it was, for the log (never the password)."""
    if isinstance(error, Forbidden) and error.detail:
        return error.detail
    return claimed_identity(request)
