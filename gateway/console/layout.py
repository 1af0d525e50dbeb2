"""The console's frame: the guard around every handler, the page layout, its style sheet.

:func:`page` and :func:`action` wrap a handler so that it runs only for an
admin (:mod:`gateway.console.guard`), with the labels of the visitor's
language; a refusal is an HTML page with the right status, and is written
to the send/receive log (``kind: console``) as refused logins are — except
the 401 that asks a browser for its login, when it sent none (every visit
starts so; a log of those would drown the failed logins).  A store
that fails (SQLAlchemy's errors are translated here, for the console) is a
page that says so, not a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway import version
from sqlalchemy.exc import SQLAlchemyError

from gateway.errors import GatewayError, JournalUnavailable, StoreUnavailable, Unauthorized
from gateway.keys import CLOCK, JOURNAL, LIVE
from gateway.logs.records import LogRecord
from gateway.store import db_reason

from .guard import SECRET, Visit, challenge_headers, check_post, claimed, identify, secure, set_session
from .labels import LANG_COOKIE, LANGUAGES, Labels, language
from .markup import Html, el, join, zone_label

__all__ = ["Context", "page", "action", "render", "log_action", "NAV", "STYLE", "ICON"]

log = logging.getLogger("bmrgw.console")

#: (path, label key) of the pages, in the navigation's order.
NAV = (("/console", "overview"), ("/console/endpoints", "endpoints"), ("/console/log", "log"),
       ("/console/jx", "jx"), ("/console/refdb", "refdb"), ("/console/integrity", "integrity"))


@dataclass(frozen=True)
class Context:
    """What a console handler gets besides the request: who, in which language, and the form token."""

    visit: Visit
    labels: Labels
    token: str


PageHandler = Callable[[web.Request, Context], Awaitable[Html]]
ActionHandler = Callable[[web.Request, Context, dict[str, str]], Awaitable[str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _admit(request: web.Request) -> Context | web.Response:
    labels = Labels(language(request))
    try:
        visit = await identify(request)
    except GatewayError as exc:
        if claimed(request, exc) is not None or not isinstance(exc, Unauthorized):
            await _log_refusal(request, exc)  # not a browser's first request, which carries no login yet
        return _refused(request, labels, exc)
    return Context(visit, labels, visit.token(request.app[SECRET]))


def page(title: str, handler: PageHandler) -> Handler:
    """A GET page titled by label ``title``, shown to admins only."""
    async def serve(request: web.Request) -> web.StreamResponse:
        context = await _admit(request)
        if isinstance(context, web.Response):
            return context
        try:
            body = await handler(request, context)
            response = render(request, context, title, body)
        except (GatewayError, SQLAlchemyError) as exc:  # the store failed, or a search was malformed: say so
            error = exc if isinstance(exc, GatewayError) else StoreUnavailable(db_reason(exc))
            response = render(request, context, title, _problem(context.labels, error), status=error.http_status)
        set_session(response, request, context.visit)
        if request.query.get("lang") in LANGUAGES:
            response.set_cookie(LANG_COOKIE, request.query["lang"], path="/console", samesite="Strict",
                                max_age=365 * 86400, secure=request.secure)
        return response
    return serve


def action(name: str, handler: ActionHandler) -> Handler:
    """A state-changing POST named ``name``: admins only, same origin, with the session's CSRF token;
    the handler answers where to go next (303), and the action is logged whatever its outcome."""
    async def serve(request: web.Request) -> web.StreamResponse:
        context = await _admit(request)
        if isinstance(context, web.Response):
            return context
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        try:
            check_post(request, context.visit, request.app[SECRET], form.get("csrf_token"))
        except GatewayError as refusal:
            await _log_refusal(request, refusal)
            return _refused(request, context.labels, refusal)
        try:
            target = await handler(request, context, form)
        except (GatewayError, SQLAlchemyError) as failure:
            error = failure if isinstance(failure, GatewayError) else StoreUnavailable(db_reason(failure))
            await log_action(request, context, name, form, status="fault", error=error)
            return render(request, context, "error", _problem(context.labels, error), status=error.http_status)
        await log_action(request, context, name, form, status="ok")
        raise web.HTTPSeeOther(target)
    return serve


def render(request: web.Request, context: Context, title: str, body: Html, *, status: int = 200) -> web.Response:
    """A full console page."""
    labels = context.labels
    nav = el("nav", None, *(el("a", {"href": path, "class": "here" if path == request.path else None}, labels[key])
                            for path, key in NAV))
    config = request.app[LIVE].current.config
    toggle = el("a", {"href": f"{request.path}?lang={labels.other}", "class": "lang", "lang": labels.other},
                labels["language"])
    header = el("header", None,
                el("h1", None, el("a", {"href": "/console"}, labels["title"]), " ", el("small", None, config.gateway.name)),
                el("p", {"class": "who"}, f"{labels['signed_in']}: ", el("strong", None, context.visit.client.name),
                   f" · {labels['times_in']}: {zone_label()} · bmrgw {version()} · ", toggle), nav)
    document = join(Html("<!DOCTYPE html>\n"), el(
        "html", {"lang": labels.lang},
        el("head", None, el("meta", {"charset": "utf-8"}),
           el("meta", {"name": "viewport", "content": "width=device-width, initial-scale=1"}),
           el("meta", {"name": "csrf-token", "content": context.token}),
           el("title", None, f"{labels[title]} — {labels['title']}"),
           el("link", {"rel": "stylesheet", "href": "/console/console.css"}),
           el("link", {"rel": "icon", "href": "/console/icon.svg", "type": "image/svg+xml"})),
        el("body", None, header, el("main", None, el("h2", None, labels[title]), body))))
    response = web.Response(text=document, status=status, content_type="text/html", charset="utf-8")
    secure(response)
    return response


def _problem(labels: Labels, error: GatewayError) -> Html:
    return el("p", {"class": "problem"}, f"{labels['error']}: ", error.reason)


def _refused(request: web.Request, labels: Labels, error: GatewayError) -> web.Response:
    body = join(Html("<!DOCTYPE html>\n"), el(
        "html", {"lang": labels.lang},
        el("head", None, el("meta", {"charset": "utf-8"}), el("title", None, f"{error.http_status} {labels['refused']}"),
           el("link", {"rel": "stylesheet", "href": "/console/console.css"})),
        el("body", None, el("main", None, el("h2", None, f"{error.http_status} {labels['refused']}"),
                            el("p", {"class": "problem"}, error.reason)))))
    response = web.Response(text=body, status=error.http_status, content_type="text/html", charset="utf-8",
                            headers=challenge_headers(error))
    secure(response)
    return response


async def _log_refusal(request: web.Request, error: GatewayError) -> None:
    await _record(request, LogRecord.at(
        request.app[CLOCK].now(), kind="console", direction="request", status="fault",
        endpoint=f"{request.method} {request.path}"[:256], client=_bounded(claimed(request, error)),
        http_status=error.http_status, fault_code=error.code))


async def log_action(request: web.Request, context: Context, name: str, form: dict[str, str], *,
                     status: str, error: GatewayError | None = None) -> None:
    """An operator's action in the send/receive log: who did what to which endpoint or document."""
    target = form.get("name") or None
    message_id = form.get("message_id") or None
    await _record(request, LogRecord.at(
        request.app[CLOCK].now(), kind="console", direction="request", status=status,
        endpoint=f"POST /console {name}", client=context.visit.client.name, to_ap=_bounded(target),
        message_id=_bounded(message_id), http_status=303 if error is None else error.http_status,
        fault_code=None if error is None else error.code))


