"""``bmrgw logs`` and ``bmrgw time``: inspecting the send/receive logs and NTP (SPEC.md "CLI", (G)).

``bmrgw logs`` shows records as an aligned table (colours only on a
terminal), as JSON lines with exactly SPEC.md's field names, or as CSV;
``--follow`` keeps printing new records.  Names in records were chosen by
clients, so control and bidi characters in them are printed as visible
escapes (``\\x1b``, ``\\u202e``): in JSON as ``\\u`` escapes that decode to
the stored value, in the table and CSV as Python-style escapes.  ``bmrgw logs verify`` checks every
hash chain and exits 1 on any tampering; ``bmrgw logs archive`` moves old
records to compressed archive files.  ``bmrgw time`` asks the configured NTP
servers once and shows what the gateway's clock would make of them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from gateway.store import Store, existing_url
from gateway.terminal import ConfigOption, add_db_option, db_url, table
from routing.config import Config, load_config

from .archives import read_archives
from .chain import Problem, Report, archive, verify
from .clock import Sample, combined_offset, parse_server, query_all
from .key import CHECKPOINTS, Checkpoint, checkpoints_path, log_key, read_checkpoints, write_key
from .records import LogRecord
from .tables import LogFilter, head_seqs, read, read_new
from .view import FORMATS, Output, table_width, visible

__all__ = ["add_logs_command", "add_time_command", "parse_time", "follow", "archive_dir", "verify_log"]


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
ARCHIVE_SUBDIR = "log-archive"


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``2h``/``30m``/``1d``/``45s``/``2w`` ago, or an ISO 8601 time: in this machine's local time zone
    unless it has an offset (as the table and the console show times), returned in UTC."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        amount = timedelta(**{_UNITS[relative[2]]: float(relative[1])})
        return (now or datetime.now(UTC)) - amount
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time nor a relative time like 30m, 2h, 1d") from None
    return (parsed if parsed.tzinfo else parsed.astimezone()).astimezone(UTC)


# -- registration --------------------------------------------------------------

def add_logs_command(commands: Any, config_option: ConfigOption) -> None:
    """Register ``bmrgw logs`` (show), ``bmrgw logs verify`` and ``bmrgw logs archive``."""
    p = commands.add_parser(
        "logs", help="show, verify and archive the send/receive logs",
        description="Show send/receive log records, oldest first. Times are NTP-corrected, shown in local "
        "time with the UTC offset in the table (a * marks a time not NTP-synchronised) and in UTC in JSON "
        "and CSV; T is an ISO 8601 time (local time unless it has an offset, e.g. 2026-04-01T09:00 or "
        "2026-04-01T00:00Z) or a time ago like 30m, 2h, 1d.",
    )
    _store_options(p, config_option)
    p.add_argument("--since", type=parse_time, metavar="T", help="records at or after T")
    p.add_argument("--until", type=parse_time, metavar="T", help="records before T")
    p.add_argument("--ap", metavar="NAME", help="records from or to this business AP")
    p.add_argument("--message-id", metavar="ID", help="records of one message (on every node that logged it)")
    p.add_argument("--status", choices=["ok", "fault", "error"])
    p.add_argument("--kind", metavar="K", help="relay, jx, refdb, auth (refused logins), limit (rate limits), "
                   "keys, console (operator actions)")
    p.add_argument("--node", metavar="NAME", help="records written by this gateway node")
    p.add_argument("--limit", type=_positive, metavar="N", help="only the newest N matching records")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table for people (default), JSON lines or CSV with SPEC.md's field names")
    zone = p.add_mutually_exclusive_group()
    zone.add_argument("--local-time", dest="local_time", action="store_true", default=None,
                      help="times in local time with the UTC offset (the table's default)")
    zone.add_argument("--utc", dest="local_time", action="store_false",
                      help="times in UTC (the default of JSON and CSV)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records (Ctrl-C ends)")
    p.add_argument("--archive-dir", type=Path, metavar="DIR",
                   help=f"where archives are (default: DATA_DIR/{ARCHIVE_SUBDIR}); records archived "
                   "there are shown when the time range reaches them")
    p.add_argument("--no-archives", action="store_true", help="only records still in the database")
    p.set_defaults(run=_show)
    actions = p.add_subparsers(title="actions", metavar="ACTION")
    _add_verify(actions, config_option)
    _add_archive(actions, config_option)
    _add_keygen(actions)


def _add_verify(actions: Any, config_option: ConfigOption) -> None:
    v = actions.add_parser(
        "verify", help="check the hash chains; exit 1 on any tampering",
        description="Walk every node's hash chain through the archive files and the database and "
        "report altered, deleted or inserted records. Exit 0 when clean, 1 on any problem.",
    )
    _store_options(v, config_option, sub=True)
    v.add_argument("--archive-dir", type=Path, metavar="DIR", default=argparse.SUPPRESS,
                   help=f"where archives are (default: DATA_DIR/{ARCHIVE_SUBDIR})")
    v.add_argument("--checkpoints", type=Path, metavar="FILE",
                   help="the checkpoint file, e.g. the copy shipped off the database host "
                   f"(default: gateway.log_checkpoints, else DATA_DIR/{CHECKPOINTS})")
    v.set_defaults(run=_verify)


def _add_keygen(actions: Any) -> None:
    k = actions.add_parser(
        "keygen", help="write a new log key (gateway.log_key)",
        description="Write 32 random bytes, base64, to PATH (mode 0600) for gateway.log_key. "
        "Refuses to overwrite an existing file: a lost key makes the chains it keyed unverifiable.",
    )
    k.add_argument("path", type=Path, metavar="PATH")
    k.set_defaults(run=_keygen)


def _add_archive(actions: Any, config_option: ConfigOption) -> None:
    a = actions.add_parser(
        "archive", help="move old records to compressed archive files (retention)",
        description="Move records older than --before (or --days) to a gzip JSON-lines file that "
        "carries the chain anchors, so `bmrgw logs verify` still checks them.",
    )
    _store_options(a, config_option, sub=True)
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--before", type=parse_time, metavar="T", help="archive records older than T")
    when.add_argument("--days", type=_positive, metavar="N", help="keep the last N days in the database")
    a.add_argument("--archive-dir", type=Path, metavar="DIR", default=argparse.SUPPRESS,
                   help=f"where archives go (default: DATA_DIR/{ARCHIVE_SUBDIR})")
    a.set_defaults(run=_archive)


def add_time_command(commands: Any, config_option: ConfigOption) -> None:
    """Register ``bmrgw time``."""
    p = commands.add_parser(
        "time", help="query the NTP servers once and show offset, delay and stratum",
        description="Ask each server of gateway.ntp.servers once and show what it answered; "
        "exit 1 when no server gives a usable answer.",
    )
    config_option(p)
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS", help="per server (default: 2)")
    p.set_defaults(run=_time)


def _store_options(parser: argparse.ArgumentParser, config_option: ConfigOption, *, sub: bool = False) -> None:
    config_option(parser)
    add_db_option(parser)
    if sub:
        # argparse copies a sub-command's defaults over values given before its name
        # (`bmrgw logs --config X verify`); suppressed defaults keep those values.
        for action in parser._actions:
            if action.dest in ("config", "db"):
                action.default = argparse.SUPPRESS


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _open(args: argparse.Namespace, *, read_only: bool = True) -> tuple[Config, Store]:
    """The config and its existing store (never created: :func:`gateway.store.existing_url`)."""
    config = load_config(args.config, db=db_url(args))
    return config, Store(existing_url(config, read_only=read_only))


def archive_dir(config: Config) -> Path:
    """Where archived log records go unless told otherwise: ``<data_dir>/log-archive``."""
    return config.resolve_path(config.gateway.data_dir) / ARCHIVE_SUBDIR


def _archive_dir(args: argparse.Namespace, config: Config) -> Path:
    given: Path | None = getattr(args, "archive_dir", None)
    return given if given is not None else archive_dir(config)


# -- bmrgw logs ----------------------------------------------------------------

def _filters(args: argparse.Namespace) -> LogFilter:
    return LogFilter(since=args.since, until=args.until, ap=args.ap, message_id=args.message_id,
                     status=args.status, kind=args.kind, node=args.node)


def _show(args: argparse.Namespace) -> int:
    if args.follow and args.until is not None:
        print("bmrgw logs: --until and --follow exclude each other", file=sys.stderr)
        return 2
    config, store = _open(args)
    try:
        filters = _filters(args)
        positions = head_seqs(store.engine) if args.follow else {}
        local = args.local_time if args.local_time is not None else args.format == "table"
        out = Output.create(args.format, sys.stdout, local=local, width=table_width(sys.stdout))
        archives = None if args.no_archives else _archive_dir(args, config)
        if out.write(_records(store.engine, filters, archives, args.limit)) == 0 and not args.follow:
            print("no matching log records", file=sys.stderr)
        if args.follow:
            for node, seq in out.last_seq.items():  # printed records may be newer than the heads read
                positions[node] = max(positions.get(node, 0), seq)
            for record in follow(store.engine, filters, positions):
                out.write([record])
    finally:
        store.close()
    return 0


def _records(engine: Engine, filters: LogFilter, archives: Path | None, limit: int | None) -> Iterator[LogRecord]:
    """Archived records (when the time range reaches them), then the database's: each archive
    holds a prefix of every chain, older than anything left in the database."""
    if archives is None:
        yield from read(engine, filters, limit=limit)
        return
    if limit is None:
        yield from read_archives(archives, filters)
        yield from read(engine, filters)
        return
    newest = list(read(engine, filters, limit=limit))
    if len(newest) < limit:
        yield from collections.deque(read_archives(archives, filters), maxlen=limit - len(newest))
    yield from newest


def follow(engine: Engine, filters: LogFilter, positions: Mapping[str, int], *,
           poll: float = 0.5) -> Iterator[LogRecord]:
    """New matching records as they are committed, forever (polling every ``poll`` s).

    ``positions`` maps each node to the last seq already shown.
    """
    where = dict(positions)
    while True:
        found, where = read_new(engine, where, filters)
        yield from found
        if not found:
            time.sleep(poll)


# -- bmrgw logs verify / archive -----------------------------------------------

def verify_log(config: Config, engine: Engine, archives: Path, checkpoints: Path | None = None) -> Report:
    """Verify the send/receive log of ``engine`` as ``bmrgw logs verify`` does (the console runs it too):
    the chains through ``archives``, keyed with gateway.log_key, against the checkpoint file."""
    key = log_key(config)
    marks, bad = _checkpoints(key, checkpoints or checkpoints_path(config))
    report = verify(engine, archives, key=key, checkpoints=marks)
    report.problems.extend(Problem(node="-", kind="checkpoint", first=None, last=None, detail=b) for b in bad)
    return report


def _verify(args: argparse.Namespace) -> int:
    config, store = _open(args)
    key = log_key(config)
    try:
        report = verify_log(config, store.engine, _archive_dir(args, config), args.checkpoints)
    finally:
        store.close()
    if key is None:
        print("note: no gateway.log_key: links are checked as plain SHA-256 and checkpoints are not read; "
              "someone who can write the database can rewrite a plain chain unnoticed")
    _print_report(report, store.display_url)
    return 0 if report.ok else 1


def _checkpoints(key: bytes | None, path: Path) -> tuple[dict[str, list[Checkpoint]], list[str]]:
    """The checkpoints (with the key) and the lines or file that fail; a missing file fails:
    the gateway creates it when it starts with a key."""
    if key is None:
        return {}, []
    if not path.is_file():
        return {}, [f"{path} is missing: the gateway writes it whenever it runs with gateway.log_key"]
    return read_checkpoints(path, key)


def _keygen(args: argparse.Namespace) -> int:
    path: Path = args.path
    try:
        write_key(path)
    except FileExistsError:
        print(f"bmrgw logs keygen: {path} exists; not overwritten (a lost key makes its chains unverifiable)",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"bmrgw logs keygen: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote a new log key to {path} (mode 0600); set gateway.log_key: {path} and keep a copy "
          "where the database's owner cannot read it")
    return 0


def _print_report(report: Report, where: str) -> None:
    if report.empty:
        print(f"FAILED: {where} holds no send/receive log (no log tables or not one chain): "
              "is gateway.db or --db right?")
        return
    for summary in report.chains.values():
        total = summary.archived + summary.stored
        print(f"chain {visible(summary.node)}: {total} records up to seq {summary.last_seq} "
              f"({summary.archived} archived, {summary.stored} in the database), "
              f"head {summary.last_hash[:16]}…")
    for problem in report.problems:
        print(f"TAMPERED {visible(str(problem))}")
    if report.ok:
        print(f"OK: {len(report.chains)} chain(s) verified, no tampering found")
    else:
        chains = len({p.node for p in report.problems})
        print(f"FAILED: {len(report.problems)} problem(s) in {chains} of {len(report.chains)} chain(s)")


def _archive(args: argparse.Namespace) -> int:
    before = args.before if args.before is not None else datetime.now(UTC) - timedelta(days=args.days)
    config, store = _open(args, read_only=False)
    try:
        result = archive(store.engine, _archive_dir(args, config), before)
    finally:
        store.close()
    if result.path is None:
        print(f"nothing older than {before:%Y-%m-%d %H:%M:%S} UTC to archive")
        return 0
    moved = sum(a.count for a in result.chains.values())
    print(f"archived {moved} records of {len(result.chains)} chain(s) to {result.path}")
    return 0


# -- bmrgw time ----------------------------------------------------------------

def _time(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    labels = config.gateway.ntp.servers
    if not labels:
        print("no NTP servers configured (gateway.ntp.servers): log times are the system clock, "
              "flagged ntp_synced: false")
        return 1
    servers = [parse_server(s) for s in labels]
    samples = asyncio.run(query_all(servers, timeout=args.timeout))
    _print_samples(samples)
    return 0 if combined_offset(samples) is not None else 1


def _print_samples(samples: list[Sample]) -> None:
    rows = [["SERVER", "OFFSET", "DELAY", "STRATUM", "STATUS"]]
    for s in samples:
        rows.append([s.server, "-" if s.offset is None else f"{s.offset:+.6f} s",
                     "-" if s.delay is None else f"{s.delay * 1000:.2f} ms",
                     "-" if s.stratum is None else str(s.stratum), "ok" if s.ok else (s.error or "refused")])
    print("\n".join(table(rows[0], rows[1:])))
    offset = combined_offset(samples)
    good = sum(s.ok for s in samples)
    if offset is None:
        print("no usable answer: log times would be the system clock, flagged ntp_synced: false")
        return
    corrected = datetime.now(UTC) + timedelta(seconds=offset)
    print(f"offset {offset:+.6f} s (median of {good} usable of {len(samples)} servers); "
          f"NTP time {corrected:%Y-%m-%dT%H:%M:%S.%f}Z")
