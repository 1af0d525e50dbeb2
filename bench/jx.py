"""JX scenario: Put+Get+Confirm cycles per second for 10 KiB documents, SQLite and PostgreSQL.

Each cycle is what one DC application and one city-hall poller do for one
document: PutDocument (10 KiB), GetDocument (lease), ConfirmDocument, each a
separate SOAP call over keep-alive HTTP to a real ``bmrgw serve`` with the
send/receive log on.  ``workers`` cycles run at once, each worker with a
receiver id of its own.

The reference, measured in the same run on the same database kind with the
same number of worker threads, is the database work alone: the same three
transactions in raw SQL (insert the row with its 10 KiB of bytes, select the
oldest ready row and lease it, mark it confirmed), with the same durability
settings (SQLite WAL with ``synchronous=FULL``; PostgreSQL's defaults).  The
ratio says how much of the store's speed the gateway keeps once HTTP, SOAP,
base64, the file fsync and the log are added.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError

from .harness import Bench, Section
from .procs import LOOPBACK, BenchError, Server, cpu_seconds, free_port, start_server

__all__ = ["JxCycles"]

JX = "http://www.dsri.jp/edi-bp/2004/jedicos-xml/client-server"
PG_URL = os.environ.get("BMRGW_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_HEADERS = ("store", "bmrgw cycles/s", "raw SQL cycles/s", "bmrgw ÷ raw SQL", "cycle p50 ms", "cycle p99 ms",
            "errors", "gateway CPU %")


@dataclass(frozen=True, kw_only=True)
class Measured:
    cycles: int
    seconds: float
    latencies_ms: list[float]
    errors: int = 0
    cpu_percent: float | None = None

    @property
    def rate(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass(frozen=True, kw_only=True)
class JxCycles:
    name: str = "jx"
    title: str = "JX: Put+Get+Confirm cycles/s, 10 KiB documents, against raw SQL on the same store"
    document_bytes: int = 10 * 1024
    workers: int = 8

    def run(self, bench: Bench) -> Section:
        bench.close_stack()
        rows, raw, notes = [], {}, []
        for store in ("sqlite", "postgresql"):
            try:
                ours, ref = self._measure(bench, store)
            except _NoDatabase as exc:
                notes.append(f"{store}: not measured ({exc})")
                rows.append([store, "-", "-", "-", "-", "-", "-", "-"])
                continue
            ratio = ours.rate / ref.rate if ref.rate else float("nan")
            rows.append([store, f"{ours.rate:,.0f}", f"{ref.rate:,.0f}", f"{ratio:.2f}",
                         f"{ours.percentile(50):.1f}", f"{ours.percentile(99):.1f}", str(ours.errors),
                         f"{ours.cpu_percent:.0f}" if ours.cpu_percent is not None else "-"])
            raw[store] = {"bmrgw_cycles_per_s": ours.rate, "raw_sql_cycles_per_s": ref.rate, "ratio": ratio,
                          "errors": ours.errors, "p50_ms": ours.percentile(50), "p99_ms": ours.percentile(99)}
            bench.log(f"jx {store}: bmrgw {ours.rate:,.0f} cycles/s, raw SQL {ref.rate:,.0f} cycles/s "
                      f"({ratio:.2f} ×)")
        notes.append(f"{self.workers} concurrent workers, each with its own receiver id; bmrgw with the "
                     "send/receive log on; SQLite blobs are fsynced files, PostgreSQL blobs are database rows.")
        return Section(name=self.name, title=self.title, headers=_HEADERS, rows=rows, notes=notes,
                       raw={"document_bytes": self.document_bytes, "workers": self.workers, **raw})

    def _measure(self, bench: Bench, store: str) -> tuple[Measured, Measured]:
        """bmrgw, then the raw SQL reference, each on a fresh database of the kind."""
        with _database(store, bench.workdir) as url:
            url_and_server = self._gateway(bench, store, url)
            try:
                ours = self._load_gateway(bench, store, url_and_server)
            finally:
                url_and_server[1].stop()  # before the reference runs, and before a scratch schema is dropped
            return ours, self._load_reference(bench, store, url)

    # -- the gateway ------------------------------------------------------------------

    def _gateway(self, bench: Bench, store: str, url: str) -> tuple[str, Server]:
        port = free_port()
        data = bench.workdir / f"jx-{store}"
        data.mkdir(exist_ok=True)
        config = data / "endpoints.yaml"
        config.write_text(f"""# Generated by bench/jx.py for one benchmark run.
