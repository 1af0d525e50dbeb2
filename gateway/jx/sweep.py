"""The mailbox operator's queries: search, forced confirm and purge in bounded batches (issue 21, item 6).

Kept apart from :mod:`gateway.jx.store` (puts, leases, confirms by pollers)
because these run only for an operator (``bmrgw jx``) and for retention.

The states an operator asks for are the ones a JX client's user knows:

========================  ==========  ==============================================
operator state            stored as   meaning
========================  ==========  ==============================================
``pending`` (未取得)       ready       never handed out
``delivered`` (取得済み)   ready       handed out at least once, not confirmed yet
``confirmed`` (確認済み)   confirmed   the receiver confirmed it
``dead``                  dead        handed out ``max_deliveries`` times, parked
========================  ==========  ==============================================

A purge deletes at most ``batch`` documents per transaction, their blob
files after each commit (a row never outlives its bytes), so a large purge
neither holds one long lock nor builds one huge statement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, delete, or_, select, update

from gateway.logs.records import LogRecord
from routing.settings import JxRetention

from ..errors import UnknownDocument
from .engine import translated
from .store import Document, DocumentStore, now_ms

__all__ = ["OPERATOR_STATES", "BATCH", "Search", "search", "force_confirm", "purge", "operator_state", "shown",
           "retain", "sweep"]

log = logging.getLogger("bmrgw.jx")

#: Operator states, and the words accepted for each (English and the Japanese of JX client products).
OPERATOR_STATES: dict[str, tuple[str, ...]] = {
    "pending": ("pending", "未取得", "ready"),
    "delivered": ("delivered", "取得済み", "delivered-unconfirmed", "leased"),
    "confirmed": ("confirmed", "確認済み"),
    "dead": ("dead", "dead-letter"),
}
#: Documents deleted per transaction by :func:`purge`.
BATCH = 500


def operator_state(word: str) -> str | None:
    """The operator state a word names (``未取得`` → ``pending``), or None."""
    for state, words in OPERATOR_STATES.items():
        if word in words:
            return state
    return None


def shown(document: Document) -> str:
    """A document's operator state."""
    if document.state == "ready":
        return "delivered" if document.deliveries else "pending"
    return document.state


@dataclass(frozen=True, kw_only=True)
class Search:
    """What ``bmrgw jx list`` and ``purge`` select; every field narrows, None selects all."""

    receiver_id: str | None = None
    sender_id: str | None = None
    states: tuple[str, ...] = ("pending", "delivered")
    """Operator states (:data:`OPERATOR_STATES` keys)."""
    since_ms: int | None = None
    """Created at or after (milliseconds since the epoch)."""
    until_ms: int | None = None
    """Created before."""
    older_than_ms: int | None = None
    """Confirmed documents confirmed before it, others created before it (purge's ``--older-than``)."""


def _where(store: DocumentStore, search: Search) -> list[ColumnElement[bool]]:
    t = store.tables.document
    states = []
    for state in search.states:
        if state == "pending":
            states.append(and_(t.c.state == "ready", t.c.deliveries == 0))
        elif state == "delivered":
            states.append(and_(t.c.state == "ready", t.c.deliveries > 0))
        else:
            states.append(t.c.state == state)
    wanted: list[ColumnElement[bool]] = [or_(*states)] if states else [t.c.seq < 0]
    if search.receiver_id is not None:
        wanted.append(t.c.receiver_id == search.receiver_id)
    if search.sender_id is not None:
        wanted.append(t.c.sender_id == search.sender_id)
    if search.since_ms is not None:
        wanted.append(t.c.created_ms >= search.since_ms)
    if search.until_ms is not None:
        wanted.append(t.c.created_ms < search.until_ms)
    if search.older_than_ms is not None:
        cut = search.older_than_ms
        wanted.append(((t.c.state == "confirmed") & (t.c.confirmed_ms < cut))
                      | ((t.c.state != "confirmed") & (t.c.created_ms < cut)))
    return wanted


