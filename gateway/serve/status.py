"""``GET /status`` and ``bmrgw status``: how the running gateway is, asked from its own host (SPEC.md "Operators").

The answer (JSON) holds the version, the config generation in force (and
why a newer file was not taken), every endpoint with its circuits in this
process and whether the operator disabled it, NTP, the send/receive log
writer, and the gateway processes that share the store (``--workers N``
and other hosts), read from the heartbeats of :mod:`gateway.serve.control`.

Who may read it: callers on the loopback interface, as HAProxy's stats
socket and ``apictl mi`` against a local management port do.  The answer
names internal URLs and hosts, so it is not served to the network; remote
operators use the console, for ``admin: true`` clients.  ``/healthz`` stays
the small, public health check for load balancers.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from aiohttp import web

from gateway import version
from gateway.errors import CommandError
from gateway.keys import CLOCK, JOURNAL, LIVE, NODE, STORE
from gateway.relay.resilience import RESILIENCE, urls_of
from gateway.terminal import ConfigOption, http_url, table
from routing.config import Config, load_config

from . import control
from .certs import CERTS

__all__ = ["add_status_route", "add_status_command", "status_of"]

_STARTED = web.AppKey("status_started", float)
_STORE_TIMEOUT = 2.0


def add_status_route(app: web.Application) -> None:
    """Serve ``GET /status`` on ``app``."""
    app[_STARTED] = time.time()
    app.router.add_get("/status", _status)


async def _status(request: web.Request) -> web.Response:
    if not _loopback(request.remote):
        return web.json_response({"error": "GET /status answers callers on this host only (bmrgw status)"},
                                 status=403)
    return web.json_response(await status_of(request.app))


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:  # a Unix socket has no address: only local processes reach it
        return remote == ""


async def status_of(app: web.Application) -> dict[str, Any]:
    """What ``GET /status`` answers for ``app``'s process."""
    live = app[LIVE]
    config = live.current.config
    journal = app.get(JOURNAL)
    return {
        "gateway": config.gateway.name, "version": version(), "node": app[NODE], "pid": os.getpid(),
        "uptime_s": round(time.time() - app[_STARTED], 1),
        "config": {"source": str(config.source) if config.source else None, "generation": live.generation,
                   "error": live.error},
        "endpoints": _endpoints(app, config),
        "ntp": app[CLOCK].status(),
        "log_writer": journal.status() if journal is not None else {"running": False, "disabled": True},
        "processes": await _processes(app),
        "tls": app[CERTS].status(),
    }


def _endpoints(app: web.Application, config: Config) -> list[dict[str, Any]]:
    breakers = {b.url: b for b in app[RESILIENCE].circuits}
    urls = {name: found for (_, name), found in urls_of(config).items()}
    listed = []
    for name, ep in config.endpoints.items():
        kind = type(ep).__name__.removesuffix("Endpoint").lower()
        circuits = [{"url": url, "state": breakers[url].state.value if url in breakers else "closed",
                     "failures": breakers[url].failures if url in breakers else 0,
                     "last_error": breakers[url].last_error if url in breakers else None}
                    for url in urls.get(name, ())]
        listed.append({"name": name, "kind": "url" if kind == "url" else "via" if kind == "peer" else kind,
                       "disabled": name in config.disabled, "circuits": circuits})
    return listed


