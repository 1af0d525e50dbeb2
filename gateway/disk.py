"""Free space on the data disk (SPEC.md Version 2, "Data at rest": ``gateway.min_free_bytes``).

Whatever would store data — a JX put, a mailbox deposit, a file part of
``bmrgw receive``, a refdb push — asks :meth:`FreeSpace.check` before it
writes a byte, and is refused with :class:`~gateway.errors.InsufficientStorage`
(HTTP 503) when the disk would keep less than the threshold.  Reading,
handing out and confirming go on, so nothing already accepted is lost.

``statvfs`` is cheap, but a busy gateway asks on every request: each folder's
answer is kept for :data:`FRESH` seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.engine import make_url

from routing.config import Config

from .errors import InsufficientStorage
from .store import database_url

__all__ = ["FreeSpace", "storage_folders", "FRESH"]

#: Seconds a folder's free space is trusted before statvfs is asked again.
FRESH = 1.0


class FreeSpace:
    """The free space of the disks holding some folders, asked at most once a :data:`FRESH` period."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.folders = tuple(dict.fromkeys(folders))
        self._known: dict[Path, tuple[float, int]] = {}

    def free(self) -> int:
        """Bytes an unprivileged writer may still use on the fullest of the disks."""
        return min((self._free(folder) for folder in self.folders), default=1 << 62)

    def check(self, min_free: int, *, need: int = 0, what: str = "store data") -> None:
        """Raise :class:`InsufficientStorage` unless ``need`` more bytes leave ``min_free`` free."""
        free = self.free()
        if free - need < min_free:
            wanted = f"{need} more bytes while " if need else ""
            raise InsufficientStorage(
                f"cannot {what}: the data disk has {free} bytes free and must keep {wanted}"
                f"{min_free} (gateway.min_free_bytes)", detail="gateway.min_free_bytes")

    def _free(self, folder: Path) -> int:
        now = time.monotonic()
        known = self._known.get(folder)
        if known is not None and now - known[0] < FRESH:
            return known[1]
        stats = os.statvfs(_existing(folder))
        free = stats.f_bavail * stats.f_frsize
        self._known[folder] = (now, free)
        return free


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest existing parent (a data_dir not made yet lives on its parent's disk)."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def storage_folders(config: Config) -> tuple[Path, ...]:
    """Where the gateway stores data on this host: ``data_dir`` and, on SQLite, the database's folder."""
    folders = [config.resolve_path(config.gateway.data_dir)]
    url = make_url(database_url(config))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folders.append(Path(str(url.database)).parent)
    return tuple(folders)
