"""What a store asks of encryption: seal content for an organisation, open it again.

A :class:`Vault` with a :class:`~gateway.crypto.ring.KeyRing` seals everything
written through it; without one (``gateway.encryption`` absent) it passes
content through.  Reading tells the two apart by the stored length, which
the store knows: content stored before encryption was switched on (exactly
``size`` bytes) is served as it is, sealed content (``sealed_size(size)``)
is opened and authenticated chunk by chunk, and any other length is refused
as corrupt — a truncated, padded or mislabelled stream never reaches a
reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sqlalchemy import Engine

from gateway.errors import DocumentCorrupt, KeyUnavailable
from routing.settings import EncryptionSettings

from .places import register_dir
from .ring import KeyRing, MasterKey
from .seal import DataKey, SealWriter, regroup, seal, sealed_size, unseal

__all__ = ["Vault", "vault_for"]


def vault_for(settings: EncryptionSettings | None, engine: Engine) -> Vault:
    """The vault of ``gateway.encryption`` over the store ``engine`` (pass-through when not configured)."""
    if settings is None:
        return Vault()
    path = Path(settings.master_key)
    return Vault(KeyRing(engine, MasterKey.load_all(path), path))


class Vault:
    """Seals and opens stored content of organisations (pass-through when ``ring`` is ``None``)."""

    def __init__(self, ring: KeyRing | None = None) -> None:
        self.ring = ring

    @property
    def sealing(self) -> bool:
        return self.ring is not None

    def stored_size(self, size: int) -> int:
        """How many bytes ``size`` bytes of content take once written through this vault."""
        return sealed_size(size) if self.ring is not None else size

    def prepare(self, org: str) -> None:
        """Make sure ``org`` has a data key (outside any transaction that will write sealed content)."""
        if self.ring is not None:
            self.ring.for_sealing(org)

    def register(self, org: str, path: Path) -> None:
        """Record that the folder ``path`` holds content sealed for ``org`` (for rotation and status)."""
        if self.ring is not None:
            register_dir(self.ring.engine, org, path)

    def writer(self, org: str, doc: str) -> SealWriter:
        """An incremental sealer of document ``doc`` of ``org`` (for content pushed in pieces; needs a ring)."""
        assert self.ring is not None, "a pass-through vault seals nothing"
        return SealWriter(self.ring.for_sealing(org), doc)

    def sealed(self, org: str, doc: str, content: Iterable[bytes], piece: int = 0) -> Iterator[bytes]:
        """What to store for ``content`` of document ``doc`` of ``org`` (in pieces of at least ``piece`` bytes)."""
        if self.ring is None:
            return iter(content)
        sealed = seal(self.ring.for_sealing(org), doc, content)
        return regroup(sealed, piece) if piece else sealed

    def opened(self, org: str, doc: str, size: int, stored_size: int, stored: Iterable[bytes],
               piece: int = 0, key_of: Callable[[str, int], DataKey] | None = None) -> Iterator[bytes]:
        """The content of ``size`` bytes that ``stored`` (``stored_size`` bytes) holds, authenticated
        (with the data keys of ``key_of``, by default the ring's)."""
        if stored_size == size:
            return iter(stored)
        if stored_size != sealed_size(size):
            raise DocumentCorrupt(f"document {doc!r} of {org!r}: {stored_size} bytes stored for {size} bytes "
                                  "of content: refusing to serve them", detail=doc)
        if self.ring is None:
            raise KeyUnavailable(f"document {doc!r} of {org!r} is encrypted and gateway.encryption is not "
                                 "configured", detail=doc)
        content = unseal(key_of or self.ring.key_of, org, doc, stored)
        return regroup(content, piece) if piece else content
