"""CSV and fixed-length files converted at the ends of a file transfer: bmrgw send → gateway → bmrgw receive.

Real gateways and receiving APs on loopback; the files are in
``tests/data/files-charset`` (UTF-8, as the standard side writes them) and
their partner-encoded form is worked out here with Python's codecs, the
gaiji codes put in by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from attachments.staging import STAGING_DIR
from attachments.transfer.charset import FileCharset, Records, recode_file
from attachments.transfer.receiver import ReceiveOptions, make_receiver_app
from attachments.transfer.sender import SendOptions, prepare, send_file
from gateway.charset import CharsetProfile, load_gaiji
from gateway.errors import RecordLengthMismatch, SendError

from .conftest import BMRGW, GatewayFactory, GatewayProcess, free_port, start_app, write_yaml
from .test_files_processes import RSS_LIMIT_MIB, peak_rss_mib, run_measured

DATA = Path(__file__).parent / "data" / "files-charset"
GAIJI = Path(__file__).parent / "data" / "charset"
MIB = 1 << 20
#: The gaiji codes of the test tables (tests/data/charset/gaiji-*.csv), partner bytes by Unicode.
GAIJI_CODES = {
    "cp932": {"\U00020bb7": b"\xf0\x40", "\u845b\U000e0100": b"\xf0\x41", "\U000f0001": b"\xf0\x42"},
    "euc-jp": {"\U00020bb7": b"\xf5\xa1", "\u845b\U000e0100": b"\xf5\xa2", "\U000f0001": b"\xf5\xa3"},
}
CODECS = {"cp932": "cp932", "euc-jp": "euc_jp"}


def profile(encoding: str, unmappable: str = "refuse") -> CharsetProfile:
    return CharsetProfile(encoding=encoding, gaiji=load_gaiji(GAIJI / f"gaiji-{encoding}.csv"),
                          unmappable=unmappable)


def partner_bytes(text: str, encoding: str) -> bytes:
    """``text`` as the partner writes it: the codec, and the gaiji table's codes for its characters."""
    out, rest = b"", text
    while rest:
        found = min(((rest.find(u), u) for u in GAIJI_CODES[encoding] if u in rest), default=None)
        if found is None:
            return out + rest.encode(CODECS[encoding])
        at, unicode = found
        out += rest[:at].encode(CODECS[encoding]) + GAIJI_CODES[encoding][unicode]
        rest = rest[at + len(unicode):]
    return out


@dataclass
class Site:
    """A gateway with two receiving APs: ``partner`` stores what it gets, ``ours`` converts it to UTF-8."""

    gateway: str
    partner: Path
    ours: Path


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def site(gateway: GatewayFactory, tmp_path: Path) -> AsyncIterator[SiteFactory]:
    runners = []

    async def start(ours: FileCharset | None = None, partner: FileCharset | None = None,
                    endpoint_charset: dict[str, str] | None = None) -> Site:
        urls = {}
        for name, charset in (("partner", partner), ("ours", ours)):
            options = ReceiveOptions(directory=tmp_path / name, max_file_bytes=64 * MIB, charset=charset)
            runner, urls[name] = await start_app(make_receiver_app(options))
            runners.append(runner)
        endpoints: dict[str, dict[str, object]] = {name: {"url": f"{url}/files"} for name, url in urls.items()}
        if endpoint_charset is not None:
            endpoints["partner"]["charset"] = endpoint_charset
        gw = await gateway({"gateway": {"name": "gw-files"}, "endpoints": endpoints})
        return Site(gateway=gw, partner=tmp_path / "partner", ours=tmp_path / "ours")

    yield start
    for runner in runners:
        await runner.cleanup()


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != STAGING_DIR)


def _transfers(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / STAGING_DIR).iterdir() if not p.name.startswith("."))


def _send(site: Site, path: Path, to: str, charset: FileCharset | None = None, **more: object) -> SendOptions:
    return SendOptions(path=path, to=to, gateway=site.gateway, charset=charset, sender="juki", **more)  # type: ignore[arg-type]


# -- round trips ------------------------------------------------------------------

