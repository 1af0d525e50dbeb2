"""Secured relay: WS-Security verify inbound + sign outbound, next to the plain relay in the same run.

The secured gateway (``bmrgw-wss``) has one client that must sign
(``clients.*.wss.verify``, identified by HTTP Basic) and signs what it
forwards to the demo backend (``endpoints.demo.wss.sign``), with keys made by
``gateway.security.pki``.  Replay defence is on, so every request carries a message
signed afresh: the bodies are signed before the load starts (in worker
processes, not while measuring) and ``post_many.lua`` sends each once.  The
plain relay (the ``bmrgw`` target, log on in both) takes the same 1 KiB Echo
envelope unsigned; the secured one gets it with the client's Security header
(about 2.5 KiB more).  Both are measured in 3 interleaved rounds (the plain
relay's first round gives the rate that sizes the signed bodies: each round
gets files of its own) and judged by the median of the rounds' ratios.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.security.passwords import hash_password
from gateway.security.pki import Issued, make_set
from gateway.security.wss import Signer, sign_envelope

from .envelope import DESTINATION, HEADERS, Envelope, make_envelope, verify
from .harness import Bench, Section
from .procs import LOOPBACK, BenchError, free_port
from .relay import Cell, ThroughputRatio, measure, pooled, round_rates
from .servers import Stack, Target, launch_gateway
from .wrk import Load

__all__ = ["SecuredRelay"]

_SCRIPT = Path(__file__).with_name("post_many.lua")
_USER, _PASSWORD = "bench", "bench-password"
_HEADERS = ("target", "req/s", "× bmrgw", "p50 ms", "p99 ms", "errors", "CPU % wrk/backend/proxy")
#: More signed bodies than the plain relay could take in the same time, so none is sent twice.
_MARGIN = 1.1


@dataclass(frozen=True, kw_only=True)
class SecuredRelay:
    """The plain ``bmrgw`` target against a gateway that verifies and signs every message."""

    name: str
    title: str
    envelope_bytes: int
    connections: int
    at_least: float
    rounds: int = 3
    """Interleaved rounds per target, as in ``1k`` (one round moved by 30 % between runs)."""

    def run(self, bench: Bench) -> Section:
        stack = bench.stack(0.0)
        plain = stack.targets.get("bmrgw")
        if plain is None:
            raise BenchError(f"{self.name} compares with the bmrgw target: keep bmrgw in --targets")
        envelope = make_envelope(self.envelope_bytes)
        keys = make_set(bench.workdir / "wss-pki", servers=(), clients=(), signers=("client-sign", "gw-sign"))
        runs: dict[str, list[Cell]] = {"bmrgw": [], "bmrgw-wss": []}
        with ExitStack() as exits:
            secured = _start_secured(bench, stack, keys, exits)
            headers = {**HEADERS, "Authorization": _basic()}
            verify(secured.url, _signed(envelope, keys["client-sign"], 1)[0], target=secured.name, headers=headers)
            plain_load = self._plain_load(bench, plain, envelope)
            runs["bmrgw"].append(measure(bench, stack, plain, plain_load, scenario=self.name))
            warmup, bodies = self._bodies(bench, envelope, keys["client-sign"], rate=runs["bmrgw"][0].result.rps)
            for round_ in range(self.rounds):
                secured_load = self._load(secured, bodies[round_], headers, bench.settings.duration, script=_SCRIPT)
                order = ["bmrgw", "bmrgw-wss"] if round_ % 2 == 0 else ["bmrgw-wss", "bmrgw"]  # drift evens out
                for name in order:
                    if name == "bmrgw-wss":
                        runs[name].append(measure(bench, stack, secured, secured_load, scenario=self.name,
                                                  warmup=replace(secured_load, body_file=warmup), warm=round_ == 0))
                    elif round_:  # the first round's was measured before the signing, for its rate
                        runs[name].append(measure(bench, stack, plain, plain_load, scenario=self.name, warm=False))
        return self._section(runs)

    def _plain_load(self, bench: Bench, target: Target, envelope: Envelope) -> Load:
        body = bench.workdir / f"{self.name}-plain.xml"
        body.write_bytes(envelope.body)
        return self._load(target, body, HEADERS, bench.settings.duration, script=Load.script)

    def _bodies(self, bench: Bench, envelope: Envelope, signer: Issued, *, rate: float) -> tuple[Path, list[Path]]:
        """Files of bodies signed afresh: one for the warm-up, one per round (each is sent once)."""
        settings = bench.settings
        parts = [("warmup", settings.warmup)] + [(f"round-{n}", settings.duration) for n in range(1, self.rounds + 1)]
        files = []
        for part, seconds in parts:
            count = math.ceil(rate * max(seconds, 1) * _MARGIN) + 100
            bench.log(f"{self.name}: signing {count:,} messages for the {part}")
            files.append(bench.workdir / f"{self.name}-{part}.bodies")
            files[-1].write_bytes(b"\0".join(e.body for e in _signed(envelope, signer, count)))
        return files[0], files[1:]

    def _load(self, target: Target, body: Path, headers: Mapping[str, str], duration: float, *,
              script: Path) -> Load:
        return Load(url=target.url, body_file=body, headers=headers, connections=self.connections,
                    duration=duration, script=script)

    def _section(self, runs: Mapping[str, Sequence[Cell]]) -> Section:
        rule = ThroughputRatio(target="bmrgw-wss", baseline="bmrgw", at_least=self.at_least)
        cells = {name: pooled(done) for name, done in runs.items()}
        base = cells["bmrgw"].result.rps
        rows = [[c.target, f"{c.result.rps:,.0f}", f"{c.result.rps / base:.2f}" if base else "-",
                 f"{c.result.latency_ms['50']:.2f}", f"{c.result.latency_ms['99']:.2f}", str(c.result.error_count),
                 "/".join(f"{p:.0f}" for p in c.cpu_percent().values())] for c in cells.values()]
        ratios = rule.per_round(runs)
        notes = ["bmrgw-wss verifies the client's WS-Security signature (RSA-2048, SHA-256, "
                 "replay record in SQLite) and signs what it forwards; both gateways log.",
                 f"{self.rounds} interleaved rounds per target; req/s pooled over the rounds (per round: "
                 f"{round_rates(runs)}); measured: the median of the rounds' ratios "
                 f"{', '.join(f'{r:.2f}' for r in ratios)}."]
        return Section(name=self.name, title=self.title, headers=_HEADERS, rows=rows,
                       checks=[rule.check(cells, self.name, runs)], notes=notes,
                       raw={"envelope_bytes": self.envelope_bytes, "connections": self.connections,
                            "targets": {n: {"rps": c.result.rps, "errors": dict(c.result.errors),
                                            "latency_ms": dict(c.result.latency_ms)} for n, c in cells.items()},
                            "rounds_rps": {n: [c.result.rps for c in done] for n, done in runs.items()}})


def _start_secured(bench: Bench, stack: Stack, keys: Mapping[str, Issued], exits: ExitStack) -> Target:
    port = free_port()
    data = bench.workdir / f"bmrgw-wss-{port}"
    data.mkdir()
    client, gw = keys["client-sign"], keys["gw-sign"]
    config = f"""# Generated by bench/secure.py for one benchmark run.
