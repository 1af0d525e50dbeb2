"""Zip (PKWARE APPNOTE 6.3) as a stream: one member, deflate, ZIP64, bounded inflation.

:class:`ZipWriter` produces a zip of one file without knowing its size in
advance: the local header announces a data descriptor and carries a ZIP64
extra field, so files over 4 GiB need nothing special.  :class:`ZipReader`
reads such a zip (or one with sizes in the local header, as ``zip`` and
Python's ``zipfile`` write them) front to back without seeking, and refuses
zip bombs *while* inflating: output beyond ``max_bytes`` or beyond
``max_ratio`` × the compressed input is never produced.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass

from gateway.errors import ChecksumMismatch, MalformedMessage, ZipBomb

__all__ = ["ZipWriter", "ZipReader", "ZipLimits"]

_LOCAL = 0x04034B50
_CENTRAL = 0x02014B50
_DESCRIPTOR = 0x08074B50
_ZIP64_END = 0x06064B50
_ZIP64_LOCATOR = 0x07064B50
_END = 0x06054B50
_ZIP64_EXTRA = 0x0001
_FLAG_ENCRYPTED, _FLAG_DESCRIPTOR, _FLAG_UTF8 = 0x1, 0x8, 0x800
_STORED, _DEFLATED = 0, 8
_VERSION = 45  # ZIP64
_MAX32 = 0xFFFFFFFF
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
#: Output produced by one inflate call: bounds memory and how far a bomb gets.
_SLICE = 1 << 20


def _dos_time(mtime: float) -> tuple[int, int]:
    t = time.gmtime(max(mtime, 315532800))  # the DOS epoch is 1980
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


class ZipWriter:
    """Writes a one-member zip as a stream: :meth:`start`, :meth:`write` per chunk, :meth:`finish`."""

    def __init__(self, name: str, *, mtime: float = 0.0, level: int = 1) -> None:
        self._name = name.encode("utf-8")
        self._time, self._date = _dos_time(mtime)
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        self._compressed = 0
        self._offset = 0

    def start(self) -> bytes:
        extra = struct.pack("<HHQQ", _ZIP64_EXTRA, 16, 0, 0)
        head = _LOCAL_HEADER.pack(_LOCAL, _VERSION, _FLAG_DESCRIPTOR | _FLAG_UTF8, _DEFLATED, self._time,
                                  self._date, 0, _MAX32, _MAX32, len(self._name), len(extra))
        out = head + self._name + extra
        self._offset = len(out)
        return out

    def write(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        return self._counted(self._deflate.compress(data))

    def finish(self) -> bytes:
        """The rest of the compressed data, the data descriptor and the central directory."""
        tail = self._counted(self._deflate.flush())
        descriptor = struct.pack("<IIQQ", _DESCRIPTOR, self._crc, self._compressed, self._size)
        central_at = self._offset + len(descriptor)
        extra = struct.pack("<HHQQQ", _ZIP64_EXTRA, 24, self._size, self._compressed, 0)
        central = struct.pack("<IHHHHHHIIIHHHHHII", _CENTRAL, (3 << 8) | _VERSION, _VERSION,
                              _FLAG_DESCRIPTOR | _FLAG_UTF8, _DEFLATED, self._time, self._date, self._crc,
                              _MAX32, _MAX32, len(self._name), len(extra), 0, 0, 0, 0o100644 << 16, _MAX32)
        central += self._name + extra
        zip64_end_at = central_at + len(central)
        ends = struct.pack("<IQHHIIQQQQ", _ZIP64_END, 44, (3 << 8) | _VERSION, _VERSION, 0, 0, 1, 1,
                           len(central), central_at)
        ends += struct.pack("<IIQI", _ZIP64_LOCATOR, 0, zip64_end_at, 1)
        ends += struct.pack("<IHHHHIIH", _END, 0, 0, 1, 1, len(central), min(central_at, _MAX32), 0)
        return tail + descriptor + central + ends

    def _counted(self, data: bytes) -> bytes:
        self._compressed += len(data)
        self._offset += len(data)
        return data


@dataclass(frozen=True, kw_only=True)
class ZipLimits:
    """What a received zip may inflate to."""

    max_bytes: int
    """Absolute limit of the inflated member (the declared file size, at most the receiver's limit)."""
    max_ratio: float = 200.0
    """Largest inflated/compressed ratio, checked once more than ``ratio_grace`` bytes came out."""
    ratio_grace: int = 1 << 20


_HEAD, _DATA, _TRAILER, _DONE = range(4)


class ZipReader:
    """Reads a one-member zip front to back: :meth:`feed` compressed bytes, get inflated chunks."""

    def __init__(self, limits: ZipLimits) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._state = _HEAD
        self._inflate = zlib.decompressobj(-15)
        self._method = _DEFLATED
        self._flags = 0
        self._crc_expected = 0
        self._zip64 = False
        self._remaining: int | None = None  # compressed bytes left, when the header says
        self.name: str | None = None
        self.size = 0
        """Inflated bytes produced so far."""
        self.consumed = 0
        """Compressed bytes consumed so far."""
        self._crc = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while self._step(out):
            pass
        return out

    def close(self) -> None:
        if self._state != _DONE:
            raise MalformedMessage("the zip stream is truncated: it ends inside its only member")

    def _step(self, out: list[bytes]) -> bool:
        if self._state == _HEAD:
            return self._header()
        if self._state == _DATA:
            return self._data(out)
        if self._state == _TRAILER:
            return self._trailer()
        del self._buf[:]  # the central directory: the member is complete already
        return False

    def _header(self) -> bool:
        buf = self._buf
        if len(buf) < _LOCAL_HEADER.size:
            return False
        (sig, _, flags, method, _, _, crc, csize, usize, name_len,
         extra_len) = _LOCAL_HEADER.unpack_from(buf)
        if sig != _LOCAL:
            raise MalformedMessage("not a zip stream (no local file header at its start)")
        end = _LOCAL_HEADER.size + name_len + extra_len
        if len(buf) < end:
            return False
        if flags & _FLAG_ENCRYPTED or method not in (_STORED, _DEFLATED):
            raise MalformedMessage(f"zip member uses encryption or compression method {method}; only "
                                   "stored and deflate are accepted")
        name = bytes(buf[_LOCAL_HEADER.size:_LOCAL_HEADER.size + name_len])
        self.name = name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
        csize, usize = self._zip64_sizes(bytes(buf[_LOCAL_HEADER.size + name_len:end]), csize, usize)
        self._flags, self._method, self._crc_expected = flags, method, crc
        if not flags & _FLAG_DESCRIPTOR:
            self._remaining = csize
            if usize > self._limits.max_bytes:
                raise ZipBomb(f"the zip member declares {usize} bytes, more than the limit of {self._limits.max_bytes}")
        elif method == _STORED:
            raise MalformedMessage("a stored zip member without sizes cannot be read as a stream")
        del buf[:end]
        self._state = _DATA
        return True

    def _zip64_sizes(self, extra: bytes, csize: int, usize: int) -> tuple[int, int]:
        at = 0
        while at + 4 <= len(extra):
            kind, size = struct.unpack_from("<HH", extra, at)
            if kind == _ZIP64_EXTRA:
                self._zip64 = True
                values = list(struct.unpack_from(f"<{min(size, 16) // 8}Q", extra, at + 4))
                if usize == _MAX32 and values:
                    usize = values.pop(0)
                if csize == _MAX32 and values:
                    csize = values.pop(0)
            at += 4 + size
        return csize, usize

    def _data(self, out: list[bytes]) -> bool:
        buf = self._buf
        take = len(buf) if self._remaining is None else min(len(buf), self._remaining)
        if self._method == _STORED:
            chunk, used = bytes(buf[:take]), take
        else:
            chunk = self._inflate.decompress(bytes(buf[:take]), self._allowance())
            # At the end of the deflate stream both attributes hold the same leftover bytes.
            left = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
            used = take - len(left)
        self._emit(chunk, used, out)
        del buf[:used]
        if self._remaining is not None:
            self._remaining -= used
        if self._member_ended():
            self._state = _TRAILER
            return True
        return bool(chunk) and bool(buf)

    def _allowance(self) -> int:
        # One more byte than allowed, so going over the limit is seen, never written.
        return max(1, min(_SLICE, self._limits.max_bytes - self.size + 1))

    def _emit(self, chunk: bytes, used: int, out: list[bytes]) -> None:
        self.consumed += used
        self.size += len(chunk)
        limits = self._limits
        if self.size > limits.max_bytes:
            raise ZipBomb(f"the zip member inflates beyond {limits.max_bytes} bytes")
        if self.size > limits.ratio_grace and self.size > limits.max_ratio * max(self.consumed, 1):
            raise ZipBomb(f"the zip member inflates more than {limits.max_ratio:g} times its compressed size")
        if chunk:
            self._crc = zlib.crc32(chunk, self._crc)
            out.append(chunk)

    def _member_ended(self) -> bool:
        if self._method == _STORED or self._remaining == 0:
            return self._remaining == 0
        return self._inflate.eof

    def _trailer(self) -> bool:
        buf = self._buf
        if self._flags & _FLAG_DESCRIPTOR:
            size = 4 + (16 if self._zip64 else 8)
            signed = len(buf) >= 4 and struct.unpack_from("<I", buf)[0] == _DESCRIPTOR
            if len(buf) < size + (4 if signed else 0) + 4:
                return False
            crc = struct.unpack_from("<I", buf, 4 if signed else 0)[0]
            del buf[:size + (4 if signed else 0)]
        else:
            crc = self._crc_expected
            if len(buf) < 4:
                return False
        if crc != self._crc:
            raise ChecksumMismatch("the zip member's CRC-32 does not match its data")
        if struct.unpack_from("<I", buf)[0] == _LOCAL:
            raise MalformedMessage("the zip holds more than one member; a transferred file is one member")
        self._state = _DONE
        return True