def _bounded(text: str | None) -> str | None:
    return None if text is None else text.replace("\0", "")[:256] or None


async def _record(request: web.Request, record: LogRecord) -> None:
    journal = request.app.get(JOURNAL)
    if journal is None:
        log.warning("console (send/receive log disabled): %s", record.to_json())
        return
    try:
        await journal.record(record)
    except JournalUnavailable as exc:
        log.error("send/receive log unavailable (%s); console event not logged: %s", exc.reason, record.to_json())


#: The browser tab's icon (else every page load asks for /favicon.ico, which is not the console's).
ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
        'fill="#20303f"/><path d="M4 8h8M8 4v8" stroke="#fff" stroke-width="2"/></svg>')

STYLE = """
:root{--fg:#1d2733;--muted:#5b6775;--line:#d5dbe1;--ok:#2e7d32;--bad:#c62828;--warn:#b26a00;--bg:#f7f9fb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,"Hiragino Sans","Noto Sans CJK JP","Yu Gothic",Meiryo,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#20303f;color:#fff;padding:.6em 1.2em}
header a{color:#fff}
h1{font-size:1.2em;margin:0}
h1 a{text-decoration:none}
h1 small{font-weight:normal;opacity:.8}
.who{margin:.2em 0;font-size:.9em;opacity:.9}
nav a{display:inline-block;margin-right:1em;padding:.2em 0;text-decoration:none;opacity:.85}
nav a.here{border-bottom:2px solid #fff;opacity:1}
main{padding:1em 1.2em}
h2{font-size:1.1em;margin:.2em 0 .8em}
h3{font-size:1em;margin:1.2em 0 .4em}
table.grid{border-collapse:collapse;background:#fff;width:100%}
table.grid th,table.grid td{border:1px solid var(--line);padding:.25em .5em;text-align:left;vertical-align:top}
table.grid th{background:#eef2f5;font-weight:600}
td{word-break:break-all}
table.grid td:first-child{white-space:nowrap;word-break:normal}
.ok{color:var(--ok)} .bad,.problem{color:var(--bad)} .warn{color:var(--warn)}
.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{background:#fff;border:1px solid var(--line);padding:.6em .9em;min-width:14em}
.card h3{margin:0 0 .3em}
form.inline{display:inline;margin:0 .3em 0 0}
form.search{background:#fff;border:1px solid var(--line);padding:.6em;margin-bottom:1em}
form.search label{display:inline-block;margin:0 .8em .4em 0}
input,select,button{font:inherit}
button{cursor:pointer}
button.danger{color:#fff;background:var(--bad);border:1px solid var(--bad)}
.note{background:#e8f5e9;border:1px solid #a5d6a7;padding:.4em .8em}
.hint{color:var(--muted);font-size:.85em}
svg.chart rect.frame{fill:#fff;stroke:var(--line)}
svg.chart rect.ok{fill:#43a047}
svg.chart rect.bad{fill:#e53935}
"""
