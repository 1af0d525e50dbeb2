"""MJ and JIS X 0213 reductions (縮退): a character the partner's encoding lacks, as one it has (issue 23).

With ``endpoints.NAME.charset.reduce: mj`` a character (or an ideographic
variation sequence, base + ``U+E01xx``) on its way to the partner that its
encoding does not have and its gaiji table does not name is looked up in
the published reduction maps that ``jntajis`` (jntajis-python) carries, and
the first candidate the partner can carry is written instead:

1. the MJ shrink map (MJ縮退マップ, 文字情報技術促進協議会), its schemes in
   this order, from the most faithful to the loosest:
   JIS包摂規準・UCS統合規則 (the same character under JIS/UCS unification),
   法務省告示582号別表第四, 法務省戸籍法関連通達・通知, then 読み・字形による類推
   (inference by reading and shape); within a scheme, in the map's order;
2. then the National Tax Agency's JIS shrink map (JIS縮退マップ: JIS X 0213
   → JIS X 0208), which knows characters such as 鷗 → 鴎 or 剝 → 剥.

A candidate is carried when the gaiji table names it or the partner's codec
encodes it; a candidate holding ASCII (which could be markup or syntax in
the body), a private use character (meaningless between two systems) or a
variation selector the table does not name is never taken.  Private use
characters themselves are not reduced: an MJ+ character in the private use
area travels only through the gaiji table.

A reduction is a loss: :mod:`gateway.charset.convert` counts it with its
code points like a substitution, whatever ``unmappable`` says; what does
not reduce stays unmappable (refused or substituted).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

import jntajis

__all__ = ["Reducer", "MJ_SCHEMES", "candidates"]

#: The MJ shrink map's schemes, tried in this order.
MJ_SCHEMES = (jntajis.MJShrinkSchemeCombo.JIS_INCORPORATION_UCS_UNIFICATION_RULE,
              jntajis.MJShrinkSchemeCombo.MOJ_NOTICE_582,
              jntajis.MJShrinkSchemeCombo.MOJ_FAMILY_REGISTER_ACT_RELATED_NOTICE,
              jntajis.MJShrinkSchemeCombo.INFERENCE_BY_READING_AND_GLYPH)
#: Candidates looked at per scheme, and distinct inputs whose answer is kept.
_CANDIDATES = 20
_CACHED = 4096
#: Never a candidate: ASCII, private use characters, variation selectors (unless the gaiji table names them).
_UNSAFE = re.compile("[\x00-\x7f\ue000-\uf8ff\U000f0000-\U0010ffff\ufe00-\ufe0f\U000e0100-\U000e01ef]")


class Reducer:
    """Reductions into one partner's encoding and gaiji table."""

    def __init__(self, codec: str, table: Mapping[str, bytes]) -> None:
        self._codec = codec
        self._table = table

    def reduce(self, text: str) -> tuple[str, bytes] | None:
        """(the candidate, its bytes in the partner's encoding) for ``text``, one character or a variation
        sequence, or ``None`` when no map gives one the partner has."""
        for candidate in candidates(text):
            code = self._table.get(candidate)
            if code is not None:
                return candidate, code
            if _UNSAFE.search(candidate) is None:
                try:
                    return candidate, candidate.encode(self._codec)
                except UnicodeEncodeError:
                    pass
        return None


@lru_cache(maxsize=_CACHED)
def candidates(text: str) -> tuple[str, ...]:
    """What the maps offer for ``text``, best first, without ``text`` itself (the same for every partner)."""
    found: list[str] = []
    for scheme in MJ_SCHEMES:
        found += jntajis.mj_shrink_candidates(text, int(scheme), _CANDIDATES)
    found.append(jntajis.jnta_shrink_translit(text, "\ufffd", True))
    return tuple(dict.fromkeys(c for c in found if c and c != text and len(c) <= 4 and "\ufffd" not in c))
