"""Character conversion of transferred files at their two ends (issue 23, SPEC.md "HTTP APIs and character sets").

The gateway cannot convert a ``PutFilePart`` in flight: each part's SHA-256
and the file's are declared over the bytes sent, and a multi-byte character
may straddle two parts.  So a CSV or fixed-length file is converted where it
starts and where it ends, with the gateway's own character profiles
(:mod:`gateway.charset`: the codecs, the gaiji table, ``unmappable``):

* ``bmrgw send --charset cp932`` converts the UTF-8 file to the partner's
  encoding into a private spool file *before* hashing and cutting it, so
  every SHA-256 is over the bytes the partner gets (and a rerun, converting
  the same way, resumes the same transfer);
* ``bmrgw receive --charset cp932`` converts the partner's verified bytes to
  UTF-8 in its staging folder *before* publishing them.

A leading UTF-8 byte order mark is dropped on the way to the partner (no
JIS encoding has one; Excel writes it).  ``--record-bytes N`` checks a
fixed-length file: every record — a line without its LF or CRLF, the last
one with or without — is N bytes in the partner's encoding: after
conversion when sending, before it when receiving.  Records are split at
0x0A, which is never part of a multi-byte character in any of the encodings
(nor of a gaiji code, whose bytes are all 0x40 or above).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.charset import CharsetProfile, FromPartner, Losses, ToPartner, load_gaiji
from gateway.charset.table import ENCODINGS, UNMAPPABLE
from gateway.durable import private_open
from gateway.errors import ConfigError, RecordLengthMismatch, UsageError

__all__ = ["FileCharset", "Records", "recode_file", "add_charset_options", "file_charset", "summary"]

_CHUNK = 1 << 18  # 256 KiB: as fast as 1 MiB, and ~13 MB less peak RSS in the receiver (its decoded text is UCS-4)
_BOM = b"\xef\xbb\xbf"
_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@dataclass(frozen=True, kw_only=True)
class FileCharset:
    """How a transferred file is converted and checked at one end."""

    profile: CharsetProfile | None = None
    """The partner's character profile; ``None`` (or ``utf-8``): the bytes are not converted."""
    record_bytes: int | None = None
    """Every record is this many bytes in the partner's encoding (a fixed-length file)."""

    @property
    def converts(self) -> bool:
        return self.profile is not None and self.profile.converts

    def describe(self) -> str:
        """``cp932 (unmappable: refuse, gaiji city-a.csv), 120-byte records`` for messages."""
        parts = []
        if self.profile is not None and self.converts:
            gaiji = f", gaiji {self.profile.gaiji.source.name}" if self.profile.gaiji is not None else ""
            reduce = f", reduce {self.profile.reduce}" if self.profile.reduce else ""
            parts.append(f"{self.profile.encoding} (unmappable: {self.profile.unmappable}{gaiji}{reduce})")
        if self.record_bytes is not None:
            parts.append(f"{self.record_bytes}-byte records")
        return ", ".join(parts)


class Records:
    """Checks that every record of a byte stream fed in pieces is ``size`` bytes (LF or CRLF ends)."""

    def __init__(self, size: int, what: str) -> None:
        self.size = size
        self._what = what
        self._number = 0  # records finished
        self._length = 0  # bytes of the current record so far, a CR at its end included
        self._cr = False  # the current record so far ends with CR

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        if len(lines) > 1:
            first = lines[0]
            self._end(self._length + len(first), first.endswith(b"\r") if first else self._cr)
            size = self.size
            for line in lines[1:-1]:
                if len(line) == size and line[-1] != 13:  # the usual case, kept cheap
                    self._number += 1
                else:
                    self._end(len(line), line.endswith(b"\r"))
            self._length, self._cr = 0, False
        if lines[-1]:
            self._length += len(lines[-1])
            self._cr = lines[-1].endswith(b"\r")

    def finish(self) -> None:
        if self._length:  # a last record without a line end
            self._end(self._length, self._cr)

    def _end(self, length: int, cr: bool) -> None:
        length -= 1 if cr else 0
        self._number += 1
        if length != self.size:
            raise RecordLengthMismatch(
                f"{self._what + ': ' if self._what else ''}record {self._number} is {length} bytes, not {self.size} "
                "(--record-bytes)",
                record=self._number, length=length, expected=self.size)


def summary(losses: Losses, most: int = 20) -> str:
    """:meth:`Losses.summary` (``4 (U+1F600 ×2, 0xF050 ×2)``) naming at most ``most`` code points: a partner's
    file may hold thousands of different unmappable codes, and this goes on one log line."""
    if len(losses.counts) <= most:
        return losses.summary()
    named = ", ".join(f"{code} ×{n}" for code, n in losses.counts.most_common(most))
    return f"{losses.total} ({named}, and {len(losses.counts) - most} more code points)"


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def recode_file(source: Path, target: Path, charset: FileCharset, *, to_partner: bool,
                what: str) -> tuple[Path, Losses]:
    """``source`` converted into ``target`` (a new private file, fsync'ed), records checked; (the file to use
    — ``source`` itself when nothing converts —, what was lost).  Raises UnmappableCharacter (``refuse``),
    MalformedMessage (not the encoding) or RecordLengthMismatch (naming ``what``); ``target`` is removed then."""
    losses = Losses()
    records = Records(charset.record_bytes, what) if charset.record_bytes is not None else None
    if not charset.converts:
        if records is not None:
            for chunk in _read(source):
                records.feed(chunk)
            records.finish()
        return source, losses
    assert charset.profile is not None
    converter = (ToPartner if to_partner else FromPartner)(charset.profile, losses=losses)
    before, after = (None, records) if to_partner else (records, None)
    try:
        with os.fdopen(private_open(target, _NEW), "wb") as out:
            for chunk in _pieces(source, to_partner):
                if before is not None:
                    before.feed(chunk)
                converted = converter.feed(chunk)
                if after is not None:
                    after.feed(converted)
                out.write(converted)
            converted = converter.finish()
            if after is not None:
                after.feed(converted)
            out.write(converted)
            if records is not None:
                records.finish()
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target, losses


