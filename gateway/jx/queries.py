"""The JX store's hot statements, built once with bound parameters (:mod:`gateway.jx.store`).

Building a SQLAlchemy Core statement and its cache key costs more CPU than SQLite takes to run
it (bench/PROFILE.md, JX part): the hand-out and the confirm of every cycle reuse one statement
object each, and only their parameters change.

Their parameters are named unlike any column (an UPDATE's parameter named as a column would set
that column).  Each is a single statement, so it is atomic on its own: on PostgreSQL the store runs them on an
autocommit engine (one round trip, no BEGIN and COMMIT around them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import BigInteger, Update, bindparam, case, func, or_, select, update

from .documents import TABLES

__all__ = ["Statements"]

_T, _B = TABLES.document, TABLES.blob


@dataclass
class Statements:
    """The hand-out and confirm statements of one store (its ``max_deliveries`` and node are fixed)."""

    max_deliveries: int
    node: str
    _hand_outs: dict[tuple[bool, bool], Update] = field(default_factory=dict)
    _confirms: dict[bool, Update] = field(default_factory=dict)

    def hand_out(self, *, by_format: bool, by_type: bool) -> Update:
        """Pick the oldest deliverable document of ``:for_receiver`` at ``:at_ms`` (and ``:of_format``,
        ``:of_type`` when asked) and lease it until ``:until_ms`` — or park it as a dead letter
        when it was handed out ``max_deliveries`` times; returns its row, its stored bytes in
        ``jx_blob`` (``stored_bytes``) and its part 0 (``head``)."""
        key = (by_format, by_type)
        if key not in self._hand_outs:
            self._hand_outs[key] = self._build_hand_out(by_format, by_type)
        return self._hand_outs[key]

    def _build_hand_out(self, by_format: bool, by_type: bool) -> Update:
        t, b = _T, _B
        now = bindparam("at_ms", type_=BigInteger())
        spent = t.c.deliveries >= self.max_deliveries
        wanted = [t.c.receiver_id == bindparam("for_receiver"), t.c.state == "ready",
                  or_(t.c.lease_until_ms.is_(None), t.c.lease_until_ms <= now)]
        if by_format:
            wanted.append(t.c.format_type == bindparam("of_format"))
        if by_type:
            wanted.append(t.c.document_type == bindparam("of_type"))
        pick = (select(t.c.seq).where(*wanted).order_by(t.c.seq).limit(1)
                .with_for_update(skip_locked=True).scalar_subquery())
        extra = [select(func.coalesce(func.sum(func.length(b.c.data)), 0)).where(b.c.doc_seq == t.c.seq)
                 .scalar_subquery().label("stored_bytes"),
                 select(b.c.data).where(b.c.doc_seq == t.c.seq, b.c.part == 0).scalar_subquery().label("head")]
        return update(t).where(t.c.seq == pick).values(
            state=case((spent, "dead"), else_=t.c.state),
            lease_until_ms=case((spent, None), else_=bindparam("until_ms", type_=BigInteger())),
            lease_node=case((spent, t.c.lease_node), else_=self.node),
            deliveries=case((spent, t.c.deliveries), else_=t.c.deliveries + 1),
            last_handout_ms=case((spent, t.c.last_handout_ms), else_=now),
        ).returning(*t.c, *extra)

    def confirm(self, *, by_sender: bool) -> Update:
        """Mark ``:of_message`` of ``:for_receiver`` (and ``:from_sender``) confirmed at ``:at_ms`` unless it is
        already; returns its row, or none (unknown, or confirmed before)."""
        if by_sender not in self._confirms:
            t = _T
            match = [t.c.message_id == bindparam("of_message"), t.c.receiver_id == bindparam("for_receiver"),
                     t.c.state != "confirmed"]
            if by_sender:
                match.append(t.c.sender_id == bindparam("from_sender"))
            self._confirms[by_sender] = update(t).where(*match).values(
                state="confirmed", confirmed_ms=bindparam("at_ms", type_=BigInteger()), lease_until_ms=None).returning(*t.c)
        return self._confirms[by_sender]
