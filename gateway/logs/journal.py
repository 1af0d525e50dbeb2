"""The send/receive log store (SPEC.md capability (G), "Log record").

One :class:`LogRecord` per exchange and direction — a relayed request, its
response, a JX operation, a refdb push, a file part — in one SQLAlchemy Core
table that works unchanged on SQLite (WAL) and PostgreSQL.

Writing.  :class:`Journal` keeps the request path free of database work:
:meth:`Journal.record` puts the record (or a relayed exchange's two, as one
:class:`RelayExchange` tuple) on a bounded queue and returns; a
writer process (:mod:`gateway.writer`, so sealing and inserting never hold
the event loop's GIL, and the batch goes over a socket the event loop itself
waits on) commits whatever has accumulated as one transaction
(group commit).  The writer lets a batch gather for ``linger`` (50 ms),
counted from when the previous batch was taken: each batch costs the event
loop and the writer a fixed amount (a round trip, a transaction, the chain
head's lock), so batches of a few records cost several times more per record
than batches of hundreds, while records that already waited for a slow
commit go out as soon as it is done.  A record is durable within the linger
plus a commit's time, or two commits' times when it arrived during a commit
(well under 200 ms on a healthy store), and :meth:`Journal.close` flushes
everything.  When the queue is full — the store is slow or down — the
producer *waits* up to ``max_wait`` seconds for room and then gets
:class:`JournalUnavailable`: records are never dropped silently, and the
caller decides (the relay should refuse the exchange rather than relay it
unlogged).  An exchange whose effect is itself durable (a stored JX
document, a refdb push) is logged with :meth:`Journal.write_in` inside the
caller's own transaction instead, so the effect and its record commit or
vanish together.

Chaining.  Each node (gateway name, later plus a worker suffix) appends to
its own hash chain (see :mod:`gateway.chain`).  The chain head — last seq
and hash, and where archiving stopped — lives in a second table and is
updated in the same transaction as the records; the head row is locked
first, so appends to one chain are serialised across processes and threads,
chains continue across restarts, and deleting the newest records is
detectable.  Two processes with different node names never touch each
other's chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError
from sqlalchemy.sql import ColumnElement

from gateway.errors import ServerFault
from gateway.store import insert_rows, sqlite_datetime

from .clock import Now
from .writer import WriterError, WriterProcess

__all__ = [
    "LogRecord",
    "RelayExchange",
    "Entry",
    "describe",
    "text_problem",
    "LogFilter",
    "LogTables",
    "Head",
    "Journal",
    "JournalUnavailable",
    "TABLES",
    "GENESIS",
    "FIELDS",
    "ATTRIBUTES",
    "TS_FORMAT",
    "log_tables",
    "ensure_schema",
    "append",
    "read",
    "read_chain",
    "read_new",
    "heads",
    "pack",
    "unpack",
    "made",
]

log = logging.getLogger(__name__)

#: The ``prev_hash`` of a chain's first record.
GENESIS = "0" * 64
STATUSES = ("ok", "fault", "error")
DIRECTIONS = ("request", "response")
#: JSON field names of SPEC.md "Log record", in output order.
FIELDS: tuple[str, ...] = (
    "ts", "ntp_offset", "ntp_synced", "message_id", "kind", "direction", "from", "to", "endpoint",
    "status", "bytes_in", "bytes_out", "duration_ms", "sha256", "client", "http_status", "fault_code",
    "node", "seq", "prev_hash", "hash",
)
#: JSON name → attribute (and column) name of every field; "from" and "to" are Python keywords.
ATTRIBUTES = {name: {"from": "from_ap", "to": "to_ap"}.get(name, name) for name in FIELDS}
#: How ``ts`` is written in JSON (and hashed): ISO 8601 UTC with microseconds.
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_MAX_TEXT = 2048
_MAX_ID = 256  # message ids are indexed; PostgreSQL b-tree entries must stay under ~2.7 kB
_TEXTS = ("message_id", "from_ap", "to_ap", "endpoint", "sha256", "client", "fault_code", "kind", "node")


class JournalUnavailable(ServerFault, RuntimeError):
    """Raised when the log store cannot take or give records (queue full, store down)."""

    code = "LogUnavailable"
    http_status = 503


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn SQLAlchemy errors into :class:`JournalUnavailable` (one line, no traceback on the CLI)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise JournalUnavailable(f"{what}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """The first line of the driver's message, without SQLAlchemy's SQL and parameters."""
    text = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the record ----------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class LogRecord:
    """One logged exchange in one direction (SPEC.md "Log record").

    Values are normalised on construction (UTC time, floats rounded to the
    microsecond, no ``-0.0``) so that a record read back from either database
    serialises to exactly the bytes that were hashed.  The chain fields are
    filled in by the journal when the record is appended.
    """

    ts: datetime
    """When the exchange happened, NTP-corrected (aware; stored as UTC)."""
    ntp_offset: float
    """Seconds the clock added to system time."""
    ntp_synced: bool
    """Whether the NTP time was synchronised (a good answer within 4 intervals)."""
    kind: str
    """``relay``, ``jx``, ``refdb``, ``file``, …"""
    direction: str
    """``request`` (towards the destination) or ``response`` (back to the caller)."""
    status: str
    """``ok``, ``fault`` (a SOAP fault, passed on or raised) or ``error`` (no answer)."""
    message_id: str | None = None
    from_ap: str | None = None
    """Sender business-AP name (JSON ``from``)."""
    to_ap: str | None = None
    """Destination business-AP name (JSON ``to``)."""
    endpoint: str | None = None
    """Where it went: upstream URL, peer gateway, mailbox id."""
    bytes_in: int = 0
    """Bytes the gateway received in this direction."""
    bytes_out: int = 0
    """Bytes the gateway sent on in this direction."""
    duration_ms: float = 0.0
    sha256: str | None = None
    """SHA-256 (hex) of the payload."""
    client: str | None = None
    """Authenticated client identity, if any."""
    http_status: int | None = None
    fault_code: str | None = None
    """SOAP fault code or gateway error code."""
    node: str = ""
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    def __post_init__(self) -> None:
        _normalise(self.__dict__)  # in place: frozen forbids setting attributes, not this

    @classmethod
    def at(cls, now: Now, **values: Any) -> LogRecord:
        """A record stamped with a reading of :meth:`gateway.clock.Clock.now`."""
        return cls(ts=now.ts, ntp_offset=now.offset, ntp_synced=now.synced, **values)

    def to_json(self) -> dict[str, Any]:
        """The SPEC.md JSON object: ``from``/``to`` names, ISO 8601 UTC ``ts`` with microseconds."""
        out = dict(zip(FIELDS, _JSON_VALUES(self), strict=True))
        out["ts"] = self.ts.strftime(TS_FORMAT)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogRecord:
        """Inverse of :meth:`to_json` (archives); ``KeyError``/``ValueError`` if a field is missing or ``ts`` bad."""
        values = {ATTRIBUTES[name]: data[name] for name in FIELDS}
        values["ts"] = datetime.fromisoformat(str(data["ts"]))
        return stored(values)


def stored(values: dict[str, Any]) -> LogRecord:
    """A record from stored values, as they are.

    Values that fail validation were changed outside the gateway; the record
    is kept unnormalised so that verification reports it as altered (its hash
    no longer matches) and ``bmrgw logs`` still shows it, instead of failing.
    """
    try:
        return LogRecord(**values)
    except (ValueError, TypeError):
        record = object.__new__(LogRecord)
        for name, value in values.items():
            _set(record, name, value)
        return record


class RelayExchange(NamedTuple):
    """One relayed exchange as the relay queues it: both records' values in one plain tuple.

    The relay logs two records per exchange, thousands of times a second.
    Building them (validating and normalising 21 fields each) is Python work
    the event loop would pay for; a tuple costs it a microsecond and travels
    to the writer process as it is, which builds the records with
    :meth:`records` — with the same validation as anywhere else.  The names
    a client chose were checked against the record's limits when they
    arrived (:func:`text_problem`), so a tuple the relay queues always
    makes valid records.
    """

    arrived_time: float
    """When the request arrived, NTP-corrected POSIX seconds (:class:`gateway.clock.Reading`)."""
    arrived_offset: float
    arrived_synced: bool
    ended_time: float
    ended_offset: float
    ended_synced: bool
    request_status: str
    status: str
    message_id: str | None
    from_ap: str | None
    to_ap: str | None
    endpoint: str | None
    client: str | None
    request_bytes_in: int
    request_bytes_out: int
    request_sha256: str
    request_ms: float
    response_bytes_in: int
    response_bytes_out: int
    response_sha256: str
    response_ms: float
    http_status: int | None
    fault_code: str | None

    def records(self) -> tuple[LogRecord, LogRecord]:
        """The request and the response record; ``ValueError`` if a value is not valid."""
        # Values straight into each record's __dict__ (no keyword call of the frozen dataclass's
        # __init__, 21 setattrs): this runs twice per relayed exchange in the writer.
        shared = {**_UNCHAINED, "kind": "relay", "message_id": self.message_id, "from_ap": self.from_ap,
                  "to_ap": self.to_ap, "endpoint": self.endpoint, "client": self.client}
        request = {**shared, "ts": datetime.fromtimestamp(self.arrived_time, UTC), "ntp_offset": self.arrived_offset,
                   "ntp_synced": self.arrived_synced, "direction": "request", "status": self.request_status,
                   "bytes_in": self.request_bytes_in, "bytes_out": self.request_bytes_out,
                   "sha256": self.request_sha256, "duration_ms": self.request_ms, "http_status": None,
                   "fault_code": None}
        response = {**shared, "ts": datetime.fromtimestamp(self.ended_time, UTC), "ntp_offset": self.ended_offset,
                    "ntp_synced": self.ended_synced, "direction": "response", "status": self.status,
                    "bytes_in": self.response_bytes_in, "bytes_out": self.response_bytes_out,
                    "sha256": self.response_sha256, "duration_ms": self.response_ms,
                    "http_status": self.http_status, "fault_code": self.fault_code}
        return made(_normalise(request)), made(_normalise(response))


#: What :meth:`Journal.record` takes: one record, or a relayed exchange's two.
Entry = LogRecord | RelayExchange


def describe(entry: Entry) -> str:
    """An entry as JSON for the process log, when it could not be logged where it belongs."""
    if isinstance(entry, LogRecord):
        return json.dumps(entry.to_json(), ensure_ascii=False, default=str)
    try:
        return json.dumps([r.to_json() for r in entry.records()], ensure_ascii=False, default=str)
    except ValueError:
        return json.dumps(entry._asdict(), ensure_ascii=False, default=str)


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    """A record's attribute values validated and normalised in place (``ValueError`` if one is not valid)."""
    ts = values["ts"]
    if ts.tzinfo is not UTC:
        if ts.tzinfo is None:
            raise ValueError("LogRecord.ts must be timezone-aware")
        values["ts"] = ts.astimezone(UTC)
    if (status := values["status"]) not in STATUSES:
        raise ValueError(f"LogRecord.status must be one of {', '.join(STATUSES)}, not {status!r}")
    if (direction := values["direction"]) not in DIRECTIONS:
        raise ValueError(f"LogRecord.direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    for name in _TEXTS:  # the common case inline: short ASCII without NUL (ASCII is valid UTF-8)
        value = values[name]
        if value is not None and not (type(value) is str and value.isascii() and len(value) <= _MAX_ID
                                      and "\0" not in value):
            _check_text(name, value)
    values["ntp_offset"] = _float(values["ntp_offset"], "ntp_offset", 6)
    values["duration_ms"] = _float(values["duration_ms"], "duration_ms", 3)
    if type(values["ntp_synced"]) is not bool:
        values["ntp_synced"] = bool(values["ntp_synced"])
    for name in ("bytes_in", "bytes_out", "seq"):
        value = values[name]
        if type(value) is not int or not 0 <= value < 2**63:
            values[name] = _count(value, name)
    if values["http_status"] is not None and type(values["http_status"]) is not int:
        values["http_status"] = int(values["http_status"])
    return values


def _set(record: LogRecord, name: str, value: Any) -> None:
    object.__setattr__(record, name, value)  # a frozen dataclass's field, for stored()'s unvalidated records


def _float(value: Any, name: str, digits: int) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"LogRecord.{name} must be finite, not {value!r}")
    return round(number, digits) + 0.0  # + 0.0 turns -0.0 into 0.0, which SQLite would do anyway


