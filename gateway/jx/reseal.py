"""Re-sealing one organisation's JX documents and mailbox messages under its newest data key
generation (``bmrgw keys rotate --org``), and counting what each generation still seals
(``bmrgw keys status``).

Which generation sealed a document is read from its stored bytes (the sealed header names
it; content stored before encryption was on counts as generation 0).  A re-seal works in
batches, each one transaction of the store's write engine (SQLite ``BEGIN IMMEDIATE``;
PostgreSQL row locks, ``SKIP LOCKED``), so gateways keep serving between batches:

- a document in a file is opened (authenticated) and sealed anew into a hidden file beside it,
  fsynced, then renamed over the old one — a reader holding the old file open keeps reading the
  old one, and the row does not change (same size and SHA-256);
- a document in ``jx_blob`` rows gets its new parts under negative part numbers first; the old
  parts are deleted and the new ones renumbered in the same transaction.

Documents under a lease are left for a later pass (a Get streams the document it leased), so a
reader never sees its document change under it.  Nothing records progress: a re-run after a
crash re-seals whatever is still under an old generation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection, delete, func, insert, select, update

from ..crypto import DataKey, KeyRing
from ..crypto.seal import HEADER_BYTES, header_generation, regroup, seal
from ..durable import private_open
from ..errors import CommandError, DocumentCorrupt, KeyUnavailable
from .engine import translated
from .files import fsync_dir
from .store import PART, Document, DocumentStore, now_ms

__all__ = ["Held", "Pass", "census", "old_documents", "older_keys", "reseal_batch", "rotate_org", "KeyOf", "Others"]

#: Documents read per query while counting.
_PAGE = 500
#: Passes that re-seal nothing and meet no lease before a rotation stops with old content left.
_IDLE_PASSES = 3


@dataclass
class Held:
    """Documents (and their content bytes) sealed under one generation."""

    documents: int = 0
    bytes: int = 0


@dataclass
class Pass:
    """Where a re-sealing pass is: the last document looked at, and what it did so far."""

    after_seq: int = 0
    resealed: int = 0
    resealed_bytes: int = 0
    leased: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """message id → why it could not be re-sealed (destroyed key, corrupt content)."""
    done: bool = False


def generation_of(store: DocumentStore, c: Connection, document: Document) -> int | None:
    """The generation that sealed ``document`` (0: stored in plaintext; ``None``: its bytes are gone
    or are no sealed stream of the right length)."""
    if document.blob is not None:
        try:
            with (store.blob_dir / document.blob).open("rb") as fh:
                stored, first = os.fstat(fh.fileno()).st_size, fh.read(HEADER_BYTES)
        except FileNotFoundError:
            return None
    else:
        b = store.tables.blob
        stored = int(c.execute(select(func.coalesce(func.sum(func.length(b.c.data)), 0))
                               .where(b.c.doc_seq == document.seq, b.c.part >= 0)).scalar_one())
        head = c.execute(select(func.substr(b.c.data, 1, HEADER_BYTES))
                         .where(b.c.doc_seq == document.seq, b.c.part == 0)).scalar()
        first = bytes(head) if head is not None else b""
    return 0 if stored == document.size else header_generation(first)


def census(store: DocumentStore, org: str | None = None) -> dict[str, dict[int | None, Held]]:
    """Per organisation (receiver id), per generation (``None``: unreadable), the documents held
    in any state — ready, confirmed or dead, all of them rest sealed."""
    t = store.tables.document
    found: dict[str, dict[int | None, Held]] = {}
    after = 0
    while True:
        stmt = select(t).where(t.c.seq > after).order_by(t.c.seq).limit(_PAGE)
        if org is not None:
            stmt = stmt.where(t.c.receiver_id == org)
        with translated("cannot read the JX documents"), store.engine.connect() as c:
            page = [Document.of(row) for row in c.execute(stmt)]
            for document in page:
                held = found.setdefault(document.receiver_id, {}).setdefault(generation_of(store, c, document), Held())
                held.documents += 1
                held.bytes += document.size
        if len(page) < _PAGE:
            return found
        after = page[-1].seq


def reseal_batch(store: DocumentStore, ring: KeyRing, key: DataKey, progress: Pass, batch: int) -> Pass:
    """Look at the next ``batch`` documents of ``key.org`` after ``progress.after_seq`` in one
    transaction, re-sealing under ``key`` those under an older generation; ``progress.done`` once
    none are left to look at."""
    t = store.tables.document
    renamed = False
    older = older_keys(ring, key)  # unwrapped before the transaction, which holds the SQLite write lock
    with translated("cannot re-seal documents"), store.durable.begin() as c:
        rows = c.execute(select(t).where(t.c.receiver_id == key.org, t.c.seq > progress.after_seq)
                         .order_by(t.c.seq).limit(batch).with_for_update(skip_locked=True)).all()
        now = now_ms()
        for row in rows:
            document = Document.of(row)
            progress.after_seq = document.seq
            generation = generation_of(store, c, document)
            if generation is None or generation >= key.generation:
                continue
            if document.lease_until_ms is not None and document.lease_until_ms > now:
                progress.leased += 1  # a Get may be streaming it: a later pass takes it
                continue
            try:
                if document.blob is not None:
                    _reseal_file(store, older, key, document)
                    renamed = True
                else:
                    with c.begin_nested():  # a failure part-way leaves no new parts behind
                        _reseal_rows(store, older, key, c, document)
            except (DocumentCorrupt, KeyUnavailable) as exc:  # a destroyed key, tampered content: left as it is, reported
                progress.failed[document.message_id] = str(exc)
                continue
            progress.resealed += 1
            progress.resealed_bytes += document.size
        if renamed:
            fsync_dir(store.blob_dir)  # the renames are durable before the batch counts as done
    progress.done = len(rows) < batch
    return progress


KeyOf = Callable[[str, int], DataKey]
#: Re-seals the organisation's content outside the JX store (staged file parts) under the key given,
#: opening it with the keys of ``KeyOf``; returns how many items it re-sealed and how many are left
#: under an older generation (failed, or out of reach).
Others = Callable[[DataKey, KeyOf], tuple[int, int]]


def older_keys(ring: KeyRing, key: DataKey) -> KeyOf:
    """The live data keys of ``key.org``, unwrapped once, for opening content under any of them."""
    keys = {generation: ring.key_of(key.org, generation) for generation in ring.live_generations(key.org)}

    def key_of(org: str, generation: int) -> DataKey:
        found = keys.get(generation) if org == key.org else None
        if found is None:
            raise KeyUnavailable(f"the data key of {org!r} (generation {generation}) is not live", detail=org)
        return found

    return key_of


def _opened(store: DocumentStore, keys: KeyOf, document: Document, stored: int,
            pieces: Iterator[bytes]) -> Iterator[bytes]:
    return store.vault.opened(document.receiver_id, document.message_id, document.size, stored, pieces, PART, keys)


def _reseal_file(store: DocumentStore, keys: KeyOf, key: DataKey, document: Document) -> None:
    assert document.blob is not None
    path = store.blob_dir / document.blob
    tmp = store.blob_dir / f".{document.blob}.reseal"
    tmp.unlink(missing_ok=True)  # left by a re-seal that crashed before its rename
    try:
        with path.open("rb") as old, os.fdopen(private_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as out:
            content = _opened(store, keys, document, os.fstat(old.fileno()).st_size, iter(lambda: old.read(PART), b""))
            for piece in regroup(seal(key, document.message_id, content), PART):
                out.write(piece)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reseal_rows(store: DocumentStore, keys: KeyOf, key: DataKey, c: Connection, document: Document) -> None:
    b = store.tables.blob
    c.execute(delete(b).where(b.c.doc_seq == document.seq, b.c.part < 0))  # none, unless a bug left some
    stored = int(c.execute(select(func.coalesce(func.sum(func.length(b.c.data)), 0))
                           .where(b.c.doc_seq == document.seq)).scalar_one())

    def parts() -> Iterator[bytes]:
        part = 0
        while (data := c.execute(select(b.c.data).where(b.c.doc_seq == document.seq, b.c.part == part)).scalar()) \
                is not None:
            yield bytes(data)
            part += 1

    content = _opened(store, keys, document, stored, parts())
    for number, data in enumerate(regroup(seal(key, document.message_id, content), PART)):
        c.execute(insert(b).values(doc_seq=document.seq, part=-(number + 1), data=data))
    c.execute(delete(b).where(b.c.doc_seq == document.seq, b.c.part >= 0))
    c.execute(update(b).where(b.c.doc_seq == document.seq, b.c.part < 0).values(part=-b.c.part - 1))



def old_documents(store: DocumentStore, ring: KeyRing, key: DataKey) -> Held:
    """What of ``key.org`` is still sealed under an older live generation (or stored in plaintext);
    content under a destroyed generation is unreadable and not counted."""
    left = Held()
    live = ring.live_generations(key.org)
    for generation, held in census(store, key.org).get(key.org, {}).items():
        if generation is not None and generation < key.generation and (generation == 0 or generation in live):
            left.documents += held.documents
            left.bytes += held.bytes
    return left


def rotate_org(store: DocumentStore, ring: KeyRing, org: str, *, batch: int, settle: float,
               say: Callable[[str], None], others: Others | None = None) -> tuple[DataKey, Held, int]:
    """Give ``org`` a new data key generation — or, when it has several live ones, continue the rotation
    a crash or kill left unfinished — and re-seal its documents under it, pass after pass, until none
    is left under an older generation; then delete the older keys.  ``settle`` seconds after the new
    generation was made every gateway seals under it (:data:`gateway.crypto.ring.RECHECK_SECONDS`); a
    last pass after that takes what they sealed under the old one meanwhile.  ``others`` re-seals, in
    every pass, what the organisation has outside the JX store (staged file parts).  Returns the new
    key, the documents and the other items that could not be re-sealed (then the older keys stay)."""
    live = ring.live_generations(org)
    if not live:
        raise CommandError(f"{org!r} has no data key: nothing is sealed for it (see 'bmrgw keys status')")
    if len(live) > 1:
        key = ring.key_of(org, max(live))
        say(f"{org}: continuing the rotation to generation {key.generation} (generations "
            f"{', '.join(map(str, sorted(live)))} live)")
    else:
        key = ring.new_generation(org)
        live = ring.live_generations(org)
        say(f"{org}: made data key generation {key.generation}; new content is sealed under it")
    settled_at = live.get(key.generation, now_ms()) / 1000 + settle
    idle = others_left = 0
    while True:
        progress = Pass()
        while not progress.done:
            reseal_batch(store, ring, key, progress, batch)
        others_done, others_left = others(key, older_keys(ring, key)) if others is not None else (0, 0)
        say(f"{org}: re-sealed {progress.resealed} document(s), {progress.resealed_bytes} bytes"
            + (f"; {progress.leased} under a lease left for the next pass" if progress.leased else "")
            + (f"; {len(progress.failed)} could not be opened" if progress.failed else ""))
        for message_id, why in progress.failed.items():
            say(f"{org}: {message_id}: {why}")
        wait = settled_at - time.time()
        if wait > 0:
            say(f"{org}: waiting {wait:.0f} s until every gateway seals under generation {key.generation}")
            time.sleep(wait)
            continue
        left = old_documents(store, ring, key)
        idle = idle + 1 if progress.resealed == 0 and progress.leased == 0 and others_done == 0 else 0
        if (left.documents <= len(progress.failed) and others_left == 0) or idle == _IDLE_PASSES:
            break
        if progress.resealed == 0 and others_done == 0:
            time.sleep(1.0)  # leased (or row-locked) ones left: their leases run out or they are confirmed
    if left.documents == 0 and others_left == 0:
        dropped = ring.drop_generations(org, key.generation)
        say(f"{org}: nothing is sealed under an older generation any more: deleted {dropped} older data key(s)")
    else:
        say(f"{org}: {left.documents} document(s), {left.bytes} bytes and {others_left} staged part(s) or "
            "folder(s) still under an older generation: its data key stays (run again after fixing or purging them)")
    return key, left, others_left
