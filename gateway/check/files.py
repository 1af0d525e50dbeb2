"""The file-transfer item of the connection test: a random test file sent with ``bmrgw send``'s
sender, in several parts, to the data centre's test receiver (a ``bmrgw receive`` business AP behind
the gateway), which verifies every part and the whole file by SHA-256 before it answers complete."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

from attachments.transfer.sender import SendOptions, send_file
from gateway.errors import SendError

from .result import Probe, Result
from .site import Site

__all__ = ["files"]


async def files(site: Site, probe: Probe, result: Result) -> Result:
    if site.files is None:
        return result.skipped("no 'files:' test receiver configured")
    test = site.files
    with tempfile.TemporaryDirectory(prefix="bmrgw-check-") as folder:
        path = Path(folder) / f"bmrgw-check-{uuid.uuid4().hex[:12]}.bin"
        path.write_bytes(os.urandom(test.size))
        options = SendOptions(path=path, to=test.to, gateway=site.gateway, part_size=test.part_size,
                              sender=site.sender, user=site.user, password=site.password, ca=site.ca,
                              cert=site.cert, key=site.key, timeout=site.timeout)
        try:
            sent = await send_file(options)
        except SendError as exc:
            return result.failed(f"the test file did not arrive complete: {exc.message}", _fix(exc.message, test.to))
    return result.passed(f"{test.size:,} bytes in {sent.sent + sent.skipped} parts to {test.to}: complete and "
                         f"verified by the receiver ({path.name})")


def _fix(message: str, to: str) -> str:
    if "UnknownDestination" in message:
        return f"the data centre adds the test receiver as endpoints.{to} (a 'bmrgw receive' business AP)"
    if "Forbidden" in message:
        return f"the gateway must allow this site to call {to!r} (clients.NAME.allow)"
    if "EndpointUnavailable" in message or "EndpointTimeout" in message:
        return f"the test receiver {to!r} behind the gateway is down: the data centre starts it (bmrgw receive)"
    return "compare with the items above; the gateway logged the exchange"
