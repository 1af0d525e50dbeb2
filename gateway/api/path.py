"""Where an ``/api/{ap}/{path}`` request goes below its endpoint's URL, without escaping it.

The caller's path is taken from the raw request target (aiohttp does not
resolve dot segments, and decodes ``%2e`` and ``%2f`` in ``request.path``),
split into segments, and each segment decoded once and checked: a segment
that is ``.`` or ``..`` (however it was written: ``%2e%2e``, ``.%2E``), an
empty one (``//``) other than a trailing slash, or one that decodes to a
``/`` or ``\\`` or a control character is refused as MalformedMessage.  Each
segment is then written again in one canonical percent-encoding, so the
endpoint sees exactly the segments that were checked — never a path that
climbs above ``endpoints.NAME.url``.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from gateway.errors import MalformedMessage

__all__ = ["api_path", "PREFIX"]

#: Where the API relay is mounted.
PREFIX = "/api/"
# RFC 3986 pchar, less '%' (re-encoded) — what a path segment may hold unencoded.
_SAFE = "!$&'()*+,;=:@-._~"


def api_path(raw_target: str) -> tuple[str, str]:
    """The checked path below the endpoint (segments joined by ``/``, no leading slash) and the raw query."""
    raw_path, _, query = raw_target.partition("?")
    if not raw_path.startswith(PREFIX):
        raise MalformedMessage(f"not an API path: {raw_path[:200]!r}")
    _, _, rest = raw_path[len(PREFIX):].partition("/")
    if not rest:
        return "", query
    segments = rest.split("/")
    return "/".join(_segment(s, i == len(segments) - 1) for i, s in enumerate(segments)), query


def _segment(raw: str, last: bool) -> str:
    try:
        text = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"the path segment {raw[:100]!r} is not percent-encoded UTF-8") from exc
    if text in (".", ".."):
        raise MalformedMessage(f"the path may not climb with {raw!r}: it would leave the endpoint's base path")
    if not text and not last:
        raise MalformedMessage("the path has an empty segment ('//')")
    if any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7f for c in text):
        raise MalformedMessage(f"the path segment {raw[:100]!r} decodes to a slash, backslash or control "
                               "character")
    return quote(text, safe=_SAFE)
