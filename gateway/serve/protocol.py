"""aiohttp's request handler, with problem details for ``/api`` where aiohttp answers by itself.

aiohttp answers a request head it cannot parse — a bad request line, a
control byte in the target, a header line over ``max_field_size``, a bad
``Content-Length`` — with its own ``text/plain`` 400 that quotes the
offending bytes, before the application sees a request, so no middleware
can change it.  :class:`ProblemHandler` keeps the first :data:`API_HEAD`
bytes of each request head as they arrive and, when that head was for
``/api`` (:func:`~gateway.relay.limits.api_request`), answers with problem
details instead, quoting nothing the caller sent:

* a line too long: ``MessageTooLarge`` (413);
* anything else aiohttp cannot read: ``MalformedMessage`` (400), its
  ``info`` naming aiohttp's error class (``BadStatusLine``, ``InvalidHeader``…);
* an error escaping a handler (a bug): ``GatewayError`` (500).

A head is known only when it starts while the connection waits for a
request (the first, or the next after an answer); a request pipelined
behind another in the same bytes keeps aiohttp's own answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from gateway.api import is_api_path, problem_response
from gateway.errors import GatewayError, MalformedMessage, MessageTooLarge
from gateway.relay.answer import SERVER
from gateway.relay.limits import API_HEAD, api_request

__all__ = ["ProblemHandler", "failure_answer", "problem_handlers"]

log = logging.getLogger("bmrgw")


class ProblemHandler(web.RequestHandler):
    """A :class:`aiohttp.web.RequestHandler` whose own error answers to ``/api`` requests are problem details."""

    def __init__(self, server: web.Server, gateway: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._gateway = gateway
        self._line = b""
        self._line_of = -1
        """The request count when :attr:`_line` began: it is the start of request number ``_line_of + 1``."""

    def data_received(self, data: bytes) -> None:
        # these bytes start (or go on with) a new request head when aiohttp waits for one (the test of
        # gateway.relay.limits' _Guarded, inlined: this runs for every chunk of every request)
        waiter = self._waiter
        if (waiter is not None and not waiter.done()) or not self._request_count:
            count = self._request_count
            if self._line_of != count:
                self._line, self._line_of = data[:API_HEAD], count
            elif len(self._line) < API_HEAD:
                self._line += data[:API_HEAD - len(self._line)]
        super().data_received(data)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        answer = super().handle_error(request, status, exc, message)  # logs; raises if an answer began
        head_known = self._line_of == self._request_count - 1 and api_request(self._line) is True
        if not (is_api_path(request.path) and request.method != "UNKNOWN") and not head_known:
            answer.headers["Server"] = SERVER  # the product, not aiohttp's versions (as every answer)
            return answer
        error = _error(status, exc)
        response = problem_response(error, gateway=self._gateway(), message_id=None)
        response.force_close()
        return response


def _error(status: int, exc: BaseException | None) -> GatewayError:
    if status >= 500:
        return GatewayError("the gateway failed to answer this request; it is logged")
    if isinstance(exc, LineTooLong):
        return MessageTooLarge("a line of the request head is longer than the gateway reads (8190 bytes for the "
                               "request line, 16384 for a header)", detail="LineTooLong")
    kind = type(exc).__name__ if isinstance(exc, HttpProcessingError) else "BadHttpMessage"
    return MalformedMessage("the request head is not valid HTTP/1.1 and was not read", detail=kind)


def failure_answer(api: bool, accept: str, gateway: str) -> bytes:
    """The bytes :class:`ProblemHandler` writes when a handler fails unexpectedly (a bug: status 500), for a
    request that did not pass aiohttp's handler (the relay's fast path, :mod:`gateway.relay.fast`).

    ``/api``: problem details (``GatewayError``); otherwise aiohttp's own text, or its HTML page when
    ``accept`` names ``text/html`` — headers in aiohttp's order, then ``Connection: close``; ``Server`` names
    the product, as on every answer.
    ``tests/test_relay_fast.py`` compares these bytes with aiohttp's answer."""
    if api:
        response = problem_response(_error(500, None), gateway=gateway, message_id=None)
    else:
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        title, description = f"{status.value} {status.phrase}", status.description
        if "text/html" in accept:
            response = web.Response(status=500, content_type="text/html", text=(
                f"<html><head><title>{title}</title></head><body>\n<h1>{title}</h1>\n{description}\n</body></html>\n"))
        else:
            response = web.Response(status=500, content_type="text/plain", text=f"{title}\n\n{description}")
        response.headers["Server"] = SERVER
    body = response.body
    assert isinstance(body, bytes)
    headers = response.headers
    lines = [f"HTTP/1.1 {response.status} {response.reason}", *(f"{k}: {v}" for k, v in headers.items())]
    if "Content-Length" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Date: {rfc822_formatted_time()}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def problem_handlers(gateway: Callable[[], str]) -> Callable[[web.Server], web.RequestHandler]:
    """What makes each connection's handler for :class:`~gateway.relay.limits.ListenSite` (``handler=``):
    a :class:`ProblemHandler` with the runner's handler settings."""
    def make(server: web.Server) -> web.RequestHandler:
        # web.Server.__call__ does the same with its own class; its settings are not public
        return ProblemHandler(server, gateway, loop=server._loop, **server._kwargs)
    return make
