"""Streaming conversion between UTF-8 and a partner's encoding, with its gaiji table (issue 23).

:class:`ToPartner` turns UTF-8 bytes into the partner's encoding and
:class:`FromPartner` the partner's bytes into UTF-8, chunk by chunk, so a
body of any size converts in bounded memory.  Python's codecs do the work
(C speed for ordinary text); this module adds what they do not know:

* **Character boundaries across chunks.**  A chunk is converted up to its
  last byte that cannot belong to a multi-byte character — an ASCII byte for
  UTF-8 and EUC-JP, a byte below 0x40 (controls, blank, digits, ``,`` ``"``
  ``<`` ``>`` …) for Shift_JIS, whose second bytes include ``@``–``~`` —
  and the rest waits for the next chunk.  So a character, a variation
  sequence or a gaiji code split between two chunks converts as if whole.
  Text with no such byte for :data:`MAX_PENDING` bytes is refused.
* **The gaiji table** wins in both directions, before the codec.
* **Private use code points** that the table does not name have no agreed
  meaning between the two systems (CP932 maps F040–F9FC onto U+E000–U+E757
  by position): they are unmappable, like characters the encoding lacks.
* **Variation selectors** (IVS, ``U+E0100``–``U+E01EF``; ``U+FE00``–``U+FE0F``)
  the table does not name cannot travel: the base character goes on without
  its variant, and that loss is counted.
* **Reductions** (``reduce: mj``, :mod:`gateway.charset.reduce`): a
  character or variation sequence the encoding lacks and the table does not
  name becomes the first candidate of the MJ / JIS X 0213 shrink maps that
  the partner has, counted as a loss (never refused); the table still wins.
* **JIS equivalents.**  The JIS code of 〜 ‖ − ¢ £ ¬ is decoded to different
  Unicode by CP932 (U+FF5E …) and by Shift_JIS/EUC-JP (U+301C …); either form
  is written as that one JIS code, uncounted, since the partner receives the
  very code it would have written itself.

A character with no mapping either fails the conversion
(:class:`~gateway.errors.UnmappableCharacter`, naming the character, its
line, column and character offset — byte offset for the partner's side) or,
with ``unmappable: substitute``, becomes :data:`SUBSTITUTE`; every loss is
counted by code point (partner codes as ``0xF040``) in :class:`Losses`, and
with ``record`` kept as a :class:`Loss` for ``bmrgw charset check``.
"""

from __future__ import annotations

import codecs
import contextvars
import re
from collections import Counter
from dataclasses import dataclass, field

from gateway.errors import MalformedMessage, UnmappableCharacter

from .reduce import Reducer
from .table import CharsetProfile

__all__ = ["ToPartner", "FromPartner", "Losses", "Loss", "SUBSTITUTE", "MAX_PENDING", "code_points"]

#: What an unmappable character becomes with ``unmappable: substitute``: 〓 (GETA MARK), in every JIS encoding.
SUBSTITUTE = "\u3013"
#: Bytes held back at most while waiting for a character boundary.
MAX_PENDING = 1024 * 1024
#: Most losses kept one by one for ``record`` (the counts go on).
MAX_RECORDED = 100_000

_HIGH = bytes(range(0x80, 0x100))
_SJIS_INNER = bytes(range(0x40, 0x100))
_PRIVATE = "\ue000-\uf8ff\U000f0000-\U0010ffff"
_SELECTORS = "\ufe00-\ufe0f\U000e0100-\U000e01ef"
_PRIVATE_RE = re.compile(f"[{_PRIVATE}]")
#: Every byte but CP932's lead bytes of its user-defined area (F040-F9FC, decoded to U+E000-U+E757).
_NOT_CP932_PRIVATE = bytes(b for b in range(256) if not 0xF0 <= b <= 0xF9)
_SELECTOR_RE = re.compile(f"[{_SELECTORS}]")
#: The same JIS code as CP932 decodes it, and as Shift_JIS / EUC-JP do.
_CP932_FORMS = "\uff5e\u2225\uff0d\uffe0\uffe1\uffe2"
_JIS_FORMS = "\u301c\u2016\u2212\u00a2\u00a3\u00ac"


