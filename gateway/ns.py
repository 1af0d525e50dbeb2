"""Namespaces, content types and header names used across the gateway, in one place."""

from __future__ import annotations

import enum

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
WSA_2004 = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
ROUTING = "urn:bmrgw:routing:1"
FAULT = "urn:bmrgw:fault:1"
REFDB = "urn:bmrgw:refdb:1"
XML = "http://www.w3.org/XML/1998/namespace"

#: ``wsa:To`` values of this form name a destination business AP.
AP_URN_PREFIX = "urn:bmrgw:ap:"

CT_SOAP11 = "text/xml"
CT_SOAP12 = "application/soap+xml"

H_SOAPACTION = "SOAPAction"
H_MESSAGE_ID = "X-Message-Id"
H_VIA = "Via"
#: The authenticated client's name, as the relay tells the endpoint (a caller's own is never forwarded).
H_CLIENT = "X-Bmrgw-Client"
#: On a GetDocument answer from bmrgw: the SHA-256 (hex) of the document, for the client to verify.
H_JX_SHA256 = "X-JX-Document-SHA256"


class SoapVersion(enum.Enum):
    """A SOAP version, with what differs between the two on the wire."""

    V11 = "1.1"
    V12 = "1.2"

    @property
    def envelope_ns(self) -> str:
        return SOAP11_ENV if self is SoapVersion.V11 else SOAP12_ENV

    @property
    def content_type(self) -> str:
        return CT_SOAP11 if self is SoapVersion.V11 else CT_SOAP12

# -- WS-Security (OASIS WSS 1.0 SOAP Message Security, X.509 Token Profile) and XML-DSig
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DSIG = "http://www.w3.org/2000/09/xmldsig#"
WSS_X509V3 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
WSS_BASE64 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"

#: JX protocol (JX手順) namespace of jx2004.wsdl and jx2007.wsdl; SOAPAction is ``<JX>/<Op>``.
JX = "http://www.dsri.jp/edi-bp/2004/jedicos-xml/client-server"
#: The 2007 edition's namespace as some WSDL copies spell it, without the hyphen of ``jedicos-xml``;
#: accepted on requests (and answered in), never published.
JX_HYPHENLESS = "http://www.dsri.jp/edi-bp/2004/jedicosxml/client-server"
# File transfer (capability D): the PutFilePart / GetFileStatus service, and MTOM's XOP.
FILE = "urn:bmrgw:file:1"
XOP = "http://www.w3.org/2004/08/xop/include"
