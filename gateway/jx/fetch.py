"""GetDocument for ``bmrgw poll``, streamed to disk (JX手順 GetDocument; issue 21, item 1).

zeep reads a whole answer into one tree, and libxml2 refuses a text node of
more than 10 MB unless ``huge_tree`` lifts every limit: no document over
about 7.5 MB could come through it.  Here the answer is read as it arrives:
:class:`~gateway.parser.PrologGuard` first, then the hardened parser with a
*target* (no tree is built), and the base64 of ``data`` decoded quartet by
quartet (:class:`~gateway.jx.wire.Base64Spool`) into a hidden temporary file
in the folder the document will end up in, hashed on the way.  Memory stays
flat whatever the document's size.

An answer is complete when its HTTP body had the announced Content-Length
(urllib3 checks), the XML ended well-formed, the base64 ended on a whole
quartet and — from a bmrgw gateway, which sends the stored document's SHA-256
in :data:`~gateway.ns.H_JX_SHA256` (the JX wire carries no digest) — the
decoded bytes have that digest.  Anything else is a :class:`RoundFailure`
and the temporary file is gone.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lxml import etree

from ..errors import MalformedMessage, MessageTooLarge
from ..ns import H_JX_SHA256, JX, SOAP11_ENV
from ..parser import PrologGuard, hardened_parser
from .failure import Kind, RoundFailure, describe, fit, storage_failure
from .wire import DOCUMENT_FIELDS, MAX_FIELDS_TEXT, Base64Spool, Spool, jx_namespace, local_name, split_tag

__all__ = ["Fetched", "get_document", "request_envelope", "message_header"]

_CHUNK = 256 * 1024
_ENVELOPE = f"{{{SOAP11_ENV}}}Envelope"
_BODY = f"{{{SOAP11_ENV}}}Body"
_FAULT = f"{{{SOAP11_ENV}}}Fault"
_ANSWER_FIELDS = ("GetDocumentResult", "messageId", *DOCUMENT_FIELDS)
#: Fault codes after which polling again cannot help: the gateway does not accept us or our id.
_FATAL_CODES = frozenset({"Unauthorized", "Forbidden"})


@dataclass(frozen=True, kw_only=True)
class Fetched:
    """A document GetDocument handed out, its bytes verified in ``spool`` (a hidden file in the out folder)."""

    fields: dict[str, str]
    spool: Spool

    def field(self, name: str) -> str:
        return self.fields.get(name, "")


def message_header(sender: str) -> dict[str, str]:
    """The JX ``MessageHeader`` of a request from ``sender``."""
    return {"From": sender, "To": "bmrgw", "MessageId": str(uuid.uuid4()),
            "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def request_envelope(operation: str, values: list[tuple[str, str]], header: dict[str, str], *,
                     namespace: str = JX) -> bytes:
    """A document/literal JX request as the WSDL describes it, UTF-8, in ``namespace``."""
    soap = f"{{{SOAP11_ENV}}}"
    envelope = etree.Element(f"{soap}Envelope", nsmap={"soap": SOAP11_ENV, "jx": namespace})
    head = etree.SubElement(etree.SubElement(envelope, f"{soap}Header"), f"{{{namespace}}}MessageHeader")
    for name, value in header.items():
        etree.SubElement(head, f"{{{namespace}}}{name}").text = value
    request = etree.SubElement(etree.SubElement(envelope, f"{soap}Body"), f"{{{namespace}}}{operation}")
    for name, value in values:
        etree.SubElement(request, f"{{{namespace}}}{name}").text = value
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


def get_document(session: Any, server: str, receiver_id: str, header: dict[str, str], *, folder: Path,
                 timeout: float, namespace: str = JX) -> Fetched | None:
    """GetDocument: the next document, stored in a hidden temporary file in ``folder``, or None if none waits."""
    import requests

    body = request_envelope("GetDocument", [("receiverId", receiver_id)], header, namespace=namespace)
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{namespace}/GetDocument"'}
    try:
        with session.post(server, data=body, headers=headers, stream=True, timeout=(30, timeout)) as response:
            return _read_answer(response, folder)
    except requests.RequestException as exc:
        raise RoundFailure(Kind.NETWORK, f"GetDocument: {describe(exc, timeout=timeout)}") from exc


def _read_answer(response: Any, folder: Path) -> Fetched | None:
    status, content_type = response.status_code, response.headers.get("Content-Type", "")
    http_failure = f"GetDocument: HTTP {status} {fit(response.reason or '', 40)}".rstrip() + \
        (f" ({fit(content_type, 40)})" if content_type else "")
    if not content_type.lower().startswith("text/xml"):
        raise RoundFailure(Kind.HTTP, http_failure, status=status)
    reader = AnswerReader(folder, expected_sha256=response.headers.get(H_JX_SHA256))
    try:
        for chunk in response.iter_content(_CHUNK):
            reader.feed(chunk)
        fetched = reader.finish()
    except RoundFailure as failure:  # a fault is a fault whatever its status (bmrgw: 500, 503, 401)
        reader.abort()
        if status != 200 and failure.kind is Kind.PARSE:
            raise RoundFailure(Kind.HTTP, http_failure, status=status) from failure
        failure.status = status
        raise
    except BaseException:
        reader.abort()
        raise
    if status != 200:
        if fetched is not None:
            fetched.spool.discard()
        raise RoundFailure(Kind.HTTP, http_failure, status=status)
    return fetched


@dataclass(eq=False)
class _Target:
    """lxml parser target for a GetDocumentResponse or a SOAP fault: keeps the fields, spools ``data``."""

    folder: Path
    path: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    fault: dict[str, str] | None = None
    spool: Base64Spool | None = None
    text: list[str] = field(default_factory=list)
    text_size: int = 0
    operation: str | None = None
    namespace: str | None = None

    def doctype(self, *_: Any) -> None:
        raise MalformedMessage("the answer holds a DTD")

    def start(self, tag: str, attrib: Any, nsmap: Any = None) -> None:
        depth = len(self.path)
        self.path.append(tag)
        self.text = []
        if depth == 0 and tag != _ENVELOPE:
            raise MalformedMessage(f"the answer's root {fit(tag, 60)} is not a SOAP 1.1 Envelope")
        if depth == 2 and self.path[1] == _BODY:
            self._operation(tag, attrib)
        elif depth == 3 and self.operation == "GetDocumentResponse" and tag == f"{{{self.namespace}}}data":
            if self.spool is not None:
                raise MalformedMessage("the answer holds data twice")
            self.spool = Base64Spool(self.folder, limit=sys.maxsize, prefix=".bmrgw-")
        elif self.fault is not None and local_name(tag) == "Error" and attrib.get("code"):
            self.fault["code"] = attrib.get("code")  # bmrgw's <g:Error code="..."/> detail

    def _operation(self, tag: str, attrib: Any) -> None:
        if self.operation is not None:
            raise MalformedMessage("the answer's Body holds more than one element")
        namespace, local = split_tag(tag)
        if tag == _FAULT:
            self.fault = {}
        elif local != "GetDocumentResponse" or not jx_namespace(namespace):
            raise MalformedMessage(f"the answer is {local}, not a GetDocumentResponse")
        self.operation, self.namespace = local, namespace

    def data(self, text: str) -> None:
        if self.spool is not None and len(self.path) == 4 and local_name(self.path[3]) == "data":
            self.spool.write_text(text)
            return
        self.text_size += len(text)
        if self.text_size > MAX_FIELDS_TEXT:
            raise MessageTooLarge(f"the answer's fields hold more than {MAX_FIELDS_TEXT} characters")
        self.text.append(text)

    def end(self, tag: str) -> None:
        depth = len(self.path)
        self.path.pop()
        if self.fault is not None and depth >= 4:  # faultcode, faultstring, detail/g:Error
            self.fault.setdefault(local_name(tag), "".join(self.text).strip())
        elif depth == 4 and self.operation == "GetDocumentResponse" and local_name(tag) in _ANSWER_FIELDS:
            if local_name(tag) in self.fields:
                raise MalformedMessage(f"the answer holds {local_name(tag)} twice")
            self.fields[local_name(tag)] = "".join(self.text).strip()
        self.text = []

    def close(self) -> None:
        return None


class AnswerReader:
    """Feed a GetDocument answer's bytes as they arrive; :meth:`finish` verifies it and returns the document."""

    def __init__(self, folder: Path, *, expected_sha256: str | None = None) -> None:
        self._guard = PrologGuard()
        self._target = _Target(folder=folder)
        self._parser = hardened_parser(target=self._target)
        self._expected = (expected_sha256 or "").strip().lower() or None

    def feed(self, chunk: bytes) -> None:
        with self._translated():
            chunk = self._guard.feed(chunk)
            if chunk:
                self._parser.feed(chunk)

    def finish(self) -> Fetched | None:
        with self._translated():
            rest = self._guard.close()
            if rest:
                self._parser.feed(rest)
            self._parser.close()
            return self._result()

    def _result(self) -> Fetched | None:
        target = self._target
        if target.fault is not None:
            raise _fault(target.fault)
        if target.operation is None:
            raise MalformedMessage("the answer's Body is empty")
        result = target.fields.get("GetDocumentResult", "")
        if result not in ("true", "1"):
            self.abort()
            if result not in ("false", "0"):
                raise MalformedMessage(f"GetDocumentResult is {fit(result, 20)!r}, not a boolean")
            return None
        if target.spool is None or not target.fields.get("messageId"):
            raise MalformedMessage("the answer lacks its data or messageId")
        spool = target.spool.finish()
        if self._expected is not None and spool.sha256 != self._expected:
            spool.discard()
            raise MalformedMessage(f"the document's SHA-256 is not the {H_JX_SHA256} the gateway sent")
        return Fetched(fields=dict(target.fields), spool=spool)

    def abort(self) -> None:
        if self._target.spool is not None:
            self._target.spool.abort()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Turns what parsing and spooling raise into the :class:`RoundFailure` an operator reads."""
        try:
            yield
        except RoundFailure:
            self.abort()
            raise
        except etree.XMLSyntaxError as exc:
            self.abort()
            raise RoundFailure(Kind.PARSE, f"GetDocument: the answer is not well-formed XML "
                                           f"({fit(str(exc), 60)})") from exc
        except (MalformedMessage, MessageTooLarge) as exc:
            self.abort()
            raise RoundFailure(Kind.PARSE, f"GetDocument: {fit(exc.reason)}") from exc
        except OSError as exc:
            self.abort()
            raise storage_failure(exc, f"cannot store the document in {self._target.folder}") from exc


def _fault(fault: dict[str, str]) -> RoundFailure:
    code = fault.get("code") or fault.get("faultcode", "")
    reason = fault.get("faultstring", "") or "no reason given"
    return RoundFailure(Kind.FAULT, f"GetDocument: the gateway answered with a fault: {fit(code, 40)}: {fit(reason)}",
                        fatal=code in _FATAL_CODES)
