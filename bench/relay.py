"""Relay scenarios: the same SOAP exchange, direct, through nginx and through bmrgw.

Throughput is measured at saturation (enough connections that the machine, not
the client, is the limit); latency with a backend that waits, so that the
proxy's own delay shows as the difference from calling the backend directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .envelope import HEADERS, make_envelope, verify
from .harness import Bench, Check, Section
from .procs import cpu_seconds
from .servers import Stack, Target
from .wrk import Load, WrkResult, run_wrk

__all__ = ["AddedLatency", "Cell", "RelayLoad", "ThroughputRatio", "measure"]

#: % of one core from which a process counts as saturated (it cannot use more than one).
_SATURATED = 90.0
_HEADERS = ("target", "req/s", "× direct", "× nginx", "MiB/s in", "p50 ms", "p99 ms",
            "+p50 ms", "+p99 ms", "errors", "CPU % wrk/backend/proxy")


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One target's measurement, with the CPU each process used meanwhile."""

    target: str
    result: WrkResult
    backend_cpu: float
    proxy_cpu: float

    def cpu_percent(self) -> dict[str, float]:
        """CPU use by process, in % of one core (on 2 cores they add up to at most 200)."""
        wall = self.result.seconds or 1.0
        used = {"wrk": self.result.cpu_seconds, "backend": self.backend_cpu}
        if self.target != "direct":
            used["proxy"] = self.proxy_cpu
        return {name: 100 * seconds / wall for name, seconds in used.items()}

    def saturated(self) -> list[str]:
        """The single-threaded processes that had a whole core: the likely bottleneck."""
        return [name for name, pct in self.cpu_percent().items() if pct >= _SATURATED]


@dataclass(frozen=True, kw_only=True)
class ThroughputRatio:
    """Acceptance target: ``target``'s req/s is at least ``at_least`` × ``baseline``'s."""

    target: str
    baseline: str
    at_least: float

    def check(self, cells: Mapping[str, Cell], scenario: str) -> Check:
        a, b = cells.get(self.target), cells.get(self.baseline)
        ratio = a.result.rps / b.result.rps if a and b and b.result.rps else None
        return Check(label=f"{scenario}: {self.target} req/s ÷ {self.baseline} req/s", measured=ratio,
                     limit=self.at_least, unit="×", at_least=True, problem=_errors(a, b))


@dataclass(frozen=True, kw_only=True)
class AddedLatency:
    """Acceptance target: ``target`` adds at most ``at_most_ms`` to direct's ``percentile`` latency."""

    target: str
    percentile: str
    at_most_ms: float

    def check(self, cells: Mapping[str, Cell], scenario: str) -> Check:
        a, d = cells.get(self.target), cells.get("direct")
        added = _added(a, d, self.percentile)
        return Check(label=f"{scenario}: {self.target} added p{self.percentile} over direct", measured=added,
                     limit=self.at_most_ms, unit="ms", at_least=False, problem=_errors(a, d))


def _added(cell: Cell | None, direct: Cell | None, percentile: str) -> float | None:
    if not cell or not direct or cell is direct:
        return None
    return cell.result.latency_ms[percentile] - direct.result.latency_ms[percentile]


def _errors(*cells: Cell | None) -> str | None:
    bad = [f"{c.target}: {c.result.error_count} errors" for c in cells if c and c.result.error_count]
    return "; ".join(bad) or None


