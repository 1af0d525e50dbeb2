"""``bmrgw jx``: the operator's view of the JX mailboxes (list, show, requeue, purge, put).

The commands work on the store named by the config (``gateway.db`` and
``gateway.data_dir``) directly, so they work whether or not the gateway runs;
two gateways on one PostgreSQL see the same documents.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import inspect

from gateway.logs.clock import Clock
from gateway.logs.key import log_key
from gateway.logs.commands import parse_time
from gateway.logs.records import LogRecord
from gateway.logs.tables import append, ensure_schema
from gateway.logs.view import local_offset
from gateway.terminal import ConfigOption, add_db_option, db_url, table
from routing.config import JX_ID_PATTERN, Config, load_config

from ..errors import ConfigError, DocumentStoreError, GatewayError, UnknownDocument, UsageError
from ..ids import new_message_id
from ..store import existing_url
from . import open_store
from .files import write_atomically
from .store import Document, DocumentStore, NewDocument, now_ms
from .sweep import OPERATOR_STATES, Search, force_confirm, operator_state, purge, search, shown
from .wire import Spool, SpoolWriter

__all__ = ["add_jx_command"]



def add_jx_command(commands: Any, config_option: ConfigOption) -> None:
    """Register ``bmrgw jx`` and its actions."""
    p = commands.add_parser(
        "jx", help="inspect and manage the JX mailboxes (documents waiting to be polled)",
        description="Inspect and manage the documents of the JX polling relay: what waits for which "
        "receiver, dead letters, re-delivery, purging, and enqueuing a file by hand.",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    _add_list(actions, config_option)
    _add_show(actions, config_option)
    _add_requeue(actions, config_option)
    _add_purge(actions, config_option)
    _add_confirm(actions, config_option)
    _add_put(actions, config_option)


def _common(parser: argparse.ArgumentParser, config_option: ConfigOption) -> None:
    config_option(parser)
    add_db_option(parser)


def _add_list(actions: Any, config_option: ConfigOption) -> None:
    a = actions.add_parser(
        "list", help="search documents by receiver, sender, state and date, oldest first",
        description="List JX documents, oldest first. By default those waiting: pending (未取得, never "
        "handed out) and delivered (取得済み, handed out, not confirmed yet). T is an ISO 8601 time "
        "(local time unless it has an offset) or a time ago like 30m, 2h, 1d.",
    )
    _common(a, config_option)
    a.add_argument("--receiver", metavar="ID", help="only documents for this receiver id")
    a.add_argument("--sender", metavar="ID", help="only documents from this sender id")
    a.add_argument("--state", action="append", type=_state, metavar="STATE",
                   help="pending (未取得), delivered (取得済み), confirmed, dead, or all; repeatable "
                   "(also ready: pending, leased: handed out under a running lease)")
    a.add_argument("--dead", action="store_true", help="dead letters only (same as --state dead)")
    a.add_argument("--since", type=parse_time, metavar="T", help="documents that arrived at or after T")
    a.add_argument("--until", type=parse_time, metavar="T", help="documents that arrived before T")
    a.add_argument("--limit", type=int, default=1000, metavar="N", help="at most N documents (default: 1000)")
    a.add_argument("--format", choices=["table", "json"], default="table")
    a.set_defaults(run=_list)


def _state(word: str) -> str:
    if word in ("all", "leased"):
        return word
    state = operator_state(word)
    if state is None:
        raise argparse.ArgumentTypeError(f"{word!r} is not a state: pending (未取得), delivered (取得済み), "
                                         "confirmed, dead or all")
    return state


def _add_show(actions: Any, config_option: ConfigOption) -> None:
    a = actions.add_parser("show", help="one document's metadata (and its bytes with --save)",
                           description="Show one document by its messageId.")
    _common(a, config_option)
    a.add_argument("message_id", metavar="ID", help="the document's messageId")
    a.add_argument("--save", type=Path, metavar="FILE", help="also write the document's bytes to FILE")
    a.set_defaults(run=_show)


def _add_requeue(actions: Any, config_option: ConfigOption) -> None:
    a = actions.add_parser(
        "requeue", help="deliver a document again (dead letter, confirmed, or leased)",
        description="Make a document deliverable at once: ready, lease dropped, delivery count reset.",
    )
    _common(a, config_option)
    a.add_argument("message_id", metavar="ID", help="the document's messageId")
    a.set_defaults(run=_requeue)


def _add_purge(actions: Any, config_option: ConfigOption) -> None:
    a = actions.add_parser(
        "purge", help="delete old documents (confirmed ones unless --state says otherwise)",
        description="Delete documents (metadata and bytes) in batches. --older-than T: confirmed documents "
        "confirmed before T, others that arrived before T; T is a time ago like 30d, 12h or an ISO 8601 "
        "time. Asks before deleting unless --yes; --dry-run lists what would go and deletes nothing.",
    )
    _common(a, config_option)
    when = a.add_mutually_exclusive_group(required=True)
    when.add_argument("--older-than", type=parse_time, metavar="T")
    when.add_argument("--confirmed-before", type=parse_time, metavar="T",
                      help="the older spelling of --older-than T --state confirmed")
    a.add_argument("--state", action="append", type=_state, metavar="STATE",
                   help="confirmed (default), dead, pending (未取得), delivered (取得済み) or all; repeatable")
    a.add_argument("--receiver", metavar="ID", help="only documents for this receiver id")
    a.add_argument("--sender", metavar="ID", help="only documents from this sender id")
    a.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    a.add_argument("--yes", action="store_true", help="do not ask before deleting")
    a.set_defaults(run=_purge)


def _add_confirm(actions: Any, config_option: ConfigOption) -> None:
    a = actions.add_parser(
        "confirm", help="mark a document delivered without its receiver's confirm (logged)",
        description="Force a document into the confirmed state, as if its receiver had confirmed it "
        "(a city hall that took it by other means). The action is written to the send/receive log "
        "(kind jx, endpoint jx:confirm-forced) with the operator's user name.",
    )
    _common(a, config_option)
    a.add_argument("message_id", metavar="ID", help="the document's messageId")
    a.set_defaults(run=_confirm)


def _add_put(actions: Any, config_option: ConfigOption) -> None:
    a = actions.add_parser(
        "put", help="enqueue a file for a receiver",
        description="Store FILE as a JX document for receiver ID, exactly as a PutDocument would; "
        "it waits until that receiver polls.",
    )
    _common(a, config_option)
    a.add_argument("file", type=Path, metavar="FILE")
    a.add_argument("--to", required=True, metavar="ID", help="receiver id")
    a.add_argument("--from", dest="sender", metavar="ID", help="sender id (default: gateway.name)")
    a.add_argument("--message-id", metavar="ID", help="messageId (default: a new UUID)")
    a.add_argument("--format-type", default="FILE", metavar="T", help="formatType (default: FILE)")
    a.add_argument("--document-type", metavar="T", help="documentType (default: the file's name)")
    a.add_argument("--compress-type", default="", metavar="T", help="compressType (default: empty)")
    a.set_defaults(run=_put)


Command = Callable[[argparse.Namespace], int]


def _with_store(command: Callable[[argparse.Namespace, Config, DocumentStore], int]) -> Command:
    """``command`` run with the config and the open document store, whose connections are closed
    afterwards (the commands also run inside other programs and tests)."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config, db=db_url(args))
        store = open_store(config, journal=None)
        try:
            store.open()
            return command(args, config, store)
        finally:
            store.close()

    return run


