"""``bmrgw serve``: load the config, build the app, listen until stopped."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from routing.config import load_config

from .app import AppOptions, make_app
from .tls import server_context

__all__ = ["ServeOptions", "serve", "install_event_loop"]

log = logging.getLogger("bmrgw")


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    config: Path
    """The endpoints.yaml to load (and watch)."""
    host: str | None = None
    """Listen address overriding ``gateway.listen.host``."""
    port: int | None = None
    """Listen port overriding ``gateway.listen.port``."""
    data_dir: Path | None = None
    """Local files directory overriding ``gateway.data_dir``."""
    db: str | None = None
    """Store URL overriding ``gateway.db``."""


def install_event_loop() -> None:
    """Use uvloop where it is installed: the relay's hot path is event-loop bound."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(options: ServeOptions) -> None:
    config = load_config(options.config, db=options.db)
    host = options.host or config.gateway.listen.host
    port = options.port if options.port is not None else config.gateway.listen.port
    data_dir = options.data_dir or config.resolve_path(config.gateway.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tls = config.gateway.tls
    ssl_context = server_context(tls) if tls is not None else None
    app = make_app(config, AppOptions(db=options.db))
    install_event_loop()

    def announce(_: object) -> None:
        count = len(config.endpoints)
        scheme = "https" if tls else "http"
        mutual = " (client certificates required)" if tls and tls.client_ca else ""
        print(f"bmrgw {config.gateway.name}: relaying on {scheme}://{host}:{port}/soap{mutual} "
              f"({count} endpoint{'' if count == 1 else 's'} from {config.source}); Ctrl-C stops", flush=True)

    web.run_app(app, host=host, port=port, access_log=None, print=announce, shutdown_timeout=30,
                ssl_context=ssl_context)