gateway:
  name: bench-gw-wss
  listen: {{host: {LOOPBACK}, port: {port}}}
  db: "sqlite:///{data}/bmrgw.db"
  data_dir: "{data}"
clients:
  bench-app:
    basic: {{user: {_USER}, password_hash: "{hash_password(_PASSWORD)}"}}
    allow: ["*"]
    senders: [bench]  # the r:From of bench/envelope.py
    wss: {{verify: "{client.cert}"}}
endpoints:
  {DESTINATION}:
    url: "{stack.backend_url}"
    timeout: 30
    wss: {{sign: {{key: "{gw.key}", cert: "{gw.cert}"}}}}
"""
    return launch_gateway(bench.tools, data, port=port, name="bmrgw-wss", config=config,
                          exits=exits)


def _basic() -> str:
    return "Basic " + base64.b64encode(f"{_USER}:{_PASSWORD}".encode()).decode()


def _signed(envelope: Envelope, signer: Issued, count: int) -> list[Envelope]:
    """``count`` copies of ``envelope``, each signed afresh (distinct Timestamps and Ids), in 2 processes."""
    chunks = [count // 2 + count % 2, count // 2]
    with ProcessPoolExecutor(max_workers=2) as pool:
        parts = pool.map(_sign_many, [envelope.body] * 2, [signer.key] * 2, [signer.cert] * 2, chunks)
        return [Envelope(body=body, text=envelope.text) for part in parts for body in part]


def _sign_many(body: bytes, key: Path, cert: Path, count: int) -> list[bytes]:
    signer = Signer.load(key.read_bytes(), cert.read_bytes())
    now = dt.datetime.now(dt.timezone.utc)
    # Valid for an hour: the whole run, however long, happens inside the Timestamp's window.
    return [sign_envelope(body, signer, now=now, ttl=3600, max_bytes=1 << 20) for _ in range(count)]
