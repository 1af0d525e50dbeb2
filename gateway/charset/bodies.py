"""Which bodies a character profile converts, and converting one as it streams (issue 23).

Text bodies are converted: JSON (``application/json``, ``*+json``,
``application/x-ndjson``), XML (``text/xml``, ``application/xml``,
``*+xml``), CSV and other ``text/*``.  Anything else (images, PDF, zip,
``application/octet-stream``) passes as it is.  A converted body gets the
charset of its new encoding in its ``Content-Type``, loses its
``Content-Length`` (the length changes) and, for XML, its declaration names
the new encoding.  A UTF-8 byte order mark on the way to a partner is
dropped (the partner encodings have none).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

from gateway.errors import GatewayError, UnsupportedMediaType

from .convert import FromPartner, ToPartner

__all__ = ["is_text", "with_charset", "declared_charset", "declare", "Converted", "convert_whole",
           "refuse_foreign_charset"]

_TEXT = re.compile(r"text/[\w.+-]+|application/(?:json|xml|x-ndjson|csv|[\w.-]+\+(?:json|xml))", re.IGNORECASE)
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([^\";\s]*)\"?", re.IGNORECASE)
_DECLARATION = re.compile(rb"<\?xml[^>]*?\?>")
_ENCODING = re.compile(rb"""(\sencoding\s*=\s*)(["'])[^"']*\2""")
_BOM = b"\xef\xbb\xbf"
#: Bytes of output held back until an XML declaration at its start is whole.
_HEAD = 256


def is_text(content_type: str | None) -> bool:
    """Whether a body of this ``Content-Type`` is text that a profile converts."""
    if not content_type:
        return False
    return _TEXT.fullmatch(content_type.split(";", 1)[0].strip()) is not None


def declared_charset(content_type: str) -> str | None:
    found = _CHARSET.search(content_type)
    return found.group(1).lower() if found else None


def with_charset(content_type: str, label: str) -> str:
    """``content_type`` with its charset parameter set to ``label``."""
    if _CHARSET.search(content_type):
        return _CHARSET.sub(f"; charset={label}", content_type, count=1)
    return f"{content_type}; charset={label}"


def refuse_foreign_charset(content_type: str) -> None:
    """A body on its way to a partner must be UTF-8: the profile converts from UTF-8 only."""
    charset = declared_charset(content_type)
    if charset not in (None, "utf-8", "utf8", "us-ascii"):
        raise UnsupportedMediaType(f"the body is declared {charset}; send UTF-8 and the gateway converts it for "
                                   "the endpoint")


def declare(head: bytes, label: str) -> bytes:
    """The XML declaration at the start of ``head`` naming ``label``."""
    found = _DECLARATION.match(head)
    if found is None:
        return head
    declaration = found.group()
    if _ENCODING.search(declaration):
        declaration = _ENCODING.sub(lambda m: m.group(1) + m.group(2) + label.encode() + m.group(2), declaration,
                                    count=1)
    else:
        declaration = re.sub(rb"(version\s*=\s*([\"'])[^\"']*\2)", rb"\1 encoding=\"" + label.encode() + b'"',
                             declaration, count=1)
    return declaration + head[found.end():]


class Converted:
    """A body converted chunk by chunk; a gateway error on the way is kept in :attr:`error` (aiohttp wraps
    what a body iterator raises, as the relay's ``RequestBody`` knows)."""

    def __init__(self, source: AsyncIterable[bytes], converter: ToPartner | FromPartner, *, xml: bool) -> None:
        self._source = source
        self._converter = converter
        self._xml = xml
        self.error: GatewayError | None = getattr(source, "error", None)
        self.bytes_in = 0
        """Bytes taken from the source so far."""
        self.bytes_out = 0
        """Converted bytes given out so far."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        head: bytes | None = b""
        first = True
        try:
            async for chunk in self._source:
                self.bytes_in += len(chunk)
                if first and isinstance(self._converter, ToPartner):
                    chunk = chunk.removeprefix(_BOM)
                first = False
                out = self._converter.feed(chunk)
                if self._xml and head is not None:
                    head += out
                    if len(head) < _HEAD and b"?>" not in head:
                        continue
                    out, head = declare(head, self._label()), None
                if out:
                    self.bytes_out += len(out)
                    yield out
            out = self._converter.finish()
            if self._xml and head is not None:
                out = declare(head + out, self._label())
            if out:
                self.bytes_out += len(out)
                yield out
        except GatewayError as exc:
            self.error = exc
            raise
        finally:
            self.error = self.error or getattr(self._source, "error", None)

    def _label(self) -> str:
        return self._converter.profile.label if isinstance(self._converter, ToPartner) else "UTF-8"


def convert_whole(body: bytes, converter: ToPartner | FromPartner, *, xml: bool) -> bytes:
    """A body in memory, converted at once."""
    if isinstance(converter, ToPartner):
        body = body.removeprefix(_BOM)
    out = converter.feed(body) + converter.finish()
    label = converter.profile.label if isinstance(converter, ToPartner) else "UTF-8"
    return declare(out, label) if xml else out
