"""The /refdb SOAP service on a real loopback gateway (SQLite and the real PostgreSQL):
WSDL, zeep, the bmrgw client, faults for bad input, the send/receive log."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import zeep
from aiohttp import web
from lxml import etree
from sqlalchemy import Engine

from gateway.errors import RemoteFault
from gateway.keys import JOURNAL, STORE
from gateway.logs.records import LogRecord
from gateway.logs.tables import LogFilter, read
from gateway.ns import FAULT, REFDB, SOAP11_ENV, SOAP12_ENV
from gateway.serve.app import AppOptions, make_app
from refdb.client import RefdbClient
from refdb.files import read_records
from routing.config import parse_config

from .conftest import start_app
from .refdb_support import DATA, database, person, refdb_section

T = TypeVar("T")
INVALID = sorted((DATA / "invalid").glob("*.csv"))


@dataclass
class Gateway:
    url: str
    app: web.Application

    @property
    def engine(self) -> Engine:
        return self.app[STORE].engine

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking client call in a thread while the gateway serves it on this loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def client(self, fn: Callable[[RefdbClient], T]) -> T:
        def call() -> T:
            with RefdbClient(self.url) as client:
                return fn(client)
        return await self.run(call)

    async def log(self, **filters: Any) -> list[LogRecord]:
        await self.app[JOURNAL].flush()
        return list(read(self.engine, LogFilter(kind="refdb", **filters)))


async def start_gateway(url: str, tmp_path: Path, *, refdb: dict[str, Any] | None = None,
                        **gateway: Any) -> tuple[web.AppRunner, Gateway]:
    config = {"gateway": {"name": "dc-test", "db": url, **gateway}, "refdb": refdb or refdb_section()}
    app = make_app(parse_config(config, source=tmp_path / "endpoints.yaml"), AppOptions(watch_config=False))
    runner, base = await start_app(app)
    return runner, Gateway(url=base, app=app)


@pytest.fixture(params=["sqlite", "postgresql"])
async def gw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Gateway]:
    with database(request.param, tmp_path) as url:
        runner, gateway = await start_gateway(url, tmp_path)
        yield gateway
        await runner.cleanup()


@pytest.fixture
async def small_gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway on SQLite that takes requests of at most 4 KiB."""
    runner, gateway = await start_gateway(f"sqlite:///{tmp_path}/small.db", tmp_path, max_message_bytes=4096)
    yield gateway
    await runner.cleanup()


def soap(operation: str, inner: str, version: str = "1.1") -> tuple[bytes, dict[str, str]]:
    env = SOAP11_ENV if version == "1.1" else SOAP12_ENV
    body = (f'<s:Envelope xmlns:s="{env}"><s:Body><r:{operation} xmlns:r="{REFDB}">{inner}'
            f'</r:{operation}></s:Body></s:Envelope>').encode()
    ct = "text/xml; charset=utf-8" if version == "1.1" else "application/soap+xml; charset=utf-8"
    return body, {"Content-Type": ct}


