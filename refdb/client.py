"""A client of the refdb SOAP service, for ``bmrgw refdb push|query`` and for programs.

A push of any size goes as ``BeginPush``, ``Upsert`` batches (``batch``
records each, one HTTP request per batch on one keep-alive connection) and
``Commit``; any failure aborts the push, so the dataset is never left with
part of it.  The next batch is built in a helper thread while the gateway
stores the current one, and at most two batches are in memory at once, so
memory does not grow with the file.  Requests are written as text with XML
escaping (fast and exactly the WSDL's form); answers are read with the
gateway's hardened parser.

A push's batches carry their records as rows (the compact form of
:mod:`refdb.wire`), and each batch's answer must say that the push now holds
every record sent so far, or the push is aborted.  A gateway older than the
row form skips rows as unknown elements and answers that it holds none: the
push then goes on in the field form, so that such a gateway never commits a
push without its records (a ``full`` push would empty the dataset).
``upsert`` and ``delete``, one request each with nothing to check before
the change applies, always use the field form.
"""

from __future__ import annotations

import base64
import http.client
import queue
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from lxml import etree

from gateway.errors import GatewayError, RemoteFault
from gateway.ns import FAULT, REFDB, SOAP11_ENV
from gateway.parser import parse

from .store import PushResult
from .wire import Fields, q

__all__ = ["RefdbClient", "QueryPage", "ChangesPage", "DEFAULT_BATCH"]

DEFAULT_BATCH = 5000
#: Largest answer accepted (a page holds at most 10,000 records).
MAX_ANSWER = 256 * 1024 * 1024
_COUNTS = ("version", "received", "inserted", "updated", "deleted", "unchanged")


@dataclass(frozen=True, kw_only=True)
class QueryPage:
    version: int
    more: bool
    records: list[Fields]


@dataclass(frozen=True, kw_only=True)
class ChangesPage:
    version: int
    more: bool
    upserts: list[Fields]
    deletes: list[Fields]


