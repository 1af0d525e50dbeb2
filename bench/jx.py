"""JX scenario: Put+Get+Confirm cycles per second for 10 KiB documents, SQLite and PostgreSQL,
with and without encryption at rest, against raw SQL; key rotations under that load; and a big
document through the encrypted store with every process's peak memory.

For each store kind three things are measured in interleaved rounds, so that a machine growing
busier during the run burdens them alike: a gateway without ``gateway.encryption``, a gateway
with it (each on a database of its own, both running throughout), and the raw SQL reference
(:mod:`bench.jxload`: the same inserts, selects and updates through the driver).  With
``BMRGW_BENCH_JX_BASELINE`` naming another ``bmrgw`` executable (an older checkout), an encrypted
gateway of that one is measured in the same rounds too: before and after, side by side.

Rotation: on the encrypted gateway, with the load running, ``bmrgw keys rotate --new-master``
and then ``bmrgw keys rotate --org`` (the organisation of one of the workers, with documents
coming and going) run to completion; the load goes on until they are done, and every failed
request is counted.  ``rotate --org`` waits twice the gateways' key re-check period (60 s)
before its last pass, so this phase lasts a little over a minute per store.

Big document: one document of ``--file-mib`` MiB (1 GiB by default) is put and got through a
fresh encrypted gateway by a client process of its own (:mod:`bench.jxbig`); the peak RSS of
the client and of every gateway process (supervisor, worker, log writer) must stay under
150 MB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import Bench, Check, Section
from .jxbig import MIB, peak_rss_mib
from .jxload import Measured, NoDatabase, database, http_load, receiver_of, reference_load
from .procs import LOOPBACK, BenchError, Server, cpu_seconds, free_port, start_server

__all__ = ["JxCycles"]

_HEADERS = ("store", "plain cycles/s", "encrypted cycles/s", "encrypted ÷ plain", "raw SQL cycles/s",
            "encrypted ÷ raw SQL", "p50 / p99 ms (encrypted)", "errors", "gateway CPU % (encrypted)")
_BASELINE = os.environ.get("BMRGW_BENCH_JX_BASELINE")
_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class _Gateway:
    name: str
    url: str
    server: Server
    config: Path
    results: list[Measured]


@dataclass(frozen=True, kw_only=True)
class JxCycles:
    name: str = "jx"
    title: str = ("JX: Put+Get+Confirm cycles/s, 10 KiB documents, with and without encryption at rest, "
                  "against raw SQL; key rotation under load; a big document in bounded memory")
    document_bytes: int = 10 * 1024
    workers: int = 8
    rounds: int = 3
    rss_limit_mib: float = 150 * 1000 * 1000 / MIB

    def run(self, bench: Bench) -> Section:
        bench.close_stack()
        rows, raw, notes, checks = [], {}, [], []
        for store in ("sqlite", "postgresql"):
            try:
                measured = self._cycles(bench, store)
            except NoDatabase as exc:
                notes.append(f"{store}: not measured ({exc})")
                rows.append([store, *["-"] * (len(_HEADERS) - 1)])
                continue
            plain, sealed, ref = (_merge(measured[k]) for k in ("plain", "encrypted", "raw SQL"))
            ratio, to_ref = sealed.rate / plain.rate, sealed.rate / ref.rate
            errors = plain.errors + sealed.errors
            rows.append([store, f"{plain.rate:,.0f}", f"{sealed.rate:,.0f}", f"{ratio:.2f}", f"{ref.rate:,.0f}",
                         f"{to_ref:.2f}", f"{sealed.percentile(50):.0f} / {sealed.percentile(99):.0f}", str(errors),
                         f"{sealed.cpu_percent:.0f}" if sealed.cpu_percent is not None else "-"])
            rounds = {k: [round(m.rate, 1) for m in v] for k, v in measured.items()}
            raw[store] = {"plain_cycles_per_s": plain.rate, "encrypted_cycles_per_s": sealed.rate,
                          "encrypted_over_plain": ratio, "raw_sql_cycles_per_s": ref.rate,
                          "encrypted_over_raw_sql": to_ref, "p50_ms": sealed.percentile(50),
                          "p99_ms": sealed.percentile(99), "errors": errors, "rounds": rounds}
            notes.append(f"{store}: cycles/s per round: " + "; ".join(f"{k} {v}" for k, v in rounds.items()))
            if "baseline" in measured:
                base = _merge(measured["baseline"])
                raw[store]["baseline_encrypted_cycles_per_s"] = base.rate
                notes.append(f"{store}: baseline ({_BASELINE}) encrypted {base.rate:,.0f} cycles/s, p50 / p99 "
                             f"{base.percentile(50):.0f} / {base.percentile(99):.0f} ms; this checkout "
                             f"{sealed.rate / base.rate:.2f} × baseline")
            problem = f"{errors} failed cycles" if errors else None
            checks.append(Check(label=f"jx {store}: encrypted ÷ plain", measured=ratio, limit=0.9, unit="×",
                                at_least=True, problem=problem))
            if store == "sqlite":
                checks += [Check(label="jx sqlite: encrypted cycles/s", measured=sealed.rate, limit=500,
                                 unit="cycles/s", at_least=True, problem=problem),
                           Check(label="jx sqlite: encrypted cycle p99", measured=sealed.percentile(99), limit=100,
                                 unit="ms", at_least=False, problem=problem)]
            else:
                checks.append(Check(label="jx postgresql: encrypted ÷ raw SQL", measured=to_ref, limit=0.5, unit="×",
                                    at_least=True, problem=problem))
            rotation = self._rotation(bench, store)
            raw[store]["rotation"] = rotation
            notes.append(f"{store}: rotation under load: {rotation['summary']}")
            checks.append(Check(label=f"jx {store}: failed requests during key rotations",
                                measured=float(rotation["errors"]), limit=0, unit="", at_least=False,
                                problem=None if rotation["completed"] else "a rotation did not complete"))
            big = self._big(bench, store)
            raw[store]["big"] = big
            notes.append(f"{store}: {big['summary']}")
            checks.append(Check(label=f"jx {store}: peak RSS of any process, {big['mib']} MiB document",
                                measured=big.get("peak_mib"), limit=round(self.rss_limit_mib, 1), unit="MiB",
                                at_least=False, problem=None if big.get("same") else "the document did not come back"))
        notes.append(f"{self.workers} concurrent workers, each with its own receiver id (one organisation each); "
                     f"{self.rounds} interleaved rounds of {bench.settings.duration:g} s per variant; bmrgw with the "
                     "send/receive log on; the 10 KiB documents are database rows on both stores (SQLite's blobs: auto keeps "
                     "documents up to 64 KiB in rows, larger ones in fsynced files).")
        return Section(name=self.name, title=self.title, headers=_HEADERS, rows=rows, notes=notes, checks=checks,
                       raw={"document_bytes": self.document_bytes, "workers": self.workers, **raw})

    # -- cycles, interleaved ----------------------------------------------------------------

    def _cycles(self, bench: Bench, store: str) -> dict[str, list[Measured]]:
        variants: list[tuple[str, Path | None, bool]] = [("plain", None, False), ("encrypted", None, True)]
        if _BASELINE:
            variants.append(("baseline", Path(_BASELINE), True))
        with contextlib.ExitStack() as stack:
            gateways = []
            for name, program, encrypted in variants:
                url = stack.enter_context(database(store, bench.workdir))
                gateway = self._start(bench, store, name, url, encrypted=encrypted, program=program)
                stack.callback(gateway.server.stop)
                gateways.append(gateway)
            ref_url = stack.enter_context(database(store, bench.workdir))
            settings = bench.settings
            for gateway in gateways:
                bench.log(f"jx {store} {gateway.name}: warm-up {settings.warmup:g} s")
                asyncio.run(http_load(gateway.url, self.document_bytes, self.workers, settings.warmup))
            reference_load(ref_url, self.document_bytes, self.workers, settings.warmup)
            refs: list[Measured] = []
            for number in range(self.rounds):
                for gateway in gateways:
                    gateway.results.append(self._measure(gateway, settings.duration))
                    bench.log(f"jx {store} round {number + 1} {gateway.name}: {gateway.results[-1].rate:,.0f} cycles/s")
                refs.append(reference_load(ref_url, self.document_bytes, self.workers, settings.duration))
                bench.log(f"jx {store} round {number + 1} raw SQL: {refs[-1].rate:,.0f} cycles/s")
            return {**{g.name: g.results for g in gateways}, "raw SQL": refs}

    def _measure(self, gateway: _Gateway, seconds: float) -> Measured:
        cpu0 = cpu_seconds(gateway.server.process.pid)
        measured = asyncio.run(http_load(gateway.url, self.document_bytes, self.workers, seconds))
        cpu = cpu_seconds(gateway.server.process.pid) - cpu0
        if measured.cycles == 0:
            raise BenchError(f"jx {gateway.name}: no cycle completed ({measured.failures[:1]}); gateway output "
                             f"ends:\n{gateway.server.log_tail()}")
        return Measured(cycles=measured.cycles, seconds=measured.seconds, latencies_ms=measured.latencies_ms,
                        errors=measured.errors, cpu_percent=100 * cpu / measured.seconds)

    def _start(self, bench: Bench, store: str, name: str, url: str, *, encrypted: bool,
               program: Path | None = None, extra: str = "") -> _Gateway:
        port = free_port()
        data = bench.workdir / f"jx-{store}-{name}-{uuid.uuid4().hex[:6]}"
        data.mkdir(mode=0o700)
        encryption = ""
        if encrypted:
            key = data / "keys" / "master.key"
            self._bmrgw(bench, "keys", "init", str(key))
            encryption = f'  encryption: {{master_key: "{key}"}}\n'
        config = data / "endpoints.yaml"
        config.write_text(f"""# Generated by bench/jx.py for one benchmark run.
