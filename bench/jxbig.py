"""A big JX document through the encrypted store, and the peak memory of every process that moves it.

``python -m bench.jxbig URL BYTES`` is the client: it streams a PutDocument of ``BYTES`` bytes
(reproducible blocks, base64-encoded as they go out, never held whole), then a GetDocument whose
answer it decodes as it arrives, checks the SHA-256 of what came back against what went out,
and prints one JSON line: seconds for each, whether the bytes matched, and its own peak RSS.
The scenario reads the gateway's processes' peaks (``VmHWM`` of the supervisor, its workers and
the log writer) from ``/proc`` once the document is back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import resource
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from .jxload import JX
from .procs import family

__all__ = ["peak_rss_mib", "MIB"]

MIB = 1024 * 1024
_ENVELOPE = ('<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
             f'xmlns:jx="{JX}"><s:Header><jx:MessageHeader><jx:From>bench</jx:From><jx:To>gw</jx:To>'
             "<jx:MessageId>big</jx:MessageId><jx:Timestamp>now</jx:Timestamp></jx:MessageHeader></s:Header>"
             "<s:Body><jx:{op}>{fields}</jx:{op}></s:Body></s:Envelope>")


def _block(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest() * (MIB // 32)


def _fields(**values: str) -> str:
    return "".join(f"<jx:{k}>{v}</jx:{k}>" for k, v in values.items())


async def _put_body(size: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    head, tail = _ENVELOPE.format(op="PutDocument", fields=_fields(
        messageId="big-1", senderId="bench", receiverId="big", formatType="BIN", documentType="bench",
        compressType="", data="@")).encode().split(b"@")
    yield head
    carry = b""
    for n in range(-(-size // MIB)):
        piece = _block(n)[:size - n * MIB]
        digest.update(piece)
        data = carry + piece
        usable = len(data) - len(data) % 3
        yield base64.b64encode(data[:usable])
        carry = data[usable:]
    yield base64.b64encode(carry) + tail


async def _client(url: str, size: int) -> dict[str, object]:
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    sent = hashlib.sha256()
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        began = time.monotonic()
        async with http.post(url, data=_put_body(size, sent), headers={**headers, "SOAPAction": f'"{JX}/PutDocument"'}) \
                as resp:
            answer = await resp.read()
            if resp.status != 200 or b"PutDocumentResult>true<" not in answer:
                return {"error": f"PutDocument answered {resp.status}: {answer[:300]!r}"}
        put_s = time.monotonic() - began
        began = time.monotonic()
        got, received, carry, inside, pending = hashlib.sha256(), 0, b"", False, b""
        body = _ENVELOPE.format(op="GetDocument", fields=_fields(receiverId="big")).encode()
        async with http.post(url, data=body, headers={**headers, "SOAPAction": f'"{JX}/GetDocument"'}) as resp:
            if resp.status != 200:
                return {"error": f"GetDocument answered {resp.status}"}
            async for chunk in resp.content.iter_chunked(MIB):
                if not inside:  # everything before <jx:data> is a small header
                    pending += chunk
                    at = pending.find(b"data>")
                    if at < 0:
                        continue
                    inside, chunk = True, pending[at + len(b"data>"):]
                end = chunk.find(b"<")
                text = carry + (chunk if end < 0 else chunk[:end])
                usable = len(text) - len(text) % 4
                data = base64.b64decode(text[:usable])
                got.update(data)
                received += len(data)
                carry = text[usable:]
                if end >= 0:
                    break
            await resp.read()
        get_s = time.monotonic() - began
    return {"put_s": put_s, "get_s": get_s, "bytes": received, "same": got.hexdigest() == sent.hexdigest()
            and received == size, "client_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peak_rss_mib(pid: int) -> dict[str, float]:
    """Each process of ``pid``'s family (the gateway, its workers, its log writer): its name and its
    peak resident memory (``VmHWM``) in MiB."""
    peaks = {}
    for member in sorted(family(pid)):
        try:
            status = Path(f"/proc/{member}/status").read_text()
            line = Path(f"/proc/{member}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        hwm = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:")), 0)
        role = "gateway" if member == pid else ("spawned child" if "multiprocessing" in line or " -c " in line
                                               else line.split()[-1][:30] if line.split() else "child")
        peaks[f"{role} (pid {member})"] = hwm / 1024
    return peaks


def main(argv: list[str]) -> int:
    url, size = argv[0], int(argv[1])
    print(json.dumps(asyncio.run(_client(url, size))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
