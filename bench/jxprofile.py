"""Where a JX cycle's time goes: ``python -m bench.jxprofile [sqlite|postgresql] [--encrypted] [SECONDS]``.

Runs a gateway in this process (the real application, its log writer process included), wraps
the JX handler's and the store's steps with timers (wall time, and CPU time of the thread that
ran them), drives the bench's load (8 workers, 10 KiB, Put+Get+Confirm) against it for SECONDS,
and prints per step: calls, mean wall ms, mean CPU ms — the numbers in bench/PROFILE.md's JX part.
Wall time of a step includes the steps inside it; a put's ``submit`` is its wait for the group
commit plus, when it led, the commit of its batch.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.jx import commit, files, service, store
from gateway.serve.app import AppOptions, make_app
from routing.config import parse_config

from .jxload import database, http_load

__all__ = ["main"]

_STATS: dict[str, list[float]] = {}
_LOCK = threading.Lock()


def _note(name: str, wall: float, cpu: float) -> None:
    with _LOCK:
        stat = _STATS.setdefault(name, [0, 0.0, 0.0])
        stat[0] += 1
        stat[1] += wall
        stat[2] += cpu


def _timed(owner: Any, attribute: str, name: str) -> None:
    real: Callable[..., Any] = getattr(owner, attribute)
    if inspect.iscoroutinefunction(real):
        @functools.wraps(real)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await real(*args, **kwargs)
            finally:
                _note(name, time.perf_counter() - began, float("nan"))
        setattr(owner, attribute, timed_async)
        return

    @functools.wraps(real)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            return real(*args, **kwargs)
        finally:
            _note(name, time.perf_counter() - began, time.thread_time() - cpu)
    setattr(owner, attribute, timed)


def _instrument() -> None:
    s, d = service.JxService, store.DocumentStore
    for attribute in ("handle", "_read", "_put", "_get", "_confirm", "_stream", "_log"):
        _timed(s, attribute, f"service.{attribute}")
    for attribute in ("put", "_insert", "_file_blob", "_commit", "_insert_batch", "hand_out", "chunks", "confirm"):
        if hasattr(d, attribute):
            _timed(d, attribute, f"store.{attribute}")
    _timed(commit.GroupCommit, "submit", "commit.submit (wait + lead)")
    _timed(files, "place", "files.place (seal + write + fsync)")
    _timed(store, "fsync_dir", "store.fsync_dir")


async def _run(kind: str, encrypted: bool, seconds: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="jxprofile-"))
    with database(kind, work) as url:
        gateway: dict[str, Any] = {"name": "profile", "db": url, "data_dir": str(work / "var")}
        if encrypted:
            from gateway.crypto import write_master_key
            write_master_key(work / "master.key")
            gateway["encryption"] = {"master_key": str(work / "master.key")}
        config = parse_config({"gateway": gateway}, source=work / "endpoints.yaml")
        runner = web.AppRunner(make_app(config, AppOptions()), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await http_load(f"http://127.0.0.1:{port}/jx", 10 * 1024, 8, 2.0)
            _STATS.clear()
            measured = await http_load(f"http://127.0.0.1:{port}/jx", 10 * 1024, 8, seconds)
        finally:
            await runner.cleanup()
    print(f"{kind}{' encrypted' if encrypted else ''}: {measured.rate:.0f} cycles/s, p50 {measured.percentile(50):.0f} "
          f"ms, p99 {measured.percentile(99):.0f} ms, {measured.errors} errors")
    print(f"{'step':44} {'calls':>7} {'wall ms':>9} {'cpu ms':>8}")
    for name, (calls, wall, cpu) in sorted(_STATS.items(), key=lambda item: -item[1][1]):
        print(f"{name:44} {int(calls):7d} {1000 * wall / calls:9.2f} {1000 * cpu / calls:8.2f}")


def main(argv: list[str]) -> int:
    kind = next((a for a in argv if a in ("sqlite", "postgresql")), "sqlite")
    seconds = float(next((a for a in argv if a.replace(".", "").isdigit()), "10"))
    _instrument()
    asyncio.run(_run(kind, "--encrypted" in argv, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
