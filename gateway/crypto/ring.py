"""Master key and per-organisation data keys (envelope encryption, SPEC.md "Data at rest, per organisation").

The master key is 32 random bytes in a file of its own (``gateway.encryption.
master_key``, written by ``bmrgw keys init``, mode 0600), base64 on one line.
It never encrypts content: it wraps (AES-256-GCM, the organisation and the
generation as associated data) the data keys, one per organisation — a JX
receiver id, or the destination business-AP of a file transfer — that live
wrapped in the table ``crypto_data_key`` of the gateway's store, beside the
content they seal (:mod:`gateway.crypto.seal`).  A data key is made on first
use; every node and worker sharing the store shares it (a concurrent first
use loses the insert race and reads the winner's).  Unwrapped keys are
cached in memory for the life of the process.

Rows name the master key that wrapped them by a short fingerprint, so a
rotation (re-wrapping every row under a new master key) can run while
gateways still hold the old one: a :class:`KeyRing` knows every master key
it was given and unwraps a row with the one it names.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.durable import fsync_dir, private_open
from gateway.errors import ConfigError, DocumentCorrupt, KeyUnavailable
from gateway.store import db_reason

from .seal import DataKey

__all__ = ["MasterKey", "KeyRing", "DATA_KEYS", "write_master_key", "write_master_keys"]

_KEY_BYTES = 32
#: Seconds a cached data key is used before the table is asked again (whether it was destroyed).
RECHECK_SECONDS = 30.0
_WRAP_AD = b"bmrgw-data-key/1\x00"

METADATA = MetaData()
DATA_KEYS = Table(
    "crypto_data_key", METADATA,
    Column("org", String(256), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("master_id", String(16), nullable=False),  # fingerprint of the master key that wrapped it
    Column("wrapped", LargeBinary),  # nonce + AES-GCM(data key); NULL once destroyed
    Column("created_ms", BigInteger, nullable=False),
    Column("destroyed_ms", BigInteger),
    PrimaryKeyConstraint("org", "generation"),
)


@dataclass(frozen=True)
class MasterKey:
    """A master key and its fingerprint."""

    secret: bytes
    id: str

    @classmethod
    def of(cls, secret: bytes) -> MasterKey:
        return cls(secret, hashlib.sha256(b"bmrgw-master/1" + secret).hexdigest()[:16])

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        """The current (first) key of a master key file."""
        return cls.load_all(path)[0]

    @classmethod
    def load_all(cls, path: Path) -> list[MasterKey]:
        """Every key of a master key file, current first (a file holds earlier keys after a rotation);
        a missing, unreadable or malformed file is a :class:`ConfigError`."""
        try:
            lines = [line.strip() for line in path.read_text(encoding="ascii").splitlines()]
            secrets = [base64.b64decode(line, validate=True) for line in lines if line and not line.startswith("#")]
        except (OSError, UnicodeDecodeError, binascii.Error) as exc:
            raise ConfigError(f"gateway.encryption.master_key: cannot read {str(path)!r}: "
                              f"{getattr(exc, 'strerror', None) or exc} (bmrgw keys init PATH makes one)") from exc
        if not secrets or any(len(secret) != _KEY_BYTES for secret in secrets):
            raise ConfigError(f"gateway.encryption.master_key: {str(path)!r} does not hold 256-bit keys only")
        return [cls.of(secret) for secret in secrets]

    def wrap(self, key: DataKey) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.secret).encrypt(nonce, key.secret, _wrap_ad(key.org, key.generation))

    def unwrap(self, org: str, generation: int, wrapped: bytes) -> DataKey:
        try:
            secret = AESGCM(self.secret).decrypt(wrapped[:12], wrapped[12:], _wrap_ad(org, generation))
        except InvalidTag:
            raise DocumentCorrupt(f"the data key of {org!r} (generation {generation}) fails authentication "
                                  "under the master key", detail=org) from None
        return DataKey(org, generation, secret)


def _wrap_ad(org: str, generation: int) -> bytes:
    return _WRAP_AD + org.encode("utf-8") + b"\x00" + str(generation).encode("ascii")


def write_master_key(path: Path) -> MasterKey:
    """Write a new random master key to ``path`` (0600); an existing file is never overwritten."""
    key = MasterKey.of(os.urandom(_KEY_BYTES))
    _write_keys(path, [key], os.O_EXCL)
    return key


def write_master_keys(path: Path, keys: list[MasterKey]) -> None:
    """Replace the key file ``path`` by ``keys`` (current first), atomically: readers see the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    _write_keys(tmp, keys, os.O_EXCL)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _write_keys(path: Path, keys: list[MasterKey], flags: int) -> None:
    fd = private_open(path, os.O_WRONLY | os.O_CREAT | flags)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write("".join(base64.b64encode(key.secret).decode("ascii") + "\n" for key in keys))
        out.flush()
        os.fsync(out.fileno())
    if flags & os.O_EXCL and path.name[:1] != ".":
        fsync_dir(path.parent)


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Database errors become :class:`KeyUnavailable` (one line); a lost insert race stays IntegrityError."""
    try:
        yield
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        raise KeyUnavailable(f"{what}: {db_reason(exc)}") from exc


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class KeyRing:
    """The data keys of every organisation, wrapped in the store, unwrapped on demand and cached.

    With ``path`` (the master key file) the ring re-reads that file when it meets a data key
    wrapped by a master key it does not hold, and before it makes a new data key: a rotation
    that adds a new master key to the file is followed without a restart.  A cached key is
    checked against the table again after :data:`RECHECK_SECONDS`, so a destroyed key stops
    opening content in every running gateway within that time.
    """

    def __init__(self, engine: Engine, masters: Iterable[MasterKey], path: Path | None = None) -> None:
        self.engine = engine
        self.path = path
        self.masters = {master.id: master for master in masters}
        self.current = next(iter(self.masters.values()))
        """The master key that wraps new data keys (the first given, or the first of the file)."""
        self._keys: dict[tuple[str, int], tuple[DataKey, float]] = {}
        self._newest: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._opened = False

    def open(self) -> None:
        """Create the key table if needed (a lost creation race with another node is retried once)."""
        if self._opened:
            return
        with translated("cannot create the key table"):
            try:
                METADATA.create_all(self.engine)
            except SQLAlchemyError:
                METADATA.create_all(self.engine)
        self._opened = True

    def for_sealing(self, org: str) -> DataKey:
        """The newest live data key of ``org``, made now if it has none (or only destroyed ones).

        Which generation is newest is asked of the table again after :data:`RECHECK_SECONDS`, so
        a new generation made by ``bmrgw keys rotate --org`` seals new content in every gateway
        within that time."""
        cached = self._newest.get(org)
        if cached is not None and time.monotonic() - cached[1] < RECHECK_SECONDS:
            return self.key_of(org, cached[0])
        live, newest = self._generations(org)
        key = self.key_of(org, live) if live is not None else self._create(org, (newest or 0) + 1)
        self._newest[org] = (key.generation, time.monotonic())
        return key

    def new_generation(self, org: str) -> DataKey:
        """Give ``org`` a new data key generation (the earlier ones stay readable); it seals from now on."""
        _, newest = self._generations(org)
        key = self._create(org, (newest or 0) + 1)
        self._newest[org] = (key.generation, time.monotonic())
        return key

    def live_generations(self, org: str) -> dict[int, int]:
        """The live (not destroyed) generations of ``org`` and when each was made (ms since the epoch)."""
        t = DATA_KEYS
        self.open()
        with translated("cannot read the data keys"), self.engine.connect() as c:
            rows = c.execute(select(t.c.generation, t.c.created_ms).where(t.c.org == org, t.c.wrapped.is_not(None))
                             .order_by(t.c.generation)).all()
        return {int(row.generation): int(row.created_ms) for row in rows}

    def drop_generations(self, org: str, below: int) -> int:
        """Delete the live data keys of ``org`` older than generation ``below`` (nothing is sealed under
        them any more); returns how many.  Destroyed rows stay as the record of the erasure."""
        t = DATA_KEYS
        with translated("cannot delete old data keys"), self.engine.begin() as c:
            done = c.execute(delete(t).where(t.c.org == org, t.c.generation < below,
                                             t.c.wrapped.is_not(None))).rowcount
        with self._lock:
            for cached in [k for k in self._keys if k[0] == org and k[1] < below]:
                self._keys.pop(cached, None)
        return int(done)

    def key_of(self, org: str, generation: int) -> DataKey:
        """The data key that sealed content of ``org`` at ``generation``."""
        cached = self._keys.get((org, generation))
        if cached is not None and time.monotonic() - cached[1] < RECHECK_SECONDS:
            return cached[0]
        self.open()
        with translated("cannot read the data keys"), self.engine.connect() as c:
            row = c.execute(select(DATA_KEYS).where(DATA_KEYS.c.org == org,
                                                    DATA_KEYS.c.generation == generation)).first()
        if row is None:  # content claiming a key its organisation never had was not sealed for it
            raise DocumentCorrupt(f"content of {org!r} names data key generation {generation}, which "
                                  f"{org!r} never had: moved from another organisation?", detail=org)
        if row.wrapped is None:
            self.forget(org)
            raise KeyUnavailable(f"the data key of {org!r} (generation {generation}) was destroyed: "
                                 "its content cannot be read", detail=org)
        key = cached[0] if cached is not None else self._unwrap(org, generation, row.master_id, bytes(row.wrapped))
        self._keys[(org, generation)] = (key, time.monotonic())
        return key

    def forget(self, org: str | None = None) -> None:
        """Drop cached keys (of one organisation, or all): the next use reads the table again."""
        with self._lock:
            for cached in list(self._keys):
                if org is None or cached[0] == org:
                    self._keys.pop(cached, None)
            for name in list(self._newest):
                if org is None or name == org:
                    self._newest.pop(name, None)

    def rewrap(self, new: MasterKey) -> int:
        """Wrap every live data key under ``new`` (unwrapped with the master key that wraps it now);
        returns how many rows changed.  Each row is swapped only if nobody changed it meanwhile."""
        self.open()
        t, moved = DATA_KEYS, 0
        with translated("cannot read the data keys"), self.engine.connect() as c:
            rows = c.execute(select(t.c.org, t.c.generation, t.c.master_id, t.c.wrapped).where(
                t.c.wrapped.is_not(None), t.c.master_id != new.id)).all()
        for row in rows:
            key = self._unwrap(row.org, row.generation, row.master_id, bytes(row.wrapped))
            with translated("cannot store a re-wrapped data key"), self.engine.begin() as c:
                moved += c.execute(update(t).where(t.c.org == row.org, t.c.generation == row.generation,
                                                   t.c.master_id == row.master_id, t.c.wrapped.is_not(None))
                                   .values(master_id=new.id, wrapped=new.wrap(key))).rowcount
        return moved

    def destroy(self, connection: Connection, org: str) -> int:
        """Erase every data key of ``org`` in ``connection``'s transaction; returns how many were live."""
        t = DATA_KEYS
        done = connection.execute(update(t).where(t.c.org == org, t.c.wrapped.is_not(None))
                                  .values(wrapped=None, destroyed_ms=now_ms())).rowcount
        self.forget(org)
        return int(done)

    def _reload(self) -> None:
        if self.path is None:
            return
        found = MasterKey.load_all(self.path)
        self.masters = {**{key.id: key for key in found}, **self.masters}
        self.current = found[0]

    def _unwrap(self, org: str, generation: int, master_id: str, wrapped: bytes) -> DataKey:
        if master_id not in self.masters:
            self._reload()  # a rotation may have added it to the key file since we started
        master = self.masters.get(master_id)
        if master is None:
            raise KeyUnavailable(f"the data key of {org!r} is wrapped by master key {master_id}, which this "
                                 "gateway does not hold (gateway.encryption.master_key)", detail=org)
        return master.unwrap(org, generation, wrapped)

    def _generations(self, org: str) -> tuple[int | None, int | None]:
        """The newest live generation of ``org`` and the newest of all (destroyed ones too)."""
        t = DATA_KEYS
        self.open()
        with translated("cannot read the data keys"), self.engine.connect() as c:
            live, newest = c.execute(select(func.max(case((t.c.wrapped.is_not(None), t.c.generation))),
                                            func.max(t.c.generation)).where(t.c.org == org)).one()
        return live, newest

    def _create(self, org: str, generation: int) -> DataKey:
        self._reload()  # wrap under the newest master key of the file
        key = DataKey(org, generation, os.urandom(_KEY_BYTES))
        try:
            with translated("cannot store a new data key"), self.engine.begin() as c:
                c.execute(insert(DATA_KEYS).values(org=org, generation=generation, master_id=self.current.id,
                                                   wrapped=self.current.wrap(key), created_ms=now_ms()))
        except IntegrityError:  # another worker or node made it first: use theirs
            return self.key_of(org, generation)
        self._keys[(org, generation)] = (key, time.monotonic())
        return key
