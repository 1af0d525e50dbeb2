"""Durable file steps shared by the JX store, its CLI and the poll client."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..crypto import Vault
from ..durable import fsync_dir, private_open
from .wire import Spool

__all__ = ["fsync_dir", "write_atomically", "place"]

_PIECE = 1024 * 1024


def place(vault: Vault, spool: Spool, path: Path, org: str, doc: str) -> None:
    """Put the content of ``spool`` at ``path`` (new, 0600, fsynced): renamed as it is, or written
    (sealed for ``org`` when ``vault`` encrypts, or from memory) — then the spool stays for its owner
    to discard."""
    if not vault.sealing and spool.key is None and spool.data is None:
        fd = os.open(spool.path, os.O_RDONLY)  # spools are not fsynced when written: most go to the database
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(spool.path, path)
        return
    try:
        with os.fdopen(private_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as out:
            for piece in vault.sealed(org, doc, spool.chunks(_PIECE), _PIECE):
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


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