@pytest.mark.parametrize(("encoding", "name"), [("cp932", "residents.csv"), ("euc-jp", "residents-euc.csv")])
async def test_csv_round_trip_converted_at_the_sender_and_at_the_receiver(
        site: SiteFactory, tmp_path: Path, encoding: str, name: str) -> None:
    """UTF-8 → (send --charset) → the partner's bytes → (receive --charset) → the same UTF-8, in 7-byte parts:
    most part boundaries cut a multi-byte character."""
    s = await site(ours=FileCharset(profile=profile(encoding)))
    source = DATA / name
    text = source.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8")  # the BOM does not travel
    sent = await send_file(_send(s, source, "partner", FileCharset(profile=profile(encoding)), part_size=7))
    expected = partner_bytes(text, encoding)
    assert (s.partner / name).read_bytes() == expected
    assert sent.info.file_size == len(expected) and sent.info.file_sha256 == hashlib.sha256(expected).hexdigest()
    assert sent.losses is not None and sent.losses.total == 0

    back = tmp_path / "from-partner" / name
    back.parent.mkdir()
    back.write_bytes(expected)  # the partner sends its file as it is
    await send_file(_send(s, back, "ours", part_size=7))
    assert (s.ours / name).read_bytes() == text.encode("utf-8")
    record = json.loads((s.ours / STAGING_DIR / _transfers(s.ours)[0] / "converted.json").read_text())
    assert record["encoding"] == encoding and record["charset_substitutions"] == ""
    assert (record["bytes_received"], record["bytes_published"]) == (len(expected), len(text.encode()))


