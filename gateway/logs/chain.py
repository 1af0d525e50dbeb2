"""Tamper evidence for the send/receive logs: hash chains, verification, archives.

SPEC.md capability (G) asks for logs an auditor can trust.  Every node's
records form a chain::

    hash = sha256(bytes.fromhex(prev_hash) || canonical(record))

where ``canonical`` is the record's SPEC.md JSON object without ``prev_hash``
and ``hash``, with sorted keys, no insignificant white space, UTF-8 — so an
auditor can recompute it from ``bmrgw logs --format json`` alone.  The first
record of a chain has ``prev_hash`` = 64 zeros and seq 1.

:func:`verify` walks every chain (archives first, then the database) and
names each problem: a record whose contents no longer match its hash
(*altered*), a gap in the seqs or missing newest records (*deleted*), a
record the chain does not account for (*inserted*), and archive files that
are missing or do not match their anchors.  A plain chain cannot catch an
attacker who rewrites it from the first changed record to the head with
recomputed hashes; with the log key (:mod:`gateway.logs.key`) links are
HMACs he cannot recompute (*unkeyed* names links not made with the key), and
the checkpoints of every chain's head, kept off the database host, show a
cut-back chain (*deleted*) or a dropped one (*missing*).

:func:`archive` moves records older than a date (a prefix of each chain) to
a gzip JSON-lines file.  Its first line carries each chain's anchors — the
hash before the first archived record and the hash of the last one — and
the name of the previous archive file, and the chain-head row remembers the
newest file, so verification runs from seq 1 across every archive boundary
and notices an altered, truncated or missing archive.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, or_, select, update

from gateway.durable import fsync_dir, private_dir, private_open
from gateway.errors import ArchiveUnreadable, JournalUnavailable
from gateway.store import snapshot

from .key import Checkpoint
from .records import GENESIS, LogRecord, chain_hash
from .tables import TABLES, Head, LogTables, has_log, heads, read_chain, translated

__all__ = ["verify", "archive", "archive_header", "Problem", "Report", "ArchiveResult", "ARCHIVE_FORMAT"]

ARCHIVE_FORMAT = "bmrgw-log-archive/1"
_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


# -- verification --------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Problem:
    """One finding of :func:`verify`."""

    node: str
    kind: str
    """``altered``, ``deleted``, ``inserted``, ``archive``, ``unkeyed`` (not written with the log key),
    ``missing`` (a checkpointed chain is gone) or ``checkpoint`` (a checkpoint line does not pass)."""
    first: int | None
    """First seq concerned (``None`` when unknown)."""
    last: int | None
    detail: str

    def __str__(self) -> str:
        where = "" if self.first is None else (
            f" seq {self.first}" if self.first == self.last else f" seq {self.first}..{self.last}")
        return f"chain {self.node}:{where} {self.kind}: {self.detail}"


@dataclass
class ChainSummary:
    """What was checked of one chain."""

    node: str
    archived: int = 0
    """Records read from archive files."""
    stored: int = 0
    """Records read from the database."""
    last_seq: int = 0
    last_hash: str = GENESIS


@dataclass
class Report:
    """The result of :func:`verify`: per-chain summaries and every problem found."""

    chains: dict[str, ChainSummary] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    empty: bool = False
    """The store holds no log at all (no tables, or not one chain): nothing was verified."""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.empty


class _Walk:
    """Follows one chain record by record, remembering the last good link.

    With a ``key``, a link must be keyed (:func:`chain_hash`); plain links pass only as the
    prefix a chain had before the key was configured, so a chain rebuilt without the key — all
    plain, or plain after keyed — is reported ``unkeyed``.  ``marks`` are the chain's
    checkpoints by seq: each must still be on the chain, and the chain must reach the last.
    """

    def __init__(self, node: str, report: Report, head: Head, *, key: bytes | None = None,
                 marks: Mapping[int, Checkpoint] | None = None) -> None:
        self.node = node
        self.report = report
        self.head = head
        self.key = key
        self.marks = marks or {}
        self.seq, self.hash = 0, GENESIS
        self.summary = report.chains.setdefault(node, ChainSummary(node))
        self._altered_last = False
        self._keyed_seen = False
        self._unkeyed_from: int | None = None

    def problem(self, kind: str, first: int | None, last: int | None, detail: str) -> None:
        self.report.problems.append(Problem(node=self.node, kind=kind, first=first, last=last, detail=detail))

    def restart(self, seq: int, hash_: str) -> None:
        """Continue from an anchor (after a missing archive), without reporting the jump again."""
        self.seq, self.hash, self._altered_last = seq, hash_, False

    def feed(self, records: Iterable[LogRecord], where: str) -> int:
        """Check records in seq order; returns how many were read."""
        count = 0
        for seq, group in itertools.groupby(records, key=lambda r: r.seq):
            candidates = list(group)
            count += len(candidates)
            self._step(self._pick(seq, candidates, where), where)
        return count

    def _link(self, record: LogRecord) -> str | None:
        """``keyed`` or ``plain``: which link the record's hash is; None when it is neither."""
        if self.key is not None and chain_hash(record.prev_hash, record, self.key) == record.hash:
            return "keyed"
        return "plain" if chain_hash(record.prev_hash, record) == record.hash else None

    def _pick(self, seq: int, candidates: list[LogRecord], where: str) -> LogRecord:
        keep = next((r for r in candidates if r.prev_hash == self.hash and self._link(r) is not None),
                    candidates[0])
        for extra in candidates:
            if extra is not keep:
                self.problem("inserted", seq, seq, f"a second record with this seq in {where}")
        return keep

    def _step(self, record: LogRecord, where: str) -> None:
        if record.seq > self.head.seq:
            self.problem("inserted", record.seq, record.seq,
                         f"beyond the chain head (seq {self.head.seq}) in {where}")
            return
        if record.seq <= self.seq:
            self.problem("inserted", record.seq, record.seq, f"repeats an earlier record, in {where}")
            return
        if record.seq > self.seq + 1:
            self.problem("deleted", self.seq + 1, record.seq - 1, f"missing before seq {record.seq} in {where}")
        self._check_links(record, where)
        self.seq, self.hash = record.seq, record.hash
        mark = self.marks.get(record.seq)
        if mark is not None and mark.hash != record.hash:
            self.problem("altered", record.seq, record.seq,
                         f"not the record checkpointed at {mark.time} (its hash was {mark.hash[:16]}…), in {where}")

    def _check_links(self, record: LogRecord, where: str) -> None:
        link = self._link(record)
        altered = link is None
        self._check_key(record, link)
        if altered:
            hint = "" if self.key is not None else " (or keyed: verify with gateway.log_key)"
            self.problem("altered", record.seq, record.seq,
                         f"contents do not match the record's hash{hint}, in {where}")
        elif record.seq == self.seq + 1 and record.prev_hash != self.hash and not self._altered_last:
            # The previous record was changed and re-hashed: its successor still names the old hash.
            self.problem("altered", self.seq, self.seq,
                         f"its hash is not the prev_hash of seq {record.seq} (re-hashed after a change), in {where}")
        self._altered_last = altered

    def _check_key(self, record: LogRecord, link: str | None) -> None:
        if self.key is None:
            return
        if link == "keyed":
            self._keyed_seen = True
            self._end_unkeyed()
        elif link == "plain" and self._keyed_seen and self._unkeyed_from is None:
            self._unkeyed_from = record.seq

    def _end_unkeyed(self) -> None:
        if self._unkeyed_from is not None:
            self.problem("unkeyed", self._unkeyed_from, self.seq,
                         "plain links after keyed ones: not written with the log key")
            self._unkeyed_from = None

    def finish(self) -> None:
        """Compare the end of the walk with the chain head and the last checkpoint."""
        self.summary.last_seq, self.summary.last_hash = self.seq, self.hash
        self._end_unkeyed()
        if self.key is not None and not self._keyed_seen and self.seq:
            self.problem("unkeyed", 1, self.seq, "no record of this chain was written with the log key")
        if self.marks and self.seq < (last := max(self.marks)):
            self.problem("deleted", self.seq + 1, last,
                         f"the chain ends before its checkpoint of seq {last} at {self.marks[last].time}")
        if self.seq < self.head.seq:
            self.problem("deleted", self.seq + 1, self.head.seq,
                         f"newest records missing (the chain head is seq {self.head.seq})")
        elif self.hash != self.head.hash:
            self.problem("altered", self.seq, self.seq, "the last record does not match the chain head's hash")