@dataclass(frozen=True, kw_only=True)
class RelayLoad:
    """POST one envelope size over ``connections`` keep-alive connections to each target."""

    name: str
    title: str
    envelope_bytes: int
    connections: int
    backend_delay: float
    rules: Sequence[ThroughputRatio | AddedLatency] = ()

    def run(self, bench: Bench) -> Section:
        stack = bench.stack(self.backend_delay)
        envelope = make_envelope(self.envelope_bytes)
        body_file = bench.workdir / f"envelope-{self.envelope_bytes}.xml"
        body_file.write_bytes(envelope.body)
        cells: dict[str, Cell] = {}
        for name in bench.settings.targets:
            target = stack.targets[name]
            verify(target.url, envelope, target=name)
            cells[name] = self._measure(bench, stack, target, body_file)
        return self._section(cells)

    def _measure(self, bench: Bench, stack: Stack, target: Target, body_file: Path) -> Cell:
        load = Load(url=target.url, body_file=body_file, headers=HEADERS, connections=self.connections,
                    duration=bench.settings.duration)
        return measure(bench, stack, target, load, scenario=self.name)

    def _section(self, cells: Mapping[str, Cell]) -> Section:
        return Section(
            name=self.name, title=self.title, headers=_HEADERS, notes=_notes(cells),
            rows=[_row(cell, cells) for cell in cells.values()],
            checks=[rule.check(cells, self.name) for rule in self.rules],
            raw={"envelope_bytes": self.envelope_bytes, "connections": self.connections,
                 "backend_delay_s": self.backend_delay,
                 "targets": {name: _raw(cell) for name, cell in cells.items()}},
        )


def measure(bench: Bench, stack: Stack, target: Target, load: Load, *, scenario: str,
            warmup: Load | None = None) -> Cell:
    """Warm up (with ``warmup``, else ``load``), then run ``load`` while watching the CPU of the processes."""
    settings = bench.settings
    if settings.warmup > 0:
        bench.log(f"{scenario}: {target.name} warm-up {settings.warmup:g} s")
        run_wrk(bench.tools.wrk, replace(warmup or load, duration=settings.warmup))
    bench.log(f"{scenario}: {target.name} {load.duration:g} s, {load.connections} connections")
    backend0, proxy0 = _server_cpu(stack, target)
    result = run_wrk(bench.tools.wrk, load)
    backend1, proxy1 = _server_cpu(stack, target)
    bench.log(f"{scenario}: {target.name} {result.rps:,.0f} req/s, p50 {result.latency_ms['50']:.2f} ms, "
              f"p99 {result.latency_ms['99']:.2f} ms, {result.error_count} errors")
    return Cell(target=target.name, result=result, backend_cpu=backend1 - backend0, proxy_cpu=proxy1 - proxy0)


def _server_cpu(stack: Stack, target: Target) -> tuple[float, float]:
    """CPU seconds used so far by the backend and by the target's proxy (0 for direct)."""
    proxy = cpu_seconds(target.proxy.process.pid) if target.proxy else 0.0
    return cpu_seconds(stack.backend.process.pid), proxy


def _raw(cell: Cell) -> dict[str, Any]:
    r = cell.result
    return {"rps": r.rps, "requests": r.requests, "seconds": r.seconds, "bytes_read": r.bytes_read,
            "errors": dict(r.errors), "latency_ms": dict(r.latency_ms),
            "cpu_seconds": {"wrk": r.cpu_seconds, "backend": cell.backend_cpu, "proxy": cell.proxy_cpu}}


def _notes(cells: Mapping[str, Cell]) -> list[str]:
    """Say which process limited each target, so a ratio is read against the right cause."""
    limits = [f"{c.target}: {' and '.join(c.saturated())}" for c in cells.values() if c.saturated()]
    return [f"At ≥ {_SATURATED:.0f} % of a core (the limit): {'; '.join(limits)}."] if limits else []


def _row(cell: Cell, cells: Mapping[str, Cell]) -> list[str]:
    r = cell.result
    return [
        cell.target, f"{r.rps:,.0f}", _ratio(cell, cells.get("direct")), _ratio(cell, cells.get("nginx")),
        f"{r.bytes_read / r.seconds / 2**20:,.1f}" if r.seconds else "-",
        f"{r.latency_ms['50']:.2f}", f"{r.latency_ms['99']:.2f}",
        _plus(_added(cell, cells.get("direct"), "50")), _plus(_added(cell, cells.get("direct"), "99")),
        str(r.error_count), "/".join(f"{p:.0f}" for p in cell.cpu_percent().values()),
    ]


def _ratio(cell: Cell, baseline: Cell | None) -> str:
    if baseline is None or baseline is cell or not baseline.result.rps:
        return "-"
    return f"{cell.result.rps / baseline.result.rps:.2f}"


def _plus(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
