"""Reference-DB scenario: a full push through the gateway against raw SQLAlchemy ``executemany``.

For each database (SQLite, the embedded default, and PostgreSQL, production)
the same rows — a CSV of ``rows`` resident records with every column type —
are written twice in the same run:

- **service**: ``bmrgw refdb push --mode full`` to a running ``bmrgw serve``,
  i.e. CSV reading and SOAP batches on the client, streamed parsing, type
  validation, staging and the one-transaction apply in the gateway, timed by
  the command from opening the file to the Commit's answer (the time it
  prints; Python's start-up, about a second, is left out as it is for raw,
  and shown in its own column);
- **raw**: SQLAlchemy Core ``connection.execute(insert(table), rows)`` of the
  same rows, already typed, into a table with the same columns and key, in
  one transaction — the least any Python writer of those rows pays.

The acceptance target is service rows/s ≥ 0.5 × raw rows/s.

:class:`RefdbSnapshot` then replaces a 1,000,000-row dataset with a full
push while a reader queries it, and reports the gateway's peak memory and
whether any page the reader got mixed two versions.  PostgreSQL is
``BMRGW_BENCH_PG_URL`` (default: the test server on 127.0.0.1:5432, database
``test``), in a schema of its own that is dropped afterwards.
``BMRGW_BENCH_REFDB_ROWS`` changes the row count (for a quick look).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import Bench, Check, Section
from .procs import LOOPBACK, BenchError, cpu_seconds, free_port, start_server

__all__ = ["RefdbPush", "RefdbSnapshot"]

PG_URL = os.environ.get("BMRGW_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_COLUMNS = {"person_id": "string", "name": "string", "birth": "date", "updated": "datetime",
            "fee": "decimal(12,2)", "household": "integer", "active": "boolean"}
_HEADERS = ("database", "rows", "service s", "service rows/s", "raw s", "raw rows/s", "× raw",
            "command s (with start-up)", "gateway CPU s", "gateway peak RSS MiB")


@dataclass(frozen=True, kw_only=True)
class Result:
    database: str
    rows: int
    service_s: float
    command_s: float
    raw_s: float
    gateway_cpu_s: float
    gateway_rss_mib: float

    @property
    def ratio(self) -> float:
        return self.raw_s / self.service_s if self.service_s else 0.0


@dataclass(frozen=True, kw_only=True)
class RefdbPush:
    """One full push of ``rows`` records per database, service vs raw executemany."""

    name: str
    title: str
    rows: int = 100_000
    at_least: float = 0.5

    def run(self, bench: Bench) -> Section:
        bench.close_stack()  # the relay's servers must not share the cores with this one
        rows = int(os.environ.get("BMRGW_BENCH_REFDB_ROWS", self.rows))
        data = bench.workdir / f"residents-{rows}.csv"
        _write_csv(data, rows)
        results: list[Result] = []
        notes: list[str] = []
        for database in ("sqlite", "postgresql"):
            try:
                with _database(database, bench.workdir) as url:
                    results.append(self._measure(bench, database, url, data, rows))
            except _NoDatabase as exc:
                notes.append(f"{database}: not measured: {exc}")
        return self._section(results, notes, rows)

    def _measure(self, bench: Bench, database: str, url: str, data: Path, rows: int) -> Result:
        bench.log(f"{self.name}: {database}: raw executemany of {rows:,} rows")
        raw_s = _raw_insert(url, data)
        gateway, base = _start_gateway(bench, database, url)
        try:
            bench.log(f"{self.name}: {database}: bmrgw refdb push --mode full of {rows:,} rows")
            cpu0 = cpu_seconds(gateway.process.pid)
            service_s, command_s = _push(bench, base, data)
            cpu = cpu_seconds(gateway.process.pid) - cpu0
            rss = _peak_rss_mib(gateway.process.pid)
        finally:
            gateway.stop()
        bench.log(f"{self.name}: {database}: service {rows / service_s:,.0f} rows/s, raw {rows / raw_s:,.0f} rows/s")
        return Result(database=database, rows=rows, service_s=service_s, command_s=command_s, raw_s=raw_s,
                      gateway_cpu_s=cpu,
                      gateway_rss_mib=rss)

    def _section(self, results: list[Result], notes: list[str], rows: int) -> Section:
        table = [[r.database, f"{r.rows:,}", f"{r.service_s:.2f}", f"{r.rows / r.service_s:,.0f}", f"{r.raw_s:.2f}",
                  f"{r.rows / r.raw_s:,.0f}", f"{r.ratio:.2f}", f"{r.command_s:.2f}", f"{r.gateway_cpu_s:.1f}",
                  f"{r.gateway_rss_mib:.0f}"]
                 for r in results]
        checks = [Check(label=f"{self.name}: {r.database} push rows/s ÷ raw executemany rows/s", measured=r.ratio,
                        limit=self.at_least, unit="×", at_least=True) for r in results]
        notes = notes + ["service: `bmrgw refdb push --mode full` of a CSV into an empty dataset (client and "
                         "gateway processes, SOAP batches of 5,000 records sent as rows, one commit), timed from opening the "
                         "file to the Commit's answer; raw: SQLAlchemy Core executemany of the same typed rows "
                         "in one transaction (conversion from CSV not timed)."]
        return Section(name=self.name, title=self.title, headers=_HEADERS, rows=table, checks=checks, notes=notes,
                       raw={"rows": rows, "results": [r.__dict__ | {"ratio": r.ratio} for r in results]})


class _NoDatabase(Exception):
    """The database to measure on is not reachable."""


@contextmanager
def _database(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir}/refdb-bench-{uuid.uuid4().hex[:8]}.db"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(PG_URL)
    schema = f"bmrgw_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        raise _NoDatabase(str(exc.orig).splitlines()[0]) from exc
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(_COLUMNS))
        for n in range(rows):
            writer.writerow([f"P{n:08d}", f"住民 {n}", f"19{n % 100:02d}-0{n % 9 + 1}-1{n % 10}",
                             f"2024-04-01T09:{n % 60:02d}:00", f"{n % 100000}.{n % 100:02d}", n % 7,
                             "true" if n % 2 else "false"])


def _raw_insert(url: str, data: Path) -> float:
    """Seconds for one executemany of the typed rows (conversion and table creation not timed)."""
    from sqlalchemy import Column, MetaData, Table, create_engine, insert

    from refdb.config import parse_refdb
    from refdb.schema import sql_type
    from refdb.values import parse_value

    dataset = parse_refdb({"datasets": {"raw": {"owner": "x", "key": ["person_id"], "columns": _COLUMNS}}}).datasets["raw"]
    with data.open(encoding="utf-8", newline="") as handle:
        rows = [{c.name: parse_value(r[c.name] or None, c) for c in dataset.columns} for r in csv.DictReader(handle)]
    table = Table("raw_executemany", MetaData(), *(Column(c.name, sql_type(c), primary_key=c.name == "person_id")
                                                  for c in dataset.columns))
    engine = create_engine(url)
    try:
        table.metadata.create_all(engine)
        started = time.perf_counter()
        with engine.begin() as connection:
            connection.execute(insert(table), rows)
        return time.perf_counter() - started
    finally:
        engine.dispose()


def _start_gateway(bench: Bench, database: str, url: str, *, dataset: str = "residents",
                   columns: dict[str, str] = _COLUMNS, key: str = "person_id") -> tuple[Any, str]:
    port = free_port()
    folder = bench.workdir / f"refdb-{database}-{port}"
    folder.mkdir()
    config = folder / "endpoints.yaml"
    declared = ", ".join(f'{k}: "{v}"' for k, v in columns.items())
    config.write_text(f"""# Generated by bench/refdb.py for one benchmark run.
