"""``bmrgw refdb push|query|changes``: the reference-DB clients (SPEC.md "CLI").

``push`` is what a city hall runs (by cron, or after each change) to send its
data up; ``query`` and ``changes`` are for DC operators and scripts.  They
talk SOAP to ``/refdb`` of a running gateway; ``--server`` defaults to the
``gateway.listen`` address of ``--config``.  Exit codes follow ``gateway.cli``:
0 done, 1 the gateway refused or could not be reached, 2 bad usage.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import ssl
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from gateway.errors import ConfigError, FileError, RemoteFault
from gateway.terminal import ConfigOption, count
from gateway.terminal import Progress as Display
from routing.config import load_config

from .client import DEFAULT_BATCH, RefdbClient
from .files import Progress, read_records
from .store import PushResult
from .wire import Fields

__all__ = ["add_refdb_command"]

_WHERE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)(.*)", re.S)
_OPS = {"=": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}

_EXAMPLES = """\
examples:
  bmrgw refdb push --server http://dc-gw:8080 --dataset residents residents.csv --mode full
  bmrgw refdb push --dataset residents changes.jsonl            # diff: upsert these records
  bmrgw refdb query --dataset residents --where birth>=2000-01-01 --where city=Sapporo
  bmrgw refdb query --dataset residents --format csv > residents.csv
  bmrgw refdb changes --dataset residents --since 41 --format json"""


def add_refdb_command(commands: Any, config_option: ConfigOption) -> None:
    """Register ``bmrgw refdb push``, ``query`` and ``changes``."""
    parser = commands.add_parser(
        "refdb", help="push data to the reference DB, or query it",
        description="The reference DB (capability F): a city hall pushes its business data to the "
        "gateway, DC applications query the copy. These commands call /refdb of a running gateway.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=lambda args: _usage(parser))
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    _add_push(actions, config_option)
    _add_query(actions, config_option)
    _add_changes(actions, config_option)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _connection_options(p: argparse.ArgumentParser, config_option: ConfigOption) -> None:
    config_option(p)
    p.add_argument("--server", metavar="URL", help="the gateway, e.g. https://dc-gw:8443 (default: "
                   "gateway.listen of --config)")
    p.add_argument("--dataset", required=True, metavar="NAME", help="a dataset of refdb.datasets")
    p.add_argument("--user", help="HTTP Basic user name")
    p.add_argument("--password", help="HTTP Basic password (default: $BMRGW_PASSWORD)")
    p.add_argument("--ca", type=Path, metavar="PEM", help="trust anchor for an https gateway")
    p.add_argument("--cert", type=Path, metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--key", type=Path, metavar="PEM", help="key of --cert")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="seconds per request (default: 600)")


def _add_push(actions: Any, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "push", help="push a CSV or JSON Lines file to a dataset",
        description="Push the records of FILE (.csv with a header row, or .jsonl with one object per "
        "line) as one new version of the dataset. --mode full replaces the whole dataset (records "
        "absent from FILE are deleted); diff (the default) inserts or updates only these records. "
        "The file is sent in batches; the gateway applies them all at once when the last one has "
        "arrived, or none of them if any record is refused. Empty CSV cells and JSON null are NULL.",
    )
    _connection_options(p, config_option)
    p.add_argument("file", type=Path, metavar="FILE", help="the records: FILE.csv or FILE.jsonl")
    p.add_argument("--mode", choices=["full", "diff"], default="diff", help="full replace or differential (default: diff)")
    p.add_argument("--batch", type=_positive, default=DEFAULT_BATCH, metavar="N",
                   help=f"records per request (default: {DEFAULT_BATCH})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_push)


def _add_query(actions: Any, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "query", help="print the records of a dataset, filtered",
        description="Print the live records of a dataset in key order, all read from one version. "
        "--where COL=VALUE (also !=, <, <=, >, >=) may be given several times; all must hold.",
    )
    _connection_options(p, config_option)
    p.add_argument("--where", action="append", default=[], type=_where, metavar="COL=VALUE")
    p.add_argument("--limit", type=_positive, metavar="N", help="at most N records")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table",
                   help="table (aligned), json (one object per line) or csv")
    p.set_defaults(run=_query)


def _add_changes(actions: Any, config_option: ConfigOption) -> None:
    p = actions.add_parser(
        "changes", help="print what changed in a dataset after a version",
        description="Print the records inserted or updated and the keys deleted after version --since "
        "(one object per line with 'op': upsert|delete in json; a column _op in table and csv), then "
        "the current version on stderr: pass it as --since next time to sync incrementally.",
    )
    _connection_options(p, config_option)
    p.add_argument("--since", type=int, required=True, metavar="VERSION")
    p.add_argument("--format", choices=["table", "json", "csv"], default="json")
    p.set_defaults(run=_changes)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _where(text: str) -> tuple[str, str, str]:
    match = _WHERE.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not COL=VALUE (or !=, <, <=, >, >=)")
    return match[1], _OPS[match[2]], match[3]


# -- running -------------------------------------------------------------------

def _client(args: argparse.Namespace) -> RefdbClient:
    server = args.server or _server_from(args.config)
    context = None
    if args.ca or args.cert:
        context = ssl.create_default_context(cafile=str(args.ca) if args.ca else None)
        if args.cert:
            context.load_cert_chain(str(args.cert), str(args.key) if args.key else None)
    password = args.password if args.password is not None else os.environ.get("BMRGW_PASSWORD")
    return RefdbClient(server, user=args.user, password=password, ssl_context=context, timeout=args.timeout)


def _server_from(config: Path) -> str:
    try:
        return load_config(config).gateway.local_url
    except ConfigError as exc:
        raise ConfigError(f"{exc.reason} (or give --server URL)") from exc


def _push(args: argparse.Namespace) -> int:
    try:
        progress = Progress(args.file)
    except OSError as exc:
        print(f"bmrgw: {args.file}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    bar = _Bar(progress, enabled=not args.quiet)
    try:
        with _client(args) as client:
            result = client.push(args.dataset, read_records(args.file, progress), mode=args.mode,
                                 batch=args.batch, progress=bar.update)
    except FileError as exc:
        bar.end()
        print(f"bmrgw: {exc}; nothing was applied", file=sys.stderr)
        return 1
    except RemoteFault as exc:
        bar.end()
        print(f"bmrgw: refused: {exc.reason}{_code(exc)}; nothing was applied", file=sys.stderr)
        return 1
    bar.end()
    print(_report(result, time.monotonic() - bar.started))
    return 0


def _code(exc: RemoteFault) -> str:
    return f" ({exc.remote_code})" if exc.remote_code else ""


def _report(result: PushResult, seconds: float) -> str:
    rate = f", {result.received / seconds:,.0f} records/s" if seconds > 0 and result.received else ""
    return (f"{result.dataset}: version {result.version} ({result.mode}): {result.received:,} records sent in "
            f"{seconds:.2f} s{rate}; {result.inserted:,} inserted, {result.updated:,} updated, "
            f"{result.deleted:,} deleted, {result.unchanged:,} unchanged")


class _Bar:
    """The push's progress display: records sent of the file's records, estimated from how many the
    reader has read in how many bytes (exact once it reached the end), since it reads a batch ahead."""

    def __init__(self, reading: Progress, *, enabled: bool) -> None:
        self.reading = reading
        self.started = time.monotonic()
        self.display = Display(0, unit=count("records"), enabled=enabled, estimated=True)

    def update(self, records: int) -> None:
        read, done, total = self.reading.records, self.reading.done, self.reading.total
        estimate = read * total / done if read and done else records
        self.display.estimated = done < total
        self.display.update(records, max(estimate, records))

    def end(self) -> None:
        self.display.close()


def _query(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows: Iterable[Fields] = client.query_all(args.dataset, args.where)
        if args.limit:
            rows = _take(rows, args.limit)
        return _print(rows, args.format, sys.stdout)


def _take(rows: Iterable[Fields], limit: int) -> Iterator[Fields]:
    for number, row in enumerate(rows, 1):
        yield row
        if number >= limit:
            return


def _changes(args: argparse.Namespace) -> int:
    with _client(args) as client:
        seen: list[int] = []
        _print(_all_changes(client, args.dataset, args.since, seen), args.format, sys.stdout)
        print(f"version {seen[-1] if seen else '?'}", file=sys.stderr)
        return 0


def _all_changes(client: RefdbClient, dataset: str, since: int, seen: list[int]) -> Iterator[Fields]:
    """Every change page by page, all from one version (appended to ``seen``)."""
    offset, version, more = 0, None, True
    while more:
        page = client.changes(dataset, since, offset=offset, version=version)
        version, more = page.version, page.more
        seen.append(version)
        offset += len(page.upserts) + len(page.deletes)
        yield from ({"_op": "upsert", **r} for r in page.upserts)
        yield from ({"_op": "delete", **k} for k in page.deletes)


def _print(rows: Iterable[Fields], fmt: str, out: TextIO) -> int:
    """Write rows as JSON lines, CSV or an aligned table (pages of 1000 rows aligned on their own)."""
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    if fmt == "csv":
        writer: Any = None
        for row in rows:
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n")
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return 0
    page: list[Fields] = []
    for row in rows:
        page.append(row)
        if len(page) == 1000:
            _table(page, out)
            page = []
    if page:
        _table(page, out)
    return 0


def _table(rows: list[Fields], out: TextIO) -> None:
    names = list(rows[0])
    cells = [[("NULL" if r.get(n) is None else str(r.get(n))) for n in names] for r in rows]
    widths = [max(_width(n), *(_width(c[i]) for c in cells)) for i, n in enumerate(names)]
    for line in [names, *cells]:
        out.write("  ".join(c + " " * (w - _width(c)) for c, w in zip(line, widths)).rstrip() + "\n")


def _width(text: str) -> int:
    """Terminal columns: full-width (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
