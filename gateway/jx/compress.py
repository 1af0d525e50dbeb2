"""JX ``compressType`` for ``bmrgw poll``: gzip and zip, both ways, streamed (issue 21, item 5).

The JX WSDLs (2004 and 2007 editions) declare ``compressType`` as a free
``xs:string``; the values met in the field are empty (not compressed),
``gzip`` and ``zip``.  The gateway itself stores and returns ``data`` and
``compressType`` exactly as they were put (the relay never unpacks or
re-encodes); only the end points compress and decompress:

* uploading, a partner with ``compression: gzip`` or ``zip`` compresses each
  outbox file chunk by chunk into a hidden temporary file next to it (zip: one
  member, named as the file, ZIP64 — :class:`attachments.zipstream.ZipWriter`)
  and puts that with ``compressType`` ``gzip`` or ``zip``;
* receiving, a document whose ``compressType`` is ``gzip`` or ``zip`` is
  inflated chunk by chunk from the verified download into a new hidden file,
  under the file-transfer zip-bomb limits (:class:`attachments.zipstream.ZipLimits`:
  never more than ``max_bytes``, never more than ``max_ratio`` × the compressed
  size once past the first MiB).  An unknown ``compressType`` is not guessed
  at: the document is left unconfirmed and reported.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

from attachments.zipstream import ZipLimits, ZipReader, ZipWriter

from ..errors import ChecksumMismatch, MalformedMessage, MessageTooLarge, ZipBomb
from .failure import Kind, RoundFailure, fit, storage_failure
from .wire import Spool, SpoolWriter

__all__ = ["COMPRESSIONS", "compress_type", "compressed", "inflate"]

#: The compressions a partner may upload with, as they are written in ``compressType``.
COMPRESSIONS = ("gzip", "zip")
_NONE = ("", "none", "0", "no")
_ALIASES = {"gzip": "gzip", "gz": "gzip", "zip": "zip"}
_CHUNK = 1024 * 1024


def compress_type(value: str) -> str | None:
    """``gzip``, ``zip`` or ``""`` (none) for a received ``compressType``; None when it is unknown."""
    word = value.strip().lower()
    if word in _NONE:
        return ""
    return _ALIASES.get(word)


def compressed(path: Path, kind: str) -> Iterator[bytes]:
    """The file at ``path`` compressed as ``kind`` (``gzip`` or ``zip``), chunk by chunk."""
    with path.open("rb") as fh:
        if kind == "zip":
            writer = ZipWriter(path.name, mtime=path.stat().st_mtime)
            yield writer.start()
            while chunk := fh.read(_CHUNK):
                yield writer.write(chunk)
            yield writer.finish()
            return
        gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
        while chunk := fh.read(_CHUNK):
            yield gzip.compress(chunk)
        yield gzip.flush()


def inflate(spool: Spool, kind: str, folder: Path, limits: ZipLimits) -> Spool:
    """The decompressed content of ``spool`` in a new hidden file in ``folder``; ``spool`` is discarded.

    Raises a ``compression`` :class:`RoundFailure` when the content is not a
    well-formed ``kind`` stream or would inflate beyond ``limits``.
    """
    out = SpoolWriter(folder, limit=limits.max_bytes, prefix=".bmrgw-")
    try:
        with spool.path.open("rb") as fh:
            pieces = iter(lambda: fh.read(_CHUNK), b"")
            for chunk in (_unzip(pieces, limits) if kind == "zip" else _gunzip(pieces, limits)):
                out.write(chunk)
        return out.finish()
    except (MalformedMessage, ChecksumMismatch, ZipBomb, MessageTooLarge) as exc:
        out.abort()
        raise RoundFailure(Kind.COMPRESSION, f"the {kind} document does not decompress: {fit(exc.reason)}") from exc
    except zlib.error as exc:
        out.abort()
        raise RoundFailure(Kind.COMPRESSION, f"the {kind} document does not decompress: {fit(str(exc))}") from exc
    except OSError as exc:
        out.abort()
        raise storage_failure(exc, f"cannot decompress into {folder}") from exc
    except BaseException:
        out.abort()
        raise
    finally:
        spool.discard()


def _unzip(pieces: Iterator[bytes], limits: ZipLimits) -> Iterator[bytes]:
    reader = ZipReader(limits)
    for piece in pieces:
        yield from reader.feed(piece)
    reader.close()


def _gunzip(pieces: Iterator[bytes], limits: ZipLimits) -> Iterator[bytes]:
    """One gzip member, inflated at most 1 MiB per step; the same limits as a zip member."""
    inflater = zlib.decompressobj(31)
    size = consumed = 0
    for piece in pieces:
        data = piece
        while data:
            if inflater.eof:
                raise MalformedMessage("the gzip stream has data after its end")
            chunk = inflater.decompress(data, max(1, min(_CHUNK, limits.max_bytes - size + 1)))
            consumed += len(data) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
            data = inflater.unconsumed_tail or inflater.unused_data
            size += len(chunk)
            _check(size, consumed, limits)
            yield chunk
    if not inflater.eof:
        raise MalformedMessage("the gzip stream is truncated")


def _check(size: int, consumed: int, limits: ZipLimits) -> None:
    if size > limits.max_bytes:
        raise ZipBomb(f"the gzip content inflates beyond {limits.max_bytes} bytes")
    if size > limits.ratio_grace and size > limits.max_ratio * max(consumed, 1):
        raise ZipBomb(f"the gzip content inflates more than {limits.max_ratio:g} times its compressed size")
