"""``bmrgw keys``: the master key file and the organisations' data keys (README "Data at rest").

``init PATH`` writes a new master key (never over an existing file);
``status`` lists the organisations with a data key, its generation, age and
the master key that wraps it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.durable import private_dir
from gateway.errors import CommandError, ConfigError
from gateway.store import Store, database_url
from routing.config import load_config

from .ring import DATA_KEYS, KeyRing, MasterKey, write_master_key

__all__ = ["add_keys_command"]

ConfigOption = Callable[[argparse.ArgumentParser], None]


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
        "status", help="organisations, their data key generation and age",
        description="List every organisation with a data key: generation, when it was made, and the "
        "master key (fingerprint) that wraps it; the fingerprint of the configured master key comes first.")
    config_option(status)
    status.add_argument("--db", metavar="URL", help="store URL (default: $BMRGW_DB_URL, else gateway.db)")
    status.set_defaults(run=_status)


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


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.config, db=args.db or os.environ.get("BMRGW_DB_URL") or None)
    if config.gateway.encryption is None:
        raise ConfigError("gateway.encryption is not configured: nothing is sealed")
    master = MasterKey.load(Path(config.gateway.encryption.master_key))
    store = Store(database_url(config))
    try:
        KeyRing(store.engine, [master]).open()
        with store.engine.connect() as c:
            rows = c.execute(select(DATA_KEYS).order_by(DATA_KEYS.c.org, DATA_KEYS.c.generation)).all()
    finally:
        store.close()
    print(f"master key {master.id} ({config.gateway.encryption.master_key})")
    now = datetime.now(UTC)
    for row in rows:
        made = datetime.fromtimestamp(row.created_ms / 1000, UTC)
        state = "destroyed" if row.wrapped is None else ("" if row.master_id == master.id
                                                           else f"wrapped by another master key {row.master_id}")
        print(f"{row.org}\tgeneration {row.generation}\tmade {made:%Y-%m-%d %H:%M} UTC "
              f"({(now - made).days} days)\t{state}".rstrip(), file=sys.stdout)
    return 0
