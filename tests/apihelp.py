"""A real JSON backend for the HTTP API relay's tests, and raw requests that no client library tidies up."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .conftest import start_app


@dataclass
class JsonBackend:
    """An HTTP/JSON API on loopback: answers what it received (method, path, query, headers, body digest)."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0


def json_backend_app(backend: JsonBackend) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        seen = {"method": request.method, "path": request.path, "raw_path": request.raw_path,
                "query": request.rel_url.raw_query_string, "headers": dict(request.headers),
                "sha256": digest.hexdigest(), "size": size}
        backend.seen.append(seen)
        if backend.delay:
            await asyncio.sleep(backend.delay)
        if request.path.endswith("/big"):
            return await _big(request, int(request.query["n"]))
        status = int(request.query.get("status", "200"))
        return web.json_response({k: v for k, v in seen.items() if k != "headers"}, status=status,
                                 headers={"X-Backend": "json", "ETag": '"v1"'})

    app = web.Application(client_max_size=1024 ** 3)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _big(request: web.Request, size: int) -> web.StreamResponse:
    """``size`` bytes of a JSON array, streamed in 64 KiB chunks."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b'"' + b"x" * (64 * 1024 - 4) + b'",'
    sent = 1
    await response.write(b"[")
    while sent + len(chunk) < size - 3:
        await response.write(chunk)
        sent += len(chunk)
    await response.write(b'"' + b"y" * (size - sent - 3) + b'"]')
    await response.write_eof()
    return response


async def start_json_backend() -> tuple[web.AppRunner, JsonBackend]:
    backend = JsonBackend()
    runner, backend.url = await start_app(json_backend_app(backend))
    return runner, backend


async def raw_request(base: str, target: str, method: str = "GET", headers: dict[str, str] | None = None,
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``target`` exactly as written (no URL normalisation) and read the whole answer."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    async with asyncio.timeout(10):
        data = await reader.read()
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    if found.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    return int(status_line.split()[1]), found, payload


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


def problem_of(body: bytes) -> dict[str, Any]:
    """A problem+json body, parsed."""
    parsed = json.loads(body)
    assert isinstance(parsed, dict)
    return parsed


async def closing_server() -> tuple[asyncio.Server, str, list[bytes]]:
    """A server that reads the request head and closes without answering: the request may have arrived."""
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", got


async def body_chunks(size: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    block = b"z" * chunk
    sent = 0
    while sent < size:
        part = block[:min(chunk, size - sent)]
        sent += len(part)
        yield part
