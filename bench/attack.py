"""Attack scenario: an honest client's relay latency while outsiders try to stall the gateway (issue 17).

One ``bmrgw serve --workers 2`` (supervisor and two workers, send/receive log
on) has two Basic-auth clients — ``honest`` (may relay to ``demo``) and
``mallory`` (valid credentials, may send JX documents and owns a refdb
dataset) — in front of the demo backend answering at once.

* Quiet phase (15 s, after a 3 s warm-up that is not counted): the honest
  client, a process of its own (aiohttp, its own pool of 4 keep-alive
  connections from 127.0.0.1), sends 1 KiB Echo envelopes at a steady 80
  req/s.  Each request has a scheduled start; its latency runs from that start
  to the complete answer, so a stall shows up in the requests queued behind
  it too (no coordinated omission).
* Attack phase (``--attack-duration``, default 60 s): the same honest load
  goes on while four attacker processes run, each from loopback addresses of
  its own (all of 127/8 is loopback on Linux; the gateway listens on
  127.0.0.1 only), so the per-address password throttle meets the guessers,
  not the honest client:

  - ``dtd``: a DOCTYPE whose parameter entity names ``file:///dev/zero``
    before a normal message, to ``/soap`` (1 KiB, read whole), ``/soap``
    (16 KiB, streamed), ``/jx`` (PutDocument) and ``/refdb`` (Query), sent
    with mallory's valid credentials so they reach the parser; each of the
    four at most 10 per second, a new connection each;
  - ``idle``: 500 sockets that connect and send nothing (a quarter trickle
    request-header bytes, one a second), each opened again as soon as the
    gateway closes it;
  - ``flood``: 150 guessers at once, each from an address of its own, each
    at most one request a second: wrong passwords for the honest client's
    user, alternately to ``/soap`` and ``/jx``;
  - ``quota``: PutDocument (10 KiB) for a receiver id nobody polls, 20 per
    second on one keep-alive connection, until ``QuotaExceeded``
    (``gateway.jx.max_pending_documents`` lowered to 100 so that it comes
    within seconds) and then on.

  The attackers are paced, not run flat out: together they ask for about
  250 requests and 50 new idle connections a second, so what is measured is
  what hostile input does to the gateway, not how much CPU a Python load
  generator can take from a 2-core machine.  The report gives each process's
  CPU.

Judged: the honest client's p99 under attack ÷ its quiet p99 ≤ 3, none of its
requests failing, and the peak RSS (``VmHWM``) of every gateway process —
supervisor and workers, including any worker started again — ≤ 300 MiB.

``python -m bench.attack ROLE SPEC RESULT`` is one load process (the
scenario starts them; SPEC and RESULT are JSON files).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .envelope import HEADERS, make_envelope, verify
from .harness import Bench, Check, Section
from .procs import LOOPBACK, BenchError, Server, cpu_seconds, family, free_port
from .servers import _launch, _start_backend

__all__ = ["Attack"]

JX = "http://www.dsri.jp/edi-bp/2004/jedicos-xml/client-server"
REFDB = "urn:bmrgw:refdb:1"
_HONEST_USER, _HONEST_PASSWORD = "honest", "honest-bench-password"
_MALLORY_USER, _MALLORY_PASSWORD = "mallory", "mallory-bench-password"
#: Receiver id that nobody polls: the quota attacker fills its mailbox.
_NOBODY = "nobody-polls"
_DOCTYPE = b'<!DOCTYPE soap:Envelope [<!ENTITY % p SYSTEM "file:///dev/zero"> %p;]>\n'
_ROLES = ("honest", "dtd", "idle", "flood", "quota")
_MIB = 1024


#: What an attacker left out (``BMRGW_BENCH_ATTACKERS``) reports: nothing.
_NOT_RUN: dict[str, Any] = {"answers": {}, "latencies_ms": [], "paths": {}, "lifetimes_s": [], "peak_open": 0,
                            "opened": 0, "cpu_s": 0.0, "wall_s": 1.0, "not_run": True}


def _chosen_attackers() -> list[str]:
    """All attackers, or (to find out which one hurts, never for a recorded verdict: the checks then
    say INVALID) only those named in ``BMRGW_BENCH_ATTACKERS``, e.g. ``flood,dtd``."""
    named = [r for r in os.environ.get("BMRGW_BENCH_ATTACKERS", "").split(",") if r]
    unknown = sorted(set(named) - set(_ROLES[1:]))
    if unknown:
        raise BenchError(f"BMRGW_BENCH_ATTACKERS: unknown attacker {', '.join(unknown)}; of: {', '.join(_ROLES[1:])}")
    return [r for r in _ROLES[1:] if not named or r in named]


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(frozen=True, kw_only=True)
class Attack:
    name: str = "attack"
    title: str = ("Hostile input: an honest client's relay latency under local-file DTDs, 500 idle sockets, "
                  "a wrong-password flood and quota pressure")
    workers: int = 2
    warmup: float = 3.0
    quiet: float = 15.0
    honest_rate: float = 80.0
    honest_connections: int = 4
    dtd_rate: float = 10.0
    idle_sockets: int = 500
    idle_trickle_share: float = 0.25
    guessers: int = 150
    guess_interval: float = 1.0
    quota_rate: float = 20.0
    quota_documents: int = 100
    p99_ratio_limit: float = 3.0
    rss_limit_mib: float = 300.0

    def run(self, bench: Bench) -> Section:
        bench.close_stack()
        duration = bench.settings.attack
        with ExitStack() as exits:
            _, backend = _start_backend(bench.tools, bench.workdir, 0.0, exits)
            server, base = self._gateway(bench, exits, backend)
            port = int(base.rsplit(":", 1)[1])
            envelope = make_envelope(1024)
            verify(f"{base}/soap", envelope, target="attack gateway",
                   headers={**HEADERS, "Authorization": _basic(_HONEST_USER, _HONEST_PASSWORD)})
            start = time.time() + 2.0
            attack_at = start + self.warmup + self.quiet
            attack_end = attack_at + duration
            honest_end = attack_end + 1.0
            spec = {"port": port, "host": LOOPBACK, **{k: v for k, v in self.__dict__.items()
                                                       if isinstance(v, (int, float))}}
            bench.log(f"attack: honest client {self.warmup:g} s warm-up + {self.quiet:g} s quiet, then "
                      f"{duration:g} s under attack (gateway --workers {self.workers})")
            procs = {"honest": _spawn(bench, exits, "honest", {**spec, "start": start, "end": honest_end})}
            watch = _Watch(server)
            watch.until(attack_at - 1.5, mark={start + self.warmup: "quiet", attack_at: "attack"})
            chosen = _chosen_attackers()
            for role in chosen:
                procs[role] = _spawn(bench, exits, role, {**spec, "start": attack_at, "end": attack_end})
            bench.log(f"attack: attackers started ({', '.join(chosen)})")
            watch.until(honest_end + 0.5, mark={attack_at: "attack", attack_end: "end"})
            results = {role: p.finish(timeout=60) for role, p in procs.items()}
            results.update({role: _NOT_RUN for role in _ROLES if role not in results})
            if server.process.poll() is not None:
                raise BenchError(f"the gateway died during the attack:\n{server.log_tail()}")
            watch.sample()
            restarts = _restarts(server)
        return self._section(bench, results, watch, restarts, start=start, attack_at=attack_at,
                             attack_end=attack_end)

    # -- the gateway --------------------------------------------------------------------

    def _gateway(self, bench: Bench, exits: ExitStack, backend: str) -> tuple[Server, str]:
        from gateway.security.passwords import hash_password

        port = free_port()
        data = bench.workdir / f"attack-{port}"
        data.mkdir()
        config = data / "endpoints.yaml"
        config.write_text(f"""# Generated by bench/attack.py for one benchmark run.
