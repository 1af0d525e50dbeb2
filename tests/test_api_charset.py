"""Character profiles on the HTTP API relay: bodies converted both ways for a CP932 partner with a gaiji
table, refuse and substitute, and the counts in the exchange's log record (issue 23, item 2)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.logs.tables import LogFilter

from .conftest import GatewayFactory, start_app
from .records import records

DATA = Path(__file__).parent / "data" / "charset"
#: What the partner answers, in CP932 and labelled Shift_JIS, as such systems do: NEC/IBM characters and a gaiji.
ANSWER = '{"氏名": "髙橋 ①", "会社": "㈱テスト", "外字": "'.encode("cp932") + b"\xf0\x40" + b'"}'


@dataclass
class Partner:
    url: str = ""
    got: list[tuple[str, bytes]] = field(default_factory=list)
    answer_type: str = "application/json; charset=Shift_JIS"
    answer: bytes = ANSWER


@pytest.fixture
async def partner() -> AsyncIterator[Partner]:
    found = Partner()

    async def handle(request: web.Request) -> web.Response:
        found.got.append((request.headers.get("Content-Type", ""), await request.read()))
        return web.Response(body=found.answer, headers={"Content-Type": found.answer_type})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner, found.url = await start_app(app)
    yield found
    await runner.cleanup()


def config(tmp_path: Path, partner: Partner, unmappable: str = "substitute") -> dict[str, Any]:
    charset = {"encoding": "cp932", "gaiji": str(DATA / "gaiji-cp932.csv"), "unmappable": unmappable}
    return {"gateway": {"name": "gw-cs", "db": f"sqlite:///{tmp_path}/cs.db"},
            "endpoints": {"city": {"url": f"{partner.url}/city", "charset": charset},
                          "plain": {"url": f"{partner.url}/plain"}}}


def response_record(tmp_path: Path, message_id: str) -> Any:
    found = [r for r in records(tmp_path / "cs.db", LogFilter(kind="api", message_id=message_id))
             if r.direction == "response"]
    assert len(found) == 1
    return found[0]


async def test_json_goes_out_in_cp932_with_gaiji_and_comes_back_as_utf8(
        gateway: GatewayFactory, partner: Partner, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, partner))
    body = json.dumps({"氏名": "𠮷田 葛\U000e0100子", "ｶﾅ": "ﾖｼﾀﾞ"}, ensure_ascii=False).encode()
    async with http.post(f"{url}/api/city/persons", data=body, headers={
            "Content-Type": "application/json", "X-Message-Id": "cs-1"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        answer = json.loads(await resp.read())
    assert answer == {"氏名": "髙橋 ①", "会社": "㈱テスト", "外字": "𠮷"}
    content_type, sent = partner.got[-1]
    assert content_type == "application/json; charset=Windows-31J"
    assert sent == ('{"氏名": "'.encode("cp932") + b"\xf0\x40" + "田 ".encode("cp932") + b"\xf0\x41"
                    + '子", "ｶﾅ": "ﾖｼﾀﾞ"}'.encode("cp932"))
    assert response_record(tmp_path, "cs-1").charset_substitutions is None, "nothing was lost"


async def test_substitutions_are_counted_in_the_log_record(gateway: GatewayFactory, partner: Partner,
                                                           http: aiohttp.ClientSession, tmp_path: Path) -> None:
    partner.answer = b'{"x": "' + b"\xf0\x50" + b'"}'  # a private code the table does not name
    url = await gateway(config(tmp_path, partner))
    body = json.dumps({"memo": "😀 and 𠀋 and 😀"}, ensure_ascii=False).encode()
    async with http.put(f"{url}/api/city/memo", data=body,
                        headers={"Content-Type": "application/json", "X-Message-Id": "cs-2"}) as resp:
        assert resp.status == 200
        assert json.loads(await resp.read()) == {"x": "〓"}
    assert partner.got[-1][1].decode("cp932") == '{"memo": "〓 and 〓 and 〓"}'
    record = response_record(tmp_path, "cs-2")
    assert record.charset_substitutions == "4 (U+1F600 ×2, U+2000B ×1, 0xF050 ×1)"
    assert record.to_json()["charset_substitutions"] == record.charset_substitutions


async def test_refuse_names_the_character_and_sends_nothing(gateway: GatewayFactory, partner: Partner,
                                                            http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, partner, unmappable="refuse"))
    body = '{"a": "ok",\n "b": "x😀"}'.encode()
    async with http.post(f"{url}/api/city/x", data=body,
                         headers={"Content-Type": "application/json", "X-Message-Id": "cs-3"}) as resp:
        assert resp.status == 422 and resp.content_type == "application/problem+json"
        problem = json.loads(await resp.read())
    assert problem["code"] == "UnmappableCharacter" and problem["info"] == "U+1F600 at 2:9"
    assert "line 2, column 9" in problem["detail"]
    assert partner.got == []
    record = response_record(tmp_path, "cs-3")
    assert (record.fault_code, record.http_status) == ("UnmappableCharacter", 422)


async def test_xml_declarations_name_the_encoding_on_each_side(gateway: GatewayFactory, partner: Partner,
                                                               http: aiohttp.ClientSession, tmp_path: Path) -> None:
    partner.answer = '<?xml version="1.0" encoding="Shift_JIS"?><r>髙</r>'.encode("cp932")
    partner.answer_type = "application/xml"
    url = await gateway(config(tmp_path, partner))
    body = '\ufeff<?xml version="1.0" encoding="UTF-8"?><q>住所</q>'.encode()
    async with http.post(f"{url}/api/city/x", data=body, headers={"Content-Type": "text/xml"}) as resp:
        assert resp.headers["Content-Type"] == "application/xml; charset=utf-8"
        assert await resp.read() == '<?xml version="1.0" encoding="UTF-8"?><r>髙</r>'.encode()
    assert partner.got[-1] == ("text/xml; charset=Windows-31J",
                               '<?xml version="1.0" encoding="Windows-31J"?><q>住所</q>'.encode("cp932"))


async def test_a_streamed_body_with_characters_across_chunks(gateway: GatewayFactory, partner: Partner,
                                                             http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, partner))
    line = "1,𠮷田,葛\U000e0100飾区,ｶﾂｼｶ,①\n".encode()
    whole = line * 40_000  # ~1.4 MB, sent in odd-sized chunks so characters fall across them

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(whole), 4099):
            yield whole[start:start + 4099]
    async with http.post(f"{url}/api/city/upload", data=chunks(),
                         headers={"Content-Type": "text/csv", "X-Message-Id": "cs-5"}) as resp:
        assert resp.status == 200
    expected = (b"1," + b"\xf0\x40" + "田,".encode("cp932") + b"\xf0\x41" + "飾区,ｶﾂｼｶ,①\n".encode("cp932")) * 40_000
    assert partner.got[-1] == ("text/csv; charset=Windows-31J", expected)
    request = [r for r in records(tmp_path / "cs.db", LogFilter(kind="api", message_id="cs-5"))
               if r.direction == "request"][0]
    assert (request.bytes_in, request.bytes_out) == (len(whole), len(expected)), "as received, as sent on"


async def test_binary_bodies_and_endpoints_without_a_profile_pass_unchanged(
        gateway: GatewayFactory, partner: Partner, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, partner))
    blob = "𠮷".encode() + bytes(range(256))
    async with http.post(f"{url}/api/city/file", data=blob,
                         headers={"Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 200
    assert partner.got[-1][1] == blob
    async with http.post(f"{url}/api/plain/x", data="𠮷".encode(), headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 200
        assert await resp.read() == ANSWER, "no profile: the answer passes as it came"
    assert partner.got[-1][1] == "𠮷".encode()


async def test_a_body_declared_in_another_charset_is_refused(gateway: GatewayFactory, partner: Partner,
                                                             http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, partner))
    async with http.post(f"{url}/api/city/x", data="髙".encode("cp932"),
                         headers={"Content-Type": "text/plain; charset=Shift_JIS"}) as resp:
        assert resp.status == 415 and "send UTF-8" in json.loads(await resp.read())["detail"]
    assert partner.got == []


async def test_refuse_in_a_streamed_body_cuts_the_request_off(gateway: GatewayFactory, partner: Partner,
                                                              http: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = await gateway(config(tmp_path, partner, unmappable="refuse"))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield "1,山田,東京\n".encode() * 1000
        yield "2,😀\n".encode()
    async with http.post(f"{url}/api/city/upload", data=chunks(),
                         headers={"Content-Type": "text/csv", "X-Message-Id": "cs-9"}) as resp:
        assert resp.status == 422
        assert json.loads(await resp.read())["info"] == "U+1F600 at 100001:3"
    assert partner.got == [], "the partner never received a whole request"
    assert response_record(tmp_path, "cs-9").fault_code == "UnmappableCharacter"


async def test_a_long_answer_is_converted_as_it_streams(gateway: GatewayFactory, partner: Partner,
                                                        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    row = "1,髙橋,ﾀｶﾊｼ,①\n".encode("cp932") + b"2," + b"\xf0\x40" + b"\n"
    partner.answer, partner.answer_type = row * 60_000, "text/csv; charset=Shift_JIS"  # ~1 MB: streamed
    url = await gateway(config(tmp_path, partner))
    async with http.get(f"{url}/api/city/export", headers={"X-Message-Id": "cs-10"}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert "Content-Length" not in resp.headers
        got = await resp.read()
    assert got == "1,髙橋,ﾀｶﾊｼ,①\n2,𠮷\n".encode() * 60_000
    record = response_record(tmp_path, "cs-10")
    assert record.bytes_in == len(partner.answer) and record.bytes_out == len(got)


async def test_reductions_are_counted_in_the_log_record(gateway: GatewayFactory, partner: Partner,
                                                        http: aiohttp.ClientSession, tmp_path: Path) -> None:
    partner.answer, partner.answer_type = '{"ok": "高"}'.encode("shift_jis"), "application/json"
    settings = config(tmp_path, partner)
    settings["endpoints"]["mj"] = {"url": f"{partner.url}/mj", "charset": {
        "encoding": "shift_jis", "unmappable": "refuse", "reduce": "mj"}}
    url = await gateway(settings)
    body = json.dumps({"氏名": "髙橋 𠮷田 﨑 邊\U000e0108 髙"}, ensure_ascii=False).encode()
    async with http.post(f"{url}/api/mj/persons", data=body,
                         headers={"Content-Type": "application/json", "X-Message-Id": "cs-mj"}) as resp:
        assert resp.status == 200, "reduced, not refused"
        assert json.loads(await resp.read()) == {"ok": "高"}
    assert partner.got[-1] == ("application/json; charset=Shift_JIS",
                               '{"氏名": "高橋 吉田 崎 邊 高"}'.encode("shift_jis"))
    record = response_record(tmp_path, "cs-mj")
    assert record.charset_substitutions == "5 (U+9AD9 ×2, U+20BB7 ×1, U+FA11 ×1, U+908A U+E0108 ×1)"
    async with http.post(f"{url}/api/mj/persons", data='{"x": "😀"}'.encode(),
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 422, "what does not reduce is still refused"
        assert json.loads(await resp.read())["info"] == "U+1F600 at 1:8"