def code_points(text: str) -> str:
    return " ".join(f"U+{ord(c):04X}" for c in text)


@dataclass(frozen=True)
class Loss:
    """One character that did not survive, where it was and what it became."""

    position: int
    """Character offset (to the partner) or byte offset (from the partner) in the body, from 0."""
    line: int
    column: int
    text: str
    """The character (or variation sequence); for the partner's side, its code as ``<F040>``."""
    code: str
    """``U+20BB7`` (``U+845B U+E0100``), or the partner's code ``0xF040``."""
    becomes: str
    """What was written instead (``〓``, or the base character of a dropped variant)."""


@dataclass
class Losses:
    """Every character that did not survive one body, counted by code point."""

    counts: Counter[str] = field(default_factory=Counter)
    recorded: list[Loss] | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """``3 (U+20BB7 ×2, 0xF040 ×1)``, or ``""`` when nothing was lost: the log record's value."""
        if not self.counts:
            return ""
        return f"{self.total} ({', '.join(f'{code} ×{n}' for code, n in self.counts.most_common())})"


class _Converter:
    """What both directions share: held-back bytes, positions, the loss policy."""

    def __init__(self, profile: CharsetProfile, *, losses: Losses | None = None, record: bool = False,
                 destination: str | None = None) -> None:
        if not profile.converts:
            raise ValueError("a utf-8 profile converts nothing")
        self.profile = profile
        self.codec = profile.codec
        self.losses = losses if losses is not None else Losses()
        if record and self.losses.recorded is None:
            self.losses.recorded = []
        self._destination = destination
        self._pending = b""
        self._offset = 0  # characters (to the partner) or bytes (from it) before the current piece
        self._line = 1
        self._line_start = 0  # offset where the current line began

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        cut = self._cut(data)
        if cut == 0 and len(data) > MAX_PENDING:
            raise MalformedMessage(f"no character boundary in {MAX_PENDING} bytes of {self._source_name()} text")
        self._pending = data[cut:]
        return self._convert(data[:cut] if cut < len(data) else data) if cut else b""

    def finish(self) -> bytes:
        data, self._pending = self._pending, b""
        return self._convert(data) if data else b""

    def _advance(self, piece: str | bytes, newline: str | bytes) -> None:
        lines = piece.count(newline)  # type: ignore[arg-type]
        if lines:
            self._line += lines
            self._line_start = self._offset + piece.rfind(newline) + 1  # type: ignore[arg-type]
        self._offset += len(piece)

    def _where(self, piece: str | bytes, index: int, newline: str | bytes) -> tuple[int, int, int]:
        """Offset, line and column (1-based) of ``piece[index]``."""
        before = piece.count(newline, 0, index)  # type: ignore[arg-type]
        if before:
            column = index - piece.rfind(newline, 0, index)  # type: ignore[arg-type]
        else:
            column = self._offset + index - self._line_start + 1
        return self._offset + index, self._line + before, column

    def _lost(self, where: tuple[int, int, int], text: str, code: str, becomes: str) -> str:
        """Count a loss and return its replacement, or raise UnmappableCharacter (``refuse``)."""
        position, line, column = where
        if self.profile.unmappable == "refuse":
            raise UnmappableCharacter(
                f"{text!r} ({code}) at line {line}, column {column} (offset {position}) has no mapping "
                f"{self._direction()} ({self.profile.encoding}); unmappable: refuse",
                character=text, position=position, line=line, column=column, destination=self._destination)
        return self._count(where, text, code, becomes)

    def _count(self, where: tuple[int, int, int], text: str, code: str, becomes: str) -> str:
        """Count a loss (a substitution, a dropped selector, a reduction) and return its replacement."""
        position, line, column = where
        self.losses.counts[code] += 1
        recorded = self.losses.recorded
        if recorded is not None and len(recorded) < MAX_RECORDED:
            recorded.append(Loss(position=position, line=line, column=column, text=text, code=code, becomes=becomes))
        return becomes

    def _cut(self, data: bytes) -> int:
        raise NotImplementedError

    def _convert(self, data: bytes) -> bytes:
        raise NotImplementedError

    def _source_name(self) -> str:
        raise NotImplementedError

    def _direction(self) -> str:
        raise NotImplementedError


