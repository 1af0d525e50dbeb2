"""``bmrgw keys``: the master key file and the organisations' data keys (README "Data at rest").

``init PATH`` writes a new master key (never over an existing file);
``status`` lists the organisations' data key generations, their age, the
master key that wraps each and what each still seals; ``rotate --new-master
PATH`` re-wraps every data key under a new master key while gateways run
(they re-read the key file when they meet the new key); ``rotate --org ID``
gives one organisation a new data key generation and re-seals its stored
content under it (:mod:`gateway.jx.reseal`); ``destroy --org ID`` erases one
organisation's data keys (crypto-shredding) and logs it.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.durable import private_dir
from gateway.errors import CommandError, ConfigError
from gateway.jx import open_store
from attachments.restage import Staged, reseal_staged, staged_census
from gateway.jx.reseal import Held, KeyOf, census, rotate_org
from gateway.logs.clock import Clock
from gateway.logs.records import LogRecord
from gateway.logs.tables import append, ensure_schema
from gateway.store import Store, create_tables, database_url
from gateway.terminal import ConfigOption, add_db_option, db_url
from routing.config import Config, load_config

from . import ring as keyring
from .seal import DataKey
from .ring import DATA_KEYS, KeyRing, MasterKey, write_master_key, write_master_keys

__all__ = ["add_keys_command"]



def add_keys_command(commands: Any, config_option: ConfigOption) -> None:
    """Register ``bmrgw keys`` and its actions."""
    p = commands.add_parser(
        "keys", help="the master key and the organisations' data keys (encryption at rest)",
        description="Manage the keys that seal stored content per organisation (gateway.encryption).",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="write a new master key file",
        description="Write a new random 256-bit master key to PATH (mode 0600, its folder created 0700). "
        "An existing file is never overwritten. Back the file up apart from the database: without it "
        "nothing sealed can be read.")
    init.add_argument("path", type=Path, metavar="PATH")
    init.set_defaults(run=_init)
    status = actions.add_parser(
        "status", help="organisations, their data key generations, ages and what is still under an old one",
        description="List every organisation's data key generations: when each was made, the documents "
        "and bytes it seals, and the master key (fingerprint) that wraps it (the configured master key comes "
        "first); then, per organisation, what is still sealed under an older generation.")
    _store_options(status, config_option)
    status.set_defaults(run=_status)
    rotate = actions.add_parser(
        "rotate", help="re-wrap every data key under a new master key, or give one organisation a new data key",
        description="--new-master PATH: put the key of PATH (from 'bmrgw keys init') first in the configured "
        "master key file, keeping the earlier keys after it, then re-wrap every data key under it. Running "
        "gateways re-read the file when they meet the new key, so nothing stops. On several hosts, run with "
        "--stage-only on every other host first (each host's key file learns the new key), then once without. "
        "--org ID: give the organisation a new data key generation and re-seal its stored documents, "
        "mailbox messages and staged file parts (in the folders its 'bmrgw receive --ap ID' recorded) under it, batch by batch while gateways serve; the older key is deleted once "
        "nothing is sealed under it. Run it again after a crash: it continues where it stopped.")
    _store_options(rotate, config_option)
    which = rotate.add_mutually_exclusive_group(required=True)
    which.add_argument("--new-master", type=Path, metavar="PATH", help="the new master key file")
    which.add_argument("--org", metavar="ID", help="the organisation (JX receiver id) to give a new data key")
    rotate.add_argument("--stage-only", action="store_true",
                        help="with --new-master: only add the new key to this host's key file; re-wrap nothing")
    rotate.add_argument("--batch", type=_positive, default=50, metavar="N",
                        help="with --org: documents re-sealed per transaction (default 50)")
    rotate.set_defaults(run=_rotate)
    destroy = actions.add_parser(
        "destroy", help="erase an organisation's data keys: its content becomes unreadable (crypto-shredding)",
        description="Erase every data key of the organisation ID. Everything sealed for it - documents, "
        "messages, staged parts - can never be read again; running gateways refuse it within 30 s. The "
        "erasure is written to the send/receive log. Asks for the ID again unless --yes.")
    _store_options(destroy, config_option)
    destroy.add_argument("--org", required=True, metavar="ID", help="the organisation (JX receiver id, business-AP)")
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    destroy.set_defaults(run=_destroy)


def _store_options(parser: argparse.ArgumentParser, config_option: ConfigOption) -> None:
    config_option(parser)
    add_db_option(parser)


def _init(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.exists():
        raise CommandError(f"{path} exists: a master key is never overwritten (move it away first, "
                           "keeping it while data sealed under it remains)")
    private_dir(path.parent)
    try:
        key = write_master_key(path)
    except FileExistsError:
        raise CommandError(f"{path} exists: a master key is never overwritten") from None
    print(f"wrote master key {key.id} to {path} (mode 0600); set gateway.encryption.master_key: {path}")
    return 0


def _encrypted(args: argparse.Namespace) -> tuple[Config, Path]:
    config = load_config(args.config, db=db_url(args))
    if config.gateway.encryption is None:
        raise ConfigError("gateway.encryption is not configured: nothing is sealed")
    return config, Path(config.gateway.encryption.master_key)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _rotate(args: argparse.Namespace) -> int:
    if args.org is not None:
        return _rotate_org(args)
    config, path = _encrypted(args)
    known, new = MasterKey.load_all(path), MasterKey.load(args.new_master)
    if known[0].id != new.id:
        write_master_keys(path, [new, *(key for key in known if key.id != new.id)])
    print(f"{path}: master key {new.id} first, {len(known)} earlier key(s) after it")
    if args.stage_only:
        return 0
    store = Store(database_url(config))
    try:
        ring = KeyRing(store.engine, [new, *known], path)
        moved = ring.rewrap(new)
        moved += ring.rewrap(new)  # keys a gateway made under the old key while the first pass ran
    finally:
        store.close()
    print(f"re-wrapped {moved} data key(s) under master key {new.id}. Keep the earlier keys in {path} "
          "while database backups wrapped under them may be restored; see 'bmrgw keys status'.")
    return 0


def _rotate_org(args: argparse.Namespace) -> int:
    config, _ = _encrypted(args)
    store = open_store(config, node=f"{config.gateway.name}-keys")
    try:
        create_tables(store.engine, store.tables.metadata)
        ring = store.vault.ring
        assert ring is not None, "gateway.encryption is configured"
        def say(line: str) -> None:
            print(line, flush=True)

        def staged(key: DataKey, key_of: KeyOf) -> tuple[int, int]:
            done = reseal_staged(store.engine, key, key_of)
            say(f"{key.org}: re-sealed {done.resealed} staged part(s), {done.resealed_bytes} bytes"
                + (f"; {len(done.failed)} could not be opened" if done.failed else ""))
            for part, why in done.failed.items():
                say(f"{key.org}: staged part {part}: {why}")
            for place in done.elsewhere:
                say(f"{key.org}: staged parts in {place.path} on host {place.host}: run this command there")
            return done.resealed, done.left

        _, left, others = rotate_org(store, ring, args.org, batch=args.batch, settle=2 * keyring.RECHECK_SECONDS,
                                     say=say, others=staged)
    finally:
        store.close()
    return 0 if left.documents == 0 and others == 0 else 1


def _destroy(args: argparse.Namespace) -> int:
    config, path = _encrypted(args)
    if not args.yes:
        if not sys.stdin.isatty():
            print("bmrgw: keys destroy asks for confirmation: give --yes when not on a terminal", file=sys.stderr)
            return 2
        if input(f"type {args.org} to erase its data keys for ever: ").strip() != args.org:
            print("bmrgw: not confirmed; nothing erased", file=sys.stderr)
            return 1
    store = Store(database_url(config))
    try:
        ring = KeyRing(store.engine, MasterKey.load_all(path), path)
        ring.open()
        if config.gateway.logs.enabled:
            ensure_schema(store.engine)
        with store.engine.begin() as c:
            erased = ring.destroy(c, args.org)
            if config.gateway.logs.enabled:
                append(c, [LogRecord.at(Clock().now(), kind="keys", direction="request", status="ok",
                                        endpoint="keys:destroy", to_ap=args.org,
                                        client=os.environ.get("USER") or None)], node=config.gateway.name)
    finally:
        store.close()
    print(f"erased {erased} data key(s) of {args.org}: its sealed content can no longer be read. Database "
          "backups made before now still hold the wrapped keys: rotate the master key and destroy every copy "
          "of the earlier master key so that those backups cannot yield them either.")
    return 0


def _status(args: argparse.Namespace) -> int:
    config, path = _encrypted(args)
    master = MasterKey.load(path)
    store = open_store(config, node=f"{config.gateway.name}-keys")
    try:
        KeyRing(store.engine, [master]).open()
        create_tables(store.engine, store.tables.metadata)
        with store.engine.connect() as c:
            rows = c.execute(select(DATA_KEYS).order_by(DATA_KEYS.c.org, DATA_KEYS.c.generation)).all()
        held = census(store)
        staged = staged_census(store.engine)
    finally:
        store.close()
    print(f"master key {master.id} ({path})")
    now = datetime.now(UTC)
    newest = {row.org: row.generation for row in rows if row.wrapped is not None}
    for row in rows:
        made = datetime.fromtimestamp(row.created_ms / 1000, UTC)
        state = "destroyed" if row.wrapped is None else ("" if row.master_id == master.id
                                                           else f"wrapped by another master key {row.master_id}")
        sealed = held.get(row.org, {}).get(row.generation, Held())
        staged_here = staged.get(row.org, {}).get(row.generation, Staged())
        print(f"{row.org}\tgeneration {row.generation}\tmade {made:%Y-%m-%d %H:%M} UTC "
              f"({_age(now - made)})\t{sealed.documents} document(s), {sealed.bytes} bytes"
              + (f", {staged_here.parts} staged part(s)" if staged_here.parts else "") + f"\t{state}".rstrip())
    for org in sorted(newest):
        old = [h for generation, h in held.get(org, {}).items()
               if generation is not None and generation < newest[org]]
        documents, size = sum(h.documents for h in old), sum(h.bytes for h in old)
        old_parts = [p for generation, p in staged.get(org, {}).items()
                     if generation is not None and generation < newest[org]]
        parts, part_bytes = sum(p.parts for p in old_parts), sum(p.bytes for p in old_parts)
        advice = f" (bmrgw keys rotate --org {org} re-seals them)" if documents or parts else ""
        print(f"{org}\tunder an older generation: {documents} document(s), {size} bytes{advice}")
        print(f"{org}\tstaged parts under an older generation: {parts} part(s), {part_bytes} bytes{advice}")
    return 0


def _age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{age.days} days"
