"""Log verification from the console: run ``bmrgw logs verify``'s check in the background, keep the result.

A verification reads every record, which takes minutes on a large log, so
the POST only starts it (one at a time per process) and the page shows the
latest result.  Results are rows in the store (``console_verification``),
not process memory: with ``--workers N`` the page may be served by another
process than the one that ran the check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from sqlalchemy import Boolean, Column, Engine, Float, Integer, MetaData, String, Table, Text, insert, select, update

from gateway.logs.chain import Report
from gateway.logs.commands import archive_dir, verify_log
from gateway.store import create_tables
from routing.config import Config

__all__ = ["Verification", "latest", "start", "ensure_table", "verification_ctx", "report_lines"]

log = logging.getLogger("bmrgw.console")

_meta = MetaData()
RESULTS = Table(
    "console_verification", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started", Float, nullable=False),
    Column("finished", Float),
    Column("client", String(256), nullable=False),
    Column("node", String(128), nullable=False),
    Column("ok", Boolean),
    Column("lines", Text, nullable=False),  # JSON list of the report's lines
)
#: A run not finished after this many seconds is taken for dead (its process stopped) and may be redone.
_STALE = 3600.0


class _Runs:
    """The verification tasks this process runs (held: the loop keeps only weak references)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()


_RUNS = web.AppKey("console_verifications", _Runs)


@dataclass(frozen=True)
class Verification:
    """One verification run: when, by whom, and its result (``finished`` None while it runs)."""

    started: datetime
    finished: datetime | None
    client: str
    node: str
    ok: bool | None
    lines: list[str]


def ensure_table(engine: Engine) -> None:
    create_tables(engine, _meta)


def latest(engine: Engine) -> Verification | None:
    with engine.connect() as connection:
        row = connection.execute(select(RESULTS).order_by(RESULTS.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    return Verification(started=datetime.fromtimestamp(row.started, UTC),
                        finished=None if row.finished is None else datetime.fromtimestamp(row.finished, UTC),
                        client=row.client, node=row.node, ok=row.ok, lines=list(json.loads(row.lines)))


def _begin(engine: Engine, client: str, node: str) -> int | None:
    """The new run's id, or None when one is running (started less than an hour ago, not finished)."""
    with engine.begin() as connection:
        running = connection.execute(select(RESULTS.c.id).where(
            RESULTS.c.finished.is_(None), RESULTS.c.started > time.time() - _STALE)).first()
        if running is not None:
            return None
        key = connection.execute(insert(RESULTS).values(started=time.time(), client=client[:256], node=node[:128],
                                                        lines="[]")).inserted_primary_key
    return int(key[0]) if key is not None else None


def _finish(engine: Engine, run_id: int, ok: bool, lines: list[str]) -> None:
    with engine.begin() as connection:
        connection.execute(update(RESULTS).where(RESULTS.c.id == run_id).values(
            finished=time.time(), ok=ok, lines=json.dumps(lines, ensure_ascii=False)))


def report_lines(report: Report) -> list[str]:
    """The report as ``bmrgw logs verify`` words it."""
    if report.empty:
        return ["no send/receive log in the store (no log tables or not one chain)"]
    lines = [f"chain {s.node}: {s.archived + s.stored} records up to seq {s.last_seq} "
             f"({s.archived} archived, {s.stored} in the database)" for s in report.chains.values()]
    lines += [f"TAMPERED {problem}" for problem in report.problems]
    lines.append(f"OK: {len(report.chains)} chain(s) verified, no tampering found" if report.ok else
                 f"FAILED: {len(report.problems)} problem(s)")
    return lines


async def start(app: web.Application, engine: Engine, config: Config, *, client: str, node: str) -> bool:
    """Start a verification in the background; False when one is running already."""
    run_id = await asyncio.to_thread(_begin, engine, client, node)
    if run_id is None:
        return False
    task = asyncio.create_task(_run(engine, config, run_id), name="console-verify")
    app[_RUNS].tasks.add(task)
    task.add_done_callback(app[_RUNS].tasks.discard)
    return True


async def _run(engine: Engine, config: Config, run_id: int) -> None:
    try:
        report = await asyncio.to_thread(verify_log, config, engine, archive_dir(config))
        ok, lines = report.ok, report_lines(report)
    except Exception as exc:  # noqa: BLE001 - whatever failed is the run's result, shown on the page
        log.error("console: log verification failed: %s", exc)
        ok, lines = False, [f"the verification could not run: {exc}"]
    await asyncio.to_thread(_finish, engine, run_id, ok, lines)


async def verification_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: runs still going when the gateway stops are cancelled (their rows go stale)."""
    app[_RUNS] = _Runs()
    yield
    for task in list(app[_RUNS].tasks):
        task.cancel()
