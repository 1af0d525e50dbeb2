"""One send/receive log record (SPEC.md capability (G), "Log record").

The record model and its checks, packing for the writer process, and the
hash chain's canonical form and seal.

Pure: no database, no I/O.  :mod:`gateway.logs.tables` stores these records,
:mod:`gateway.logs.chain` verifies and archives them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from .clock import Now

__all__ = [
    "LogRecord",
    "RelayExchange",
    "ApiExchange",
    "Entry",
    "GENESIS",
    "FIELDS",
    "ATTRIBUTES",
    "COLUMNS",
    "TS_FORMAT",
    "STATUSES",
    "DIRECTIONS",
    "stored",
    "made",
    "describe",
    "text_problem",
    "check_text",
    "column_values",
    "pack",
    "unpack",
    "unpack_entries",
    "unpack_entry",
    "canonical",
    "chain_hash",
    "seal",
]

#: The ``prev_hash`` of a chain's first record.
GENESIS = "0" * 64
STATUSES = ("ok", "fault", "error")
DIRECTIONS = ("request", "response")
#: JSON field names of SPEC.md "Log record", in output order.
FIELDS: tuple[str, ...] = (
    "ts", "ntp_offset", "ntp_synced", "message_id", "kind", "direction", "from", "to", "endpoint",
    "status", "bytes_in", "bytes_out", "duration_ms", "sha256", "client", "http_status", "fault_code",
    "charset_substitutions", "node", "seq", "prev_hash", "hash",
)
#: JSON name → attribute (and column) name of every field; "from" and "to" are Python keywords.
ATTRIBUTES = {name: {"from": "from_ap", "to": "to_ap"}.get(name, name) for name in FIELDS}
#: How ``ts`` is written in JSON (and hashed): ISO 8601 UTC with microseconds.
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_MAX_TEXT = 2048
_MAX_ID = 256  # message ids are indexed; PostgreSQL b-tree entries must stay under ~2.7 kB
#: Fields added after records were written; an older record (an archive line) has no value for them.
_OPTIONAL = frozenset({"charset_substitutions"})
_TEXTS = ("message_id", "from_ap", "to_ap", "endpoint", "sha256", "client", "fault_code", "kind", "node",
          "charset_substitutions")


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
    charset_substitutions: str | None = None
    """Characters an endpoint's character profile could not carry (``3 (U+20BB7 ×2, 0xF040 ×1)``);
    ``None`` where nothing was converted or lost. Hashed only when set, so older chains verify unchanged."""
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
        """The SPEC.md JSON object: ``from``/``to`` names, ISO 8601 UTC ``ts`` with microseconds;
        ``charset_substitutions`` only where set."""
        out = dict(zip(FIELDS, _JSON_VALUES(self), strict=True))
        out["ts"] = self.ts.strftime(TS_FORMAT)
        for name in _OPTIONAL:  # absent when unset, as in the hashed form (and in records made before it)
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LogRecord:
        """Inverse of :meth:`to_json` (archives); ``KeyError``/``ValueError`` if a field is missing or ``ts`` bad."""
        values = {ATTRIBUTES[name]: data[name] if name in data or name not in _OPTIONAL else None for name in FIELDS}
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

    def records(self, kind: str = "relay", substitutions: str | None = None) -> tuple[LogRecord, LogRecord]:
        """The request and the response record; ``ValueError`` if a value is not valid."""
        # Values straight into each record's __dict__ (no keyword call of the frozen dataclass's
        # __init__, 21 setattrs): this runs twice per relayed exchange in the writer.
        shared = {**_UNCHAINED, "kind": kind, "message_id": self.message_id, "from_ap": self.from_ap,
                  "to_ap": self.to_ap, "endpoint": self.endpoint, "client": self.client}
        request = {**shared, "ts": datetime.fromtimestamp(self.arrived_time, UTC), "ntp_offset": self.arrived_offset,
                   "ntp_synced": self.arrived_synced, "direction": "request", "status": self.request_status,
                   "bytes_in": self.request_bytes_in, "bytes_out": self.request_bytes_out,
                   "sha256": self.request_sha256, "duration_ms": self.request_ms, "http_status": None,
                   "fault_code": None, "charset_substitutions": None}
        response = {**shared, "ts": datetime.fromtimestamp(self.ended_time, UTC), "ntp_offset": self.ended_offset,
                    "ntp_synced": self.ended_synced, "direction": "response", "status": self.status,
                    "bytes_in": self.response_bytes_in, "bytes_out": self.response_bytes_out,
                    "sha256": self.response_sha256, "duration_ms": self.response_ms,
                    "http_status": self.http_status, "fault_code": self.fault_code,
                    "charset_substitutions": substitutions}
        return made(_normalise(request)), made(_normalise(response))


class ApiExchange(NamedTuple):
    """An exchange of the HTTP API relay (:mod:`gateway.api`): a relayed exchange's values, logged as
    ``kind: api``, and what its character profile could not carry (on the response record)."""

    exchange: RelayExchange
    substitutions: str | None = None

    def records(self) -> tuple[LogRecord, LogRecord]:
        return self.exchange.records("api", self.substitutions)


#: What :meth:`Journal.record` takes: one record, or a relayed exchange's two.
Entry = LogRecord | RelayExchange | ApiExchange


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
            check_text(name, value)
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


def check_text(name: str, value: Any) -> None:
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


COLUMNS = tuple(f.name for f in fields(LogRecord))
#: The chain fields of a record not yet appended (their defaults).
_UNCHAINED = {f.name: f.default for f in fields(LogRecord) if f.name in ("node", "seq", "prev_hash", "hash")}


column_values = operator.attrgetter(*COLUMNS)


_JSON_VALUES = operator.attrgetter(*ATTRIBUTES.values())
#: First value of a packed :class:`RelayExchange` (a packed record starts with its ``ts``).
_EXCHANGE = "relay-exchange"
_API_EXCHANGE = "api-exchange"
_EXCHANGE_SIZE = len(RelayExchange._fields)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def pack(entry: Entry) -> tuple[Any, ...]:
    """An entry as a tuple of str, int, float, bool and None (``marshal`` takes it; a record's ``ts``
    becomes integer microseconds since 1970, exactly)."""
    if isinstance(entry, RelayExchange):
        return (_EXCHANGE, *entry)
    if isinstance(entry, ApiExchange):
        return (_API_EXCHANGE, entry.substitutions, *entry.exchange)
    values = column_values(entry)
    return ((values[0] - _EPOCH) // _MICROSECOND, *values[1:])


def unpack_entries(packed: Sequence[Any]) -> list[LogRecord]:
    """The records of packed entries, in order: the writer's side of :func:`pack`.

    An item that is a tuple is one packed entry; anything else starts a relayed exchange's values
    laid out flat (:class:`gateway.logs.batch.Batch`: the event loop appends them without a tuple)."""
    records: list[LogRecord] = []
    at, end = 0, len(packed)
    while at < end:
        values = packed[at]
        if type(values) is not tuple:
            records.extend(RelayExchange._make(packed[at:at + _EXCHANGE_SIZE]).records())
            at += _EXCHANGE_SIZE
            continue
        at += 1
        if values[0] == _EXCHANGE:
            records.extend(RelayExchange(*values[1:]).records())
        elif values[0] == _API_EXCHANGE:
            records.extend(RelayExchange(*values[2:]).records("api", values[1]))
        else:
            records.append(unpack(values))
    return records


def unpack_entry(values: Sequence[Any]) -> Entry:
    """The entry one packed tuple holds, as it was queued (for the process log)."""
    if values[0] == _EXCHANGE:
        return RelayExchange(*values[1:])
    if values[0] == _API_EXCHANGE:
        return ApiExchange(RelayExchange(*values[2:]), values[1])
    return unpack(values)


def unpack(values: Sequence[Any]) -> LogRecord:
    """Inverse of :func:`pack`; the values were validated when the record was made."""
    if len(values) != len(COLUMNS):
        raise ValueError(f"a packed log record has {len(COLUMNS)} values, not {len(values)}")
    record = dict(zip(COLUMNS, values))
    record["ts"] = _EPOCH + timedelta(microseconds=values[0])
    return made(record)


def made(values: dict[str, Any]) -> LogRecord:
    """A record of ``values``, every field's, already valid and normalised: set all at once, unchecked
    (the writer's hot path; anything else calls :class:`LogRecord`)."""
    record = object.__new__(LogRecord)
    object.__setattr__(record, "__dict__", values)
    return record


# -- the hash chain's canonical form and seal -------------------------------------


def canonical(record: LogRecord) -> bytes:
    """The bytes that are hashed: sorted, compact JSON of the record without its chain hashes."""
    return _canonical(record.__dict__)


#: The hashed fields' JSON names in sorted order, which is the order the canonical form writes them.
_HASHED = tuple(sorted(name for name in FIELDS if name not in ("prev_hash", "hash")))
_HASHED_VALUES = operator.itemgetter(*(ATTRIBUTES[name] for name in _HASHED))
_TS = _HASHED.index("ts")
#: One encoder for every record, without sort_keys: the keys already come in sorted order.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


#: ``_ENCODER``'s C encoder, made once (``JSONEncoder.encode`` makes one per call, plus a dict of markers
#: against cycles a record cannot have): a fifth of the writer's CPU per record went there.
_C_ENCODE = None if c_make_encoder is None else c_make_encoder(
    None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, False)


def _canonical(values: dict[str, Any]) -> bytes:
    """Canonical bytes of a record's attribute values (its ``__dict__``); same JSON as sorting
    :meth:`LogRecord.to_json`'s keys, without building that dict first."""
    hashed = list(_HASHED_VALUES(values))
    ts = hashed[_TS]
    # isoformat is C and several times faster than strftime; it pads years below 1000, strftime does not.
    hashed[_TS] = ts.isoformat(timespec="microseconds")[:26] + "Z" if ts.year >= 1000 else ts.strftime(TS_FORMAT)
    fields = dict(zip(_HASHED, hashed))
    if fields["charset_substitutions"] is None:  # added later: records without it hash as they always did
        del fields["charset_substitutions"]
    if _C_ENCODE is None:
        return _ENCODER.encode(fields).encode("utf-8")
    return "".join(_C_ENCODE(fields, 0)).encode("utf-8")


def chain_hash(prev_hash: str, record: LogRecord, key: bytes | None = None) -> str:
    """The record's link in hex: ``sha256(prev_hash || canonical(record))`` (a plain link), or with
    a log key ``HMAC-SHA256(key, prev_hash || canonical(record))`` (a keyed link, which only the key's
    holder can compute); ``prev_hash`` enters as its 32 bytes.

    Which of the two a stored record has is told by recomputing: a keyed link never matches the
    plain hash of the same bytes, nor the other way round (:mod:`gateway.logs.chain`)."""
    return _digest(prev_hash, record.__dict__, key)


def _digest(prev_hash: str, values: dict[str, Any], key: bytes | None = None) -> str:
    message = bytes.fromhex(prev_hash) + _canonical(values)
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.digest(key, message, "sha256").hex()


def seal(entry: LogRecord, *, node: str, seq: int, prev_hash: str, key: bytes | None = None) -> LogRecord:
    """``entry`` as record ``seq`` of ``node``'s chain, after the record whose hash is ``prev_hash``
    (a keyed link when ``key`` is given, see :func:`chain_hash`).

    ``node`` must be valid text (:func:`gateway.logs.journal.append` checks it once per batch); the
    rest of ``entry`` was normalised when it was made."""
    values = {**entry.__dict__, "node": node, "seq": seq, "prev_hash": prev_hash}
    values["hash"] = _digest(prev_hash, values, key)
    return made(values)
