"""The demo business AP: a small WSDL-described SOAP service (``schemas/demo.wsdl``).

``bmrgw demo-backend`` runs it so an operator can try the gateway end to end
(the sample endpoints.yaml points ``demo`` at it), and the tests and
benchmarks use it as their real backend.  It answers SOAP 1.1 and 1.2:
``Echo`` returns the text and the service's name, ``Add`` adds two integers,
``Fail`` answers with a SOAP fault carrying the given reason.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from lxml import etree

import schemas
from gateway.errors import GatewayError
from gateway.ns import H_SOAPACTION, SoapVersion
from gateway.parser import parse
from gateway.soap import fault_envelope, version_for

__all__ = ["DEMO_NS", "make_demo_app"]

DEMO_NS = "urn:bmrgw:demo:1"
_MAX_REQUEST = 1024 * 1024
_NAME_KEY = web.AppKey("demo_name", str)
_DELAY_KEY = web.AppKey("demo_delay", float)


class _DemoFault(Exception):
    def __init__(self, fault: str, reason: str) -> None:
        super().__init__(reason)
        self.fault = fault
        self.reason = reason


def make_demo_app(*, name: str = "demo", delay: float = 0.0) -> web.Application:
    """The demo service; ``delay`` seconds are waited before each answer."""
    app = web.Application(client_max_size=_MAX_REQUEST)
    app[_NAME_KEY] = name
    app[_DELAY_KEY] = delay
    app.router.add_get("/{tail:.*}", _wsdl)
    app.router.add_post("/{tail:.*}", _call)
    return app


async def _wsdl(request: web.Request) -> web.Response:
    if "wsdl" not in request.query:
        raise web.HTTPNotFound(text="GET ?wsdl for the service description\n")
    location = str(request.url.with_query(None)).encode()
    body = schemas.read("demo.wsdl").replace(b"http://127.0.0.1:9001/demo", location)
    return web.Response(body=body, content_type="text/xml", charset="utf-8")


async def _call(request: web.Request) -> web.Response:
    version = version_for(request.content_type) or SoapVersion.V11
    try:
        answer = _operation(await request.read(), version, request.app[_NAME_KEY])
        status = 200
    except _DemoFault as exc:
        answer = fault_envelope(version, fault=exc.fault, reason=exc.reason)
        status = 500
    except GatewayError as exc:
        answer = fault_envelope(version, fault="Client", reason=exc.reason)
        status = 500
    if request.app[_DELAY_KEY]:
        await asyncio.sleep(request.app[_DELAY_KEY])
    response = web.Response(body=answer, status=status, content_type=version.content_type, charset="utf-8")
    if request.headers.get(H_SOAPACTION) is not None and version is SoapVersion.V11:
        response.headers[H_SOAPACTION] = request.headers[H_SOAPACTION]
    return response


def _operation(data: bytes, version: SoapVersion, name: str) -> bytes:
    envelope = parse(data, max_bytes=_MAX_REQUEST)
    body = envelope.find(f"{{{version.envelope_ns}}}Body")
    call = body[0] if body is not None and len(body) else None
    if call is None or not isinstance(call.tag, str):
        raise _DemoFault("Client", "the SOAP Body is empty")
    operation = etree.QName(call).localname
    if etree.QName(call).namespace != DEMO_NS or operation not in ("Echo", "Add", "Fail"):
        raise _DemoFault("Client", f"unknown operation {call.tag}")
    if operation == "Fail":
        raise _DemoFault("Server", call.findtext(f"{{{DEMO_NS}}}reason") or "failure requested")
    if operation == "Echo":
        values = {"text": call.findtext(f"{{{DEMO_NS}}}text") or "", "service": name}
    else:
        values = {"sum": str(_long(call, "a") + _long(call, "b"))}
    return _response(version, f"{operation}Response", values)


def _long(call: etree._Element, field: str) -> int:
    text = call.findtext(f"{{{DEMO_NS}}}{field}")
    try:
        return int(text or "")
    except ValueError:
        raise _DemoFault("Client", f"{field} must be an integer, not {text!r}") from None


def _response(version: SoapVersion, element: str, values: dict[str, str]) -> bytes:
    env_ns = version.envelope_ns
    envelope = etree.Element(f"{{{env_ns}}}Envelope", nsmap={"soap": env_ns, "d": DEMO_NS})
    out = etree.SubElement(etree.SubElement(envelope, f"{{{env_ns}}}Body"), f"{{{DEMO_NS}}}{element}")
    for key, value in values.items():
        etree.SubElement(out, f"{{{DEMO_NS}}}{key}").text = value
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))

