"""Secured relay: WS-Security verify inbound + sign outbound, next to the plain relay in the same run.

Two secured gateways, one per key type: ``bmrgw-wss-ec`` (ECDSA P-256 keys
for the client's signing key and the gateway's outbound one, ecdsa-sha256)
and ``bmrgw-wss-rsa`` (RSA-2048, rsa-sha256).  Each has one client that must
sign (``clients.*.wss.verify``, identified by HTTP Basic) and signs what it
forwards to the demo backend (``endpoints.demo.wss.sign``), with keys made by
``gateway.security.pki`` (checked to be of the named type before the run).
Replay defence is on, so every request carries a message signed afresh: the
bodies are signed before the load starts (in worker processes, not while
measuring) and ``post_many.lua`` sends each once.  The plain relay (the
``bmrgw`` target, log on in all) takes the same 1 KiB Echo envelope unsigned;
the secured ones get it with the client's Security header (about 2.5 KiB
more with RSA, 2 KiB with ECDSA).  The three are measured in 3 interleaved
rounds, each taking each place in the order once (the plain relay's first
round gives the rate that sizes the signed bodies: each round gets files of
its own), judged by the median of the rounds' ratios, with each gateway's
CPU µs per request (all its processes) beside them.
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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
_HEADERS = ("target", "req/s", "× bmrgw", "p50 ms", "p99 ms", "errors", "CPU % wrk/backend/proxy",
            "proxy CPU µs/req", "× bmrgw CPU")
#: More signed bodies than the plain relay could take in the same time, so none is sent twice.
_MARGIN = 1.1


@dataclass(frozen=True, kw_only=True)
class _Secured:
    """One secured gateway: its key type, its target and the bodies its client signed."""

    name: str
    keys: Mapping[str, Issued]
    target: Target
    warmup: Path
    bodies: list[Path]


@dataclass(frozen=True, kw_only=True)
class SecuredRelay:
    """The plain ``bmrgw`` target against gateways that verify and sign every message (ECDSA, RSA)."""

    name: str
    title: str
    envelope_bytes: int
    connections: int
    at_least: Mapping[str, float]
    """Least req/s ratio to the plain relay per secured target (``bmrgw-wss-ec``, ``bmrgw-wss-rsa``)."""
    rounds: int = 3
    """Interleaved rounds per target, as in ``1k`` (one round moved by 30 % between runs)."""

    def run(self, bench: Bench) -> Section:
        stack = bench.stack(0.0)
        plain = stack.targets.get("bmrgw")
        if plain is None:
            raise BenchError(f"{self.name} compares with the bmrgw target: keep bmrgw in --targets")
        envelope = make_envelope(self.envelope_bytes)
        folder = bench.workdir / "wss-pki"
        keys = {"bmrgw-wss-ec": make_set(folder, servers=(), clients=(), signers=(),
                                         ec_signers=("ec-client-sign", "ec-gw-sign")),
                "bmrgw-wss-rsa": make_set(folder, servers=(), clients=(), signers=("client-sign", "gw-sign"))}
        roles = {"bmrgw-wss-ec": ("ec-client-sign", "ec-gw-sign"), "bmrgw-wss-rsa": ("client-sign", "gw-sign")}
        runs: dict[str, list[Cell]] = {"bmrgw": [], **{name: [] for name in keys}}
        headers = {**HEADERS, "Authorization": _basic()}
        with ExitStack() as exits:
            started = {}
            for name, made in keys.items():
                client, gw = (made[role] for role in roles[name])
                _check_key_type(name, client, gw)
                started[name] = _start_secured(bench, stack, client, gw, name, exits)
                verify(started[name].url, _signed(envelope, client, 1)[0], target=name, headers=headers)
            plain_load = self._plain_load(bench, plain, envelope)
            runs["bmrgw"].append(measure(bench, stack, plain, plain_load, scenario=self.name))
            rate = runs["bmrgw"][0].result.rps
            secured = [
                _Secured(name=name, keys=keys[name], target=target,
                         **dict(zip(("warmup", "bodies"),
                                    self._bodies(bench, name, envelope, keys[name][roles[name][0]], rate=rate))))
                for name, target in started.items()
            ]
            for round_ in range(self.rounds):
                order: list[_Secured | None] = [None, *secured]  # None: the plain relay
                shift = round_ % len(order)
                for one in order[shift:] + order[:shift]:  # each target takes each place in turn: drift evens out
                    if one is None:
                        if round_:  # the first round's was measured before the signing, for its rate
                            runs["bmrgw"].append(measure(bench, stack, plain, plain_load, scenario=self.name,
                                                         warm=False))
                        continue
                    load = self._load(one.target, one.bodies[round_], headers, bench.settings.duration,
                                      script=_SCRIPT)
                    runs[one.name].append(measure(bench, stack, one.target, load, scenario=self.name,
                                                  warmup=replace(load, body_file=one.warmup), warm=round_ == 0))
        return self._section(runs)

    def _plain_load(self, bench: Bench, target: Target, envelope: Envelope) -> Load:
        body = bench.workdir / f"{self.name}-plain.xml"
        body.write_bytes(envelope.body)
        return self._load(target, body, HEADERS, bench.settings.duration, script=Load.script)

    def _bodies(self, bench: Bench, target: str, envelope: Envelope, signer: Issued, *,
                rate: float) -> tuple[Path, list[Path]]:
        """Files of bodies signed afresh: one for the warm-up, one per round (each is sent once)."""
        settings = bench.settings
        parts = [("warmup", settings.warmup)] + [(f"round-{n}", settings.duration) for n in range(1, self.rounds + 1)]
        files = []
        for part, seconds in parts:
            count = math.ceil(rate * max(seconds, 1) * _MARGIN) + 100
            bench.log(f"{self.name}: signing {count:,} messages for {target}'s {part}")
            files.append(bench.workdir / f"{self.name}-{target}-{part}.bodies")
            files[-1].write_bytes(b"\0".join(e.body for e in _signed(envelope, signer, count)))
        return files[0], files[1:]

    def _load(self, target: Target, body: Path, headers: Mapping[str, str], duration: float, *,
              script: Path) -> Load:
        return Load(url=target.url, body_file=body, headers=headers, connections=self.connections,
                    duration=duration, script=script)

    def _section(self, runs: Mapping[str, Sequence[Cell]]) -> Section:
        rules = [ThroughputRatio(target=name, baseline="bmrgw", at_least=least)
                 for name, least in self.at_least.items()]
        cells = {name: pooled(done) for name, done in runs.items()}
        base = cells["bmrgw"].result.rps
        base_us = cells["bmrgw"].proxy_us()
        rows = []
        for c in cells.values():
            us = c.proxy_us()
            rows.append([c.target, f"{c.result.rps:,.0f}", f"{c.result.rps / base:.2f}" if base else "-",
                         f"{c.result.latency_ms['50']:.2f}", f"{c.result.latency_ms['99']:.2f}",
                         str(c.result.error_count), "/".join(f"{p:.0f}" for p in c.cpu_percent().values()),
                         f"{us:,.0f}" if us is not None else "-",
                         f"{us / base_us:.2f}" if us is not None and base_us else "-"])
        ratios = {rule.target: rule.per_round(runs) for rule in rules}
        notes = ["bmrgw-wss-ec and bmrgw-wss-rsa verify the client's WS-Security signature (SHA-256, exclusive "
                 "C14N, replay record in SQLite) and sign what they forward to the demo backend, with ECDSA P-256 "
                 "keys (client and gateway; ecdsa-sha256) and RSA-2048 keys (rsa-sha256) respectively; all "
                 "gateways log.  CPU µs/req: all the gateway's processes (worker and log writer) per request.",
                 f"{self.rounds} interleaved rounds per target, each target in each place in turn; req/s pooled "
                 f"over the rounds (per round: {round_rates(runs)}); measured: the median of the rounds' ratios ("
                 + "; ".join(f"{name} {', '.join(f'{r:.2f}' for r in found)}" for name, found in ratios.items())
                 + ")."]
        return Section(name=self.name, title=self.title, headers=_HEADERS, rows=rows,
                       checks=[rule.check(cells, self.name, runs) for rule in rules], notes=notes,
                       raw={"envelope_bytes": self.envelope_bytes, "connections": self.connections,
                            "targets": {n: {"rps": c.result.rps, "errors": dict(c.result.errors),
                                            "latency_ms": dict(c.result.latency_ms),
                                            "proxy_us_per_request": c.proxy_us()} for n, c in cells.items()},
                            "rounds_rps": {n: [c.result.rps for c in done] for n, done in runs.items()}})


def _check_key_type(target: str, *issued: Issued) -> None:
    """The keys really are of the type the target is named for (its signatures are then too)."""
    want = ec.EllipticCurvePrivateKey if target.endswith("-ec") else rsa.RSAPrivateKey
    for one in issued:
        key = serialization.load_pem_private_key(one.key.read_bytes(), password=None)
        if not isinstance(key, want) or (isinstance(key, ec.EllipticCurvePrivateKey)
                                         and not isinstance(key.curve, ec.SECP256R1)):
            raise BenchError(f"{target}: {one.key} is not a {want.__name__} key of the expected size")


def _start_secured(bench: Bench, stack: Stack, client: Issued, gw: Issued, name: str,
                   exits: ExitStack) -> Target:
    port = free_port()
    data = bench.workdir / f"{name}-{port}"
    data.mkdir()
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
    return launch_gateway(bench.tools, data, port=port, name=name, config=config,
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