def _pieces(source: Path, to_partner: bool) -> Iterator[bytes]:
    """The file's chunks; on the way to the partner without a leading UTF-8 byte order mark."""
    chunks = _read(source)
    first = next(chunks, b"")
    yield first.removeprefix(_BOM) if to_partner else first
    yield from chunks


def add_charset_options(parser: argparse.ArgumentParser, *, sending: bool) -> None:
    """``--charset``, ``--gaiji``, ``--unmappable``, ``--charset-of`` and ``--record-bytes``."""
    group = parser.add_argument_group(
        "character conversion (CSV and fixed-length files for a partner in CP932, EUC-JP or Shift_JIS)",
        "FILE (UTF-8) is converted to the partner's encoding before it is hashed and cut into parts, so "
        "every checksum is over the bytes the partner gets; a leading UTF-8 BOM is dropped." if sending else
        "Each file (in the partner's encoding) is converted to UTF-8 after its size and SHA-256 are verified "
        "and before it is published; a file that cannot be converted is refused (the sender of its last part "
        "gets the fault) and nothing appears in DIR.")
    group.add_argument("--charset", choices=[e for e in ENCODINGS if e != "utf-8"], metavar="ENCODING",
                       help=f"the partner's encoding: {', '.join(e for e in ENCODINGS if e != 'utf-8')}")
    group.add_argument("--gaiji", type=Path, metavar="CSV",
                       help="the partner's gaiji table (partner code,U+XXXX per line, as endpoints.NAME.charset.gaiji)")
    group.add_argument("--unmappable", choices=UNMAPPABLE,
                       help="a character with no mapping: refuse (default; " +
                       ("exit 2, nothing sent" if sending else "the transfer is refused with 422 "
                        "UnmappableCharacter") + ") or substitute (〓 U+3013, counted with its code point " +
                       ("on stderr)" if sending else "in the log and .bmrgw-partial/<fileId>/converted.json)"))
    group.add_argument("--charset-of", metavar="NAME",
                       help="take the whole profile (encoding, gaiji, unmappable, and reduce) from "
                       "endpoints.NAME.charset in --config instead of the three options above")
    group.add_argument("--record-bytes", type=int, metavar="N",
                       help="fixed-length records: every line (without LF or CRLF) must be N bytes in the "
                       "partner's encoding, " + ("after conversion" if sending else "as received, before "
                                                 "conversion") + "; else refused naming the record")


def file_charset(args: argparse.Namespace) -> FileCharset | None:
    """The options of :func:`add_charset_options` checked; raises UsageError (exit 2)."""
    if args.record_bytes is not None and args.record_bytes < 1:
        raise UsageError("--record-bytes must be a positive number of bytes")
    try:
        profile = _from_endpoint(args) if args.charset_of else _from_options(args)
    except ConfigError as exc:
        raise UsageError(exc.reason) from exc
    if profile is None and args.record_bytes is None:
        return None
    return FileCharset(profile=profile, record_bytes=args.record_bytes)


def _from_options(args: argparse.Namespace) -> CharsetProfile | None:
    if args.charset is None:
        if args.gaiji is not None or args.unmappable is not None:
            raise UsageError("--gaiji and --unmappable need --charset ENCODING (or --charset-of NAME)")
        return None
    gaiji = load_gaiji(args.gaiji, "--gaiji") if args.gaiji is not None else None
    return CharsetProfile(encoding=args.charset, gaiji=gaiji, unmappable=args.unmappable or "refuse")


def _from_endpoint(args: argparse.Namespace) -> CharsetProfile:
    from routing.config import UrlEndpoint, load_config

    if args.charset is not None or args.gaiji is not None or args.unmappable is not None:
        raise UsageError("--charset-of NAME takes the whole profile from the config: give it without --charset, "
                         "--gaiji or --unmappable")
    endpoint = load_config(args.config).endpoints.get(args.charset_of)
    if endpoint is None:
        raise UsageError(f"--charset-of: no endpoint named {args.charset_of!r} in {args.config}")
    profile = endpoint.charset if isinstance(endpoint, UrlEndpoint) else None
    if profile is None or not profile.converts:
        raise UsageError(f"--charset-of: endpoint {args.charset_of!r} in {args.config} has no converting "
                         "charset (endpoints.NAME.charset.encoding other than utf-8)")
    return profile
