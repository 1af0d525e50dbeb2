"""Converting a relayed exchange: the request body to the partner's encoding, its answer back (API and SOAP relay).

A request whose endpoint has ``charset`` (:mod:`gateway.charset`) and whose
body is text is converted from UTF-8 on its way out — at once when it was
read whole (so ``unmappable: refuse`` answers 422 before anything is sent),
else as it streams.  The endpoint's text answer is converted back to UTF-8:
the configured encoding wins over whatever charset the answer declares
(CP932 is often labelled Shift_JIS).  An answer up to ``SMALL_BODY`` is
converted before it is answered, so a character with no mapping in it is a
502 naming it; a longer one converts as it streams, and such a character
cuts the answer off (the caller sees it incomplete) under ``refuse``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict

from gateway.charset import CharsetProfile, FromPartner, Losses, ToPartner
from gateway.charset.bodies import Converted, convert_whole, is_text, refuse_foreign_charset, with_charset
from gateway.errors import EndpointUnavailable, UnmappableCharacter
from gateway.relay.answer import SMALL_BODY
from gateway.relay.upstream import Reply

__all__ = ["recode_request", "recode_reply", "Recoding"]


@dataclass
class Recoding:
    """What one exchange's conversion did, for its log record: the losses, and the sizes on the far side."""

    losses: Losses = field(default_factory=Losses)
    body: Converted | None = None
    """The request body as it streams converted (its size out is known at the end)."""
    reply: _Recoded | None = None
    """The answer converted (its size as the endpoint sent it is known at the end)."""
    converted: bool = False
    """The request body is already in the partner's encoding (a SOAP envelope converted, then re-signed)."""

    def sizes(self) -> tuple[int | None, int | None]:
        """(request bytes sent to the endpoint, answer bytes received from it), where converted."""
        return (self.body.bytes_out if self.body is not None else None,
                self.reply.raw_in if self.reply is not None else None)


def _xml(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.endswith("/xml") or kind.endswith("+xml")


def recode_request(profile: CharsetProfile, headers: dict[str, str], body: bytes | AsyncIterable[bytes],
                   recoding: Recoding, destination: str) -> bytes | AsyncIterable[bytes]:
    """``body`` in the partner's encoding, ``headers`` changed to say so (in place); others unchanged."""
    content_type = headers.get("Content-Type", "")
    if not is_text(content_type) or body == b"":
        return body
    refuse_foreign_charset(content_type)
    converter = ToPartner(profile, losses=recoding.losses, destination=destination)
    headers["Content-Type"] = with_charset(content_type, profile.label)
    if isinstance(body, bytes):
        converted = convert_whole(body, converter, xml=_xml(content_type))
        headers["Content-Length"] = str(len(converted))
        return converted
    headers.pop("Content-Length", None)
    recoding.body = Converted(body, converter, xml=_xml(content_type))
    return recoding.body


async def recode_reply(profile: CharsetProfile, reply: Reply, recoding: Recoding, destination: str) -> Reply:
    """``reply`` as UTF-8 when it is text; others unchanged."""
    content_type = reply.headers.get("Content-Type", "")
    if not is_text(content_type):
        return reply
    converter = FromPartner(profile, losses=recoding.losses, destination=destination)
    xml = _xml(content_type)
    recoded = recoding.reply = _Recoded(reply, with_charset(content_type, "utf-8"))
    if reply.content_length is not None and reply.content_length <= SMALL_BODY:
        raw = await reply.read()
        recoded.raw_in = len(raw)
        try:
            recoded.whole(convert_whole(raw, converter, xml=xml))
        except UnmappableCharacter as exc:
            raise _unmappable_answer(exc, destination) from exc
    else:
        recoded.stream(converter, xml, destination)
    return recoded


def _unmappable_answer(error: UnmappableCharacter, destination: str) -> EndpointUnavailable:
    return EndpointUnavailable(f"the answer of {destination} holds a character with no mapping in Unicode: "
                               f"{error.reason}", destination=destination, endpoint=destination,
                               detail=error.detail)


async def _chunks(recoded: _Recoded, converter: FromPartner, xml: bool, destination: str) -> AsyncIterator[bytes]:
    converted = Converted(recoded.raw_chunks(), converter, xml=xml)
    try:
        async for chunk in converted:
            yield chunk
    except UnmappableCharacter as exc:
        raise _unmappable_answer(exc, destination) from exc
    finally:
        recoded.raw_in = converted.bytes_in


class _Recoded:
    """A :class:`~gateway.relay.upstream.Reply` whose text body is converted to UTF-8."""

    def __init__(self, reply: Reply, content_type: str) -> None:
        self._reply = reply
        self.status = reply.status
        self.reason = reply.reason
        headers = CIMultiDict(reply.headers)
        headers["Content-Type"] = content_type
        headers.pop("Content-Length", None)
        self.headers: Mapping[str, str] = headers
        self.content_length: int | None = None
        self.raw_in = 0
        """Bytes of the answer as the endpoint sent them."""
        self._whole: bytes | None = None
        self._chunks: Callable[[], AsyncIterator[bytes]] | None = None

    def whole(self, body: bytes) -> None:
        self._whole, self.content_length = body, len(body)

    def stream(self, converter: FromPartner, xml: bool, destination: str) -> None:
        self._chunks = lambda: _chunks(self, converter, xml, destination)

    def raw_chunks(self) -> AsyncIterator[bytes]:
        return self._reply.chunks()

    async def read(self) -> bytes:
        if self._whole is not None:
            return self._whole
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._whole is not None:
            yield self._whole
            return
        assert self._chunks is not None
        async for chunk in self._chunks():
            yield chunk

    def release(self) -> None:
        self._reply.release()

    def when_released(self, callback: Callable[[], None]) -> None:
        self._reply.when_released(callback)