async def post(http: aiohttp.ClientSession, gw: Gateway, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.post(f"{gw.url}/refdb", data=body, headers=headers) as response:
        return response.status, etree.fromstring(await response.read())


def fault_code(root: Any) -> str | None:
    error = root.find(f".//{{{FAULT}}}Error")
    return None if error is None else error.get("code")


# -- the WSDL and a third-party SOAP client --------------------------------------

async def test_wsdl_is_served_with_this_gateways_address(gw: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gw.url}/refdb?wsdl") as response:
        assert response.status == 200
        wsdl = etree.fromstring(await response.read())
    address = wsdl.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address is not None and address.get("location") == f"{gw.url}/refdb"
    async with http.get(f"{gw.url}/refdb") as response:
        assert response.status == 404


async def test_zeep_upserts_and_queries_through_the_wsdl(gw: Gateway) -> None:
    def use_zeep() -> tuple[Any, Any, Any]:
        client = zeep.Client(f"{gw.url}/refdb?wsdl")
        fields = [{"field": [{"name": k, "value": v} for k, v in person(n, fee="10.5").items()]} for n in (1, 2)]
        row = {"_attr_1": {k: v for k, v in person(3, fee="10.5").items() if v is not None}}  # the compact form
        pushed = client.service.Upsert(dataset="residents", mode="full", records={"record": fields, "row": [row]})
        queried = client.service.Query(dataset="residents", filters={"filter": [
            {"name": "person_id", "op": "ge", "value": "P000002"}]}, limit=10)
        changes = client.service.Changes(dataset="residents", sinceVersion=0)
        return pushed, queried, changes

    pushed, queried, changes = await gw.run(use_zeep)
    assert (pushed.version, pushed.inserted, pushed.received) == (1, 3, 3)
    assert queried.version == 1 and queried.more is False
    records = [{f.name: f.value for f in r.field} for r in queried.records.record]
    assert [r["person_id"] for r in records] == ["P000002", "P000003"]
    assert records[0]["fee"] == records[1]["fee"] == "10.50" and records[0]["updated"] is None
    assert len(changes.upserts.record) == 3


# -- pushes, queries, changes with the bmrgw client ------------------------------

@pytest.mark.parametrize("name", ["residents.csv", "residents.jsonl"])
async def test_push_file_then_query_every_type(gw: Gateway, name: str) -> None:
    result = await gw.client(lambda c: c.push("residents", read_records(DATA / name), mode="full", batch=3))
    assert (result.version, result.received, result.inserted) == (1, 4, 4)
    rows = {r["person_id"]: r for r in await gw.client(lambda c: list(c.query_all("residents")))}
    assert rows["P0001"] == {"person_id": "P0001", "name": "山田 太郎", "birth": "1950-04-01",
                             "updated": "2024-04-01T09:30:00", "fee": "1200.50", "household": "10", "active": "true"}
    assert rows["P0002"]["name"] == "佐藤, 花子" and rows["P0002"]["updated"] == "2024-04-01T00:30:00"
    assert rows["P0003"]["name"] == 'Quote "Q" <&>' and rows["P0003"]["fee"] is None
    assert rows["P0004"]["updated"] == "2024-03-31T23:59:59.500000" and rows["P0004"]["household"] == "-3"


async def test_batched_full_push_diff_push_delete_and_changes(gw: Gateway) -> None:
    first = await gw.client(lambda c: c.push("residents", (person(n) for n in range(1, 51)), mode="full", batch=7))
    assert (first.version, first.inserted) == (1, 50)
    second = await gw.client(lambda c: c.push("residents", (person(n) for n in range(11, 61)), mode="full", batch=9))
    assert (second.inserted, second.deleted, second.unchanged) == (10, 10, 40)
    third = await gw.client(lambda c: c.upsert("residents", [person(11, name="changed")], mode="diff"))
    assert (third.version, third.updated) == (3, 1)
    fourth = await gw.client(lambda c: c.delete("residents", [{"person_id": "P000012"}]))
    assert (fourth.version, fourth.deleted) == (4, 1)
    changes = await gw.client(lambda c: c.changes("residents", 2))
    assert changes.version == 4
    assert [r["person_id"] for r in changes.upserts] == ["P000011"]
    assert changes.deletes == [{"person_id": "P000012"}]
    page = await gw.client(lambda c: c.query("residents", [("household", "eq", "3"), ("person_id", "lt", "P000030")]))
    assert [r["person_id"] for r in page.records] == ["P000017", "P000024"]


async def test_a_gateway_that_skips_rows_gets_the_push_in_the_field_form(gw: Gateway,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway older than the row form skips rows: a full push must not commit without its records."""
    import refdb.wire

    await gw.client(lambda c: c.push("residents", [person(n) for n in range(3)], mode="full"))
    monkeypatch.setattr(refdb.wire, "_ROWS", set())  # the reader as it was before rows
    forms: list[str] = []
    staged = RefdbClient._staged

    def recorded(client: RefdbClient, body: bytes) -> int:
        forms.append("rows" if b"<r:row " in body else "fields")
        return staged(client, body)

    monkeypatch.setattr(RefdbClient, "_staged", recorded)
    result = await gw.client(lambda c: c.push("residents", [person(n) for n in range(10, 22)], mode="full", batch=5))
    assert (result.received, result.inserted, result.deleted) == (12, 12, 3)
    assert forms == ["rows", "fields", "fields", "fields"]
    assert len(await gw.client(lambda c: list(c.query_all("residents")))) == 12


async def test_a_push_whose_records_the_gateway_did_not_all_keep_is_aborted(gw: Gateway,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import refdb.service

    await gw.client(lambda c: c.push("residents", [person(n) for n in range(3)], mode="full"))
    item = refdb.service.Call.item

    def losing(call: Any, operation: str, scalars: Any, fields: Any, number: int) -> None:
        if fields.get("person_id") != "P000017":  # a gateway that loses one record
            item(call, operation, scalars, fields, number)

    monkeypatch.setattr(refdb.service.Call, "item", losing)
    with pytest.raises(RemoteFault, match="holds 9 records of push .* after 10 were sent; the push is aborted"):
        await gw.client(lambda c: c.push("residents", [person(n) for n in range(10, 22)], mode="full", batch=5))
    page = await gw.client(lambda c: c.query("residents"))
    assert page.version == 1 and [r["person_id"] for r in page.records] == ["P000000", "P000001", "P000002"]


async def test_paging_with_a_push_in_between_is_refused(gw: Gateway) -> None:
    await gw.client(lambda c: c.push("residents", (person(n) for n in range(1, 21)), mode="full"))
    first = await gw.client(lambda c: c.query("residents", limit=5))
    assert first.more and len(first.records) == 5
    await gw.client(lambda c: c.upsert("residents", [person(99)]))
    with pytest.raises(RemoteFault) as caught:
        await gw.client(lambda c: c.query("residents", offset=5, limit=5, version=first.version))
    assert caught.value.remote_code == "VersionChanged" and caught.value.status == 409


# -- bad values refuse the whole push --------------------------------------------

@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
async def test_a_bad_value_refuses_the_whole_push_naming_record_and_field(gw: Gateway, path: Path) -> None:
    await gw.client(lambda c: c.push("residents", [person(1)], mode="full"))
    good = (person(n) for n in range(2, 12))
    with pytest.raises(RemoteFault) as caught:
        await gw.client(lambda c: c.push("residents", [*good, *read_records(path)], mode="full", batch=4))
    fault = caught.value
    assert fault.remote_code == "InvalidRecord" and fault.status == 400
    assert fault.attributes["record"] in ("11", "12")  # the bad record's number in the push
    header = path.read_text().splitlines()[0].split(",")
    if path.stem != "key-twice":
        assert fault.attributes["field"] in header and fault.attributes["field"] in fault.reason
    rows = await gw.client(lambda c: list(c.query_all("residents")))
    assert [r["person_id"] for r in rows] == ["P000001"]
    assert (await gw.client(lambda c: c.query("residents"))).version == 1


@pytest.mark.parametrize("tail", ['<r:record><r:field name="person_id" value="P3"/><r:field name="person_id"/>'
                                  '</r:record></r:records></r:Upsert></s:Body></s:Envelope>', "<r:record><broken"],
                         ids=["field-twice-later", "malformed-later"])
async def test_the_first_bad_record_is_reported_though_the_request_breaks_off_later(
        gw: Gateway, http: aiohttp.ClientSession, tail: str) -> None:
    """Records are converted in batches, yet the fault is the one met first reading record by record."""
    records = ('<r:record><r:field name="person_id" value="P1"/></r:record>'
               '<r:record><r:field name="person_id" value="P2"/><r:field name="fee" value="12.345"/></r:record>')
    body = (f'<s:Envelope xmlns:s="{SOAP11_ENV}"><s:Body><r:Upsert xmlns:r="{REFDB}"><r:dataset>residents'
            f'</r:dataset><r:records>{records}{tail}').encode()
    status, root = await post(http, gw, body, {"Content-Type": "text/xml"})
    error = root.find(f".//{{{FAULT}}}Error")
    assert (status, error.get("code"), error.get("record"), error.get("field")) == (400, "InvalidRecord", "2", "fee")


async def test_a_request_of_several_stage_batches(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """One request is staged BATCH_ROWS records at a time; a key repeated in a later batch is found there."""
    monkeypatch.setattr("refdb.service.BATCH_ROWS", 3)
    result = await gw.client(lambda c: c.push("residents", [person(n) for n in range(1, 11)], mode="full", batch=10))
    assert (result.received, result.inserted) == (10, 10)
    records = [person(n) for n in range(1, 11)]
    records[7] = person(2, name="again")
    with pytest.raises(RemoteFault) as caught:
        await gw.client(lambda c: c.push("residents", records, mode="full", batch=10))
    assert caught.value.remote_code == "InvalidRecord" and caught.value.attributes["record"] == "7"
    assert "batch starting at record 7" in caught.value.reason
    assert len(await gw.client(lambda c: list(c.query_all("residents")))) == 10


async def test_a_refused_push_cannot_be_committed_afterwards(gw: Gateway) -> None:
    def attempt(client: RefdbClient) -> RemoteFault:
        push_id = client.call("BeginPush", '<r:dataset>residents</r:dataset><r:mode>full</r:mode>').findtext(
            f"{{{REFDB}}}pushId")
        bad = f'<r:pushId>{push_id}</r:pushId><r:records><r:record><r:field name="person_id" value="P1"/>' \
              '<r:field name="birth" value="yesterday"/></r:record></r:records>'
        with pytest.raises(RemoteFault):
            client.call("Upsert", bad)
        with pytest.raises(RemoteFault) as caught:
            client.call("Commit", f"<r:pushId>{push_id}</r:pushId>")
        return caught.value

    refused = await gw.client(attempt)
    assert refused.remote_code == "UnknownPush" and "refused" in refused.reason
    assert (await gw.client(lambda c: c.query("residents"))).version == 0


# -- malformed requests -----------------------------------------------------------

@pytest.mark.parametrize(("body", "content_type", "status", "code"), [
    (b"not xml at all", "text/xml", 400, "MalformedMessage"),
    (b'<!DOCTYPE x [<!ENTITY a "b">]><s:Envelope xmlns:s="' + SOAP11_ENV.encode() + b'"><s:Body/></s:Envelope>',
     "text/xml", 400, "MalformedMessage"),
    (b'<s:Envelope xmlns:s="' + SOAP11_ENV.encode() + b'"><s:Body><x:Drop xmlns:x="urn:x"/></s:Body></s:Envelope>',
     "text/xml", 400, "MalformedMessage"),
    (soap("Query", "<r:dataset>nope</r:dataset>")[0], "text/xml", 404, "UnknownDataset"),
    (soap("Query", "<r:limit>5</r:limit>")[0], "text/xml", 400, "InvalidRequest"),
    (soap("Query", "<r:dataset>residents</r:dataset><r:limit>100001</r:limit>")[0], "text/xml", 400, "InvalidRequest"),
    (soap("Query", '<r:dataset>residents</r:dataset><r:filters><r:filter name="birth" op="ge" value="soon"/>'
               '</r:filters>')[0], "text/xml", 400, "InvalidRequest"),
    (soap("Upsert", "<r:dataset>residents</r:dataset><r:mode>all</r:mode><r:records/>")[0],
     "text/xml", 400, "InvalidRequest"),
    (soap("Commit", "<r:pushId>no-such-push</r:pushId>")[0], "text/xml", 404, "UnknownPush"),
    (soap("Query", "<r:dataset>residents</r:dataset>")[0], "application/json", 415, "MalformedMessage"),
    (soap("Query", "<r:dataset>residents</r:dataset><r:offset>99999999999999999999</r:offset>")[0],
     "text/xml", 400, "InvalidRequest"),
    (soap("Query", f"<r:dataset>residents</r:dataset><r:offset>{2**31}</r:offset>")[0], "text/xml", 400, "InvalidRequest"),
    (soap("Query", f"<r:dataset>residents</r:dataset><r:version>{2**63}</r:version>")[0],
     "text/xml", 400, "InvalidRequest"),
    (soap("Changes", f"<r:dataset>residents</r:dataset><r:sinceVersion>{10**30}</r:sinceVersion>")[0],
     "text/xml", 400, "InvalidRequest"),
    (soap("Changes", f"<r:dataset>residents</r:dataset><r:sinceVersion>0</r:sinceVersion><r:offset>{10**30}</r:offset>")[0],
     "text/xml", 400, "InvalidRequest"),
], ids=["not-xml", "dtd", "unknown-operation", "unknown-dataset", "no-dataset", "limit-too-big",
        "filter-bad-value", "bad-mode", "unknown-push", "not-soap-content-type", "offset-huge", "offset-2**31",
        "version-2**63", "since-version-huge", "changes-offset-huge"])
async def test_bad_requests_get_soap_faults(gw: Gateway, http: aiohttp.ClientSession, body: bytes,
                                            content_type: str, status: int, code: str) -> None:
    got, root = await post(http, gw, body, {"Content-Type": content_type})
    assert (got, fault_code(root)) == (status, code)
    assert root.find(f"{{{SOAP11_ENV}}}Body/{{{SOAP11_ENV}}}Fault/faultcode").text == "soap:Client"
    [record] = await gw.log()
    assert (record.status, record.fault_code, record.http_status) == ("fault", code, status)


async def test_soap12_requests_get_soap12_answers_and_faults(gw: Gateway, http: aiohttp.ClientSession) -> None:
    status, root = await post(http, gw, *soap("Query", "<r:dataset>residents</r:dataset>", "1.2"))
    assert status == 200 and root.find(f"{{{SOAP12_ENV}}}Body/{{{REFDB}}}QueryResponse/{{{REFDB}}}version").text == "0"
    status, root = await post(http, gw, *soap("Query", "<r:dataset>nope</r:dataset>", "1.2"))
    assert status == 404 and root.find(f".//{{{SOAP12_ENV}}}Value").text == "soap:Sender"


async def test_one_request_over_the_size_limit_is_refused_batches_are_not(small_gw: Gateway) -> None:
    with pytest.raises(RemoteFault) as caught:
        await small_gw.client(lambda c: c.upsert("residents", [person(n) for n in range(100)]))
    assert caught.value.remote_code == "MessageTooLarge" and "BeginPush" in caught.value.reason
    result = await small_gw.client(lambda c: c.push("residents", (person(n) for n in range(100)), batch=10))
    assert result.inserted == 100


# -- the send/receive log ---------------------------------------------------------

async def test_pushes_are_logged_in_their_commit_and_queries_and_faults_after(gw: Gateway) -> None:
    pushed = await gw.client(lambda c: c.push("residents", (person(n) for n in range(5)), mode="full", batch=2))
    # Written in the push's own transaction: there before the background writer runs.
    in_commit = [r for r in read(gw.engine, LogFilter(kind="refdb", message_id=pushed.push_id))
                 if r.endpoint == "refdb:full"]
    assert len(in_commit) == 1
    record = in_commit[0]
    assert (record.status, record.to_ap, record.endpoint) == ("ok", "residents", "refdb:full")
    assert record.bytes_in > 5 * 100 and record.sha256 and len(record.sha256) == 64
    await gw.client(lambda c: c.query("residents"))
    with pytest.raises(RemoteFault):
        await gw.client(lambda c: c.query("nope"))
    records = await gw.log()
    steps = [r.endpoint for r in records if r.message_id == pushed.push_id]
    assert sorted(s or "" for s in steps) == sorted(["refdb:BeginPush", "refdb:Upsert", "refdb:Upsert", "refdb:Upsert", "refdb:full"])
    queries = [r for r in records if r.endpoint == "refdb:Query"]
    assert [(r.status, r.to_ap, r.fault_code) for r in queries] == [("ok", "residents", None),
                                                                     ("fault", None, "UnknownDataset")]
    assert queries[0].bytes_out > 0 and queries[1].http_status == 404


async def test_a_reloaded_declaration_adds_columns_and_a_destructive_one_is_not_applied(
        tmp_path: Path) -> None:
    from .conftest import write_yaml

    source = tmp_path / "endpoints.yaml"
    config: dict[str, Any] = {"gateway": {"db": f"sqlite:///{tmp_path}/reload.db"}, "refdb": refdb_section()}
    write_yaml(source, config)
    app = make_app(parse_config(config, source=source), AppOptions(watch_config=True))
    runner, base = await start_app(app)
    gw = Gateway(url=base, app=app)
    try:
        config["refdb"]["datasets"]["residents"]["columns"]["ward"] = "string"
        write_yaml(source, config)
        for _ in range(40):  # the watcher polls twice a second
            await asyncio.sleep(0.1)
            try:
                await gw.client(lambda c: c.upsert("residents", [person(1, ward="Chuo")]))
                break
            except RemoteFault as exc:
                assert "no column 'ward'" in exc.reason
        assert (await gw.client(lambda c: c.query("residents"))).records[0]["ward"] == "Chuo"
        config["refdb"]["datasets"]["residents"]["columns"]["ward"] = "integer"
        write_yaml(source, config)
        await asyncio.sleep(1.5)
        # Not applied: the stored column keeps its type and its text.
        assert (await gw.client(lambda c: c.query("residents"))).records[0]["ward"] == "Chuo"
        await gw.client(lambda c: c.upsert("residents", [person(2, ward="Kita")]))
    finally:
        await runner.cleanup()


async def test_a_broken_store_is_a_server_fault_not_a_traceback(gw: Gateway) -> None:
    from sqlalchemy import text

    with gw.engine.begin() as connection:
        connection.execute(text("DROP TABLE refdb__residents__stage"))  # an operator's mistake
    with pytest.raises(RemoteFault) as caught:
        await gw.client(lambda c: c.push("residents", [person(1)]))
    fault = caught.value
    assert (fault.remote_code, fault.status) == ("RefdbUnavailable", 503)
    assert "cannot stage the records" in fault.reason and "Traceback" not in fault.reason
    assert (await gw.client(lambda c: c.query("residents"))).version == 0


async def test_text_round_trips_exactly(gw: Gateway) -> None:
    names = ["line 1\nline 2\r\n\tend", 'quotes " \' and & &amp; &#38; <tag>', "全角　スペース", "  padded  ", ""]
    records = [person(n, name=name) for n, name in enumerate(names)]
    await gw.client(lambda c: c.push("residents", records, mode="full"))
    got = await gw.client(lambda c: [r["name"] for r in c.query_all("residents")])
    assert got == names


# -- bounded work: a flood of slow requests holds neither threads nor the loop -------

async def test_slow_requests_hold_at_most_max_concurrent_threads_and_the_rest_are_busy(tmp_path: Path) -> None:
    runner, gw = await start_gateway(f"sqlite:///{tmp_path}/busy.db", tmp_path,
                                     refdb={**refdb_section(), "max_concurrent": 4, "queue_timeout": 1})
    body, headers = soap("Query", "<r:dataset>residents</r:dataset>")
    before = threading.active_count()
    peak = before
    running = True

    async def watch() -> None:
        nonlocal peak
        while running:
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.01)

    async def slow() -> AsyncIterator[bytes]:
        yield body[:40]
        await asyncio.sleep(2)  # a caller on a slow line: the request occupies its worker meanwhile
        yield body[40:]

    async def one(http: aiohttp.ClientSession) -> tuple[int, str | None]:
        async with http.post(f"{gw.url}/refdb", data=slow(), headers=headers) as response:
            return response.status, fault_code(etree.fromstring(await response.read()))

    watcher = asyncio.create_task(watch())
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            answers = await asyncio.gather(*(one(http) for _ in range(200)))
    finally:
        running = False
        await watcher
        records = await gw.log()
        await runner.cleanup()
    served = answers.count((200, None))
    busy = answers.count((503, "GatewayBusy"))
    assert served + busy == 200 and served >= 4 and busy > 0
    assert peak - before <= 4 + 6  # the request workers, and the loop's default executor
    assert sorted(r.fault_code or "-" for r in records) == sorted(["GatewayBusy"] * busy + ["-"] * served)