class ToPartner(_Converter):
    """UTF-8 → the partner's encoding."""

    def __init__(self, profile: CharsetProfile, *, losses: Losses | None = None, record: bool = False,
                 destination: str | None = None) -> None:
        super().__init__(profile, losses=losses, record=record, destination=destination)
        table = profile.gaiji.to_partner if profile.gaiji is not None else {}
        self._table = table
        self._lengths = sorted({len(k) for k in table}, reverse=True)
        firsts = "".join(sorted({re.escape(k[0]) for k in table}))
        self._reducer = Reducer(self.codec, table) if profile.reduce else None
        self._special = re.compile(f"[{_PRIVATE}{_SELECTORS}{firsts}]")
        cp932 = self.codec == "cp932"
        self._equivalent = str.maketrans(_JIS_FORMS, _CP932_FORMS) if cp932 else str.maketrans(_CP932_FORMS,
                                                                                                 _JIS_FORMS)

    def _source_name(self) -> str:
        return "UTF-8"

    def _direction(self) -> str:
        return "in the partner's encoding"

    def _cut(self, data: bytes) -> int:
        return len(data.rstrip(_HIGH))

    def _convert(self, data: bytes) -> bytes:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"the body is not UTF-8: {exc.reason} at byte {self._offset + exc.start}") from exc
        out = self._encode(text)
        self._advance(text, "\n")
        return out

    def _encode(self, text: str) -> bytes:
        if self._special.search(text) is None:  # str regex: ~0.5 GB/s, where max() manages 0.08
            try:
                return text.encode(self.codec)
            except UnicodeEncodeError:
                pass
        out = bytearray()
        i = 0
        while i < len(text):
            match = self._special.search(text, i)
            end = match.start() if match else len(text)
            if match is not None and end > i and self._reducer is not None and _SELECTOR_RE.match(text, end):
                end -= 1  # a reduction takes a variation sequence whole: from its base
            self._plain(text, i, end, out)
            if match is None:
                break
            i = self._special_at(text, end, out)
        return bytes(out)

    def _plain(self, text: str, start: int, end: int, out: bytearray) -> None:
        """Encode ``text[start:end]`` (no gaiji, private or selector characters in it)."""
        while start < end:
            try:
                out += text[start:end].encode(self.codec)
                return
            except UnicodeEncodeError as exc:
                out += text[start:start + exc.start].encode(self.codec)
                for k in range(start + exc.start, start + exc.end):
                    out += self._fallback(text, k)
                start += exc.end

    def _fallback(self, text: str, k: int) -> bytes:
        char = text[k]
        equivalent = char.translate(self._equivalent)
        if equivalent != char:
            try:
                return equivalent.encode(self.codec)
            except UnicodeEncodeError:
                pass
        reduced = self._reduced(text, k, char)
        if reduced is not None:
            return reduced
        return self._lost(self._where(text, k, "\n"), char, code_points(char), SUBSTITUTE).encode(self.codec)

    def _reduced(self, text: str, k: int, sequence: str) -> bytes | None:
        """``sequence`` (at ``text[k]``) reduced to what the partner has, counted; ``None`` when it is not."""
        found = self._reducer.reduce(sequence) if self._reducer is not None else None
        if found is None:
            return None
        self._count(self._where(text, k, "\n"), sequence, code_points(sequence), found[0])
        return found[1]

    def _special_at(self, text: str, j: int, out: bytearray) -> int:
        for n in self._lengths:
            code = self._table.get(text[j:j + n])
            if code is not None:
                out += code
                return j + n
        if self._reducer is not None and _SELECTOR_RE.match(text, j + 1) and not _PRIVATE_RE.match(text, j):
            reduced = self._reduced(text, j, text[j:j + 2])
            if reduced is not None:
                out += reduced
                return j + 2
        char = text[j]
        if _SELECTOR_RE.match(char):
            base = text[j - 1] if j else ""
            self._lost(self._where(text, j, "\n"), base + char, code_points(char), base)
        elif _PRIVATE_RE.match(char):
            out += self._lost(self._where(text, j, "\n"), char, code_points(char), SUBSTITUTE).encode(self.codec)
        else:  # the start of a gaiji sequence, here without the rest of it
            self._plain(text, j, j + 1, out)
        return j + 1


