"""Mounting ``/refdb`` on the gateway app (SPEC.md capability (F)): POST for SOAP requests, GET ``?wsdl``.

The service reads what it shares with the rest of the gateway from the typed
keys of :mod:`gateway.keys`, like the relay and JX do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

import schemas
from gateway.keys import CLOCK, JOURNAL, LIVE, SECURITY, STORE

from .service import RefdbService

__all__ = ["add_refdb", "SERVICE"]


def add_refdb(app: web.Application) -> None:
    """Mount ``/refdb`` on the gateway app, reading the shared keys of :mod:`gateway.keys`;
    tables are created or migrated when it starts (after the log and message security)."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        service = RefdbService(live=app[LIVE], engine_store=app[STORE], clock=app[CLOCK],
                               journal=app.get(JOURNAL), security=lambda: app[SECURITY])
        await service.start()
        app[SERVICE] = service
        yield

    app.cleanup_ctx.append(ctx)
    app.router.add_post("/refdb", _post)
    app.router.add_get("/refdb", _wsdl)


async def _post(request: web.Request) -> web.Response:
    service: RefdbService = request.app[SERVICE]
    return await service.handle(request)


async def _wsdl(request: web.Request) -> web.Response:
    if "wsdl" not in request.query:
        raise web.HTTPNotFound(text="GET /refdb?wsdl for the service description; POST SOAP requests\n")
    location = str(request.url.with_query(None)).encode()
    body = schemas.read("refdb.wsdl").replace(b"http://127.0.0.1:8080/refdb", location)
    return web.Response(body=body, content_type="text/xml", charset="utf-8")


SERVICE = web.AppKey("refdb_service", RefdbService)
