"""The JX scenario's load: SOAP Put+Get+Confirm cycles against a gateway, the raw SQL reference
through the database driver directly, and the scratch databases both run on.

A cycle is what one DC application and one city-hall poller do for one document: PutDocument
(10 KiB), GetDocument (lease), ConfirmDocument, each a separate SOAP call over keep-alive HTTP.

The reference is the database work alone, written against the DB-API driver (psycopg, sqlite3)
with no SQLAlchemy in between: insert the row with its bytes, select the oldest ready row and
lease it, mark it confirmed — three transactions, the same durability (SQLite WAL with
``synchronous=FULL``; PostgreSQL's defaults).
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from .procs import BenchError

__all__ = ["Measured", "NoDatabase", "database", "http_load", "reference_load", "PG_URL"]

JX = "http://www.dsri.jp/edi-bp/2004/jedicos-xml/client-server"
PG_URL = os.environ.get("BMRGW_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@dataclass(frozen=True, kw_only=True)
class Measured:
    cycles: int
    seconds: float
    latencies_ms: list[float]
    errors: int = 0
    cpu_percent: float | None = None
    failures: list[str] = field(default_factory=list)
    empty_polls: int = 0
    """GetDocuments that found nothing and were asked again (not failures: see :func:`http_load`)."""

    @property
    def rate(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- HTTP load ------------------------------------------------------------------------------

def _envelope(op: str, fields: list[tuple[str, str]]) -> bytes:
    body = "".join(f"<jx:{k}>{v}</jx:{k}>" for k, v in fields)
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:jx="{JX}"><s:Header><jx:MessageHeader><jx:From>bench</jx:From><jx:To>gw</jx:To>'
            f"<jx:MessageId>{uuid.uuid4()}</jx:MessageId><jx:Timestamp>now</jx:Timestamp></jx:MessageHeader>"
            f"</s:Header><s:Body><jx:{op}>{body}</jx:{op}></s:Body></s:Envelope>").encode()


async def _soap(http: aiohttp.ClientSession, url: str, op: str, fields: list[tuple[str, str]],
                empty: list[int] | None = None) -> bytes:
    """The answer of a successful call; with ``empty``, a GetDocument that finds nothing is asked again
    (up to 5 s; counted in ``empty``): a document being re-sealed is skipped by hand-outs meanwhile."""
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{JX}/{op}"'}
    for _ in range(100):
        async with http.post(url, data=_envelope(op, fields), headers=headers) as resp:
            body = await resp.read()
        if resp.status == 200 and f"<jx:{op}Result>true<".encode() in body:
            return body
        if empty is None or resp.status != 200 or f"<jx:{op}Result>false<".encode() not in body:
            break
        empty[0] += 1
        await asyncio.sleep(0.05)
    raise BenchError(f"{op} answered {resp.status}: {body[:300]!r}")


def receiver_of(prefix: str, number: int) -> str:
    """The receiver id worker ``number`` of a load with ``prefix`` uses (one organisation each)."""
    return f"{prefix}-{number}"


async def http_load(url: str, size: int, workers: int, seconds: float, *, prefix: str | None = None,
                    until: Callable[[], bool] | None = None) -> Measured:
    """``workers`` cycling for ``seconds`` (or, with ``until``, until it returns True, at least
    ``seconds``); each worker's documents go to :func:`receiver_of` ``prefix``."""
    data = base64.b64encode(os.urandom(size)).decode()
    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}"
    latencies: list[float] = []
    failures: list[str] = []
    empty = [0]
    began = time.monotonic()

    def going() -> bool:
        return time.monotonic() - began < seconds or (until is not None and not until())

    async def worker(http: aiohttp.ClientSession, number: int) -> None:
        receiver = receiver_of(prefix, number)
        while going():
            started = time.perf_counter()
            message_id = str(uuid.uuid4())
            try:
                await _soap(http, url, "PutDocument", [("messageId", message_id), ("data", data),
                                                       ("senderId", "bench"), ("receiverId", receiver),
                                                       ("formatType", "BIN"), ("documentType", "bench"),
                                                       ("compressType", "")])
                got = await _soap(http, url, "GetDocument", [("receiverId", receiver)], empty)
                if data.encode() not in got:
                    raise BenchError(f"GetDocument of {message_id} answered other bytes")
                await _soap(http, url, "ConfirmDocument", [("messageId", message_id), ("senderId", "bench"),
                                                           ("receiverId", receiver)])
            except (BenchError, aiohttp.ClientError) as exc:
                failures.append(str(exc)[:300])
                continue
            latencies.append(1000 * (time.perf_counter() - started))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers)) as http:
        await asyncio.gather(*(worker(http, n) for n in range(workers)))
    return Measured(cycles=len(latencies), seconds=time.monotonic() - began, latencies_ms=latencies,
                    errors=len(failures), failures=failures, empty_polls=empty[0])


# -- the raw SQL reference, through the driver ---------------------------------------------------

