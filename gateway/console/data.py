"""What the console's pages show, read from the store (synchronous: call in a worker thread).

The send/receive log search is :class:`gateway.logs.tables.LogFilter` plus
the client, which ``bmrgw logs`` does not filter on.  JX documents are listed with their date range, and
one document can be purged whatever its state (the store's own purge only
drops confirmed documents older than a date).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, false, func, inspect, select
from sqlalchemy.sql import ColumnElement

from gateway.errors import UnknownDocument
from gateway.jx.store import Document, DocumentStore, now_ms
from gateway.logs.records import LogRecord
from gateway.logs.tables import TABLES, LogFilter, from_row, has_log, read, translated
from refdb.config import RefdbSettings
from refdb.schema import DATASETS, tables_for

__all__ = ["search", "trail", "datasets", "documents", "purge_document", "MAX_ROWS",
           "JX_STATES"]

#: The most rows a page lists (the newest); a search narrows further.
MAX_ROWS = 200
JX_STATES = ("ready", "leased", "confirmed", "dead")


def search(engine: Engine, filters: LogFilter, client: str | None, *, limit: int = MAX_ROWS) -> list[LogRecord]:
    """The newest ``limit`` records that match, newest first."""
    t = TABLES.log
    conditions = filters.where(t)
    if client:
        conditions.append(t.c.client == client)
    stmt = select(t).where(*conditions).order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit)
    with translated("cannot read the send/receive log"), engine.connect() as connection:
        if not has_log(connection):
            return []
        return [from_row(row) for row in connection.execute(stmt)]


def trail(engine: Engine, message_id: str) -> list[LogRecord]:
    """Every record of one message on every node (each hop logs its own), oldest first."""
    return list(read(engine, LogFilter(message_id=message_id), limit=MAX_ROWS))


def datasets(engine: Engine, settings: RefdbSettings) -> list[dict[str, Any]]:
    """Each declared dataset: version, live rows, when it last changed (None before its first push)."""
    listed = []
    with engine.connect() as connection:
        known = inspect(connection).has_table(DATASETS.name)
        stored = {r.name: r for r in connection.execute(select(DATASETS))} if known else {}
        for name, dataset in sorted(settings.datasets.items()):
            rows_table = tables_for(dataset).rows
            rows = None
            if inspect(connection).has_table(rows_table.name):
                rows = connection.execute(select(func.count()).select_from(rows_table)
                                          .where(rows_table.c._deleted == false())).scalar_one()
            row = stored.get(name)
            listed.append({"name": name, "version": row.version if row is not None else 0, "rows": rows,
                           "updated": row.updated if row is not None else None})
    return listed


def documents(store: DocumentStore, *, receiver: str | None, state: str | None, since: datetime | None,
              until: datetime | None, limit: int = MAX_ROWS) -> list[Document]:
    """JX documents by receiver, shown state and arrival time, newest first."""
    t = store.tables.document
    conditions: list[ColumnElement[bool]] = []
    if receiver:
        conditions.append(t.c.receiver_id == receiver)
    if state in ("ready", "leased"):
        leased = and_(t.c.lease_until_ms.is_not(None), t.c.lease_until_ms > now_ms())
        conditions += [t.c.state == "ready", leased if state == "leased" else ~leased]
    elif state:
        conditions.append(t.c.state == state)
    if since is not None:
        conditions.append(t.c.created_ms >= int(since.timestamp() * 1000))
    if until is not None:
        conditions.append(t.c.created_ms < int(until.timestamp() * 1000))
    stmt = select(t).where(*conditions).order_by(t.c.seq.desc()).limit(limit)
    with translated("cannot read the JX documents"), store.engine.connect() as c:
        return [Document.of(row) for row in c.execute(stmt)]


def purge_document(store: DocumentStore, message_id: str) -> Document:
    """Delete one document with its bytes, whatever its state; :class:`UnknownDocument` if there is none."""
    t, b = store.tables.document, store.tables.blob
    with translated("cannot purge the document"), store.engine.begin() as c:
        row = c.execute(select(t).where(t.c.message_id == message_id)).first()
        if row is None:
            raise UnknownDocument(f"no document {message_id!r}", detail=message_id)
        c.execute(delete(b).where(b.c.doc_seq == row.seq))
        c.execute(delete(t).where(t.c.seq == row.seq))
    if row.blob is not None:  # after the commit: a file is never missing for a row that exists
        (store.blob_dir / row.blob).unlink(missing_ok=True)
    return Document.of(row)


def receivers(store: DocumentStore) -> Sequence[str]:
    """Receivers with documents, for the mailbox page's choice."""
    t = store.tables.document
    with translated("cannot read the JX documents"), store.engine.connect() as c:
        return list(c.scalars(select(t.c.receiver_id).distinct().order_by(t.c.receiver_id).limit(MAX_ROWS)))
