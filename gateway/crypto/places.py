"""Folders outside the JX store where sealed content rests, recorded beside the data keys.

A receiving business-AP (``bmrgw receive --ap NAME`` with ``gateway.encryption``) seals
its staged file parts under ``DIR/.bmrgw-partial`` with the data key of ``NAME``.  The
key table alone does not say where those folders are, so the receiver records each one
here (table ``crypto_sealed_dir``: organisation, absolute path, host) when it starts;
``bmrgw keys rotate --org`` and ``bmrgw keys status`` find the organisation's staged parts
through it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .ring import now_ms, translated

__all__ = ["SealedDir", "register_dir", "sealed_dirs", "forget_dir", "SEALED_DIRS"]

METADATA = MetaData()
SEALED_DIRS = Table(
    "crypto_sealed_dir", METADATA,
    Column("org", String(256), nullable=False),
    Column("path", Text, nullable=False),
    Column("host", String(256), nullable=False),
    Column("registered_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("org", "path", "host"),
)


@dataclass(frozen=True)
class SealedDir:
    """A folder holding content sealed for ``org``, on ``host``."""

    org: str
    path: Path
    host: str

    @property
    def here(self) -> bool:
        """Whether the folder is on this host (and so can be re-sealed from here)."""
        return self.host == socket.gethostname()


def _create(engine: Engine) -> None:
    try:
        METADATA.create_all(engine)
    except SQLAlchemyError:  # a lost creation race with another process: the table exists now
        METADATA.create_all(engine)


def register_dir(engine: Engine, org: str, path: Path) -> None:
    """Record that ``path`` (made absolute) holds content sealed for ``org`` on this host (idempotent)."""
    with translated("cannot record a sealed folder"):
        _create(engine)
        try:
            with engine.begin() as c:
                c.execute(insert(SEALED_DIRS).values(org=org, path=str(path.resolve()), host=socket.gethostname(),
                                                     registered_ms=now_ms()))
        except IntegrityError:
            pass  # recorded by an earlier start


def sealed_dirs(engine: Engine, org: str | None = None) -> list[SealedDir]:
    """The folders recorded for ``org`` (every organisation's when ``None``)."""
    t = SEALED_DIRS
    with translated("cannot read the sealed folders"):
        _create(engine)
        stmt = select(t.c.org, t.c.path, t.c.host).order_by(t.c.org, t.c.host, t.c.path)
        if org is not None:
            stmt = stmt.where(t.c.org == org)
        with engine.connect() as c:
            return [SealedDir(row.org, Path(row.path), row.host) for row in c.execute(stmt)]


def forget_dir(engine: Engine, place: SealedDir) -> None:
    """Drop a folder's record (it no longer exists on its host: nothing is sealed there)."""
    t = SEALED_DIRS
    with translated("cannot forget a sealed folder"), engine.begin() as c:
        c.execute(delete(t).where(t.c.org == place.org, t.c.path == str(place.path), t.c.host == place.host))
