"""The console's state changes (POST, wrapped by :func:`gateway.console.layout.action`).

Each does what its CLI command does, through the same code:

- disable / enable: ``endpoints.NAME.disabled`` written into endpints.yaml
  (:func:`routing.edit.set_disabled`, the file edited atomically under its
  lock), which every process's file watcher then applies;
- reset: a reset request in the store (:func:`gateway.serve.control.request_reset`)
  that every process on the store applies within a second, this one at once;
- JX force-confirm (the store's confirm, as the receiver's ConfirmDocument
  would) and purge of one document (:func:`gateway.console.data.purge_document`);
- a log verification, started in the background.

Each answers the page to go back to, with what was done; the wrapper logs it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from aiohttp import web

from gateway.errors import InvalidRequest, UnknownDestination, UnknownDocument
from gateway.jx import JX_SERVICE
from gateway.keys import LIVE, NODE, STORE
from gateway.relay.resilience import RESILIENCE, urls_of
from gateway.serve import control
from routing.edit import edit_file, set_disabled

from . import data
from .layout import Context
from .verification import start

__all__ = ["disable", "enable", "reset", "jx_confirm", "jx_purge", "verify"]


def _back(page: str, done: str, what: str) -> str:
    return f"{page}?{urlencode({'done': done, 'what': what})}"


def _endpoint(request: web.Request, form: dict[str, str]) -> str:
    name = form.get("name", "")
    if name not in request.app[LIVE].current.config.endpoints:
        raise UnknownDestination(f"no endpoint named {name[:100]!r}", destination=name[:256])
    return name


async def _switch(request: web.Request, form: dict[str, str], disabled: bool) -> str:
    name = _endpoint(request, form)
    source = request.app[LIVE].current.config.source
    if source is None:
        raise InvalidRequest("this gateway's configuration was not read from a file: nothing to edit")
    await asyncio.to_thread(edit_file, source, lambda doc: set_disabled(doc, name, disabled))
    return _back("/console/endpoints", "disable" if disabled else "enable", name)


async def disable(request: web.Request, _context: Context, form: dict[str, str]) -> str:
    return await _switch(request, form, True)


async def enable(request: web.Request, _context: Context, form: dict[str, str]) -> str:
    return await _switch(request, form, False)


async def reset(request: web.Request, _context: Context, form: dict[str, str]) -> str:
    name = _endpoint(request, form)
    if not any(n == name for (_, n) in urls_of(request.app[LIVE].current.config)):
        raise UnknownDestination(f"{name!r} has no URL, so no circuit", destination=name)
    request.app[RESILIENCE].reset(name)  # this process at once, the others through the store
    await asyncio.to_thread(control.request_reset, request.app[STORE].engine, name)
    return _back("/console/endpoints", "reset", name)


def _message_id(form: dict[str, str]) -> str:
    message_id = form.get("message_id", "")
    if not message_id or len(message_id) > 256:
        raise InvalidRequest("no document named (message_id)")
    return message_id


async def jx_confirm(request: web.Request, _context: Context, form: dict[str, str]) -> str:
    service = request.app.get(JX_SERVICE)
    message_id = _message_id(form)
    document = await asyncio.to_thread(service.store.find, message_id) if service is not None else None
    if service is None or document is None:
        raise UnknownDocument(f"no document {message_id!r}", detail=message_id)
    await asyncio.to_thread(service.store.confirm, document.message_id, document.sender_id, document.receiver_id)
    return _back("/console/jx", "confirm", message_id)


async def jx_purge(request: web.Request, _context: Context, form: dict[str, str]) -> str:
    service = request.app.get(JX_SERVICE)
    message_id = _message_id(form)
    if form.get("confirm") != "yes":
        raise InvalidRequest("a purge must be confirmed (confirm=yes)")
    if service is None:
        raise UnknownDocument(f"no document {message_id!r}", detail=message_id)
    await asyncio.to_thread(data.purge_document, service.store, message_id)
    return _back("/console/jx", "purge", message_id)


async def verify(request: web.Request, context: Context, _form: dict[str, str]) -> str:
    app = request.app
    started = await start(app, app[STORE].engine, app[LIVE].current.config, client=context.visit.client.name,
                          node=app[NODE])
    return _back("/console/integrity", "verify", "" if started else "…")