gateway:
  name: bench-refdb
  listen: {{host: {LOOPBACK}, port: {port}}}
  db: "{url}"
  data_dir: "{folder}"
refdb:
  datasets:
    {dataset}:
      owner: cityhall
      key: [{key}]
      columns: {{{declared}}}
""")
    argv = [os.fspath(bench.tools.bmrgw), "serve", "--config", os.fspath(config), "--log-level", "WARNING"]
    server = start_server(f"bmrgw serve ({database})", argv, log=folder / "gateway.log")
    base = f"http://{LOOPBACK}:{port}"
    try:
        server.wait_ready(f"{base}/healthz", timeout=30)
    except BenchError:
        server.stop()
        raise
    return server, base


def _push(bench: Bench, base: str, data: Path, *, dataset: str = "residents") -> tuple[float, float]:
    """(seconds the push took as the command reports it, seconds the whole command took)."""
    argv = [os.fspath(bench.tools.bmrgw), "refdb", "push", "--server", base, "--dataset", dataset,
            os.fspath(data), "--mode", "full", "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"bmrgw refdb push failed ({done.returncode}): {done.stderr.strip()}")
    bench.log(f"refdb: {done.stdout.strip()}")
    reported = re.search(r"records sent in ([0-9.]+) s", done.stdout)
    if reported is None:
        raise BenchError(f"bmrgw refdb push did not report its time: {done.stdout.strip()}")
    return float(reported[1]), seconds


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


_SNAP_COLUMNS = {"id": "integer", "gen": "integer", "name": "string", "birth": "date", "fee": "decimal(12,2)"}
_SNAP_HEADERS = ("database", "rows", "push s", "push rows/s", "gateway peak RSS MiB", "reader queries",
                 "torn reads", "query p50 ms", "query p99 ms")


@dataclass(frozen=True, kw_only=True)
class RefdbSnapshot:
    """A full push of ``rows`` records replacing as many, with a reader querying throughout.

    The reader pages through the dataset's last 1,000 keys over and over; a
    page whose rows do not all carry the generation of the version it reports
    is a torn read.  ``BMRGW_BENCH_REFDB_BIG_ROWS`` changes the row count.
    """

    name: str
    title: str
    rows: int = 1_000_000

    def run(self, bench: Bench) -> Section:
        bench.close_stack()
        rows = int(os.environ.get("BMRGW_BENCH_REFDB_BIG_ROWS", self.rows))
        files = [bench.workdir / f"snap-{rows}-gen{g}.csv" for g in (1, 2)]
        for generation, path in enumerate(files, 1):
            _write_snap_csv(path, rows, generation)
        with _database("sqlite", bench.workdir) as url:
            gateway, base = _start_gateway(bench, "sqlite", url, dataset="snap", columns=_SNAP_COLUMNS, key="id")
            try:
                bench.log(f"{self.name}: first full push of {rows:,} rows")
                _push(bench, base, files[0], dataset="snap")
                bench.log(f"{self.name}: second full push of {rows:,} rows with a reader running")
                with _Reader(base, rows) as reader:
                    seconds, _ = _push(bench, base, files[1], dataset="snap")
                rss = _peak_rss_mib(gateway.process.pid)
            finally:
                gateway.stop()
        torn = reader.torn
        bench.log(f"{self.name}: {rows / seconds:,.0f} rows/s, peak RSS {rss:.0f} MiB, "
                  f"{len(reader.latencies)} queries, {torn} torn")
        p50, p99 = reader.percentile(50), reader.percentile(99)
        table = [["sqlite", f"{rows:,}", f"{seconds:.1f}", f"{rows / seconds:,.0f}", f"{rss:.0f}",
                  str(len(reader.latencies)), str(torn), f"{p50:.1f}", f"{p99:.1f}"]]
        checks = [Check(label=f"{self.name}: torn reads during a {rows:,}-row full push", measured=float(torn),
                        limit=0, unit="pages", at_least=False,
                        problem=None if reader.versions >= 2 else "the reader never saw the push commit"),
                  Check(label=f"{self.name}: gateway peak RSS during a {rows:,}-row push", measured=rss,
                        limit=300, unit="MiB", at_least=False)]
        notes = [f"The reader saw {reader.versions} versions; every page it read held rows of exactly one "
                 "version (the one the page reports) or it counts as torn.",
                 "Memory: the push streams in batches of 5,000 records; the gateway process idles at about 100 MiB."]
        return Section(name=self.name, title=self.title, headers=_SNAP_HEADERS, rows=table, checks=checks,
                       notes=notes, raw={"rows": rows, "push_s": seconds, "peak_rss_mib": rss, "torn": torn,
                                         "queries": len(reader.latencies), "query_p50_ms": p50, "query_p99_ms": p99})


def _write_snap_csv(path: Path, rows: int, generation: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        handle.write("id,gen,name,birth,fee\n")
        for n in range(rows):
            handle.write(f"{n},{generation},住民 {n},19{n % 100:02d}-0{n % 9 + 1}-1{n % 10},{n % 1000}.{n % 100:02d}\n")


class _Reader:
    """Queries the last page of the dataset in a thread until stopped; counts torn pages."""

    def __init__(self, base: str, rows: int) -> None:
        import threading

        self._base = base
        self._offset = max(rows - 1000, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="refdb-reader")
        self.latencies: list[float] = []
        self.torn = 0
        self._seen: set[int] = set()

    @property
    def versions(self) -> int:
        return len(self._seen)

    def __enter__(self) -> _Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from refdb.client import RefdbClient

        with RefdbClient(self._base) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                page = client.query("snap", offset=self._offset, limit=1000)
                self.latencies.append(1000 * (time.perf_counter() - started))
                self._seen.add(page.version)
                if {r["gen"] for r in page.records} != {str(page.version)}:
                    self.torn += 1
                time.sleep(0.05)

    def percentile(self, p: int) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, len(ordered) * p // 100)] if ordered else 0.0
