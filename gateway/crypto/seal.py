"""The sealed format of stored content: AES-256-GCM in chunks, streamed both ways in bounded memory.

A sealed stream is a header and chunks::

    header  = b"BMRS" 0x01 | generation (4 bytes, big-endian) | salt (16 random bytes)
    chunk i = AES-256-GCM(content[i*64 KiB : (i+1)*64 KiB]) with its 16-byte tag

Each document gets its own key, HKDF-SHA256 of the organisation's data key
(:mod:`gateway.crypto.ring`) with the random salt and, as info, the
organisation and the document id; chunk ``i`` uses nonce ``i``, which is never
reused under a key used for one document only.  The associated data of every
chunk binds the header, the organisation, the document id, the chunk number
and whether it is the last chunk, so a flipped byte, chunks swapped,
reordered, dropped or appended, a stream cut at a chunk boundary, or a
document moved to another organisation or id all fail authentication
(:class:`~gateway.errors.DocumentCorrupt`) — nothing of it is ever returned.
An empty document is one empty last chunk; a full last chunk is marked last
too (the writer holds a full chunk back until it knows more follows).
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import DocumentCorrupt

__all__ = ["DataKey", "SealWriter", "seal", "unseal", "regroup", "sealed_size", "is_sealed", "header_generation",
           "CHUNK", "MAGIC", "HEADER_BYTES", "TAG_BYTES"]

MAGIC = b"BMRS\x01"
#: Plaintext bytes per chunk: small enough for bounded memory, big enough that tags cost 0.02 %.
CHUNK = 64 * 1024
TAG_BYTES = 16
_SALT_BYTES = 16
HEADER_BYTES = len(MAGIC) + 4 + _SALT_BYTES
_INFO = b"bmrgw-seal/1"


@dataclass(frozen=True)
class DataKey:
    """One generation of an organisation's data key, unwrapped (in memory only)."""

    org: str
    generation: int
    secret: bytes


def sealed_size(size: int) -> int:
    """Bytes of the sealed stream of ``size`` bytes of content."""
    chunks = max(1, -(-size // CHUNK))
    return HEADER_BYTES + size + chunks * TAG_BYTES


def is_sealed(first: bytes) -> bool:
    """Whether stored bytes beginning with ``first`` claim to be a sealed stream."""
    return first[:len(MAGIC)] == MAGIC


def header_generation(first: bytes) -> int | None:
    """The data key generation named by a sealed stream beginning with ``first`` (``None``: not sealed)."""
    if len(first) < len(MAGIC) + 4 or not is_sealed(first):
        return None
    return int(struct.unpack(">I", first[len(MAGIC):len(MAGIC) + 4])[0])


def _field(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def _cipher(secret: bytes, salt: bytes, org: str, doc: str) -> AESGCM:
    derived = HKDF(SHA256(), 32, salt, _INFO + _field(org) + _field(doc)).derive(secret)
    return AESGCM(derived)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _bound(header: bytes, org: str, doc: str, index: int, last: bool) -> bytes:
    return header + _field(org) + _field(doc) + struct.pack(">QB", index, last)


class SealWriter:
    """Seals one document incrementally: :meth:`update` with content, :meth:`finish` once."""

    def __init__(self, key: DataKey, doc: str) -> None:
        salt = os.urandom(_SALT_BYTES)
        self.header = MAGIC + struct.pack(">I", key.generation) + salt
        self._org, self._doc = key.org, doc
        self._aead = _cipher(key.secret, salt, key.org, doc)
        self._pending = bytearray()
        self._index = 0

    def _chunk(self, data: bytes | bytearray | memoryview, last: bool) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._index), bytes(data),
                                    _bound(self.header, self._org, self._doc, self._index, last))
        self._index += 1
        return sealed

    def update(self, data: bytes) -> list[bytes]:
        """Sealed chunks complete so far (a full chunk is held back until more content follows it)."""
        self._pending += data
        if len(self._pending) <= CHUNK:
            return []
        out, at = [], 0
        with memoryview(self._pending) as view:
            while len(self._pending) - at > CHUNK:
                out.append(self._chunk(view[at:at + CHUNK], last=False))
                at += CHUNK
        del self._pending[:at]
        return out

    def finish(self) -> bytes:
        """The last chunk."""
        return self._chunk(self._pending, last=True)


def seal(key: DataKey, doc: str, content: Iterable[bytes]) -> Iterator[bytes]:
    """The sealed stream of ``content``: the header, then the chunks."""
    writer = SealWriter(key, doc)
    yield writer.header
    for piece in content:
        yield from writer.update(piece)
    yield writer.finish()


def unseal(key_of: Callable[[str, int], DataKey], org: str, doc: str, stored: Iterable[bytes]) -> Iterator[bytes]:
    """The content of a sealed stream, chunk by chunk, each authenticated before it is returned.

    ``key_of(org, generation)`` gives the data key the header names. Raises
    :class:`DocumentCorrupt` at the first chunk that fails (or a stream cut short).
    """
    pending = bytearray()
    pieces = iter(stored)
    for piece in pieces:
        pending += piece
        if len(pending) >= HEADER_BYTES:
            break
    header = bytes(pending[:HEADER_BYTES])
    if len(header) < HEADER_BYTES or not is_sealed(header):
        raise DocumentCorrupt(f"document {doc!r}: not a sealed stream", detail=doc)
    del pending[:HEADER_BYTES]
    generation = struct.unpack(">I", header[len(MAGIC):len(MAGIC) + 4])[0]
    aead = _cipher(key_of(org, generation).secret, header[-_SALT_BYTES:], org, doc)
    index, whole = 0, CHUNK + TAG_BYTES

    def opened(data: bytes | bytearray | memoryview, last: bool) -> bytes:
        try:
            return aead.decrypt(_nonce(index), bytes(data), _bound(header, org, doc, index, last))
        except InvalidTag:
            raise DocumentCorrupt(f"document {doc!r} of {org!r}: chunk {index} fails authentication "
                                  "(altered, reordered, cut short or moved from another document)",
                                  detail=doc) from None

    for piece in itertools.chain([b""], pieces):  # the first round opens what came with the header
        pending += piece
        at = 0
        with memoryview(pending) as view:
            while len(pending) - at > whole:
                yield opened(view[at:at + whole], last=False)
                index, at = index + 1, at + whole
        del pending[:at]
    yield opened(pending, last=True)


def regroup(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """``chunks`` joined into pieces of at least ``size`` bytes (the last may be shorter)."""
    group: list[bytes] = []
    held = 0
    for chunk in chunks:
        group.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(group)
            group, held = [], 0
    if group:
        yield b"".join(group)
