"""The gateway's aiohttp application: routes, shared resources, health.

``make_app`` wires the pieces a request meets — the live route table, the
upstream seam, metrics and the store — as typed app keys, with their
lifetimes in ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway.api import add_api, is_api_path, problem_response
from gateway.console import add_console
from gateway.errors import GatewayError, JournalUnavailable, StoreUnavailable
from gateway.jx import JX_MAILBOX, add_jx
from gateway.keys import CLOCK, JOURNAL, LIVE, METRICS, NODE, SECURITY, STORE
from gateway.logs.chain import archive
from gateway.logs.clock import Clock
from gateway.logs.commands import archive_dir
from gateway.logs.journal import Journal
from gateway.logs.key import checkpoints_path, log_key
from gateway.logs.records import LogRecord
from gateway.metrics import CONTENT_TYPE_LATEST, Metrics
from gateway.ns import H_MESSAGE_ID, SoapVersion
from gateway.relay.handler import SERVER, Relay
from gateway.relay.resilience import RESILIENCE, Resilient
from gateway.relay.trace import echoable_message_id
from gateway.relay.upstream import HttpUpstream, Upstream
from gateway.security.auth import install_auth
from gateway.security.tally import prompt_record
from gateway.security.message import message_security
from gateway.soap import fault_content_type, gateway_fault, version_for
from gateway.store import Store, database_url
from refdb.routes import SERVICE as REFDB
from refdb.routes import add_refdb
from routing.config import Config, load_config
from routing.watch import LiveTable, watch

from . import control, heap
from .certs import CERTS, CertificateWatch
from .echo import EchoUpstream
from .status import add_status_route

__all__ = ["make_app", "reloaded", "AppOptions", "RELAY"]

log = logging.getLogger("bmrgw")

RELAY = web.AppKey("relay", Relay)

_DAY = 86400.0

_STORE_PING_TIMEOUT = 2.0

#: Tasks started by a reload, held until done (the loop keeps only weak references).
_BACKGROUND: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, kw_only=True)
class AppOptions:
    watch_config: bool = True
    """Reload the config file when it changes (needs ``config.source``)."""
    db: str | None = None
    """Store URL overriding ``gateway.db`` (``--db`` / ``BMRGW_DB_URL``), also on reloads."""
    upstream: Callable[[], Upstream] = HttpUpstream
    """Factory of the upstream seam (tests may pass another real implementation)."""
    node: str | None = None
    """This process's node name in the send/receive log and circuit state (default: gateway.name)."""


def make_app(config: Config, options: AppOptions = AppOptions()) -> web.Application:
    """The gateway application for ``config``."""
    app = web.Application(client_max_size=1024 * 1024, handler_args={"max_field_size": 16384})
    app[LIVE] = LiveTable(config)
    app[CERTS] = CertificateWatch(app[LIVE])
    install_auth(app, lambda: app[LIVE].current.config.clients, fault_response, _log_refusal(app))
    app[METRICS] = Metrics()
    app[NODE] = options.node or config.gateway.name
    app.cleanup_ctx.append(_store_ctx(config))
    app.cleanup_ctx.append(_log_ctx(config))
    app.cleanup_ctx.append(_security_ctx)
    add_jx(app, config)
    add_refdb(app)  # before the relay: may refuse to start
    app.cleanup_ctx.append(_relay_ctx(options))
    control.install(app, fault=fault_response, refused=_log_refusal(app, "limit"))
    add_api(app)  # after the log and control: it shares their clock, log, breakers and limits
    if options.watch_config and config.source is not None:
        app.cleanup_ctx.append(_watch_ctx(config, options))
    app.router.add_post("/soap", _relay)
    app.router.add_post("/soap/{ap}", _relay)
    app.router.add_get("/healthz", _healthz)
    add_status_route(app)
    add_console(app)  # /console: for clients with admin: true
    app.router.add_get("/metrics", _metrics)
    app.on_response_prepare.append(_product_server)
    return app


async def _product_server(_request: web.Request, response: web.StreamResponse) -> None:
    """Every answer names the product (``Server: bmrgw``), as the relayed ones do, not aiohttp's default
    ``Python/3.x aiohttp/3.y.z``: no library versions to look vulnerabilities up by.  aiohttp's own
    answers to heads it cannot read get it in :mod:`gateway.serve.protocol`."""
    response.headers["Server"] = SERVER


