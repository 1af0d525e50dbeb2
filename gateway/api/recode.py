"""The API relay's side of character profiles: the request body to the partner's encoding, its answer back.

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

from multidict import CIMultiDict

from gateway.charset import CharsetProfile, FromPartner, Losses, ToPartner
from gateway.charset.bodies import Converted, convert_whole, is_text, refuse_foreign_charset, with_charset
from gateway.errors import EndpointUnavailable, UnmappableCharacter
from gateway.relay.answer import SMALL_BODY
from gateway.relay.upstream import Reply

__all__ = ["recode_request", "recode_reply"]


def _xml(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.endswith("/xml") or kind.endswith("+xml")


def recode_request(profile: CharsetProfile, headers: dict[str, str], body: bytes | AsyncIterable[bytes],
                   losses: Losses, destination: str) -> bytes | AsyncIterable[bytes]:
    """``body`` in the partner's encoding, ``headers`` changed to say so (in place); others unchanged."""
    content_type = headers.get("Content-Type", "")
    if not is_text(content_type) or body == b"":
        return body
    refuse_foreign_charset(content_type)
    converter = ToPartner(profile, losses=losses, destination=destination)
    headers["Content-Type"] = with_charset(content_type, profile.label)
    if isinstance(body, bytes):
        converted = convert_whole(body, converter, xml=_xml(content_type))
        headers["Content-Length"] = str(len(converted))
        return converted
    headers.pop("Content-Length", None)
    return Converted(body, converter, xml=_xml(content_type))


async def recode_reply(profile: CharsetProfile, reply: Reply, losses: Losses, destination: str) -> Reply:
    """``reply`` as UTF-8 when it is text; others unchanged."""
    content_type = reply.headers.get("Content-Type", "")
    if not is_text(content_type):
        return reply
    converter = FromPartner(profile, losses=losses, destination=destination)
    xml = _xml(content_type)
    if reply.content_length is not None and reply.content_length <= SMALL_BODY:
        try:
            whole = convert_whole(await reply.read(), converter, xml=xml)
        except UnmappableCharacter as exc:
            raise _unmappable_answer(exc, destination) from exc
        return _Recoded(reply, with_charset(content_type, "utf-8"), whole, lambda: _chunks(reply, converter, xml, destination))
    return _Recoded(reply, with_charset(content_type, "utf-8"), None,
                    lambda: _chunks(reply, converter, xml, destination))


def _unmappable_answer(error: UnmappableCharacter, destination: str) -> EndpointUnavailable:
    return EndpointUnavailable(f"the answer of {destination} holds a character with no mapping in Unicode: "
                               f"{error.reason}", destination=destination, endpoint=destination,
                               detail=error.detail)


async def _chunks(reply: Reply, converter: FromPartner, xml: bool, destination: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in Converted(reply.chunks(), converter, xml=xml):
            yield chunk
    except UnmappableCharacter as exc:
        raise _unmappable_answer(exc, destination) from exc


class _Recoded:
    """A :class:`~gateway.relay.upstream.Reply` whose text body is converted to UTF-8."""

    def __init__(self, reply: Reply, content_type: str, whole: bytes | None,
                 chunks: Callable[[], AsyncIterator[bytes]]) -> None:
        self._reply = reply
        self.status = reply.status
        self.reason = reply.reason
        headers = CIMultiDict(reply.headers)
        headers["Content-Type"] = content_type
        headers.pop("Content-Length", None)
        self.headers: Mapping[str, str] = headers
        self._whole = whole
        self.content_length = len(whole) if whole is not None else None
        self._chunks = chunks

    async def read(self) -> bytes:
        if self._whole is not None:
            return self._whole
        return b"".join([chunk async for chunk in self._chunks()])

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks()

    def release(self) -> None:
        self._reply.release()

    def when_released(self, callback: Callable[[], None]) -> None:
        self._reply.when_released(callback)