def verify(engine: Engine, archive_dir: Path | None, *, tables: LogTables = TABLES, key: bytes | None = None,
           checkpoints: Mapping[str, Sequence[Checkpoint]] | None = None) -> Report:
    """Walk every chain through its archives and the database; see :class:`Report`.

    With ``key``, every chain must be keyed (see :class:`_Walk`).  With ``checkpoints`` (by node,
    already MAC-checked: :func:`gateway.logs.key.read_checkpoints`), each checkpointed record must
    be on its chain, each chain must reach its last checkpoint, and a checkpointed node whose chain
    is gone is reported ``missing``.

    The whole walk reads one snapshot of the database, so records that a
    running gateway appends meanwhile are not mistaken for insertions, nor
    records that an archive run moves out meanwhile for deletions (its file
    is written before its commit); each chain is walked up to its head.
    """
    report = Report()
    marks = {node: {c.seq: c for c in found} for node, found in (checkpoints or {}).items()}
    with translated("cannot verify the send/receive log"), snapshot(engine) as connection:  # one for the walk
        found = heads(connection, tables) if has_log(connection, tables) else {}
        for node, head in sorted(found.items()):
            _verify_chain(connection, tables, report, _Walk(node, report, head, key=key, marks=marks.get(node)),
                          archive_dir)
        if found:
            _report_strays(connection, tables, report)
    _report_missing(report, marks, found)
    report.empty = not found and not marks
    return report


