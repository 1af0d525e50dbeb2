"""Gateway errors on ``/api`` as ``application/problem+json`` (RFC 9457), with the SOAP faults' codes.

The body carries the members of RFC 9457 §3.1 — ``type`` (a URN naming the
gateway's error code), ``title``, ``status``, ``detail`` — and the extension
members ``code`` (the same code as the SOAP fault's ``<g:Error code="…"/>``),
``gateway``, ``message_id`` and the error's structured fields (``destination``,
``endpoint``; its ``detail`` becomes ``info``), so a client tells failures apart exactly as a
SOAP client does.

HTTP status: the error's own, except where HTTP has a more exact word than
SOAP's obligatory 500: an endpoint that cannot be reached is 502 Bad Gateway,
one that does not answer in time 504 Gateway Timeout, a routing loop 508
Loop Detected.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web

from gateway.errors import (EndpointTimeout, EndpointUnavailable, GatewayError, LoginThrottled, RoutingLoop,
                            TooManyRequests)
from gateway.ns import FAULT, H_MESSAGE_ID
from gateway.relay.call import Answer

__all__ = ["PROBLEM_JSON", "problem", "problem_status", "problem_response", "problem_answer",
           "problem_bytes", "is_api_path",
           "SERVER"]

PROBLEM_JSON = "application/problem+json"
#: Our Server header (as the SOAP relay's).
SERVER = "bmrgw"

_STATUS: tuple[tuple[type[GatewayError], int], ...] = (
    (EndpointTimeout, 504), (EndpointUnavailable, 502), (RoutingLoop, 508))


def is_api_path(path: str) -> bool:
    """Whether ``path`` is the API relay's (``/api`` and below): its gateway errors are problem details."""
    return path == "/api" or path.startswith("/api/")


def problem_status(error: GatewayError) -> int:
    """The HTTP status of ``error`` on ``/api``."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return error.http_status


def problem(error: GatewayError, *, gateway: str) -> dict[str, Any]:
    """The problem details object of ``error``."""
    body: dict[str, Any] = {
        "type": f"{FAULT}#{error.code}",
        "title": error.code,
        "status": problem_status(error),
        "detail": error.reason,
        "code": error.code,
        "gateway": gateway,
    }
    for name, value in error.fields().items():
        body["info" if name == "detail" else name] = value
    return body


def problem_response(error: GatewayError, *, gateway: str, message_id: str | None,
                     headers: dict[str, str] | None = None) -> web.Response:
    """The whole answer: status, ``application/problem+json`` body and ``X-Message-Id`` (and ``headers``)."""
    answer = problem_answer(error, gateway=gateway, message_id=message_id, headers=headers)
    return web.Response(status=answer.status, headers=answer.headers, body=answer.body)


def problem_answer(error: GatewayError, *, gateway: str, message_id: str | None,
                   headers: dict[str, str] | None = None) -> Answer:
    """:func:`problem_response` as the relay's :class:`~gateway.relay.call.Answer` (any HTTP server)."""
    body = problem(error, gateway=gateway)
    answer = {"Content-Type": f"{PROBLEM_JSON}; charset=utf-8", "Server": SERVER, **(headers or {})}
    if message_id is not None:
        body["message_id"] = answer[H_MESSAGE_ID] = message_id
    if isinstance(error, TooManyRequests) and not isinstance(error, LoginThrottled):
        answer["Retry-After"] = error.detail or "1"
    return Answer(body["status"], None, answer, json.dumps(body, ensure_ascii=False).encode())


def problem_bytes(error: GatewayError, *, gateway: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer of ``error``'s problem details, as raw bytes: for a connection that aiohttp
    does not serve (the listen limit's busy answer).  The connection closes after it."""
    status = problem_status(error)
    body = json.dumps(problem(error, gateway=gateway), ensure_ascii=True).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"Content-Type: {PROBLEM_JSON}; charset=utf-8",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items()),
             "Connection: close", f"Server: {SERVER}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
