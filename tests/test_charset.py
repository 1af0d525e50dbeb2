"""Character profiles: UTF-8 ↔ CP932 / EUC-JP / Shift_JIS with gaiji tables, streamed (issue 23, item 2).

The expected partner bytes in tests/data/charset were written by iconv (glibc), not by Python's codecs."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.charset import CharsetProfile, FromPartner, Losses, ToPartner, load_gaiji, profile_from
from gateway.errors import ConfigError, MalformedMessage, UnmappableCharacter

DATA = Path(__file__).parent / "data" / "charset"
ENCODINGS = ("cp932", "euc-jp", "shift_jis")
#: The JIS codes that CP932 decodes to other Unicode than Shift_JIS and EUC-JP do (〜 ‖ − ¢ £ ¬).
CP932_FORMS = str.maketrans("\u301c\u2016\u2212\u00a2\u00a3\u00ac", "\uff5e\u2225\uff0d\uffe0\uffe1\uffe2")


def profile(encoding: str, *, gaiji: str | None = None, unmappable: str = "refuse") -> CharsetProfile:
    raw = {"encoding": encoding, "unmappable": unmappable, **({"gaiji": gaiji} if gaiji else {})}
    return profile_from(raw, "endpoints.t.charset", DATA)


def through(converter: ToPartner | FromPartner, data: bytes, size: int) -> bytes:
    """``data`` fed in chunks of ``size`` bytes."""
    out = [converter.feed(data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(out) + converter.finish()


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("size", [1, 2, 3, 7, 4096, 1 << 20])
def test_the_jis_x_0208_set_round_trips(encoding: str, size: int) -> None:
    text = (DATA / "jisx0208.txt").read_bytes()
    expected = (DATA / f"jisx0208.{encoding}").read_bytes()
    assert len(text.decode().replace("\n", "")) == 6879, "all of JIS X 0208:1997"
    assert through(ToPartner(profile(encoding)), text, size) == expected
    back = through(FromPartner(profile(encoding)), expected, size).decode()
    assert back == (text.decode().translate(CP932_FORMS) if encoding == "cp932" else text.decode())


@pytest.mark.parametrize("size", [1, 5, 1 << 16])
def test_nec_and_ibm_extensions_of_cp932(size: int) -> None:
    text = (DATA / "nec-ibm.txt").read_text(encoding="utf-8")
    written = (DATA / "nec-ibm.cp932").read_bytes()
    assert through(FromPartner(profile("cp932")), written, size).decode() == text
    sent = through(ToPartner(profile("cp932")), text.encode(), size)
    assert through(FromPartner(profile("cp932")), sent, size).decode() == text
    for char in "①㈱髙":
        assert char in text
    losses = Losses()
    through(ToPartner(profile("shift_jis", unmappable="substitute"), losses=losses), "①㈱髙".encode(), 1)
    assert losses.counts == {"U+2460": 1, "U+3231": 1, "U+9AD9": 1}, "plain Shift_JIS has none of them"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_half_width_katakana(encoding: str) -> None:
    text = (DATA / "halfwidth-kana.txt").read_bytes()
    written = (DATA / f"halfwidth-kana.{encoding}").read_bytes()
    assert through(ToPartner(profile(encoding)), text, 1) == written
    assert through(FromPartner(profile(encoding)), written, 1) == text


@pytest.mark.parametrize(("encoding", "codes"), [
    ("cp932", (b"\xf0\x40", b"\xf0\x41", b"\xf0\x42")),
    ("euc-jp", (b"\xf5\xa1", b"\xf5\xa2", b"\xf5\xa3")),
])
@pytest.mark.parametrize("size", [1, 2, 3, 1024])
def test_a_gaiji_table_with_private_codes_and_variation_sequences(encoding: str, codes: tuple[bytes, ...],
                                                                   size: int) -> None:
    charset = profile(encoding, gaiji=f"gaiji-{encoding}.csv")
    text = (DATA / "gaiji-sample.txt").read_text(encoding="utf-8")
    codec = charset.codec
    expected = (text.replace("\U00020bb7", "\0").replace("\u845b\U000e0100", "\1").replace("\U000f0001", "\2")
                .encode(codec).replace(b"\0", codes[0]).replace(b"\1", codes[1]).replace(b"\2", codes[2]))
    losses = Losses()
    sent = through(ToPartner(charset, losses=losses), text.encode(), size)
    assert sent == expected and losses.total == 0
    assert through(FromPartner(charset, losses=losses), sent, size).decode() == text and losses.total == 0


def test_the_table_wins_over_the_codec_where_the_partner_has_its_own_codes() -> None:
    charset = profile("shift_jis", gaiji="gaiji-shift_jis.csv")
    assert through(ToPartner(charset), "①② ㈱".encode(), 1) == b"\x87\x40\x87\x41 \x87\x8d"
    assert through(FromPartner(charset), b"\x87\x40\x87\x41 \x87\x8d", 1).decode() == "①② ㈱"


def test_private_codes_without_a_table_entry_are_not_guessed() -> None:
    # CP932 decodes F040-F9FC to U+E000... by position; without the table that means nothing.
    losses = Losses()
    back = through(FromPartner(profile("cp932", unmappable="substitute"), losses=losses, record=True),
                   b"abc,\xf0\x44\r\n", 1)
    assert back.decode() == "abc,〓\r\n"
    assert losses.counts == {"0xF044": 1}
    assert losses.recorded is not None and (losses.recorded[0].position, losses.recorded[0].column) == (4, 5)
    with pytest.raises(UnmappableCharacter):
        through(ToPartner(profile("cp932")), "\ue000".encode(), 1)


@pytest.mark.parametrize("size", [1, 3, 1 << 16])
def test_substitute_counts_every_loss_with_its_code_point(size: int) -> None:
    losses = Losses()
    charset = profile("cp932", gaiji="gaiji-cp932.csv", unmappable="substitute")
    sent = through(ToPartner(charset, losses=losses, record=True), (DATA / "unmappable.txt").read_bytes(), size)
    assert losses.counts == {"U+1F600": 1, "U+E0101": 1, "U+E000": 1, "U+2000B": 1}
    assert losses.summary().startswith("4 (")
    assert sent.decode("cp932").splitlines() == ["id,name", "1,高橋 〓", "2,葛飾", "3,〓", "4,〓 ①"]
    assert losses.recorded is not None
    where = [(loss.line, loss.column, loss.code, loss.becomes) for loss in losses.recorded]
    assert where == [(2, 6, "U+1F600", "〓"), (3, 4, "U+E0101", "葛"), (4, 3, "U+E000", "〓"),
                     (5, 3, "U+2000B", "〓")]


def test_refuse_names_the_first_character_and_where_it_is() -> None:
    converter = ToPartner(profile("cp932", gaiji="gaiji-cp932.csv"), destination="juki")
    with pytest.raises(UnmappableCharacter) as caught:
        through(converter, (DATA / "unmappable.txt").read_bytes(), 4)
    error = caught.value
    assert (error.character, error.line, error.column, error.position) == ("😀", 2, 6, 13)
    assert "U+1F600" in error.reason and "line 2, column 6" in error.reason and error.http_status == 422
    assert error.destination == "juki"


def test_a_character_split_across_chunks() -> None:
    # 𠮷 (4 bytes in UTF-8) and 葛+IVS (3 + 4 bytes) cut at every byte, and a CP932 code cut between its bytes.
    charset = profile("cp932", gaiji="gaiji-cp932.csv")
    text = "a𠮷b葛\U000e0100c".encode()
    for cut in range(1, len(text)):
        converter = ToPartner(charset)
        assert converter.feed(text[:cut]) + converter.feed(text[cut:]) + converter.finish() == \
            b"a\xf0\x40b\xf0\x41c"
    partner = "髙橋@".encode("cp932") + b"\xf0\x40"
    for cut in range(1, len(partner)):
        back = FromPartner(charset)
        assert (back.feed(partner[:cut]) + back.feed(partner[cut:]) + back.finish()).decode() == \
            "髙橋@𠮷"


def test_text_that_is_not_what_it_claims_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        through(ToPartner(profile("cp932")), b"abc\xff\xfe", 1)


@pytest.mark.parametrize(("file", "problem"), [
    ("gaiji-bad-ascii.csv", "holds ASCII"), ("gaiji-bad-code.csv", "not a private code"),
    ("gaiji-duplicate.csv", "already mapped"), ("no-such.csv", "cannot read"),
])
def test_bad_gaiji_tables_are_config_errors(file: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_gaiji(DATA / file)


@pytest.mark.parametrize(("raw", "problem"), [
    ({"encoding": "latin-1"}, "encoding: must be one of"), ({"encoding": "cp932", "unmappable": "drop"}, "refuse or"),
    ({"encoding": "utf-8", "gaiji": "gaiji-cp932.csv"}, "needs a partner encoding"), ({"enc": "x"}, "unknown key"),
])
def test_bad_profiles_are_config_errors(raw: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        profile_from(raw, "endpoints.t.charset", DATA)