def _count(value: Any, name: str) -> int:
    number = int(value)
    if not 0 <= number < 2**63:  # a BIGINT column on both databases
        raise ValueError(f"LogRecord.{name} must be between 0 and 2**63-1, not {value!r}")
    return number


def _check_text(name: str, value: Any) -> None:
    if value is not None and (problem := text_problem(name, value)):
        raise ValueError(f"LogRecord.{name} {problem}")


def text_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the text field ``name`` of a record, or None if it can.

    For values a client chose (message ids, sender names): check them when
    they arrive, and answer a fault, instead of failing to log the exchange.
    """
    limit = _MAX_ID if name == "message_id" else _MAX_TEXT
    if type(value) is str and value.isascii() and len(value) <= limit and "\0" not in value:
        return None  # the common case, without encoding (ASCII is valid UTF-8)
    if not isinstance(value, str) or "\0" in value or len(value) > limit or not _utf8(value):
        return f"must be UTF-8 text of at most {limit} characters without NUL"
    return None


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: neither database nor the hash could take them
        return False
    return True


# -- the tables ----------------------------------------------------------------

@dataclass(frozen=True)
class LogTables:
    """The log table and its chain-head table, on their own MetaData."""

    metadata: MetaData
    log: Table
    head: Table


def log_tables(name: str = "exchange_log") -> LogTables:
    """Define the tables under ``name`` (tests and side-by-side stores use other names)."""
    metadata = MetaData()
    ident = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER keys
    log_table = Table(
        name, metadata,
        Column("id", ident, primary_key=True, autoincrement=True),
        Column("node", String(128), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("ts", DateTime, nullable=False),  # naive UTC: same on both databases
        Column("ntp_offset", Double, nullable=False),
        Column("ntp_synced", Boolean, nullable=False),
        Column("message_id", Text),
        Column("kind", String(32), nullable=False),
        Column("direction", String(16), nullable=False),
        Column("from_ap", Text),
        Column("to_ap", Text),
        Column("endpoint", Text),
        Column("status", String(8), nullable=False),
        Column("bytes_in", BigInteger, nullable=False),
        Column("bytes_out", BigInteger, nullable=False),
        Column("duration_ms", Double, nullable=False),
        Column("sha256", String(64)),
        Column("client", Text),
        Column("http_status", Integer),
        Column("fault_code", Text),
        Column("prev_hash", String(64), nullable=False),
        Column("hash", String(64), nullable=False),
        UniqueConstraint("node", "seq", name=f"uq_{name}_node_seq"),
        Index(f"ix_{name}_ts", "ts"),
        Index(f"ix_{name}_message_id", "message_id"),
    )
    head = Table(
        f"{name}_head", metadata,
        Column("node", String(128), primary_key=True),
        Column("seq", BigInteger, nullable=False),
        Column("hash", String(64), nullable=False),
        Column("archived_seq", BigInteger, nullable=False),
        Column("archived_hash", String(64), nullable=False),
        Column("archive", Text),
        Column("updated", DateTime, nullable=False),
    )
    return LogTables(metadata, log_table, head)


TABLES = log_tables()


@dataclass(frozen=True, kw_only=True)
class Head:
    """Where a chain stands: its last record, and the last record moved to an archive file."""

    node: str
    seq: int
    hash: str
    archived_seq: int = 0
    archived_hash: str = GENESIS
    archive: str | None = None
    """File name (in the archive directory) of the newest archive holding this chain."""


def ensure_schema(engine: Engine, tables: LogTables = TABLES) -> None:
    """Create the tables if missing (safe when another node does it at the same moment)."""
    with translated("cannot create the send/receive log tables"):
        try:
            tables.metadata.create_all(engine)
        except SQLAlchemyError:
            tables.metadata.create_all(engine)  # lost a creation race: the second pass finds them


def has_log(connection: Connection, tables: LogTables = TABLES) -> bool:
    return inspect(connection).has_table(tables.log.name)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


_COLUMNS = tuple(f.name for f in fields(LogRecord))
#: The chain fields of a record not yet appended (their defaults).
_UNCHAINED = {f.name: f.default for f in fields(LogRecord) if f.name in ("node", "seq", "prev_hash", "hash")}
assert _COLUMNS[0] == "ts", "_insert converts the first packed value"
_PACK = operator.attrgetter(*_COLUMNS)
_JSON_VALUES = operator.attrgetter(*ATTRIBUTES.values())


def to_row(record: LogRecord) -> dict[str, Any]:
    """Column values of a record."""
    row = dict(zip(_COLUMNS, _PACK(record), strict=True))
    row["ts"] = record.ts.replace(tzinfo=None)
    return row


#: First value of a packed :class:`RelayExchange` (a packed record starts with its ``ts``).
_EXCHANGE = "relay-exchange"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def pack(entry: Entry) -> tuple[Any, ...]:
    """An entry as a tuple of str, int, float, bool and None (``marshal`` takes it; a record's ``ts``
    becomes integer microseconds since 1970, exactly)."""
    if isinstance(entry, RelayExchange):
        return (_EXCHANGE, *entry)
    values = _PACK(entry)
    return ((values[0] - _EPOCH) // _MICROSECOND, *values[1:])


def unpack_entries(packed: Sequence[tuple[Any, ...]]) -> list[LogRecord]:
    """The records of packed entries, in order: the writer's side of :func:`pack`."""
    records: list[LogRecord] = []
    for values in packed:
        if values[0] == _EXCHANGE:
            records.extend(RelayExchange(*values[1:]).records())
        else:
            records.append(unpack(values))
    return records


