"""What went wrong in a ``bmrgw poll`` round, said the way an operator reads it (issue 21, item 2).

Every failure of a round is a :class:`RoundFailure` of one :class:`Kind`; the
round counts them by kind for its summary line, and ``--once`` exits 1 when
there was any.  They live here rather than in ``gateway/errors.py`` because
they never leave the poll client: :class:`RoundFailure` is a
:class:`~gateway.errors.PollError`, so one that ends the command still prints
as ``bmrgw: <reason>``.

Library exceptions (requests, urllib3, OSError) are translated by
:func:`describe` into one short line: the cause (``connection refused``,
``no answer within 300 s``, ``No space left on device``), never a repr of a
connection pool, and never cut in the middle of a word (:func:`fit`).
"""

from __future__ import annotations

import enum
import errno
import os

from ..errors import PollError

__all__ = ["Kind", "RoundFailure", "describe", "fit", "storage_failure"]

#: Longest message part taken from a library or a gateway (a screen line with the log prefix).
WIDTH = 100


class Kind(enum.Enum):
    """The kinds of failure the round summary counts."""

    NETWORK = "network"
    """No (complete) answer: refused, reset, timed out, cut off mid-answer."""
    HTTP = "HTTP"
    """An HTTP status that is not a JX answer (404, 401, 502 from a proxy, ...)."""
    FAULT = "fault"
    """The gateway answered with a SOAP fault."""
    PARSE = "parse"
    """The answer is not a JX answer: malformed XML, bad base64, a field missing, a digest mismatch."""
    DISK_FULL = "disk full"
    """A document could not be stored: no space (or quota) left."""
    PERMISSION = "permission"
    """A document could not be stored or a file read: access denied or a read-only file system."""
    DISK = "disk"
    """Any other error of the local file system."""
    HOOK = "hook"
    """A partner's ``before`` or ``after`` command failed, timed out or could not be started."""
    COMPRESSION = "compression"
    """A received document's compressType is unknown, or it does not decompress (or would be a bomb)."""


class RoundFailure(PollError):
    """Raised when one step of a round failed; ``kind`` says how, ``reason`` says what, in one short line."""

    code = "PollFailure"

    def __init__(self, kind: Kind, reason: str, *, fatal: bool = False, status: int | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.fatal = fatal
        """Retrying cannot help (the gateway refused our credentials or id): the client stops."""
        self.status = status
        """The HTTP status, for :attr:`Kind.HTTP`."""


def fit(text: str, width: int = WIDTH) -> str:
    """``text`` on one line of at most ``width`` characters, shortened at a word boundary with "…"."""
    line = " ".join(text.split())
    if len(line) <= width:
        return line
    cut = line[: width - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > width // 2 else cut).rstrip(" ,;:(") + "…"


_STORAGE_KINDS = {errno.ENOSPC: Kind.DISK_FULL, errno.EDQUOT: Kind.DISK_FULL, errno.EACCES: Kind.PERMISSION,
                  errno.EPERM: Kind.PERMISSION, errno.EROFS: Kind.PERMISSION}


def storage_failure(exc: OSError, what: str) -> RoundFailure:
    """The failure for an OSError met while storing or reading a file: ``what`` names the step and path."""
    kind = _STORAGE_KINDS.get(exc.errno or 0, Kind.DISK)
    cause = os.strerror(exc.errno) if exc.errno else fit(str(exc))
    return RoundFailure(kind, f"{what}: {cause}")


def describe(exc: BaseException, *, timeout: float | None = None) -> str:
    """One short line for a network-level exception: its innermost OS cause, not the library's repr."""
    import requests

    if isinstance(exc, requests.ConnectTimeout):
        return "no connection (timed out)"
    if isinstance(exc, requests.ReadTimeout):
        return f"no answer within {timeout:g} s" if timeout is not None else "no answer in time"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS: {fit(_innermost_text(exc), 80)}"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the answer was cut off before its end"
    cause = _os_cause(exc)
    if cause is not None and cause.errno:
        return os.strerror(cause.errno).lower()
    return fit(_innermost_text(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and exceptions held in its args (urllib3 wraps them there)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend(a for a in current.args if isinstance(a, BaseException))
        todo.extend(c for c in (getattr(current, "reason", None), current.__cause__, current.__context__)
                    if isinstance(c, BaseException))
    return seen


def _os_cause(exc: BaseException) -> OSError | None:
    found = [e for e in _chain(exc) if isinstance(e, OSError) and e.errno]
    return found[-1] if found else None


def _innermost_text(exc: BaseException) -> str:
    for current in reversed(_chain(exc)):
        text = str(getattr(current, "reason", "") or "") if not isinstance(current, OSError) else ""
        text = text or (current.strerror or "" if isinstance(current, OSError) else "") or str(current)
        if text and "object at 0x" not in text:
            return text
    return type(exc).__name__
