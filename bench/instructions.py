"""Instructions per relayed request of the gateway process, log on and off, counted by callgrind.

``python -m bench.instructions [--requests N]`` — not part of ``make bench``.

Seconds and req/s on a shared 2-core machine move with whatever else runs;
an instruction count does not (``valgrind --tool=callgrind`` counts the same
total for the same work).  This measures what the send/receive log costs the
gateway's own process — the one that relays — with nothing else mixed in:

1. the demo backend and ``bmrgw serve`` under callgrind, with instrumentation
   off while Python starts and imports;
2. a warm-up of 50 requests, then instrumentation on, ``N`` 1 KiB Echo
   requests at 10 concurrent (aiohttp client, keep-alive), then a dump;
3. the same with ``logs: {enabled: false}``.

Only the gateway's main process is counted: the log writer process comes
from the fork server and is not traced, which is the point — its work runs
on the other core.  The result is Ir (instructions executed) per request;
under valgrind, SHA-256 runs without the CPU's SHA extensions, so hashing
weighs more here than it does in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from .envelope import HEADERS, make_envelope
from .procs import LOOPBACK, BenchError, free_port, start_server
from .servers import DEMO_PATH, gateway_conf

_CONCURRENCY = 10
_WARM_UP = 50
_READY_TIMEOUT = 300.0  # imports under valgrind take a while even with instrumentation off
_BACKEND_TIMEOUT = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, metavar="N", help="requests counted (default: 1000)")
    parser.add_argument("--bmrgw", type=Path, default=Path(sys.executable).with_name("bmrgw"),
                        help="the bmrgw executable (default: the venv's)")
    args = parser.parse_args(argv)
    try:
        counts = {log: _count(args.bmrgw, log=log, requests=args.requests) for log in (True, False)}
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    on, off = counts[True], counts[False]
    print(f"| log | instructions per request |\n|---|---|\n| on | {on / 1000:,.0f} k |\n| off | {off / 1000:,.0f} k |")
    print(f"\nlog on costs the gateway process {100 * (on - off) / off:.1f} % more instructions per request "
          f"({args.requests:,} 1 KiB requests, {_CONCURRENCY} concurrent)")
    return 0


def _count(bmrgw: Path, *, log: bool, requests: int) -> int:
    """Instructions the gateway process executed for ``requests`` relayed requests."""
    with tempfile.TemporaryDirectory(prefix="bmrgw-instructions-") as scratch, ExitStack() as running:
        work = Path(scratch)
        backend_port, port = free_port(), free_port()
        backend_url = f"http://{LOOPBACK}:{backend_port}{DEMO_PATH}"
        backend = start_server("demo backend", [bmrgw, "demo-backend", "--host", LOOPBACK, "--port", str(backend_port)],
                               log=work / "backend.log")
        running.callback(backend.stop)
        backend.wait_ready(f"{backend_url}?wsdl", timeout=_BACKEND_TIMEOUT)
        config = work / "endpoints.yaml"
        config.write_text(gateway_conf(work, port=port, backend_url=backend_url, log=log))
        out = work / "callgrind.out"
        gateway = start_server(
            "bmrgw serve under callgrind",
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "--dump-instr=no",
             "--instr-atstart=no", sys.executable, bmrgw, "serve", "--config", config, "--port", str(port),
             "--log-level", "WARNING"],
            log=work / "valgrind.log")
        running.callback(gateway.stop)
        base = f"http://{LOOPBACK}:{port}"
        gateway.wait_ready(f"{base}/healthz", timeout=_READY_TIMEOUT)
        asyncio.run(_send(f"{base}/soap", _WARM_UP))
        _control("--instr=on", gateway.process.pid)
        asyncio.run(_send(f"{base}/soap", requests))
        _control("--dump", gateway.process.pid)
        dumps = sorted(work.glob("callgrind.out.*.*"))
        if not dumps:
            raise BenchError(f"callgrind wrote no dump; its output ends:\n{gateway.log_tail()}")
        return _total(dumps[0]) // requests


def _control(command: str, pid: int) -> None:
    done = subprocess.run(["callgrind_control", command, str(pid)], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {command} failed: {done.stderr.strip() or done.stdout.strip()}")


def _total(dump: Path) -> int:
    with dump.open() as lines:
        for line in lines:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise BenchError(f"no totals in {dump}")


async def _send(url: str, count: int) -> None:
    body = make_envelope(1024).body
    slots = asyncio.Semaphore(_CONCURRENCY)
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            async with slots, session.post(url, data=body, headers=HEADERS) as response:
                await response.read()
                if response.status != 200:
                    raise BenchError(f"the gateway answered {response.status}")
        await asyncio.gather(*(one() for _ in range(count)))


if __name__ == "__main__":
    sys.exit(main())
