"""JX namespace tolerance (issue 21, item 3): the 2007 edition's hyphen-less variant on receipt.

Some 2007 clients are generated from WSDL copies whose namespace lost the
hyphen of ``jedicos-xml`` (``…/2004/jedicosxml/client-server``).  The gateway
accepts requests in either namespace, answers in the one the client used,
and still publishes only the strict namespace on ``?wsdl``.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from lxml import etree

from gateway.ns import JX, JX_HYPHENLESS, SOAP11_ENV

from .conftest import GatewayFactory
from .jxhelp import Answer, envelope, put_envelope

#: As issue 21 quotes it, after the domain and path the WSDLs in /work/shared/jx/ publish.
ISSUE_VARIANT = "http://www.dsri.jp/edi-bp/2004/jedicosxml/client-server"


def test_the_variant_is_the_one_the_issue_names() -> None:
    assert JX_HYPHENLESS == ISSUE_VARIANT
    assert JX_HYPHENLESS.replace("jedicosxml", "jedicos-xml") == JX


async def call(http: aiohttp.ClientSession, url: str, namespace: str, op: str, body: bytes) -> Answer:
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{namespace}/{op}"'}
    async with http.post(f"{url}/jx", data=body, headers=headers) as resp:
        return Answer(resp.status, etree.fromstring(await resp.read()))


def in_namespace(body: bytes, namespace: str) -> bytes:
    return body.replace(f'xmlns:jx="{JX}"'.encode(), f'xmlns:jx="{namespace}"'.encode())


@pytest.mark.parametrize("namespace", [JX, ISSUE_VARIANT], ids=["published", "hyphen-less"])
async def test_put_get_confirm_in_each_namespace_are_answered_in_it(
        namespace: str, gateway: GatewayFactory, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    url = await gateway({"gateway": {"name": "dc-ns", "data_dir": str(tmp_path / "var")}})
    put = await call(http, url, namespace, "PutDocument",
                     in_namespace(put_envelope("ns-doc", b"\x82\xa0 Shift_JIS bytes"), namespace))
    got = await call(http, url, namespace, "GetDocument",
                     in_namespace(envelope("GetDocument", [("receiverId", "1310001")]), namespace))
    confirm = await call(http, url, namespace, "ConfirmDocument", in_namespace(envelope(
        "ConfirmDocument", [("messageId", "ns-doc"), ("senderId", "DC"), ("receiverId", "1310001")]), namespace))
    for answer, op in ((put, "PutDocument"), (got, "GetDocument"), (confirm, "ConfirmDocument")):
        assert answer.status == 200, etree.tostring(answer.root)
        body = answer.root.find(f"{{{SOAP11_ENV}}}Body")
        assert body is not None and body[0].tag == f"{{{namespace}}}{op}Response"
        header = answer.root.find(f"{{{SOAP11_ENV}}}Header/{{{namespace}}}MessageHeader")
        assert header is not None, "the MessageHeader is in the caller's namespace too"
        assert answer.result is True
    assert got.data == b"\x82\xa0 Shift_JIS bytes"


async def test_another_namespace_is_still_refused(gateway: GatewayFactory, tmp_path: Path,
                                                  http: aiohttp.ClientSession) -> None:
    url = await gateway({"gateway": {"name": "dc-ns", "data_dir": str(tmp_path / "var")}})
    other = "http://www.dsri.jp/edi-bp/2004/jedicos/client-server"
    answer = await call(http, url, JX, "GetDocument",
                        in_namespace(envelope("GetDocument", [("receiverId", "1310001")]), other))
    assert answer.status == 500 and answer.fault_code == "MalformedMessage"


@pytest.mark.parametrize("edition", ["wsdl", "wsdl=2004"])
async def test_the_wsdl_stays_strict(edition: str, gateway: GatewayFactory, tmp_path: Path,
                                     http: aiohttp.ClientSession) -> None:
    url = await gateway({"gateway": {"name": "dc-ns", "data_dir": str(tmp_path / "var")}})
    async with http.get(f"{url}/jx?{edition}") as resp:
        text = await resp.text()
    root = etree.fromstring(text.encode())
    assert root.get("targetNamespace") == JX
    assert "jedicosxml" not in text and JX in text