def _store_ctx(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = Store(database_url(config))
        yield
        app[STORE].close()
    return ctx


def _log_ctx(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    """NTP time and the send/receive log; the log is flushed when the gateway stops."""
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[CLOCK] = clock = Clock.from_settings(config.gateway.ntp)
        await clock.start()
        retention: asyncio.Task[None] | None = None
        if config.gateway.logs.enabled:
            key = log_key(config)
            if key is None:
                log.warning("no gateway.log_key: the send/receive log's chains are plain SHA-256, which "
                            "the database's owner can recompute, and no checkpoints are written")
            app[JOURNAL] = journal = Journal(app[STORE].engine, node=app[NODE], key=key,
                                             checkpoints=None if key is None else checkpoints_path(config))
            await journal.start()
            if config.gateway.logs.retention_days:
                retention = asyncio.create_task(_retain(app[STORE], config))
        else:
            log.warning("gateway.logs.enabled is false: exchanges are NOT logged (benchmarks only)")
        yield
        if retention is not None:
            retention.cancel()
        if JOURNAL in app:
            await app[JOURNAL].close()
        await clock.stop()
    return ctx


async def _retain(store: Store, config: Config) -> None:
    """Archive records older than ``gateway.logs.retention_days``, at start and then daily."""
    directory = archive_dir(config)
    days = config.gateway.logs.retention_days or 0
    while True:
        before = datetime.now(UTC) - timedelta(days=days)
        try:
            result = await asyncio.to_thread(archive, store.engine, directory, before)
            if result.path is not None:
                log.info("send/receive log: archived records before %s to %s", before.isoformat(), result.path)
        except JournalUnavailable as exc:
            log.error("send/receive log: archiving failed, retrying tomorrow: %s", exc.reason)
        await asyncio.sleep(_DAY)


async def _security_ctx(app: web.Application) -> AsyncIterator[None]:
    """WS-Security and the replay records, shared by the relay, JX and refdb."""
    app[SECURITY] = await message_security(app[STORE].engine, app[CLOCK])
    yield
    app[SECURITY].close()


def _relay_ctx(options: AppOptions) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        upstream = Resilient(EchoUpstream(options.upstream()), app[RESILIENCE])
        app[RELAY] = Relay(table=app[LIVE], upstream=upstream, metrics=app[METRICS],
                           clock=app[CLOCK], journal=app.get(JOURNAL), security=app[SECURITY],
                           deposit=app.get(JX_MAILBOX))
        yield
        await upstream.close()
    return ctx


def _watch_ctx(config: Config, options: AppOptions) -> Callable[[web.Application], AsyncIterator[None]]:
    assert config.source is not None
    source = config.source

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[METRICS].config_generation.set(1)
        load = lambda: load_config(source, db=options.db)  # noqa: E731
        task = asyncio.create_task(watch(app[LIVE], source, load, on_reload=lambda applied: reloaded(app, applied)))
        certs = asyncio.create_task(app[CERTS].watch(lambda: reloaded(app, app[LIVE].reload(load))))
        yield
        for running in (task, certs):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    return ctx


def reloaded(app: web.Application, applied: bool) -> None:
    """After a reload of the route table (the file watcher's or SIGHUP's): the metrics, and, when a new
    table replaced the old, the frozen heap re-settled so that the old one can be collected."""
    metrics = app[METRICS]
    metrics.config_generation.set(app[LIVE].generation)
    metrics.config_error.set(0 if applied else 1)
    if applied:
        heap.resettle()
        if REFDB in app:  # grants follow the config at once, not at the next /refdb request
            task = asyncio.get_running_loop().create_task(app[REFDB].refresh())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)


def fault_response(request: web.Request, error: GatewayError) -> web.Response:
    """A gateway fault for ``request`` in its SOAP version (1.1 when it announced none); on ``/api``,
    problem details (RFC 9457)."""
    gateway = request.app[LIVE].current.config.gateway.name
    message_id = echoable_message_id(request.headers.get(H_MESSAGE_ID))
    if is_api_path(request.path):
        return problem_response(error, gateway=gateway, message_id=message_id)
    version = version_for(request.content_type) or SoapVersion.V11
    headers = {"Content-Type": fault_content_type(version), "Server": SERVER}
    if message_id is not None:
        headers[H_MESSAGE_ID] = message_id
    return web.Response(status=error.http_status, body=gateway_fault(error, version, gateway=gateway),
                        headers=headers)


def _log_refusal(app: web.Application, kind: str = "auth") -> Callable[[web.Request, GatewayError, str | None], Any]:
    """Refused logins (and rate limits) go to the send/receive log too: an auditor looks for them first."""
    async def record(request: web.Request, error: GatewayError, claimed: str | None) -> None:
        journal = app.get(JOURNAL)
        if journal is None:
            return
        entry = LogRecord.at(app[CLOCK].now(), kind=kind, direction="request", status="fault",
                             message_id=echoable_message_id(request.headers.get(H_MESSAGE_ID)),
                             endpoint=request.path[:256], client=claimed, http_status=error.http_status,
                             fault_code=error.code)
        try:
            await prompt_record(journal, entry)  # its batch must not idle in front of answers that wait
        except JournalUnavailable as exc:
            log.error("send/receive log unavailable (%s); refused login not logged: %s", exc.reason,
                      entry.to_json())
    return record


async def _relay(request: web.Request) -> web.StreamResponse:
    return await request.app[RELAY].handle(request)


async def _healthz(request: web.Request) -> web.Response:
    live = request.app[LIVE]
    config = live.current.config
    store = request.app[STORE]
    store_state: dict[str, Any] = {"ok": True, "url": store.display_url}
    try:
        await asyncio.wait_for(asyncio.to_thread(store.ping), _STORE_PING_TIMEOUT)
    except (StoreUnavailable, asyncio.TimeoutError) as exc:
        store_state.update(ok=False, error=str(exc) or "no answer within 2 s")
    journal = request.app.get(JOURNAL)
    log_state = journal.status() if journal is not None else {"running": False, "disabled": True}
    able = store_state["ok"] and (journal is None or log_state["running"])
    body = {
        "status": "ok" if able else "unavailable",
        "gateway": config.gateway.name,
        "config": {
            "loaded": True,
            "source": str(config.source) if config.source else None,
            "generation": live.generation,
            "endpoints": len(config.endpoints),
            "peers": len(config.peers),
            "error": live.error,
        },
        "store": store_state,
        # The corrected time itself too: a site's ``bmrgw check`` compares its clock with it.
        "ntp": {**request.app[CLOCK].status(), "time": request.app[CLOCK].read().time},
        "log": log_state,
        "tls": request.app[CERTS].status(),
    }
    return web.json_response(body, status=200 if able else 503)


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    clock = request.app[CLOCK]
    metrics.ntp(offset=clock.offset, synced=clock.synced)
    metrics.certificates(request.app[CERTS].expiries)
    journal = request.app.get(JOURNAL)
    if journal is not None:
        metrics.journal(journal.status())
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
