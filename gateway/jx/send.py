"""PutDocument (streamed from disk) and ConfirmDocument for ``bmrgw poll`` (issue 21, items 1 and 5).

zeep builds the whole request in memory, base64 and all (4/3 of the file,
then a copy as text): an upload was as big in RAM as the file.  Here the
envelope is written as the WSDL orders it, and ``data`` is base64-encoded
piece by piece as the file — compressed on the way when the partner says so
— is read; the request goes out with chunked transfer encoding.  The answer
is small and read whole (at most :data:`MAX_ANSWER` bytes), through
:class:`~gateway.parser.PrologGuard` and the hardened parser.  ConfirmDocument
goes the same way.  Requests are in the namespace the partner's WSDL uses:
the published one, or the 2007 edition's hyphen-less variant
(``namespace: hyphenless`` in poll.yaml), and answers in either are read.
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

__all__ = ["put_streamed", "confirm", "MAX_ANSWER"]

#: Largest PutDocument answer read (a boolean in an envelope, or a fault).
MAX_ANSWER = 1024 * 1024
_MARK = "@@bmrgw-data@@"
_FATAL_CODES = frozenset({"Unauthorized", "Forbidden"})


def put_streamed(session: Any, server: str, header: dict[str, str], fields: dict[str, str],
                 data: Iterable[bytes], *, timeout: float, namespace: str = JX) -> bool:
    """PutDocument with ``fields`` (all but ``data``) and the bytes of ``data``; its boolean result."""
    order = ["messageId", "data", "senderId", "receiverId", "formatType", "documentType", "compressType"]
    values = [(name, _MARK if name == "data" else fields[name]) for name in order]
    head, tail = request_envelope("PutDocument", values, header, namespace=namespace).split(_MARK.encode("ascii"))
    return _call(session, server, "PutDocument", _body(head, data, tail), namespace=namespace, timeout=timeout)


def confirm(session: Any, server: str, header: dict[str, str], message_id: str, sender_id: str, receiver_id: str,
            *, timeout: float, namespace: str = JX) -> bool:
    """ConfirmDocument; ``False`` when the server says it was confirmed already."""
    values = [("messageId", message_id), ("senderId", sender_id), ("receiverId", receiver_id)]
    body = request_envelope("ConfirmDocument", values, header, namespace=namespace)
    return _call(session, server, "ConfirmDocument", body, namespace=namespace, timeout=timeout)


def _call(session: Any, server: str, operation: str, body: bytes | Iterator[bytes], *, namespace: str,
          timeout: float) -> bool:
    import requests

    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{namespace}/{operation}"'}
    try:
        with session.post(server, data=body, headers=headers, stream=True, timeout=(30, timeout)) as response:
            return _answer(response, operation)
    except requests.RequestException as exc:
        raise RoundFailure(Kind.NETWORK, f"{operation}: {describe(exc, timeout=timeout)}") from exc


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


def _answer(response: Any, operation: str) -> bool:
    status, content_type = response.status_code, response.headers.get("Content-Type", "")
    failure = RoundFailure(Kind.HTTP, f"{operation}: HTTP {status} {fit(response.reason or '', 40)}".rstrip(),
                           status=status, fatal=status in (401, 403))
    if not content_type.lower().startswith("text/xml"):
        raise failure
    content = bytearray()
    for chunk in response.iter_content(64 * 1024):
        content += chunk
        if len(content) > MAX_ANSWER:
            raise RoundFailure(Kind.PARSE, f"{operation}: the answer is longer than {MAX_ANSWER} bytes")
    try:
        PrologGuard.check(bytes(content))
        result = _result(parse(bytes(content), max_bytes=MAX_ANSWER), operation)
    except MalformedMessage as exc:
        raise (failure if status != 200 else RoundFailure(Kind.PARSE, f"{operation}: {fit(exc.reason)}")) from exc
    except etree.XMLSyntaxError as exc:
        raise (failure if status != 200 else RoundFailure(
            Kind.PARSE, f"{operation}: the answer is not well-formed XML ({fit(str(exc), 60)})")) from exc
    if status != 200:
        raise failure
    return result


def _result(root: etree._Element, operation: str) -> bool:
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    if root.tag != f"{{{SOAP11_ENV}}}Envelope" or body is None or len(body) != 1:
        raise MalformedMessage("the answer is not a SOAP 1.1 envelope with one Body element")
    answer = body[0]
    if answer.tag == f"{{{SOAP11_ENV}}}Fault":
        raise _fault(answer, operation)
    namespace, local = split_tag(str(answer.tag))
    if local != f"{operation}Response" or not jx_namespace(namespace):
        raise MalformedMessage(f"the answer is {fit(local, 40)}, not a {operation}Response")
    result = answer.findtext(f"{{{namespace}}}{operation}Result")
    if result is None or result.strip() not in ("true", "false", "1", "0"):
        raise MalformedMessage(f"{operation}Result is {fit(str(result), 20)!r}, not a boolean")
    return result.strip() in ("true", "1")


def _fault(fault: etree._Element, operation: str) -> RoundFailure:
    code = next((str(e.get("code")) for e in fault.iter() if isinstance(e.tag, str)
                 and local_name(e.tag) == "Error" and e.get("code")), "")
    code = code or (fault.findtext("faultcode") or "").rpartition(":")[2]
    reason = (fault.findtext("faultstring") or "").strip() or "no reason given"
    return RoundFailure(Kind.FAULT, f"{operation}: the gateway answered with a fault: {fit(code, 40)}: {fit(reason)}",
                        fatal=code in _FATAL_CODES)
