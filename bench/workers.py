"""``bmrgw serve --workers N``: throughput as gateway processes get cores of their own.

The load generator and the backend (nginx, fixed answers: never the limit)
are pinned with ``taskset`` to the first core; the gateway gets the remaining
cores (on a 2-core machine: one).  Measured, in interleaved rounds:

* ``--workers 1`` on the gateway's cores;
* ``--workers N`` (N = the gateway's cores + 1, at least 2) on the same cores:
  what more processes than cores give;
* ``--workers 2`` not pinned, sharing every core with the load, as the other
  scenarios run.

Reported for each: req/s, latency, and the gateway's CPU per request (all
its processes: supervisor, workers, log writers), so throughput per core
can be read off: req/s ÷ (CPU % ÷ 100).
"""

from __future__ import annotations

import os
import statistics
from contextlib import ExitStack
from dataclasses import dataclass, replace

from .envelope import HEADERS, make_envelope, verify
from .harness import Bench, Section
from .procs import LOOPBACK, Server, cpu_seconds, free_port
from .servers import ECHO_SIZES, _launch, start_nginx_backend
from .wrk import Load, WrkResult, run_wrk

__all__ = ["Workers"]

_HEADERS = ("gateway", "cores", "req/s", "p50 ms", "p99 ms", "errors", "gateway CPU %", "CPU µs/req",
            "req/s per busy core")


@dataclass(frozen=True, kw_only=True)
class _Variant:
    label: str
    workers: int
    cpus: str | None


@dataclass(frozen=True, kw_only=True)
class Workers:
    name: str = "workers"
    title: str = ("Throughput: bmrgw serve --workers N, load and backend pinned to one core, the gateway to "
                  "the rest (1 KiB, 50 connections, log on)")
    connections: int = 50
    rounds: int = 3

    def run(self, bench: Bench) -> Section:
        bench.close_stack()
        cores = sorted(os.sched_getaffinity(0))
        load_cpu = str(cores[0]) if len(cores) > 1 else None
        gw_cpus = ",".join(map(str, cores[1:])) if len(cores) > 1 else None
        more = max(2, len(cores))
        variants = [_Variant(label="--workers 1, pinned", workers=1, cpus=gw_cpus),
                    _Variant(label=f"--workers {more}, pinned", workers=more, cpus=gw_cpus),
                    _Variant(label="--workers 2, not pinned", workers=2, cpus=None)]
        results: dict[str, list[tuple[WrkResult, float]]] = {v.label: [] for v in variants}
        assert 1024 in ECHO_SIZES
        with ExitStack() as exits:
            _, backend = start_nginx_backend(bench.tools, bench.workdir, 0.0, exits, cpus=load_cpu)
            envelope = make_envelope(1024)
            body = bench.workdir / "workers-1k.xml"
            body.write_bytes(envelope.body)
            gateways = {v.label: _gateway(bench, exits, backend, v) for v in variants}
            for label, (_, base) in gateways.items():
                verify(f"{base}/soap", envelope, target=label)
            for round_ in range(self.rounds):
                order = variants if round_ % 2 == 0 else list(reversed(variants))
                for v in order:
                    server, base = gateways[v.label]
                    load = Load(url=f"{base}/soap", body_file=body, headers=HEADERS, connections=self.connections,
                                duration=bench.settings.duration, cpus=load_cpu)
                    if round_ == 0:
                        run_wrk(bench.tools.wrk, replace(load, duration=max(1.0, bench.settings.warmup)))
                    before = cpu_seconds(server.process.pid)
                    result = run_wrk(bench.tools.wrk, load)
                    results[v.label].append((result, cpu_seconds(server.process.pid) - before))
                    bench.log(f"workers: {v.label}: {result.rps:,.0f} req/s")
        rows, raw = [], {}
        for v in variants:
            done = results[v.label]
            requests = sum(r.requests for r, _ in done)
            seconds = sum(r.seconds for r, _ in done)
            cpu = sum(c for _, c in done)
            rps = requests / seconds if seconds else 0.0
            busy = cpu / seconds if seconds else 0.0
            rows.append([v.label, v.cpus or "all", f"{rps:,.0f}",
                         f"{statistics.median(r.latency_ms['50'] for r, _ in done):.2f}",
                         f"{statistics.median(r.latency_ms['99'] for r, _ in done):.2f}",
                         str(sum(r.error_count for r, _ in done)), f"{100 * busy:.0f}",
                         f"{1e6 * cpu / requests:,.0f}" if requests else "-",
                         f"{rps / busy:,.0f}" if busy else "-"])
            raw[v.label] = {"rps": rps, "cpu_seconds": cpu, "requests": requests,
                            "rounds_rps": [r.rps for r, _ in done]}
        notes = [f"wrk and the nginx backend pinned to CPU {load_cpu}, the pinned gateways to CPU {gw_cpus}"
                 if load_cpu else "one core only: nothing pinned",
                 f"{self.rounds} interleaved rounds; per round req/s: " + "; ".join(
                     f"{label} {', '.join(f'{r.rps:,.0f}' for r, _ in done)}" for label, done in results.items()),
                 "req/s per busy core: req/s ÷ the gateway's CPU in cores (all its processes)."]
        return Section(name=self.name, title=self.title, headers=_HEADERS, rows=rows, notes=notes, raw=raw)


def _gateway(bench: Bench, exits: ExitStack, backend: str, v: _Variant) -> tuple[Server, str]:
    port = free_port()
    data = bench.workdir / f"bmrgw-workers-{port}"
    data.mkdir()
    config = data / "endpoints.yaml"
    config.write_text(f"""# Generated by bench/workers.py for one benchmark run.
gateway:
  name: bench-gw
  listen: {{host: {LOOPBACK}, port: {port}}}
  db: "sqlite:///{data}/bmrgw.db"
  data_dir: "{data}"
endpoints:
  demo: {{url: "{backend}"}}
""")
    pin: list[str | os.PathLike[str]] = ["taskset", "-c", v.cpus] if v.cpus else []
    argv: list[str | os.PathLike[str]] = [*pin, bench.tools.bmrgw, "serve", "--config", config, "--log-level",
                                          "WARNING", "--workers", str(v.workers)]
    base = f"http://{LOOPBACK}:{port}"
    return _launch(f"bmrgw serve {v.label}", argv, data / "gateway.log", f"{base}/healthz", exits), base

