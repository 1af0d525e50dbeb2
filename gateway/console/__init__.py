"""The operator's console at ``/console`` (SPEC.md "Operators"), served by the gateway itself.

Server-rendered HTML that reads without JavaScript and needs nothing from
the Internet (LGWAN sites have none): no script at all, one small style
sheet served here, charts drawn as inline SVG.  Only clients with
``admin: true`` get in (:mod:`.guard`); state changes are POST forms with a
CSRF token, logged in the send/receive log (``kind: console``).

- :mod:`.guard` — who may enter, sessions, CSRF and origin checks, headers
- :mod:`.layout` — the frame of every page and the wrappers of handlers
- :mod:`.pages` / :mod:`.actions` — what is shown / what can be changed
- :mod:`.data` / :mod:`.verification` — store queries, background log checks
- :mod:`.traffic` — hourly counts per endpoint from every process, for the charts
- :mod:`.markup` / :mod:`.labels` — escaped HTML, Japanese and English words
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.keys import STORE

from . import actions, pages
from .guard import HEADERS, SECRET, load_secret
from .layout import ICON, STYLE, action, page
from .traffic import traffic_ctx
from .verification import ensure_table, verification_ctx

__all__ = ["add_console"]


def add_console(app: web.Application) -> None:
    """Serve the console on ``app``; call after the store's and metrics' set-up and the authentication."""
    app.cleanup_ctx.append(_console_ctx)
    app.cleanup_ctx.append(verification_ctx)
    app.cleanup_ctx.append(traffic_ctx)
    get = app.router.add_get
    get("/console", page("overview", pages.overview))
    get("/console/endpoints", page("endpoints", pages.endpoints))
    get("/console/log", page("log", pages.log_page))
    get("/console/jx", page("jx", pages.jx_page))
    get("/console/jx/purge", page("purge", pages.purge_page))
    get("/console/refdb", page("refdb", pages.refdb_page))
    get("/console/integrity", page("integrity", pages.integrity))
    get("/console/console.css", _style)
    get("/console/icon.svg", _icon)
    post = app.router.add_post
    post("/console/endpoints/disable", action("disable", actions.disable))
    post("/console/endpoints/enable", action("enable", actions.enable))
    post("/console/endpoints/reset", action("reset", actions.reset))
    post("/console/jx/confirm", action("confirm", actions.jx_confirm))
    post("/console/jx/purge", action("purge", actions.jx_purge))
    post("/console/integrity/verify", action("verify", actions.verify))


async def _console_ctx(app: web.Application) -> AsyncIterator[None]:
    """The CSRF secret shared through the store, and the verification results' table."""
    engine = app[STORE].engine
    app[SECRET] = await asyncio.to_thread(load_secret, engine)
    await asyncio.to_thread(ensure_table, engine)
    yield


async def _style(_request: web.Request) -> web.Response:
    return _static(STYLE, "text/css")


async def _icon(_request: web.Request) -> web.Response:
    return _static(ICON, "image/svg+xml")


def _static(text: str, content_type: str) -> web.Response:
    response = web.Response(text=text, content_type=content_type, charset="utf-8")
    response.headers.update(HEADERS)
    response.headers["Cache-Control"] = "max-age=3600"
    return response