def _reading_store(command: Callable[[argparse.Namespace, Config, DocumentStore], int]) -> Command:
    """``command`` run on the existing document store: a read-only command creates no store, table
    or folder (a mistyped ``--db`` is an error, not an empty mailbox)."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        config = load_config(args.config, db=db_url(args))
        store = open_store(config, journal=None, url=existing_url(config, read_only=False))
        try:
            with store.engine.connect() as connection:
                if not inspect(connection).has_table(store.tables.document.name):
                    raise DocumentStoreError(f"the store {store.engine.url.render_as_string()} holds no JX "
                                             "documents (no JX tables): is gateway.db or --db right?")
            return command(args, config, store)
        finally:
            store.close()

    return run


# -- list / show -----------------------------------------------------------------

@_reading_store
def _list(args: argparse.Namespace, _config: Config, store: DocumentStore) -> int:
    states = _states(["dead"] if args.dead else args.state, ["pending", "delivered"])
    query = Search(receiver_id=args.receiver, sender_id=args.sender, states=states,
                   since_ms=_ms(args.since), until_ms=_ms(args.until))
    documents = search(store, query, limit=args.limit)
    at = now_ms()
    if args.state and "leased" in args.state and set(args.state) <= {"leased"}:
        documents = [d for d in documents if d.shown_state(at) == "leased"]
    if args.format == "json":
        for document in documents:
            print(json.dumps({**document.to_json(), "status": shown(document)}, ensure_ascii=False))
        return 0
    _print_table(documents, at)
    return 0


def _states(given: list[str] | None, default: list[str]) -> tuple[str, ...]:
    words = given or default
    if "all" in words:
        return tuple(OPERATOR_STATES)
    return tuple(dict.fromkeys("delivered" if w == "leased" else w for w in words))


def _ms(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def _print_table(documents: Sequence[Document], at: int) -> None:
    if not documents:
        print("no documents")
        return
    # Local time, as `bmrgw logs` shows it and as --since/--until read a time without an offset.
    header = ["MESSAGE ID", "SENDER", "RECEIVER", "FORMAT", "BYTES", "STATE", "HANDED OUT",
              f"CREATED ({local_offset()})"]
    rows = [[d.message_id, d.sender_id, d.receiver_id, d.format_type, str(d.size), _label(d, at),
             str(d.deliveries), datetime.fromtimestamp(d.created_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")]
            for d in documents]
    print("\n".join(table(header, rows)))


@_reading_store
def _show(args: argparse.Namespace, _config: Config, store: DocumentStore) -> int:
    document = _find(store, args.message_id)
    facts = document.to_json()
    width = max(map(len, facts)) + 1
    for key, value in facts.items():
        print(f"{key + ':':<{width}} {'' if value is None else value}")
    if args.save is not None:
        _save(store, document, args.save)
        print(f"saved {document.size} bytes to {args.save}")
    return 0


def _save(store: DocumentStore, document: Document, path: Path) -> None:
    try:
        write_atomically(path, store.chunks(document))
    except OSError as exc:
        raise GatewayError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _find(store: DocumentStore, message_id: str) -> Document:
    document = store.find(message_id)
    if document is None:
        raise UnknownDocument(f"no document with messageId {message_id!r}", detail=message_id)
    return document


# -- requeue / purge ----------------------------------------------------------------

@_with_store
def _requeue(args: argparse.Namespace, _config: Config, store: DocumentStore) -> int:
    document = store.requeue(args.message_id)
    print(f"requeued {document.message_id} for {document.receiver_id}: it is handed out at the next poll")
    return 0


def _label(document: Document, at: int) -> str:
    state = shown(document)
    return f"{state} (leased)" if document.shown_state(at) == "leased" else state


@_reading_store
def _purge(args: argparse.Namespace, config: Config, store: DocumentStore) -> int:
    when: datetime = args.older_than or args.confirmed_before
    states = ("confirmed",) if args.confirmed_before else _states(args.state, ["confirmed"])
    query = Search(receiver_id=args.receiver, sender_id=args.sender, states=states, older_than_ms=_ms(when))
    what = f"{'/'.join(states)} document(s) older than {when.isoformat(timespec='seconds')}"
    if args.dry_run or not args.yes:
        found = search(store, query)
        _print_table(found, now_ms())
        if args.dry_run:
            print(f"dry run: {len(found)} {what} would be purged; nothing was deleted")
            return 0
        if not found:
            print(f"purged 0 documents ({what})")
            return 0
        if not _agreed(f"purge these {len(found)} {what}?"):
            print("nothing purged")
            return 0
    purged = 0
    for batch in purge(store, query):
        purged += len(batch)
    print(f"purged {purged} document{'' if purged == 1 else 's'} ({what})")
    return 0


def _agreed(question: str) -> bool:
    """The operator's answer; no answer at all (stdin closed, as under cron) is a usage error, not a no."""
    print(f"{question} [y/N] ", end="", flush=True)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if not answer:
        print()
        raise UsageError("no answer on stdin: give --yes to purge without asking")
    return answer.strip().lower() in ("y", "yes")


