"""``api-1k``: the HTTP API relay (``/api``) next to the SOAP relay (``/soap``) in the same run (issue 23).

One gateway (log on, as deployed) routes ``demo`` to one echo backend (this
module's :func:`make_echo`, run as ``python -m bench.api --port P``: it
answers each request with its own body and content type, so neither side
pays for parsing at the backend and the difference is the gateway's alone).
wrk POSTs a 1 KiB Echo envelope to ``/soap`` and a 1 KiB JSON record to
``/api/demo/residents?city=131016`` over 50 keep-alive connections, in
interleaved rounds; the check is the median of the rounds' ratios
``/api`` req/s ÷ ``/soap`` req/s, which must be at least 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .envelope import HEADERS, make_envelope
from .harness import Bench, Check, Section
from .procs import LOOPBACK, BenchError, free_port, start_server
from .relay import Cell, ThroughputRatio, measure, pooled, round_rates
from .servers import Stack, Target, gateway_conf, launch_gateway
from .wrk import Load

__all__ = ["ApiRelayLoad", "CharsetConversion", "make_echo", "json_record", "cp932_csv"]

_HEADERS = ("target", "req/s", "× /soap", "p50 ms", "p99 ms", "errors", "CPU % wrk/backend/proxy")
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Accept": "application/json"}
_API_PATH = "/api/demo/residents?city=131016"


def make_echo() -> web.Application:
    """A backend that answers every POST with the request's own body and content type."""
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"Content-Type": request.headers.get("Content-Type", "text/plain")})

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", echo)
    app.router.add_get("/{tail:.*}", ready)
    return app


def json_record(size: int) -> bytes:
    """A JSON resident record of exactly ``size`` bytes (UTF-8, Japanese text as a real one has)."""
    record = {"person_id": "131016-000001", "name": "山田 太郎", "kana": "ヤマダ タロウ",
              "address": "東京都千代田区霞が関1-2-3", "updated": "2026-04-01T09:00:00+09:00", "note": ""}
    room = size - len(json.dumps(record, ensure_ascii=False).encode())
    if room < 0:
        raise ValueError(f"a record needs at least {size - room} bytes")
    record["note"] = "x" * room
    body = json.dumps(record, ensure_ascii=False).encode()
    assert len(body) == size
    return body


@dataclass(frozen=True, kw_only=True)
class ApiRelayLoad:
    """The same gateway and backend, loaded through ``/soap`` and through ``/api`` in turn."""

    name: str
    title: str
    body_bytes: int
    connections: int
    at_least: float
    rounds: int = 3

    def run(self, bench: Bench) -> Section:
        bench.close_stack()  # nothing else on the cores while this one measures
        with ExitStack() as exits:
            stack, gateway = _start(bench, exits)
            loads = self._loads(bench, gateway)
            targets = {name: Target(name=name, url=load.url, proxy=gateway.proxy) for name, load in loads.items()}
            for name, load in loads.items():
                _verify(name, load)
            runs: dict[str, list[Cell]] = {"soap": [], "api": []}
            for round_ in range(self.rounds):
                order = ["soap", "api"] if round_ % 2 == 0 else ["api", "soap"]
                for name in order:
                    runs[name].append(measure(bench, stack, targets[name], loads[name], scenario=self.name,
                                              warm=round_ == 0))
        return self._section(runs)

    def _loads(self, bench: Bench, gateway: Target) -> dict[str, Load]:
        soap = bench.workdir / f"{self.name}-envelope.xml"
        soap.write_bytes(make_envelope(self.body_bytes).body)
        record = bench.workdir / f"{self.name}-record.json"
        record.write_bytes(json_record(self.body_bytes))
        base = gateway.url[:-len("/soap")]
        connections, duration = self.connections, bench.settings.duration
        return {"soap": Load(url=gateway.url, body_file=soap, headers=HEADERS, connections=connections,
                             duration=duration),
                "api": Load(url=base + _API_PATH, body_file=record, headers=_JSON_HEADERS, connections=connections,
                            duration=duration)}

    def _section(self, runs: Mapping[str, Sequence[Cell]]) -> Section:
        rule = ThroughputRatio(target="api", baseline="soap", at_least=self.at_least)
        cells = {name: pooled(done) for name, done in runs.items()}
        base = cells["soap"].result.rps
        rows = [[c.target, f"{c.result.rps:,.0f}", f"{c.result.rps / base:.2f}" if base else "-",
                 f"{c.result.latency_ms['50']:.2f}", f"{c.result.latency_ms['99']:.2f}", str(c.result.error_count),
                 "/".join(f"{p:.0f}" for p in c.cpu_percent().values())] for c in cells.values()]
        ratios = rule.per_round(runs)
        notes = [f"One gateway (log on) and one echo backend for both; {self.body_bytes} B bodies, "
                 f"{self.connections} connections; load average at the end {_loadavg()}.",
                 f"{self.rounds} interleaved rounds per target (per round: {round_rates(runs)}); measured: the "
                 f"median of the rounds' ratios {', '.join(f'{r:.2f}' for r in ratios)}."]
        return Section(name=self.name, title=self.title, headers=_HEADERS, rows=rows,
                       checks=[rule.check(cells, self.name, runs)], notes=notes,
                       raw={"body_bytes": self.body_bytes, "connections": self.connections,
                            "rounds_rps": {n: [c.result.rps for c in done] for n, done in runs.items()}})


