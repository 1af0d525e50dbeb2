"""The BMR-GW routing table: business-AP name → where the message goes next.

Implements capability (C) of SPEC.md and the DC-to-DC routing of the
standard's figure 4-38: a name is served by a local endpoint, by a peer
gateway that holds it (``via``), or, when unknown here, by the fallback peer.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from urllib.parse import quote

from gateway.errors import MalformedMessage, UnknownDestination

from .config import Config, MailboxEndpoint, Peer, PeerEndpoint, UrlEndpoint
from .fields import NAME_PATTERN
from .outbound import Outbound

__all__ = ["Route", "RouteTable"]


@dataclass(frozen=True, kw_only=True)
class Route:
    destination: str
    """The business-AP name the message is addressed to."""
    url: str
    """Where to POST the message now."""
    timeout: float
    """Seconds to wait for an answer."""
    endpoint: str
    """Name shown in logs and metrics: the endpoint, or the peer it leaves through."""
    peer: str | None = None
    """The peer gateway the message leaves through, if any."""
    outbound: Outbound = field(default_factory=Outbound)
    """TLS trust, client certificate, Basic credentials and signing for the next hop."""
    mailbox: str | None = None
    """JX receiver id when the message is stored for polling instead of posted."""
    disabled: bool = False
    """Taken out of service by the operator: answered EndpointUnavailable without calling out."""


def _via_peer(destination: str, peer: Peer) -> Route:
    # SPEC.md: forwarding to a peer posts to <peer url>/{ap}, so the destination
    # survives however it arrived (header, wsa:To or path).
    url = f"{peer.url.rstrip('/')}/{quote(destination, safe='')}"
    return Route(destination=destination, url=url, timeout=peer.timeout, endpoint=peer.name, peer=peer.name,
                 outbound=peer.outbound)


class RouteTable:
    """Resolves destination names against one immutable configuration."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._routes: dict[str, Route] = {}
        for name, ep in config.endpoints.items():
            if isinstance(ep, UrlEndpoint):
                self._routes[name] = Route(destination=name, url=ep.url, timeout=ep.timeout, endpoint=name,
                                           outbound=ep.outbound)
            elif isinstance(ep, PeerEndpoint):
                self._routes[name] = _via_peer(name, config.peers[ep.via])
            elif isinstance(ep, MailboxEndpoint):
                self._routes[name] = Route(destination=name, url=f"jx:{ep.mailbox}", timeout=0.0,
                                           endpoint=name, mailbox=ep.mailbox)
        for name in config.disabled:
            self._routes[name] = replace(self._routes[name], disabled=True)
        fallback = config.gateway.fallback_peer
        self._fallback = config.peers[fallback] if fallback else None

    def resolve(self, destination: str, *, passed: Collection[str] = ()) -> Route:
        """The route for ``destination``; ``passed`` names the gateways already in Via.

        A destination that is not a name (``..``, ``a/b``) is MalformedMessage, before any URL is built.
        """
        route = self._routes.get(destination)
        if route is not None:
            return route
        if not NAME_PATTERN.fullmatch(destination):
            # Configured names all fit the pattern; anything else would only reach a peer's URL,
            # where '..' or '/' would post to another path of the peer.
            raise MalformedMessage(f"the destination {destination!r} is not a valid name (letters, digits, "
                                   "'.', '_', '-', starting with a letter or digit; at most 64)")
        fallback = self._fallback
        if fallback is None:
            raise UnknownDestination(f"no endpoint for {destination!r}", destination=destination)
        if fallback.name in passed:
            # The fallback peer already passed the message here: neither side knows it.
            raise UnknownDestination(
                f"no endpoint for {destination!r} here, and fallback peer {fallback.name!r} does not know it either",
                destination=destination,
            )
        return _via_peer(destination, fallback)
