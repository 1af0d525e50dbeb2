"""``bmrgw init``: everything a new gateway needs, outside any checkout.

``bmrgw init --dir /etc/bmrgw --data-dir /var/lib/bmrgw`` writes

* ``endpoints.yaml`` — a commented config that starts as it is: loopback
  only, the store in the data folder, the log keyed, content encrypted;
* ``log.key`` — the send/receive log's key (``gateway.log_key``);
* ``master.key`` — the master key of encryption at rest (``--no-encryption``
  leaves it out);
* the data folder (0700).

Nothing that exists is ever overwritten: a second ``init`` over a running
site must not replace its keys (data sealed under them would be lost).  The
config is then checked by loading it exactly as ``bmrgw serve`` will.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any

from gateway.durable import private_dir, private_open
from gateway.errors import CommandError, UsageError

__all__ = ["add_init_command", "config_text"]

CONFIG = "endpoints.yaml"
LOG_KEY = "log.key"
MASTER_KEY = "master.key"

_TEMPLATE = """\
# yaml-language-server: $schema={schema}
# bmrgw configuration, written by `bmrgw init` ({when}).
# Reference: README.md, "Configuration" (every key, its default and its meaning).
# A running gateway applies a valid edit of this file within 2 s (or on SIGHUP) and keeps
# the old table, saying why, if the edit is invalid. Edit the table with `bmrgw endpoints`.

gateway:
  name: {name}                     # this gateway's name: HTTP Via header, logs; unique per gateway
  listen: {{host: 127.0.0.1, port: {port}}}   # loopback only; 0.0.0.0 to accept other hosts (add tls: first)
  db: sqlite:///{data}/bmrgw.db   # or postgresql://bmrgw@dbhost/bmrgw for several nodes
  data_dir: {data}
  log_key: {log_key}              # keys the send/receive log; copy it where the DB's owner cannot read it
{encryption}\
  # log_checkpoints: {data}/log-checkpoints.jsonl   # ship this file off the DB host (README)
  # ntp: {{servers: [ntp1.your-dc.example, ntp2.your-dc.example, ntp3.your-dc.example]}}  # your DC's servers
  # tls: {{cert: /etc/bmrgw/server.pem, key: /etc/bmrgw/server.key, client_ca: /etc/bmrgw/clients-ca.pem}}
  # max_message_bytes: 10485760    # largest envelope relayed (10 MiB)
  # min_free_bytes: 1073741824     # below this free space on the data disk nothing new is stored
  # limits: {{max_connections: 2000, client_rate: 50}}   # per process; client_rate per client, req/s
  # jx: {{lease_seconds: 300, max_deliveries: 10, max_pending_documents: 10000}}

# Who may call (README "Who may call"). Without a clients section every caller is anonymous:
# fine on loopback, never on a network. `bmrgw endpoints` does not edit this section.
# clients:
#   kaigo-app:
#     basic: {{user: kaigo, password_hash: "$scrypt$..."}}   # printed by `bmrgw hash-password`
#     allow: [juki]

endpoints: {{}}
# The business APs this gateway relays to, by name (or `bmrgw endpoints add NAME --url URL`):
#   juki: {{url: http://127.0.0.1:9001/juki, timeout: 30}}
#   cityhall-a: {{mailbox: "1310001"}}       # a city hall that polls /jx for its documents

# peers:                                  # other DCs' gateways
#   dc-west: {{url: https://dc-west.example:8443/soap}}
"""

_ENCRYPTION = "  encryption: {{master_key: {key}}}   # seals stored content per organisation; back it up\n"
_NO_ENCRYPTION = "  # encryption: {master_key: /etc/bmrgw/master.key}   # bmrgw keys init PATH\n"


def config_text(*, name: str, port: int, data: Path, log_key: Path, master_key: Path | None,
                when: str = "") -> str:
    """The commented ``endpoints.yaml`` that ``bmrgw init`` writes."""
    encryption = _ENCRYPTION.format(key=master_key) if master_key is not None else _NO_ENCRYPTION
    return _TEMPLATE.format(name=name, port=port, data=data, log_key=log_key, encryption=encryption,
                            when=when or "see the file's date", schema=_schema_file().as_uri())


def _schema_file() -> Path:
    """The JSON Schema shipped with this installation (package data of ``schemas``), for editors."""
    import schemas

    return Path(schemas.__file__).parent / "endpoints.schema.json"


def add_init_command(commands: Any) -> None:
    p = commands.add_parser(
        "init", help="write a commented config, the log and master keys and a data folder for a new gateway",
        description="Prepare a new gateway outside any checkout: DIR/endpoints.yaml (commented, loopback only), "
        "DIR/log.key, DIR/master.key and the data folder, all private (0600/0700). Existing files are never "
        "overwritten. Then: bmrgw serve --config DIR/endpoints.yaml (or the systemd unit in deploy/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("/etc/bmrgw"), help="where the config and keys go")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="the store and local files (default: /var/lib/bmrgw when --dir is /etc/bmrgw, "
                   "else DIR/var)")
    p.add_argument("--name", default=None, help="this gateway's name (default: bmrgw-HOSTNAME)")
    p.add_argument("--port", type=_port, default=8080, help="the port it listens on (loopback)")
    p.add_argument("--no-encryption", action="store_true",
                   help="do not write a master key; stored content stays unencrypted")
    p.set_defaults(run=_run)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from gateway.crypto.ring import write_master_key
    from gateway.logs.key import write_key
    from routing.config import load_config

    folder: Path = args.dir.absolute()
    data: Path = (args.data_dir or (Path("/var/lib/bmrgw") if folder == Path("/etc/bmrgw") else folder / "var"))
    data = data.absolute()
    config, log_key = folder / CONFIG, folder / LOG_KEY
    master_key = None if args.no_encryption else folder / MASTER_KEY
    existing = [path for path in (config, log_key, master_key) if path is not None and path.exists()]
    if existing:
        raise CommandError(f"{', '.join(map(str, existing))} already exist{'s' if len(existing) == 1 else ''}: "
                           "init never overwrites a config or a key (move them away to start afresh)")
    name = args.name or f"bmrgw-{_host_name()}"
    try:
        private_dir(folder)
        private_dir(data)
        write_key(log_key)
        if master_key is not None:
            write_master_key(master_key)
        text = config_text(name=name, port=args.port, data=data, log_key=log_key, master_key=master_key,
                           when=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
        with os.fdopen(private_open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write under {exc.filename or folder}: {exc.strerror or exc}") from exc
    load_config(config)  # the file must load as `serve` will load it; a failure here is a bug, said plainly
    print(f"wrote {config}, {log_key}{f', {master_key}' if master_key else ''} and the data folder {data}")
    print(f"start it:  bmrgw serve --config {config}")
    print("back up the key files off this host: without them the log cannot be verified"
          + (" and stored content cannot be read" if master_key else ""))
    return 0


def _host_name() -> str:
    """The host's short name, cut to the characters gateway names allow."""
    short = socket.gethostname().split(".")[0].lower()
    kept = "".join(c for c in short if c.isalnum() or c in "-_")[:40]
    return kept or "host"
