"""Relay scenarios: the same SOAP exchange, direct, through nginx and through bmrgw.

Throughput is measured at saturation (enough connections that the machine, not
the client, is the limit); latency with a backend that waits, so that the
proxy's own delay shows as the difference from calling the backend directly.

A scenario may measure in interleaved rounds (every target in turn, then
again in the reverse order, and so on): the shared machines here drift by
tens of per cent within a minute, and one long cell per target would turn
that drift into a difference between targets; reversing the order every
other round keeps a steady drift from favouring whichever target comes
first.  Requests and seconds are pooled over the rounds for the table; a
latency percentile is the median of the rounds' percentiles.  A throughput
ratio between two targets is the median of the rounds' ratios: each round
measures the two one right after the other, so a slow stretch of the machine
hits both sides of a ratio, and one disturbed round cannot decide the result.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .echo import echo_answer
from .envelope import HEADERS, make_envelope, verify
from .harness import Bench, Check, Section
from .procs import cpu_seconds
from .servers import Stack, Target
from .wrk import CHECK_SCRIPT, Load, WrkResult, run_wrk

__all__ = ["AddedLatency", "Cell", "CpuRatio", "LatencyRatio", "RelayLoad", "ThroughputRatio", "measure", "pooled", "round_rates"]

#: % of one core from which a process counts as saturated (it cannot use more than one).
_SATURATED = 90.0
_BACKEND_NOTE = {
    "nginx": "nginx answering a fixed EchoResponse per envelope size (C; not the bottleneck)",
    "echo": "aiohttp's low-level web.Server echoing the envelope (bench/echo.py)",
    "demo": "the demo backend (`bmrgw demo-backend`: lxml parse and a built answer, a realistic service)",
}
_HEADERS = ("target", "req/s", "× direct", "× nginx", "MiB/s in", "p50 ms", "p99 ms",
            "+p50 ms", "+p99 ms", "errors", "CPU % wrk/backend/proxy", "proxy CPU µs/req", "× nginx CPU")


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

    def proxy_us(self) -> float | None:
        """CPU microseconds the proxy (all its processes: workers, log writer) used per request."""
        if self.target == "direct" or not self.result.requests:
            return None
        return 1e6 * self.proxy_cpu / self.result.requests

    def saturated(self) -> list[str]:
        """The single-threaded processes that had a whole core: the likely bottleneck."""
        return [name for name, pct in self.cpu_percent().items() if pct >= _SATURATED]


@dataclass(frozen=True, kw_only=True)
class ThroughputRatio:
    """Acceptance target: ``target``'s req/s is at least ``at_least`` × ``baseline``'s."""

    target: str
    baseline: str
    at_least: float

    def check(self, cells: Mapping[str, Cell], scenario: str, runs: Mapping[str, Sequence[Cell]]) -> Check:
        a, b = cells.get(self.target), cells.get(self.baseline)
        ratios = self.per_round(runs)
        ratio = statistics.median(ratios) if ratios else None
        return Check(label=f"{scenario}: {self.target} req/s ÷ {self.baseline} req/s", measured=ratio,
                     limit=self.at_least, unit="×", at_least=True, problem=_errors(a, b))

    def per_round(self, runs: Mapping[str, Sequence[Cell]]) -> list[float]:
        """``target`` ÷ ``baseline`` req/s of each round."""
        pairs = zip(runs.get(self.target, ()), runs.get(self.baseline, ()))
        return [a.result.rps / b.result.rps for a, b in pairs if b.result.rps]


@dataclass(frozen=True, kw_only=True)
class CpuRatio:
    """Acceptance target: ``target``'s proxy CPU per request is at most ``at_most`` × ``baseline``'s."""

    target: str
    baseline: str
    at_most: float

    def check(self, cells: Mapping[str, Cell], scenario: str, runs: Mapping[str, Sequence[Cell]]) -> Check:
        a, b = cells.get(self.target), cells.get(self.baseline)
        ours, theirs = (a.proxy_us() if a else None), (b.proxy_us() if b else None)
        ratio = ours / theirs if ours is not None and theirs else None
        return Check(label=f"{scenario}: {self.target} CPU µs/request ÷ {self.baseline}'s", measured=ratio,
                     limit=self.at_most, unit="×", at_least=False, problem=_errors(a, b))


@dataclass(frozen=True, kw_only=True)
class LatencyRatio:
    """Acceptance target: ``target``'s ``percentile`` latency is at most ``at_most`` × ``baseline``'s."""

    target: str
    baseline: str
    percentile: str
    at_most: float

    def check(self, cells: Mapping[str, Cell], scenario: str, runs: Mapping[str, Sequence[Cell]]) -> Check:
        a, b = cells.get(self.target), cells.get(self.baseline)
        ratio = (a.result.latency_ms[self.percentile] / b.result.latency_ms[self.percentile]
                 if a and b and b.result.latency_ms[self.percentile] else None)
        return Check(label=f"{scenario}: {self.target} p{self.percentile} ÷ {self.baseline}'s", measured=ratio,
                     limit=self.at_most, unit="×", at_least=False, problem=_errors(a, b))


@dataclass(frozen=True, kw_only=True)
class AddedLatency:
    """Acceptance target: ``target`` adds at most ``at_most_ms`` to direct's ``percentile`` latency."""

    target: str
    percentile: str
    at_most_ms: float

    def check(self, cells: Mapping[str, Cell], scenario: str, runs: Mapping[str, Sequence[Cell]]) -> Check:
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
    rules: Sequence[ThroughputRatio | AddedLatency | CpuRatio | LatencyRatio] = ()
    rounds: int = 1
    """Interleaved rounds of ``--duration`` seconds per target (warm-up before the first only)."""
    backend: str = "nginx"
    """Which of :data:`servers.BACKENDS` answers: by default one that is not the bottleneck."""
    check_answers: bool = False
    """Compare every answer with the expected bytes (a differing one is a "bad" error)."""

    def run(self, bench: Bench) -> Section:
        stack = bench.stack(self.backend_delay, self.backend)
        envelope = make_envelope(self.envelope_bytes)
        body_file = bench.workdir / f"envelope-{self.envelope_bytes}.xml"
        body_file.write_bytes(envelope.body)
        expect_file = None
        if self.check_answers:
            expect_file = bench.workdir / f"answer-{self.envelope_bytes}.xml"
            expect_file.write_bytes(echo_answer(envelope.body))
        runs: dict[str, list[Cell]] = {name: [] for name in bench.settings.targets}
        for name in runs:
            verify(stack.targets[name].url, envelope, target=name)
        for round_ in range(self.rounds):
            order = list(runs) if round_ % 2 == 0 else list(reversed(runs))  # drift within a round evens out
            for name in order:
                runs[name].append(self._measure(bench, stack, stack.targets[name], body_file, expect_file,
                                                warm=round_ == 0))
        return self._section({name: pooled(done) for name, done in runs.items()}, runs)

    def _measure(self, bench: Bench, stack: Stack, target: Target, body_file: Path, expect_file: Path | None,
                 *, warm: bool) -> Cell:
        load = Load(url=target.url, body_file=body_file, headers=HEADERS, connections=self.connections,
                    duration=bench.settings.duration, expect_file=expect_file,
                    script=CHECK_SCRIPT if expect_file is not None else Load.script)
        return measure(bench, stack, target, load, scenario=self.name, warm=warm)

    def _section(self, cells: Mapping[str, Cell], runs: Mapping[str, Sequence[Cell]]) -> Section:
        notes = [f"Backend: {_BACKEND_NOTE[self.backend]}.", *_notes(cells)]
        if self.check_answers:
            notes.append("Every answer compared byte for byte with the expected EchoResponse: "
                         + ", ".join(f"{c.target} {c.result.checked:,} equal, {c.result.errors.get('bad', 0)} not"
                                     for c in cells.values()) + ".")
        if self.rounds > 1:
            notes.append(f"{self.rounds} interleaved rounds per target; req/s pooled over the rounds "
                         f"(per round: {round_rates(runs)}); latencies are the median of the rounds'.")
            for rule in self.rules:
                if isinstance(rule, ThroughputRatio) and (ratios := rule.per_round(runs)):
                    notes.append(f"{rule.target} ÷ {rule.baseline}: the median of the rounds' ratios "
                                 f"{', '.join(f'{r:.2f}' for r in ratios)}.")
        return Section(
            name=self.name, title=self.title, headers=_HEADERS, notes=notes,
            rows=[_row(cell, cells) for cell in cells.values()],
            checks=[rule.check(cells, self.name, runs) for rule in self.rules],
            raw={"envelope_bytes": self.envelope_bytes, "backend": self.backend, "connections": self.connections,
                 "backend_delay_s": self.backend_delay,
                 "targets": {name: _raw(cell) for name, cell in cells.items()},
                 "rounds_rps": {name: [c.result.rps for c in done] for name, done in runs.items()}},
        )


