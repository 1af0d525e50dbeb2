"""Traffic per endpoint for the console's charts: hourly counts in the store, written by every process.

Counting the send/receive log on each page view would read every record of
the period (half a second per 200,000 records on SQLite; a busy DC logs
millions a day).  Instead each process adds what its own
``bmrgw_requests_total{destination,status}`` counters grew by to its rows of
``console_traffic`` (node, hour, destination: ok and failed) once a minute
and when it stops, and the chart sums the rows of every node: a few hundred
rows for a week, whatever the volume, and every process and host on the
store is included.  Rows older than :data:`KEEP_HOURS` are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy import BigInteger, Column, Connection, Engine, Float, MetaData, String, Table, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from gateway.keys import METRICS, NODE, STORE
from gateway.store import create_tables, db_reason

__all__ = ["Traffic", "traffic", "Sampler", "traffic_ctx", "KEEP_HOURS", "SAMPLE_SECONDS"]

log = logging.getLogger("bmrgw.console")

#: How often each process adds its counts.
SAMPLE_SECONDS = 60.0
#: A week and a day: the longest chart is a week.
KEEP_HOURS = 192

_meta = MetaData()
TRAFFIC = Table(
    "console_traffic", _meta,
    Column("node", String(128), primary_key=True),
    Column("hour", Float, primary_key=True),  # POSIX time of the hour's start, UTC
    Column("destination", String(256), primary_key=True),
    Column("ok", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
)


def ensure_table(engine: Engine) -> None:
    create_tables(engine, _meta)


def _counts(registry: CollectorRegistry) -> dict[tuple[str, bool], float]:
    """(destination, ok) → requests so far, from the ``bmrgw_requests`` counter."""
    found: dict[tuple[str, bool], float] = {}
    for family in registry.collect():
        if family.name != "bmrgw_requests":
            continue
        for sample in family.samples:
            if sample.name == "bmrgw_requests_total":
                key = (sample.labels["destination"], sample.labels["status"] == "ok")
                found[key] = found.get(key, 0.0) + sample.value
    return found


class Sampler:
    """One process's side: adds the growth of its counters to its rows of the current hour."""

    def __init__(self, engine: Engine, node: str, registry: CollectorRegistry) -> None:
        self.engine = engine
        self.node = node[:128]
        self.registry = registry
        self.seen: dict[tuple[str, bool], float] = {}

    def sample(self, now: float | None = None) -> None:
        """Write what was counted since the last sample (raises SQLAlchemyError; the next sample retries)."""
        counts = _counts(self.registry)
        grown: dict[str, list[int]] = {}
        for (destination, ok), value in counts.items():
            delta = int(value - self.seen.get((destination, ok), 0.0))
            if delta > 0:
                grown.setdefault(destination[:256], [0, 0])[0 if ok else 1] += delta
        if grown:
            hour = float(int((now or time.time()) // 3600) * 3600)
            with self.engine.begin() as connection:
                for destination, (good, failed) in grown.items():
                    _add(connection, self.node, hour, destination, good, failed)
                connection.execute(delete(TRAFFIC).where(TRAFFIC.c.hour < hour - KEEP_HOURS * 3600))
        self.seen = counts  # only once written: a failed write is added to the next sample


def _add(connection: Connection, node: str, hour: float, destination: str, ok: int, failed: int) -> None:
    where = (TRAFFIC.c.node == node, TRAFFIC.c.hour == hour, TRAFFIC.c.destination == destination)
    changed = connection.execute(update(TRAFFIC).where(*where).values(
        ok=TRAFFIC.c.ok + ok, failed=TRAFFIC.c.failed + failed)).rowcount
    if not changed:  # only this process writes its node's rows: no one else inserts this one meanwhile
        connection.execute(insert(TRAFFIC).values(node=node, hour=hour, destination=destination, ok=ok,
                                                  failed=failed))


@dataclass(frozen=True)
class Traffic:
    """Requests per destination in hourly buckets, oldest first: (ok, not ok) per bucket."""

    start: datetime
    hours: int
    by_endpoint: dict[str, list[tuple[int, int]]]


def traffic(engine: Engine, hours: int, *, now: datetime | None = None) -> Traffic:
    """Every node's counts per destination over the last ``hours`` (the current hour included)."""
    end = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=hours)
    stmt = (select(TRAFFIC.c.destination, TRAFFIC.c.hour, func.sum(TRAFFIC.c.ok), func.sum(TRAFFIC.c.failed))
            .where(TRAFFIC.c.hour >= start.timestamp()).group_by(TRAFFIC.c.destination, TRAFFIC.c.hour))
    found: dict[str, list[tuple[int, int]]] = {}
    with engine.connect() as connection:
        for destination, hour, ok, failed in connection.execute(stmt):
            index = int((hour - start.timestamp()) // 3600)
            if 0 <= index < hours:
                points = found.setdefault(destination, [(0, 0)] * hours)
                points[index] = (int(ok or 0), int(failed or 0))
    return Traffic(start=start, hours=hours, by_endpoint=dict(sorted(found.items())))


async def traffic_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: sample every minute while the gateway runs, and once more when it stops."""
    sampler = Sampler(app[STORE].engine, app[NODE], app[METRICS].registry)
    await asyncio.to_thread(ensure_table, sampler.engine)
    task = asyncio.create_task(_every_minute(sampler), name="console-traffic")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(SQLAlchemyError):
        await asyncio.to_thread(sampler.sample)


async def _every_minute(sampler: Sampler) -> None:
    warned = False
    while True:
        await asyncio.sleep(SAMPLE_SECONDS)
        try:
            await asyncio.to_thread(sampler.sample)
            warned = False
        except SQLAlchemyError as exc:
            if not warned:
                log.error("console: traffic counts not written, the store does not answer: %s", db_reason(exc))
                warned = True
