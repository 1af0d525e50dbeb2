"""``bmrgw check``: the connection test a site runs against its gateway before going live."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from gateway.errors import UsageError

from . import exchanges, files, network
from .report import as_html, as_json, checklist, dumps
from .result import ITEMS, Probe, Result
from .site import Site, load_site, site_from

__all__ = ["run_check", "add_check_command"]

Check = Callable[[Site, Probe, Result], Awaitable[Result]]
_CHECKS: dict[str, Check] = {"dns": network.dns, "tcp": network.tcp, "tls": network.tls,
                             "client_cert": network.client_cert, "basic": exchanges.basic, "ntp": network.ntp,
                             "echo": exchanges.echo, "jx": exchanges.jx, "refdb": exchanges.refdb,
                             "files": files.files}


async def run_check(site: Site) -> list[Result]:
    """Every item in order; one whose prerequisite failed (or was skipped because of a failure) is skipped."""
    probe, results = Probe(), []
    blocked: dict[str, str] = {}  # item → the failed item that keeps it from running
    for item, ja, en, needs in ITEMS:
        result = Result(id=item, ja=ja, en=en)
        stopped = [blocked[n] for n in needs if n in blocked]
        if stopped:
            blocked[item] = stopped[0]
            results.append(result.skipped(f"not tried: {stopped[0]} failed"))
            continue
        began = time.monotonic()
        try:
            await asyncio.wait_for(_CHECKS[item](site, probe, result), site.timeout * 3)
        except (OSError, asyncio.TimeoutError) as exc:
            result.failed(f"{type(exc).__name__}: {exc or 'no answer in time'}", "check the network path and retry")
        except Exception as exc:  # noqa: BLE001 - one item's surprise must not cost the site its checklist
            result.failed(f"{type(exc).__name__}: {exc}", "an unexpected failure of this item: send the report "
                          "to the data centre")
        result.seconds = time.monotonic() - began
        if result.status == "fail":
            blocked[item] = item
        results.append(result)
    return results


def add_check_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bmrgw check``."""
    p = commands.add_parser(
        "check", help="connection test (接続試験) from a site against its gateway: a checklist and a report",
        description="Run from a site's side against a gateway: DNS, TCP, the gateway's certificate and name, the "
        "site's client certificate, Basic credentials, the two clocks, a relay round trip to the gateway's "
        "echo business AP and a JX Put/Get/Confirm. Prints a checklist (Japanese and English) and writes it "
        "as JSON and HTML with the message ids the gateway logged. Exit 0 when no item failed, 1 otherwise.")
    p.add_argument("--site", type=Path, metavar="SITE.yaml", help="the site's settings (see README)")
    p.add_argument("--gateway", metavar="URL", help="the gateway's base URL (instead of or over SITE.yaml)")
    p.add_argument("--ca", metavar="FILE", help="trust anchor for the gateway's certificate")
    p.add_argument("--echo", metavar="NAME", help="the gateway's echo endpoint")
    p.add_argument("--report", type=Path, metavar="STEM", default=None,
                   help="write STEM.json and STEM.html (default: check-SITE-TIME in the current folder)")
    p.set_defaults(run=_check)


def _site(args: argparse.Namespace) -> Site:
    if args.site is not None:
        site = load_site(args.site)
        if args.gateway or args.ca or args.echo:
            raise UsageError("give the site's settings in SITE.yaml or as flags, not both")
        return site
    if not args.gateway:
        raise UsageError("bmrgw check needs --site SITE.yaml or --gateway URL")
    raw = {"gateway": args.gateway, "ca": args.ca, "echo": args.echo}
    return site_from({k: v for k, v in raw.items() if v}, Path.cwd(), "flags")


def _check(args: argparse.Namespace) -> int:
    site = _site(args)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    results = asyncio.run(run_check(site))
    print("\n".join(checklist(site, results, started)))
    stem = args.report or Path(f"check-{site.name}-{started.replace(':', '')}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(dumps(as_json(site, results, started)), encoding="utf-8")
    Path(f"{stem}.html").write_text(as_html(site, results, started), encoding="utf-8")
    print(f"report: {stem}.json, {stem}.html")
    return 0 if all(r.status != "fail" for r in results) else 1
