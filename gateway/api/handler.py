"""The HTTP API relay: ``POST|GET|PUT|PATCH|DELETE /api/{ap}/{path}`` (SPEC.md Version 2).

The SOAP relay's steps (:mod:`gateway.relay.handler`), for a body the
gateway does not read:

1. the hop list in ``Via`` (RoutingLoop), the client's rate for methods the
   rate-limit middleware does not count (it counts POSTs), the log's room;
2. the path below the endpoint, checked so it cannot climb out of it
   (:mod:`gateway.api.path`), the destination resolved in the live route
   table and checked against the client's ``allow`` list; WS-Security
   cannot cover a JSON body, so a client that must sign, or an endpoint
   that signs, is refused rather than served without it;
3. the request sent — its method, the path, the query string, the body
   streamed as it arrives under ``gateway.max_attachment_bytes`` — through
   the same :class:`~gateway.relay.resilience.Resilient` seam (gates,
   breakers, failover only when nothing left the gateway), with the same
   end-to-end headers as a SOAP message, our ``Via`` hop, ``X-Message-Id``
   and ``X-Bmrgw-Client``; ``Authorization`` and ``Cookie`` only to an
   endpoint with ``forward_credentials: true``;
4. the answer streamed back by the SOAP relay's
   :func:`~gateway.relay.answer.respond`, its last chunk held until the
   exchange's two records (``kind: api``) are durable.

A gateway error is an ``application/problem+json`` answer
(:mod:`gateway.api.problem`) with the SOAP fault's code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import fields

from aiohttp import web

from gateway.charset import CharsetProfile
from gateway.errors import (
    ClientFault,
    EndpointUnavailable,
    Forbidden,
    GatewayError,
    MessageTooLarge,
    MethodNotAllowed,
    UnknownDestination,
    UnsupportedMediaType,
)
from gateway.ids import new_message_id
from gateway.keys import CLOCK, JOURNAL, LIVE, METRICS
from gateway.logs.clock import Clock
from gateway.logs.journal import Journal
from gateway.logs.records import ApiExchange
from gateway.metrics import Metrics
from gateway.ns import H_CLIENT, H_MESSAGE_ID, H_VIA
from gateway.relay.answer import SMALL_BODY, record_durably, respond
from gateway.relay.call import Answer, Call, RequestCall
from gateway.relay.handler import authorise, check_hops
from gateway.relay.streamed import RequestBody, receive
from gateway.relay.limits import RateLimiter
from gateway.relay.resilience import RESILIENCE, Resilient, may_have_sent, sent_to
from gateway.relay.trace import Exchange, Trace, check_loggable, echoable_message_id
from gateway.relay.upstream import Upstream
from routing.config import Client, UrlEndpoint
from routing.settings import GatewaySettings
from routing.table import RouteTable
from routing.watch import LiveTable

from .path import api_path
from .problem import is_api_path, problem_answer, problem_response
from gateway.charset.recode import Recoding, recode_reply, recode_request
from .upstream import ApiRoute, ApiUpstream

__all__ = ["ApiRelay", "add_api", "API_RELAY", "METHODS", "FORWARD_REQUEST"]

log = logging.getLogger("bmrgw.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The methods the API relay passes on.
METHODS = ("POST", "GET", "PUT", "PATCH", "DELETE")
#: End-to-end request headers that travel to the endpoint: the SOAP relay's, and the conditional
#: ones a REST API needs; everything else (Authorization, Cookie, hop-by-hop headers, a caller's own
#: X-Bmrgw-Client) stays at the gateway.
FORWARD_REQUEST = ("Content-Type", "Content-Length", "Accept", "Accept-Encoding", "Accept-Language", "User-Agent",
                   "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Prefer")
#: Sent on only to an endpoint with ``forward_credentials: true``.
CREDENTIALS = ("Authorization", "Cookie")


class ApiRelay:
    """The ``/api`` handler: the live route table, the (resilient) API upstream, metrics and the log."""

    def __init__(self, *, table: LiveTable, upstream: Upstream, metrics: Metrics, clock: Clock,
                 journal: Journal | None, limiter: RateLimiter | None = None) -> None:
        self._table = table
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock
        self._journal = journal
        self._limiter = limiter

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp's handler of ``/api/{ap}`` and ``/api/{ap}/{path}``."""
        call = RequestCall(request)
        return call.response(await self.exchange(call))

    async def exchange(self, call: Call) -> Answer:
        """One API exchange, from the caller's parsed request to the answer (any HTTP server)."""
        table = self._table.current
        client = call.client
        trace = Trace(arrived=self._clock.read(), started=time.perf_counter(), client=client.name if client else None)
        recoding = Recoding()
        try:
            trace.message_id = call.headers.get(H_MESSAGE_ID)
            check_loggable(f"header {H_MESSAGE_ID}", "message_id", trace.message_id, trace)
            trace.message_id = trace.message_id or new_message_id()
            self._rate(call, client, table.config.gateway)
            if self._journal is not None:
                await self._journal.admit()
            exchange = self._prepare(call, table, client, trace)
            body = await _body(call, table.config.gateway, trace)
            answer = await self._forward(call, exchange, body, trace, table, recoding)
        except (ConnectionResetError, asyncio.CancelledError):
            trace.status = "error"
            await self._finish(call, trace, recoding, answering=False)
            raise
        except GatewayError as exc:
            answer = self._problem(exc, table.config.gateway.name, trace)
        await self._finish(call, trace, recoding)
        return answer

    def _rate(self, call: Call, client: Client | None, settings: GatewaySettings) -> None:
        """The client's rate for the methods the rate-limit middleware leaves alone (it counts POSTs)."""
        if self._limiter is not None and call.method != "POST":
            caller = f"client {client.name}" if client is not None else f"address {call.remote}"
            self._limiter.take(caller, settings.limits)

    def _prepare(self, call: Call, table: RouteTable, client: Client | None, trace: Trace) -> Exchange:
        settings = table.config.gateway
        incoming_via = call.headers.get(H_VIA, "")
        passed = check_hops(incoming_via, settings.name)
        if call.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise UnsupportedMediaType("compressed request bodies are not accepted")
        path, query = api_path(call.target)
        destination = call.ap
        assert destination is not None, "the /api routes name the AP"
        check_loggable("the destination", "to_ap", destination, trace)
        trace.destination = destination
        authorise(client, destination)
        route = table.resolve(destination, passed=passed)
        trace.endpoint, trace.label = route.url, route.endpoint
        if route.mailbox is not None:
            raise UnknownDestination(f"{destination!r} is a JX mailbox, not an HTTP API", destination=destination)
        if route.disabled:
            raise EndpointUnavailable(f"endpoint {destination!r} is disabled by the operator "
                                      f"(bmrgw endpoints enable {destination})", destination=destination,
                                      endpoint=route.endpoint)
        if client is not None and client.wss_verify is not None:
            raise Forbidden(f"client {client.name!r} must sign its messages with WS-Security "
                            f"(clients.{client.name}.wss.verify); an HTTP API request carries no signature",
                            destination=destination)
        if route.outbound.wss_sign is not None:
            raise UnsupportedMediaType(f"endpoint {destination!r} signs with WS-Security (wss.sign), which only "
                                       "applies to SOAP messages", destination=destination)
        api = ApiRoute(**{f.name: getattr(route, f.name) for f in fields(route)}, method=call.method,
                       path=path, query=query)
        hop = f"{call.version} {settings.name}"
        return Exchange(route=api, message_id=trace.message_id or new_message_id(),
                        via=f"{incoming_via}, {hop}" if incoming_via else hop)

    def _headers(self, call: Call, exchange: Exchange, body: bytes | RequestBody, trace: Trace,
                 table: RouteTable) -> dict[str, str]:
        incoming = call.headers
        headers = {k: incoming[k] for k in FORWARD_REQUEST if k in incoming}
        endpoint = table.config.endpoints.get(exchange.route.endpoint)
        if isinstance(endpoint, UrlEndpoint) and endpoint.forward_credentials:
            client = call.client
            for name in CREDENTIALS:
                # A Basic login the gateway checked is the caller's password here: never passed on.
                if name in incoming and not (name == "Authorization" and client is not None and client.basic):
                    headers[name] = incoming[name]
        if isinstance(body, bytes) and body:
            headers["Content-Length"] = str(len(body))
        headers[H_VIA] = exchange.via
        headers[H_MESSAGE_ID] = exchange.message_id
        if trace.client is not None:
            headers[H_CLIENT] = trace.client
        return headers

    async def _forward(self, call: Call, exchange: Exchange, body: bytes | RequestBody,
                       trace: Trace, table: RouteTable, recoding: Recoding) -> Answer:
        headers = self._headers(call, exchange, body, trace, table)
        profile = _profile(table, exchange.route.endpoint)
        sent: bytes | AsyncIterable[bytes] = body
        if profile is not None:
            sent = recode_request(profile, headers, body, recoding, exchange.route.destination)
            if isinstance(sent, bytes) and sent is not body:
                trace.forwarded_bytes = len(sent)
        trace.forwarded = True
        try:
            reply = await self._upstream.post(exchange.route, headers, sent)
        except GatewayError as exc:
            if getattr(sent, "error", None) is not None:
                trace.forwarded = False
                raise getattr(sent, "error") from None
            trace.forwarded = may_have_sent(exc)
            raise
        trace.answered = time.perf_counter()
        trace.endpoint = sent_to(exchange.route)
        try:
            if getattr(sent, "error", None) is not None:
                trace.forwarded = False
                raise getattr(sent, "error")
            if profile is not None:
                reply = await recode_reply(profile, reply, recoding, exchange.route.destination)
            return await respond(call, reply, exchange, trace, lambda: self._log(call, trace, recoding))
        finally:
            reply.release()

    def _problem(self, error: GatewayError, gateway: str, trace: Trace) -> Answer:
        log.info("problem %s: %s", error.code, error.reason)
        self._metrics.fault(error.code)
        answer = problem_answer(error, gateway=gateway, message_id=trace.message_id)
        trace.status = "fault" if isinstance(error, ClientFault) else "error"
        trace.http_status, trace.fault_code = answer.status, error.code
        assert answer.body is not None
        trace.sent_response(answer.body, relayed=False)
        return answer

    async def _finish(self, call: Call, trace: Trace, recoding: Recoding, *,
                      answering: bool = True) -> None:
        self._metrics.observe(trace.label, trace.status, time.perf_counter() - trace.started)
        if not trace.logged:
            await self._log(call, trace, recoding, answering=answering)

    async def _log(self, call: Call, trace: Trace, recoding: Recoding, *, answering: bool = True) -> None:
        """Log the exchange as ``kind: api``; when ``answering``, return once its records are durable, or
        cut the connection: no complete answer without its records (as the SOAP relay)."""
        trace.logged = True
        if self._journal is None:
            return
        sent, received = recoding.sizes()
        if sent is not None:
            trace.forwarded_bytes = sent
        if received is not None:  # the answer as the endpoint sent it, before conversion
            trace.response_in = received
        exchange = ApiExchange(trace.exchange(self._clock.read()), recoding.losses.summary() or None)
        await record_durably(self._journal, (exchange,), call, answering=answering, whole=exchange, log=log)