def pooled(cells: Sequence[Cell]) -> Cell:
    """One cell from rounds of the same target: totals summed, latency percentiles their median."""
    if len(cells) == 1:
        return cells[0]
    results = [c.result for c in cells]
    errors = {kind: sum(r.errors.get(kind, 0) for r in results) for kind in results[0].errors}
    latency = {q: statistics.median(r.latency_ms[q] for r in results) for q in results[0].latency_ms}
    result = WrkResult(requests=sum(r.requests for r in results), seconds=sum(r.seconds for r in results),
                       bytes_read=sum(r.bytes_read for r in results), errors=errors, latency_ms=latency,
                       cpu_seconds=sum(r.cpu_seconds for r in results), checked=sum(r.checked for r in results))
    return Cell(target=cells[0].target, result=result, backend_cpu=sum(c.backend_cpu for c in cells),
                proxy_cpu=sum(c.proxy_cpu for c in cells))


def round_rates(runs: Mapping[str, Sequence[Cell]]) -> str:
    """Each target's req/s per round, for a section's notes."""
    return "; ".join(f"{name} {', '.join(f'{c.result.rps:,.0f}' for c in done)}" for name, done in runs.items())


def measure(bench: Bench, stack: Stack, target: Target, load: Load, *, scenario: str,
            warmup: Load | None = None, warm: bool = True) -> Cell:
    """Warm up (with ``warmup``, else ``load``; not if ``warm`` is false), then run ``load`` while
    watching the CPU of the processes."""
    settings = bench.settings
    if warm and settings.warmup > 0:
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
            "cpu_seconds": {"wrk": r.cpu_seconds, "backend": cell.backend_cpu, "proxy": cell.proxy_cpu},
            "proxy_cpu_us_per_request": cell.proxy_us(), "checked": r.checked}