gateway:
  name: bench-jx-{store}-{name}
  listen: {{host: {LOOPBACK}, port: {port}}}
  db: "{url}"
  data_dir: "{data / 'var'}"
{encryption}{extra}""")
        argv: list[str | os.PathLike[str]] = [program or bench.tools.bmrgw, "serve", "--config", config,
                                              "--log-level", "WARNING"]
        server = start_server(f"bmrgw serve (jx, {store}, {name})", argv, log=data / "gateway.log")
        try:
            server.wait_ready(f"http://{LOOPBACK}:{port}/healthz", timeout=30)
        except BenchError:
            server.stop()
            raise
        return _Gateway(name=name, url=f"http://{LOOPBACK}:{port}/jx", server=server, config=config, results=[])

    @staticmethod
    def _bmrgw(bench: Bench, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        began = time.monotonic()
        done = subprocess.run([os.fspath(bench.tools.bmrgw), *args], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BenchError(f"bmrgw {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
        return time.monotonic() - began, done

    # -- rotation under load ----------------------------------------------------------------

    def _rotation(self, bench: Bench, store: str) -> dict[str, Any]:
        with database(store, bench.workdir) as url:
            gateway = self._start(bench, store, "rotation", url, encrypted=True)
            try:
                prefix = f"rot-{uuid.uuid4().hex[:6]}"
                asyncio.run(http_load(gateway.url, self.document_bytes, self.workers, bench.settings.warmup,
                                      prefix=prefix))  # every worker's organisation has a data key now
                done = threading.Event()
                timings: dict[str, Any] = {"completed": False}

                def rotate() -> None:
                    try:
                        time.sleep(1.0)
                        new = gateway.config.parent / "keys" / "master-2.key"
                        self._bmrgw(bench, "keys", "init", str(new))
                        timings["new_master_s"], _ = self._bmrgw(
                            bench, "keys", "rotate", "--config", str(gateway.config), "--new-master", str(new))
                        timings["org_s"], out = self._bmrgw(
                            bench, "keys", "rotate", "--config", str(gateway.config), "--org", receiver_of(prefix, 0))
                        timings["org_output"] = out.stdout.strip().splitlines()[-3:]
                        timings["completed"] = True
                    except BenchError as exc:
                        timings["error"] = str(exc)
                    finally:
                        done.set()

                bench.log(f"jx {store}: rotating the master key, then the data key of {receiver_of(prefix, 0)}, "
                          "under load")
                rotator = threading.Thread(target=rotate)
                rotator.start()
                measured = asyncio.run(http_load(gateway.url, self.document_bytes, self.workers, 2.0, prefix=prefix,
                                                 until=done.is_set))
                rotator.join()
            finally:
                gateway.server.stop()
        summary = (f"rotate --new-master {timings.get('new_master_s', float('nan')):.1f} s, rotate --org "
                   f"{timings.get('org_s', float('nan')):.1f} s ({'completed' if timings['completed'] else 'FAILED: ' + timings.get('error', '?')}); "
                   f"meanwhile {measured.cycles} cycles ({measured.rate:,.0f}/s, p99 {measured.percentile(99):.0f} ms), "
                   f"{measured.errors} failed, {measured.empty_polls} empty polls asked again" + (f" (first: {measured.failures[0][:200]})" if measured.failures else ""))
        bench.log(f"jx {store}: {summary}")
        return {**timings, "cycles": measured.cycles, "cycles_per_s": measured.rate, "errors": measured.errors,
                "empty_polls": measured.empty_polls,
                "failures": measured.failures[:5], "summary": summary}

    # -- a big document -------------------------------------------------------------------------

    def _big(self, bench: Bench, store: str) -> dict[str, Any]:
        mib = bench.settings.file_mib
        size = mib * MIB
        with database(store, bench.workdir) as url:
            gateway = self._start(bench, store, "big", url, encrypted=True,
                                  extra=f"  jx: {{max_document_bytes: {size + MIB}}}\n")
            try:
                bench.log(f"jx {store}: putting and getting a {mib} MiB document through the encrypted store")
                client = subprocess.run([sys.executable, "-m", "bench.jxbig", gateway.url, str(size)], cwd=_ROOT,
                                        capture_output=True, text=True, timeout=3600)
                peaks = peak_rss_mib(gateway.server.process.pid)
            finally:
                gateway.server.stop()
        try:
            result: dict[str, Any] = json.loads(client.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            result = {"error": f"the client failed ({client.returncode}): {client.stderr.strip()[-400:]}"}
        processes = {**peaks, "client": result.get("client_rss_mib", float("nan"))}
        result |= {"mib": mib, "processes": processes, "peak_mib": max(processes.values())}
        if "error" in result:
            result["summary"] = f"{mib} MiB document: {result['error']}"
        else:
            result["summary"] = (f"{mib} MiB document put in {result['put_s']:.0f} s and got in {result['get_s']:.0f} s "
                                 f"({'same bytes' if result['same'] else 'OTHER BYTES'}); peak RSS MiB: "
                                 + ", ".join(f"{name} {v:.0f}" for name, v in processes.items()))
        bench.log(f"jx {store}: {result['summary']}")
        return result


def _merge(results: list[Measured]) -> Measured:
    """The rounds of one variant as one measurement (cycles and seconds summed, latencies pooled)."""
    seconds = sum(m.seconds for m in results)
    cpu = [m.cpu_percent * m.seconds for m in results if m.cpu_percent is not None]
    return Measured(cycles=sum(m.cycles for m in results), seconds=seconds,
                    latencies_ms=[x for m in results for x in m.latencies_ms], errors=sum(m.errors for m in results),
                    cpu_percent=sum(cpu) / seconds if cpu and seconds else None)