async def _body(call: Call, settings: GatewaySettings, trace: Trace) -> bytes | RequestBody:
    """The request body: read whole when small and announced, else streamed under the size limit."""
    limit = settings.max_attachment_bytes
    length = call.content_length
    if length is not None and length > limit:
        raise MessageTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
    if not call.body_exists:
        return b""
    if length is not None and length <= SMALL_BODY:
        whole = await receive(call.read(), None if call.received() else settings.client_timeout)
        trace.took_request(whole)
        return whole
    return RequestBody([], call, trace=trace, limit=limit, timeout=settings.client_timeout,
                       outline=None)


API_RELAY = web.AppKey("api_relay", ApiRelay)


def _profile(table: RouteTable, endpoint: str) -> CharsetProfile | None:
    """The endpoint's character profile when it converts (a peer's profile is applied at the peer)."""
    found = table.config.endpoints.get(endpoint)
    profile = found.charset if isinstance(found, UrlEndpoint) else None
    return profile if profile is not None and profile.converts else None


def add_api(app: web.Application) -> None:
    """Mount ``/api/{ap}`` and ``/api/{ap}/{path}`` for every method in :data:`METHODS`.

    Call after the send/receive log's cleanup_ctx and after :func:`gateway.serve.control.install`:
    the API relay shares the clock, the log and the SOAP relay's breakers, gates and rate limiter.
    """
    async def relay(request: web.Request) -> web.StreamResponse:
        return await request.app[API_RELAY].handle(request)

    app.cleanup_ctx.append(_api_ctx)
    app.middlewares.append(_router_problems)
    for method in METHODS:
        app.router.add_route(method, "/api/{ap}", relay)
        app.router.add_route(method, "/api/{ap}/{path:.*}", relay)


