"""A small, strict JX server that is not bmrgw, written from the WSDL alone (issue 21 interop).

Every request must be a SOAP 1.1 envelope posted as ``text/xml`` with the
SOAPAction the WSDL's binding names, holding one ``MessageHeader`` and one
Body element, both valid against the ``<types>`` schema of the shipped
``jx2007.wsdl``; the server's own answers are validated against the same
schema before they leave.  Anything else is a SOAP fault with HTTP 500 and
is recorded in :attr:`StrictJx.refused`, so a test sees exactly what a strict
product (a DC's JX server built by another vendor) would have refused.
It shares no code with bmrgw's ``/jx``: lxml and aiohttp only.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from importlib import resources
from aiohttp import web
from lxml import etree

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
XSD = "http://www.w3.org/2001/XMLSchema"
WSDL = "http://schemas.xmlsoap.org/wsdl/"


def wsdl_schema(edition: str = "2007", *, hyphenless: bool = False) -> tuple[etree.XMLSchema, str]:
    """The XML Schema in the WSDL's ``<types>``, and its target namespace; with ``hyphenless``, of a WSDL
    copy whose namespace lost the hyphen of ``jedicos-xml`` (as some products' copies have)."""
    text = resources.files("schemas").joinpath(f"jx{edition}.wsdl").read_bytes()
    if hyphenless:
        text = text.replace(b"/jedicos-xml/", b"/jedicosxml/")
    wsdl = etree.fromstring(text)
    schema = wsdl.find(f"{{{WSDL}}}types/{{{XSD}}}schema")
    assert schema is not None
    # Standing alone, it needs the prefixes it inherited from <definitions> (type="s0:MessageHeader").
    alone = etree.Element(schema.tag, attrib=dict(schema.attrib), nsmap=schema.nsmap)
    alone.extend(copy.deepcopy(child) for child in schema)
    return etree.XMLSchema(alone), str(schema.get("targetNamespace"))


@dataclass
class Stored:
    fields: dict[str, str]
    data: bytes
    confirmed: bool = False


@dataclass
class StrictJx:
    """The server's state: documents by receiver, uploads received, requests refused."""

    schema: etree.XMLSchema
    ns: str
    documents: list[Stored] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def add(self, message_id: str, data: bytes, *, receiver: str, compress_type: str = "",
            document_type: str = "doc") -> None:
        self.documents.append(Stored({"messageId": message_id, "senderId": "OTHER-DC", "receiverId": receiver,
                                      "formatType": "FILE", "documentType": document_type,
                                      "compressType": compress_type}, data))

    async def handle(self, request: web.Request) -> web.Response:
        try:
            operation, header, body = self._check(request, await request.read())
            self.requests.append(operation)
            return self._answer(operation, getattr(self, f"_{operation}")(body), header)
        except ValueError as exc:
            self.refused.append(str(exc))
            return self._fault(str(exc))

    def _check(self, request: web.Request, raw: bytes) -> tuple[str, etree._Element, etree._Element]:
        if request.content_type != "text/xml":
            raise ValueError(f"Content-Type {request.content_type}, not text/xml")
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
        root = etree.fromstring(raw, parser)
        if root.getroottree().docinfo.doctype:
            raise ValueError("a DTD")
        headers, bodies = root.findall(f"{{{SOAP}}}Header"), root.findall(f"{{{SOAP}}}Body")
        if root.tag != f"{{{SOAP}}}Envelope" or len(headers) != 1 or len(bodies) != 1 or len(bodies[0]) != 1:
            raise ValueError("not a SOAP 1.1 envelope with one Header and one Body element")
        blocks = headers[0].findall(f"{{{self.ns}}}MessageHeader")
        if len(blocks) != 1:
            raise ValueError("no single jx:MessageHeader")
        body = bodies[0][0]
        operation = etree.QName(body).localname
        action = request.headers.get("SOAPAction", "").strip('"')
        if action != f"{self.ns}/{operation}":
            raise ValueError(f"SOAPAction {action!r} is not {self.ns}/{operation}")
        for element in (blocks[0], body):
            if not self.schema.validate(etree.fromstring(etree.tostring(element))):
                raise ValueError(f"{etree.QName(element).localname} is not valid: {self.schema.error_log.last_error}")
        return operation, blocks[0], body

    def _text(self, body: etree._Element, name: str) -> str:
        return body.findtext(f"{{{self.ns}}}{name}") or ""

    def _PutDocument(self, body: etree._Element) -> list[tuple[str, str]]:
        fields = {name: self._text(body, name) for name in
                  ("messageId", "senderId", "receiverId", "formatType", "documentType", "compressType")}
        self.documents.append(Stored(fields, base64.b64decode(self._text(body, "data"), validate=True)))
        return [("PutDocumentResult", "true")]

    def _GetDocument(self, body: etree._Element) -> list[tuple[str, str]]:
        receiver = self._text(body, "receiverId")
        for doc in self.documents:
            if doc.fields["receiverId"] == receiver and not doc.confirmed:
                f = doc.fields
                return [("GetDocumentResult", "true"), ("messageId", f["messageId"]),
                        ("data", base64.b64encode(doc.data).decode()), ("senderId", f["senderId"]),
                        ("receiverId", receiver), ("formatType", f["formatType"]),
                        ("documentType", f["documentType"]), ("compressType", f["compressType"])]
        return [("GetDocumentResult", "false"), ("messageId", ""), ("data", ""), ("senderId", ""),
                ("receiverId", receiver), ("formatType", ""), ("documentType", ""), ("compressType", "")]

    def _ConfirmDocument(self, body: etree._Element) -> list[tuple[str, str]]:
        wanted = (self._text(body, "messageId"), self._text(body, "senderId"), self._text(body, "receiverId"))
        for doc in self.documents:
            if (doc.fields["messageId"], doc.fields["senderId"], doc.fields["receiverId"]) == wanted:
                first, doc.confirmed = not doc.confirmed, True
                return [("ConfirmDocumentResult", "true" if first else "false")]
        raise ValueError(f"no document {wanted}")

    def _answer(self, operation: str, values: list[tuple[str, str]], header: etree._Element) -> web.Response:
        envelope = etree.Element(f"{{{SOAP}}}Envelope", nsmap={"soap": SOAP, "jx": self.ns})
        head = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP}}}Header"), f"{{{self.ns}}}MessageHeader")
        for name, value in (("From", "strict-dc"), ("To", self._header(header, "From")),
                            ("MessageId", "answer-1"), ("Timestamp", "2026-04-01T00:00:00Z")):
            etree.SubElement(head, f"{{{self.ns}}}{name}").text = value
        answer = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP}}}Body"), f"{{{self.ns}}}{operation}Response")
        for name, value in values:
            etree.SubElement(answer, f"{{{self.ns}}}{name}").text = value
        assert self.schema.validate(etree.fromstring(etree.tostring(answer))), self.schema.error_log
        return web.Response(body=etree.tostring(envelope, xml_declaration=True, encoding="utf-8"),
                            content_type="text/xml", charset="utf-8")

    def _header(self, header: etree._Element, name: str) -> str:
        return header.findtext(f"{{{self.ns}}}{name}") or ""

    def _fault(self, reason: str) -> web.Response:
        envelope = (f'<soap:Envelope xmlns:soap="{SOAP}"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode>'
                    f"<faultstring>{reason.replace('&', '&amp;').replace('<', '&lt;')}</faultstring>"
                    "</soap:Fault></soap:Body></soap:Envelope>")
        return web.Response(status=500, body=envelope.encode(), content_type="text/xml", charset="utf-8")


def strict_app(server: StrictJx) -> web.Application:
    app = web.Application(client_max_size=1024 ** 3)
    app.router.add_post("/jx", server.handle)
    return app


def new_server(edition: str = "2007", *, hyphenless: bool = False) -> StrictJx:
    schema, ns = wsdl_schema(edition, hyphenless=hyphenless)
    return StrictJx(schema=schema, ns=ns)
