"""Circuit state and resets through the store, so the CLI reaches every running gateway process.

Why the store and not an admin port: with ``bmrgw serve --workers N`` every
process has its own breakers, and several hosts may share one PostgreSQL
store; a loopback admin port would reach one process at random.  The store
is the one place all of them already talk to, and the CLI finds it from the
same endpoints.yaml.

* Each process publishes its circuits that are not closed to
  ``circuit_state`` (one row per process and URL), when one changes and every
  few seconds while any is open; closed circuits have no row.
* ``bmrgw endpoints reset NAME`` inserts a row into ``circuit_reset``; every
  process polls that table once a second, closes NAME's circuits and says so
  in ``circuit_reset_ack`` — so the CLI can tell "applied" from "no gateway
  is running" (circuits live in the processes; with none running there is
  nothing to reset).

* Each process also writes a heartbeat row to ``gateway_process`` every
  :data:`REFRESH_SECONDS`: ``GET /status`` lists the processes on the store.

Rows not refreshed for :data:`STALE_SECONDS` (a process that died) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import Column, Engine, Float, Integer, MetaData, String, Table, delete, func, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from gateway.errors import CommandError, ConfigError, UnknownDestination
from gateway.keys import LIVE, METRICS, NODE, STORE
from gateway.relay.breaker import Breaker, State
from gateway.relay.limits import Fault, Refused, rate_middleware
from gateway.relay.resilience import RESILIENCE, Resilience, ResilienceCollector, urls_of
from gateway.store import Store, create_tables, database_url, db_reason
from gateway.terminal import table
from routing.config import Config

__all__ = ["Publisher", "CircuitRow", "read_circuits", "request_reset", "install", "reset", "circuit_lines",
           "circuit_listing", "live_processes", "STALE_SECONDS"]

log = logging.getLogger("bmrgw.control")

POLL_SECONDS = 1.0
#: An open circuit's row is rewritten this often, so readers can tell a live process from a dead one.
REFRESH_SECONDS = 5.0
STALE_SECONDS = 30.0

_meta = MetaData()
STATE = Table(
    "circuit_state", _meta,
    Column("node", String(128), primary_key=True),
    Column("url", String(2048), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("failures", Integer, nullable=False),
    Column("opened_at", Float),
    Column("retry_at", Float),
    Column("last_error", String(1024)),
    Column("updated", Float, nullable=False),
)
RESET = Table(
    "circuit_reset", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("requested", Float, nullable=False),
)
#: One row per running gateway process, rewritten every REFRESH_SECONDS: ``bmrgw status`` lists them.
PROCESS = Table(
    "gateway_process", _meta,
    Column("node", String(128), primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    Column("started", Float, nullable=False),
    Column("updated", Float, nullable=False),
)
ACK = Table(
    "circuit_reset_ack", _meta,
    Column("reset_id", Integer, primary_key=True),
    Column("node", String(128), primary_key=True),
    Column("applied", Float, nullable=False),
)


@dataclass(frozen=True, kw_only=True)
class CircuitRow:
    node: str
    url: str
    state: str
    failures: int
    opened_at: float | None
    retry_at: float | None
    """time.time() from when the next probe may go through."""
    last_error: str | None
    updated: float


def ensure_tables(engine: Engine) -> None:
    create_tables(engine, _meta)


def _row(node: str, breaker: Breaker, now: float) -> dict[str, Any]:
    return dict(node=node, url=breaker.url[:2048], state=breaker.state.value, failures=breaker.failures,
                opened_at=breaker.opened_at, retry_at=now + breaker.seconds_left(),
                last_error=(breaker.last_error or "")[:1024] or None, updated=now)


class Publisher:
    """One process's side: publish its circuits, apply resets others requested."""

    def __init__(self, engine: Engine, node: str, resilience: Resilience) -> None:
        self.engine = engine
        self.node = node
        self.res = resilience
        self.dirty = True
        self._last_reset = 0
        self._written = 0.0
        self._warned = False
        self._ready = False
        self._beat = 0.0
        self._started = time.time()
        resilience.changed = self._mark

    def _mark(self) -> None:
        self.dirty = True

    async def run(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(POLL_SECONDS)

    async def sync(self) -> None:
        """One round: apply new reset requests, then publish if something changed."""
        try:
            if not self._ready:
                await asyncio.to_thread(self._setup)
                self._ready = True
            resets = await asyncio.to_thread(self._new_resets)
            for _, name in resets:
                closed = self.res.reset(name)
                log.warning("operator reset of %s: %d circuit(s) closed", name, closed)
            if resets:
                await asyncio.to_thread(self._acknowledge, [reset_id for reset_id, _ in resets])
            if time.time() - self._beat > REFRESH_SECONDS:
                await asyncio.to_thread(self._heartbeat)
            rows = self._snapshot()
            if self.dirty or (rows and time.time() - self._written > REFRESH_SECONDS):
                self.dirty = False
                await asyncio.to_thread(self._publish, rows)
            self._warned = False
        except SQLAlchemyError as exc:
            self.dirty = True
            if not self._warned:
                log.error("circuit state: the store is unavailable, resets wait for it: %s",
                          db_reason(exc))
                self._warned = True

    def _snapshot(self) -> list[dict[str, Any]]:
        now = time.time()
        return [_row(self.node, b, now) for b in self.res.circuits if b.state is not State.CLOSED]

    def _setup(self) -> None:
        ensure_tables(self.engine)
        with self.engine.begin() as connection:
            connection.execute(delete(STATE).where(STATE.c.node == self.node))
            self._last_reset = connection.execute(select(func.coalesce(func.max(RESET.c.id), 0))).scalar_one()

    def _new_resets(self) -> list[tuple[int, str]]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(RESET.c.id, RESET.c.name).where(RESET.c.id > self._last_reset)
                                      .order_by(RESET.c.id)).all()
        if rows:
            self._last_reset = rows[-1].id
        return [(row.id, row.name) for row in rows]

    def _acknowledge(self, reset_ids: Sequence[int]) -> None:
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(insert(ACK), [{"reset_id": i, "node": self.node, "applied": now} for i in reset_ids])

    def _publish(self, rows: Sequence[dict[str, Any]]) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(STATE).where(STATE.c.node == self.node))
            if rows:
                connection.execute(insert(STATE), list(rows))
        self._written = time.time()

    def _heartbeat(self) -> None:
        now = time.time()
        with self.engine.begin() as connection:
            connection.execute(delete(PROCESS).where(PROCESS.c.node == self.node))
            connection.execute(insert(PROCESS).values(node=self.node, pid=os.getpid(), host=socket.gethostname()[:255],
                                                      started=self._started, updated=now))
        self._beat = now

    def withdraw(self) -> None:
        """Remove this process's rows (it stops; its circuits stop mattering)."""
        with self.engine.begin() as connection:
            connection.execute(delete(STATE).where(STATE.c.node == self.node))
            connection.execute(delete(PROCESS).where(PROCESS.c.node == self.node))