async def test_character_straddling_the_converter_chunk_and_the_part_boundary(site: SiteFactory,
                                                                              tmp_path: Path) -> None:
    """髙 (3 bytes in UTF-8, 2 in CP932) sits across byte 1 MiB — where the converters cut their reads — on
    both sides, and across the boundary of the 1 MiB parts; half-width kana and a gaiji code follow."""
    s = await site(ours=FileCharset(profile=profile("cp932")))
    line = "0123456789,abcdefghijklmnopqrstuvwxyz\n"
    head = (line * (MIB // len(line) + 1))[:MIB - 1]
    text = head + "髙ｶﾞ𠮷①㈱\n" + line * 3
    source = tmp_path / "straddle.csv"
    source.write_text(text, encoding="utf-8")
    partner = partner_bytes(text, "cp932")
    assert partner[MIB - 1:MIB + 1] == "髙".encode("cp932")
    sent = await send_file(_send(s, source, "ours", FileCharset(profile=profile("cp932")), part_size=MIB))
    assert sent.info.part_count == 2 and sent.info.file_sha256 == hashlib.sha256(partner).hexdigest()
    assert (s.ours / source.name).read_bytes().decode("utf-8") == text


async def test_zipped_mtom_transfer_converted_at_both_ends_leaves_no_temporary_files(site: SiteFactory) -> None:
    s = await site(ours=FileCharset(profile=profile("cp932")))
    source = DATA / "residents.csv"
    sent = await send_file(_send(s, source, "ours", FileCharset(profile=profile("cp932")), zip=True, mtom=True,
                                 part_size=64))
    assert sent.info.compression == "zip"
    assert (s.ours / source.name).read_bytes() == source.read_bytes().removeprefix(b"\xef\xbb\xbf")
    left = sorted(p.name for p in (s.ours / STAGING_DIR / sent.info.file_id).iterdir())
    assert left == ["converted.json", "info.json", "published", "sender.json"]


async def test_a_sealing_receiver_converts_too_and_keeps_no_plaintext_copy(gateway: GatewayFactory,
                                                                           tmp_path: Path) -> None:
    """With gateway.encryption the parts are sealed; the opened file is converted and only the UTF-8 file
    is published: neither the opened nor the converted temporary file stays in staging."""
    from gateway.cli import main
    from gateway.crypto import KeyRing, MasterKey, Vault
    from gateway.store import Store

    key = tmp_path / "keys" / "master.key"
    assert main(["keys", "init", str(key)]) == 0
    keys = Store(f"sqlite:///{tmp_path}/receiver-keys.db")
    runner, url = await start_app(make_receiver_app(ReceiveOptions(
        directory=tmp_path / "inbox", max_file_bytes=MIB, vault=Vault(KeyRing(keys.engine, [MasterKey.load(key)])),
        org="files", charset=FileCharset(profile=profile("cp932")))))
    try:
        gw = await gateway({"endpoints": {"files": {"url": f"{url}/files"}}})
        text = (DATA / "residents.csv").read_bytes().removeprefix(b"\xef\xbb\xbf").decode()
        source = tmp_path / "out" / "residents.csv"
        source.parent.mkdir()
        source.write_bytes(partner_bytes(text, "cp932"))
        sent = await send_file(SendOptions(path=source, to="files", gateway=gw, part_size=50))
        assert (tmp_path / "inbox" / "residents.csv").read_bytes().decode("utf-8") == text
        left = sorted(p.name for p in (tmp_path / "inbox" / STAGING_DIR / sent.info.file_id).iterdir())
        assert left == ["converted.json", "info.json", "published", "sender.json"]
    finally:
        await runner.cleanup()
        keys.close()


# -- characters with no mapping ------------------------------------------------------

async def test_unmappable_at_the_sender_refuses_with_its_position_and_sends_nothing(
        site: SiteFactory, tmp_path: Path) -> None:
    s = await site()
    source = tmp_path / "emoji.csv"
    source.write_text("id,name\n1,高橋\n2,山田 😀\n", encoding="utf-8")
    with pytest.raises(SendError) as refused:
        await send_file(_send(s, source, "partner", FileCharset(profile=profile("cp932"))))
    assert refused.value.exit_code == 2
    message = refused.value.message
    assert "'😀' (U+1F600) at line 3, column 6 (offset 18)" in message and "nothing was sent" in message
    assert _visible(s.partner) == [] and _transfers(s.partner) == []


async def test_substitutions_at_the_sender_are_counted_with_their_code_points(site: SiteFactory,
                                                                                tmp_path: Path) -> None:
    s = await site()
    source = tmp_path / "emoji.csv"
    source.write_text("1,😀 𠀋\n2,😀 葛\U000e0101\n", encoding="utf-8")
    sent = await send_file(_send(s, source, "partner", FileCharset(profile=profile("cp932", "substitute"))))
    assert sent.losses is not None
    assert sent.losses.summary() == "4 (U+1F600 ×2, U+2000B ×1, U+E0101 ×1)"
    assert (s.partner / source.name).read_bytes() == "1,〓 〓\n2,〓 葛\n".encode("cp932")


async def test_unmappable_at_the_receiver_is_a_fault_to_the_sender_and_nothing_is_published(
        site: SiteFactory, tmp_path: Path) -> None:
    s = await site(ours=FileCharset(profile=profile("cp932")))
    source = tmp_path / "from-partner.csv"
    source.write_bytes("1,".encode("cp932") + b"\xf0\x50" + "様\n".encode("cp932"))  # F050: not in the table
    with pytest.raises(SendError) as refused:
        await send_file(_send(s, source, "ours", part_size=3))
    assert refused.value.exit_code == 1
    assert "refused (UnmappableCharacter)" in refused.value.message and "0xF050" in refused.value.message
    assert "line 1, column 3 (offset 2)" in refused.value.message
    assert _visible(s.ours) == [] and _transfers(s.ours) == [], "the failed transfer is dropped"


async def test_bytes_not_in_the_declared_encoding_are_refused_at_the_receiver(site: SiteFactory,
                                                                              tmp_path: Path) -> None:
    s = await site(ours=FileCharset(profile=profile("euc-jp")))
    source = tmp_path / "not-euc.csv"
    source.write_bytes("1,高橋\n".encode("cp932"))  # Shift_JIS bytes declared EUC-JP
    with pytest.raises(SendError) as refused:
        await send_file(_send(s, source, "ours"))
    assert "refused (UnmappableCharacter)" in refused.value.message and "not-euc.csv" in refused.value.message
    assert _visible(s.ours) == []


async def test_substitutions_at_the_receiver_are_logged_and_kept_with_the_transfer(
        site: SiteFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = await site(ours=FileCharset(profile=profile("cp932", "substitute")))
    source = tmp_path / "from-partner.csv"
    source.write_bytes(b"1,\xf0\x50\xf0\x40\n2,\xf0\x50\n")
    caplog.set_level("INFO", logger="bmrgw.receive")
    await send_file(_send(s, source, "ours"))
    assert (s.ours / source.name).read_text(encoding="utf-8") == "1,〓𠮷\n2,〓\n"
    record = json.loads((s.ours / STAGING_DIR / _transfers(s.ours)[0] / "converted.json").read_text())
    assert record["charset_substitutions"] == "2 (0xF050 ×2)" and record["counts"] == {"0xF050": 2}
    assert any("charset_substitutions 2 (0xF050 ×2)" in r.getMessage() for r in caplog.records)


async def test_a_partner_file_full_of_different_unmappable_codes_keeps_the_records_bounded(
        site: SiteFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every code of CP932's user-defined area but the table's four: 1876 different code points, one line
    each; the log line names 20 of them, converted.json 1000, and both say how many there were."""
    s = await site(ours=FileCharset(profile=profile("cp932", "substitute")))
    codes = [bytes([lead, trail]) for lead in range(0xF0, 0xFA) for trail in [*range(0x40, 0x7F), *range(0x80, 0xFD)]]
    source = tmp_path / "hostile.csv"
    source.write_bytes(b"\n".join(codes) + b"\n")
    caplog.set_level("INFO", logger="bmrgw.receive")
    await send_file(_send(s, source, "ours"))
    published = (s.ours / source.name).read_text(encoding="utf-8").splitlines()
    assert published[:4] == ["𠮷", "葛\U000e0100", "\U000f0001", "𨳝"] and set(published[4:]) == {"〓"}
    record = json.loads((s.ours / STAGING_DIR / _transfers(s.ours)[0] / "converted.json").read_text())
    assert record["substituted"] == len(codes) - 4 and len(record["counts"]) == 1000
    assert record["charset_substitutions"].endswith(", and 1856 more code points)")
    line = next(r.getMessage() for r in caplog.records if "converted from cp932" in r.getMessage())
    assert "charset_substitutions 1876 (0xF044 ×1," in line and len(line) < 600


# -- fixed-length records -------------------------------------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (b"abc\ndef\nghi", None), (b"abc\r\ndef\r\nghi\r\n", None), (b"", None),
    (b"abc\r\ndef\r\ngh\r\n", (3, 2)), (b"abc\n\nghi\n", (2, 0)), (b"abc\nde\rf\n", (2, 4)), (b"abcd", (1, 4)),
    (b"abc\r\n" * 5 + b"abcd\r\n", (6, 4))], ids=lambda v: repr(v))
@pytest.mark.parametrize("piece", [1, 2, 5, MIB])
def test_records_are_checked_whatever_the_pieces(data: bytes, expected: tuple[int, int] | None, piece: int) -> None:
    records = Records(3, "f")
    try:
        for start in range(0, len(data), piece):
            records.feed(data[start:start + piece])
        records.finish()
    except RecordLengthMismatch as exc:
        assert (exc.record, exc.length) == expected
    else:
        assert expected is None


async def test_fixed_length_records_are_checked_in_the_partners_bytes(site: SiteFactory, tmp_path: Path) -> None:
    """fixed-40.txt has records of 40 bytes in CP932 (50–63 in UTF-8: half-width kana, gaiji)."""
    s = await site(ours=FileCharset(profile=profile("cp932"), record_bytes=40))
    good = DATA / "fixed-40.txt"
    await send_file(_send(s, good, "partner", FileCharset(profile=profile("cp932"), record_bytes=40)))
    partner = (s.partner / good.name).read_bytes()
    assert [len(r) for r in partner.split(b"\r\n")] == [40, 40, 40, 40]

    with pytest.raises(SendError) as short:
        await send_file(_send(s, DATA / "fixed-40-short.txt", "partner",
                              FileCharset(profile=profile("cp932"), record_bytes=40)))
    assert short.value.exit_code == 2 and "record 3 is 39 bytes, not 40" in short.value.message
    assert "fixed-40-short.txt" not in _visible(s.partner)

    back = tmp_path / "back" / good.name
    back.parent.mkdir()
    back.write_bytes(partner)
    await send_file(_send(s, back, "ours"))
    assert (s.ours / good.name).read_bytes() == good.read_bytes()

    unchecked = await send_file(_send(s, DATA / "fixed-40-short.txt", "partner",
                                      FileCharset(profile=profile("cp932"))))  # converted, records not checked
    short_partner = tmp_path / "back" / "fixed-40-short.txt"
    short_partner.write_bytes((s.partner / unchecked.info.file_name).read_bytes())
    with pytest.raises(SendError) as refused:
        await send_file(_send(s, short_partner, "ours"))
    assert "refused (RecordLengthMismatch)" in refused.value.message
    assert "record 3 is 39 bytes, not 40" in refused.value.message
    assert _visible(s.ours) == [good.name]


async def test_records_are_checked_without_conversion_too(site: SiteFactory, tmp_path: Path) -> None:
    """A fixed-length file for a UTF-8 partner: --record-bytes alone checks the bytes as they are."""
    s = await site(ours=FileCharset(record_bytes=4))
    good, short = tmp_path / "good.dat", tmp_path / "short.dat"
    good.write_bytes(b"abcd\r\nefgh\r\n")
    short.write_bytes(b"abcd\nefg\n")
    with pytest.raises(SendError) as refused:
        await send_file(_send(s, short, "ours", FileCharset(record_bytes=4)))
    assert refused.value.exit_code == 2 and refused.value.message == (
        f"{short}: record 2 is 3 bytes, not 4 (--record-bytes); nothing was sent")
    await send_file(_send(s, good, "ours", FileCharset(record_bytes=4)))
    assert (s.ours / good.name).read_bytes() == good.read_bytes()
    assert "converted.json" not in os.listdir(s.ours / STAGING_DIR / _transfers(s.ours)[0])
    with pytest.raises(SendError) as at_receiver:
        await send_file(_send(s, short, "ours"))
    assert "refused (RecordLengthMismatch): short.dat as received: record 2 is 3 bytes" in at_receiver.value.message
    assert _visible(s.ours) == [good.name]


# -- resume, the spool ---------------------------------------------------------------

async def test_a_converted_file_resumes_the_same_transfer(site: SiteFactory) -> None:
    s = await site()
    charset = FileCharset(profile=profile("cp932"))
    options = _send(s, DATA / "residents.csv", "partner", charset, part_size=16)
    first = await send_file(replace(options, only_parts=frozenset({1, 3, 5})))
    assert first.sent == 3 and first.published is None and _visible(s.partner) == []
    second = await send_file(options)
    assert second.info.file_id == first.info.file_id, "the spool is converted the same way each time"
    assert (second.skipped, second.sent) == (3, second.info.part_count - 3)
    assert second.published == "residents.csv"


def test_the_spool_file_is_private(tmp_path: Path) -> None:
    options = SendOptions(path=DATA / "residents.csv", to="x", gateway="http://127.0.0.1:9",
                          charset=FileCharset(profile=profile("cp932")), zip=True)
    prepared = prepare(options, tmp_path)
    assert (tmp_path / "converted").stat().st_mode & 0o777 == 0o600
    assert prepared.info.file_size == (tmp_path / "converted").stat().st_size
    assert prepared.stream == tmp_path / "stream.zip"


async def _bmrgw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*BMRGW, *args], capture_output=True, text=True, timeout=60,
                                   env={**os.environ, **(env or {})})


async def test_cli_converts_reports_substitutions_and_leaves_no_spool(site: SiteFactory, tmp_path: Path) -> None:
    s = await site()
    spool = tmp_path / "tmp"
    spool.mkdir()
    source = tmp_path / "emoji.csv"
    source.write_text("1,😀 𠀋\n2,😀 ｶﾅ\n", encoding="utf-8")
    env = {"TMPDIR": str(spool)}
    refused = await _bmrgw("send", str(source), "--to", "partner", "--gateway", s.gateway, "--charset", "cp932",
                           env=env)
    assert refused.returncode == 2 and "(U+1F600) at line 1, column 3 (offset 2)" in refused.stderr
    assert "Traceback" not in refused.stderr and list(spool.iterdir()) == []
    done = await _bmrgw("send", str(source), "--to", "partner", "--gateway", s.gateway, "--charset", "cp932",
                        "--unmappable", "substitute", "--gaiji", str(GAIJI / "gaiji-cp932.csv"), env=env)
    assert done.returncode == 0, done.stderr
    assert "3 character(s) substituted converting emoji.csv: 3 (U+1F600 ×2, U+2000B ×1)" in done.stderr
    assert "converted to cp932 (unmappable: substitute, gaiji gaiji-cp932.csv)" in done.stdout
    assert (s.partner / "emoji.csv").read_bytes() == "1,〓 〓\n2,〓 ｶﾅ\n".encode("cp932")
    assert list(spool.iterdir()) == [], "the converted spool is deleted"
    nowhere = await _bmrgw("send", str(source), "--to", "nowhere", "--gateway", s.gateway, "--charset", "cp932",
                           "--unmappable", "substitute", env=env)
    assert nowhere.returncode == 1 and "refused (UnknownDestination)" in nowhere.stderr
    assert list(spool.iterdir()) == [], "deleted after a refusal by the gateway too"


async def test_cli_takes_the_profile_of_an_endpoint(site: SiteFactory, tmp_path: Path) -> None:
    s = await site()
    config = tmp_path / "endpoints.yaml"
    write_yaml(config, {"endpoints": {"city-a": {"url": "http://127.0.0.1:9/x", "charset": {
        "encoding": "cp932", "gaiji": str(GAIJI / "gaiji-cp932.csv"), "unmappable": "substitute"}}}})
    source = DATA / "fixed-40.txt"
    done = await _bmrgw("send", str(source), "--to", "partner", "--gateway", s.gateway, "--config", str(config),
                        "--charset-of", "city-a", "--record-bytes", "40")
    assert done.returncode == 0, done.stderr
    assert (s.partner / source.name).read_bytes() == partner_bytes(source.read_bytes().decode("utf-8"), "cp932")
    both = await _bmrgw("send", str(source), "--to", "partner", "--gateway", s.gateway, "--config", str(config),
                        "--charset-of", "city-a", "--charset", "cp932")
    unknown = await _bmrgw("send", str(source), "--to", "partner", "--gateway", s.gateway, "--config", str(config),
                           "--charset-of", "city-b")
    alone = await _bmrgw("send", str(source), "--to", "partner", "--gateway", s.gateway, "--unmappable", "substitute")
    bad_gaiji = await _bmrgw("send", str(source), "--to", "partner", "--gateway", s.gateway, "--charset", "cp932",
                             "--gaiji", str(GAIJI / "gaiji-bad-code.csv"))
    for result, says in ((both, "without --charset"), (unknown, "no endpoint named 'city-b'"),
                         (alone, "need --charset"), (bad_gaiji, "is not a private code")):
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_cli_help_explains_the_conversion() -> None:
    send = subprocess.run([*BMRGW, "send", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--charset ENCODING", "--gaiji CSV", "--unmappable", "--charset-of NAME", "--record-bytes N",
                   "euc-jp", "before it is hashed"):
        assert option in send
    receive = subprocess.run([*BMRGW, "receive", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--charset ENCODING", "--record-bytes N", "before conversion", "nothing appears in DIR"):
        assert option in receive
    alone = subprocess.run([*BMRGW, "receive", "--port", str(free_port()), "--dir", "/nonexistent/x",
                            "--unmappable", "substitute"], capture_output=True, text=True, timeout=30)
    assert alone.returncode == 2 and "need --charset" in alone.stderr and "Traceback" not in alone.stderr


# -- a converting endpoint on the way ------------------------------------------------

async def test_a_file_transfer_to_an_endpoint_with_a_character_profile_is_refused_clearly(
        site: SiteFactory, tmp_path: Path) -> None:
    """The relay does not convert attachments: PutFilePart to a converting endpoint is refused, naming what
    to do instead, and nothing reaches the receiver."""
    s = await site(endpoint_charset={"encoding": "cp932"})
    with pytest.raises(SendError) as refused:
        await send_file(_send(s, DATA / "residents.csv", "partner", FileCharset(profile=profile("cp932"))))
    message = refused.value.message
    assert refused.value.exit_code == 1 and "refused (MalformedMessage)" in message
    assert "bmrgw send --charset" in message and "bmrgw receive --charset" in message
    assert _visible(s.partner) == [] and _transfers(s.partner) == []


# -- memory and rate -------------------------------------------------------------------

def test_recode_file_rate(tmp_path: Path) -> None:
    """Converting a 30 MB CSV (names, kana, addresses) both ways: the rate is printed for the README."""
    import time

    line = "131016-000001,髙橋 太郎,ﾀｶﾊｼ ﾀﾛｳ,東京都千代田区丸の内1-1-1,①,2024-04-01\r\n"
    source = tmp_path / "big.csv"
    source.write_text(line * (30 * MIB // len(line.encode())), encoding="utf-8")
    charset = FileCharset(profile=profile("cp932"))
    started = time.perf_counter()
    partner, _ = recode_file(source, tmp_path / "partner", charset, to_partner=True, what="big.csv")
    there = time.perf_counter() - started
    started = time.perf_counter()
    back, _ = recode_file(partner, tmp_path / "back", charset, to_partner=False, what="big.csv")
    again = time.perf_counter() - started
    size = source.stat().st_size / 1e6
    print(f"to CP932: {size / there:.0f} MB/s, back to UTF-8: {partner.stat().st_size / 1e6 / again:.0f} MB/s")
    assert back.read_bytes() == source.read_bytes()


# -- real processes: bmrgw send → bmrgw serve → bmrgw receive, memory bounded ----------------------

def _start_receiver(folder: Path, *args: str) -> tuple[str, subprocess.Popen[bytes]]:
    import time
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([*BMRGW, "receive", "--port", str(port), "--dir", str(folder), "--log-level", "INFO",
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url, deadline = f"http://127.0.0.1:{port}/files", time.monotonic() + 15
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            with urllib.request.urlopen(f"{url}?wsdl", timeout=1):
                return url, proc
        except OSError:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.1)


@pytest.mark.slow
def test_a_30_mb_csv_converted_at_both_ends_keeps_every_process_under_100_mb(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    """A real ``bmrgw receive --charset cp932`` behind a real gateway gets a 30 MB CSV that a real
    ``bmrgw send --charset cp932`` converted; 8 MiB parts, every process under 100 MB peak RSS."""
    url, receiving = _start_receiver(tmp_path / "inbox", "--charset", "cp932", "--gaiji",
                                     str(GAIJI / "gaiji-cp932.csv"), "--unmappable", "substitute")
    try:
        gw = gateway_process({"endpoints": {"files": {"url": url, "timeout": 120}}}, name="gw-files")
        line = "131016-000001,髙橋 𠮷男,ﾀｶﾊｼ ﾖｼｵ,東京都千代田区丸の内1-1-1,①㈱,2024-04-01\r\n"
        source = tmp_path / "residents-big.csv"
        source.write_bytes((line * (30 * MIB // len(line.encode()))).encode() + "99,😀\r\n".encode())
        code, sender_mib = run_measured(
            [*BMRGW, "send", str(source), "--to", "files", "--gateway", f"{gw.url}/soap", "--part-size", "8M",
             "--charset", "cp932", "--gaiji", str(GAIJI / "gaiji-cp932.csv"), "--unmappable", "substitute"],
            tmp_path / "send.log")
        output = (tmp_path / "send.log").read_text()
        assert code == 0, output
        assert "1 character(s) substituted converting residents-big.csv: 1 (U+1F600 ×1)" in output
        assert (tmp_path / "inbox" / source.name).read_bytes() == source.read_bytes().replace(
            "😀".encode(), "〓".encode())
        gateway_mib, receiver_mib = gw.peak_rss_kib() / 1024, peak_rss_mib(receiving.pid)
        print(f"peak RSS MiB: sender {sender_mib:.1f}, gateway {gateway_mib:.1f}, receiver {receiver_mib:.1f}")
        assert max(sender_mib, gateway_mib, receiver_mib) < RSS_LIMIT_MIB
    finally:
        receiving.terminate()
        receiving.wait(timeout=10)
    assert receiving.stderr is not None
    with receiving.stderr:
        log = receiving.stderr.read().decode()
    assert "converted from cp932 to UTF-8" in log and "nothing substituted" in log, log
