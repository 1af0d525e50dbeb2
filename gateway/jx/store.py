"""The durable JX document store: mailboxes of documents waiting for their receiver to poll.

Metadata lives in one SQLAlchemy Core table, ``jx_document``, on the
gateway's database.  Document bytes live either in files under
``<data_dir>/jx/blobs`` or in the database itself (``jx_blob``, 1 MiB parts
written in the same transaction as the metadata): on PostgreSQL all of them,
so that several gateway nodes on one PostgreSQL share their mailboxes with no
shared file system; on SQLite documents up to 64 KiB (one WAL flush for the
put instead of a file fsync, a folder fsync and the WAL flush) and larger ones
in files (``gateway.jx.blobs``, :func:`~gateway.jx.engine.inline_bytes`).

Durability.  A document stored as a file is fsynced (written sealed, or the
spool fsynced and renamed into ``blobs/``; then a folder fsync) *before* its
row is committed; one stored in ``jx_blob`` is in the row's transaction.  The row is
committed — together with its send/receive log record — before PutDocument
answers ``true``.  Puts arriving while one commits share the next transaction
(group commit, :mod:`gateway.jx.commit`): one disk flush, one folder fsync and
one hold of the log's chain lock for all of them, each put keeping its own
outcome.  A crash at any moment leaves either no row (the caller saw
no ``true``) or a row whose bytes are complete: a partial document is never
served.  A put's commit is flushed to disk before ``true`` (SQLite
``synchronous=FULL`` on a connection pool of its own; PostgreSQL's default),
so it survives a power cut, not only a process crash.  Hand-outs and confirms
commit without waiting for the disk (SQLite ``NORMAL``, PostgreSQL
``synchronous_commit off`` for that transaction): a power cut may undo the
last few of them, which only means a document is handed out once more —
the protocol is at-least-once until confirmed, and pollers deduplicate.

Leases.  GetDocument takes the oldest ready document of the receiver whose
lease is free, under a row lock (``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
``BEGIN IMMEDIATE`` on SQLite serialises writers), and leases it for
``lease_seconds``: concurrent pollers on any node never get the same document
within a lease.  Unconfirmed documents are handed out again after the lease;
one handed out ``max_deliveries`` times without a confirm is parked as a dead
letter so it never blocks the queue.

Quotas.  A receiver id holds at most ``max_pending_documents`` waiting (ready
or leased) documents of at most ``max_pending_bytes`` together; a put beyond
is :class:`QuotaExceeded`, checked in the put's transaction (exact on SQLite,
whose writers are serialised; on PostgreSQL concurrent puts for one receiver
may overshoot by their number).  Dead letters and confirmed documents do not
count.  A put is refused with :class:`InsufficientStorage` before its bytes
move when the data disk is below ``gateway.min_free_bytes``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from gateway.logs.records import LogRecord
from gateway.store import create_tables
from routing.settings import JxSettings

from ..crypto import Vault
from ..disk import FreeSpace
from ..durable import private_dir
from ..errors import DocumentStoreError, DuplicateMessageId, QuotaExceeded, UnknownDocument
from .commit import GroupCommit, Pending
from .documents import PART, STATES, TABLES, Document, Leased, NewDocument, now_ms, over_quota, waiting
from .engine import WriteTurns, blobs_in_database, inline_bytes, relaxed, translated
from .files import fsync_dir, place
from .queries import Statements
from .wire import Spool

__all__ = ["DocumentStore", "Leased", "Document", "NewDocument", "TABLES", "STATES", "PART", "LogWriter", "blobs_in_database",
           "now_ms"]

#: Writes a log record inside the store's transaction (:meth:`gateway.logs.journal.Journal.write_in`).
LogWriter = Callable[[Connection, LogRecord], object]


class DocumentStore:
    """Put, lease, confirm and manage JX documents (synchronous: call from a worker thread)."""

    def __init__(self, engine: Engine, *, root: Path, settings: JxSettings, node: str,
                 log: LogWriter | None = None, durable: Engine | None = None,
                 space: FreeSpace | None = None, min_free_bytes: int = 0, vault: Vault | None = None,
                 quick: Engine | None = None) -> None:
        self.engine = engine
        self.quick = quick
        """Engine for hand-outs and confirms whose sessions commit without waiting for the disk
        (PostgreSQL, :func:`~gateway.jx.engine.prepare_engine` ``relaxed``); ``None``: ``engine``, with
        :func:`~gateway.jx.engine.relaxed` in each of those transactions."""
        self.vault = vault or Vault()  # seals bytes for their receiver (gateway.encryption), or passes them
        self.durable = durable or engine
        """Engine for puts: on SQLite a pool of its own with ``synchronous=FULL``."""
        self.settings = settings
        self.node = node
        self.log = log
        self.in_database = blobs_in_database(settings.blobs, engine.dialect.name)
        self.inline_bytes = inline_bytes(settings.blobs, engine.dialect.name)
        """Documents of up to this many bytes are stored in ``jx_blob`` rows, larger ones in files."""
        self.blob_dir = root / "blobs"
        self.spool_dir = root / "tmp" / _safe_node(node)
        self.tables = TABLES
        self.space = space
        """The data disk's free space (``None``: not checked, as for read-only commands)."""
        self.min_free_bytes = min_free_bytes
        self.turn = WriteTurns(engine)
        """SQLite: this process's write transactions queue here, not in SQLite's busy handler."""
        self.statements = Statements(max_deliveries=settings.max_deliveries, node=node)
        """The hand-out and confirm statements, built once (:mod:`gateway.jx.queries`)."""
        self.commits = GroupCommit(self._commit)
        """Puts waiting for a transaction: committed together (:mod:`gateway.jx.commit`)."""

    @property
    def logs_inside(self) -> bool:
        """Whether a put's log record is written in its own transaction (SQLite: see :mod:`gateway.jx.service`)."""
        return self.log is not None and self.durable.dialect.name == "sqlite"

    # -- set-up ----------------------------------------------------------------

    def open(self) -> None:
        """Create tables and folders; remove spool files a crash left behind (never served)."""
        with translated("cannot create the JX tables"):
            create_tables(self.engine, self.tables.metadata)
            private_dir(self.blob_dir)
            private_dir(self.spool_dir)
            for stale in self.spool_dir.glob("*.part"):
                stale.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _relaxed(self) -> Iterator[Connection]:
        """A transaction that need not wait for the disk (hand-outs, confirms).  On PostgreSQL the
        ``quick`` engine is in autocommit (:func:`gateway.jx.open_store`): every statement commits on
        its own, so only work that is right statement by statement belongs here."""
        with self.turn(), (self.quick or self.engine).begin() as c:
            if self.quick is None:
                relaxed(c)
            yield c

    def close(self) -> None:
        if self.quick is not None:
            self.quick.dispose()
        self.engine.dispose()
        self.durable.dispose()

    # -- put -------------------------------------------------------------------

    def put(self, new: NewDocument, spool: Spool, record: LogRecord | None = None) -> bool:
        """Store ``spool`` as ``new``; ``False`` when it was stored already (same id and content).

        Raises :class:`DuplicateMessageId` when the id is taken by other content.
        The spool file is consumed either way.
        """
        try:
            self.check_disk()
            try:
                self._insert(new, spool, record)
            except QuotaExceeded:
                existing = self.find(new.message_id)  # a document sent again is no new one
                if existing is None:
                    raise
                return self._duplicate(existing, new, spool)
            except (IntegrityError, DuplicateMessageId):
                existing = self.find(new.message_id)  # stored before, or by a concurrent put that won
                if existing is None:
                    raise DocumentStoreError(f"cannot store document {new.message_id!r}") from None
                return self._duplicate(existing, new, spool)
            return True
        finally:
            spool.discard()

    def check_disk(self) -> None:
        """Refuse to store when the data disk is below ``gateway.min_free_bytes`` (InsufficientStorage)."""
        if self.space is not None:
            self.space.check(self.min_free_bytes, what="store a JX document")

    def check_room(self, receiver_id: str) -> None:
        """Before a document is read: refuse when the disk or ``receiver_id``'s quota is already full."""
        self.check_disk()
        with translated("cannot read the JX documents"), self.engine.connect() as c:
            self._check_quota(c, receiver_id, 0)

    def _check_quota(self, c: Connection, receiver_id: str, size: int) -> None:
        refused = over_quota(self.settings, receiver_id, waiting(c, {receiver_id}).get(receiver_id, [0, 0]), size)
        if refused is not None:
            raise refused

    def _duplicate(self, existing: Document, new: NewDocument, spool: Spool) -> bool:
        if existing.same_content(new, spool):
            return False
        raise DuplicateMessageId(
            f"messageId {new.message_id!r} is already stored with other content or addressing",
            detail=new.message_id)

    def _insert(self, new: NewDocument, spool: Spool, record: LogRecord | None) -> None:
        self.vault.prepare(new.receiver_id)  # a new data key commits before the put's transaction begins
        inline = spool.size <= self.inline_bytes
        if inline and self.vault.stored_size(spool.size) > PART:
            return self._insert_streaming(new, spool, record)
        name, parts = None, None
        try:
            if inline:  # one part: it rides in the group's transaction, no file and no fsync of its own
                parts = list(self.vault.sealed(new.receiver_id, new.message_id, spool.chunks(PART), PART))
            else:
                name = self._file_blob(new, spool)
            self.commits.submit(Pending(new=new, size=spool.size, sha256=spool.sha256, blob=name, parts=parts,
                                        record=record))
        except (IntegrityError, QuotaExceeded, DuplicateMessageId):
            self._drop_file(name)
            raise  # put() decides whether that is the same document sent again
        except BaseException as exc:
            self._drop_file(name)
            with translated("cannot store the document"):
                raise exc

    def _commit(self, batch: list[Pending]) -> None:
        """One transaction for the puts of ``batch`` (see :mod:`gateway.jx.commit`); when one of their ids
        was stored before (or by another node meanwhile), each is committed on its own instead."""
        with translated("cannot store the document"):
            if any(item.blob is not None for item in batch):
                fsync_dir(self.blob_dir)  # every blob renamed in, durable before any row names it
            try:
                with self.turn(), self.durable.begin() as c:
                    self._insert_batch(c, batch)
            except IntegrityError as exc:
                if len(batch) == 1:  # put() looks the id up: the same document sent again, or other content
                    batch[0].error = exc
                    return
                for item in batch:
                    item.error = None
                    try:
                        with self.turn(), self.durable.begin() as c:
                            self._insert_batch(c, [item])
                    except IntegrityError as exc:
                        item.error = exc

    def _insert_batch(self, c: Connection, batch: list[Pending]) -> None:
        t, b = self.tables.document, self.tables.blob
        # An id stored before fails the insert (unique): then _commit puts each of the batch on its own.
        # Resent ids are rare, so no statement looks for them first; one sent twice in a batch is seen here.
        taken: set[str] = set()
        held_by = waiting(c, {item.new.receiver_id for item in batch})
        going = []
        for item in batch:
            new = item.new
            if new.message_id in taken:
                item.error = DuplicateMessageId(f"messageId {new.message_id!r} is taken", detail=new.message_id)
                continue
            held = held_by.setdefault(new.receiver_id, [0, 0])
            item.error = over_quota(self.settings, new.receiver_id, held, item.size)
            if item.error is None:
                held[0], held[1] = held[0] + 1, held[1] + item.size
                taken.add(new.message_id)
                going.append(item)
        if not going:
            return
        created = now_ms()
        rows = [dict(message_id=i.new.message_id, sender_id=i.new.sender_id, receiver_id=i.new.receiver_id,
                     format_type=i.new.format_type, document_type=i.new.document_type,
                     compress_type=i.new.compress_type, size=i.size, sha256=i.sha256, blob=i.blob,
                     source=i.new.source, state="ready", created_ms=created, deliveries=0) for i in going]
        if any(item.parts is not None for item in going):
            seqs = c.execute(insert(t).returning(t.c.seq, sort_by_parameter_order=True), rows).scalars().all()
            c.execute(insert(b), [dict(doc_seq=seq, part=n, data=data)
                                  for seq, item in zip(seqs, going, strict=True) for n, data in enumerate(item.parts or [])])
        else:
            c.execute(insert(t), rows)
        for item in going:
            self._log(c, item.record)

    def _insert_streaming(self, new: NewDocument, spool: Spool, record: LogRecord | None) -> None:
        """A document of several database parts: its own transaction, parts sealed as they are written."""
        try:
            with self.turn(), self.durable.begin() as c:
                self._check_quota(c, new.receiver_id, spool.size)
                seq = c.execute(insert(self.tables.document).values(
                    message_id=new.message_id, sender_id=new.sender_id, receiver_id=new.receiver_id,
                    format_type=new.format_type, document_type=new.document_type,
                    compress_type=new.compress_type, size=spool.size, sha256=spool.sha256, blob=None,
                    source=new.source, state="ready", created_ms=now_ms(), deliveries=0,
                ).returning(self.tables.document.c.seq)).scalar_one()
                self._database_blob(c, seq, new, spool)
                self._log(c, record)
        except (IntegrityError, QuotaExceeded):
            raise
        except BaseException as exc:
            with translated("cannot store the document"):
                raise exc

    def _drop_file(self, name: str | None) -> None:
        if name is not None:
            (self.blob_dir / name).unlink(missing_ok=True)

    def _file_blob(self, new: NewDocument, spool: Spool) -> str:
        """Move the fsynced spool into ``blobs/`` (sealed for its receiver if encrypting); the folder is
        fsynced by the commit, once for all the puts of its transaction."""
        name = f"{uuid.uuid4().hex}.doc"
        with translated("cannot store the document"):
            place(self.vault, spool, self.blob_dir / name, new.receiver_id, new.message_id)
        return name

    def _database_blob(self, c: Connection, seq: int, new: NewDocument, spool: Spool) -> None:
        for part, data in enumerate(self.vault.sealed(new.receiver_id, new.message_id, spool.chunks(PART), PART)):
            c.execute(insert(self.tables.blob).values(doc_seq=seq, part=part, data=data))

    def _log(self, c: Connection, record: LogRecord | None) -> None:
        if record is not None and self.log is not None:
            self.log(c, record)

    # -- lease -----------------------------------------------------------------

    def lease(self, receiver_id: str, *, format_type: str | None = None,
              document_type: str | None = None) -> Document | None:
        """Hand out the oldest deliverable document of ``receiver_id`` under a new lease, if any."""
        leased = self.hand_out(receiver_id, format_type=format_type, document_type=document_type)
        return leased.document if leased is not None else None

    def hand_out(self, receiver_id: str, *, format_type: str | None = None,
                 document_type: str | None = None) -> Leased | None:
        """:meth:`lease`, with the first database part of the document and the size of all of them read
        in the same statement (no second read for a document of one part; see :meth:`chunks`).

        One statement picks and leases (PostgreSQL: ``FOR UPDATE SKIP LOCKED`` in its subquery) — or
        parks as a dead letter a document handed out ``max_deliveries`` times, and then picks again."""
        statement = self.statements.hand_out(by_format=bool(format_type), by_type=bool(document_type))
        lease_ms = int(self.settings.lease_seconds * 1000)
        with translated("cannot hand out a document"), self._relaxed() as c:
            while True:
                now = now_ms()
                params = {"for_receiver": receiver_id, "at_ms": now, "until_ms": now + lease_ms}
                if format_type:
                    params["of_format"] = format_type
                if document_type:
                    params["of_type"] = document_type
                row = c.execute(statement, params).first()
                if row is None:
                    return None
                if row.state == "dead":
                    continue  # parked: the next one
                document = Document.of(row)
                if document.blob is not None:
                    return Leased(document)
                return Leased(document, int(row.stored_bytes), None if row.head is None else bytes(row.head))

    def chunks(self, document: Document, size: int = PART, leased: Leased | None = None) -> Generator[bytes, None, None]:
        """The document's bytes (authenticated if sealed: :class:`DocumentCorrupt`) in chunks of about ``size``;
        with what :meth:`hand_out` read of it (``leased``), what that holds is not read again."""
        if document.blob is not None:
            yield from self._file_chunks(document, size)
            return
        if leased is not None and leased.stored is not None:
            stored = leased.stored
        else:
            with translated(f"cannot read document {document.message_id!r}"), self.engine.connect() as c:
                stored = int(c.execute(select(func.coalesce(func.sum(func.length(self.tables.blob.c.data)), 0))
                                       .where(self.tables.blob.c.doc_seq == document.seq)).scalar_one())
        head = leased.head if leased is not None else None
        parts = self._database_chunks(document, head, stored)
        yield from self.vault.opened(document.receiver_id, document.message_id, document.size, stored, parts, size)

    def _file_chunks(self, document: Document, size: int) -> Iterator[bytes]:
        assert document.blob is not None
        with translated(f"cannot read document {document.message_id!r}"), \
                (self.blob_dir / document.blob).open("rb") as fh:
            yield from self.vault.opened(document.receiver_id, document.message_id, document.size,
                                         os.fstat(fh.fileno()).st_size, iter(lambda: fh.read(size), b""), size)

    def _database_chunks(self, document: Document, head: bytes | None = None, stored: int = 0) -> Iterator[bytes]:
        b = self.tables.blob
        part = 0
        if head is not None:
            yield head
            if len(head) >= stored:
                return  # the whole document was in its first part: nothing more to read
            part = 1
        while True:
            with translated(f"cannot read document {document.message_id!r}"), self.engine.connect() as c:
                data = c.execute(select(b.c.data).where(b.c.doc_seq == document.seq, b.c.part == part)).scalar()
            if data is None:
                return
            yield bytes(data)
            part += 1

    # -- confirm ---------------------------------------------------------------

    def confirm(self, message_id: str, sender_id: str, receiver_id: str) -> tuple[Document, bool]:
        """Mark delivered: the document, and ``False`` when it already was.

        An id unknown for this receiver (and sender, if given) is :class:`UnknownDocument`.
        """
        statement = self.statements.confirm(by_sender=bool(sender_id))
        t = self.tables.document
        with translated("cannot confirm the document"), self._relaxed() as c:
            params = {"of_message": message_id, "for_receiver": receiver_id, "at_ms": now_ms()}
            if sender_id:
                params["from_sender"] = sender_id
            row = c.execute(statement, params).first()
            if row is not None:  # one statement in the common case
                return Document.of(row), True
            row = c.execute(select(t).where(t.c.message_id == message_id)).first()
            if row is None or row.receiver_id != receiver_id or (sender_id and row.sender_id != sender_id):
                raise UnknownDocument(f"no document {message_id!r} from {sender_id!r} to {receiver_id!r}",
                                      detail=message_id)
            return Document.of(row), False  # confirmed before

    # -- operations ------------------------------------------------------------

    def find(self, message_id: str) -> Document | None:
        t = self.tables.document
        with translated("cannot read the JX documents"), self.engine.connect() as c:
            row = c.execute(select(t).where(t.c.message_id == message_id)).first()
        return Document.of(row) if row is not None else None

    def list(self, *, receiver_id: str | None = None, states: tuple[str, ...] = ("ready",),
             limit: int | None = None) -> list[Document]:
        """Documents in ``states`` (``leased`` counts as ``ready``), oldest first."""
        t = self.tables.document
        stmt = select(t).where(t.c.state.in_(states)).order_by(t.c.seq)
        if receiver_id is not None:
            stmt = stmt.where(t.c.receiver_id == receiver_id)
        if limit is not None:
            stmt = stmt.limit(limit)
        with translated("cannot read the JX documents"), self.engine.connect() as c:
            return [Document.of(row) for row in c.execute(stmt)]

    def counts(self) -> tuple[dict[str, int], int | None]:
        """Documents by shown state (ready, leased, confirmed, dead), and when the oldest waiting one arrived."""
        t = self.tables.document
        now = now_ms()
        leased = and_(t.c.state == "ready", t.c.lease_until_ms > now)
        shown = case((leased, "leased"), else_=t.c.state)
        with translated("cannot read the JX documents"), self.engine.connect() as c:
            rows = c.execute(select(shown, func.count()).group_by(shown)).all()
            oldest = c.execute(select(func.min(t.c.created_ms)).where(t.c.state == "ready")).scalar()
        found = {state: 0 for state in ("ready", "leased", "confirmed", "dead")}
        found.update({str(state): int(n) for state, n in rows})
        return found, None if oldest is None else int(oldest)

    def requeue(self, message_id: str) -> Document:
        """Make a document deliverable again at once: ready, no lease, delivery count reset."""
        t = self.tables.document
        with translated("cannot requeue the document"), self.engine.begin() as c:
            done = c.execute(update(t).where(t.c.message_id == message_id).values(
                state="ready", lease_until_ms=None, lease_node=None, deliveries=0, confirmed_ms=None))
            if done.rowcount == 0:
                raise UnknownDocument(f"no document {message_id!r}", detail=message_id)
            return Document.of(c.execute(select(t).where(t.c.message_id == message_id)).one())

    def purge(self, confirmed_before_ms: int) -> int:
        """Delete documents confirmed before the time, with their bytes; returns how many."""
        t, b = self.tables.document, self.tables.blob
        with translated("cannot purge documents"), self.engine.begin() as c:
            old = c.execute(select(t.c.seq, t.c.blob).where(
                t.c.state == "confirmed", t.c.confirmed_ms < confirmed_before_ms)).all()
            seqs = [row.seq for row in old]
            for start in range(0, len(seqs), 500):
                batch = seqs[start:start + 500]
                c.execute(delete(b).where(b.c.doc_seq.in_(batch)))
                c.execute(delete(t).where(t.c.seq.in_(batch)))
        for row in old:  # after the commit: a file is never missing for a row that exists
            if row.blob is not None:
                (self.blob_dir / row.blob).unlink(missing_ok=True)
        return len(old)


def _safe_node(node: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in node) or "node"