def install(app: web.Application, *, fault: Fault, refused: Refused) -> None:
    """Wire resilience into ``app``: state, the rate-limit middleware, metrics, the store publisher.

    Call after the authentication middleware (the rate limit counts per
    authenticated client) and after the store's cleanup_ctx.
    """
    live = app[LIVE]
    res = app[RESILIENCE] = Resilience(live)
    app.middlewares.append(rate_middleware(res.limiter, lambda: live.current.config.gateway.limits, fault, refused))
    app[METRICS].registry.register(ResilienceCollector(res))
    app.cleanup_ctx.append(_control_ctx)


async def _control_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the publisher while the app runs; withdraw this process's rows at the end."""
    publisher = Publisher(app[STORE].engine, app[NODE], app[RESILIENCE])
    task = asyncio.create_task(publisher.run(), name="circuit-control")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, SQLAlchemyError):
        await task
    with contextlib.suppress(SQLAlchemyError):
        await asyncio.to_thread(publisher.withdraw)


# -- the CLI's side ------------------------------------------------------------------


def open_store(config: Config) -> Store | None:
    """The store of ``config`` for the CLI, or None when it is a SQLite file no gateway created yet."""
    url = make_url(config.gateway.db)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not config.resolve_path(url.database).exists():
            return None
    full = make_url(database_url(config))
    if full.get_backend_name() == "postgresql" and "connect_timeout" not in full.query:
        # An operator's command should say "unreachable" in seconds, not after TCP gives up.
        full = full.update_query_dict({"connect_timeout": str(_CLI_CONNECT_TIMEOUT)})
    return Store(full.render_as_string(hide_password=False))


def read_circuits(engine: Engine, urls: Sequence[str] | None = None) -> list[CircuitRow]:
    """Circuits that live processes report as open or half-open (optionally only of ``urls``)."""
    if not inspect(engine).has_table(STATE.name):
        return []
    query = select(STATE).where(STATE.c.updated > time.time() - STALE_SECONDS).order_by(STATE.c.url, STATE.c.node)
    if urls is not None:
        query = query.where(STATE.c.url.in_(list(urls)))
    with engine.connect() as connection:
        return [CircuitRow(**row._mapping) for row in connection.execute(query)]