gateway:
  name: bench-jx-{store}
  listen: {{host: {LOOPBACK}, port: {port}}}
  db: "{url}"
  data_dir: "{data}"
""")
        argv: list[str | os.PathLike[str]] = [bench.tools.bmrgw, "serve", "--config", config, "--log-level", "WARNING"]
        server = start_server(f"bmrgw serve (jx, {store})", argv, log=data / "gateway.log")
        try:
            server.wait_ready(f"http://{LOOPBACK}:{port}/healthz", timeout=30)
        except BenchError:
            server.stop()
            raise
        return f"http://{LOOPBACK}:{port}/jx", server

    def _load_gateway(self, bench: Bench, store: str, gateway: tuple[str, Server]) -> Measured:
        url, server = gateway
        settings = bench.settings
        bench.log(f"jx {store}: bmrgw warm-up {settings.warmup:g} s, then {settings.duration:g} s, "
                  f"{self.workers} workers")
        asyncio.run(_http_load(url, self.document_bytes, self.workers, settings.warmup))
        cpu0 = cpu_seconds(server.process.pid)
        measured = asyncio.run(_http_load(url, self.document_bytes, self.workers, settings.duration))
        cpu = cpu_seconds(server.process.pid) - cpu0
        if measured.cycles == 0:
            raise BenchError(f"jx {store}: no cycle completed; gateway output ends:\n{server.log_tail()}")
        return Measured(cycles=measured.cycles, seconds=measured.seconds, latencies_ms=measured.latencies_ms,
                        errors=measured.errors, cpu_percent=100 * cpu / measured.seconds)

    # -- the reference ------------------------------------------------------------------

    def _load_reference(self, bench: Bench, store: str, url: str) -> Measured:
        settings = bench.settings
        bench.log(f"jx {store}: raw SQL reference {settings.duration:g} s, {self.workers} threads")
        engine = _reference_engine(url)
        try:
            _REF.metadata.create_all(engine)
            _thread_load(engine, self.document_bytes, self.workers, settings.warmup)
            return _thread_load(engine, self.document_bytes, self.workers, settings.duration)
        finally:
            engine.dispose()


# -- HTTP load -------------------------------------------------------------------------

def _envelope(op: str, fields: list[tuple[str, str]]) -> bytes:
    body = "".join(f"<jx:{k}>{v}</jx:{k}>" for k, v in fields)
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:jx="{JX}"><s:Header><jx:MessageHeader><jx:From>bench</jx:From><jx:To>gw</jx:To>'
            f"<jx:MessageId>{uuid.uuid4()}</jx:MessageId><jx:Timestamp>now</jx:Timestamp></jx:MessageHeader>"
            f"</s:Header><s:Body><jx:{op}>{body}</jx:{op}></s:Body></s:Envelope>").encode()


async def _soap(http: aiohttp.ClientSession, url: str, op: str, fields: list[tuple[str, str]]) -> bytes:
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{JX}/{op}"'}
    async with http.post(url, data=_envelope(op, fields), headers=headers) as resp:
        body = await resp.read()
        if resp.status != 200 or f"<jx:{op}Result>true<".encode() not in body:
            raise BenchError(f"{op} answered {resp.status}: {body[:300]!r}")
        return body


async def _http_load(url: str, size: int, workers: int, seconds: float) -> Measured:
    data = base64.b64encode(os.urandom(size)).decode()
    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    async def worker(http: aiohttp.ClientSession, number: int) -> None:
        receiver = f"bench-{number}-{uuid.uuid4().hex[:8]}"
        while time.monotonic() < stop:
            started = time.perf_counter()
            message_id = str(uuid.uuid4())
            try:
                await _soap(http, url, "PutDocument", [("messageId", message_id), ("data", data),
                                                       ("senderId", "bench"), ("receiverId", receiver),
                                                       ("formatType", "BIN"), ("documentType", "bench"),
                                                       ("compressType", "")])
                await _soap(http, url, "GetDocument", [("receiverId", receiver)])
                await _soap(http, url, "ConfirmDocument", [("messageId", message_id), ("senderId", "bench"),
                                                           ("receiverId", receiver)])
            except (BenchError, aiohttp.ClientError):
                errors[0] += 1
                continue
            latencies.append(1000 * (time.perf_counter() - started))

    began = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers)) as http:
        await asyncio.gather(*(worker(http, n) for n in range(workers)))
    return Measured(cycles=len(latencies), seconds=time.monotonic() - began, latencies_ms=latencies,
                    errors=errors[0])


# -- the raw SQL reference ----------------------------------------------------------------

def _reference_tables() -> Any:
    metadata = MetaData()
    ident = BigInteger().with_variant(Integer, "sqlite")
    table = Table("bench_jx_ref", metadata,
                  Column("seq", ident, primary_key=True, autoincrement=True),
                  Column("message_id", String(64), nullable=False, unique=True),
                  Column("receiver_id", String(64), nullable=False),
                  Column("state", String(16), nullable=False),
                  Column("lease_until_ms", BigInteger),
                  Column("data", LargeBinary, nullable=False))
    return type("Ref", (), {"metadata": metadata, "table": table})


_REF = _reference_tables()


def _reference_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    return engine


def _cycle(engine: Engine, receiver: str, payload: bytes) -> None:
    t = _REF.table
    message_id = str(uuid.uuid4())
    with engine.begin() as c:
        c.execute(insert(t).values(message_id=message_id, receiver_id=receiver, state="ready", data=payload))
    with engine.begin() as c:
        now = time.time_ns() // 1_000_000
        row = c.execute(select(t).where(t.c.receiver_id == receiver, t.c.state == "ready")
                        .order_by(t.c.seq).limit(1).with_for_update(skip_locked=True)).first()
        assert row is not None
        c.execute(update(t).where(t.c.seq == row.seq).values(lease_until_ms=now + 300_000))
    with engine.begin() as c:
        c.execute(update(t).where(t.c.message_id == message_id).values(state="confirmed"))


def _thread_load(engine: Engine, size: int, workers: int, seconds: float) -> Measured:
    payload = os.urandom(size)
    latencies: list[list[float]] = [[] for _ in range(workers)]
    stop = time.monotonic() + seconds

    def worker(number: int) -> None:
        receiver = f"ref-{number}-{uuid.uuid4().hex[:8]}"
        while time.monotonic() < stop:
            started = time.perf_counter()
            _cycle(engine, receiver, payload)
            latencies[number].append(1000 * (time.perf_counter() - started))

    began = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [x for per in latencies for x in per]
    return Measured(cycles=len(flat), seconds=time.monotonic() - began, latencies_ms=flat)


# -- databases ----------------------------------------------------------------------------

class _NoDatabase(Exception):
    """PostgreSQL is not reachable: that row is reported as not measured."""


class _database:
    """A fresh database for one store kind: a SQLite file, or a scratch PostgreSQL schema."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.schema = f"bmrgw_bench_{uuid.uuid4().hex[:10]}"
        self.admin: Engine | None = None

    def __enter__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.workdir / 'jx-bench.db'}"
        self.admin = create_engine(PG_URL)
        try:
            with self.admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{self.schema}"'))
        except OperationalError as exc:
            self.admin.dispose()
            self.admin = None
            raise _NoDatabase(f"PostgreSQL at {PG_URL} is not reachable: {str(exc.orig).strip()}") from exc
        return f"{PG_URL}?options=-csearch_path%3D{self.schema}"

    def __exit__(self, *exc: object) -> None:
        if self.admin is not None:
            with self.admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            self.admin.dispose()

