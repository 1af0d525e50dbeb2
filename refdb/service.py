"""The reference-DB SOAP service: ``POST /refdb`` and ``GET /refdb?wsdl`` (SPEC.md capability F).

It lives in the refdb package, not in gateway/, because everything it does
is refdb's — the wire format, the datasets, the store — and the gateway needs
only one call (:func:`add_refdb`) to mount it; the gateway's shared pieces
(store engine, NTP clock, send/receive log, live config) are handed in as
the app keys that hold them, so this module does not import gateway.serve.app.

One request: the body streams through :class:`~refdb.wire.RequestReader` in
a worker thread (parsing, type validation and staging never block the event
loop); records are converted and staged in batches as they arrive; then the
operation runs and the answer is written.  Every failure is a SOAP fault in
the caller's SOAP version with a ``g:Error`` code.

Pushes.  ``Upsert(dataset, mode, records)`` without ``pushId`` is a whole
push in one request (up to ``gateway.max_message_bytes``).  A big push is
``BeginPush(dataset, mode)`` → ``pushId``, then any number of
``Upsert(pushId, records)`` batches, then ``Commit(pushId)`` — or
``Abort(pushId)``.  The commit is one transaction and one version (see
:mod:`refdb.store`); a bad value in any batch refuses the whole push.

WS-Security.  A client whose entry has ``wss.verify`` must sign its refdb
requests like its relayed ones; its requests are then read whole (each is
at most ``gateway.max_message_bytes``; big pushes come in batches anyway),
verified, and only then parsed.

Logging.  A push or delete writes its send/receive log record inside its own
commit (:meth:`gateway.logs.journal.Journal.write_in`), so the change and its
record commit or vanish together; every other operation, and every fault,
is recorded through :meth:`gateway.logs.journal.Journal.record`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from lxml import etree
from sqlalchemy import Connection

from gateway.disk import FreeSpace, storage_folders
from gateway.errors import (
    ConfigError,
    GatewayError,
    InvalidRecord,
    InvalidRequest,
    JournalUnavailable,
    MessageTooLarge,
    RefdbUnavailable,
    UnsupportedMediaType,
)
from gateway.ids import new_message_id
from gateway.logs.clock import Clock
from gateway.logs.journal import Journal
from gateway.logs.records import LogRecord
from gateway.ns import SoapVersion
from gateway.security.message import MessageSecurity
from gateway.soap import gateway_fault, version_for
from gateway.store import Store
from routing.config import Config
from routing.watch import LiveTable

from . import params
from .access import Caller, caller_of, check_push, check_query
from .config import RefdbSettings
from .schema import ensure_schema
from .store import PushResult, RefStore
from .turns import Turns
from .values import Converter, FieldError, format_value
from .wire import Fields, RequestReader, add_records, element, envelope

__all__ = ["RefdbService", "BATCH_ROWS"]

log = logging.getLogger("bmrgw.refdb")

#: Records staged per database transaction while a request streams in.
BATCH_ROWS = 5000


@dataclass(eq=False)
class Outcome:
    """What one request did, for the send/receive log."""

    arrived: Any
    started: float = field(default_factory=time.perf_counter)
    bytes_in: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    dataset: str | None = None
    message_id: str | None = None
    logged: bool = False


class RefdbService:
    """Datasets, store and log for ``/refdb``; schema follows the live config."""

    def __init__(self, *, live: LiveTable, engine_store: Store, clock: Clock, journal: Journal | None,
                 security: Callable[[], MessageSecurity]) -> None:
        self._live = live
        self._security = security
        self._engine = engine_store.engine
        self._clock = clock
        self._journal = journal
        self._settings: RefdbSettings | None = None
        self._store: RefStore | None = None
        self._lock = asyncio.Lock()
        self._turns = Turns(live.current.config.refdb)
        self._space = FreeSpace(storage_folders(live.current.config))

    async def start(self) -> None:
        """Create or migrate the declared datasets; a destructive change stops the gateway with a ConfigError."""
        settings = self._live.current.config.refdb
        await self._migrate(settings)

    async def _migrate(self, settings: RefdbSettings) -> None:
        tables = await asyncio.to_thread(ensure_schema, self._engine, settings)
        self._store = RefStore(self._engine, tables)
        self._settings = settings
        if settings.datasets:
            log.info("refdb: %d dataset(s) ready: %s", len(tables), ", ".join(sorted(tables)))

    async def refresh(self) -> None:
        """Apply a reloaded ``refdb`` section now (tables, views, grants), not at the next request:
        a role removed from ``sql_readers`` must lose its access even if no client calls."""
        try:
            await self._current(self._live.current.config)
        except GatewayError as exc:
            log.error("refdb: the reloaded datasets could not be applied yet (next request retries): %s", exc.reason)

    async def _current(self, config: Config) -> RefStore:
        """The store for the config in force; a reloaded ``refdb`` section is migrated first."""
        if config.refdb != self._settings:
            async with self._lock:
                if config.refdb != self._settings:
                    try:
                        await self._migrate(config.refdb)
                    except ConfigError as exc:
                        log.error("refdb: reloaded datasets not applied, the previous ones stay: %s", exc.reason)
                        self._settings = config.refdb  # do not retry on every request
        assert self._store is not None
        return self._store

    async def handle(self, request: web.Request) -> web.Response:
        config = self._live.current.config
        outcome = Outcome(arrived=self._clock.now())
        version = version_for(request.content_type) or SoapVersion.V11
        call: Call | None = None
        turns: asyncio.Semaphore | None = None
        # One thread per request: its lxml parser and answer tree stay in that thread (lxml is not
        # safe across threads), and parsing never blocks the event loop. A request has a thread only
        # while it holds one of refdb.max_concurrent turns, so a flood of slow callers cannot pile them up.
        worker = ThreadPoolExecutor(1, thread_name_prefix="refdb")
        try:
            if version_for(request.content_type) is None:
                raise UnsupportedMediaType(f"Content-Type {request.content_type!r} is not SOAP")
            turns = await self._turns.take(config.refdb)
            store = await self._current(config)
            call = Call(store=store, caller=caller_of(request), outcome=outcome,
                        write_log=self._log_in_commit, check_disk=self._disk_check(config))
            answer = await self._run(self._body(request, call, config), call, worker, config)
            status = 200
        except Exception as unexpected:  # every failure a caller meets is a SOAP fault, never a bare 500
            exc = unexpected if isinstance(unexpected, GatewayError) else _internal(unexpected)
            if call is not None:
                await _in(worker, call.cleanup, exc)
            log.info("refdb fault %s: %s", exc.code, exc.reason)
            answer, status = gateway_fault(exc, version, gateway=config.gateway.name), exc.http_status
            await self._log(outcome, call, answer, error=exc)
        else:
            await self._log(outcome, call, answer)
        finally:
            worker.shutdown(wait=False)
            if turns is not None:
                turns.release()
        return web.Response(body=answer, status=status, content_type=version.content_type, charset="utf-8")

    def _disk_check(self, config: Config) -> Callable[[], None]:
        """``gateway.min_free_bytes``: what a push stores is refused on a full data disk (InsufficientStorage)."""
        return lambda: self._space.check(config.gateway.min_free_bytes, what="store refdb records")

    async def _body(self, request: web.Request, call: Call, config: Config) -> AsyncIterator[bytes]:
        """The body in chunks: streamed, or — for a client that must sign (``wss.verify``) — read
        whole (at most ``gateway.max_message_bytes``) and verified first."""
        timeout = config.gateway.client_timeout
        client = call.caller.client
        if client is None or client.wss_verify is None:
            while chunk := await params.gather(request, timeout):
                yield chunk
            return
        pieces, size = [], 0
        while chunk := await params.gather(request, timeout):
            size += len(chunk)
            if size > config.gateway.max_message_bytes:
                raise MessageTooLarge(f"a signed request may be at most {config.gateway.max_message_bytes} bytes",
                                      detail="gateway.max_message_bytes")
            pieces.append(chunk)
        whole = b"".join(pieces)
        await self._security().verify_client(whole, content_type=request.content_type, client=client,
                                             settings=config.gateway)
        for start in range(0, len(whole), params.CHUNK):
            yield whole[start:start + params.CHUNK]

    @staticmethod
    async def _run(body: AsyncIterator[bytes], call: Call, worker: ThreadPoolExecutor, config: Config) -> bytes:
        """Feed the body through the reader, then run the operation; all lxml work in ``worker``."""
        reader = await _in(worker, RequestReader, call.item, config.gateway.max_message_bytes)
        try:
            async for chunk in body:
                call.outcome.bytes_in += len(chunk)
                call.outcome.digest.update(chunk)
                await _in(worker, reader.feed, chunk)
            await _in(worker, reader.finish)
        except GatewayError:
            await _in(worker, call.check_pending)
            raise
        return await _in(worker, call.finish, reader)

    def _log_in_commit(self, connection: Connection, result: PushResult, outcome: Outcome, client: str | None) -> None:
        """The record of a push or delete, written in the transaction that applies it."""
        if self._journal is None:
            return
        self._journal.write_in(connection, LogRecord.at(
            self._clock.now(), kind="refdb", direction="request", status="ok",
            message_id=result.push_id or outcome.message_id, from_ap=client, to_ap=result.dataset,
            endpoint=f"refdb:{result.mode}", bytes_in=result.bytes or outcome.bytes_in,
            sha256=result.digest or outcome.digest.hexdigest(), client=client,
            duration_ms=1000 * (time.perf_counter() - outcome.started), http_status=200))
        outcome.logged = True

    async def _log(self, outcome: Outcome, call: Call | None, answer: bytes,
                   error: GatewayError | None = None) -> None:
        if self._journal is None or outcome.logged:
            return
        client = call.caller.name if call is not None else None
        status = "ok" if error is None else "fault" if error.fault == "Client" else "error"
        record = LogRecord.at(
            outcome.arrived, kind="refdb", direction="request", status=status,
            message_id=outcome.message_id or new_message_id(), from_ap=client, to_ap=outcome.dataset,
            endpoint=f"refdb:{call.operation if call is not None and call.operation else '-'}",
            bytes_in=outcome.bytes_in, bytes_out=len(answer), sha256=outcome.digest.hexdigest(), client=client,
            duration_ms=1000 * (time.perf_counter() - outcome.started),
            http_status=200 if error is None else error.http_status,
            fault_code=None if error is None else error.code)
        try:
            await self._journal.record(record)
        except JournalUnavailable as exc:
            log.error("send/receive log unavailable (%s); refdb operation not logged: %s", exc.reason, record.to_json())


def _internal(exc: Exception) -> GatewayError:
    """A bug or an unforeseen failure: logged with its traceback, answered as a Server fault."""
    log.exception("refdb: unexpected failure")
    return RefdbUnavailable(f"the reference DB failed unexpectedly ({type(exc).__name__}); see the gateway log")
T = TypeVar("T")


async def _in(worker: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)


WriteLog = Callable[[Connection, PushResult, Outcome, "str | None"], None]


class Call:
    """One refdb operation, run in a worker thread: streamed items first, then :meth:`finish`."""

    def __init__(self, *, store: RefStore, caller: Caller, outcome: Outcome, write_log: WriteLog,
                 check_disk: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.check_disk = check_disk
        self.caller = caller
        self.outcome = outcome
        self.operation: str | None = None
        self._write_log = write_log
        self._converter: Converter | None = None
        self._push: str | None = None
        self._own_push = False
        self._base = 0
        self._pending: list[Fields] = []
        self._keys: list[dict[str, Any]] = []
        self._items = 0

    # -- streamed items --------------------------------------------------------

    def item(self, operation: str, scalars: Mapping[str, str], fields: Fields, number: int) -> None:
        self.operation = operation
        if self._converter is None:
            self._prepare(operation, scalars)
        assert self._converter is not None
        if operation == "Delete":
            self._items = number
            try:
                self._keys.append(self._converter.key(fields))
            except FieldError as exc:
                raise self._invalid(exc, number) from None
            return
        # Records wait for their batch: a batch converts a column at a time, far cheaper than record by
        # record. A full batch is staged when the next record arrives, so that a request of one batch
        # (what the bmrgw client sends) is staged in one transaction, with its size and digest.
        if len(self._pending) >= BATCH_ROWS:
            self._flush()
        self._items = number
        self._pending.append(fields)

    def check_pending(self) -> None:
        """Before the fault of a request that broke off: a bad record before the break is the one to report,
        as it is when records are checked as they arrive."""
        if self._converter is not None and self._pending:
            self._rows(self._pending)

    def _flush(self, *, size: int = 0, digest: str = "") -> int:
        """Stage the pending records; returns how many the push holds now."""
        assert self._push is not None and self.outcome.dataset is not None
        rows = self._rows(self._pending)
        self._pending = []
        first = self._base + self._items - len(rows) + 1
        return self.store.stage(self._push, self.outcome.dataset, rows, size=size, digest=digest, first=first)

    def _rows(self, records: list[Fields]) -> list[tuple[Any, ...]]:
        """The last ``len(records)`` records converted; a bad one, or a key twice, refuses the push."""
        assert self._converter is not None
        first = self._items - len(records) + 1
        try:
            rows = self._converter.rows(records)
        except FieldError as exc:
            raise self._invalid(exc, first + (exc.record or 0)) from None
        keys = list(map(self._converter.key_values, rows))
        if len(set(keys)) != len(keys):
            self._repeated(rows, first)
        return rows

    def _repeated(self, rows: list[tuple[Any, ...]], first: int) -> None:
        assert self._converter is not None
        seen: set[tuple[Any, ...]] = set()
        for number, row in enumerate(rows, self._base + first):
            key = self._converter.key_of(row)
            if key in seen:
                raise InvalidRecord(f"record {number}: key {list(key)} appears twice in this push", record=number)
            seen.add(key)

    def _invalid(self, exc: FieldError, number: int) -> InvalidRecord:
        return InvalidRecord(f"record {self._base + number}, field {exc.field!r}: {exc.reason}",
                             record=self._base + number, field=exc.field)

    def _prepare(self, operation: str, scalars: Mapping[str, str]) -> None:
        """Before the first record or key: which dataset, may the caller write it, which push."""
        push_id = scalars.get("pushId") or None
        if operation == "Upsert" and push_id:
            push = self.store.open_push(push_id)
            dataset = push.dataset
            if scalars.get("dataset") and scalars["dataset"] != dataset:
                raise InvalidRequest(f"push {push_id} is for dataset {dataset!r}, not {scalars['dataset']!r}")
            self._push, self._base = push_id, push.received
            self.outcome.message_id = push_id
        else:
            dataset = params.required(scalars, "dataset")
        tables = self.store.dataset(dataset)
        self.outcome.dataset = dataset
        check_push(self.caller, tables.dataset)
        self._converter = Converter(tables.dataset, self.store.driver)
        if operation == "Upsert":
            self.check_disk()  # before the first record is staged
        if operation == "Upsert" and self._push is None:
            self._push = self.store.begin_push(dataset, params.mode(scalars), self.caller.name)
            self._own_push = True
            self.outcome.message_id = self._push

    # -- the operation ---------------------------------------------------------

    def finish(self, reader: RequestReader) -> bytes:
        assert reader.version is not None and reader.operation is not None
        self.operation = reader.operation
        handler = getattr(self, f"_op_{reader.operation.lower()}")
        root, response = envelope(reader.version, reader.operation)
        handler(reader, response)
        return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))

    def cleanup(self, error: GatewayError) -> None:
        """After a fault: an own push is dropped; a batched push is refused for good on a bad record."""
        try:
            if self._own_push and self._push is not None:
                self.store.abort(self._push)
            elif self._push is not None and isinstance(error, InvalidRecord):
                self.store.fail(self._push)
        except GatewayError as exc:
            log.warning("refdb: could not clean up push %s: %s", self._push, exc.reason)

    def _op_upsert(self, reader: RequestReader, out: etree._Element) -> None:
        scalars = reader.scalars
        if self._converter is None:  # no records at all: still a push (a full push of nothing empties the dataset)
            self._prepare("Upsert", scalars)
        received = self._flush(size=self.outcome.bytes_in, digest=self.outcome.digest.hexdigest())
        assert self._push is not None
        if not self._own_push:
            element(out, "dataset", self.outcome.dataset)
            element(out, "pushId", self._push)
            element(out, "received", received)
            return
        result = self.store.commit(self._push, self._on_commit)
        self._own_push = False
        params.add_result(out, result)

    def _op_beginpush(self, reader: RequestReader, out: etree._Element) -> None:
        scalars = reader.scalars
        dataset = self.store.dataset(params.required(scalars, "dataset")).dataset
        self.outcome.dataset = dataset.name
        check_push(self.caller, dataset)
        self.check_disk()
        push_id = self.store.begin_push(dataset.name, params.mode(scalars), self.caller.name)
        self.outcome.message_id = push_id
        element(out, "dataset", dataset.name)
        element(out, "pushId", push_id)

    def _op_commit(self, reader: RequestReader, out: etree._Element) -> None:
        scalars = reader.scalars
        push_id = self._owned_push(scalars)
        self.check_disk()  # the push stays open: it can be committed once there is room again
        params.add_result(out, self.store.commit(push_id, self._on_commit))

    def _op_abort(self, reader: RequestReader, out: etree._Element) -> None:
        scalars = reader.scalars
        push_id = self._owned_push(scalars)
        self.store.abort(push_id)
        element(out, "pushId", push_id)

    def _owned_push(self, scalars: Mapping[str, str]) -> str:
        push_id = params.required(scalars, "pushId")
        self.outcome.message_id = push_id
        dataset = self.store.open_push(push_id).dataset
        self.outcome.dataset = dataset
        check_push(self.caller, self.store.dataset(dataset).dataset)
        return push_id

    def _op_delete(self, reader: RequestReader, out: etree._Element) -> None:
        scalars = reader.scalars
        if self._converter is None:
            self._prepare("Delete", scalars)
        assert self.outcome.dataset is not None
        self.outcome.message_id = new_message_id()
        params.add_result(out, self.store.delete(self.outcome.dataset, self._keys, self._on_commit))

    def _op_query(self, reader: RequestReader, out: etree._Element) -> None:
        scalars = reader.scalars
        tables = self._readable(scalars)
        filters = [params.filter_of(tables.dataset, f, n) for n, f in enumerate(reader.filters, 1)]
        page = self.store.query(tables.dataset.name, filters, offset=params.offset(scalars),
                                limit=params.limit(scalars), version=params.optional_integer(scalars, "version"))
        element(out, "dataset", tables.dataset.name)
        element(out, "version", page.version)
        element(out, "more", page.more)
        columns = tables.dataset.columns
        add_records(element(out, "records", None), "record",
                    ([(c.name, format_value(v, c)) for c, v in zip(columns, row)] for row in page.rows))

    def _op_changes(self, reader: RequestReader, out: etree._Element) -> None:
        scalars = reader.scalars
        tables = self._readable(scalars)
        since = params.integer(scalars, "sinceVersion", None)
        page = self.store.changes(tables.dataset.name, since, offset=params.offset(scalars),
                                  limit=params.limit(scalars), version=params.optional_integer(scalars, "version"))
        columns = tables.dataset.columns
        keys = [c for c in columns if c.name in tables.dataset.key]
        element(out, "dataset", tables.dataset.name)
        element(out, "version", page.version)
        element(out, "more", page.more)
        add_records(element(out, "upserts", None), "record",
                    ([(c.name, format_value(v, c)) for c, v in zip(columns, row)] for row in page.upserts))
        add_records(element(out, "deletes", None), "key",
                    ([(c.name, format_value(row._mapping[c.name], c)) for c in keys] for row in page.deletes))

    def _readable(self, scalars: Mapping[str, str]) -> Any:
        tables = self.store.dataset(params.required(scalars, "dataset"))
        self.outcome.dataset = tables.dataset.name
        check_query(self.caller, tables.dataset)
        return tables

    def _on_commit(self, connection: Connection, result: PushResult) -> None:
        self._write_log(connection, result, self.outcome, self.caller.name)