@web.middleware
async def _router_problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router's own answers under ``/api`` — a method no route takes (405), a path no route matches
    (``/api``, ``/api/``, ``/api//x``: 404) — as problem details with the SOAP faults' codes."""
    if not is_api_path(request.path):
        return await handler(request)
    headers: dict[str, str] = {}
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        error: GatewayError = MethodNotAllowed(
            f"{request.method[:32]} is not relayed on /api: use one of {', '.join(METHODS)}")
        headers["Allow"] = ",".join(sorted(exc.allowed_methods))
    except web.HTTPNotFound:
        error = UnknownDestination("no endpoint named in the path: /api/{ap}/{path}")
    gateway = request.app[LIVE].current.config.gateway.name
    return problem_response(error, gateway=gateway, message_id=echoable_message_id(request.headers.get(H_MESSAGE_ID)),
                            headers=headers)


async def _api_ctx(app: web.Application) -> AsyncIterator[None]:
    resilience = app[RESILIENCE]
    upstream = Resilient(ApiUpstream(), resilience)
    app[API_RELAY] = ApiRelay(table=app[LIVE], upstream=upstream, metrics=app[METRICS], clock=app[CLOCK],
                              journal=app.get(JOURNAL), limiter=resilience.limiter)
    yield
    await upstream.close()
