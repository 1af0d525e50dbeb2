"""The log key and the checkpoint file (SPEC.md Version 2, "A send/receive log that holds against
the database's owner").

A plain hash chain proves nothing to someone who can write the database: he
changes a record and recomputes every hash up to the head.  With a key
(``gateway.log_key``, 32 random bytes that ``bmrgw logs keygen`` writes) each
link is ``HMAC-SHA256(key, prev_hash || canonical(record))`` instead
(:func:`gateway.logs.records.chain_hash`), which he cannot compute.  What he
can still do without the key is cut: delete the newest records and move the
head back, or drop a node's whole chain.  Checkpoints catch that: the
gateway appends each node's chain head, MACed with the key, to a JSON-lines
file (``gateway.log_checkpoints``) meant to be copied off the database host;
:func:`gateway.logs.chain.verify` insists that every checkpointed record is
still on its chain.

Pure file handling: no database.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from routing.config import Config

__all__ = ["KEY_BYTES", "CHECKPOINTS", "Checkpoint", "load_key", "write_key", "append_checkpoint",
           "create_checkpoints", "read_checkpoints", "log_key", "checkpoints_path"]

KEY_BYTES = 32
#: Default checkpoint file, under ``gateway.data_dir``.
CHECKPOINTS = "log-checkpoints.jsonl"
#: Domain separation: a checkpoint's MAC can never pass for a chain link, nor the other way round.
_CHECKPOINT_MAC = b"bmrgw-log-checkpoint/1\n"


def log_key(config: Config) -> bytes | None:
    """The key of ``gateway.log_key``, or None when there is none."""
    return None if config.gateway.log_key is None else load_key(config.gateway.log_key)


def checkpoints_path(config: Config) -> Path:
    """``gateway.log_checkpoints``, by default ``<data_dir>/log-checkpoints.jsonl``."""
    if config.gateway.log_checkpoints is not None:
        return Path(config.gateway.log_checkpoints)
    return config.resolve_path(config.gateway.data_dir) / CHECKPOINTS


def load_key(path: str | Path) -> bytes:
    """The key in ``path`` (base64 or hex of 32 bytes); :class:`ConfigError` if unreadable, malformed
    or readable by group or others."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"gateway.log_key: cannot read {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"gateway.log_key: {path} is readable by others; chmod 600 it")
    key = _decode(text)
    if key is None:
        raise ConfigError(f"gateway.log_key: {path} does not hold {KEY_BYTES} bytes in base64 or hex "
                          "(bmrgw logs keygen writes one)")
    return key


def _decode(text: str) -> bytes | None:
    with contextlib.suppress(ValueError):
        if len(text) == 2 * KEY_BYTES:
            return bytes.fromhex(text)
    with contextlib.suppress(binascii.Error, ValueError):
        key = base64.b64decode(text, validate=True)
        if len(key) == KEY_BYTES:
            return key
    return None


def write_key(path: Path) -> None:
    """Write a new random key to ``path`` (base64, mode 0600); ``FileExistsError`` if it exists."""
    line = base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """One node's chain head as the gateway wrote it: record ``seq`` of ``node`` has hash ``hash``."""

    node: str
    seq: int
    hash: str
    time: str
    """When it was written (ISO 8601 UTC)."""

    def line(self, key: bytes) -> bytes:
        """The JSON line with its MAC."""
        body = self._body()
        mac = hmac.digest(key, _CHECKPOINT_MAC + body, hashlib.sha256).hex()
        return body[:-1] + f',"mac":"{mac}"}}\n'.encode()

    def _body(self) -> bytes:
        return json.dumps({"node": self.node, "seq": self.seq, "hash": self.hash, "time": self.time},
                          separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def mac_ok(self, key: bytes, mac: str) -> bool:
        expected = hmac.digest(key, _CHECKPOINT_MAC + self._body(), hashlib.sha256).hex()
        return hmac.compare_digest(expected, mac)


def append_checkpoint(path: Path, key: bytes, node: str, seq: int, hash_: str) -> Checkpoint:
    """Append ``node``'s head to the checkpoint file (created 0600) and sync it.

    One ``write`` of one line to a file opened ``O_APPEND``: the workers of one gateway
    share the file, and their lines never interleave.
    """
    checkpoint = Checkpoint(node=node, seq=seq, hash=hash_, time=datetime.now(UTC).isoformat())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, checkpoint.line(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    return checkpoint


def create_checkpoints(path: Path) -> None:
    """Create the (empty) checkpoint file and its folder if missing: from then on its absence is news."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))


def read_checkpoints(path: Path, key: bytes) -> tuple[dict[str, list[Checkpoint]], list[str]]:
    """The checkpoints of ``path`` by node, in file order, and what is wrong with the lines that do not
    pass (unparsable, or a MAC the key does not make: not written by a gateway holding the key)."""
    found: dict[str, list[Checkpoint]] = {}
    bad: list[str] = []
    for number, line in _lines(path):
        try:
            data = json.loads(line)
            checkpoint = Checkpoint(node=str(data["node"]), seq=int(data["seq"]), hash=str(data["hash"]),
                                    time=str(data["time"]))
            mac = str(data["mac"])
        except (ValueError, KeyError, TypeError) as exc:
            bad.append(f"{path.name} line {number}: unreadable ({exc})")
            continue
        if not checkpoint.mac_ok(key, mac):
            bad.append(f"{path.name} line {number}: its MAC does not match (not written with the log key)")
            continue
        found.setdefault(checkpoint.node, []).append(checkpoint)
    return found, bad


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, line