def _notes(cells: Mapping[str, Cell]) -> list[str]:
    """Say which process limited each target, so a ratio is read against the right cause."""
    limits = [f"{c.target}: {' and '.join(c.saturated())}" for c in cells.values() if c.saturated()]
    notes = [f"At ≥ {_SATURATED:.0f} % of a core (the limit): {'; '.join(limits)}."] if limits else []
    errors = [f"{c.target} " + ", ".join(f"{kind} {n:,}" for kind, n in c.result.errors.items() if n)
              for c in cells.values() if c.result.error_count]
    if errors:
        notes.append(f"Errors by kind (wrk: connect, read, write, status = not 2xx/3xx, timeout = over "
                     f"{Load.timeout:g} s; bad = a 2xx with other bytes): {'; '.join(errors)}.")
    return notes


def _row(cell: Cell, cells: Mapping[str, Cell]) -> list[str]:
    r = cell.result
    return [
        cell.target, f"{r.rps:,.0f}", _ratio(cell, cells.get("direct")), _ratio(cell, cells.get("nginx")),
        f"{r.bytes_read / r.seconds / 2**20:,.1f}" if r.seconds else "-",
        f"{r.latency_ms['50']:.2f}", f"{r.latency_ms['99']:.2f}",
        _plus(_added(cell, cells.get("direct"), "50")), _plus(_added(cell, cells.get("direct"), "99")),
        str(r.error_count), "/".join(f"{p:.0f}" for p in cell.cpu_percent().values()),
        _us(cell.proxy_us()), _cpu_ratio(cell, cells.get("nginx")),
    ]


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _cpu_ratio(cell: Cell, nginx: Cell | None) -> str:
    ours, theirs = cell.proxy_us(), (nginx.proxy_us() if nginx else None)
    return "-" if ours is None or not theirs or nginx is cell else f"{ours / theirs:.1f}"


def _ratio(cell: Cell, baseline: Cell | None) -> str:
    if baseline is None or baseline is cell or not baseline.result.rps:
        return "-"
    return f"{cell.result.rps / baseline.result.rps:.2f}"


def _plus(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"