def unpack(values: Sequence[Any]) -> LogRecord:
    """Inverse of :func:`pack`; the values were validated when the record was made."""
    if len(values) != len(_COLUMNS):
        raise ValueError(f"a packed log record has {len(_COLUMNS)} values, not {len(values)}")
    record = dict(zip(_COLUMNS, values))
    record["ts"] = _EPOCH + timedelta(microseconds=values[0])
    return made(record)


def made(values: dict[str, Any]) -> LogRecord:
    """A record of ``values``, every field's, already valid and normalised: set all at once, unchecked
    (the writer's hot path; anything else calls :class:`LogRecord`)."""
    record = object.__new__(LogRecord)
    object.__setattr__(record, "__dict__", values)
    return record


def from_row(row: Row[Any]) -> LogRecord:
    """A record from a row of the log table."""
    values = {name: getattr(row, name) for name in _COLUMNS}
    values["ts"] = row.ts.replace(tzinfo=UTC)
    return stored(values)


# -- appending -----------------------------------------------------------------

def append(connection: Connection, entries: Sequence[LogRecord], *, node: str,
           tables: LogTables = TABLES) -> list[LogRecord]:
    """Chain ``entries`` onto ``node``'s chain inside the caller's transaction; returns them sealed."""
    from .chain import seal  # chain.py builds on this module's records and tables

    _check_text("node", node)
    seq, prev = _lock_head(connection, tables, node)
    sealed: list[LogRecord] = []
    for entry in entries:
        seq += 1
        record = seal(entry, node=node, seq=seq, prev_hash=prev)
        prev = record.hash
        sealed.append(record)
    if sealed:
        _insert(connection, tables.log, sealed)
        connection.execute(update(tables.head).where(tables.head.c.node == node)
                           .values(seq=seq, hash=prev, updated=_utcnow()))
    return sealed


