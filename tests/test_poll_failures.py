"""``bmrgw poll`` never lies (issue 21, item 2): each failure kind through the real process.

Against the real gateway where it can produce the failure (refused id, disk
full, read-only folder), and against a small misbehaving JX server on
loopback where a correct gateway cannot (HTTP 502, cut-off answer, broken
XML, wrong digest, a fault on confirm).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.jx.failure import fit
from gateway.security.passwords import hash_password
from gateway.jx.wire import MessageHeader, split_at_data
from gateway.ns import H_JX_SHA256, JX, SOAP11_ENV

from .conftest import BMRGW, GatewayFactory, free_port, start_app
from .jxhelp import get, put
from .test_poll import config, poll

DOCUMENT = b"id,name\n1,\xe5\xb1\xb1\xe7\x94\xb0\n" * 50


def answer_halves(message_id: str = "m-1") -> tuple[bytes, bytes]:
    fields = {"senderId": "DC", "receiverId": "1310001", "formatType": "CSV", "documentType": "x",
              "compressType": ""}
    return split_at_data(JX, MessageHeader(sender="gw", to="1310001"), True, message_id, fields)


def fault(code: str, reason: str) -> bytes:
    return (f'<s:Envelope xmlns:s="{SOAP11_ENV}"><s:Body><s:Fault><faultcode>s:Server</faultcode>'
            f'<faultstring>{reason}</faultstring><detail><g:Error xmlns:g="urn:bmrgw:fault:1" code="{code}"/>'
            f"</detail></s:Fault></s:Body></s:Envelope>").encode()


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeJx:
    """A JX server on loopback that answers GetDocument and ConfirmDocument as told, counting calls."""

    get_document: Answer
    confirm_document: Answer | None = None
    calls: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.headers.get("SOAPAction", "").strip('"').rpartition("/")[2]
        await request.read()
        self.calls.append(operation)
        if operation == "ConfirmDocument":
            if self.confirm_document is not None:
                return await self.confirm_document(request)
            return web.Response(body=confirm_true(), content_type="text/xml")
        return await self.get_document(request)


def confirm_true() -> bytes:
    return (f'<s:Envelope xmlns:s="{SOAP11_ENV}" xmlns:jx="{JX}"><s:Body><jx:ConfirmDocumentResponse>'
            f"<jx:ConfirmDocumentResult>true</jx:ConfirmDocumentResult></jx:ConfirmDocumentResponse>"
            f"</s:Body></s:Envelope>").encode()


@pytest.fixture
async def fake_jx() -> AsyncIterator[Callable[..., Awaitable[FakeJx]]]:
    runners: list[web.AppRunner] = []

    async def start(get_document: Answer, confirm_document: Answer | None = None) -> FakeJx:
        fake = FakeJx(get_document, confirm_document)
        app = web.Application()
        app.router.add_post("/jx", fake.handle)
        runner, fake.url = await start_app(app)
        runners.append(runner)
        return fake

    yield start
    for runner in runners:
        await runner.cleanup()


async def document_answer(request: web.Request, *, data: bytes = DOCUMENT, sha256: str | None = None,
                          cut: bool = False, body: bytes | None = None) -> web.StreamResponse:
    before, after = answer_halves()
    whole = body if body is not None else before + base64.b64encode(data) + after
    headers = {"Content-Type": "text/xml; charset=utf-8", H_JX_SHA256: sha256 or hashlib.sha256(data).hexdigest()}
    response = web.StreamResponse(headers=headers)
    response.content_length = len(whole)
    await response.prepare(request)
    if cut:
        await response.write(whole[: len(whole) // 2])
        assert request.transport is not None
        request.transport.abort()  # the connection dies mid-answer
        return response
    await response.write(whole)
    await response.write_eof()
    return response


async def run_once(url: str, out: Path) -> tuple[int, str]:
    return await poll("--server", f"{url}/jx", "--receiver-id", "1310001", "--out", out, "--once")


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name != ".bmrgw-poll") if out.exists() else []


def assert_fits_a_screen(text: str) -> None:
    for line in text.splitlines():
        message = line.partition("bmrgw.poll: ")[2] or line
        assert len(message) <= 200, f"too long for an operator's screen: {line}"
        assert "object at 0x" not in message and "Traceback" not in text, line


async def test_a_dead_gateway_is_a_network_failure(tmp_path: Path) -> None:
    code, text = await run_once(f"http://127.0.0.1:{free_port()}", tmp_path / "in")
    assert code == 1
    assert "network failure: GetDocument: connection refused" in text
    assert "round done: 0 received, 0 sent, 1 failed (1 network)" in text
    assert_fits_a_screen(text)


async def test_an_answer_cut_off_midway_is_a_network_failure_and_leaves_no_file(
        fake_jx: Callable[..., Awaitable[FakeJx]], tmp_path: Path) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        return await document_answer(request, cut=True)

    fake = await fake_jx(cut)
    out = tmp_path / "in"
    code, text = await run_once(fake.url, out)
    assert code == 1 and "network failure: GetDocument:" in text and "1 failed (1 network)" in text, text
    assert leftovers(out) == [] and fake.calls == ["GetDocument"]  # not stored, not confirmed
    assert_fits_a_screen(text)


async def test_an_http_error_page_is_an_http_failure(fake_jx: Callable[..., Awaitable[FakeJx]],
                                                     tmp_path: Path) -> None:
    async def proxy_error(request: web.Request) -> web.StreamResponse:
        return web.Response(status=502, text="<html><body>Bad Gateway</body></html>", content_type="text/html")

    fake = await fake_jx(proxy_error)
    code, text = await run_once(fake.url, tmp_path / "in")
    assert code == 1, text
    assert "HTTP failure: GetDocument: HTTP 502 Bad Gateway (text/html" in text
    assert "1 failed (1 HTTP)" in text
    assert_fits_a_screen(text)


@pytest.mark.parametrize(("name", "answer", "says"), [
    ("not-xml", {"body": answer_halves()[0][:-40]}, "not well-formed XML"),
    ("not-soap", {"body": b"<html><body>maintenance</body></html>"}, "not a SOAP 1.1 Envelope"),
    ("wrong-digest", {"sha256": "0" * 64}, "SHA-256"),
    ("bad-base64", {"body": b"QUJD$$$=".join(answer_halves())}, "base64"),
])
async def test_an_answer_that_does_not_parse_is_a_parse_failure_and_is_not_confirmed(
        name: str, answer: dict[str, Any], says: str, fake_jx: Callable[..., Awaitable[FakeJx]],
        tmp_path: Path) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return await document_answer(request, **answer)

    fake = await fake_jx(broken)
    out = tmp_path / "in"
    code, text = await run_once(fake.url, out)
    assert code == 1, text
    assert "parse failure: GetDocument:" in text and says in text and "1 failed (1 parse)" in text, text
    assert fake.calls == ["GetDocument"], "a document that did not parse must not be confirmed"
    assert leftovers(out) == []
    assert_fits_a_screen(text)


async def test_a_fault_on_confirm_keeps_the_document_and_fails_the_round(
        fake_jx: Callable[..., Awaitable[FakeJx]], tmp_path: Path) -> None:
    served = 0

    async def once(request: web.Request) -> web.StreamResponse:
        nonlocal served
        served += 1
        if served > 1:
            before, after = split_at_data(JX, MessageHeader(), False, "", {})
            return web.Response(body=before + after, content_type="text/xml")
        return await document_answer(request)

    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, body=fault("StoreUnavailable", "the document store is down"),
                            content_type="text/xml")

    fake = await fake_jx(once, refuse)
    out = tmp_path / "in"
    code, text = await run_once(fake.url, out)
    assert code == 1, text
    assert (out / "m-1").read_bytes() == DOCUMENT
    assert "fault failure: ConfirmDocument: the gateway answered with a fault: StoreUnavailable: " \
           "the document store is down" in text
    assert "round done: 1 received, 0 sent, 1 failed (1 fault)" in text


async def test_a_refused_receiver_id_is_a_fault_and_stops_the_client(gateway: GatewayFactory,
                                                                      tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg["clients"] = {"cityhall": {"basic": {"user": "ch", "password_hash": hash_password("s3cret-s3cret")},
                                   "jx": {"receive": ["1310001"], "send": ["1310001"]}}}
    url = await gateway(cfg)
    # no --once: a refusal must stop a long-running client too, not be retried forever
    code, text = await poll("--server", f"{url}/jx", "--receiver-id", "9999999", "--out", tmp_path / "in",
                            "--user", "ch", "--password", "s3cret-s3cret", "--interval", "0.1")
    assert code == 1, text
    assert "fault failure: GetDocument: the gateway answered with a fault: Forbidden:" in text
    assert "retrying cannot help" in text
    assert_fits_a_screen(text)


async def test_a_read_only_out_folder_is_a_permission_failure_and_leaves_the_document_waiting(
        gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    url = await gateway(config(tmp_path))
    assert (await put(http, url, "doc-ro", DOCUMENT)).result is True
    out = tmp_path / "in"
    (out / ".bmrgw-poll" / "received").mkdir(parents=True)
    out.chmod(0o555)
    try:
        # root writes anywhere: run the client without CAP_DAC_OVERRIDE, as a city hall's service user would
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
        proc = await asyncio.create_subprocess_exec(
            *prefix, *BMRGW, "poll", "--server", f"{url}/jx", "--receiver-id", "1310001", "--out", str(out), "--once",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        out.chmod(0o755)
    text = output.decode()
    assert proc.returncode == 1, text
    assert f"permission failure: cannot write to {out}: Permission denied" in text
    assert "1 failed (1 permission)" in text
    assert leftovers(out) == []
    waiting = await get(http, url)  # not even leased: the client found out before taking it
    assert waiting.result is True and waiting.data == DOCUMENT


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) for a private tiny tmpfs")
async def test_a_full_disk_is_a_disk_full_failure_and_the_document_is_not_confirmed(
        gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """Disk full for real: ``--out`` is a 1 MiB tmpfs in a private mount namespace, the document 3 MB."""
    cfg = config(tmp_path)
    cfg["gateway"]["jx"] = {"lease_seconds": 1}
    url = await gateway(cfg)
    data = os.urandom(3_000_000)
    assert (await put(http, url, "doc-big", data)).result is True
    out = tmp_path / "in"
    out.mkdir()
    mount = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount, str(out), "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-rm", "sh", "-c", mount, str(out), *BMRGW, "poll", "--server", f"{url}/jx",
        "--receiver-id", "1310001", "--out", str(out), "--once",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = output.decode()
    assert proc.returncode == 1, text
    assert re.search(r"disk full failure: cannot store the document in \S+: No space left on device", text), text
    assert "round done: 0 received, 0 sent, 1 failed (1 disk full)" in text
    await asyncio.sleep(1.2)  # its lease runs out: not confirmed, so it is handed out again, whole
    again = await get(http, url)
    assert again.result is True and again.data == data
    assert_fits_a_screen(text)


async def test_failing_rounds_back_off_instead_of_looping(fake_jx: Callable[..., Awaitable[FakeJx]],
                                                         tmp_path: Path) -> None:
    async def broken(request: web.Request) -> web.StreamResponse:
        return await document_answer(request, sha256="0" * 64)

    fake = await fake_jx(broken)
    proc = await asyncio.create_subprocess_exec(
        *BMRGW, "poll", "--server", f"{fake.url}/jx", "--receiver-id", "1310001", "--out", str(tmp_path / "in"),
        "--interval", "0.05", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    await asyncio.sleep(5)
    proc.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(proc.communicate(), 30)
    # 0.05 s apart that would be ~100 calls; backing off 1, 2, 4 s (jitter 0.5-1x) leaves at most 5
    assert 2 <= fake.calls.count("GetDocument") <= 5, output.decode()
    assert "ConfirmDocument" not in fake.calls
    assert "after 2 failed rounds: next round in" in output.decode()


@pytest.mark.parametrize(("text", "width", "expected"), [
    ("connection refused", 100, "connection refused"),
    ("the gateway answered with a very long reason", 20, "the gateway…"),
    ("HTTPConnectionPool(host='x', port=1): Max retries exceeded", 30, "HTTPConnectionPool(host='x'…"),
    ("a\nmulti-line\n  message", 100, "a multi-line message"),
])
def test_fit_shortens_at_a_word_boundary(text: str, width: int, expected: str) -> None:
    assert fit(text, width) == expected
    assert len(fit(text, width)) <= width
