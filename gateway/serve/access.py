"""The optional access log (``gateway.access_log``): one line per HTTP request, combined log format.

It is what web-server tooling (GoAccess, awstats, a SIEM's Apache parser)
reads, beside the send/receive log, which stays the record of exchanges::

    127.0.0.1 - - [07/Dec/2026:19:40:01 +0900] "POST /soap/kaigo HTTP/1.1" 200 412 "-" "zeep/4.2.1" 0.003121

The user field stays ``-``: who called is in the send/receive log, and a
Basic user name in a plain file would be one more copy of it.  The file is
written by a :class:`logging.handlers.WatchedFileHandler`, so ``logrotate``
may move it without ``copytruncate``; the gateway reopens it on the next
line.  With ``--workers`` every worker appends to the same file (O_APPEND
lines, each under the pipe-buffer size, do not interleave).
"""

from __future__ import annotations

import logging
from logging.handlers import WatchedFileHandler
from pathlib import Path
from typing import Any

from gateway.durable import private_dir

__all__ = ["access_log", "FORMAT"]

#: aiohttp's access-log format for the combined log format, plus the seconds the answer took.
FORMAT = '%a - - %t "%r" %s %b "%{Referer}i" "%{User-Agent}i" %Tf'


def access_log(path: str | None) -> dict[str, Any]:
    """The ``AppRunner`` keyword arguments for ``gateway.access_log``: a logger on the file, or none."""
    if path is None:
        return {"access_log": None}
    file = Path(path)
    private_dir(file.parent)
    logger = logging.getLogger(f"bmrgw.access.{file}")
    logger.propagate = False  # never into the gateway's own messages on stderr
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = WatchedFileHandler(file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return {"access_log": logger, "access_log_format": FORMAT}