def _insert(connection: Connection, table: Table, records: list[LogRecord]) -> None:
    """Insert sealed records through the driver (:func:`gateway.store.insert_rows`): ``ts`` as the
    naive UTC SQLAlchemy stores, in SQLite's DATETIME storage format there."""
    if connection.dialect.name == "sqlite":
        rows = [(sqlite_datetime(r.ts.replace(tzinfo=None)), *_PACK(r)[1:]) for r in records]
    else:
        rows = [(r.ts.replace(tzinfo=None), *_PACK(r)[1:]) for r in records]
    insert_rows(connection, table, _COLUMNS, rows)


def _lock_head(connection: Connection, tables: LogTables, node: str) -> tuple[int, str]:
    head = tables.head
    _create_head(connection, head, node)
    # A no-op write takes the row lock (PostgreSQL) or the write lock (SQLite) before we read,
    # so two writers of one chain queue up instead of both extending the same head.
    connection.execute(update(head).where(head.c.node == node).values(seq=head.c.seq))
    row = connection.execute(select(head.c.seq, head.c.hash).where(head.c.node == node)).one()
    return int(row.seq), str(row.hash)


def _create_head(connection: Connection, head: Table, node: str) -> None:
    values = dict(node=node, seq=0, hash=GENESIS, archived_seq=0, archived_hash=GENESIS, updated=_utcnow())
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(pg_insert(head).values(**values).on_conflict_do_nothing(index_elements=["node"]))
    elif dialect == "sqlite":
        connection.execute(sqlite_insert(head).values(**values).on_conflict_do_nothing(index_elements=["node"]))
    elif connection.execute(select(head.c.node).where(head.c.node == node)).first() is None:
        connection.execute(insert(head).values(**values))


