"""SOAP 1.1 / 1.2 framing: versions from content types, and gateway fault envelopes.

Gateway faults follow SPEC.md "Gateway faults": the caller's SOAP version,
``Client``/``Server`` (1.1) or ``Sender``/``Receiver`` (1.2), a readable
reason, and ``<g:Error xmlns:g="urn:bmrgw:fault:1" code="…"/>`` as detail.
"""

from __future__ import annotations

from lxml import etree

from .errors import GatewayError
from .ns import CT_SOAP11, CT_SOAP12, FAULT, XML, SoapVersion

__all__ = ["version_for", "fault_envelope", "gateway_fault", "fault_content_type"]

_BY_MIMETYPE = {CT_SOAP11: SoapVersion.V11, CT_SOAP12: SoapVersion.V12}
_V12_CODES = {"Client": "Sender", "Server": "Receiver"}


def version_for(mimetype: str) -> SoapVersion | None:
    """The SOAP version a request's media type announces, if it is a SOAP one."""
    return _BY_MIMETYPE.get(mimetype.strip().lower())


def fault_content_type(version: SoapVersion) -> str:
    return f"{version.content_type}; charset=utf-8"


def _error_detail(error: GatewayError, gateway: str) -> etree._Element:
    detail = etree.Element(f"{{{FAULT}}}Error", nsmap={"g": FAULT})
    detail.set("code", error.code)
    detail.set("gateway", gateway)
    for name, value in error.fields().items():
        detail.set(name, value)
    return detail


def fault_envelope(version: SoapVersion, *, fault: str, reason: str, detail: etree._Element | None = None) -> bytes:
    """A complete fault envelope; ``fault`` is ``Client`` or ``Server`` (mapped for 1.2)."""
    env_ns = version.envelope_ns
    envelope = etree.Element(f"{{{env_ns}}}Envelope", nsmap={"soap": env_ns})
    node = etree.SubElement(etree.SubElement(envelope, f"{{{env_ns}}}Body"), f"{{{env_ns}}}Fault")
    if version is SoapVersion.V11:
        etree.SubElement(node, "faultcode").text = f"soap:{fault}"
        etree.SubElement(node, "faultstring").text = reason
        detail_parent = etree.SubElement(node, "detail") if detail is not None else None
    else:
        code = etree.SubElement(node, f"{{{env_ns}}}Code")
        etree.SubElement(code, f"{{{env_ns}}}Value").text = f"soap:{_V12_CODES[fault]}"
        text = etree.SubElement(etree.SubElement(node, f"{{{env_ns}}}Reason"), f"{{{env_ns}}}Text")
        text.set(f"{{{XML}}}lang", "en")
        text.text = reason
        detail_parent = etree.SubElement(node, f"{{{env_ns}}}Detail") if detail is not None else None
    if detail_parent is not None and detail is not None:
        detail_parent.append(detail)
    return bytes(etree.tostring(envelope, xml_declaration=True, encoding="utf-8"))


def gateway_fault(error: GatewayError, version: SoapVersion, *, gateway: str) -> bytes:
    """The fault envelope for a gateway error, with its ``g:Error`` detail."""
    return fault_envelope(version, fault=error.fault, reason=error.reason, detail=_error_detail(error, gateway))