def live_processes(engine: Engine) -> list[dict[str, Any]]:
    """The gateway processes whose heartbeat is fresh: node, pid, host, started."""
    if not inspect(engine).has_table(PROCESS.name):
        return []
    query = select(PROCESS.c.node, PROCESS.c.pid, PROCESS.c.host, PROCESS.c.started) \
        .where(PROCESS.c.updated > time.time() - STALE_SECONDS).order_by(PROCESS.c.node)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def request_reset(engine: Engine, name: str) -> int:
    """Ask every running process to close ``name``'s circuits; the request's id, for :func:`acknowledged`."""
    ensure_tables(engine)
    with engine.begin() as connection:
        key = connection.execute(insert(RESET).values(name=name, requested=time.time())).inserted_primary_key
    return int(key[0]) if key is not None else 0


def acknowledged(engine: Engine, reset_id: int) -> list[str]:
    """The processes that applied reset ``reset_id``."""
    with engine.connect() as connection:
        return list(connection.scalars(select(ACK.c.node).where(ACK.c.reset_id == reset_id)))


# -- bmrgw endpoints list / reset ------------------------------------------------------

#: How long ``bmrgw endpoints reset`` waits to see the running gateways apply a reset.
RESET_WAIT = 5.0
_CLI_CONNECT_TIMEOUT = 5


def owners(config: Config) -> dict[str, list[str]]:
    """URL → the endpoint and peer names that use it."""
    found: dict[str, list[str]] = {}
    for (_, name), urls in urls_of(config).items():
        for url in urls:
            found.setdefault(url, []).append(name)
    return found


def circuit_listing(config: Config) -> tuple[list[dict[str, Any]], str | None]:
    """Open and half-open circuits reported by live gateway processes, and an error if the store failed."""
    try:
        store = open_store(config)
        if store is None:
            return [], None
        try:
            rows = read_circuits(store.engine)
        finally:
            store.close()
    except (SQLAlchemyError, ConfigError) as exc:
        return [], exc.reason if isinstance(exc, ConfigError) else db_reason(exc)
    names = owners(config)
    now = time.time()
    return [{"names": names.get(r.url, []), "url": r.url, "state": r.state, "node": r.node,
             "failures": r.failures, "next_probe_s": round(max(0.0, (r.retry_at or now) - now), 1),
             "last_error": r.last_error} for r in rows], None


def circuit_lines(config: Config) -> list[str]:
    rows, error = circuit_listing(config)
    if error is not None:
        return [f"circuits: unknown, the store does not answer ({error})"]
    if not rows:
        return ["circuits: all closed"]
    cells = [[",".join(r["names"]) or "-", r["state"], r["url"], r["node"], str(r["failures"]),
              f"{r['next_probe_s']:g} s", r["last_error"] or ""] for r in rows]
    return table(["CIRCUIT", "STATE", "URL", "NODE", "FAILURES", "PROBE IN", "LAST ERROR"], cells)


def reset(config: Config, name: str) -> int:
    """Ask every running gateway on this store to close ``name``'s circuits; 0 once none is open."""
    urls = [u for (_, n), us in urls_of(config).items() if n == name for u in us]
    if not urls:
        raise UnknownDestination(f"no url endpoint or peer named {name!r} in {config.source}", destination=name)
    store = open_store(config)
    if store is None:
        raise CommandError(f"{name}: no running gateway: none has used the store of {config.source} yet, "
                           "so there is no circuit to reset")
    try:
        reset_id = request_reset(store.engine, name)
        deadline = time.monotonic() + RESET_WAIT
        while True:
            nodes = acknowledged(store.engine, reset_id)
            still = read_circuits(store.engine, urls) if nodes else []
            if (nodes and not still) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        shown = store.display_url
    finally:
        store.close()
    if not nodes:
        raise CommandError(f"{name}: no running gateway took the reset within {RESET_WAIT:g} s (store {shown}); "
                           "a gateway that starts has every circuit closed")
    if still:
        nodes = sorted({r.node for r in still})
        print(f"{name}: reset requested, but {', '.join(nodes)} still report(s) it not closed after "
              f"{RESET_WAIT:g} s (is the gateway running and reaching the store?)")
        return 1
    print(f"{name}: circuits closed on every running gateway ({len(nodes)} process"
          f"{'' if len(nodes) == 1 else 'es'}: {', '.join(sorted(nodes))}) for {', '.join(urls)}")
    return 0
