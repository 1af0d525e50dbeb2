"""What ``bmrgw serve`` was asked on its command line: read by the server and by its worker supervisor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServeOptions"]


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    config: Path
    """The endpoints.yaml to load (and watch)."""
    host: str | None = None
    """Listen address overriding ``gateway.listen.host``."""
    port: int | None = None
    """Listen port overriding ``gateway.listen.port``."""
    data_dir: Path | None = None
    """Local files directory overriding ``gateway.data_dir``."""
    db: str | None = None
    """Store URL overriding ``gateway.db``."""
    workers: int = 1
    """Worker processes sharing the port; 1 serves in this process."""
    worker: int | None = None
    """Set in a worker process started by the supervisor: its number, 1…N."""
    heartbeat: int | None = None
    """Set in a worker process: the pipe (file descriptor) its event loop beats on for the supervisor's watchdog."""
    log_level: str = "INFO"
    """Passed on to worker processes."""
    node: str | None = None
    """This host's node name in the send/receive log (default ``gateway.name``); workers add ``.wN``."""
