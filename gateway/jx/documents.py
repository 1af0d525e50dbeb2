"""The JX store's tables and records: ``jx_document`` (one row a document), ``jx_blob`` (a
document's bytes in 1 MiB parts when they live in the database), and the dataclasses of a
document asked to be stored and of one stored (:mod:`gateway.jx.store`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    Text,
    bindparam,
    func,
    select,
)

from routing.settings import JxSettings

from ..errors import QuotaExceeded
from .wire import Spool

__all__ = ["STATES", "PART", "Tables", "TABLES", "now_ms", "iso", "NewDocument", "Document", "Leased", "waiting",
           "over_quota"]

#: Document states; "leased" is a ready document whose lease has not run out yet.
STATES = ("ready", "confirmed", "dead")
#: Bytes per database blob part and per chunk read from a blob.
PART = 1024 * 1024

@dataclass(frozen=True)
class Tables:
    metadata: MetaData
    document: Table
    blob: Table


def _tables() -> Tables:
    metadata = MetaData()
    ident = BigInteger().with_variant(Integer, "sqlite")
    document = Table(
        "jx_document", metadata,
        Column("seq", ident, primary_key=True, autoincrement=True),
        Column("message_id", String(256), nullable=False, unique=True),
        Column("sender_id", String(256), nullable=False),
        Column("receiver_id", String(256), nullable=False),
        Column("format_type", Text, nullable=False),
        Column("document_type", Text, nullable=False),
        Column("compress_type", Text, nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("blob", Text),  # file name under blobs/, or NULL when the bytes are in jx_blob
        Column("source", String(16), nullable=False),  # jx, mailbox, cli
        Column("state", String(16), nullable=False),
        Column("created_ms", BigInteger, nullable=False),
        Column("lease_until_ms", BigInteger),
        Column("lease_node", Text),
        Column("deliveries", Integer, nullable=False, default=0),
        Column("last_handout_ms", BigInteger),
        Column("confirmed_ms", BigInteger),
        Index("ix_jx_document_queue", "receiver_id", "state", "seq"),
    )
    blob = Table(
        "jx_blob", metadata,
        Column("doc_seq", BigInteger, nullable=False),
        Column("part", Integer, nullable=False),
        Column("data", LargeBinary, nullable=False),
        PrimaryKeyConstraint("doc_seq", "part"),
    )
    return Tables(metadata, document, blob)


TABLES = _tables()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int | None) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC (for listings)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@dataclass(frozen=True, kw_only=True)
class NewDocument:
    """What a PutDocument (or a mailbox deposit) asks to store."""

    message_id: str
    sender_id: str
    receiver_id: str
    format_type: str
    document_type: str
    compress_type: str
    source: str = "jx"


@dataclass(frozen=True, kw_only=True)
class Document:
    """A stored document's metadata."""

    seq: int
    message_id: str
    sender_id: str
    receiver_id: str
    format_type: str
    document_type: str
    compress_type: str
    size: int
    sha256: str
    blob: str | None
    source: str
    state: str
    created_ms: int
    lease_until_ms: int | None
    lease_node: str | None
    deliveries: int
    last_handout_ms: int | None
    confirmed_ms: int | None

    @classmethod
    def of(cls, row: Row[Any]) -> Document:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})

    def shown_state(self, at_ms: int) -> str:
        """``leased`` for a ready document under a lease, else the stored state."""
        if self.state == "ready" and self.lease_until_ms is not None and self.lease_until_ms > at_ms:
            return "leased"
        return self.state

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["state"] = self.shown_state(now_ms())
        for name in ("created_ms", "lease_until_ms", "last_handout_ms", "confirmed_ms"):
            out[name.removesuffix("_ms")] = iso(out.pop(name))
        return out

    def same_content(self, new: NewDocument, spool: Spool) -> bool:
        return (self.sha256, self.size, self.sender_id, self.receiver_id, self.format_type, self.document_type,
                self.compress_type) == (spool.sha256, spool.size, new.sender_id, new.receiver_id,
                                        new.format_type, new.document_type, new.compress_type)


@dataclass(frozen=True)
class Leased:
    """A document just handed out, with what the hand-out read of its database parts."""

    document: Document
    stored: int | None = None
    """Bytes stored in ``jx_blob`` for it (``None``: not read, or its bytes are in a file)."""
    head: bytes | None = None
    """Its part 0."""

    @property
    def in_hand(self) -> bool:
        """Whether ``head`` holds all the document's stored bytes (reading it needs no database nor file)."""
        return self.head is not None and self.stored is not None and len(self.head) >= self.stored


_WAITING = (select(TABLES.document.c.receiver_id, func.count(), func.coalesce(func.sum(TABLES.document.c.size), 0))
            .where(TABLES.document.c.receiver_id.in_(bindparam("receivers", expanding=True)),
                   TABLES.document.c.state == "ready")
            .group_by(TABLES.document.c.receiver_id))


def waiting(c: Connection, receivers: set[str]) -> dict[str, list[int]]:
    """Per receiver id: how many documents of how many bytes wait (ready or leased)."""
    rows = c.execute(_WAITING, {"receivers": sorted(receivers)})  # one statement built once, for every put
    return {str(receiver): [int(count), int(total)] for receiver, count, total in rows}


def over_quota(settings: JxSettings, receiver_id: str, held: list[int], size: int) -> QuotaExceeded | None:
    """The refusal of one more document of ``size`` bytes for a receiver holding ``held`` (count, bytes)."""
    count, total = held
    most, most_bytes = settings.max_pending_documents, settings.max_pending_bytes
    if count + 1 <= most and total + size <= most_bytes:
        return None
    return QuotaExceeded(f"receiver {receiver_id[:64]!r} has {count} documents of {total} bytes waiting; "
                         f"its quota is {most} documents of {most_bytes} bytes "
                         "(gateway.jx.max_pending_documents, max_pending_bytes)", detail=receiver_id[:256])
