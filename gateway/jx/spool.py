"""Where a PutDocument's (or a deposit's, or a poll's) decoded document waits until it is stored:
a temporary file, sealed under a throw-away key when the gateway encrypts, or — a small one —
memory (:class:`SpoolWriter`)."""

from __future__ import annotations

import binascii
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..crypto.seal import DataKey, SealWriter, regroup, unseal
from ..durable import private_dir
from ..errors import MalformedMessage, MessageTooLarge

__all__ = ["Spool", "SpoolWriter", "Base64Spool"]


@dataclass(frozen=True, kw_only=True)
class Spool:
    """A document's decoded bytes: in a temporary file, or — a small one — in memory (``data``)."""

    path: Path
    """The temporary file; for a spool in memory a name in the spool folder that was never created."""
    size: int
    sha256: str
    key: DataKey | None = None
    """The spool's own throw-away key when it was written sealed (in memory only: a crash leaves noise)."""
    data: bytes | None = None
    """The bytes, when they were few enough to stay in memory (then no file exists)."""

    def chunks(self, size: int) -> Iterator[bytes]:
        """The document's bytes, in pieces of about ``size``."""
        if self.data is not None:
            yield from (self.data[at:at + size] for at in range(0, len(self.data), size))
            return
        with self.path.open("rb") as fh:
            stored = iter(lambda: fh.read(size), b"")
            if self.key is None:
                yield from stored
            else:
                key = self.key
                yield from regroup(unseal(lambda _org, _generation: key, key.org, self.path.name, stored), size)

    def discard(self) -> None:
        if self.data is None:  # a spool in memory has no file
            self.path.unlink(missing_ok=True)


class SpoolWriter:
    """Writes a document's bytes into a temporary file as they arrive, hashing them.

    :meth:`finish` fsyncs the file (unless not ``durable``: bytes that go on into
    the database need no fsync of their own); :meth:`abort` removes it.  With
    ``sealed`` (``gateway.encryption``) the bytes are sealed as they arrive under
    a random key of this spool's own, so no plaintext rests on disk even while
    the document is uploaded, before its receiver — whose key seals it for good —
    is known.  With ``memory``, a document of up to that many bytes stays in memory
    and no file is made (nothing rests on disk, so nothing is sealed); the first byte
    beyond moves what is held into the file.
    """

    def __init__(self, directory: Path, *, limit: int, durable: bool = True, prefix: str = "doc-",
                 sealed: bool = False, memory: int = 0) -> None:
        private_dir(directory)
        self._directory, self._prefix, self._sealed = directory, prefix, sealed
        self._file: BinaryIO | None = None
        self._key: DataKey | None = None
        self._sealer: SealWriter | None = None
        self._memory = memory
        self._held: bytearray | None = bytearray() if memory > 0 else None
        self.path = directory / f"{prefix}mem-{secrets.token_hex(12)}.part"  # replaced when a file is made
        if self._held is None:
            self._open()
        self._limit = limit
        self._durable = durable
        self._digest = hashlib.sha256()
        self.size = 0

    def _open(self) -> None:
        fd, name = tempfile.mkstemp(dir=self._directory, prefix=self._prefix, suffix=".part")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._key = DataKey("spool", 0, secrets.token_bytes(32)) if self._sealed else None
        self._sealer = SealWriter(self._key, self.path.name) if self._key is not None else None
        if self._sealer is not None:
            self._file.write(self._sealer.header)

    @property
    def in_memory(self) -> bool:
        """Whether the bytes so far are held in memory (no file exists)."""
        return self._held is not None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._limit:
            raise MessageTooLarge(f"document exceeds the limit of {self._limit} bytes",
                                  detail="gateway.jx.max_document_bytes")
        self._digest.update(data)
        if self._held is not None:
            if self.size <= self._memory:
                self._held += data
                return
            held, self._held = bytes(self._held), None
            self._open()
            data = held + data
        assert self._file is not None
        if self._sealer is None:
            self._file.write(data)
            return
        for sealed in self._sealer.update(data):
            self._file.write(sealed)

    def finish(self) -> Spool:
        if self._held is not None:
            return Spool(path=self.path, size=self.size, sha256=self._digest.hexdigest(), data=bytes(self._held))
        assert self._file is not None
        if self._sealer is not None:
            self._file.write(self._sealer.finish())
        self._file.flush()
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()
        return Spool(path=self.path, size=self.size, sha256=self._digest.hexdigest(), key=self._key)

    def abort(self) -> None:
        self._held = None
        if self._file is not None and not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class Base64Spool(SpoolWriter):
    """A :class:`SpoolWriter` fed base64 text, decoded quartet-aligned as it arrives.

    Whitespace anywhere is ignored (base64Binary allows it); anything else
    that is not base64 is refused.
    """

    def __init__(self, directory: Path, *, limit: int, durable: bool = True, prefix: str = "doc-",
                 sealed: bool = False, memory: int = 0) -> None:
        super().__init__(directory, limit=limit, durable=durable, prefix=prefix, sealed=sealed, memory=memory)
        self._pending = ""

    def write_text(self, text: str) -> None:
        pending = self._pending + "".join(text.split())
        usable = len(pending) - len(pending) % 4
        self._pending = pending[usable:]
        if usable:
            self.write(_decode(pending[:usable]))

    def finish(self) -> Spool:
        if self._pending:
            raise MalformedMessage("the base64 data ends in the middle of a quartet")
        return super().finish()


def _decode(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedMessage(f"the data element is not valid base64: {exc}") from exc