@_reading_store
def _confirm(args: argparse.Namespace, config: Config, store: DocumentStore) -> int:
    store.log = _cli_log(store, config)
    found = _find(store, args.message_id)
    record = LogRecord.at(Clock().now(), kind="jx", direction="request", status="ok", message_id=found.message_id,
                          from_ap=found.sender_id, to_ap=found.receiver_id, endpoint="jx:confirm-forced",
                          bytes_in=0, sha256=found.sha256, client=_operator())
    document, first = force_confirm(store, args.message_id, record)
    if not first:
        print(f"{document.message_id} was confirmed already; nothing changed")
        return 0
    print(f"confirmed {document.message_id} for {document.receiver_id} (was {shown(document)}); logged as "
          "jx:confirm-forced")
    return 0


def _operator() -> str | None:
    return os.environ.get("USER") or os.environ.get("USERNAME") or None


# -- put -----------------------------------------------------------------------------

@_with_store
def _put(args: argparse.Namespace, config: Config, store: DocumentStore) -> int:
    if not JX_ID_PATTERN.fullmatch(args.to):
        raise ConfigError(f"--to {args.to!r} is not a JX receiver id (printable ASCII, no blanks)")
    spool = _spool(store, args.file, config.gateway.jx.max_document_bytes)
    new = NewDocument(message_id=args.message_id or new_message_id(), sender_id=args.sender or config.gateway.name,
                      receiver_id=args.to, format_type=args.format_type,
                      document_type=args.document_type if args.document_type is not None else args.file.name,
                      compress_type=args.compress_type, source="cli")
    store.log = _cli_log(store, config)
    record = LogRecord.at(Clock().now(), kind="jx", direction="request", status="ok",
                          message_id=new.message_id, from_ap=new.sender_id, to_ap=new.receiver_id,
                          endpoint="jx:cli", bytes_in=spool.size, sha256=spool.sha256,
                          client=_operator())
    stored = store.put(new, spool, record)
    print(f"{'stored' if stored else 'already stored'}: {new.message_id} ({spool.size} bytes) for {new.receiver_id}")
    if config.clients and not any(c.may_receive_jx(args.to) for c in config.clients.values()):
        # Open mode (no clients) lets anyone poll; otherwise the document would wait for nobody.
        print(f"bmrgw: warning: no client in {config.source} may poll for {args.to!r} (clients.NAME.jx.receive); "
              "the document waits until one may", file=sys.stderr)
    return 0


def _spool(store: DocumentStore, path: Path, limit: int) -> Spool:
    writer = SpoolWriter(store.spool_dir, limit=limit, durable=False,
                         sealed=store.vault.sealing)
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                writer.write(chunk)
        return writer.finish()
    except OSError as exc:
        writer.abort()
        raise GatewayError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except BaseException:
        writer.abort()
        raise


def _cli_log(store: DocumentStore, config: Config) -> Callable[[Any, LogRecord], object]:
    """The operator's put is logged on the gateway's own chain, in the put's transaction."""
    if not config.gateway.logs.enabled:
        return lambda connection, record: None
    ensure_schema(store.engine)
    key = log_key(config)  # the chain is keyed: a plain link from here would read as a forgery
    return lambda connection, record: append(connection, [record], node=config.gateway.name, key=key)