gateway:
  name: bench-attack
  listen: {{host: {LOOPBACK}, port: {port}}}
  db: "sqlite:///{data}/bmrgw.db"
  data_dir: "{data}"
  limits: {{max_connections: 2000}}
  logs: {{enabled: {"false" if os.environ.get("BMRGW_BENCH_ATTACK_NOLOG") else "true"}}}
  jx: {{max_pending_documents: {self.quota_documents}}}
clients:
  honest:
    basic: {{user: {_HONEST_USER}, password_hash: "{hash_password(_HONEST_PASSWORD)}"}}
    allow: [demo]
    senders: [bench]
  mallory:
    basic: {{user: {_MALLORY_USER}, password_hash: "{hash_password(_MALLORY_PASSWORD)}"}}
    allow: ["*"]
    jx: {{send: [mallory], receive: [mallory]}}
endpoints:
  demo: {{url: "{backend}", timeout: 30}}
refdb:
  datasets:
    residents:
      owner: mallory
      key: [id]
      columns: {{id: integer, name: string}}
""")
        argv: list[str | os.PathLike[str]] = [bench.tools.bmrgw, "serve", "--config", config, "--log-level",
                                              "WARNING", "--workers", str(self.workers)]
        base = f"http://{LOOPBACK}:{port}"
        server = _launch(f"bmrgw serve --workers {self.workers} (attack)", argv, data / "gateway.log",
                         f"{base}/healthz", exits)
        _wait_workers(server, self.workers)
        return server, base

    # -- the report ---------------------------------------------------------------------

    def _section(self, bench: Bench, results: dict[str, dict[str, Any]], watch: _Watch, restarts: list[str],
                 *, start: float, attack_at: float, attack_end: float) -> Section:
        duration = attack_end - attack_at
        honest = results["honest"]
        samples: list[tuple[float, float, str]] = [(float(t), float(ms), str(o)) for t, ms, o in honest["samples"]]
        quiet = [s for s in samples if start + self.warmup <= s[0] < attack_at]
        under = [s for s in samples if attack_at <= s[0] < attack_end]
        q, a = _Stats.of(quiet, self.quiet), _Stats.of(under, duration)
        ratio = a.p99 / q.p99 if q.p99 else None
        failures = [s for s in samples if s[0] >= start + self.warmup and s[2] != "ok"]
        problems = self._attack_problems(results)
        checks = [
            Check(label="attack: honest relay p99 under attack ÷ quiet p99", measured=ratio,
                  limit=self.p99_ratio_limit, unit="×", at_least=False,
                  problem="; ".join(problems) if problems else None),
            Check(label="attack: honest relay requests that failed (quiet and under attack)",
                  measured=float(len(failures)), limit=0, unit="requests", at_least=False,
                  problem="; ".join(problems) if problems else None),
        ]
        for group, count, peak in watch.group_peaks():
            what = (f"the largest of the gateway's {count} helper processes (log writers, forkservers, "
                    "resource trackers)" if group == "helpers" else f"gateway {group}" +
                    (f" ({count} processes: restarted)" if count > 1 else ""))
            checks.append(Check(label=f"attack: peak RSS (VmHWM) of {what}", measured=peak / _MIB,
                                limit=self.rss_limit_mib, unit="MiB", at_least=False))
        cpu = {role: 100 * r["cpu_s"] / max(r["wall_s"], 1e-9) for role, r in results.items()}
        rows = [
            ["honest relay, quiet", f"{self.quiet:g}", f"{q.count:,}", f"{q.rate:,.1f}", f"{q.p50:.2f}",
             f"{q.p99:.2f}", f"{q.max:.1f}", _answers(Counter(s[2] for s in quiet)), "-"],
            ["honest relay, under attack", f"{duration:g}", f"{a.count:,}", f"{a.rate:,.1f}", f"{a.p50:.2f}",
             f"{a.p99:.2f}", f"{a.max:.1f}", _answers(Counter(s[2] for s in under)), f"{cpu['honest']:.0f}"],
        ]
        for role in _ROLES[1:]:
            for number, (label, row) in enumerate(_attacker_rows(role, results[role], duration)):
                rows.append([label, f"{duration:g}", *row, f"{cpu[role]:.0f}" if number == 0 else "″"])
        gw_cpu, machine = watch.window_cpu("quiet", "attack"), watch.window_cpu("attack", "end")
        notes = [
            f"Honest client: {self.honest_rate:g} req/s of 1 KiB Echo envelopes over {self.honest_connections} "
            "keep-alive connections (aiohttp, a process of its own, 127.0.0.1); latency from each request's "
            f"scheduled start to its complete answer; the first {self.warmup:g} s (its first scrypt login per "
            "worker) are not counted. A failure is anything but HTTP 200 with an EchoResponse.",
            f"p99 under attack ÷ quiet: {ratio:.2f} × (target < {self.p99_ratio_limit:g} ×)." if ratio else
            "no p99 ratio: no quiet samples",
            f"Gateway: `bmrgw serve --workers 2`, log {'off' if os.environ.get('BMRGW_BENCH_ATTACK_NOLOG') else 'on'}, "
            "header_timeout 10 s and keepalive_timeout 30 s "
            "(defaults), max_connections 2000, no per-address cap (the default), "
            f"jx.max_pending_documents {self.quota_documents}; demo backend answering at once.",
            "CPU (% of one core) — gateway, all processes: "
            f"{gw_cpu['gateway']:.0f} quiet, {machine['gateway']:.0f} under attack; machine (both cores = 200): "
            f"{gw_cpu['machine']:.0f} quiet, {machine['machine']:.0f} under attack. Load processes over their "
            "run: " + ", ".join(f"{role} {cpu[role]:.0f}" for role in _ROLES) + ". Load average (1 min) "
            "when the quiet phase began, the attack began and ended: "
            + ", ".join(f"{watch.load[m]:.2f}" for m in ("quiet", "attack", "end") if m in watch.load) + ".",
            "Peak RSS (VmHWM) per gateway process: "
            + ", ".join(f"{label} {peak / _MIB:.1f} MiB" for label, peak in watch.peaks()) + ".",
            ("Workers started again during the run: " + "; ".join(restarts)) if restarts else
            "No worker was restarted (no watchdog kill, no crash).",
        ]
        if problems:
            notes.append("The attack did not run as designed: " + "; ".join(problems) + ".")
        raw = {"quiet": asdict(q), "attack": asdict(a), "p99_ratio": ratio, "honest_failures": len(failures),
               "failures": failures[:50], "cpu_percent": cpu, "window_cpu": {"quiet": gw_cpu, "attack": machine},
               "rss_peak_kib": dict(watch.peaks()), "restarts": restarts, "load": watch.load,
               "attackers": {role: {k: v for k, v in r.items() if k != "samples"} for role, r in results.items()}}
        return Section(name=self.name, title=f"{self.title} ({duration:g} s)", checks=checks,
                       headers=("who", "s", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "answers",
                                "CPU %"),
                       rows=rows, notes=notes, raw=raw)

    def _attack_problems(self, results: dict[str, dict[str, Any]]) -> list[str]:
        """Reasons the attack was weaker than designed (a verdict on it would be worth nothing)."""
        problems = []
        if os.environ.get("BMRGW_BENCH_ATTACK_NOLOG"):
            problems.append("send/receive log off (BMRGW_BENCH_ATTACK_NOLOG)")
        left_out = [role for role in _ROLES[1:] if results[role].get("not_run")]
        if left_out:
            problems.append(f"attackers left out (BMRGW_BENCH_ATTACKERS): {', '.join(left_out)}")
            return problems
        idle = results["idle"]
        if idle["peak_open"] < 0.9 * self.idle_sockets:
            problems.append(f"only {idle['peak_open']} idle sockets were open at once")
        if not any("QuotaExceeded" in k for k in results["quota"]["answers"]):
            problems.append("the quota attacker never met QuotaExceeded")
        if sum(results["flood"]["answers"].values()) < self.guessers:
            problems.append("the flood sent fewer requests than it has guessers")
        if sum(results["dtd"]["answers"].values()) < 4:
            problems.append("the DTD attacker sent almost nothing")
        return problems


def _answers(counts: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def _attacker_rows(role: str, result: dict[str, Any], duration: float) -> list[tuple[str, list[str]]]:
    """Table rows for one attacker: who, requests, req/s, p50, p99, max, answers."""
    def row(answers: dict[str, int], latencies: Sequence[float]) -> list[str]:
        n = sum(answers.values())
        stats = _percentiles(latencies)
        return [f"{n:,}", f"{n / duration:,.1f}", f"{stats[0]:.1f}", f"{stats[1]:.1f}", f"{stats[2]:.1f}",
                _answers(answers)]
    if role == "dtd":
        return [(f"DTD {path}", row(part["answers"], part["latencies_ms"]))
                for path, part in result["paths"].items()]
    if role == "idle":
        lifetimes = result["lifetimes_s"]
        stats = _percentiles(lifetimes)
        return [("idle sockets", [f"{result['opened']:,} opened", f"{result['opened'] / duration:,.1f}",
                                  f"{stats[0]:.1f} s", f"{stats[1]:.1f} s", f"{stats[2]:.1f} s",
                                  f"peak {result['peak_open']} open; " + _answers(result["answers"])])]
    name = "wrong passwords" if role == "flood" else "quota: PutDocument"
    return [(name, row(result["answers"], result["latencies_ms"]))]


def _percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3
    ordered = sorted(values)

    def pick(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
    return pick(50), pick(99), ordered[-1]


@dataclass(frozen=True, kw_only=True)
class _Stats:
    count: int
    rate: float
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[tuple[float, float, str]], seconds: float) -> _Stats:
        p50, p99, top = _percentiles([s[1] for s in samples])
        return cls(count=len(samples), rate=len(samples) / seconds if seconds else 0.0, p50=p50, p99=p99, max=top)


# -- watching the gateway ---------------------------------------------------------------

def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _parent(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(raw[raw.rindex(")") + 2:].split()[1])


def _worker(argv: list[bytes]) -> str | None:
    """The worker number of a gateway process: its ``--worker N`` or its title (``bmrgw: worker N of …``)."""
    if b"--worker" in argv:
        return argv[argv.index(b"--worker") + 1].decode()
    title = argv[0] if argv else b""
    return title.split()[2].decode() if title.startswith(b"bmrgw: worker ") else None


def _label(pid: int, root: int) -> tuple[str, str]:
    """(group, name) of a gateway process: the supervisor, a worker, or a worker's helper
    (the log writer's forkserver, the log writer it forks, multiprocessing's resource tracker)."""
    if pid == root:
        return "supervisor", "supervisor"
    argv = _cmdline(pid)
    number = _worker(argv)
    if number is not None:
        return f"worker {number}", f"worker {number}"
    owner, chain = _parent(pid), pid
    while owner and owner != root and _worker(_cmdline(owner)) is None:
        chain, owner = owner, _parent(owner)
    owned = _worker(_cmdline(owner))
    worker = f"worker {owned}" if owned is not None else "supervisor"
    text = b" ".join(argv)
    kind = ("resource tracker" if b"resource_tracker" in text else
            "log writer" if chain != pid or text.startswith(b"bmrgw: log writer") else
            "forkserver" if b"forkserver" in text else "helper")
    return "helpers", f"{worker}'s {kind}"


def _machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class _Watch:
    """Peak RSS of every gateway process, and CPU marks at the phase boundaries."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.hwm: dict[int, int] = {}
        self.labels: dict[int, tuple[str, str]] = {}
        self.marks: dict[str, tuple[float, float, int, int]] = {}
        self.load: dict[str, float] = {}

    def sample(self) -> None:
        root = self.server.process.pid
        for pid in family(root):
            status = _status(pid)
            if "VmHWM" in status:
                self.hwm[pid] = max(self.hwm.get(pid, 0), status["VmHWM"])
                self.labels.setdefault(pid, _label(pid, root))

    def _mark(self, name: str) -> None:
        busy, total = _machine_busy_ticks()
        self.marks[name] = (time.monotonic(), cpu_seconds(self.server.process.pid), busy, total)
        self.load[name] = os.getloadavg()[0]

    def until(self, when: float, *, mark: dict[float, str]) -> None:
        """Sample once a second until wall time ``when``, marking CPU at the given wall times."""
        pending = sorted(mark.items())
        while True:
            now = time.time()
            while pending and pending[0][0] <= now:
                self._mark(pending.pop(0)[1])
            if now >= when:
                return
            if self.server.process.poll() is not None:
                raise BenchError(f"the gateway died during the attack:\n{self.server.log_tail()}")
            self.sample()
            nxt = min([when, now + 1.0] + [t for t, _ in pending[:1]])
            time.sleep(max(0.0, nxt - time.time()))

    def window_cpu(self, first: str, last: str) -> dict[str, float]:
        if first not in self.marks or last not in self.marks:
            return {"gateway": float("nan"), "machine": float("nan")}
        t0, g0, b0, n0 = self.marks[first]
        t1, g1, b1, n1 = self.marks[last]
        cores = len(os.sched_getaffinity(0))
        return {"gateway": 100 * (g1 - g0) / (t1 - t0), "machine": 100 * cores * (b1 - b0) / max(1, n1 - n0)}

    def peaks(self) -> list[tuple[str, int]]:
        """Every gateway process seen, by name (pid), with its peak RSS in KiB."""
        return [(f"{self.labels[pid][1]} (pid {pid})", kib) for pid, kib in sorted(self.hwm.items())]

    def group_peaks(self) -> list[tuple[str, int, int]]:
        """(group, processes in it, largest peak RSS in KiB): the supervisor, each worker (with any
        restarted copy), and all helpers together."""
        groups: dict[str, list[int]] = {}
        for pid, kib in self.hwm.items():
            groups.setdefault(self.labels[pid][0], []).append(kib)
        order = sorted(groups, key=lambda g: (g == "helpers", g != "supervisor", g))
        return [(g, len(groups[g]), max(groups[g])) for g in order]