def search(store: DocumentStore, query: Search, *, limit: int | None = None) -> list[Document]:
    """Documents matching ``query``, oldest first."""
    t = store.tables.document
    stmt = select(t).where(*_where(store, query)).order_by(t.c.seq)
    if limit is not None:
        stmt = stmt.limit(limit)
    with translated("cannot read the JX documents"), store.engine.connect() as c:
        return [Document.of(row) for row in c.execute(stmt)]


def force_confirm(store: DocumentStore, message_id: str, record: LogRecord) -> tuple[Document, bool]:
    """Confirm a document for its receiver, whatever its state; ``record`` is logged in the same
    transaction.  ``False`` when it was confirmed already (then nothing changes and nothing is logged)."""
    t = store.tables.document
    with translated("cannot confirm the document"), store.durable.begin() as c:
        row = c.execute(select(t).where(t.c.message_id == message_id).with_for_update()).first()
        if row is None:
            raise UnknownDocument(f"no document {message_id!r}", detail=message_id)
        document = Document.of(row)
        if document.state == "confirmed":
            return document, False
        c.execute(update(t).where(t.c.seq == row.seq).values(state="confirmed", confirmed_ms=now_ms(),
                                                             lease_until_ms=None))
        if store.log is not None:
            store.log(c, record)
        return document, True


def purge(store: DocumentStore, query: Search, *, batch: int = BATCH) -> Iterator[list[Document]]:
    """Delete the documents matching ``query`` in transactions of at most ``batch``; yields each
    batch once it is committed and its blob files are gone."""
    while True:
        documents = _purge_batch(store, query, batch)
        if not documents:
            return
        yield documents
        if len(documents) < batch:
            return


def _purge_batch(store: DocumentStore, query: Search, batch: int) -> list[Document]:
    t, b = store.tables.document, store.tables.blob
    with translated("cannot purge documents"), store.engine.begin() as c:
        rows = c.execute(select(t).where(*_where(store, query)).order_by(t.c.seq).limit(batch)
                         .with_for_update(skip_locked=True)).all()
        documents = [Document.of(row) for row in rows]
        _delete(c, b, t, [d.seq for d in documents])
    for document in documents:  # after the commit: a file is never missing for a row that exists
        if document.blob is not None:
            (store.blob_dir / document.blob).unlink(missing_ok=True)
    return documents


def _delete(c: Connection, b: Any, t: Any, seqs: list[int]) -> None:
    if seqs:
        c.execute(delete(b).where(b.c.doc_seq.in_(seqs)))
        c.execute(delete(t).where(t.c.seq.in_(seqs)))


def retention_searches(retention: JxRetention, at_ms: int) -> list[Search]:
    """What ``gateway.jx.retention`` deletes at ``at_ms``: old confirmed documents, old dead letters."""
    searches = []
    if retention.confirmed_seconds is not None:
        searches.append(Search(states=("confirmed",), older_than_ms=at_ms - int(retention.confirmed_seconds * 1000)))
    if retention.dead_seconds is not None:
        searches.append(Search(states=("dead",), older_than_ms=at_ms - int(retention.dead_seconds * 1000)))
    return searches


def sweep(store: DocumentStore, retention: JxRetention) -> int:
    """One retention sweep, batch by batch, each batch logged; returns how many documents went."""
    total = 0
    for query in retention_searches(retention, now_ms()):
        for documents in purge(store, query, batch=retention.batch):
            total += len(documents)
            log.info("jx retention: deleted %d %s document%s (%s … %s)", len(documents), query.states[0],
                     "" if len(documents) == 1 else "s", documents[0].message_id, documents[-1].message_id)
    return total


async def retain(store: DocumentStore, retention: JxRetention) -> None:
    """Apply ``gateway.jx.retention`` when the gateway starts and every ``retention.every`` seconds."""
    while True:
        try:
            total = await asyncio.to_thread(sweep, store, retention)
            if total:
                log.info("jx retention: %d document%s deleted in this sweep", total, "" if total == 1 else "s")
        except Exception as exc:  # retention must not stop because of one bad sweep
            log.error("jx retention failed, retrying in %g s: %s", retention.every, exc)
        await asyncio.sleep(retention.every)
