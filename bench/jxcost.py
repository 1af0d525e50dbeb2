"""What a JX cycle costs, in numbers that hold on a busy machine:
``python -m bench.jxcost [sqlite|postgresql] [--seconds S] [--rounds N] [--baseline BMRGW] [--strace]``.

Starts an encrypted gateway of this checkout (``bmrgw serve``, log on) and, with ``--baseline``,
one of another ``bmrgw`` executable (an older checkout) beside it, each on a database of its own;
then runs the bench's load (:func:`bench.jxload.http_load`: 8 workers, 10 KiB, Put+Get+Confirm)
against them in interleaved rounds (A, B, A, B …) and prints per gateway and round: cycles/s,
p50/p99, and the CPU µs per cycle of all the gateway's processes (supervisor, worker, log writer:
``/proc/PID/stat``) and of the load generator (this process) — with the raw SQL reference (:func:`bench.jxload.reference_load`) in each
round too, for the ratio.  Wall-clock rates depend on what else runs; CPU per cycle much less.

``--strace``: one more round per gateway with ``strace -f -c`` attached to every process of the
gateway, then per cycle: system calls in all, fsync + fdatasync, and the calls that write or
read files and sockets.  strace slows the gateway down many times over; the *counts* per cycle
do not depend on that (what a cycle asks of the kernel is the same).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .jxload import Measured, database, http_load, reference_load
from .procs import LOOPBACK, Server, cpu_seconds, family, free_port, start_server

__all__ = ["main"]

_HERE = Path(__file__).resolve().parent.parent
_SIZE = 10 * 1024
_WORKERS = 8
#: System calls shown per cycle (besides all of them together and the fsyncs).
_SHOWN = ("fsync", "fdatasync", "pwrite64", "write", "pread64", "read", "openat", "unlink", "rename",
          "sendto", "recvfrom", "sendmsg", "recvmsg", "futex", "epoll_wait")


@dataclass
class _Gateway:
    name: str
    url: str
    server: Server


def _start(program: Path, store: str, name: str, url: str, work: Path) -> _Gateway:
    port = free_port()
    data = work / f"{store}-{name}-{uuid.uuid4().hex[:6]}"
    data.mkdir(mode=0o700)
    key = data / "keys" / "master.key"
    subprocess.run([os.fspath(program), "keys", "init", str(key)], check=True, capture_output=True)
    config = data / "endpoints.yaml"
    config.write_text(f"""gateway:
  name: jxcost-{store}-{name}
  listen: {{host: {LOOPBACK}, port: {port}}}
  db: "{url}"
  data_dir: "{data / 'var'}"
  encryption: {{master_key: "{key}"}}
""")
    server = start_server(f"bmrgw ({name})", [program, "serve", "--config", config, "--log-level", "WARNING"],
                          log=data / "gateway.log")
    server.wait_ready(f"http://{LOOPBACK}:{port}/healthz", timeout=30)
    return _Gateway(name=name, url=f"http://{LOOPBACK}:{port}/jx", server=server)


def _measure(gateway: _Gateway, seconds: float) -> tuple[Measured, float, float]:
    """The load's result, the gateway's CPU µs per cycle and the load generator's (this process)."""
    cpu0, own0 = cpu_seconds(gateway.server.process.pid), time.process_time()
    measured = asyncio.run(http_load(gateway.url, _SIZE, _WORKERS, seconds))
    cpu, own = cpu_seconds(gateway.server.process.pid) - cpu0, time.process_time() - own0
    cycles = max(1, measured.cycles)
    return measured, 1e6 * cpu / cycles, 1e6 * own / cycles


def _traced(gateway: _Gateway, seconds: float, work: Path) -> tuple[int, dict[str, int]]:
    """Cycles run under ``strace -f -c`` and the system calls counted meanwhile."""
    out = work / f"strace-{gateway.name}-{uuid.uuid4().hex[:6]}.txt"
    argv = ["strace", "-f", "-c", "-q", "-o", str(out)]
    for pid in sorted(family(gateway.server.process.pid)):
        argv += ["-p", str(pid)]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached to every thread before the load starts
        measured = asyncio.run(http_load(gateway.url, _SIZE, _WORKERS, seconds))
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(30)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return measured.cycles, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jxcost")
    p.add_argument("store", nargs="?", default="sqlite", choices=("sqlite", "postgresql"))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another bmrgw executable, measured in the same rounds")
    p.add_argument("--strace", action="store_true", help="count system calls per cycle (one round more each)")
    p.add_argument("--no-reference", action="store_true", help="skip the raw SQL reference")
    args = p.parse_args(argv)
    this = Path(sys.executable).parent / "bmrgw"
    programs = [("this", this)] + ([("baseline", args.baseline)] if args.baseline else [])
    work = Path(tempfile.mkdtemp(prefix="jxcost-"))
    print(f"# {args.store}, load average {os.getloadavg()[0]:.2f}; {_WORKERS} workers, {_SIZE // 1024} KiB, "
          f"{args.rounds} rounds of {args.seconds:g} s", flush=True)
    with contextlib.ExitStack() as stack:
        gateways = []
        for name, program in programs:
            url = stack.enter_context(database(args.store, work))
            gateway = _start(program, args.store, name, url, work)
            stack.callback(gateway.server.stop)
            gateways.append(gateway)
        ref_url = stack.enter_context(database(args.store, work))
        for gateway in gateways:
            asyncio.run(http_load(gateway.url, _SIZE, _WORKERS, 2.0))
        for number in range(args.rounds):
            for gateway in gateways:
                measured, cpu, client = _measure(gateway, args.seconds)
                print(f"round {number + 1} {gateway.name:8} {measured.rate:7.1f} cycles/s  p50 "
                      f"{measured.percentile(50):6.1f} ms  p99 {measured.percentile(99):6.1f} ms  "
                      f"{cpu:7.0f} CPU µs/cycle (client {client:.0f})  errors {measured.errors}  "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
            if not args.no_reference:
                ref = reference_load(ref_url, _SIZE, _WORKERS, args.seconds)
                print(f"round {number + 1} raw SQL  {ref.rate:7.1f} cycles/s  p50 {ref.percentile(50):6.1f} ms  "
                      f"p99 {ref.percentile(99):6.1f} ms", flush=True)
        if args.strace:
            for gateway in gateways:
                cycles, counts = _traced(gateway, args.seconds, work)
                total = sum(counts.values())
                shown = "  ".join(f"{name} {counts.get(name, 0) / max(1, cycles):.2f}" for name in _SHOWN)
                print(f"strace {gateway.name:8} {cycles} cycles: {total / max(1, cycles):.1f} syscalls/cycle; "
                      f"{shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
