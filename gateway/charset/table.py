"""Character profiles of partner systems: ``endpoints.NAME.charset`` and its 外字 (gaiji) table.

A profile names the partner's encoding, its gaiji table and what happens to
a character with no mapping::

    charset: {encoding: cp932, gaiji: gaiji/city-a.csv, unmappable: substitute, reduce: mj}

The gaiji table is a CSV file, one mapping per line: the partner's code in
hexadecimal bytes, then the Unicode character — one code point, or several
separated by blanks for an ideographic variation sequence (an MJ character:
base + ``U+E01xx``) — then an optional note. ``#`` starts a comment line::

    # partner code, Unicode, note
    F040,U+20BB7,𠮷 (つちよし)
    F041,U+845B U+E0100,葛 (MJ variant)
    F042,U+F0001,MJ+ character in the private use area of the standard side

Each line maps both ways. The table is read and checked when the config
loads, so a wrong line is a config error, not a failed exchange: a code is
1 to 4 bytes, starts with a byte ≥ 0x80 and holds no byte below 0x40 (so it
can never be mistaken for, or cut at, an ASCII delimiter), a Unicode side
holds no ASCII, and neither side may appear twice.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.errors import ConfigError

__all__ = ["GaijiTable", "CharsetProfile", "ENCODINGS", "UNMAPPABLE", "REDUCTIONS", "load_gaiji", "profile_from"]

#: Configured encoding → (Python codec, the name written into XML declarations and Content-Type).
ENCODINGS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "utf-8": ("utf-8", "UTF-8"),
    "cp932": ("cp932", "Windows-31J"),
    "euc-jp": ("euc_jp", "EUC-JP"),
    "shift_jis": ("shift_jis", "Shift_JIS"),
    "shift_jis_2004": ("shift_jis_2004", "Shift_JIS-2004"),
    "euc_jis_2004": ("euc_jis_2004", "EUC-JIS-2004"),
})
UNMAPPABLE = ("refuse", "substitute")
#: Configured ``reduce`` values (:mod:`gateway.charset.reduce`).
REDUCTIONS = ("mj",)
_MAX_LINES = 100_000
_CODE = re.compile(r"(?:[0-9A-Fa-f]{2}){1,4}")
_CODE_POINT = re.compile(r"U\+([0-9A-Fa-f]{4,6})")


@dataclass(frozen=True, kw_only=True)
class GaijiTable:
    """Partner code ↔ Unicode, both ways."""

    source: Path
    """The CSV file it was read from."""
    to_partner: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    """Unicode (one character or a variation sequence) → the partner's code."""
    to_unicode: Mapping[bytes, str] = field(default_factory=lambda: MappingProxyType({}))
    """The partner's code → Unicode."""


@dataclass(frozen=True, kw_only=True)
class CharsetProfile:
    """How text bodies to and from one endpoint are converted (``endpoints.NAME.charset``)."""

    encoding: str = "utf-8"
    """The configured name (``cp932``, ``euc-jp``, ``shift_jis``, …); ``utf-8`` converts nothing."""
    gaiji: GaijiTable | None = None
    """The partner's private characters, if it has any."""
    unmappable: str = "refuse"
    """``refuse``: a character with no mapping fails the exchange (422 UnmappableCharacter);
    ``substitute``: it becomes 〓 (U+3013) and is counted in the log record."""
    reduce: str | None = None
    """``mj``: a character the partner lacks and the gaiji table does not name is first reduced by the MJ and
    JIS X 0213 shrink maps (縮退) to one the partner has, counted like a substitution (``unmappable`` applies to
    what does not reduce); absent: no reduction."""

    @property
    def codec(self) -> str:
        return ENCODINGS[self.encoding][0]

    @property
    def label(self) -> str:
        """The charset name written on converted bodies."""
        return ENCODINGS[self.encoding][1]

    @property
    def converts(self) -> bool:
        return self.encoding != "utf-8"