def _wait_workers(server: Server, workers: int) -> None:
    """With ``--workers``, /healthz answers once one worker listens: wait for all of them."""
    if workers <= 1:
        return
    deadline = time.monotonic() + 30
    while len(family(server.process.pid)) < workers + 1:
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(family(server.process.pid)) - 1} of {workers} workers started:\n"
                             f"{server.log_tail()}")
        time.sleep(0.1)
    time.sleep(2.0)  # each worker opens its store and log writer before it accepts


def _restarts(server: Server) -> list[str]:
    """Supervisor log lines about workers killed or started again."""
    try:
        text = server.log.read_text(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines()
            if re.search(r"did not answer|restart|exited|killing", line)][:10]


# -- load processes -----------------------------------------------------------------------

class _Process:
    def __init__(self, role: str, process: subprocess.Popen[bytes], result: Path, log: Path) -> None:
        self.role, self.process, self.result, self.log = role, process, result, log

    def finish(self, *, timeout: float) -> dict[str, Any]:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise BenchError(f"attack: the {self.role} process did not finish") from None
        if self.process.returncode != 0 or not self.result.exists():
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise BenchError(f"attack: the {self.role} process failed ({self.process.returncode}):\n{tail}")
        loaded: dict[str, Any] = json.loads(self.result.read_text())
        return loaded

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _spawn(bench: Bench, exits: ExitStack, role: str, spec: dict[str, Any]) -> _Process:
    folder = bench.workdir / "attack-load"
    folder.mkdir(exist_ok=True)
    spec_file, result, log = folder / f"{role}.spec.json", folder / f"{role}.json", folder / f"{role}.log"
    spec_file.write_text(json.dumps(spec))
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-W", "ignore::RuntimeWarning", "-m", "bench.attack", role, os.fspath(spec_file),
                                    os.fspath(result)], cwd=Path(__file__).resolve().parent.parent,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    started = _Process(role, process, result, log)
    exits.callback(started.stop)
    return started


