"""``bmrgw serve``: load the config, build the app, listen until stopped.

Signals (README "Resilience"):

* SIGTERM / SIGINT — stop accepting connections, let requests in flight
  finish for up to ``gateway.drain_timeout`` seconds, flush the send/receive
  log, exit 0.
* SIGHUP — reload endpoints.yaml now: validate, then swap the whole table in
  one step, or keep the old one and report why (log, ``/healthz``, metrics);
  and read the TLS certificate, key, client CA and CRL again
  (:mod:`gateway.serve.certs`, which also reloads them when their files change).

Garbage collection.  Once listening, the process hands what start-up built
to :func:`gateway.serve.heap.settle` (see there): Python's cyclic collector
otherwise walks those objects over and over under load.

With ``--workers N`` (N > 1) this process supervises N worker processes
(:mod:`gateway.serve.workers`) that share the port through ``SO_REUSEPORT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from aiohttp import web

from gateway.api import problem_bytes
from gateway.api.handler import API_RELAY
from gateway.durable import private_dir
from gateway.errors import UsageError
from gateway.keys import LIVE
from gateway.proctitle import name_process
from gateway.relay.fast import FastPath
from gateway.relay.limits import ListenSite, busy_answer, busy_error
from gateway.relay.resilience import RESILIENCE
from gateway.security.auth import AUTHENTICATOR, cleartext_basic_warning
from routing.config import Config, load_config

from . import heap
from .access import access_log
from .app import RELAY, AppOptions, make_app, reloaded
from .certs import CERTS
from .inflight import InFlight
from .options import ServeOptions
from .protocol import failure_answer, problem_handlers
from .workers import heartbeat, supervise

__all__ = ["ServeOptions", "serve", "install_event_loop", "listen_socket", "fast_path", "listen"]

log = logging.getLogger("bmrgw")


def install_event_loop() -> None:
    """Use uvloop where it is installed: the relay's hot path is event-loop bound."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound TCP socket for ``host:port``; SO_REUSEPORT lets worker processes share it."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def serve(options: ServeOptions) -> int:
    # Files the gateway creates get explicit private modes; this umask also covers those made for it
    # by libraries (SQLite's temporary files) and by the worker processes, which inherit it.
    os.umask(0o077)
    # Until the event loop handles SIGHUP, a reload request is moot (the config is read now), not fatal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    config = load_config(options.config, db=options.db)
    host = options.host or config.gateway.listen.host
    port = options.port if options.port is not None else config.gateway.listen.port
    data_dir = options.data_dir or config.resolve_path(config.gateway.data_dir)
    private_dir(data_dir)
    if options.worker is None and (cleartext := cleartext_basic_warning(config)):  # once, not per worker
        log.warning("%s", cleartext)
    node = options.node or config.gateway.name
    if options.workers > 1 and options.worker is None:
        listen_socket(host, port, reuse_port=True).close()  # a port in use ends here, before workers are announced
        name_process(f"supervisor of {node} ({host}:{port}, {options.workers} workers)")
        return supervise(options, config, host=host, port=port)
    sock = listen_socket(host, port, reuse_port=options.worker is not None)
    name_process(f"{'gateway' if options.worker is None else f'worker {options.worker} of'} {node} ({host}:{port})")
    if options.worker is not None:
        node = f"{node}.w{options.worker}"
    app = make_app(config, AppOptions(db=options.db, node=node))
    install_event_loop()
    asyncio.run(_run(app, config, sock, options))
    return 0


async def listen(app: web.Application, config: Config, sock: socket.socket) -> tuple[web.AppRunner, ListenSite]:
    """Start ``app`` on ``sock`` as ``bmrgw serve`` does: aiohttp's runner behind a ListenSite (connection
    caps, header clock) with the relay's fast path in front."""
    handlers = InFlight()
    app.middlewares.insert(0, handlers.middleware())
    runner = web.AppRunner(app, shutdown_timeout=config.gateway.drain_timeout,
                           keepalive_timeout=config.gateway.keepalive_timeout,
                           **access_log(config.gateway.access_log))
    await runner.setup()
    live, res = app[LIVE], app[RESILIENCE]

    def gateway() -> str:
        return live.current.config.gateway.name

    def answer(limit: int, address: str | None, api: bool) -> bytes:
        res.connections_refused += 1
        if api:  # the request line said /api: problem details, as every answer there
            return problem_bytes(busy_error(gateway(), limit, address), gateway=gateway(), headers={"Retry-After": "1"})
        return busy_answer(gateway(), limit, address)

    def timed_out() -> None:
        res.connections_timed_out += 1

    context = app[CERTS].listen_context()
    site = ListenSite(runner, sock, ssl_context=context,
                      limits=lambda: live.current.config.gateway.limits, answer=answer,
                      header_timeout=config.gateway.header_timeout, timed_out=timed_out,
                      handler=problem_handlers(gateway),
                      fast=fast_path(app, config), drain_timeout=config.gateway.drain_timeout, cut=handlers.cut)
    await site.start()
    return runner, site


async def _run(app: web.Application, config: Config, sock: socket.socket, options: ServeOptions) -> None:
    runner, site = await listen(app, config, sock)
    heap.settle()
    # A worker's beats come from this loop, so they stop when it hangs (the supervisor's watchdog).
    beating = asyncio.create_task(heartbeat(options.heartbeat)) if options.heartbeat is not None else None
    _announce(config, site.name, options)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app, options)
    await stopping.wait()
    drain = config.gateway.drain_timeout
    log.info("stopping: no new connections; requests in flight get up to %g s to finish", drain)
    await runner.cleanup()
    if beating is not None:
        beating.cancel()
    log.info("stopped; the send/receive log is flushed")


def fast_path(app: web.Application, config: Config) -> FastPath | None:
    """The relay's fast path (:mod:`gateway.relay.fast`); none when every request must pass aiohttp's
    server: an access log to write, or keep-alive switched off."""
    if config.gateway.access_log is not None or config.gateway.keepalive_timeout <= 0:
        return None
    live = app[LIVE]
    return FastPath(relay=lambda: app[RELAY], api=lambda: app[API_RELAY], live=live,
                    authenticator=app[AUTHENTICATOR], limiter=app[RESILIENCE].limiter,
                    keepalive_timeout=config.gateway.keepalive_timeout,
                    failure=lambda api, accept: failure_answer(api, accept, live.current.config.gateway.name))


def _reload(app: web.Application, options: ServeOptions) -> None:
    live = app[LIVE]
    source = live.current.config.source or options.config
    applied = live.reload(lambda: load_config(source, db=options.db))
    reloaded(app, applied)
    log.warning("SIGHUP: %s", f"config reloaded (generation {live.generation})" if applied
                else f"config NOT reloaded, the previous table stays in force: {live.error}")
    app[CERTS].reload_server("SIGHUP")


def _announce(config: Config, where: str, options: ServeOptions) -> None:
    count = len(config.endpoints)
    tls = config.gateway.tls
    mutual = " (client certificates required)" if tls and tls.client_ca else ""
    worker = f" worker {options.worker}" if options.worker is not None else ""
    print(f"bmrgw {config.gateway.name}{worker}: relaying on {where}/soap{mutual} "
          f"({count} endpoint{'' if count == 1 else 's'} from {config.source}); Ctrl-C stops", flush=True)
