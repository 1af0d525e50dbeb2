"""PutDocument for ``bmrgw poll``, streamed from disk (issue 21, items 1 and 5 the other way round).

zeep builds the whole request in memory, base64 and all (4/3 of the file,
then a copy as text): an upload was as big in RAM as the file.  Here the
envelope is written as the WSDL orders it, and ``data`` is base64-encoded
piece by piece as the file — compressed on the way when the partner says so
— is read; the request goes out with chunked transfer encoding.  The answer
is small and read whole (at most :data:`MAX_ANSWER` bytes), through
:class:`~gateway.parser.PrologGuard` and the hardened parser.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

from lxml import etree

from ..errors import MalformedMessage
from ..ns import JX, SOAP11_ENV
from ..parser import PrologGuard, parse
from .failure import Kind, RoundFailure, describe, fit
from .fetch import request_envelope
from .wire import jx_namespace, local_name, split_tag

__all__ = ["put_streamed", "MAX_ANSWER"]

#: Largest PutDocument answer read (a boolean in an envelope, or a fault).
MAX_ANSWER = 1024 * 1024
_MARK = "@@bmrgw-data@@"
_FATAL_CODES = frozenset({"Unauthorized", "Forbidden"})


def put_streamed(session: Any, server: str, header: dict[str, str], fields: dict[str, str],
                 data: Iterable[bytes], *, timeout: float) -> bool:
    """PutDocument with ``fields`` (all but ``data``) and the bytes of ``data``; its boolean result."""
    import requests

    order = ["messageId", "data", "senderId", "receiverId", "formatType", "documentType", "compressType"]
    values = [(name, _MARK if name == "data" else fields[name]) for name in order]
    head, tail = request_envelope("PutDocument", values, header).split(_MARK.encode("ascii"))
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{JX}/PutDocument"'}
    try:
        with session.post(server, data=_body(head, data, tail), headers=headers, stream=True,
                          timeout=(30, timeout)) as response:
            return _answer(response)
    except requests.RequestException as exc:
        raise RoundFailure(Kind.NETWORK, f"PutDocument: {describe(exc, timeout=timeout)}") from exc


def _body(head: bytes, data: Iterable[bytes], tail: bytes) -> Iterator[bytes]:
    yield head
    carry = b""  # base64 goes in whole quartets: what is not a multiple of 3 bytes waits for the next piece
    for piece in data:
        joined = carry + piece
        usable = len(joined) - len(joined) % 3
        if usable:
            yield base64.b64encode(joined[:usable])
        carry = joined[usable:]
    yield base64.b64encode(carry) + tail


def _answer(response: Any) -> bool:
    status, content_type = response.status_code, response.headers.get("Content-Type", "")
    failure = RoundFailure(Kind.HTTP, f"PutDocument: HTTP {status} {fit(response.reason or '', 40)}".rstrip(),
                           status=status, fatal=status in (401, 403))
    if not content_type.lower().startswith("text/xml"):
        raise failure
    content = bytearray()
    for chunk in response.iter_content(64 * 1024):
        content += chunk
        if len(content) > MAX_ANSWER:
            raise RoundFailure(Kind.PARSE, f"PutDocument: the answer is longer than {MAX_ANSWER} bytes")
    try:
        PrologGuard.check(bytes(content))
        root = parse(bytes(content), max_bytes=MAX_ANSWER)
        result = _result(root)
    except MalformedMessage as exc:
        raise (failure if status != 200 else RoundFailure(Kind.PARSE, f"PutDocument: {fit(exc.reason)}")) from exc
    except etree.XMLSyntaxError as exc:
        raise (failure if status != 200 else RoundFailure(
            Kind.PARSE, f"PutDocument: the answer is not well-formed XML ({fit(str(exc), 60)})")) from exc
    if status != 200:
        raise failure
    return result


def _result(root: etree._Element) -> bool:
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    if root.tag != f"{{{SOAP11_ENV}}}Envelope" or body is None or len(body) != 1:
        raise MalformedMessage("the answer is not a SOAP 1.1 envelope with one Body element")
    answer = body[0]
    if answer.tag == f"{{{SOAP11_ENV}}}Fault":
        raise _fault(answer)
    namespace, local = split_tag(str(answer.tag))
    if local != "PutDocumentResponse" or not jx_namespace(namespace):
        raise MalformedMessage(f"the answer is {local}, not a PutDocumentResponse")
    result = answer.findtext(f"{{{namespace}}}PutDocumentResult")
    if result is None or result.strip() not in ("true", "false", "1", "0"):
        raise MalformedMessage(f"PutDocumentResult is {fit(str(result), 20)!r}, not a boolean")
    return result.strip() in ("true", "1")


def _fault(fault: etree._Element) -> RoundFailure:
    code = next((str(e.get("code")) for e in fault.iter() if isinstance(e.tag, str)
                 and local_name(e.tag) == "Error" and e.get("code")), "")
    code = code or (fault.findtext("faultcode") or "").rpartition(":")[2]
    reason = (fault.findtext("faultstring") or "").strip() or "no reason given"
    return RoundFailure(Kind.FAULT, f"PutDocument: the gateway answered with a fault: {fit(code, 40)}: {fit(reason)}",
                        fatal=code in _FATAL_CODES)
