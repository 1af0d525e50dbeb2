"""Hot reload of endpoints.yaml: the live route table and the file watcher.

A running gateway applies a changed file within 2 s without a restart: the
watcher polls the file's identity (inode, size, mtime) twice a second, loads
and validates the new file, and swaps the whole :class:`RouteTable` in one
assignment.  Requests take the table once when they start, so in-flight
requests finish on the table they began with.  An invalid file leaves the
old table in force; the error is kept for ``/healthz`` and logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.errors import ConfigError

from .config import Config
from .table import RouteTable

__all__ = ["LiveTable", "watch", "POLL_SECONDS"]

log = logging.getLogger("bmrgw.config")

POLL_SECONDS = 0.5


class LiveTable:
    """The route table in force, with the outcome of the last reload."""

    def __init__(self, config: Config) -> None:
        self.current = RouteTable(config)
        self.error: str | None = None
        self.generation = 1
        self.loaded_at = time.time()

    def reload(self, load: Callable[[], Config]) -> bool:
        """Load a new config; swap it in if valid, else keep the old and record why."""
        try:
            config = load()
        except ConfigError as exc:
            self.error = exc.reason
            log.error("config not applied, the previous table stays in force: %s", exc.reason)
            return False
        old = self.current.config.gateway
        if (config.gateway.listen, config.gateway.db) != (old.listen, old.db):
            log.warning("gateway.listen and gateway.db changes take effect only after a restart")
        self.current = RouteTable(config)
        self.error = None
        self.generation += 1
        self.loaded_at = time.time()
        log.info("config reloaded: %d endpoints, %d peers", len(config.endpoints), len(config.peers))
        return True


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


async def watch(live: LiveTable, path: Path, load: Callable[[], Config],
                *, interval: float = POLL_SECONDS, on_reload: Callable[[bool], None] | None = None) -> None:
    """Poll ``path`` until cancelled, reloading ``live`` whenever the file changes."""
    seen = _identity(path)
    while True:
        await asyncio.sleep(interval)
        now = _identity(path)
        if now == seen:
            continue
        seen = now
        applied = live.reload(load) if now is not None else _missing(live, path)
        if on_reload is not None:
            on_reload(applied)


def _missing(live: LiveTable, path: Path) -> bool:
    live.error = f"{path}: the file is missing"
    log.error("config not applied, the previous table stays in force: %s", live.error)
    return False