def profile_from(raw: Any, path: str, base: Path) -> CharsetProfile:
    """Validate an ``endpoints.NAME.charset`` mapping; the gaiji file resolves against ``base``."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: must be a mapping like {{encoding: cp932, unmappable: refuse}}")
    unknown = sorted(set(raw) - {"encoding", "gaiji", "unmappable", "reduce"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (expected one of encoding, gaiji, unmappable, "
                          "reduce)")
    encoding = raw.get("encoding")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ConfigError(f"{path}.encoding: must be one of {', '.join(ENCODINGS)}, not {raw.get('encoding')!r}")
    unmappable = raw.get("unmappable", "refuse")
    if unmappable not in UNMAPPABLE:
        raise ConfigError(f"{path}.unmappable: must be refuse or substitute, not {unmappable!r}")
    reduce = raw.get("reduce")
    if reduce is not None and reduce not in REDUCTIONS:
        raise ConfigError(f"{path}.reduce: must be mj (the MJ and JIS X 0213 shrink maps), not {reduce!r}")
    if reduce is not None and encoding == "utf-8":
        raise ConfigError(f"{path}.reduce: a reduction needs a partner encoding other than utf-8")
    gaiji = None
    if "gaiji" in raw:
        if not isinstance(raw["gaiji"], str) or not raw["gaiji"]:
            raise ConfigError(f"{path}.gaiji: must name a CSV file")
        file = Path(raw["gaiji"]) if Path(raw["gaiji"]).is_absolute() else base / raw["gaiji"]
        gaiji = load_gaiji(file, f"{path}.gaiji")
    if gaiji is not None and encoding == "utf-8":
        raise ConfigError(f"{path}.gaiji: a gaiji table needs a partner encoding other than utf-8")
    return CharsetProfile(encoding=encoding, gaiji=gaiji, unmappable=unmappable, reduce=reduce)


def load_gaiji(file: Path, path: str = "gaiji") -> GaijiTable:
    """Read and check a gaiji CSV file (see the module docstring)."""
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {file} as UTF-8: {exc}") from exc
    to_partner: dict[str, bytes] = {}
    to_unicode: dict[bytes, str] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if number > _MAX_LINES:
            raise ConfigError(f"{path}: {file} has more than {_MAX_LINES} lines")
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        where = f"{path}: {file}, line {number}"
        if len(row) < 2:
            raise ConfigError(f"{where}: needs a partner code and a Unicode character")
        code, unicode = _code(row[0].strip(), where), _unicode(row[1].strip(), where)
        if code in to_unicode or unicode in to_partner:
            raise ConfigError(f"{where}: {row[0].strip()} or {row[1].strip()} is already mapped")
        to_unicode[code], to_partner[unicode] = unicode, code
    return GaijiTable(source=file, to_partner=MappingProxyType(to_partner), to_unicode=MappingProxyType(to_unicode))


def _code(text: str, where: str) -> bytes:
    if not _CODE.fullmatch(text):
        raise ConfigError(f"{where}: {text!r} is not a partner code (1 to 4 bytes in hexadecimal, e.g. F040)")
    code = bytes.fromhex(text)
    if code[0] < 0x80 or min(code) < 0x40:
        raise ConfigError(f"{where}: {text} is not a private code (first byte ≥ 80, no byte below 40)")
    return code


def _unicode(text: str, where: str) -> str:
    points = text.split()
    if not 1 <= len(points) <= 4 or not all(_CODE_POINT.fullmatch(p) for p in points):
        raise ConfigError(f"{where}: {text!r} is not a Unicode character (U+20BB7, or U+845B U+E0100 for a "
                          "variation sequence)")
    values = [int(p[2:], 16) for p in points]
    if any(v < 0x80 or 0xD800 <= v <= 0xDFFF or v > 0x10FFFF for v in values):
        raise ConfigError(f"{where}: {text} holds ASCII, a surrogate or no character; only other characters "
                          "may be mapped")
    return "".join(map(chr, values))
