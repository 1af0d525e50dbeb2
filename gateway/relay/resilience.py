"""Failover, circuit breakers and per-endpoint limits around the upstream seam (README "Resilience").

:class:`Resilient` wraps the relay's :class:`~gateway.relay.upstream.Upstream`, so the
relay still makes one ``post`` per message.  For each message it

1. takes a slot of the endpoint's :class:`~gateway.limits.Gate` (``max_concurrent``),
   held until the answer has been relayed (the upstream connection is released);
2. tries the endpoint's URLs (``urls: [...]``) in order, skipping those whose
   :class:`~gateway.relay.breaker.Breaker` is open;
3. moves on to the next URL **only** when the connection could not be made —
   refused, unreachable, TLS handshake failed, connect timeout — because then
   no byte of the request left the gateway.  A failure after that (reset,
   answer timeout) may have reached the endpoint: it is reported, never re-sent.

A peer's breakers are keyed by the peer's configured URLs (not ``<url>/<ap>``),
so all names routed through one peer share them; peers fail over over their
``urls`` the same way, each attempt posting to ``<that url>/<ap>``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
from collections.abc import AsyncIterable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.errors import EndpointBusy, EndpointUnavailable, GatewayError, UpstreamError
from routing.config import Config, UrlEndpoint
from routing.table import Route
from routing.watch import LiveTable

from .breaker import Breaker, Circuits, State
from .limits import Gate, RateLimiter
from .upstream import Reply, Upstream, never_sent

__all__ = ["Resilience", "Resilient", "sent_to", "may_have_sent", "urls_of", "CIRCUIT_OPEN"]

log = logging.getLogger("bmrgw.resilience")

#: The URL the current task's last successful post went to (failover may pick a later one).
_SENT_TO: contextvars.ContextVar[str | None] = contextvars.ContextVar("bmrgw_sent_to", default=None)

_Key = tuple[str, str]  # ("endpoint" | "peer", name)

#: The ``detail`` of the EndpointUnavailable raised while every circuit of a route is open.
CIRCUIT_OPEN = "circuit open"


def sent_to(route: Route) -> str:
    """The URL the message for ``route`` actually went to (the route's own URL unless it failed over)."""
    return _SENT_TO.get() or route.url


@dataclass(frozen=True)
class Plan:
    """How messages for one endpoint or peer go out."""

    urls: tuple[str, ...] | None
    """URLs in failover order; ``None`` for a peer: ``<key>/<ap>`` for each key."""
    keys: tuple[str, ...]
    """Breaker key of each URL (the configured URL)."""
    gate: Gate | None


def urls_of(config: Config) -> dict[_Key, tuple[str, ...]]:
    """Every endpoint's and peer's configured URLs, for breakers, reset and listings."""
    found: dict[_Key, tuple[str, ...]] = {}
    for name, ep in config.endpoints.items():
        if isinstance(ep, UrlEndpoint):
            found["endpoint", name] = ep.failover
    for name, peer in config.peers.items():
        found["peer", name] = peer.failover
    return found


class Resilience:
    """One gateway process's breakers, gates and rate limiter, following the live table."""

    def __init__(self, live: LiveTable) -> None:
        self.live = live
        self.circuits = Circuits(live.current.config.gateway.breaker, on_change=self._changed)
        self.limiter = RateLimiter()
        self.failovers = 0
        self.connections_refused = 0
        self.connections_timed_out = 0
        self.changed: Callable[[], None] = lambda: None
        """Called when a circuit changes state (the store publisher listens)."""
        self._gates: dict[_Key, Gate] = {}
        self._plans: dict[_Key, Plan] = {}
        self._generation = -1

    def plan(self, route: Route) -> Plan:
        if self._generation != self.live.generation:
            self._rebuild(self.live.current.config)
        key: _Key = ("peer", route.peer) if route.peer else ("endpoint", route.endpoint)
        return self._plans.get(key) or Plan(urls=None, keys=(route.url,), gate=None)

    def reset(self, name: str) -> int:
        """Close the circuits of endpoint or peer ``name``; returns how many were open or half-open."""
        urls = urls_of(self.live.current.config)
        return self.circuits.reset([*urls.get(("endpoint", name), ()), *urls.get(("peer", name), ())])

    def gates(self) -> Mapping[_Key, Gate]:
        return self._gates

    def _rebuild(self, config: Config) -> None:
        self._generation = self.live.generation
        plans: dict[_Key, Plan] = {}
        for key, urls in urls_of(config).items():
            plans[key] = Plan(urls=urls if key[0] == "endpoint" else None, keys=urls, gate=self._gate(key, config))
        self._gates = {k: p.gate for k, p in plans.items() if p.gate is not None}
        self._plans = plans
        dropped = self.circuits.keep({u for p in plans.values() for u in p.keys}, config.gateway.breaker)
        if dropped:
            self.changed()

    def _gate(self, key: _Key, config: Config) -> Gate | None:
        owner = config.endpoints.get(key[1]) if key[0] == "endpoint" else config.peers.get(key[1])
        limit = getattr(owner, "max_concurrent", None)
        if limit is None:
            return None
        timeout = float(getattr(owner, "queue_timeout"))
        old = self._gates.get(key)
        if old is not None and (old.limit, old.timeout) == (limit, timeout):
            return old
        return Gate(key[1], limit, timeout)

    def _changed(self, breaker: Breaker) -> None:
        if breaker.state is State.OPEN:
            log.warning("circuit of %s opened after %d failures (%s); next probe in %g s",
                        breaker.url, breaker.failures, breaker.last_error, breaker.backoff)
        else:
            log.info("circuit of %s is %s", breaker.url, breaker.state.value)
        self.changed()


class Resilient:
    """An :class:`~gateway.relay.upstream.Upstream` with failover, breakers and endpoint gates."""

    def __init__(self, inner: Upstream, resilience: Resilience) -> None:
        self._inner = inner
        self._res = resilience

    async def post(self, route: Route, headers: Mapping[str, str],
                   body: bytes | AsyncIterable[bytes]) -> Reply:
        _SENT_TO.set(None)
        plan = self._res.plan(route)
        if plan.gate is not None:
            await plan.gate.acquire()
        try:
            reply = await self._try_each(route, plan, headers, body)
        except BaseException:
            if plan.gate is not None:
                plan.gate.release()
            raise
        if plan.gate is not None:
            reply.when_released(plan.gate.release)
        return reply

    async def _try_each(self, route: Route, plan: Plan, headers: Mapping[str, str],
                        body: bytes | AsyncIterable[bytes]) -> Reply:
        error: UpstreamError | None = None
        failed_url = ""
        for url, key in _candidates(route, plan):
            breaker = self._res.circuits.get(key)
            if not breaker.allow():
                error, failed_url = error or _open_error(route, breaker), failed_url or url
                continue
            if error is not None:
                self._res.failovers += 1
                log.warning("failing over from %s to %s for %s", failed_url, url, route.destination)
            outcome = await self._attempt(route, url, breaker, headers, body)
            if not isinstance(outcome, UpstreamError):
                _SENT_TO.set(url)
                return outcome
            error, failed_url = outcome, url
        assert error is not None
        raise error

    async def _attempt(self, route: Route, url: str, breaker: Breaker, headers: Mapping[str, str],
                       body: bytes | AsyncIterable[bytes]) -> Reply | UpstreamError:
        """Post to ``url``; returns the error when retrying elsewhere is safe, raises it when not."""
        try:
            reply = await self._inner.post(route if url == route.url else dataclasses.replace(route, url=url),
                                           headers, body)
        except UpstreamError as exc:
            if getattr(body, "error", None) is not None:  # the caller's body broke, not the endpoint
                breaker.abandoned()
                raise
            breaker.failed(exc.reason)
            if never_sent(exc):
                return exc
            raise
        except BaseException:
            breaker.abandoned()
            raise
        breaker.succeeded()
        return reply

    async def close(self) -> None:
        await self._inner.close()


def _candidates(route: Route, plan: Plan) -> Iterator[tuple[str, str]]:
    if plan.urls is not None:
        yield from zip(plan.urls, plan.keys)
    elif route.peer is None or len(plan.keys) == 1 or not route.url.startswith(plan.keys[0].rstrip("/")):
        yield route.url, plan.keys[0]
    else:
        tail = route.url[len(plan.keys[0].rstrip("/")):]  # "/<ap>", as routing.table built it
        for key in plan.keys:
            yield key.rstrip("/") + tail, key


def may_have_sent(error: GatewayError) -> bool:
    """Whether any byte of the request may have left for an upstream (for the log's request record)."""
    if isinstance(error, EndpointBusy) or error.detail == CIRCUIT_OPEN:
        return False
    return not (isinstance(error, UpstreamError) and never_sent(error))


def _open_error(route: Route, breaker: Breaker) -> EndpointUnavailable:
    return EndpointUnavailable(
        f"{route.endpoint} is not tried: the circuit of {breaker.url} is open after {breaker.failures} "
        f"failures ({breaker.last_error}); next probe in {breaker.seconds_left():.1f} s",
        destination=route.destination, endpoint=route.endpoint, detail=CIRCUIT_OPEN)


class ResilienceCollector(Collector):
    """Breaker states, gate occupancy and limit counters, read at scrape time."""

    def __init__(self, resilience: Resilience) -> None:
        self._res = resilience

    def collect(self) -> Iterator[Any]:
        res = self._res
        state = GaugeMetricFamily("bmrgw_circuit_state", "Circuit of each upstream URL: 0 closed, 1 half-open, "
                                  "2 open.", labels=["url"])
        failures = GaugeMetricFamily("bmrgw_circuit_failures", "Consecutive failures of each upstream URL.",
                                     labels=["url"])
        for breaker in res.circuits:
            state.add_metric([breaker.url], breaker.state.level)
            failures.add_metric([breaker.url], breaker.failures)
        in_flight = GaugeMetricFamily("bmrgw_endpoint_in_flight", "Requests holding a max_concurrent slot.",
                                      labels=["endpoint"])
        queued = GaugeMetricFamily("bmrgw_endpoint_queued", "Requests waiting for a max_concurrent slot.",
                                   labels=["endpoint"])
        for (_, name), gate in res.gates().items():
            in_flight.add_metric([name], gate.active)
            queued.add_metric([name], gate.queued)
        yield from (state, failures, in_flight, queued)
        yield CounterMetricFamily("bmrgw_failovers", "Requests sent to a later URL of their endpoint.",
                                  value=res.failovers)
        yield CounterMetricFamily("bmrgw_rate_limited", "Requests refused with 429 TooManyRequests.",
                                  value=res.limiter.refused)
        yield CounterMetricFamily("bmrgw_connections_refused", "Connections answered 503 GatewayBusy "
                                  "(gateway.limits.max_connections, max_connections_per_address).",
                                  value=res.connections_refused)
        yield CounterMetricFamily("bmrgw_connections_timed_out", "Connections closed because their request "
                                  "headers did not arrive within gateway.header_timeout.",
                                  value=res.connections_timed_out)


RESILIENCE = web.AppKey("resilience", Resilience)
