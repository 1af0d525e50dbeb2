"""The sealed format (gateway/crypto/seal.py): round trips at the chunk edges, and every tamper refused."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from gateway.crypto.seal import CHUNK, HEADER_BYTES, TAG_BYTES, DataKey, seal, sealed_size, unseal
from gateway.errors import DocumentCorrupt

KEYS = {("1310001", 1): DataKey("1310001", 1, os.urandom(32)), ("1320002", 1): DataKey("1320002", 1, os.urandom(32))}


def key_of(org: str, generation: int) -> DataKey:
    return KEYS[(org, generation)]


def sealed(data: bytes, org: str = "1310001", doc: str = "doc-1", piece: int = 10_000) -> bytes:
    return b"".join(seal(key_of(org, 1), doc, (data[i:i + piece] for i in range(0, len(data), piece))))


def opened(stored: bytes, org: str = "1310001", doc: str = "doc-1", piece: int = 7_777) -> bytes:
    return b"".join(unseal(key_of, org, doc, (stored[i:i + piece] for i in range(0, len(stored), piece))))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_round_trip_at_the_chunk_edges(size: int) -> None:
    data = os.urandom(size)
    stored = sealed(data)
    assert len(stored) == sealed_size(size)
    assert size < 16 or data[:16] not in stored
    assert opened(stored) == data
    assert opened(stored, piece=1) == data, "fed byte by byte"


def _chunks(stored: bytes) -> list[bytes]:
    body = stored[HEADER_BYTES:]
    return [body[i:i + CHUNK + TAG_BYTES] for i in range(0, len(body), CHUNK + TAG_BYTES)]


def _flip(stored: bytes, at: int) -> bytes:
    return stored[:at] + bytes([stored[at] ^ 1]) + stored[at + 1:]


TAMPERS: dict[str, Callable[[bytes], bytes]] = {
    "flipped byte in a chunk": lambda s: _flip(s, HEADER_BYTES + CHUNK + 100),
    "flipped byte in a tag": lambda s: _flip(s, len(s) - 1),
    "flipped generation": lambda s: _flip(s, 8),
    "flipped salt": lambda s: _flip(s, HEADER_BYTES - 1),
    "flipped magic": lambda s: _flip(s, 0),
    "chunks swapped": lambda s: s[:HEADER_BYTES] + b"".join([_chunks(s)[1], _chunks(s)[0], *_chunks(s)[2:]]),
    "cut at a chunk boundary": lambda s: s[:HEADER_BYTES] + b"".join(_chunks(s)[:2]),
    "cut inside a chunk": lambda s: s[:-10],
    "a chunk appended": lambda s: s + _chunks(s)[0],
    "last chunk dropped": lambda s: s[:HEADER_BYTES] + b"".join(_chunks(s)[:-1]),
    "header only": lambda s: s[:HEADER_BYTES],
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_streams_are_refused(tamper: str) -> None:
    stored = sealed(os.urandom(3 * CHUNK + 10))
    with pytest.raises((DocumentCorrupt, KeyError)):
        opened(TAMPERS[tamper](stored))


def test_a_stream_cannot_move_to_another_document_or_organisation() -> None:
    stored = sealed(b"for 1310001 only", org="1310001", doc="doc-1")
    with pytest.raises(DocumentCorrupt, match="chunk 0 fails authentication"):
        opened(stored, org="1310001", doc="doc-2")
    moved = stored[:5] + stored[5:]  # same generation number, the other organisation's key
    with pytest.raises(DocumentCorrupt):
        opened(moved, org="1320002", doc="doc-1")


def test_nothing_of_a_tampered_chunk_is_returned_before_it_is_refused() -> None:
    data = os.urandom(2 * CHUNK)
    stored = _flip(sealed(data), HEADER_BYTES + CHUNK + TAG_BYTES + 5)  # in the second chunk
    got = []
    with pytest.raises(DocumentCorrupt, match="chunk 1"):
        for piece in unseal(key_of, "1310001", "doc-1", [stored]):
            got.append(piece)
    assert got == [data[:CHUNK]], "only the authenticated first chunk came out"