async def _processes(app: web.Application) -> dict[str, Any]:
    """The gateway processes on this store (heartbeats), or why they cannot be read."""
    engine = app[STORE].engine
    try:
        rows = await asyncio.wait_for(asyncio.to_thread(control.live_processes, engine), _STORE_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the status page shows any store failure instead of failing
        return {"error": str(exc) or type(exc).__name__, "list": []}
    return {"error": None, "list": rows}


# -- bmrgw status ---------------------------------------------------------------------


def add_status_command(commands: Any, config_option: ConfigOption) -> None:
    """Register ``bmrgw status``."""
    p = commands.add_parser(
        "status", help="ask the running gateway how it is: endpoints and circuits, NTP, log writer, workers",
        description="Ask the gateway running on this host (gateway.listen of the config, or --url) for "
        "GET /status: version, config generation, each endpoint with its circuits and whether it is "
        "disabled, NTP, the send/receive log writer and the gateway processes sharing the store. "
        "Exit status 0 when it answers, 1 when none answers.",
    )
    config_option(p)
    p.add_argument("--url", type=http_url, metavar="URL",
                   help="the gateway's base URL (default: from gateway.listen, on 127.0.0.1)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="text for people (default) or JSON")
    p.set_defaults(run=_status_command)


def _status_command(args: argparse.Namespace) -> int:
    base = args.url or load_config(args.config).gateway.local_url
    body = _fetch(f"{base.rstrip('/')}/status")
    print(json.dumps(body, indent=2, ensure_ascii=False) if args.format == "json" else "\n".join(status_lines(body)))
    return 0


def _fetch(url: str) -> dict[str, Any]:
    # Its own gateway on this host: the certificate names the public host name, not 127.0.0.1.
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise CommandError(f"{url} answered HTTP {exc.code}: {exc.read(300).decode(errors='replace')}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandError(f"no gateway answers on {url} ({reason}); is 'bmrgw serve' running with this "
                           "config? (--url names another)") from exc
    except ValueError as exc:
        raise CommandError(f"{url} did not answer JSON: is it a bmrgw gateway?") from exc


def status_lines(body: dict[str, Any]) -> list[str]:
    """``GET /status`` for people."""
    cfg, ntp, writer = body["config"], body["ntp"], body["log_writer"]
    lines = [f"bmrgw {body['version']}  {body['gateway']}  node {body['node']} (pid {body['pid']}), "
             f"up {_duration(body['uptime_s'])}",
             f"config:     generation {cfg['generation']} from {cfg['source']}"
             + (f"; NOT reloaded: {cfg['error']}" if cfg["error"] else ""),
             f"NTP:        {'synced' if ntp['synced'] else 'NOT synced'}, offset {ntp['offset'] or 0:+.3f} s",
             "log writer: " + ("disabled (gateway.logs.enabled: false)" if writer.get("disabled") else
                               f"{'running' if writer['running'] else 'NOT running'}, {writer['queued']} queued, "
                               f"{writer['written']} written" + (f", last error: {writer['last_error']}"
                                                                   if writer.get("last_error") else ""))]
    processes = body["processes"]
    if processes["error"]:
        lines.append(f"processes:  unknown, the store does not answer ({processes['error']})")
    else:
        lines.append("processes:  " + ", ".join(f"{p['node']} (pid {p['pid']} on {p['host']})"
                                                  for p in processes["list"]))
    lines += _certificate_lines(body.get("tls"))
    rows = [[e["name"], e["kind"], "disabled" if e["disabled"] else _worst(e["circuits"]),
             " ".join(c["url"] + ("" if c["state"] == "closed" else f" [{c['state']}]") for c in e["circuits"])]
            for e in body["endpoints"]]
    return [*lines, "", *(table(["ENDPOINT", "KIND", "STATE", "CIRCUITS"], rows) if rows else ["no endpoints"])]


def _certificate_lines(tls: dict[str, Any] | None) -> list[str]:
    if not tls:
        return []
    lines = [f"TLS:        NOT reloaded, the certificates in force stay: {tls['error']}"] if tls["error"] else []
    for c in tls["certificates"]:
        flag = "  EXPIRED" if c["expired"] else "  WARNING: renew soon" if c["warning"] else ""
        lines.append(f"cert:       {c['role']}: {c['subject']} until {c['not_after'][:16]} "
                     f"({c['days_left']:.0f} days){flag}")
    return lines


def _worst(circuits: list[dict[str, Any]]) -> str:
    states = {c["state"] for c in circuits}
    return next((s for s in ("open", "half-open") if s in states), "closed" if circuits else "-")


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if days else f"{hours} h {minutes} min" if hours else f"{minutes} min"
