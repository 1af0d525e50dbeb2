"""The request the benchmark sends, and the check that a target answered it properly.

One SOAP 1.1 ``Echo`` envelope of an exact size carries the routing header
naming ``demo``: the gateway routes by it, while the backend and nginx ignore
it, so every target receives the very same bytes.  The padding is the Echo
text itself, so the answer is as large as the request, as in a real exchange
of documents.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

from lxml import etree

from gateway.ns import CT_SOAP11, H_SOAPACTION, ROUTING, SOAP11_ENV
from gateway.serve.demo import DEMO_NS

from .procs import BenchError

__all__ = ["DESTINATION", "HEADERS", "Envelope", "make_envelope", "verify"]

DESTINATION = "demo"
SOAP_ACTION = f"{DEMO_NS}/Echo"
#: Sent with every request, by wrk as well as by :func:`verify`.
HEADERS = {"Content-Type": f"{CT_SOAP11}; charset=utf-8", H_SOAPACTION: f'"{SOAP_ACTION}"'}

_HEAD = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    f'<soap:Envelope xmlns:soap="{SOAP11_ENV}">'
    f'<soap:Header><r:Routing xmlns:r="{ROUTING}"><r:To>{DESTINATION}</r:To><r:From>bench</r:From></r:Routing></soap:Header>'
    f'<soap:Body><d:Echo xmlns:d="{DEMO_NS}"><d:text>'
)
_TAIL = "</d:text></d:Echo></soap:Body></soap:Envelope>\n"
# Plain text that reads like a business record, so nothing compresses or parses unusually well.
_FILLER = ("Resident record 0000: name=Yamada Taro; address=1-2-3 Kasumigaseki, Chiyoda; "
           "status=registered; updated=2024-04-01T09:00:00+09:00. ")


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """A request body of an exact size and the Echo text it carries."""

    body: bytes
    text: str


def make_envelope(size: int) -> Envelope:
    """An Echo envelope of exactly ``size`` bytes."""
    room = size - len(_HEAD) - len(_TAIL)
    if room < 0:
        raise ValueError(f"an envelope needs at least {len(_HEAD) + len(_TAIL)} bytes")
    text = (_FILLER * (room // len(_FILLER) + 1))[:room]
    body = (_HEAD + text + _TAIL).encode("ascii")
    assert len(body) == size
    return Envelope(body=body, text=text)


def verify(url: str, envelope: Envelope, *, target: str, headers: dict[str, str] = HEADERS) -> None:
    """Post the envelope once and insist on a 200 EchoResponse with the same text, so
    a target that answers fast but wrongly (a fault, a 404) is never measured."""
    request = urllib.request.Request(url, data=envelope.body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except OSError as exc:
        raise BenchError(f"{target}: POST {url} failed: {exc}") from exc
    problem = _echo_problem(answer, envelope.text) if status == 200 else f"HTTP {status}"
    if problem:
        raise BenchError(f"{target}: POST {url} did not answer an EchoResponse ({problem}):\n"
                         f"{answer[:600].decode('utf-8', 'replace')}")


def _echo_problem(answer: bytes, text: str) -> str | None:
    """Why ``answer`` is not the EchoResponse for ``text``, or None when it is."""
    try:
        root = etree.fromstring(answer, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        return f"not XML: {exc}"
    echo = root.find(f"{{{SOAP11_ENV}}}Body/{{{DEMO_NS}}}EchoResponse")
    if echo is None:
        return "no EchoResponse in the Body"
    if echo.findtext(f"{{{DEMO_NS}}}text") != text:
        return "the echoed text differs from the text sent"
    return None
