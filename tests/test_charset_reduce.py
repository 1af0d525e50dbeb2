"""``charset.reduce: mj``: MJ and JIS X 0213 characters a partner lacks, reduced by the shrink maps that
jntajis carries, counted like substitutions (issue 23, item 2: "a well-kept library for the MJ/JIS X 0213
reductions").  The cases are tests/data/charset/mj-reductions.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gateway.charset import CharsetProfile, Losses, ToPartner, profile_from
from gateway.charset.reduce import candidates
from gateway.errors import ConfigError, UnmappableCharacter

DATA = Path(__file__).parent / "data" / "charset"


def text_of(points: str) -> str:
    return "".join(chr(int(p[2:], 16)) for p in points.split())


def cases() -> list[tuple[str, str, str]]:
    rows = csv.reader(line for line in (DATA / "mj-reductions.csv").read_text(encoding="utf-8").splitlines()
                      if not line.startswith("#"))
    return [(row[0], text_of(row[1]), text_of(row[2])) for row in rows]


def profile(encoding: str, *, reduce: str | None = "mj", unmappable: str = "refuse",
            gaiji: str | None = None) -> CharsetProfile:
    raw = {"encoding": encoding, "unmappable": unmappable, **({"reduce": reduce} if reduce else {}),
           **({"gaiji": gaiji} if gaiji else {})}
    return profile_from(raw, "endpoints.t.charset", DATA)


def through(converter: ToPartner, data: bytes, size: int) -> bytes:
    out = [converter.feed(data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(out) + converter.finish()


@pytest.mark.parametrize(("encoding", "char", "becomes"), cases())
def test_each_reduction_of_the_data_file(encoding: str, char: str, becomes: str) -> None:
    charset = profile(encoding)
    losses = Losses()
    sent = through(ToPartner(charset, losses=losses, record=True), f"氏名,{char}\n".encode(), 1)
    code = " ".join(f"U+{ord(c):04X}" for c in char)
    if not becomes:  # the partner has it: nothing reduced, nothing counted
        assert sent == f"氏名,{char}\n".encode(charset.codec) and losses.total == 0
        return
    assert sent == f"氏名,{becomes}\n".encode(charset.codec), "refuse applies only to what does not reduce"
    assert losses.counts == {code: 1}, "a reduction is a loss, counted with its code points"
    assert losses.recorded is not None
    assert [(r.line, r.column, r.text, r.becomes) for r in losses.recorded] == [(1, 4, char, becomes)]


@pytest.mark.parametrize(("encoding", "char", "becomes"), [c for c in cases() if c[2]])
def test_without_reduce_the_same_characters_are_unmappable(encoding: str, char: str, becomes: str) -> None:
    with pytest.raises(UnmappableCharacter):
        through(ToPartner(profile(encoding, reduce=None)), char.encode(), 1)


def test_the_gaiji_table_wins_over_the_reduction() -> None:
    # the city's table names 𠮷 (F040) and 葛+U+E0100 (F041): they go as those codes, not reduced, not counted
    losses = Losses()
    charset = profile("cp932", gaiji="gaiji-cp932.csv")
    sent = through(ToPartner(charset, losses=losses), "𠮷田 葛\U000e0100飾 剝".encode(), 1)
    assert sent == b"\xf0\x40" + "田 ".encode("cp932") + b"\xf0\x41" + "飾 剥".encode("cp932")
    assert losses.counts == {"U+525D": 1}, "only 剝, which the table does not name, is reduced"


def test_what_does_not_reduce_is_still_refused_or_substituted() -> None:
    for text, code, column in [("😀", "U+1F600", 2), ("葛\U000e0101", "U+E0101", 3), ("\U000f0001", "U+F0001", 2)]:
        # an emoji, an IVS the MJ map does not reduce, an MJ+ private use character without a table line
        with pytest.raises(UnmappableCharacter) as caught:
            through(ToPartner(profile("shift_jis")), f"髙{text}".encode(), 1)
        assert code in caught.value.reason and caught.value.column == column  # a selector's own column
    losses = Losses()
    sent = through(ToPartner(profile("shift_jis", unmappable="substitute"), losses=losses),
                   "髙😀葛\U000e0101\U000f0001".encode(), 2)
    assert sent.decode("shift_jis") == "高〓葛〓"
    assert losses.counts == {"U+9AD9": 1, "U+1F600": 1, "U+E0101": 1, "U+F0001": 1}


def test_a_variation_sequence_split_across_chunks_reduces_whole() -> None:
    text = "a邊\U000e0108b𠮷\U000e0100c".encode()
    expected = "a邊b吉c".encode("shift_jis")
    for cut in range(1, len(text)):
        losses = Losses()
        converter = ToPartner(profile("shift_jis", unmappable="substitute"), losses=losses)
        assert converter.feed(text[:cut]) + converter.feed(text[cut:]) + converter.finish() == expected
        # 邊+IVS is one reduction; 𠮷+U+E0100 is not in the map: 𠮷 reduces and the selector is dropped
        assert losses.counts == {"U+908A U+E0108": 1, "U+20BB7": 1, "U+E0100": 1}, cut


def test_candidates_are_the_maps_own_and_never_the_character_itself() -> None:
    assert candidates("𠮷") == ("吉",)
    assert candidates("偂")[-1] == "前" and "偂" not in candidates("偂")
    assert candidates("😀") == () and candidates("\U000f0001") == ()


@pytest.mark.parametrize(("raw", "problem"), [
    ({"encoding": "cp932", "reduce": "jis"}, "reduce: must be mj"),
    ({"encoding": "utf-8", "reduce": "mj"}, "needs a partner encoding"),
])
def test_bad_reduce_settings_are_config_errors(raw: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        profile_from(raw, "endpoints.t.charset", DATA)


def test_a_candidate_the_gaiji_table_names_is_carried_in_the_maps_order() -> None:
    # 偂's candidates are 歬 then 前: with the table naming 歬, that one goes, as the partner's own code
    losses = Losses(recorded=[])
    charset = profile("shift_jis", gaiji="gaiji-shift_jis-mj.csv")
    assert through(ToPartner(charset, losses=losses, record=True), "偂".encode(), 1) == b"\xf0\x40"
    assert losses.counts == {"U+5042": 1} and losses.recorded is not None and losses.recorded[0].becomes == "歬"
    assert through(ToPartner(profile("shift_jis")), "偂".encode(), 1) == "前".encode("shift_jis"), "without it: 前"


def test_a_file_converted_for_bmrgw_send_with_the_endpoints_profile_is_reduced_too(tmp_path: Path) -> None:
    # bmrgw send --charset-of NAME takes endpoints.NAME.charset whole, reduce included
    from attachments.transfer.charset import FileCharset, recode_file

    source = tmp_path / "names.csv"
    source.write_text("1,𠮷田\n2,髙橋\n", encoding="utf-8")
    charset = FileCharset(profile=profile("shift_jis"))
    assert charset.describe() == "shift_jis (unmappable: refuse, reduce mj)", "the send's summary line says so"
    used, losses = recode_file(source, tmp_path / "spool", charset, to_partner=True, what="names.csv")
    assert used.read_bytes() == "1,吉田\n2,高橋\n".encode("shift_jis")
    assert losses.summary() == "2 (U+20BB7 ×1, U+9AD9 ×1)"
