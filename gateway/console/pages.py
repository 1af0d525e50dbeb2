"""The console's pages (GET): overview, endpoints, send/receive log, JX mailboxes, refdb, log integrity.

Each reads what the CLI reads — ``GET /status`` (:func:`gateway.serve.status.status_of`), the
circuits other processes publish (:mod:`gateway.serve.control`), the log tables, the JX store,
the refdb tables — in a worker thread, and renders it with :mod:`gateway.console.markup`, which
escapes every value.  Searches are GET forms, so a result is a link one can send a colleague.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.errors import InvalidRequest, StoreUnavailable
from gateway.jx import JX_SERVICE
from gateway.jx.store import Document, now_ms
from gateway.keys import LIVE, STORE
from gateway.logs.commands import parse_time
from gateway.logs.records import STATUSES, LogRecord
from gateway.logs.tables import LogFilter
from gateway.serve import control
from gateway.serve.status import status_of
from gateway.terminal import human_bytes

from . import data
from .layout import Context
from .markup import Html, bar_chart, el, form, join, local_time, table
from .traffic import Traffic, traffic
from .verification import latest

__all__ = ["overview", "endpoints", "log_page", "jx_page", "purge_page", "refdb_page", "integrity"]

_PING_TIMEOUT = 2.0
_HOURS = (6, 24, 72, 168)


def _note(request: web.Request, labels: Any) -> Html:
    done = request.query.get("done")
    if not done:
        return Html("")
    return el("p", {"class": "note"}, f"{labels['done']}: {labels[done] if done in _DONE else '-'} ",
              el("strong", None, request.query.get("what", "")[:256]))


_DONE = frozenset({"disable", "enable", "reset", "confirm", "purge", "verify"})


# -- overview ---------------------------------------------------------------------------


async def overview(request: web.Request, context: Context) -> Html:
    labels = context.labels
    status = await status_of(request.app)
    store = request.app[STORE]
    try:
        await asyncio.wait_for(asyncio.to_thread(store.ping), _PING_TIMEOUT)
        store_state = el("span", {"class": "ok"}, labels["ok"])
    except (StoreUnavailable, asyncio.TimeoutError) as exc:
        store_state = el("span", {"class": "bad"}, str(exc) or "no answer within 2 s")
    hours = _int(request.query.get("hours"), 24, _HOURS)
    counted = await asyncio.to_thread(traffic, store.engine, hours)
    cards = el("div", {"class": "cards"}, _health_card(status, labels, store_state, store.display_url),
               _ntp_card(status["ntp"], labels), _writer_card(status["log_writer"], labels),
               _config_card(status["config"], labels), _processes_card(status["processes"], labels))
    return join(_note(request, labels), cards, _traffic(counted, hours, labels))


def _card(title: str, *lines: object) -> Html:
    return el("div", {"class": "card"}, el("h3", None, title), *(el("div", None, line) for line in lines))


def _health_card(status: dict[str, Any], labels: Any, store_state: Html, store_url: str) -> Html:
    return _card(labels["health"], f"{status['gateway']} · {labels['node']} {status['node']} · pid {status['pid']}",
                 f"{labels['up']} {round(status['uptime_s'])} s · bmrgw {status['version']}",
                 join(f"{labels['store']}: ", store_state), el("span", {"class": "hint"}, store_url))


def _ntp_card(ntp: dict[str, Any], labels: Any) -> Html:
    synced = ntp.get("synced")
    state = el("span", {"class": "ok" if synced else "bad"}, labels["synced" if synced else "not_synced"])
    servers = [el("div", {"class": "hint"}, f"{s['server']}: ",
                  el("span", {"class": "ok" if s["ok"] else "bad"}, labels["ok"] if s["ok"] else s.get("error") or "-"))
               for s in ntp.get("servers", [])]
    warning = el("div", {"class": "warn"}, ntp["warning"]) if ntp.get("warning") else ""
    return _card(labels["ntp"], state, f"{labels['offset']} {ntp.get('offset') or 0:+.3f} s", warning, *servers)


def _writer_card(writer: dict[str, Any], labels: Any) -> Html:
    if writer.get("disabled"):
        return _card(labels["log_writer"], el("span", {"class": "warn"}, labels["disabled_log"]))
    running = writer.get("running")
    lines: list[object] = [el("span", {"class": "ok" if running else "bad"},
                              labels["running" if running else "not_running"]),
                           f"{labels['queued']} {writer.get('queued', 0)} · {labels['written']} {writer.get('written', 0)}"]
    if writer.get("last_error"):
        lines.append(el("span", {"class": "bad"}, f"{labels['last_error']}: {writer['last_error']}"))
    return _card(labels["log_writer"], *lines)


def _config_card(config: dict[str, Any], labels: Any) -> Html:
    lines: list[object] = [f"{labels['generation']} {config['generation']}",
                           el("span", {"class": "hint"}, config.get("source") or "-")]
    if config.get("error"):
        lines.append(el("span", {"class": "bad"}, config["error"]))
    return _card(labels["config"], *lines)


def _processes_card(processes: dict[str, Any], labels: Any) -> Html:
    if processes.get("error"):
        return _card(labels["workers"], el("span", {"class": "bad"}, processes["error"]))
    return _card(labels["workers"], *(f"{p['node']} · pid {p['pid']} · {p['host']}" for p in processes["list"]))


def _traffic(traffic: Traffic, hours: int, labels: Any) -> Html:
    choices = join(*(el("a", {"href": f"/console?hours={n}", "class": "here" if n == hours else None},
                        labels("last_hours", n=n), " ") for n in _HOURS))
    title = el("h3", None, f"{labels['traffic']} ({labels('last_hours', n=hours)}, {local_time(traffic.start, seconds=False)} –)")
    if not traffic.by_endpoint:
        return join(title, el("p", None, choices), el("p", None, labels["no_records"]))
    rows = []
    for name, points in traffic.by_endpoint.items():
        ok = sum(p[0] for p in points)
        bad = sum(p[1] for p in points)
        label = f"{name}: {ok} {labels['ok']}, {bad} {labels['failed']}"
        rows.append([el("a", {"href": f"/console/log?ap={_q(name)}"}, name), ok,
                     el("span", {"class": "bad" if bad else None}, bad), bar_chart(points, label=label)])
    return join(title, el("p", None, choices),
                table([labels["endpoint"], labels["ok"], labels["failed"], labels("last_hours", n=hours)], rows))


def _q(text: str) -> str:
    return quote(text, safe="")


def _int(text: str | None, default: int, allowed: Sequence[int]) -> int:
    return int(text) if text is not None and text.isdigit() and int(text) in allowed else default


# -- endpoints --------------------------------------------------------------------------


async def endpoints(request: web.Request, context: Context) -> Html:
    labels = context.labels
    status = await status_of(request.app)
    try:
        others = await asyncio.to_thread(control.read_circuits, request.app[STORE].engine)
    except Exception as exc:  # noqa: BLE001 - the page shows a store failure instead of failing
        others, problem = [], el("p", {"class": "problem"}, f"{labels['error']}: {exc}")
    else:
        problem = Html("")
    reported: dict[str, list[str]] = {}
    for row in others:
        reported.setdefault(row.url, []).append(f"{row.node}: {row.state}")
    editable = request.app[LIVE].current.config.source is not None
    rows = [_endpoint_row(e, reported, labels, context.token, editable) for e in status["endpoints"]]
    return join(_note(request, labels), problem,
                table([labels["endpoint"], labels["kind"], labels["state"], labels["circuits"], labels["actions"]],
                      rows))


def _endpoint_row(e: dict[str, Any], reported: dict[str, list[str]], labels: Any, token: str,
                  editable: bool) -> list[object]:
    circuits = [el("div", None, c["url"], " ",
                   el("span", {"class": "ok" if c["state"] == "closed" else "bad"}, c["state"]),
                   f" ({labels['failures']} {c['failures']})" if c["failures"] else "",
                   el("span", {"class": "hint"}, f" {c['last_error']}") if c.get("last_error") else "",
                   el("span", {"class": "hint"}, " · " + ", ".join(reported.get(c["url"], [])))
                   if reported.get(c["url"]) else "")
                for c in e["circuits"]]
    state = el("span", {"class": "bad", "data-state": "disabled"}, labels["disabled"]) if e["disabled"] else \
        el("span", {"class": "ok", "data-state": "enabled"}, labels["enabled"])
    actions: list[Html] = []
    if editable:
        switch = "enable" if e["disabled"] else "disable"
        actions.append(form(f"/console/endpoints/{switch}", token, labels[switch], {"name": e["name"]},
                            danger=switch == "disable"))
    if e["circuits"]:
        actions.append(form("/console/endpoints/reset", token, labels["reset"], {"name": e["name"]}))
    return [el("a", {"href": f"/console/log?ap={_q(e['name'])}"}, e["name"]), e["kind"], state, join(*circuits),
            join(*actions)]


# -- send/receive log -------------------------------------------------------------------


def _time(text: str | None) -> datetime | None:
    """A search form's time: relative (``2h``) or ISO 8601, local time unless it carries an offset
    (:func:`gateway.logs.commands.parse_time`, as ``bmrgw logs --since`` reads it)."""
    if not text or not text.strip():
        return None
    try:
        return parse_time(text)
    except argparse.ArgumentTypeError as exc:
        raise InvalidRequest(str(exc)) from None


def _field(name: str, label: str, value: str, *, hint: str | None = None, size: int = 18) -> Html:
    return el("label", None, label, " ", el("input", {"name": name, "value": value, "size": size,
                                                       "title": hint}))


def _select(name: str, label: str, value: str, options: Sequence[str], any_label: str) -> Html:
    return el("label", None, label, " ", el("select", {"name": name}, el("option", {"value": ""}, any_label),
                                           *(el("option", {"value": o, "selected": o == value}, o) for o in options)))


async def log_page(request: web.Request, context: Context) -> Html:
    labels, q = context.labels, request.query
    engine = request.app[STORE].engine
    if q.get("trail"):
        records = await asyncio.to_thread(data.trail, engine, q["trail"][:256])
        return join(el("h3", None, f"{labels['trail']}: ", el("code", None, q["trail"][:256])),
                    _records(records, labels, trail=True))
    filters = LogFilter(since=_time(q.get("since")), until=_time(q.get("until")), ap=q.get("ap") or None,
                        message_id=q.get("message_id") or None,
                        status=q.get("status") if q.get("status") in STATUSES else None, kind=q.get("kind") or None)
    records = await asyncio.to_thread(data.search, engine, filters, q.get("client") or None)
    hint = labels["time_hint"]
    search = el("form", {"method": "get", "action": "/console/log", "class": "search"},
                _field("message_id", labels["message_id"], q.get("message_id", ""), size=28),
                _field("ap", labels["business_ap"], q.get("ap", "")),
                _field("client", labels["client"], q.get("client", "")),
                _select("status", labels["status"], q.get("status", ""), STATUSES, labels["any"]),
                _field("kind", labels["kind"], q.get("kind", ""), size=8),
                _field("since", labels["since"], q.get("since", ""), hint=hint),
                _field("until", labels["until"], q.get("until", ""), hint=hint),
                el("button", {"type": "submit"}, labels["search"]), el("div", {"class": "hint"}, hint))
    return join(search, _records(records, labels, trail=False))


def _records(records: list[LogRecord], labels: Any, *, trail: bool) -> Html:
    if not records:
        return el("p", None, labels["no_records"])
    header = [labels["time"], labels["node"], labels["kind"], labels["direction"], labels["from"], labels["to"],
              labels["client"], labels["endpoint"], labels["status"], labels["size_in"], labels["size_out"],
              labels["ms"], labels["message_id"]]
    rows = []
    for r in records:
        status = el("span", {"class": "ok" if r.status == "ok" else "bad"},
                    " ".join(p for p in (r.status, str(r.http_status or ""), r.fault_code or "") if p))
        message = el("a", {"href": f"/console/log?trail={_q(r.message_id)}"}, r.message_id) \
            if r.message_id and not trail else (r.message_id or "-")
        when = local_time(r.ts) + ("" if r.ntp_synced else " *")
        rows.append([when, r.node, r.kind, "→" if r.direction == "request" else "←", r.from_ap or "-",
                     r.to_ap or "-", r.client or "-", r.endpoint or "-", status, human_bytes(r.bytes_in),
                     human_bytes(r.bytes_out), f"{r.duration_ms:.1f}", message])
    return table(header, rows)


# -- JX mailboxes -----------------------------------------------------------------------


async def jx_page(request: web.Request, context: Context) -> Html:
    labels, q = context.labels, request.query
    service = request.app.get(JX_SERVICE)
    if service is None:
        return el("p", None, labels["no_jx"])
    state = q.get("state") if q.get("state") in data.JX_STATES else None
    found = await asyncio.to_thread(data.documents, service.store, receiver=q.get("receiver") or None, state=state,
                                    since=_time(q.get("since")), until=_time(q.get("until")))
    receivers = await asyncio.to_thread(data.receivers, service.store)
    search = el("form", {"method": "get", "action": "/console/jx", "class": "search"},
                _select("receiver", labels["receiver"], q.get("receiver", ""), receivers, labels["any"]),
                _select("state", labels["state"], q.get("state", ""), data.JX_STATES, labels["any"]),
                _field("since", labels["since"], q.get("since", ""), hint=labels["time_hint"]),
                _field("until", labels["until"], q.get("until", ""), hint=labels["time_hint"]),
                el("button", {"type": "submit"}, labels["search"]))
    if not found:
        return join(_note(request, labels), search, el("p", None, labels["no_documents"]))
    at = now_ms()
    rows = [_document_row(d, at, labels, context.token) for d in found]
    header = [labels["message_id"], labels["sender"], labels["receiver"], labels["state"], labels["created"],
              labels["size"], labels["deliveries"], labels["actions"]]
    return join(_note(request, labels), search, table(header, rows))


def _document_row(d: Document, at: int, labels: Any, token: str) -> list[object]:
    shown = d.shown_state(at)
    actions: list[Html] = []
    if shown != "confirmed":
        actions.append(form("/console/jx/confirm", token, labels["confirm"], {"message_id": d.message_id}))
    actions.append(el("a", {"href": f"/console/jx/purge?message_id={_q(d.message_id)}", "class": "danger"},
                      labels["purge"]))
    return [el("a", {"href": f"/console/log?trail={_q(d.message_id)}"}, d.message_id), d.sender_id, d.receiver_id,
            shown, local_time(_from_ms(d.created_ms)), human_bytes(d.size), d.deliveries, join(*actions)]


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def purge_page(request: web.Request, context: Context) -> Html:
    """Asks before a purge: the document, a warning, and the POST form that does it."""
    labels = context.labels
    service = request.app.get(JX_SERVICE)
    message_id = request.query.get("message_id", "")[:256]
    document = await asyncio.to_thread(service.store.find, message_id) if service is not None and message_id else None
    if document is None:
        return el("p", {"class": "problem"}, f"{labels['no_documents']} ", el("code", None, message_id))
    facts = table([labels["message_id"], labels["sender"], labels["receiver"], labels["state"], labels["size"]],
                  [[document.message_id, document.sender_id, document.receiver_id, document.shown_state(now_ms()),
                    human_bytes(document.size)]])
    return join(el("p", None, el("strong", None, labels["purge_ask"])), facts, el("p", None, labels["purge_warn"]),
                form("/console/jx/purge", context.token, labels["purge_yes"],
                     {"message_id": document.message_id, "confirm": "yes"}, danger=True),
                el("a", {"href": "/console/jx"}, labels["cancel"]))


# -- refdb and log integrity ------------------------------------------------------------


async def refdb_page(request: web.Request, context: Context) -> Html:
    labels = context.labels
    settings = request.app[LIVE].current.config.refdb
    if not settings.datasets:
        return el("p", None, labels["no_datasets"])
    listed = await asyncio.to_thread(data.datasets, request.app[STORE].engine, settings)
    rows = [[d["name"], d["version"], "-" if d["rows"] is None else f"{d['rows']:,}", local_time(d["updated"])]
            for d in listed]
    return table([labels["dataset"], labels["version"], labels["rows"], labels["last_push"]], rows)


async def integrity(request: web.Request, context: Context) -> Html:
    labels = context.labels
    last = await asyncio.to_thread(latest, request.app[STORE].engine)
    run = form("/console/integrity/verify", context.token, labels["verify"])
    if last is None:
        return join(_note(request, labels), el("p", None, labels["never"]), run)
    if last.finished is None:
        verdict = el("p", {"class": "warn", "data-verdict": "running"}, labels["verifying"])
    elif last.ok:
        verdict = el("p", {"class": "ok", "data-verdict": "ok"}, labels["verified_ok"])
    else:
        verdict = el("p", {"class": "bad", "data-verdict": "failed"}, labels["verified_bad"])
    facts = table([labels["started"], labels["finished"], labels["by"], labels["node"]],
                  [[local_time(last.started), local_time(last.finished), last.client, last.node]])
    lines = el("pre", None, "\n".join(last.lines))
    return join(_note(request, labels), el("h3", None, labels["last_result"]), verdict, facts, lines, run)