def _report_missing(report: Report, marks: Mapping[str, Mapping[int, Checkpoint]], found: Mapping[str, Head]) -> None:
    """Checkpointed chains that have no head in the store: dropped, records and head row alike."""
    for node in sorted(set(marks) - set(found)):
        last = marks[node][max(marks[node])]
        report.chains.setdefault(node, ChainSummary(node))
        report.problems.append(Problem(node=node, kind="missing", first=1, last=last.seq,
                                       detail=f"the chain is not in the store (checkpointed up to seq {last.seq} "
                                       f"at {last.time})"))


def _verify_chain(connection: Connection, tables: LogTables, report: Report, walk: _Walk,
                  archive_dir: Path | None) -> None:
    head = walk.head
    if head.archived_seq:
        _walk_archives(walk, head, archive_dir)
    records = read_chain(connection, head.node, tables=tables, upto=head.seq)
    walk.summary.stored = walk.feed(records, "the database")
    walk.finish()


def _report_strays(connection: Connection, tables: LogTables, report: Report) -> None:
    """Records beyond their chain's head, or of a chain with no head: nobody appended them."""
    log_table, head = tables.log, tables.head
    stmt = (select(log_table.c.node, log_table.c.seq, head.c.node.label("head_node"))
            .select_from(log_table.outerjoin(head, log_table.c.node == head.c.node))
            .where(or_(head.c.node.is_(None), log_table.c.seq > head.c.seq))
            .order_by(log_table.c.node, log_table.c.seq))
    headless: set[str] = set()
    for row in connection.execute(stmt):
        if row.head_node is None:
            headless.add(row.node)
        else:
            report.problems.append(Problem(node=row.node, kind="inserted", first=row.seq, last=row.seq,
                                           detail="beyond the chain head: not appended by a gateway"))
    for node in sorted(headless):
        report.chains.setdefault(node, ChainSummary(node))
        report.problems.append(Problem(node=node, kind="inserted", first=None, last=None,
                                       detail="records of a chain that has no head: not written by a gateway"))


