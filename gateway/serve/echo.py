"""The echo business AP a gateway offers for connection tests (``endpoints.NAME.echo: true``).

A site's ``bmrgw check`` (:mod:`gateway.check`) sends a message to it and
expects the same envelope back: the round trip crosses the site's network,
TLS, authentication, allow list, message security and the send/receive log
exactly as a real exchange does (the relay logs it like any other, so the
data centre finds it by its message id), but no partner system has to be up.

The route table gives an echo endpoint the URL ``echo:NAME``
(:data:`routing.config.ECHO_URL_PREFIX`); this upstream answers such routes
itself, and hands every other route to the real upstream seam.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping

from routing.config import ECHO_URL_PREFIX
from routing.table import Route

from ..relay.upstream import Reply, Upstream

__all__ = ["EchoUpstream", "ECHO_HEADER"]

#: Header on an echo answer naming the echo endpoint that made it.
ECHO_HEADER = "X-Bmrgw-Echo"


class EchoReply:
    """The envelope the caller sent, as an upstream's 200 answer."""

    def __init__(self, data: bytes, content_type: str, name: str) -> None:
        self.status = 200
        self.reason: str | None = "OK"
        self.headers: Mapping[str, str] = {"Content-Type": content_type, ECHO_HEADER: name}
        self.content_length: int | None = len(data)
        self._data = data

    async def read(self) -> bytes:
        return self._data

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._data

    def release(self) -> None:
        pass

    def when_released(self, callback: Callable[[], None]) -> None:
        callback()


class EchoUpstream:
    """Answers ``echo:`` routes with the request; passes the rest to ``inner``."""

    def __init__(self, inner: Upstream) -> None:
        self._inner = inner

    async def post(self, route: Route, headers: Mapping[str, str], body: bytes | AsyncIterable[bytes]) -> Reply:
        if not route.url.startswith(ECHO_URL_PREFIX):
            return await self._inner.post(route, headers, body)
        data = body if isinstance(body, bytes) else b"".join([chunk async for chunk in body])
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "text/xml; charset=utf-8")
        return EchoReply(data, content_type, route.destination)

    async def close(self) -> None:
        await self._inner.close()
