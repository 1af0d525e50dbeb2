"""A 200 MB body through the HTTP API relay, both ways, in a real gateway process: memory stays flat
(issue 23, item 1: "streamed both ways, bounded memory")."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable

import aiohttp

from .apihelp import start_json_backend
from .conftest import GatewayProcess

SIZE = 200 * 1024 * 1024
#: The gateway process starts near 60 MB; a body held in memory would add 200 MB.
RSS_LIMIT_MIB = 150


async def test_200_mb_up_and_down_in_bounded_memory(gateway_process: Callable[..., GatewayProcess]) -> None:
    runner, backend = await start_json_backend()
    try:
        gw = gateway_process({"endpoints": {"kaigo": {"url": f"{backend.url}/kaigo", "timeout": 60}}})
        sent = hashlib.sha256()

        async def upload() -> AsyncIterator[bytes]:
            block = b'{"row": "' + b"r" * (256 * 1024 - 12) + b'"}\n'
            for _ in range(SIZE // len(block)):
                sent.update(block)
                yield block

        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.put(f"{gw.url}/api/kaigo/bulk?batch=1", data=upload(),
                                headers={"Content-Type": "application/x-ndjson"}) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
            after_upload = gw.peak_rss_kib() / 1024
            received, size = hashlib.sha256(), 0
            async with http.get(f"{gw.url}/api/kaigo/big?n={SIZE}") as resp:
                assert resp.status == 200
                async for part in resp.content.iter_chunked(1 << 20):
                    received.update(part)
                    size += len(part)
            peak = gw.peak_rss_kib() / 1024
    finally:
        await runner.cleanup()
    assert answer["sha256"] == sent.hexdigest() and answer["size"] == SIZE // (256 * 1024) * 256 * 1024
    assert size == SIZE
    print(f"gateway peak RSS: {after_upload:.0f} MiB after a 200 MB upload, {peak:.0f} MiB after a 200 MB download")
    assert after_upload < RSS_LIMIT_MIB and peak < RSS_LIMIT_MIB
