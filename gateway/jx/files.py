"""Durable file steps shared by the JX store, its CLI and the poll client."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..durable import fsync_dir, private_open

__all__ = ["fsync_dir", "write_atomically"]


def write_atomically(path: Path, chunks: Iterable[bytes]) -> None:
    """Write ``path`` so that it exists complete or not at all: hidden temp file, fsync, rename, folder fsync."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with os.fdopen(private_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
