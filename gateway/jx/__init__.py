"""The JX polling relay (SPEC.md capability (E)): the ``/jx`` server, its store, mailboxes, CLI.

A DC application deposits a document for an access-restricted city hall
(JX PutDocument, a relayed message to a ``mailbox`` endpoint, or
``bmrgw jx put``); the city hall's client — ``bmrgw poll`` or any JX client —
polls with GetDocument and confirms with ConfirmDocument.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import create_engine

from gateway.keys import CLOCK, JOURNAL, METRICS, NODE, SECURITY
from gateway.logs.journal import Journal
from routing.config import Config

from ..crypto import vault_for
from ..disk import FreeSpace, storage_folders
from ..errors import DocumentStoreError
from ..store import database_url
from .engine import prepare_engine
from .mailbox import Mailbox
from .service import JxService
from .store import DocumentStore, now_ms
from .sweep import retain

__all__ = ["add_jx", "JX_SERVICE", "JX_MAILBOX", "open_store", "jx_root"]

log = logging.getLogger("bmrgw.jx")

JX_SERVICE = web.AppKey("jx_service", JxService)
JX_MAILBOX = web.AppKey("jx_mailbox", Mailbox)

#: Seconds between refreshes of the mailbox gauges (a query, not per scrape).
_GAUGE_INTERVAL = 10.0


def jx_root(config: Config) -> Path:
    """Where the JX store keeps its files: ``<data_dir>/jx``."""
    return config.resolve_path(config.gateway.data_dir) / "jx"


def open_store(config: Config, *, journal: Journal | None = None, node: str | None = None,
               url: str | None = None) -> DocumentStore:
    """The document store of ``config`` (or of ``url``) on an engine of its own; :meth:`DocumentStore.open`
    creates its tables and folders."""
    # No pre-ping: it costs a round trip per call, and a dropped connection is
    # invalidated by the pool on its first error anyway (the caller gets a fault and retries).
    url = url or database_url(config)
    engine = prepare_engine(create_engine(url), durable=False)
    durable = prepare_engine(create_engine(url), durable=True) if engine.dialect.name == "sqlite" else engine
    # Hand-outs and confirms are single statements (gateway.jx.queries): on PostgreSQL they run in
    # autocommit, one round trip each instead of BEGIN, the statement and COMMIT.
    quick = prepare_engine(create_engine(url, isolation_level="AUTOCOMMIT"), durable=False, relaxed=True) \
        if engine.dialect.name == "postgresql" else None
    writer = journal.write_in if journal is not None else None
    return DocumentStore(engine, durable=durable, quick=quick, root=jx_root(config), settings=config.gateway.jx,
                         node=node or config.gateway.name, log=writer, space=FreeSpace(storage_folders(config)),
                         min_free_bytes=config.gateway.min_free_bytes, vault=vault_for(config.gateway.encryption, durable))


def add_jx(app: web.Application, config: Config) -> None:
    """Serve ``/jx`` and provide the mailbox seam (:data:`JX_MAILBOX`) from the shared keys of
    :mod:`gateway.keys`; call after the log and message security and before the relay are set up."""
    app.cleanup_ctx.append(_jx_ctx(config))
    app.router.add_post("/jx", _post)
    app.router.add_get("/jx", _get)


def _jx_ctx(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        clock, journal, registry = app[CLOCK], app.get(JOURNAL), app[METRICS].registry
        store = open_store(config, journal=journal, node=app[NODE])
        try:  # closed also when the gateway does not start
            await asyncio.to_thread(store.open)
            app[JX_SERVICE] = JxService(store=store, settings=config.gateway, clock=clock, journal=journal,
                                        security=lambda: app.get(SECURITY))
            app[JX_MAILBOX] = Mailbox(store, clock, max_bytes=config.gateway.jx.max_document_bytes)
            tasks = [asyncio.create_task(_gauges(store, registry))]
            retention = config.gateway.jx.retention
            if retention.confirmed_seconds is not None or retention.dead_seconds is not None:
                tasks.append(asyncio.create_task(retain(store, retention)))
            yield
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            store.close()
    return ctx


async def _gauges(store: DocumentStore, registry: CollectorRegistry) -> None:
    """``bmrgw_jx_documents{state}`` and ``bmrgw_jx_oldest_waiting_seconds`` for /metrics."""
    documents = Gauge("bmrgw_jx_documents", "JX documents by state (ready, leased, confirmed, dead), "
                      "refreshed every 10 s.", ["state"], registry=registry)
    oldest = Gauge("bmrgw_jx_oldest_waiting_seconds", "Age of the oldest JX document not confirmed yet "
                   "(0 when none waits).", registry=registry)
    while True:
        try:
            counts, created = await asyncio.to_thread(store.counts)
        except DocumentStoreError as exc:
            log.warning("jx: cannot refresh the mailbox gauges: %s", exc.reason)
        else:
            for state, n in counts.items():
                documents.labels(state).set(n)
            oldest.set(0 if created is None else max(0.0, (now_ms() - created) / 1000))
        await asyncio.sleep(_GAUGE_INTERVAL)


async def _post(request: web.Request) -> web.StreamResponse:
    return await request.app[JX_SERVICE].handle(request)


async def _get(request: web.Request) -> web.StreamResponse:
    return await request.app[JX_SERVICE].wsdl(request)
