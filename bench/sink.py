"""``python -m bench.sink --port P --dir DIR``: the raw-upload target behind nginx in the file benchmark.

It does what any upload endpoint must at the least: writes the body to a
file while hashing it, fsyncs, and answers ``{"sha256": …, "size": …}`` so
the benchmark can check that the bytes arrived whole.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web


def make_sink(directory: Path) -> web.Application:
    async def upload(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        target = directory / "upload.bin"
        with target.open("wb") as out:
            async for chunk in request.content.iter_chunked(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return web.json_response({"sha256": digest.hexdigest(), "size": size})

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", upload)
    app.router.add_put("/{tail:.*}", upload)
    app.router.add_get("/{tail:.*}", ready)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    web.run_app(make_sink(args.dir), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
