"""The API relay's side of the upstream seam: any method, to a path below the endpoint's URL.

:class:`ApiRoute` is a :class:`~routing.table.Route` that also carries the
method, the checked path and the query.  Failover
(:class:`~gateway.relay.resilience.Resilient`) swaps a route's ``url`` with
``dataclasses.replace``, which keeps these fields, so an API request fails
over, trips breakers and waits at gates exactly as a SOAP message does; only
the last step, :class:`ApiUpstream`, joins them into the URL it calls:

* an endpoint: ``<url>/<path>?<query>``;
* a peer gateway (``via``): the route's URL is ``<peer url>/<ap>`` where the
  peer URL names the peer's SOAP relay (``…/soap``); its API relay is beside
  it, so the request goes to ``<peer base>/api/<ap>/<path>?<query>``.

A body in memory of at most 64 KiB (a bodiless GET or DELETE too) goes, for
any method, over the relay's keep-alive :class:`~gateway.relay.pool.Pool`
(one write, aiohttp's parser, the same limits, timeouts and faults; an
idempotent request is sent once more when a kept-alive connection drops
before any answer, a POST or PATCH never — aiohttp's rule), with the bytes
aiohttp's client wrote: the caller's headers as they are, and
``Content-Length: 0`` added for a bodiless POST, PUT, PATCH or DELETE that
announced none (aiohttp adds it for every method but GET, HEAD, OPTIONS and
TRACE).  Bigger and streamed bodies, and the rare URL the pool does not
write as it is (:meth:`~gateway.relay.pool.Pool.takes`), go through
aiohttp's ClientSession.

aiohttp's errors become gateway errors through the SOAP relay's
:func:`~gateway.relay.upstream.translate` (inside :class:`HttpReply` too), and
the request body is paced with the same per-chunk deadline (:class:`Paced`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway.errors import EndpointTimeout
from gateway.relay.pool import Pool
from gateway.relay.upstream import HttpReply, Paced, Reply, outbound_hop, translate
from routing.outbound import Outbound
from routing.table import Route

__all__ = ["ApiRoute", "ApiUpstream", "target_url"]

#: Distinct outbound settings kept before the cache starts afresh.
_MAX_HOPS_CACHED = 4096
#: A body up to this size is written whole; bigger ones are paced chunk by chunk.
_UNPACED = 64 * 1024
#: Methods aiohttp sends without ``Content-Length: 0`` when they carry no body (``ClientRequest.GET_METHODS``).
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, kw_only=True)
class ApiRoute(Route):
    """A route plus what the caller asked of the API: method, path below the URL, query."""

    method: str = "GET"
    """The HTTP method, passed on unchanged."""
    path: str = ""
    """Checked, canonically encoded segments below the endpoint's URL (:func:`gateway.api.path.api_path`)."""
    query: str = ""
    """The raw query string, passed on unchanged."""


def target_url(route: ApiRoute) -> URL:
    """The URL the request goes to (see the module docstring)."""
    base = route.url.rstrip("/")
    if route.peer is not None:
        head, _, ap = base.rpartition("/")
        base = f"{head.removesuffix('/soap')}/api/{ap}"
    url = f"{base}/{route.path}" if route.path else base
    return URL(f"{url}?{route.query}" if route.query else url, encoded=True)


class ApiUpstream:
    """An :class:`~gateway.relay.upstream.Upstream` for :class:`ApiRoute`: the relay's keep-alive pool for
    small bodies in memory, one pooled client session for the rest."""

    def __init__(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=15),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._hops: dict[Outbound, tuple[ssl.SSLContext, str | None]] = {}
        self._pool = Pool(translate)

    async def post(self, route: Route, headers: Mapping[str, str], body: bytes | AsyncIterable[bytes]) -> Reply:
        """Send ``route.method`` (the name is the seam's); an empty ``body`` sends none."""
        assert isinstance(route, ApiRoute), "the API upstream takes ApiRoutes"
        if isinstance(body, bytes) and len(body) <= _UNPACED:
            tls, authorization = self._hop(route.outbound)
            if authorization is not None:
                headers = {**headers, "Authorization": authorization}
            url = str(target_url(route))
            if Pool.takes(url, headers):
                if not body and route.method not in _BODILESS \
                        and not any(k.lower() == "content-length" for k in headers):
                    headers = {**headers, "Content-Length": "0"}  # where aiohttp put it: last
                return await self._pool.post(route, url, headers, body, tls, route.method)
        return HttpReply(await self._send(route, headers, body), route)

    async def _send(self, route: ApiRoute, headers: Mapping[str, str],
                    body: bytes | AsyncIterable[bytes]) -> aiohttp.ClientResponse:
        timeout = self._timeouts.get(route.timeout) or self._timeouts.setdefault(
            route.timeout, aiohttp.ClientTimeout(total=None, sock_connect=route.timeout, sock_read=route.timeout))
        deadline: asyncio.Timeout | None = None
        try:
            tls, authorization = self._hop(route.outbound)
            if authorization is not None:
                headers = {**headers, "Authorization": authorization}
            url = target_url(route)
            if isinstance(body, bytes) and len(body) <= _UNPACED:
                return await self._session.request(route.method, url, data=body or None, headers=headers, timeout=timeout,
                                                   allow_redirects=False, ssl=tls)
            async with asyncio.timeout(None) as deadline:
                paced = Paced(body, deadline, route.timeout)
                try:
                    return await self._session.request(route.method, url, data=paced, headers=headers,
                                                       timeout=timeout, allow_redirects=False, ssl=tls)
                finally:
                    paced.settle()
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                raise EndpointTimeout(f"{route.endpoint} took none of the request for {route.timeout:g} s",
                                      destination=route.destination, endpoint=route.endpoint) from exc
            raise translate(exc, route) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise translate(exc, route) from exc

    def _hop(self, outbound: Outbound) -> tuple[ssl.SSLContext, str | None]:
        hop = self._hops.get(outbound)
        if hop is None:
            if len(self._hops) >= _MAX_HOPS_CACHED:
                self._hops.clear()
            made = outbound_hop(outbound)
            hop = self._hops[outbound] = (made.ssl, made.authorization)
        return hop

    async def close(self) -> None:
        self._pool.close()
        await self._session.close()
