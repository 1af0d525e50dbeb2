"""Helpers for the JX tests: raw JX requests over HTTP and a zeep client from the shipped WSDL."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import aiohttp
import zeep
from lxml import etree

from gateway.ns import JX, SOAP11_ENV

NS = {"jx": JX, "s": SOAP11_ENV}
BINDING = f"{{{JX}}}JXMSTransferSoap"


def action(op: str) -> dict[str, str]:
    return {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{JX}/{op}"'}


def envelope(op: str, fields: list[tuple[str, str]], *, header: dict[str, str] | None = None,
             namespace: str = JX) -> bytes:
    values = header if header is not None else {"From": "x", "To": "gw", "MessageId": "h-1", "Timestamp": "t"}
    head = "".join(f"<jx:{k}>{v}</jx:{k}>" for k, v in values.items())
    body = "".join(f"<jx:{k}>{v}</jx:{k}>" for k, v in fields)
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP11_ENV}" xmlns:jx="{namespace}">'
            f"<s:Header><jx:MessageHeader>{head}</jx:MessageHeader></s:Header>"
            f"<s:Body><jx:{op}>{body}</jx:{op}></s:Body></s:Envelope>").encode("utf-8")


def put_envelope(message_id: str, data: bytes, *, sender: str = "DC", receiver: str = "1310001",
                 format_type: str = "CSV", document_type: str = "doc", compress_type: str = "",
                 header: dict[str, str] | None = None) -> bytes:
    return envelope("PutDocument", [("messageId", message_id), ("data", base64.b64encode(data).decode()),
                                    ("senderId", sender), ("receiverId", receiver), ("formatType", format_type),
                                    ("documentType", document_type), ("compressType", compress_type)],
                    header=header)


@dataclass
class Answer:
    status: int
    root: etree._Element

    @property
    def namespaces(self) -> dict[str, str]:
        """The JX namespace the answer uses (the caller's variant), as ``jx``."""
        body = self.root.find(f"{{{SOAP11_ENV}}}Body")
        first = body[0] if body is not None and len(body) else None
        namespace = etree.QName(first).namespace if first is not None else None
        return {"jx": namespace or JX, "s": SOAP11_ENV}

    def text(self, path: str) -> str | None:
        found: str | None = self.root.findtext(path, namespaces=self.namespaces)
        return found

    @property
    def result(self) -> bool | None:
        for name in ("PutDocumentResult", "GetDocumentResult", "ConfirmDocumentResult"):
            value = self.text(f".//jx:{name}")
            if value is not None:
                return value == "true"
        return None

    @property
    def fault_code(self) -> str | None:
        error = self.root.find(".//{urn:bmrgw:fault:1}Error")
        return None if error is None else error.get("code")

    @property
    def data(self) -> bytes:
        return base64.b64decode(self.text(".//jx:data") or "")


async def call(http: aiohttp.ClientSession, url: str, op: str, body: bytes) -> Answer:
    data = io.BytesIO(body) if len(body) > 1_000_000 else body  # aiohttp warns on big raw bytes
    async with http.post(f"{url}/jx", data=data, headers=action(op)) as resp:
        return Answer(resp.status, etree.fromstring(await resp.read()))


async def put(http: aiohttp.ClientSession, url: str, message_id: str, data: bytes, **kw: Any) -> Answer:
    return await call(http, url, "PutDocument", put_envelope(message_id, data, **kw))


async def get(http: aiohttp.ClientSession, url: str, receiver: str = "1310001",
              header: dict[str, str] | None = None) -> Answer:
    return await call(http, url, "GetDocument", envelope("GetDocument", [("receiverId", receiver)], header=header))


async def confirm(http: aiohttp.ClientSession, url: str, message_id: str, sender: str = "DC",
                  receiver: str = "1310001") -> Answer:
    return await call(http, url, "ConfirmDocument", envelope(
        "ConfirmDocument", [("messageId", message_id), ("senderId", sender), ("receiverId", receiver)]))


def zeep_service(url: str, edition: str = "2007") -> Any:
    """A zeep client built from the shipped WSDL, bound to the gateway's /jx."""
    wsdl = str(resources.files("schemas").joinpath(f"jx{edition}.wsdl"))
    return zeep.Client(wsdl).create_service(BINDING, f"{url}/jx")


def header(sender: str = "1310001", **extra: str) -> dict[str, Any]:
    return {"MessageHeader": {"From": sender, "To": "DC", "MessageId": "m", "Timestamp": "2026-04-01T00:00:00Z",
                              **extra}}


MIB = 1024 * 1024


def block(n: int) -> bytes:
    """The n-th MiB of a big test document: reproducible, so the test can hash it without keeping it."""
    return hashlib.sha256(n.to_bytes(8, "big")).digest() * (MIB // 32)


async def streamed_put(message_id: str, size: int) -> AsyncIterator[bytes]:
    """A PutDocument envelope carrying ``size`` bytes of :func:`block` s, base64-encoded as it streams."""
    head, tail = put_envelope(message_id, b"").split(b"<jx:data></jx:data>")
    yield head + b"<jx:data>"
    carry = b""  # base64 in whole quartets: what is not a multiple of 3 bytes goes on to the next block
    for n in range(size // MIB):
        data = carry + block(n)
        usable = len(data) - len(data) % 3
        yield base64.b64encode(data[:usable])
        carry = data[usable:]
    yield base64.b64encode(carry) + b"</jx:data>" + tail
