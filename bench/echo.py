"""Backends that are not the bottleneck: what the proxies are measured against.

The demo backend (``bmrgw demo-backend``) parses every envelope with lxml and
builds its answer: realistic, but at ~100 µs of CPU per message it saturates
before a fast proxy does, and then a ratio to nginx measures the backend.
Two cheaper ones answer the bench's ``Echo`` with the ``EchoResponse`` of the
very same text (:func:`echo_answer`), so :func:`bench.envelope.verify` holds:

* **nginx** (C, the default for the throughput scenarios): the answer for each
  envelope size the bench sends is a static file, chosen by the request's
  ``Content-Length`` (``return 405`` discards the body, ``error_page 405 =200``
  serves the file);
* **this module** (``python -m bench.echo``), aiohttp's low-level
  ``web.Server`` without routing or an application: answers after ``--delay``
  seconds (the latency scenario's 30 ms backend), and with ``--digest``
  answers the length and SHA-256 of the body as it streamed in, in constant
  memory (the 2 GiB + 1 byte scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from .procs import nginx_head

__all__ = ["echo_answer", "digest_answer", "nginx_echo_conf", "main"]

_CONTENT_TYPE = "text/xml; charset=utf-8"


def echo_answer(body: bytes) -> bytes:
    """The EchoResponse for a bench Echo envelope: the same bytes, the operation renamed."""
    return body.replace(b"<d:Echo ", b"<d:EchoResponse ").replace(b"</d:Echo>", b"</d:EchoResponse>")


def digest_answer(length: int, sha256: str) -> bytes:
    """The answer of the ``--digest`` backend: what arrived, as a SOAP 1.1 envelope."""
    return (f'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
            f'<Digest length="{length}" sha256="{sha256}"/></soap:Body></soap:Envelope>').encode()


def nginx_echo_conf(prefix: Path, *, port: int, answers: dict[int, bytes], listen: str) -> str:
    """An nginx that answers a POST of ``n`` bytes with ``answers[n]`` (written under ``prefix``)."""
    folder = prefix / "answers"
    folder.mkdir(exist_ok=True)
    for size, answer in answers.items():
        (folder / f"{size}.xml").write_bytes(answer)
    (folder / ".xml").write_bytes(b"<ok/>")  # GET (readiness probe): no Content-Length
    return nginx_head(prefix, "echo.py") + f"""    client_max_body_size 0;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    server {{
        listen {listen}:{port} backlog=4096;
        default_type "{_CONTENT_TYPE}";
        root {prefix};
        location /answers/ {{ internal; }}
        location / {{
            return 405;
            error_page 405 =200 /answers/$http_content_length.xml;
        }}
    }}
}}
"""


def make_server(*, delay: float, digest: bool) -> web.Server:
    """The low-level server: no router, no application, no middleware."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(body=b"<ok/>", content_type="text/xml")
        if digest:
            sha, length = hashlib.sha256(), 0
            async for chunk in request.content.iter_any():
                sha.update(chunk)
                length += len(chunk)
            answer = digest_answer(length, sha.hexdigest())
        else:
            answer = echo_answer(await request.read())
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=answer, headers={"Content-Type": _CONTENT_TYPE})

    return web.Server(handle, access_log=None, max_field_size=16384)


async def _serve(host: str, port: int, *, delay: float, digest: bool) -> None:
    runner = web.ServerRunner(make_server(delay=delay, digest=digest), handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    print(f"bench echo backend on http://{host}:{port} (delay {delay:g} s{', digest' if digest else ''})",
          flush=True)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    p.add_argument("--digest", action="store_true", help="answer the body's length and SHA-256")
    args = p.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_serve(args.host, args.port, delay=args.delay, digest=args.digest))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