# -- inside a load process ------------------------------------------------------------------

async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _http(path: str, body: bytes, headers: dict[str, str], port: int) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{head}\r\n").encode() + body


_CODE = re.compile(rb'code="([A-Za-z]+)"')


async def _one_shot(port: int, local: str, request: bytes, timeout: float = 30.0) -> str:
    """Send ``request`` on a new connection from ``local``; the answer as "STATUS Code" (or an error name)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port, local_addr=(local, 0)),
                                                timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return f"connect: {type(exc).__name__}"
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(256 * 1024), timeout)
        while len(answer) < 256 * 1024:
            more = await asyncio.wait_for(reader.read(65536), timeout)
            if not more:
                break
            answer += more
    except (OSError, asyncio.TimeoutError) as exc:
        return f"{type(exc).__name__}"
    finally:
        writer.close()
    if not answer:
        return "closed without an answer"
    status = answer.split(b" ", 2)[1].decode(errors="replace") if answer.startswith(b"HTTP/") else "?"
    code = _CODE.search(answer)
    return f"{status} {code[1].decode()}" if code else status


async def _paced(rate: float, end: float, send: Callable[[], Awaitable[None]]) -> None:
    """Call ``send`` at most ``rate`` times a second (one at a time) until wall time ``end``."""
    interval = 1.0 / rate
    while time.time() < end:
        began = time.time()
        await send()
        await _sleep_until(began + interval)


def _jx_envelope(op: str, fields: list[tuple[str, str]]) -> bytes:
    body = "".join(f"<jx:{k}>{v}</jx:{k}>" for k, v in fields)
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:jx="{JX}"><s:Header><jx:MessageHeader><jx:From>mallory</jx:From><jx:To>gw</jx:To>'
            f"<jx:MessageId>{uuid.uuid4()}</jx:MessageId><jx:Timestamp>now</jx:Timestamp></jx:MessageHeader>"
            f"</s:Header><s:Body><jx:{op}>{body}</jx:{op}></s:Body></s:Envelope>").encode()


def _put(data: str) -> bytes:
    return _jx_envelope("PutDocument", [("messageId", str(uuid.uuid4())), ("data", data), ("senderId", "mallory"),
                                        ("receiverId", _NOBODY), ("formatType", "BIN"), ("documentType", "bench"),
                                        ("compressType", "")])


def _with_doctype(document: bytes) -> bytes:
    """``document`` with the local-file DOCTYPE right after its XML declaration."""
    declaration, rest = document.split(b"\n", 1)
    return declaration + b"\n" + _DOCTYPE + rest


async def _honest(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    port, end = spec["port"], spec["end"]
    url = f"http://{LOOPBACK}:{port}/soap"
    body = make_envelope(1024).body
    headers = {**HEADERS, "Authorization": _basic(_HONEST_USER, _HONEST_PASSWORD)}
    connections = int(spec["honest_connections"])
    interval = connections / spec["honest_rate"]
    samples: list[tuple[float, float, str]] = []
    # perf_counter for latencies, wall time (shared with the other processes) for the schedule.
    offset = time.time() - time.perf_counter()

    async def worker(http: aiohttp.ClientSession, number: int) -> None:
        due = spec["start"] + number * interval / connections
        while due < end:
            await _sleep_until(due)
            began = due - offset
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    answer = await resp.read()
                outcome = "ok" if resp.status == 200 and b"EchoResponse" in answer else \
                    f"{resp.status} {_code(answer)}".strip()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                outcome = type(exc).__name__
            samples.append((due, 1000 * (time.perf_counter() - began), outcome))
            due += interval

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=connections, local_addr=(LOOPBACK, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(worker(http, n) for n in range(connections)))
    return {"samples": samples}


def _code(answer: bytes) -> str:
    found = _CODE.search(answer)
    return found[1].decode() if found else ""


async def _dtd(spec: dict[str, Any]) -> dict[str, Any]:
    port, end = spec["port"], spec["end"]
    auth = {"Authorization": _basic(_MALLORY_USER, _MALLORY_PASSWORD)}
    soap = {**HEADERS, **auth}
    refdb_body = (f'<?xml version="1.0" encoding="utf-8"?>\n<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/'
                  f'envelope/"><s:Body><r:Query xmlns:r="{REFDB}"><r:dataset>residents</r:dataset></r:Query>'
                  "</s:Body></s:Envelope>").encode()
    requests = {
        "/soap": _http("/soap", _with_doctype(make_envelope(1024).body), soap, port),
        "/soap (16 KiB, streamed)": _http("/soap", _with_doctype(make_envelope(16 * 1024).body), soap, port),
        "/jx": _http("/jx", _with_doctype(_put(base64.b64encode(b"x" * 1024).decode())),
                     {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{JX}/PutDocument"', **auth}, port),
        "/refdb": _http("/refdb", _with_doctype(refdb_body),
                        {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{REFDB}/Query"', **auth}, port),
    }
    paths: dict[str, dict[str, Any]] = {p: {"answers": Counter(), "latencies_ms": []} for p in requests}

    async def attacker(path: str) -> None:
        async def send() -> None:
            began = time.perf_counter()
            outcome = await _one_shot(port, "127.0.2.1", requests[path])
            paths[path]["answers"][outcome] += 1
            paths[path]["latencies_ms"].append(1000 * (time.perf_counter() - began))
        await _paced(spec["dtd_rate"], end, send)

    await _sleep_until(spec["start"])
    await asyncio.gather(*(attacker(p) for p in requests))
    return {"paths": paths, "answers": Counter(a for p in paths.values() for a in p["answers"].elements())}


async def _idle(spec: dict[str, Any]) -> dict[str, Any]:
    port, end, count = spec["port"], spec["end"], int(spec["idle_sockets"])
    trickle = int(count * spec["idle_trickle_share"])
    state = {"open": 0, "peak_open": 0, "opened": 0}
    answers: Counter[str] = Counter()
    lifetimes: list[float] = []
    header = f"POST /soap HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nX-Slow: ".encode() + b"a" * 10_000

    async def hold(number: int) -> None:
        await asyncio.sleep(number * 0.002)  # 500 connects spread over a second
        while time.time() < end:
            try:
                reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=("127.0.2.2", 0))
            except OSError as exc:
                answers[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            opened = time.monotonic()
            state["opened"] += 1
            state["open"] += 1
            state["peak_open"] = max(state["peak_open"], state["open"])
            outcome = "still open at the end"
            try:
                position = 0
                while time.time() < end:
                    if number < trickle and position < len(header):
                        writer.write(header[position:position + 1])
                        position += 1
                    try:
                        got = await asyncio.wait_for(reader.read(4096), min(1.0, max(0.01, end - time.time())))
                    except asyncio.TimeoutError:
                        continue
                    if not got:
                        outcome = "closed by the gateway"
                    else:
                        outcome = "answered " + got.split(b" ", 2)[1].decode(errors="replace") \
                            if got.startswith(b"HTTP/") else "answered"
                    break
            except OSError as exc:
                outcome = f"{type(exc).__name__} from the gateway"
            finally:
                state["open"] -= 1
                writer.close()
            answers[("trickling: " if number < trickle else "silent: ") + outcome] += 1
            if not outcome.startswith("still"):
                lifetimes.append(time.monotonic() - opened)
                await asyncio.sleep(0.05)

    await _sleep_until(spec["start"])
    await asyncio.gather(*(hold(n) for n in range(count)))
    return {"answers": answers, "lifetimes_s": lifetimes, "peak_open": state["peak_open"], "opened": state["opened"]}


async def _flood(spec: dict[str, Any]) -> dict[str, Any]:
    port, end = spec["port"], spec["end"]
    answers: Counter[str] = Counter()
    latencies: list[float] = []
    soap_body, jx_body = make_envelope(1024).body, _jx_envelope("GetDocument", [("receiverId", _HONEST_USER)])

    async def guesser(number: int) -> None:
        address = f"127.0.1.{number + 1}"
        attempt = 0

        async def send() -> None:
            nonlocal attempt
            attempt += 1
            auth = {"Authorization": _basic(_HONEST_USER, f"guess-{number}-{attempt}")}
            if attempt % 2:
                request = _http("/soap", soap_body, {**HEADERS, **auth}, port)
            else:
                request = _http("/jx", jx_body, {"Content-Type": "text/xml; charset=utf-8",
                                                 "SOAPAction": f'"{JX}/GetDocument"', **auth}, port)
            began = time.perf_counter()
            answers[await _one_shot(port, address, request)] += 1
            latencies.append(1000 * (time.perf_counter() - began))
        await asyncio.sleep(number / spec["guessers"])  # not all in the same millisecond of every second
        await _paced(1.0 / spec["guess_interval"], end, send)

    await _sleep_until(spec["start"])
    await asyncio.gather(*(guesser(n) for n in range(int(spec["guessers"]))))
    return {"answers": answers, "latencies_ms": latencies}


async def _quota(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    port, end = spec["port"], spec["end"]
    answers: Counter[str] = Counter()
    latencies: list[float] = []
    data = base64.b64encode(os.urandom(10 * 1024)).decode()
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{JX}/PutDocument"',
               "Authorization": _basic(_MALLORY_USER, _MALLORY_PASSWORD)}
    first_refusal: list[float] = []
    await _sleep_until(spec["start"])
    connector = aiohttp.TCPConnector(limit=1, local_addr=("127.0.2.3", 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def send() -> None:
            began = time.perf_counter()
            try:
                async with http.post(f"http://{LOOPBACK}:{port}/jx", data=_put(data), headers=headers) as resp:
                    answer = await resp.read()
                outcome = f"{resp.status} {_code(answer) or ('true' if b'Result>true<' in answer else '')}".strip()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                outcome = type(exc).__name__
            answers[outcome] += 1
            latencies.append(1000 * (time.perf_counter() - began))
            if "QuotaExceeded" in outcome and not first_refusal:
                first_refusal.append(time.time() - spec["start"])
        await _paced(spec["quota_rate"], end, send)
    return {"answers": answers, "latencies_ms": latencies, "quota_reached_after_s": first_refusal[:1]}


_RUNNERS: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "honest": _honest, "dtd": _dtd, "idle": _idle, "flood": _flood, "quota": _quota}


def _main(argv: Sequence[str]) -> int:
    role, spec_file, result = argv
    spec = json.loads(Path(spec_file).read_text())
    out = asyncio.run(_RUNNERS[role](spec))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = usage.ru_utime + usage.ru_stime  # start-up (imports) included
    out["wall_s"] = time.time() - spec["start"]
    Path(result).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