_SCHEMA = """CREATE TABLE IF NOT EXISTS bench_jx_ref (
    seq {ident} PRIMARY KEY, message_id VARCHAR(64) NOT NULL UNIQUE, receiver_id VARCHAR(64) NOT NULL,
    state VARCHAR(16) NOT NULL, lease_until_ms BIGINT, data {blob} NOT NULL)"""


class _Driver:
    """One DB-API connection of the reference, with the dialect's SQL."""

    def __init__(self, engine: Engine) -> None:
        self.sqlite = engine.dialect.name == "sqlite"
        self.pooled = engine.raw_connection()
        driver: Any = self.pooled.driver_connection
        self.raw = driver
        if not self.sqlite:
            self.raw.autocommit = True  # transaction() below is the only transaction control
        if self.sqlite:
            self.raw.isolation_level = None  # autocommit: BEGIN IMMEDIATE below is the only control
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=10000"):
                self.raw.execute(f"PRAGMA {pragma}")
        self.mark = "?" if self.sqlite else "%s"

    def run(self, sql: str, *args: Any) -> Any:
        cursor = self.raw.cursor()
        cursor.execute(sql.replace("?", self.mark), args)
        return cursor

    def transaction(self, work: Callable[[], None]) -> None:
        if self.sqlite:
            self.raw.execute("BEGIN IMMEDIATE")
            try:
                work()
            except BaseException:
                self.raw.execute("ROLLBACK")
                raise
            self.raw.execute("COMMIT")
        else:
            with self.raw.transaction():
                work()

    def cycle(self, receiver: str, payload: bytes) -> None:
        message_id = str(uuid.uuid4())
        self.transaction(lambda: self.run(
            "INSERT INTO bench_jx_ref (message_id, receiver_id, state, data) VALUES (?, ?, 'ready', ?)",
            message_id, receiver, payload))

        def lease() -> None:
            lock = "" if self.sqlite else " FOR UPDATE SKIP LOCKED"
            row = self.run("SELECT seq, message_id, data FROM bench_jx_ref WHERE receiver_id = ? AND state = 'ready' "
                           f"ORDER BY seq LIMIT 1{lock}", receiver).fetchone()
            assert row is not None and bytes(row[2]) == payload
            self.run("UPDATE bench_jx_ref SET lease_until_ms = ? WHERE seq = ?", time.time_ns() // 1_000_000 + 300_000,
                     row[0])

        self.transaction(lease)
        self.transaction(lambda: self.run("UPDATE bench_jx_ref SET state = 'confirmed' WHERE message_id = ?",
                                          message_id))

    def close(self) -> None:
        self.pooled.close()


def reference_load(url: str, size: int, workers: int, seconds: float) -> Measured:
    """The raw SQL reference: ``workers`` threads, each with its own driver connection, for ``seconds``."""
    engine = create_engine(url)
    try:
        sqlite = engine.dialect.name == "sqlite"
        with engine.begin() as c:
            c.execute(text(_SCHEMA.format(ident="INTEGER" if sqlite else "BIGSERIAL",
                                          blob="BLOB" if sqlite else "BYTEA")))
        payload = os.urandom(size)
        latencies: list[list[float]] = [[] for _ in range(workers)]
        stop = time.monotonic() + seconds

        def worker(number: int) -> None:
            driver = _Driver(engine)
            receiver = f"ref-{number}-{uuid.uuid4().hex[:8]}"
            try:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    driver.cycle(receiver, payload)
                    latencies[number].append(1000 * (time.perf_counter() - started))
            finally:
                driver.close()

        began = time.monotonic()
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        flat = [x for per in latencies for x in per]
        return Measured(cycles=len(flat), seconds=time.monotonic() - began, latencies_ms=flat)
    finally:
        engine.dispose()


# -- databases ----------------------------------------------------------------------------

class NoDatabase(Exception):
    """PostgreSQL is not reachable: that row is reported as not measured."""


class database:
    """A fresh database for one store kind: a SQLite file, or a scratch PostgreSQL schema."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.schema = f"bmrgw_bench_{uuid.uuid4().hex[:10]}"
        self.admin: Engine | None = None

    def __enter__(self) -> str:
        if self.kind == "sqlite":
            folder = self.workdir / f"jx-db-{self.schema}"
            folder.mkdir(mode=0o700)
            return f"sqlite:///{folder / 'jx-bench.db'}"
        self.admin = create_engine(PG_URL)
        try:
            with self.admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{self.schema}"'))
        except OperationalError as exc:
            self.admin.dispose()
            self.admin = None
            raise NoDatabase(f"PostgreSQL at {PG_URL} is not reachable: {str(exc.orig).strip()}") from exc
        return f"{PG_URL}?options=-csearch_path%3D{self.schema}"

    def __exit__(self, *exc: object) -> None:
        if self.admin is not None:
            with self.admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            self.admin.dispose()
