"""Driving wrk: one bounded load run against one URL, read back as numbers.

wrk (Debian's package) is the load generator because it is a small C program
that keeps a fixed number of keep-alive connections busy and records every
latency in a histogram; ``post.lua`` makes it POST the envelope and print its
summary as JSON.  wrk runs one thread: the machine's cores are shared with the
servers under test, and one thread saturates them.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .procs import BenchError

__all__ = ["CHECK_SCRIPT", "Load", "WrkResult", "run_wrk"]

_SCRIPT = Path(__file__).with_name("post.lua")
#: The script that also checks every answer's bytes (:attr:`Load.expect_file`).
CHECK_SCRIPT = Path(__file__).with_name("check.lua")
_MARK = "BENCH-RESULT "
#: Seconds wrk may overrun its --duration before the harness kills it.
_OVERRUN = 20.0


@dataclass(frozen=True, kw_only=True)
class Load:
    """What wrk is asked to do."""

    url: str
    body_file: Path
    headers: Mapping[str, str]
    connections: int
    duration: float
    threads: int = 1
    #: A request slower than this counts as a timeout error rather than a latency.
    timeout: float = 10.0
    #: The wrk Lua script; ``post.lua`` sends one body, ``post_many.lua`` a different one each time,
    #: ``mix.lua`` one body to a rotation of endpoints.
    script: Path = _SCRIPT
    #: The answer every request must get (``check.lua``: a 200 with other bytes is a "bad" error).
    expect_file: Path | None = None
    #: CPUs wrk is pinned to (``taskset -c``), or None.
    cpus: str | None = None


@dataclass(frozen=True, kw_only=True)
class WrkResult:
    """wrk's summary of one run; latencies in milliseconds."""

    requests: int
    seconds: float
    bytes_read: int
    errors: Mapping[str, int]
    latency_ms: Mapping[str, float]
    #: CPU seconds wrk itself used, so the report can show how the cores were shared.
    cpu_seconds: float
    #: Answers compared byte for byte with the expected one and equal (``check.lua`` only).
    checked: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_wrk(wrk: Path, load: Load) -> WrkResult:
    """Run wrk once, bounded in time, and parse its JSON summary."""
    before = _children_cpu()
    try:
        done = subprocess.run(
            _argv(wrk, load), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=load.duration + load.timeout + _OVERRUN, start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {exc.timeout:.0f} s against {load.url}") from exc
    except OSError as exc:
        raise BenchError(f"cannot run wrk ({wrk}): {exc}") from exc
    return _parse(done, cpu=_children_cpu() - before)


def _argv(wrk: Path, load: Load) -> list[str]:
    return [
        *(["taskset", "-c", load.cpus] if load.cpus else []),
        os.fspath(wrk), f"--threads={load.threads}", f"--connections={load.connections}",
        f"--duration={max(1, round(load.duration))}s", f"--timeout={load.timeout:g}s",
        f"--script={load.script}", load.url, "--", os.fspath(load.body_file),
        *([os.fspath(load.expect_file)] if load.expect_file is not None else []),
        *(f"{name}: {value}" for name, value in load.headers.items()),
    ]


def _parse(done: subprocess.CompletedProcess[str], *, cpu: float) -> WrkResult:
    line = next((l for l in done.stdout.splitlines() if l.startswith(_MARK)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (exit {done.returncode}):\n{done.stdout}{done.stderr}".rstrip())
    raw = json.loads(line[len(_MARK):])
    return WrkResult(
        requests=int(raw["requests"]), seconds=raw["duration_us"] / 1e6, bytes_read=int(raw["bytes"]),
        errors={k: int(v) for k, v in raw["errors"].items()},
        latency_ms={k: v / 1000 for k, v in raw["latency_us"].items()}, cpu_seconds=cpu,
        checked=int(raw.get("checked", 0)),
    )


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children; wrk is the only one reaped meanwhile."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