class FromPartner(_Converter):
    """The partner's encoding → UTF-8."""

    def __init__(self, profile: CharsetProfile, *, losses: Losses | None = None, record: bool = False,
                 destination: str | None = None) -> None:
        super().__init__(profile, losses=losses, record=record, destination=destination)
        self._table = profile.gaiji.to_unicode if profile.gaiji is not None else {}
        self._lengths = sorted({len(k) for k in self._table}, reverse=True)
        self._inner = _SJIS_INNER if "shift_jis" in self.codec or self.codec == "cp932" else _HIGH
        self._cp932 = self.codec == "cp932"

    def _no_private(self, data: bytes) -> bool:
        """Surely no private use character made by the codec from ``data``: only CP932 makes them (from
        F040-F9FC), so a C-speed look at its bytes does."""
        return not self._cp932 or not data.translate(None, _NOT_CP932_PRIVATE)

    def _source_name(self) -> str:
        return self.profile.encoding

    def _direction(self) -> str:
        return "in Unicode"

    def _cut(self, data: bytes) -> int:
        return len(data.rstrip(self._inner))

    def _convert(self, data: bytes) -> bytes:
        token = _DECODING.set(self)
        try:
            text = data.decode(self.codec, _HANDLER)  # one pass: undecodable codes go to _undecodable
        finally:
            _DECODING.reset(token)
        if not self._no_private(data):
            text = self._private(text, data)
        self._advance(data, b"\n")
        return text.encode("utf-8")

    def _undecodable(self, error: UnicodeDecodeError) -> tuple[str, int]:
        data, start = error.object, error.start
        for n in self._lengths:
            text = self._table.get(data[start:start + n])
            if text is not None:
                return text, start + n
        code = data[start:error.end].hex().upper()
        return self._lost(self._where(data, start, b"\n"), f"<{code}>", f"0x{code}", SUBSTITUTE), error.end

    def _private(self, text: str, data: bytes) -> str:
        """Private use characters the codec made of partner codes (CP932's F040-F9FC): the table's, or lost."""
        cursor = 0

        def replace(found: re.Match[str]) -> str:
            nonlocal cursor
            char = found.group()
            try:
                code = char.encode(self.codec)
            except UnicodeEncodeError:  # not the codec's: a table put it there
                return char
            mapped = self._table.get(code)
            at = data.find(code, cursor)
            cursor = at + len(code) if at >= 0 else cursor
            if mapped is not None:
                return mapped
            return self._lost(self._where(data, max(at, 0), b"\n"), f"<{code.hex().upper()}>",
                              f"0x{code.hex().upper()}", SUBSTITUTE)

        return _PRIVATE_RE.sub(replace, text)


def _handle(error: UnicodeError) -> tuple[str, int]:
    converter = _DECODING.get()
    if not isinstance(error, UnicodeDecodeError) or converter is None:
        raise error
    return converter._undecodable(error)


#: The converter decoding in this thread or task, for the codec error handler.
_DECODING: contextvars.ContextVar[FromPartner | None] = contextvars.ContextVar("bmrgw_charset", default=None)
_HANDLER = "bmrgw-charset"
codecs.register_error(_HANDLER, _handle)
