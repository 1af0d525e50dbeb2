"""Re-sealing an organisation's staged file parts under its newest data key generation
(``bmrgw keys rotate --org``), and counting them per generation (``bmrgw keys status``).

A receiving business-AP with ``gateway.encryption`` seals each staged part into
``DIR/.bmrgw-partial/<fileId>/sealed/<n>`` (:mod:`attachments.staging`) and records ``DIR``
in the key store (:mod:`gateway.crypto.places`).  A part is re-sealed like a JX document in
a file: opened (authenticated) with the key its header names, sealed anew into a hidden
``sealed/.<n>.reseal`` beside it, fsynced, renamed over the old one — a publish reading the
old file keeps reading it, and the recorded part (size, SHA-256) does not change.  Nothing
records progress: a re-run after a crash re-seals whatever part is still under an older
generation, and removes a temporary file the crash left.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from gateway.crypto.places import SealedDir, forget_dir, sealed_dirs
from gateway.crypto.seal import HEADER_BYTES, DataKey, header_generation, regroup, seal, unseal
from gateway.durable import fsync_dir, private_open
from gateway.errors import DocumentCorrupt, KeyUnavailable

from .staging import STAGING_DIR

__all__ = ["Staged", "StagedPass", "staged_census", "reseal_part", "reseal_staged"]

_PIECE = 1024 * 1024
_RESEAL = ".reseal"

KeyOf = Callable[[str, int], DataKey]


@dataclass
class Staged:
    """Staged parts (and the bytes they take on disk) sealed under one generation."""

    parts: int = 0
    bytes: int = 0


@dataclass
class StagedPass:
    """What one pass over an organisation's staging folders did."""

    resealed: int = 0
    resealed_bytes: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """``DIR fileId/n`` → why it could not be re-sealed (destroyed key, corrupt part)."""
    elsewhere: list[SealedDir] = field(default_factory=list)
    """Folders on another host: their parts can only be re-sealed there."""

    @property
    def left(self) -> int:
        """Parts (or folders, for another host's) still under an older generation after the pass."""
        return len(self.failed) + len(self.elsewhere)


def _sealed_parts(directory: Path) -> Iterator[tuple[str, Path]]:
    """``(fileId/n, path)`` of every sealed part staged under ``directory``."""
    root = directory / STAGING_DIR
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        sealed = folder / "sealed"
        if folder.name.startswith(".") or not sealed.is_dir():
            continue
        for path in sorted(sealed.iterdir()):
            if path.name.isdigit():
                yield f"{folder.name}/{path.name}", path
            elif path.name.endswith(_RESEAL):
                path.unlink(missing_ok=True)  # left by a re-seal that crashed before its rename


def _generation(path: Path) -> tuple[int | None, int]:
    """The generation a sealed part names (``None``: not a sealed stream) and its size on disk."""
    with path.open("rb") as fh:
        return header_generation(fh.read(HEADER_BYTES)), os.fstat(fh.fileno()).st_size


def staged_census(engine: Engine, org: str | None = None) -> dict[str, dict[int | None, Staged]]:
    """Per organisation, per generation (``None``: unreadable), the staged parts in its recorded
    folders on this host."""
    found: dict[str, dict[int | None, Staged]] = {}
    for place in sealed_dirs(engine, org):
        if not place.here:
            continue
        for _, path in _sealed_parts(place.path):
            try:
                generation, size = _generation(path)
            except FileNotFoundError:
                continue  # published (or expired) meanwhile
            held = found.setdefault(place.org, {}).setdefault(generation, Staged())
            held.parts += 1
            held.bytes += size
    return found


def reseal_part(path: Path, org: str, doc: str, key_of: KeyOf, key: DataKey) -> int:
    """Seal the part at ``path`` (document ``doc`` of ``org``) anew under ``key``; returns its stored size."""
    tmp = path.with_name(f".{path.name}{_RESEAL}")
    tmp.unlink(missing_ok=True)
    try:
        with path.open("rb") as old, os.fdopen(private_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as out:
            content = unseal(key_of, org, doc, iter(lambda: old.read(_PIECE), b""))
            for piece in regroup(seal(key, doc, content), _PIECE):
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
            size = os.fstat(old.fileno()).st_size
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def reseal_staged(engine: Engine, key: DataKey, key_of: KeyOf) -> StagedPass:
    """Re-seal under ``key`` every staged part of ``key.org`` still under an older generation, in the
    folders recorded for it on this host; a recorded folder that no longer exists is forgotten."""
    done = StagedPass()
    for place in sealed_dirs(engine, key.org):
        if not place.here:
            done.elsewhere.append(place)
            continue
        if not place.path.is_dir():
            forget_dir(engine, place)  # the receiver's folder is gone, and its staged parts with it
            continue
        touched: set[Path] = set()
        for doc, path in _sealed_parts(place.path):
            try:
                generation, _ = _generation(path)
                if generation is not None and generation >= key.generation:
                    continue
                done.resealed_bytes += reseal_part(path, key.org, doc, key_of, key)
            except FileNotFoundError:
                continue  # the transfer was published or expired meanwhile: nothing left to re-seal
            except (DocumentCorrupt, KeyUnavailable) as exc:
                done.failed[f"{place.path} {doc}"] = str(exc)
                continue
            done.resealed += 1
            touched.add(path.parent)
        for folder in touched:  # the renames are durable before the pass counts as done
            try:
                fsync_dir(folder)
            except FileNotFoundError:
                pass
    return done
