"""Splitting a byte stream into numbered parts, and the manifest that describes them.

A transfer is described by a :class:`FileInfo` (what the receiver must end
up with: name, size and SHA-256 of the original file, and how it travels:
compression, the size of the transmitted stream, the part size) and one
:class:`PartInfo` per part (number, offset, size, SHA-256).  Every field a
receiver gets is checked here against the others, so a part that does not
fit its file is refused before a byte of it is stored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import ChecksumMismatch, MalformedMessage, MessageTooLarge

from .names import safe_file_name

__all__ = ["FileInfo", "PartInfo", "PartHasher", "Manifest", "FILE_ID", "COMPRESSIONS", "file_id_for", "part_count", "plan"]

#: How a file may travel: as it is, or as a one-member zip (attachments.zipstream).
COMPRESSIONS = ("none", "zip")
_SHA256 = re.compile(r"[0-9a-f]{64}")
FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def part_count(stream_size: int, part_size: int) -> int:
    """Parts of ``part_size`` bytes needed for ``stream_size`` bytes; an empty file is one empty part."""
    return max(1, -(-stream_size // part_size))


def plan(stream_size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number from 1, offset, size) of every part."""
    return [(n + 1, n * part_size, min(part_size, stream_size - n * part_size))
            for n in range(part_count(stream_size, part_size))]


def file_id_for(file_sha256: str, file_name: str, compression: str, part_size: int) -> str:
    """A transfer's id: the same file sent the same way gets the same id, so a resend resumes."""
    key = f"{file_sha256}\0{file_name}\0{compression}\0{part_size}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


@dataclass(frozen=True, kw_only=True)
class FileInfo:
    """One file transfer, as every PutFilePart of it repeats."""

    file_id: str
    file_name: str
    file_size: int
    """Bytes of the original file (after unzipping, when compressed)."""
    file_sha256: str
    """SHA-256 of the original file, lower-case hex."""
    compression: str = "none"
    stream_size: int
    """Bytes transmitted: the file itself, or its zip."""
    part_size: int
    """Bytes in every part but the last."""
    part_count: int

    def check(self, *, max_file_bytes: int, max_parts: int | None = None) -> FileInfo:
        """This info if it is self-consistent and within the limits; raises a ClientFault otherwise."""
        safe_file_name(self.file_name)
        if not FILE_ID.fullmatch(self.file_id):
            raise MalformedMessage(f"fileId {self.file_id!r} must be 1-64 letters, digits, '_' or '-'")
        if not _SHA256.fullmatch(self.file_sha256):
            raise MalformedMessage("fileSha256 must be 64 lower-case hex digits")
        if self.compression not in COMPRESSIONS:
            raise MalformedMessage(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if min(self.file_size, self.stream_size) < 0 or self.part_size < 1:
            raise MalformedMessage("fileSize and streamSize must not be negative, partSize must be positive")
        if self.file_size > max_file_bytes or self.stream_size > max_file_bytes:
            raise MessageTooLarge(f"the file of {max(self.file_size, self.stream_size)} bytes exceeds the "
                                  f"receiver's limit of {max_file_bytes}")
        if max_parts is not None and self.part_count > max_parts:
            raise MessageTooLarge(f"the file is sent in {self.part_count} parts; the receiver takes at most {max_parts}")
        if self.compression == "none" and self.stream_size != self.file_size:
            raise MalformedMessage("an uncompressed file must have streamSize equal to fileSize")
        if self.part_count != part_count(self.stream_size, self.part_size):
            raise MalformedMessage(f"partCount {self.part_count} does not fit streamSize {self.stream_size} "
                                   f"in parts of {self.part_size}")
        return self

    def part(self, part_no: int, sha256: str) -> PartInfo:
        """The part numbered ``part_no`` of this file; raises MalformedMessage if there is none."""
        if not 1 <= part_no <= self.part_count:
            raise MalformedMessage(f"partNo {part_no} is outside 1..{self.part_count}")
        if not _SHA256.fullmatch(sha256):
            raise MalformedMessage("partSha256 must be 64 lower-case hex digits")
        offset = (part_no - 1) * self.part_size
        return PartInfo(part_no=part_no, offset=offset, size=min(self.part_size, self.stream_size - offset),
                        sha256=sha256)


@dataclass(frozen=True, kw_only=True)
class PartInfo:
    """One part of the transmitted stream."""

    part_no: int
    offset: int
    size: int
    sha256: str


class PartHasher:
    """Counts and hashes a part's bytes as they arrive; :meth:`verify` compares with the declaration."""

    def __init__(self, part: PartInfo) -> None:
        self.part = part
        self.size = 0
        self._digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self.part.size:
            raise ChecksumMismatch(f"part {self.part.part_no} is longer than its declared {self.part.size} bytes")
        self._digest.update(data)

    def verify(self) -> None:
        if self.size != self.part.size:
            raise ChecksumMismatch(f"part {self.part.part_no} has {self.size} bytes, not {self.part.size}")
        if self._digest.hexdigest() != self.part.sha256:
            raise ChecksumMismatch(f"part {self.part.part_no} does not match its partSha256")


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The per-part SHA-256 of a stream and its size and SHA-256 as a whole."""

    stream_size: int
    stream_sha256: str
    part_size: int
    parts: tuple[PartInfo, ...]

    @classmethod
    def build(cls, chunks: Iterable[bytes], part_size: int, *, hash_whole: bool = True) -> Manifest:
        """Hash a stream (any chunking) part by part in one pass, a chunk at a time.

        With ``hash_whole=False`` the whole-stream hash is left empty, for a
        caller that computes it elsewhere (in parallel, say).
        """
        whole, parts = hashlib.sha256(), list[PartInfo]()
        part, filled, offset = hashlib.sha256(), 0, 0
        for chunk in chunks:
            if hash_whole:
                whole.update(chunk)
            view = memoryview(chunk)
            while view:
                take = view[:part_size - filled]
                part.update(take)
                filled += len(take)
                view = view[len(take):]
                if filled == part_size:
                    parts.append(PartInfo(part_no=len(parts) + 1, offset=offset, size=filled,
                                          sha256=part.hexdigest()))
                    part, offset, filled = hashlib.sha256(), offset + filled, 0
        if filled or not parts:
            parts.append(PartInfo(part_no=len(parts) + 1, offset=offset, size=filled, sha256=part.hexdigest()))
        return cls(stream_size=offset + filled, stream_sha256=whole.hexdigest() if hash_whole else "",
                   part_size=part_size, parts=tuple(parts))