# -- the group-commit writer ---------------------------------------------------

#: How often a caller held back by a full log queue looks again (only under overload).
_ADMIT_POLL = 0.005


class Journal:
    """Appends records to one node's chain from a background group-commit writer.

    Use it inside the event loop::

        journal = Journal(store.engine, node=config.gateway.name)
        await journal.start()
        await journal.record(LogRecord.at(clock.now(), kind="relay", ...))
        await journal.close()
    """

    def __init__(self, engine: Engine, node: str, *, tables: LogTables = TABLES,
                 queue_size: int = 10_000, batch_size: int = 500, linger: float = 0.05,
                 max_wait: float = 2.0) -> None:
        self.engine = engine
        self.node = node
        self.tables = tables
        self.batch_size = batch_size
        self.linger = linger
        self.max_wait = max_wait
        self.written = 0
        self.batches = 0
        self.dropped = 0
        self.waits = 0
        self.last_error: str | None = None
        self._queue: asyncio.Queue[Entry] = asyncio.Queue(queue_size)
        if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
            raise ValueError("the send/receive log needs a database file or server, not an in-memory SQLite")
        self._writer = WriterProcess(engine.url.render_as_string(hide_password=False), node, tables.log.name)
        self._task: asyncio.Task[None] | None = None
        self._inflight: list[Entry] = []
        self._closed = False

    async def start(self) -> None:
        """Create the tables if needed and start the writer."""
        await asyncio.to_thread(ensure_schema, self.engine, self.tables)
        await self._writer.start()
        self._task = asyncio.create_task(self._run(), name=f"journal-{self.node}")

    async def record(self, entry: Entry) -> None:
        """Queue ``entry``; returns at once unless the queue is full (then waits up to ``max_wait``)."""
        if self._closed:
            raise JournalUnavailable("the send/receive log is closed")
        try:
            self._queue.put_nowait(entry)
            return
        except asyncio.QueueFull:
            self.waits += 1
        try:
            async with asyncio.timeout(self.max_wait):
                await self._queue.put(entry)
        except TimeoutError:
            raise JournalUnavailable(
                f"the send/receive log is {self._queue.maxsize} records behind"
                f" ({self.last_error or 'the store is slow'})") from None

    async def admit(self) -> None:
        """Return once the log can take an exchange's records; raise :class:`JournalUnavailable` if it cannot.

        The relay asks before it forwards anything, so that it refuses an
        exchange rather than relay one it cannot log.  A full queue first
        slows the caller down (up to ``max_wait``): under overload the
        gateway relays at the pace the store can log, and only a store that
        stays stuck turns into faults.
        """
        if self._closed or self._task is None or self._task.done():
            raise JournalUnavailable("the send/receive log is not running")
        if not self._queue.full():
            return
        self.waits += 1
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while self._queue.full():
            if asyncio.get_running_loop().time() > deadline:
                raise JournalUnavailable(f"the send/receive log is {self._queue.maxsize} records behind"
                                         f" ({self.last_error or 'the store is slow'})")
            await asyncio.sleep(_ADMIT_POLL)

    def write_in(self, connection: Connection, entry: LogRecord) -> LogRecord:
        """Append ``entry`` now, inside the caller's transaction (for durable effects); returns it sealed.

        Call it last before committing: it holds this chain's head lock until
        the caller's transaction ends.
        """
        return append(connection, [entry], node=self.node, tables=self.tables)[0]

    async def flush(self) -> None:
        """Wait until every record queued so far is committed (or given up)."""
        await self._queue.join()

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new records, commit the queued ones (up to ``timeout`` s), stop the writer."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                for entry in self._inflight:
                    log.error("send/receive log: commit unfinished at shutdown, maybe not logged: %s",
                              describe(entry))
                self._give_up(f"store unavailable at shutdown ({self.last_error})")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._give_up("the journal was closed before it was started")
        await self._writer.stop()

    def status(self) -> dict[str, Any]:
        """JSON-ready snapshot for ``/healthz`` and metrics."""
        running = self._task is not None and not self._task.done()
        return {"node": self.node, "running": running, "queued": self._queue.qsize(), "written": self.written,
                "batches": self.batches, "dropped": self.dropped, "producer_waits": self.waits,
                "last_error": self.last_error}

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        taken = loop.time()
        while True:
            batch = self._inflight = [await self._queue.get()]
            # Let a batch gather (per-batch costs dominate small batches) for ``linger`` from when the
            # previous one was taken: records that waited for its commit need not wait a linger more.
            if (rest := self.linger - (loop.time() - taken)) > 0 and self._queue.qsize() + 1 < self.batch_size:
                await asyncio.sleep(rest)
            taken = loop.time()
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                self._inflight = []
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[Entry]) -> None:
        backoff = 0.05
        while True:
            try:
                written = await self._writer.commit([pack(entry) for entry in batch])
            except Exception as exc:  # the writer must survive anything one batch can cause
                self.last_error = _reason(exc)
                if not _transient(exc):
                    await self._isolate(batch)
                    return
                log.warning("send/receive log: commit failed, retrying: %s", self.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                self.written += written
                self.batches += 1
                self.last_error = None
                return

    async def _isolate(self, batch: list[Entry]) -> None:
        # A record the database refuses must not block the ones behind it: split until it is alone.
        if len(batch) > 1:
            half = len(batch) // 2
            await self._commit(batch[:half])
            await self._commit(batch[half:])
            return
        self.dropped += 1
        log.error("send/receive log: record refused by the store (%s), not logged: %s",
                  self.last_error, describe(batch[0]))

    def _give_up(self, why: str) -> None:
        # Last resort: the records go to the process log rather than vanish.
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            self._queue.task_done()
            self.dropped += 1
            log.error("send/receive log: %s, not logged: %s", why, describe(entry))


def _transient(exc: Exception) -> bool:
    """Worth retrying: connection, lock and chain-race errors; not a value the store refuses."""
    if isinstance(exc, WriterError):
        return exc.transient
    return isinstance(exc, DBAPIError) and not isinstance(exc, DataError)


# -- reading -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class LogFilter:
    """Which records ``bmrgw logs`` shows; all conditions must hold."""

    since: datetime | None = None
    until: datetime | None = None
    ap: str | None = None
    """Business-AP name as sender or destination."""
    message_id: str | None = None
    status: str | None = None
    kind: str | None = None
    node: str | None = None

    def where(self, table: Table) -> list[ColumnElement[bool]]:
        c = table.c
        found: list[ColumnElement[bool]] = []
        if self.since is not None:
            found.append(c.ts >= _naive_utc(self.since))
        if self.until is not None:
            found.append(c.ts < _naive_utc(self.until))
        if self.ap is not None:
            found.append(or_(c.from_ap == self.ap, c.to_ap == self.ap))
        for name in ("message_id", "status", "kind", "node"):
            value = getattr(self, name)
            if value is not None:
                found.append(c[name] == value)
        return found


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def read(engine: Engine, filters: LogFilter = LogFilter(), *, tables: LogTables = TABLES,
         limit: int | None = None) -> Iterator[LogRecord]:
    """Matching records by time (the newest ``limit`` if given), streamed."""
    t = tables.log
    stmt = select(t).where(*filters.where(t))
    if limit is not None:
        newest = stmt.order_by(t.c.ts.desc(), t.c.id.desc()).limit(limit).subquery()
        stmt = select(newest).order_by(newest.c.ts, newest.c.node, newest.c.seq)
    else:
        stmt = stmt.order_by(t.c.ts, t.c.node, t.c.seq)
    with translated("cannot read the send/receive log"), engine.connect() as connection:
        if not has_log(connection, tables):
            return
        for row in connection.execute(stmt.execution_options(yield_per=1000)):
            yield from_row(row)


def read_chain(connection: Connection, node: str, *, tables: LogTables = TABLES,
               after: int = 0, upto: int | None = None) -> Iterator[LogRecord]:
    """One chain's records in seq order (``after`` < seq <= ``upto``), streamed."""
    t = tables.log
    stmt = select(t).where(t.c.node == node, t.c.seq > after)
    if upto is not None:
        stmt = stmt.where(t.c.seq <= upto)
    for row in connection.execute(stmt.order_by(t.c.seq, t.c.id).execution_options(yield_per=1000)):
        yield from_row(row)


def heads(connection: Connection, tables: LogTables = TABLES) -> dict[str, Head]:
    """Every chain's head row, by node."""
    rows = connection.execute(select(tables.head)).all()
    return {r.node: Head(node=r.node, seq=r.seq, hash=r.hash, archived_seq=r.archived_seq,
                         archived_hash=r.archived_hash, archive=r.archive) for r in rows}


def head_seqs(engine: Engine, tables: LogTables = TABLES) -> dict[str, int]:
    """Each chain's last seq: the starting point for :func:`read_new`."""
    with translated("cannot read the send/receive log"), engine.connect() as connection:
        if not has_log(connection, tables):
            return {}
        return {node: h.seq for node, h in heads(connection, tables).items()}


def read_new(engine: Engine, after: Mapping[str, int], filters: LogFilter = LogFilter(), *,
             tables: LogTables = TABLES) -> tuple[list[LogRecord], dict[str, int]]:
    """Records committed since ``after`` (node → last seq seen), and the new positions.

    Per-chain seqs are assigned under the head lock, so they grow in commit
    order; reading up to each head's seq therefore never skips a record that
    commits later with a smaller number (auto-increment ids could).
    """
    found: list[LogRecord] = []
    positions = dict(after)
    with translated("cannot read the send/receive log"), engine.connect() as connection:
        if not has_log(connection, tables):
            return found, positions
        for node, head in heads(connection, tables).items():
            last = positions.get(node, 0)
            if head.seq > last:
                found.extend(_matching(connection, tables, filters, node, last, head.seq))
                positions[node] = head.seq
    found.sort(key=lambda r: (r.ts, r.node, r.seq))
    return found, positions


def _matching(connection: Connection, tables: LogTables, filters: LogFilter, node: str,
              after: int, upto: int) -> list[LogRecord]:
    t = tables.log
    stmt = select(t).where(t.c.node == node, t.c.seq > after, t.c.seq <= upto, *filters.where(t))
    return [from_row(row) for row in connection.execute(stmt.order_by(t.c.seq))]
