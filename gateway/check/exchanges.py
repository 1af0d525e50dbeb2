"""The exchange items of the connection test: Basic credentials, the relay round trip to the
gateway's echo business AP, and a JX Put → Get → Confirm on a test receiver id.

Each exchange carries a fresh message id; the report lists them so the data
centre finds the same exchanges in its send/receive log (``bmrgw logs --id``).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

import aiohttp
from lxml import etree

from gateway.errors import FileError, GatewayError, RemoteFault
from gateway.jx.client import Credentials, JxClient
from gateway.jx.failure import Kind, RoundFailure
from gateway.ns import ROUTING
from gateway.parser import parse
from refdb.client import RefdbClient
from refdb.files import read_records

from .network import session
from .result import Probe, Result
from .site import Site

__all__ = ["basic", "echo", "jx", "refdb", "echo_envelope"]

_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
_MAX_ANSWER = 1024 * 1024


def echo_envelope(site: Site, message_id: str, nonce: str) -> bytes:
    """A SOAP 1.1 message to the echo endpoint, with the gateway's routing header."""
    sender = f"<r:From>{escape(site.sender)}</r:From>" if site.sender else ""
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<soap:Envelope xmlns:soap="{_SOAP11}">'
            f'<soap:Header><r:Routing xmlns:r="{ROUTING}"><r:To>{escape(site.echo or "")}</r:To>{sender}'
            f"<r:MessageId>{message_id}</r:MessageId></r:Routing></soap:Header>"
            f'<soap:Body><c:Check xmlns:c="urn:bmrgw:check:1"><c:nonce>{nonce}</c:nonce>'
            f"<c:text>接続試験</c:text></c:Check></soap:Body></soap:Envelope>").encode()


