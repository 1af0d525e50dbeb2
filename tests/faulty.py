"""A misbehaving HTTP backend, run as its own process for fault-injection tests.

    python -m tests.faulty MODE PORT

Prints ``ready`` once listening and ``got N`` after reading the N-th request, so
a test can act (e.g. kill it) at the right moment.  Modes:

* ``hang``  — read the request, never answer;
* ``reset`` — answer status and headers announcing 100000 bytes, send 10, then reset the connection;
* ``reset-big`` — the same announcing 10 MB (an answer the gateway streams);
* ``ok``    — answer a small SOAP envelope.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

_OK = (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
       b"<s:Body><ok/></s:Body></s:Envelope>")


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's exact bytes: its head, then the body its Content-Length announces (none without one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def _main(mode: str, port: int) -> None:
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        count += 1
        print(f"got {count}", flush=True)
        if mode == "hang":
            await asyncio.sleep(3600)
        elif mode.startswith("reset"):
            size = 10_000_000 if mode == "reset-big" else 100_000
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % size
                         + b"<" * 10)
            await writer.drain()
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(_OK) + _OK)
            await writer.drain()
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