#: What must be escaped in a double-quoted attribute so that it reads back exactly (XML would
#: turn a raw newline or tab into a space).
_ATTRIBUTE = str.maketrans({"&": "&amp;", "<": "&lt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})
_NEEDS_ESCAPE = re.compile(r'[&<"\n\r\t]')
_FIELD_OPEN: dict[str, str] = {}


def _attribute(value: str) -> str:
    return value.translate(_ATTRIBUTE) if _NEEDS_ESCAPE.search(value) else value


def _field_open(name: str) -> str:
    """``<r:field name="…"`` for a field name, built once per name (a push repeats a few names)."""
    found = _FIELD_OPEN.get(name)
    if found is None:
        found = f'<r:field name="{_attribute(name)}"'
        if len(_FIELD_OPEN) < 10_000:
            _FIELD_OPEN[name] = found
    return found


def _fields_xml(parts: list[str], fields: Fields) -> None:
    for name, value in fields.items():
        if value is None:
            parts.append(f"{_field_open(name)}/>")
        else:
            parts.append(f'{_field_open(name)} value="{_attribute(value)}"/>')


#: Names that can stand as attributes of a row as they are: those a column may have (refdb.config.COLUMN_NAME)
#: but xmlns, which would declare a namespace.  A record naming anything else goes in the field form.
_ROW_NAME = re.compile(r"(?!xmlns\Z)[a-z][a-z0-9_]*\Z")


def _template(names: Iterable[str]) -> str:
    """A ``str.format`` template of a whole row with a value for each of these names, in this order."""
    return "<r:row" + "".join(f' {name}="{{}}"' for name in names) + "/>"


def _row_xml(fields: Fields) -> str:
    """One row, NULLs left out, values escaped."""
    return "<r:row" + "".join(f' {n}="{_attribute(v)}"' for n, v in fields.items() if v is not None) + "/>"


def _items_xml(tag: str, items: Iterable[Fields], *, rows: bool) -> str:
    """The items as rows (the compact form, :mod:`refdb.wire`): one ``format`` call for an item
    shaped like the one before it (a file's records all are) whose values need no escaping and
    none is NULL.  Without ``rows``, and for an item naming something that cannot be an attribute
    (so that the gateway names it in its fault), a ``tag`` of fields."""
    parts: list[str] = []
    shape: tuple[str, ...] = ()
    template = ""
    for fields in items:
        names = tuple(fields)  # in order: equal key sets in another order are another shape
        if names != shape:
            if not rows or not all(map(_ROW_NAME.match, names)):
                parts.append(f"<r:{tag}>")
                _fields_xml(parts, fields)
                parts.append(f"</r:{tag}>")
                continue
            shape, template = names, _template(names)
        values = fields.values()
        if None in values or _NEEDS_ESCAPE.search("".join(values)):  # type: ignore[arg-type]
            parts.append(_row_xml(fields))
        else:
            parts.append(template.format(*values))
    return "".join(parts)


def _scalars_xml(**values: Any) -> str:
    return "".join(f"<r:{k}>{escape(str(v))}</r:{k}>" for k, v in values.items() if v is not None)


def _envelope(operation: str, inner: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<s:Envelope xmlns:s="{SOAP11_ENV}"><s:Body>'
            f'<r:{operation} xmlns:r="{REFDB}">{inner}</r:{operation}></s:Body></s:Envelope>').encode()


def _fields_of(item: etree._Element) -> Fields:
    found: Fields = {}
    for field in item.iterchildren(q("field")):
        found[field.get("name") or ""] = field.get("value")
    return found


class RefdbClient:
    """Calls ``/refdb`` of one gateway over one keep-alive HTTP(S) connection (not thread-safe)."""

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = 600.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteFault(f"--server must be an http:// or https:// URL, not {url!r}")
        self.url = url
        self._path = parts.path.rstrip("/") or ""
        if not self._path.endswith("/refdb"):
            self._path += "/refdb"
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._ssl = ssl_context
        self._timeout = timeout
        self._headers = {"Content-Type": "text/xml; charset=utf-8"}
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._connection: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> RefdbClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- operations ------------------------------------------------------------

    def push(self, dataset: str, records: Iterable[Fields], *, mode: str = "diff", batch: int = DEFAULT_BATCH,
             progress: Callable[[int], None] | None = None) -> PushResult:
        """Push ``records`` as one version (BeginPush, batches, Commit; Abort on any failure)."""
        push_id = self.call("BeginPush", _scalars_xml(dataset=dataset, mode=mode)).findtext(q("pushId")) or ""
        fields_only = threading.Event()
        try:
            sent = 0
            for body, items, as_rows in _prebuilt(push_id, records, batch, fields_only):
                if as_rows and fields_only.is_set():
                    body, as_rows = _batch_body(push_id, items, rows=False), False
                received = self._staged(body)
                if as_rows and sent == 0 and received == 0:
                    # A gateway older than the row form skips rows as unknown elements: this batch
                    # again as fields, and fields from now on.
                    fields_only.set()
                    received = self._staged(_batch_body(push_id, items, rows=False))
                sent += len(items)
                if received != sent:
                    raise RemoteFault(f"the gateway holds {received:,} records of push {push_id} after {sent:,} "
                                      "were sent; the push is aborted, nothing of it is applied")
                if progress is not None:
                    progress(sent)
            return self._result(self.call("Commit", _scalars_xml(pushId=push_id)), mode, push_id)
        except BaseException:
            self._abort_quietly(push_id)
            raise

    def dry_run(self, dataset: str, records: Iterable[Fields], *, batch: int = DEFAULT_BATCH) -> int:
        """A push that is aborted instead of committed (``bmrgw check``): BeginPush and the batches as
        :meth:`push` sends them, then Abort.  How many records the gateway accepted; nothing is applied.
        A :class:`RemoteFault` says what a real push would have been refused for (not the owner, a
        record that does not fit its column, no such dataset)."""
        push_id = self.call("BeginPush", _scalars_xml(dataset=dataset, mode="diff")).findtext(q("pushId")) or ""
        try:
            received = 0
            for body, _, _ in _prebuilt(push_id, records, batch, threading.Event()):
                received = self._staged(body)
            return received
        finally:
            self._abort_quietly(push_id)

    def upsert(self, dataset: str, records: Iterable[Fields], *, mode: str = "diff") -> PushResult:
        """One whole push in one request (SPEC.md's ``Upsert(dataset, mode, records)``), in the field
        form: with nothing to check the records against before they apply, the form every gateway reads."""
        items = _items_xml("record", records, rows=False)
        inner = _scalars_xml(dataset=dataset, mode=mode) + f"<r:records>{items}</r:records>"
        return self._result(self.call("Upsert", inner), mode, "")

    def delete(self, dataset: str, keys: Iterable[Fields]) -> PushResult:
        """Delete the records with these keys as one version (keys in the field form, as :meth:`upsert`)."""
        inner = _scalars_xml(dataset=dataset) + f"<r:keys>{_items_xml('key', keys, rows=False)}</r:keys>"
        return self._result(self.call("Delete", inner), "delete", "")

    def query(self, dataset: str, filters: Sequence[tuple[str, str, str | None]] = (), *, offset: int = 0,
              limit: int = 1000, version: int | None = None) -> QueryPage:
        """One page of live records; ``filters`` are (column, op, value) with op eq/ne/lt/le/gt/ge."""
        found = "".join(f'<r:filter name="{_attribute(c)}" op="{_attribute(op)}"'
                        + (f' value="{_attribute(v)}"' if v is not None else "") + "/>" for c, op, v in filters)
        inner = (_scalars_xml(dataset=dataset) + (f"<r:filters>{found}</r:filters>" if found else "")
                 + _scalars_xml(offset=offset, limit=limit, version=version))
        answer = self.call("Query", inner)
        return QueryPage(version=int(answer.findtext(q("version")) or 0), more=answer.findtext(q("more")) == "true",
                         records=[_fields_of(r) for r in answer.iterfind(f"{q('records')}/{q('record')}")])

    def query_all(self, dataset: str, filters: Sequence[tuple[str, str, str | None]] = (), *,
                  page: int = 1000) -> Iterator[Fields]:
        """Every matching record, page by page, all from one version (VersionChanged if a push intervenes)."""
        offset, version, more = 0, None, True
        while more:
            result = self.query(dataset, filters, offset=offset, limit=page, version=version)
            version, more = result.version, result.more
            offset += len(result.records)
            yield from result.records

    def changes(self, dataset: str, since: int, *, offset: int = 0, limit: int = 1000,
                version: int | None = None) -> ChangesPage:
        inner = _scalars_xml(dataset=dataset, sinceVersion=since, offset=offset, limit=limit, version=version)
        answer = self.call("Changes", inner)
        return ChangesPage(version=int(answer.findtext(q("version")) or 0), more=answer.findtext(q("more")) == "true",
                           upserts=[_fields_of(r) for r in answer.iterfind(f"{q('upserts')}/{q('record')}")],
                           deletes=[_fields_of(k) for k in answer.iterfind(f"{q('deletes')}/{q('key')}")])

    # -- the wire --------------------------------------------------------------

    def call(self, operation: str, inner: str) -> etree._Element:
        """POST one operation; returns its response element or raises :class:`RemoteFault`."""
        return self._post(operation, _envelope(operation, inner))

    def _post(self, operation: str, body: bytes) -> etree._Element:
        headers = {**self._headers, "SOAPAction": f'"{REFDB}/{operation}"'}
        status, data = self._exchange(body, headers)
        root = self._parse(data, status)
        fault = root.find(f".//{{{SOAP11_ENV}}}Fault")
        if fault is not None:
            raise _remote_fault(fault, status)
        answer = root.find(f".//{q(operation + 'Response')}")
        if answer is None:
            raise RemoteFault(f"the gateway's answer to {operation} holds no {operation}Response", http_status=status)
        return answer

    def _exchange(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request("POST", self._path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read(MAX_ANSWER + 1)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()  # a keep-alive connection the server closed: one fresh try
                if attempt == 2:
                    raise RemoteFault(f"{self.url}: the connection broke: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise RemoteFault(f"cannot reach {self.url}: {exc}") from exc
        raise AssertionError("unreachable")

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                               context=self._ssl)
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._connection

    def _staged(self, body: bytes) -> int:
        """POST one Upsert batch of an open push; how many records the gateway says the push holds now."""
        received = self._post("Upsert", body).findtext(q("received"))
        try:
            return int(received or "")
        except ValueError:
            raise RemoteFault("the gateway's answer to Upsert does not say how many records it holds") from None

    def _parse(self, data: bytes, status: int) -> etree._Element:
        try:
            return parse(data, max_bytes=MAX_ANSWER)
        except GatewayError as exc:
            raise RemoteFault(f"{self.url} answered HTTP {status} without a SOAP envelope: {exc.reason}",
                              http_status=status) from exc

    def _result(self, answer: etree._Element, mode: str, push_id: str) -> PushResult:
        count = {name: int(answer.findtext(q(name)) or 0) for name in _COUNTS}
        return PushResult(dataset=answer.findtext(q("dataset")) or "", mode=mode, push_id=push_id,
                          version=count["version"], received=count["received"], inserted=count["inserted"],
                          updated=count["updated"], deleted=count["deleted"], unchanged=count["unchanged"])

    def _abort_quietly(self, push_id: str) -> None:
        try:
            self.call("Abort", _scalars_xml(pushId=push_id))
        except RemoteFault:
            pass  # already refused or gone: nothing was applied either way


def _remote_fault(fault: etree._Element, status: int) -> RemoteFault:
    reason = fault.findtext("faultstring") or "SOAP fault"
    error = fault.find(f".//{{{FAULT}}}Error")
    attributes = dict(error.attrib) if error is not None else {}
    return RemoteFault(reason, code=attributes.get("code", ""), http_status=status,
                       attributes={str(k): str(v) for k, v in attributes.items()})


def _prebuilt(push_id: str, records: Iterable[Fields], batch: int,
              fields_only: threading.Event) -> Iterator[tuple[bytes, list[Fields], bool]]:
    """Upsert bodies of ``batch`` records, built one ahead in a helper thread, with their records
    and whether they went as rows (until ``fields_only`` is set)."""
    ready: queue.Queue[tuple[bytes, list[Fields], bool] | BaseException | None] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def built(items: list[Fields]) -> tuple[bytes, list[Fields], bool]:
        rows = not fields_only.is_set()
        return _batch_body(push_id, items, rows=rows), items, rows

    def build() -> None:
        try:
            items: list[Fields] = []
            for fields in records:
                items.append(fields)
                if len(items) >= batch:
                    _put(ready, stop, built(items))
                    items = []
            if items:
                _put(ready, stop, built(items))
            _put(ready, stop, None)
        except BaseException as exc:  # handed to the sender, which raises it
            _put(ready, stop, exc)

    worker = threading.Thread(target=build, name="refdb-push-builder", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def _put(ready: queue.Queue[Any], stop: threading.Event, item: Any) -> None:
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _batch_body(push_id: str, items: list[Fields], *, rows: bool = True) -> bytes:
    records = _items_xml("record", items, rows=rows)
    return _envelope("Upsert", _scalars_xml(pushId=push_id) + f"<r:records>{records}</r:records>")