async def _post_echo(site: Site, probe: Probe) -> tuple[int, bytes, str]:
    if probe.echo_answer is None:
        message_id, nonce = f"check-{uuid.uuid4()}", uuid.uuid4().hex
        auth = aiohttp.BasicAuth(site.user, site.password or "", encoding="utf-8") if site.user else None
        async with session(site, probe) as http, http.post(
                f"{site.gateway}/soap", data=echo_envelope(site, message_id, nonce), auth=auth,
                headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"urn:bmrgw:check:1/Check"'}) as resp:
            body = await resp.content.read(_MAX_ANSWER)
        probe.echo_answer = (resp.status, body if nonce.encode() in body or resp.status != 200 else b"", message_id)
    return probe.echo_answer


def _fault(body: bytes) -> str:
    """``code: faultstring`` of a gateway fault, or the start of the body."""
    try:
        root = parse(body, max_bytes=_MAX_ANSWER)
    except (GatewayError, etree.XMLSyntaxError):
        return body[:200].decode("utf-8", "replace") or "(empty answer)"
    text = root.findtext(".//faultstring") or root.findtext(f".//{{{_SOAP11}}}Text") or ""
    code = next((e.get("code") for e in root.iter() if isinstance(e.tag, str) and e.tag.endswith("}Error")), None)
    return f"{code}: {text}" if code else text or "a SOAP fault"


async def basic(site: Site, probe: Probe, result: Result) -> Result:
    if site.user is None:
        return result.skipped("no basic credentials configured")
    if site.echo is None:
        return result.skipped("needs 'echo:' (the credentials are tried on the echo round trip)")
    status, body, message_id = await _post_echo(site, probe)
    if status == 401:
        return result.failed(f"the gateway refuses user {site.user!r}: {_fault(body)}",
                             "check the user and password the data centre registered for this site "
                             "(clients.NAME.basic on the gateway); passwords are case-sensitive", message_id)
    return result.passed(f"user {site.user!r} accepted", message_id)


async def echo(site: Site, probe: Probe, result: Result) -> Result:
    if site.echo is None:
        return result.skipped("no 'echo:' endpoint configured")
    status, body, message_id = await _post_echo(site, probe)
    if status == 200 and body:
        return result.passed(f"{site.echo} echoed the message ({len(body)} bytes)", message_id)
    fix = {404: f"the data centre adds 'endpoints: {{{site.echo}: {{echo: true}}}}' to endpoints.yaml",
           403: f"the gateway must allow this site to call {site.echo!r} (clients.NAME.allow) and to claim "
                f"the sender {site.sender!r} (clients.NAME.senders)",
           401: "fix the Basic credentials first"}.get(status, "ask the data centre with the message id: the "
                                                              "gateway logged the exchange")
    why = _fault(body) if body else "the answer did not carry the message back"
    return result.failed(f"HTTP {status}: {why}", fix, message_id)


async def jx(site: Site, probe: Probe, result: Result) -> Result:
    if site.jx is None:
        return result.skipped("no 'jx:' test ids configured")
    return await asyncio.to_thread(_jx_round, site, result)


def _jx_fix(exc: RoundFailure, sender: str, receiver: str) -> str:
    if exc.kind is Kind.NETWORK:
        return "the JX call did not get through (TLS or network): compare with the items above, and 'ca:'"
    if exc.kind is Kind.HTTP and exc.status not in (401, 403):
        return f"the gateway answered HTTP {exc.status} on /jx: is JX enabled on it?"
    return (f"the gateway must allow this site jx.send: [{sender}] and jx.receive: [{receiver}] "
            "(clients.NAME.jx on the gateway)")


def _jx_round(site: Site, result: Result) -> Result:
    assert site.jx is not None
    test = site.jx
    client = JxClient(f"{site.gateway}/jx", sender=test.sender, timeout=site.timeout, credentials=Credentials(
        user=site.user, password=site.password, cert=site.cert, key=site.key, ca=site.ca))
    message_id = f"check-{uuid.uuid4()}"
    step = "PutDocument"
    try:
        client.put_streamed({"messageId": message_id, "senderId": test.sender, "receiverId": test.receiver,
                             "formatType": "text/plain", "documentType": "bmrgw-check.txt", "compressType": ""},
                            [f"bmrgw check {message_id}".encode()])
        step = "GetDocument"
        with tempfile.TemporaryDirectory(prefix="bmrgw-check-") as folder:
            fetched = client.get_document(test.receiver, Path(folder))
            if fetched is None or fetched.field("messageId") != message_id:
                got = "nothing" if fetched is None else f"another document ({fetched.field('messageId')})"
                return result.failed(f"GetDocument for {test.receiver} returned {got}, not the document just put",
                                     f"use a receiver id only for tests, with no documents waiting "
                                     f"(bmrgw jx list --receiver {test.receiver} on the gateway)", message_id)
            step = "ConfirmDocument"
            client.confirm_document(message_id, test.sender, test.receiver)
    except RoundFailure as exc:
        return result.failed(f"{step} refused: {exc.reason}", _jx_fix(exc, test.sender, test.receiver), message_id)
    return result.passed(f"put to {test.receiver} as {test.sender}, got it back and confirmed", message_id)


async def refdb(site: Site, probe: Probe, result: Result) -> Result:
    if site.refdb is None:
        return result.skipped("the site pushes no refdb dataset ('refdb:' not configured)")
    return await asyncio.to_thread(_refdb_dry_run, site, probe, result)


def _refdb_dry_run(site: Site, probe: Probe, result: Result) -> Result:
    assert site.refdb is not None
    test = site.refdb
    client = RefdbClient(site.gateway, user=site.user, password=site.password, ssl_context=probe.context,
                         timeout=site.timeout)
    try:
        with client:
            held = client.dry_run(test.dataset, read_records(test.file))
    except RemoteFault as exc:
        fix = {"Forbidden": f"the gateway must name this site's client as refdb.datasets.{test.dataset}.owner",
               "UnknownDataset": f"the data centre declares refdb.datasets.{test.dataset}",
               "InvalidRecord": f"correct the record the reason names in {test.file.name}"}.get(
            exc.remote_code, "ask the data centre with the time of this test: the gateway logged the refusal")
        return result.failed(f"a push to {test.dataset} would be refused: {exc.reason}", fix)
    except (FileError, OSError) as exc:
        return result.failed(f"cannot read {test.file}: {exc}", "check 'refdb: file:' in SITE.yaml")
    return result.passed(f"{held} records of {test.file.name} accepted for {test.dataset}; aborted, nothing applied")
