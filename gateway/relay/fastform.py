"""The fast path's form check (:mod:`gateway.relay.fast`): is a request head in the narrow fast form?

Two compiled byte patterns (the request line, the header lines) and a few
look-ups decide it; the module docstring of :mod:`gateway.relay.fast` says
what the form is.  A head that is not in it is ``None`` here and goes to
aiohttp's handler whole.
"""

from __future__ import annotations

import re

from aiohttp.helpers import parse_content_type
from multidict import CIMultiDict

__all__ = ["Head", "parse_head", "media_type", "prefixes", "MAX_BODY", "MAX_HEAD", "MAX_FIELDS", "API_METHODS"]

#: The largest body the fast path takes (a bigger one streams through aiohttp's path).
MAX_BODY = 64 * 1024
#: The largest request head it takes (aiohttp's own limits are larger: it decides beyond).
MAX_HEAD = 8192
MAX_FIELDS = 64
#: The API relay's methods the fast path takes: without a body, and with one.
API_METHODS = (b"GET", b"DELETE", b"POST", b"PUT", b"PATCH")
_BODYLESS = frozenset({"GET", "DELETE"})

_SOAP_PREFIX = b"POST /soap"
_NAME = rb"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"
_SOAP_LINE = re.compile(rb"POST /soap(?:/(" + _NAME + rb"))? HTTP/1\.1\r\n")
# /api/AP, /api/AP/, /api/AP/seg/seg[/] and a query: segments of unreserved characters not starting with a
# dot (no '.', '..'), never empty but for a trailing slash, no '%': what path.py would take unchanged.
# Anything else (percent-encodings, '//', '\', dot segments, other bytes) is path.py's to refuse or rewrite.
_SEGMENT = rb"[A-Za-z0-9_~-][A-Za-z0-9._~-]*"
_API_LINE = re.compile(rb"(GET|DELETE|POST|PUT|PATCH) (/api/(" + _NAME + rb")(?:/" + _SEGMENT + rb")*/?"
                       rb"(?:\?[A-Za-z0-9._~=&,:+-]*)?) HTTP/1\.1\r\n")
_FIELD = rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?)[ \t]*\r\n"
_FIELDS = re.compile(rb"(?:" + _FIELD + rb")*")
_FIELD_ONE = re.compile(_FIELD.decode("ascii"))  # on the head as text, once _FIELDS proved it ASCII
_CL = re.compile(r"[1-9][0-9]{0,5}")
_NOT_HERE = frozenset({"transfer-encoding", "expect", "connection", "upgrade", "te", "trailer", "keep-alive",
                       "proxy-connection", "content-encoding"})
_SOAP = frozenset({"text/xml", "application/soap+xml"})
#: aiohttp's ``request.content_type`` when the request has no Content-Type.
_UNTYPED = "application/octet-stream"
#: Content-Type values seen, with their media type (a bounded cache: the values come from callers).
_TYPES: dict[str, str] = {}
_TYPES_KEPT = 64


def prefixes(api: bool) -> tuple[bytes, ...]:
    """How a request in the fast form begins (the SOAP relay's, and the API relay's when ``api``)."""
    return (_SOAP_PREFIX, *(method + b" /api/" for method in API_METHODS)) if api else (_SOAP_PREFIX,)


def media_type(value: str) -> str:
    """The media type of a Content-Type value as aiohttp's ``request.content_type`` gives it."""
    found = _TYPES.get(value)
    if found is None:
        found = parse_content_type(value)[0]
        if len(_TYPES) >= _TYPES_KEPT:
            _TYPES.clear()
        _TYPES[value] = found
    return found


class Head:
    """A request head in the fast form: method, target, the path's AP, the headers, the body's length."""

    __slots__ = ("method", "target", "api", "ap", "headers", "length", "content_length", "content_type")

    def __init__(self, method: str, target: str, api: bool, ap: str | None, headers: CIMultiDict[str],
                 content_length: int | None, content_type: str) -> None:
        self.method = method
        self.target = target
        self.api = api
        """For the API relay (``/api/...``), else the SOAP relay's."""
        self.ap = ap
        self.headers = headers
        self.content_length = content_length
        """As the caller announced it (``None``: no Content-Length)."""
        self.length = content_length or 0
        """Body bytes to read."""
        self.content_type = content_type


def parse_head(head: bytes, *, api: bool = True) -> Head | None:
    """``head`` (request line and header lines, each ending in CR LF, without the empty line) when it is
    in the fast form; ``None`` for anything else.  ``api``: whether ``/api`` requests may be in it."""
    line = _SOAP_LINE.match(head)
    is_api = line is None
    if line is None and (not api or (line := _API_LINE.match(head)) is None):
        return None
    if _FIELDS.fullmatch(head, line.end()) is None:
        return None
    pairs: list[tuple[str, str]] = _FIELD_ONE.findall(head.decode("ascii"), line.end())
    if len(pairs) > MAX_FIELDS:
        return None
    fields = {name.lower(): value for name, value in pairs}
    if len(fields) != len(pairs) or "host" not in fields or not _NOT_HERE.isdisjoint(fields):
        return None
    length = fields.get("content-length")
    content_type = fields.get("content-type")
    if not is_api:
        if length is None or _CL.fullmatch(length) is None or int(length) > MAX_BODY:
            return None
        if content_type is None or (media := media_type(content_type)) not in _SOAP:
            return None
        ap = line.group(1)
        return Head("POST", line.group(0)[5:-11].decode("ascii"), False, None if ap is None else ap.decode("ascii"),
                    CIMultiDict(pairs), int(length), media)
    method = line.group(1).decode("ascii")
    if method in _BODYLESS:
        if length is not None and length != "0":
            return None
    elif length is None or _CL.fullmatch(length) is None or int(length) > MAX_BODY:
        return None
    media = _UNTYPED if content_type is None else media_type(content_type)
    return Head(method, line.group(2).decode("ascii"), True, line.group(3).decode("ascii"), CIMultiDict(pairs),
                None if length is None else int(length), media)