# -- archive files -------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Anchor:
    """One chain's part of an archive file, from the file's first line."""

    first_seq: int
    last_seq: int
    count: int
    prev_hash: str
    """Hash of the record before the first archived one (the chain's state entering the file)."""
    hash: str
    """Hash of the last archived record."""
    prev_archive: str | None
    """The file holding this chain's records before these."""


def archive_header(path: Path) -> dict[str, Any]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            header = json.loads(fh.readline())
    except (OSError, EOFError, ValueError) as exc:
        raise ArchiveUnreadable(f"{path.name}: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != ARCHIVE_FORMAT:
        raise ArchiveUnreadable(f"{path.name}: not a {ARCHIVE_FORMAT} file")
    return header


def _anchor(path: Path, node: str) -> Anchor:
    try:
        return Anchor(**archive_header(path)["chains"][node])
    except (KeyError, TypeError) as exc:
        raise ArchiveUnreadable(f"{path.name}: no anchor for chain {node}") from exc


def _archive_files(directory: Path, node: str, newest: str | None) -> tuple[list[tuple[Path, Anchor]], str | None]:
    """The chain's archive files oldest first, following prev_archive links; and the first unreadable one."""
    found: list[tuple[Path, Anchor]] = []
    name = newest
    while name is not None:
        path = directory / Path(name).name  # a name, never a path out of the archive directory
        try:
            anchor = _anchor(path, node)
        except ArchiveUnreadable as exc:
            return found[::-1], str(exc)
        found.append((path, anchor))
        name = anchor.prev_archive
    return found[::-1], None


def _archived_records(path: Path, node: str) -> Iterator[LogRecord]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            fh.readline()
            for number, line in enumerate(fh, start=2):
                data = json.loads(line)
                if data.get("node") == node:
                    yield LogRecord.from_json(data)
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveUnreadable(f"{path.name}: {exc}") from exc


def _walk_archives(walk: _Walk, head: Head, directory: Path | None) -> None:
    if directory is None:
        walk.problem("archive", 1, head.archived_seq, "archived records, but no archive directory was given")
        walk.restart(head.archived_seq, head.archived_hash)
        return
    files, unreadable = _archive_files(directory, walk.node, head.archive)
    if unreadable is not None:
        upto = files[0][1].first_seq - 1 if files else head.archived_seq
        walk.problem("archive", 1, upto, f"cannot be checked: archive {unreadable}")
        walk.restart(upto, files[0][1].prev_hash if files else head.archived_hash)
    for path, anchor in files:
        _walk_archive(walk, path, anchor)
    if (walk.seq, walk.hash) != (head.archived_seq, head.archived_hash):
        walk.problem("archive", head.archived_seq, head.archived_seq,
                     "the archives do not end where the chain head says archiving stopped")
        walk.restart(head.archived_seq, head.archived_hash)


def _walk_archive(walk: _Walk, path: Path, anchor: Anchor) -> None:
    where = f"archive {path.name}"
    if (anchor.first_seq - 1, anchor.prev_hash) != (walk.seq, walk.hash):
        walk.problem("archive", anchor.first_seq, anchor.last_seq,
                     f"{where}: opening anchor does not continue the chain")
    try:
        walk.summary.archived += walk.feed(_archived_records(path, walk.node), where)
    except ArchiveUnreadable as exc:
        walk.problem("archive", anchor.first_seq, anchor.last_seq, f"unreadable: {exc}")
        walk.restart(anchor.last_seq, anchor.hash)
        return
    if (walk.seq, walk.hash) != (anchor.last_seq, anchor.hash):
        walk.problem("archive", anchor.first_seq, anchor.last_seq,
                     f"{where}: closing anchor does not match its records")


# -- archiving -----------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ArchiveResult:
    """What :func:`archive` moved."""

    path: Path | None
    """The new archive file, or ``None`` when nothing was old enough."""
    chains: dict[str, Anchor]


@dataclass(frozen=True, kw_only=True)
class _Cut:
    head: Head
    upto: int
    hash: str
    count: int


def archive(engine: Engine, directory: Path, before: datetime, *, tables: LogTables = TABLES) -> ArchiveResult:
    """Move each chain's records older than ``before`` into one new gzip JSON-lines file.

    Only a prefix of each chain moves (up to the first record at or after
    ``before``), so the chain stays contiguous.  The file is complete and
    synced before the database rows are deleted; if that transaction fails
    the file is removed again.
    """
    with translated("cannot archive the send/receive log"):
        with engine.connect() as connection:
            cuts = _plan(connection, tables, before) if has_log(connection, tables) else {}
        if not cuts:
            return ArchiveResult(path=None, chains={})
        path, anchors = _write_archive(engine, directory, tables, cuts, before)
        try:
            with engine.begin() as connection:
                _commit_archive(connection, tables, cuts, path.name)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return ArchiveResult(path=path, chains=anchors)


def _plan(connection: Connection, tables: LogTables, before: datetime) -> dict[str, _Cut]:
    cuts: dict[str, _Cut] = {}
    for node, head in heads(connection, tables).items():
        cut = _cut(connection, tables, head, before.astimezone(UTC).replace(tzinfo=None))
        if cut is not None:
            cuts[node] = cut
    return cuts


def _cut(connection: Connection, tables: LogTables, head: Head, before: datetime) -> _Cut | None:
    t = tables.log
    mine = (t.c.node == head.node, t.c.seq > head.archived_seq, t.c.seq <= head.seq)
    young = connection.execute(select(func.min(t.c.seq)).where(*mine, t.c.ts >= before)).scalar()
    limit = head.seq if young is None else young - 1
    last = connection.execute(select(t.c.seq, t.c.hash).where(*mine, t.c.seq <= limit)
                              .order_by(t.c.seq.desc()).limit(1)).first()
    if last is None:
        return None
    count = connection.execute(select(func.count()).where(*mine, t.c.seq <= last.seq)).scalar_one()
    return _Cut(head=head, upto=int(last.seq), hash=str(last.hash), count=int(count))


def _write_archive(engine: Engine, directory: Path, tables: LogTables, cuts: dict[str, _Cut],
                   before: datetime) -> tuple[Path, dict[str, Anchor]]:
    private_dir(directory)
    created = datetime.now(UTC)
    path = directory / f"{tables.log.name}-{created:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}.jsonl.gz"
    anchors = {node: _anchor_of(cut) for node, cut in cuts.items()}
    header = {"format": ARCHIVE_FORMAT, "created": created.isoformat(), "before": before.isoformat(),
              "table": tables.log.name, "chains": {n: asdict(a) for n, a in anchors.items()}}
    partial = path.with_name(f".{path.name}.partial")
    try:
        with engine.connect() as connection, os.fdopen(private_open(partial, _NEW), "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(_line(header))
                for node, cut in cuts.items():
                    for record in read_chain(connection, node, tables=tables,
                                             after=cut.head.archived_seq, upto=cut.upto):
                        gz.write(_line(record.to_json()))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, path)
        fsync_dir(directory)
    finally:
        partial.unlink(missing_ok=True)
    return path, anchors


def _anchor_of(cut: _Cut) -> Anchor:
    return Anchor(first_seq=cut.head.archived_seq + 1, last_seq=cut.upto, count=cut.count,
                  prev_hash=cut.head.archived_hash, hash=cut.hash, prev_archive=cut.head.archive)


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _commit_archive(connection: Connection, tables: LogTables, cuts: dict[str, _Cut], name: str) -> None:
    head, log_table = tables.head, tables.log
    for node, cut in cuts.items():
        moved = connection.execute(
            update(head).where(head.c.node == node, head.c.archived_seq == cut.head.archived_seq)
            .values(archived_seq=cut.upto, archived_hash=cut.hash, archive=name))
        if moved.rowcount != 1:
            raise JournalUnavailable(f"chain {node} was archived by another run at the same time; try again")
        connection.execute(delete(log_table).where(log_table.c.node == node, log_table.c.seq <= cut.upto))
