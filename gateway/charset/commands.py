"""``bmrgw charset check FILE --endpoint NAME``: what would not survive the route, without sending it.

A city fixes its data before go-live: every character of FILE (UTF-8, on
its way to the endpoint; with ``--from-partner``, in the partner's encoding,
on its way back) that the endpoint's character profile cannot carry is
listed with its line, column, offset, code point and what it would become —
whatever ``unmappable`` says, nothing is refused here; with ``reduce: mj`` a
reduced character is listed too, with what the reduction makes of it.  Exit status 0 when
everything survives, 1 when something would not, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.errors import MalformedMessage, UsageError

from .convert import FromPartner, Losses, ToPartner
from .table import CharsetProfile

__all__ = ["add_charset_command", "check_file"]

_CHUNK = 1024 * 1024


def add_charset_command(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                        config_option: Callable[[argparse.ArgumentParser], None]) -> None:
    charset = commands.add_parser(
        "charset", help="list the characters of a file that an endpoint's character profile cannot carry",
        description=__doc__)
    actions = charset.add_subparsers(title="actions", metavar="ACTION")
    check = actions.add_parser("check", help="list the characters of FILE that would not survive the route")
    config_option(check)
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--endpoint", required=True, metavar="NAME", help="the endpoint whose charset applies")
    check.add_argument("--from-partner", action="store_true",
                       help="FILE is in the partner's encoding, on its way back to UTF-8")
    check.add_argument("--format", choices=("table", "json", "csv"), default="table")
    check.set_defaults(run=_check)


def check_file(file: Path, profile: CharsetProfile, *, from_partner: bool = False) -> Losses:
    """Every loss of ``file`` through ``profile`` (substituting, never refusing), in order."""
    losses = Losses(recorded=[])
    converter = (FromPartner if from_partner else ToPartner)(
        dataclasses.replace(profile, unmappable="substitute"), losses=losses, record=True)
    with file.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            converter.feed(chunk)
    converter.finish()
    return losses


def _check(args: argparse.Namespace) -> int:
    from routing.config import UrlEndpoint, load_config

    config = load_config(args.config)
    endpoint = config.endpoints.get(args.endpoint)
    if endpoint is None:
        raise UsageError(f"no endpoint named {args.endpoint!r} in {args.config}")
    profile = endpoint.charset if isinstance(endpoint, UrlEndpoint) else None
    if profile is None or not profile.converts:
        where = "" if isinstance(endpoint, UrlEndpoint) else " here (its profile is at the gateway that holds it)"
        print(f"endpoint {args.endpoint} has no character profile{where}: bodies travel as UTF-8, unchanged")
        return 0
    try:
        losses = check_file(args.file, profile, from_partner=args.from_partner)
    except MalformedMessage as exc:
        raise UsageError(f"{args.file}: {exc.reason}") from exc
    _print(losses, args.format)
    if losses.total:
        print(f"{losses.total} character(s) would not survive {args.endpoint} ({profile.encoding}): "
              f"{losses.summary()}", file=sys.stderr)
        return 1
    print(f"every character of {args.file} survives {args.endpoint} ({profile.encoding})", file=sys.stderr)
    return 0


def _print(losses: Losses, form: str) -> None:
    rows = [dataclasses.asdict(loss) for loss in losses.recorded or []]
    if form == "json":
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    elif form == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=["line", "column", "position", "text", "code", "becomes"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    elif rows:
        from gateway.terminal import table

        print("\n".join(table(("line", "column", "offset", "character", "code point", "becomes"),
                              [[str(r["line"]), str(r["column"]), str(r["position"]), r["text"], r["code"],
                                r["becomes"] or "(nothing)"] for r in rows], right=(0, 1, 2))))