#: A resident register row as a CP932 partner writes it: kanji, half-width kana, NEC/IBM characters.
_ROW = "131016000001,山田 太郎,ﾔﾏﾀﾞ ﾀﾛｳ,東京都千代田区霞が関1-2-3,髙橋ビル①号室,1980-04-01,㈱テスト商事\n"
_CHUNK = 1024 * 1024


def cp932_csv(size: int) -> bytes:
    """About ``size`` bytes of CSV in CP932, with one gaiji (F040) every 1000 rows."""
    row = _ROW.encode("cp932")
    block = row * 999 + row.replace(b"\x8eR\x93c", b"\xf0\x40\x93c")  # 山田 -> 𠮷田 once per block
    return block * max(1, size // len(block))


@dataclass(frozen=True, kw_only=True)
class CharsetConversion:
    """Converting a CP932 CSV to UTF-8 and back through :mod:`gateway.charset`, in 1 MiB chunks as a body
    streams, with a gaiji table; judged by MB of CP932 per CPU second (the machine is shared, and
    CPU time is what the conversion costs a gateway process)."""

    name: str
    title: str
    size: int
    at_least_mb_s: float

    def run(self, bench: Bench) -> Section:
        from gateway.charset import FromPartner, ToPartner, profile_from

        bench.close_stack()
        table = bench.workdir / "gaiji.csv"
        table.write_text("F040,U+20BB7,tsuchi-yoshi\n", encoding="utf-8")
        profile = profile_from({"encoding": "cp932", "gaiji": str(table), "unmappable": "refuse"}, "bench",
                               bench.workdir)
        data = cp932_csv(self.size)
        bench.log(f"{self.name}: {len(data) / 1e6:.0f} MB of CP932 CSV to UTF-8 and back")
        utf8, inbound = _timed(FromPartner(profile), data)
        back, outbound = _timed(ToPartner(profile), utf8)
        if back != data:
            raise BenchError(f"{self.name}: the round trip changed the data")
        rows = [[direction, f"{len(data) / 1e6:.0f}", f"{len(data) / cpu / 1e6:.0f}", f"{len(data) / wall / 1e6:.0f}"]
                for direction, (cpu, wall) in (("CP932 → UTF-8", inbound), ("UTF-8 → CP932", outbound))]
        checks = [Check(label=f"{self.name}: {direction} MB/s (CPU time)", measured=len(data) / cpu / 1e6,
                        limit=self.at_least_mb_s, unit="MB/s", at_least=True)
                  for direction, (cpu, _) in (("CP932 → UTF-8", inbound), ("UTF-8 → CP932", outbound))]
        notes = [f"MB of CP932 per second of the converting process's CPU time, and per wall second; "
                 f"load average at the end {_loadavg()}."]
        return Section(name=self.name, title=self.title, headers=("direction", "MB", "MB/s CPU", "MB/s wall"),
                       rows=rows, checks=checks, notes=notes,
                       raw={"bytes": len(data), "inbound_s": inbound, "outbound_s": outbound})


def _timed(converter: Any, data: bytes) -> tuple[bytes, tuple[float, float]]:
    """``data`` through ``converter`` in 1 MiB chunks; (CPU seconds, wall seconds)."""
    out = []
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(data), _CHUNK):
        out.append(converter.feed(data[start:start + _CHUNK]))
    out.append(converter.finish())
    return b"".join(out), (time.process_time() - cpu, time.perf_counter() - wall)


def _start(bench: Bench, exits: ExitStack) -> tuple[Stack, Target]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.api", "--port", str(port)]
    echo = start_server("echo backend", argv, log=bench.workdir / f"echo-{port}.log")
    exits.callback(echo.stop)
    backend_url = f"http://{LOOPBACK}:{port}/demo"
    echo.wait_ready(backend_url, timeout=30)
    data = bench.workdir / f"bmrgw-api-{free_port()}"
    data.mkdir()
    gw_port = free_port()
    gateway = launch_gateway(bench.tools, data, port=gw_port, name="bmrgw-api",
                             config=gateway_conf(data, port=gw_port, backend_url=backend_url), exits=exits)
    return Stack(delay=0.0, backend=echo, backend_url=backend_url), gateway


def _verify(name: str, load: Load) -> None:
    """One request before the load: the echo must come back whole through the gateway."""
    body = load.body_file.read_bytes()
    request = urllib.request.Request(load.url, data=body, headers=dict(load.headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer = resp.read()
    except OSError as exc:
        raise BenchError(f"{name}: {load.url} did not relay the body: {exc}") from exc
    if answer != body:
        raise BenchError(f"{name}: {load.url} answered {answer[:200]!r} instead of the echo")


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description="the echo backend of api-1k")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_echo(), host=LOOPBACK, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
