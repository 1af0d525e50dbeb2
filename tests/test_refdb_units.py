"""Pure parts of the reference DB: declarations, value types, the streamed request reader, file readers."""

from __future__ import annotations

import copy
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError, FileError, InvalidRecord, MalformedMessage, MessageTooLarge
from gateway.ns import REFDB, SOAP11_ENV, SoapVersion
from refdb.config import Column, ColumnType, parse_refdb
from refdb.files import read_records
from refdb.values import BadValue, Converter, FieldError, format_value, parse_value
from refdb.wire import RequestReader
from routing.config import parse_config

from .refdb_support import DATA, RESIDENTS, refdb_section

# -- declarations --------------------------------------------------------------

def test_declaration_is_parsed_into_frozen_dataclasses() -> None:
    dataset = parse_config({"refdb": refdb_section()}).refdb.datasets["residents"]
    assert dataset.key == ("person_id",) and dataset.owner == "cityhall-a-app"
    assert dataset.readers == frozenset({"kaigo-app"}) and dataset.view == "refdb_residents"
    assert dataset.column("fee") == Column(name="fee", type=ColumnType.DECIMAL, precision=12, scale=2)
    assert [c.declared for c in dataset.columns][:3] == ["string", "string", "date"]
    with pytest.raises(AttributeError):
        dataset.owner = "x"  # type: ignore[misc]


def _declared(**changes: Any) -> dict[str, Any]:
    dataset = copy.deepcopy(RESIDENTS)
    dataset.update(changes)
    return {"datasets": {"residents": dataset}}


@pytest.mark.parametrize(("section", "message"), [
    ({"datasets": {"Residents": RESIDENTS}}, "'Residents' is not a valid dataset name"),
    ({"datasets": {"a__b": RESIDENTS}}, "'a__b' is not a valid dataset name"),
    (_declared(columns={"person_id": "text"}), "unknown type 'text'"),
    (_declared(columns={"person_id": "string", "_version": "integer"}), "'_version' is not a valid column name"),
    (_declared(columns={"person_id": "string", "fee": "decimal(20,2)"}), "decimal(P,S) needs 1 <= P <= 15"),
    (_declared(key=["nobody"]), "'nobody' is not one of the columns"),
    (_declared(key=[]), "name at least one key column"),
    (_declared(owner=None), "owner: must be a non-empty string"),
    (_declared(colour="red"), "unknown key 'colour'"),
    (_declared(sql_readers=["Robert'); DROP"]), "must be a PostgreSQL role name"),
    ({"max_concurrent": 0}, "refdb.max_concurrent: must be an integer between 1 and 1024"),
    ({"queue_timeout": -1}, "refdb.queue_timeout: must be a number between 0 and 3600"),
], ids=["upper-case", "double-underscore", "unknown-type", "reserved-column", "decimal-too-wide",
        "key-not-a-column", "no-key", "no-owner", "unknown-key", "bad-role", "no-turns", "negative-queue"])
def test_invalid_declarations_are_refused_with_their_path(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"refdb": section})
    assert message in caught.value.reason and caught.value.reason.startswith("refdb")


def test_no_refdb_section_means_no_datasets() -> None:
    assert dict(parse_config({}).refdb.datasets) == {}
    assert dict(parse_refdb(None).datasets) == {}
    assert (parse_refdb(None).max_concurrent, parse_refdb(None).queue_timeout) == (8, 5.0)


# -- values --------------------------------------------------------------------

DECIMAL = Column(name="fee", type=ColumnType.DECIMAL, precision=6, scale=2)


@pytest.mark.parametrize(("kind", "text", "value"), [
    (ColumnType.STRING, " 山田 ", " 山田 "),
    (ColumnType.INTEGER, "-42", -42),
    (ColumnType.INTEGER, "9223372036854775807", 2**63 - 1),
    (ColumnType.DATE, "2024-02-29", date(2024, 2, 29)),
    (ColumnType.DATETIME, "2024-04-01T09:30:00", datetime(2024, 4, 1, 9, 30)),
    (ColumnType.DATETIME, "2024-04-01 09:30:00.25+09:00", datetime(2024, 4, 1, 0, 30, 0, 250000)),
    (ColumnType.BOOLEAN, "TRUE", True),
    (ColumnType.BOOLEAN, "0", False),
])
def test_values_parse(kind: ColumnType, text: str, value: Any) -> None:
    assert parse_value(text, Column(name="c", type=kind)) == value


@pytest.mark.parametrize(("text", "value"), [("1234.5", "1234.50"), ("-0.01", "-0.01"), ("007", "7.00"),
                                             (".5", "0.50")])
def test_decimals_keep_their_scale(text: str, value: str) -> None:
    parsed = parse_value(text, DECIMAL)
    assert parsed == Decimal(value) and format_value(parsed, DECIMAL) == value


@pytest.mark.parametrize(("kind", "text"), [
    (ColumnType.STRING, "a\0b"), (ColumnType.INTEGER, "1.0"), (ColumnType.INTEGER, "9223372036854775808"),
    (ColumnType.DATE, "2023-02-29"), (ColumnType.DATE, "20240101"), (ColumnType.DATETIME, "2024-04-01T24:00"),
    (ColumnType.BOOLEAN, "yes"), (ColumnType.DECIMAL, "12345.6"), (ColumnType.DECIMAL, "1.005"),
    (ColumnType.DECIMAL, "1e3"), (ColumnType.DECIMAL, "NaN"),
])
def test_bad_values_are_refused(kind: ColumnType, text: str) -> None:
    column = DECIMAL if kind is ColumnType.DECIMAL else Column(name="c", type=kind)
    with pytest.raises(BadValue):
        parse_value(text, column)


def test_converter_names_the_field_and_fills_absent_columns_with_null() -> None:
    converter = Converter(parse_refdb(refdb_section()).datasets["residents"])
    row = dict(zip(converter.names, converter.row({"person_id": "P1", "fee": "3"})))
    assert row["fee"] == Decimal("3.00") and row["name"] is None and len(row) == len(RESIDENTS["columns"])
    cases: list[tuple[dict[str, str | None], str]] = [
        ({"person_id": "P1", "birth": "x"}, "birth"), ({"person_id": None}, "person_id"),
        ({"person_id": "P1", "shoe": "42"}, "shoe")]
    for fields, field in cases:
        with pytest.raises(FieldError) as caught:
            converter.row(fields)
        assert caught.value.field == field
    assert converter.key({"person_id": "P1"}) == {"person_id": "P1"}
    with pytest.raises(FieldError, match="not a key column"):
        converter.key({"person_id": "P1", "name": "x"})


RESIDENTS_SET = parse_refdb(refdb_section()).datasets["residents"]
#: Spellings of every type: the usual ones, converted a column at a time, then the others, record by record.
SPELLINGS: dict[str, tuple[list[str], list[str | None]]] = {
    "name": (["山田 &<\"'", " x ", ""], ["a", None]),
    "birth": (["2024-02-29", "0999-01-01"], [" 2024-02-29", None]),
    "updated": (["2024-04-01T09:30", "2024-04-01 09:30:00.25", "0999-01-01T00:00:00.000001"],
                ["2024-04-01T09:30:00+09:00", None]),
    "fee": (["1234.5", "-0.01", "007", ".5", "5.", "+1.10", "0000000001.000"], [" 3", "１２", None]),
    "household": (["-42", "+7", "9223372036854775807", "-9223372036854775808"], [" 5", "١٢", None]),
    "active": (["true", "0", "false", "1"], ["TRUE", " false", None]),
}


def _records(column: str, *, usual_only: bool = False) -> list[dict[str, str | None]]:
    usual, other = SPELLINGS[column]
    texts = usual if usual_only else [*usual, *other]
    return [{"person_id": f"P{n}", column: text} for n, text in enumerate(texts)]


@pytest.mark.parametrize("driver", ["sqlite", "postgresql", ""])
@pytest.mark.parametrize("column", sorted(SPELLINGS))
def test_a_batch_converts_as_its_records_do(driver: str, column: str) -> None:
    converter = Converter(RESIDENTS_SET, driver)
    for records in (_records(column), _records(column, usual_only=True)):
        assert converter.rows(records) == [converter.row(r) for r in records]
    usual = _records(column, usual_only=True)
    assert converter._by_column(usual) == converter.rows(usual)  # the usual spellings take the fast path


@pytest.mark.parametrize("driver", ["sqlite", "postgresql"])
def test_records_leaving_null_columns_out_still_convert_a_column_at_a_time(driver: str) -> None:
    converter = Converter(RESIDENTS_SET, driver)
    records: list[dict[str, str | None]] = [
        {"person_id": "P1", "fee": "1.5", "birth": "2024-02-29"}, {"person_id": "P2", "name": "x"},
        {"person_id": "P3", "fee": None, "household": "7"}, {"person_id": "P4", "fee": "2", "active": "true"}]
    assert converter._by_column(records) == [converter.row(r) for r in records]
    bad_records: list[tuple[dict[str, str | None], str]] = [
        ({"person_id": "P5", "shoe": "42"}, "shoe"), ({"fee": "1"}, "person_id")]
    for bad, field in bad_records:
        with pytest.raises(FieldError) as caught:
            converter.rows([*records, bad])
        assert (caught.value.record, caught.value.field) == (4, field)


@pytest.mark.parametrize("column", ["birth", "updated", "fee", "active", "household"])
def test_sqlite_values_are_what_sqlalchemy_binds(column: str) -> None:
    """Staged rows bypass SQLAlchemy's bind processing; they must hold what it would have stored."""
    from sqlalchemy.dialects import sqlite

    from refdb.schema import sql_type

    dialect = sqlite.dialect()
    declared = RESIDENTS_SET.column(column)
    assert declared is not None
    bind = sql_type(declared).dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)
    converter = Converter(RESIDENTS_SET, "sqlite")
    position = converter.names.index(column)
    records = [r for r in _records(column) if r[column] is not None]
    assert len(records) > len(SPELLINGS[column][0])  # both paths
    expected = [bind(parse_value(r[column], declared)) for r in records]
    assert [row[position] for row in converter.rows(records)] == expected
    assert [converter.row(r)[position] for r in records] == expected


@pytest.mark.parametrize(("records", "number", "field"), [
    ([{"person_id": "P1", "fee": "1"}, {"person_id": "P2", "fee": "1.234"}, {"person_id": "P3", "birth": "x"}], 1, "fee"),
    ([{"person_id": "P1", "fee": "1"}, {"person_id": "P2", "birth": "x"}, {"person_id": "P3", "fee": "1.234"}], 1, "birth"),
    ([{"person_id": "P1", "birth": "2023-02-29"}, {"person_id": "P2", "birth": "x"}], 0, "birth"),
    ([{"person_id": "P1"}, {"person_id": "P2", "shoe": "42"}], 1, "shoe"),
    ([{"person_id": "P1"}, {"person_id": None}], 1, "person_id"),
    ([{"person_id": "P1", "household": "1"}, {"person_id": "P2", "household": "9223372036854775808"}], 1, "household"),
    ([{"person_id": "P1", "name": "a"}, {"person_id": "P2", "name": "a\0b"}], 1, "name"),
    ([{"person_id": "P1", "active": "true"}, {"person_id": "P2", "active": "yes"}], 1, "active"),
], ids=["first-in-order", "first-in-order-other-column", "not-a-day", "unknown-column", "null-key", "int64",
        "nul", "boolean"])
def test_a_batch_names_its_first_bad_record(records: list[dict[str, str | None]], number: int, field: str) -> None:
    with pytest.raises(FieldError) as caught:
        Converter(RESIDENTS_SET, "sqlite").rows(records)
    assert (caught.value.record, caught.value.field) == (number, field)


# -- the streamed request reader ----------------------------------------------

def envelope(operation: str, inner: str, header: str = "") -> bytes:
    return (f'<s:Envelope xmlns:s="{SOAP11_ENV}" xmlns:r="{REFDB}">{header}<s:Body><r:{operation}>{inner}'
            f'</r:{operation}></s:Body></s:Envelope>').encode()


def read(body: bytes, chunk: int = 7, max_bytes: int = 10**6) -> tuple[RequestReader, list[Any]]:
    items: list[Any] = []
    reader = RequestReader(lambda op, scalars, fields, n: items.append((op, dict(scalars), fields, n)), max_bytes)
    for start in range(0, len(body), chunk):  # tiny chunks: elements split across feeds
        reader.feed(body[start:start + chunk])
    reader.finish()
    return reader, items


def test_records_stream_out_with_the_scalars_before_them() -> None:
    body = envelope("Upsert", '<r:dataset> residents </r:dataset><r:mode>full</r:mode><r:records>'
                    '<r:record><r:field name="a" value="1 &amp; &lt;2&gt; &amp;amp; &#38;#38;"/><r:field name="b"/>'
                    '</r:record><r:record><r:field name="a" value=""/></r:record></r:records>',
                    header='<s:Header><r:dataset>not-this</r:dataset></s:Header>')
    reader, items = read(body)
    assert (reader.version, reader.operation) == (SoapVersion.V11, "Upsert")
    assert items == [("Upsert", {"dataset": "residents", "mode": "full"}, {"a": "1 & <2> &amp; &#38;", "b": None}, 1),
                     ("Upsert", {"dataset": "residents", "mode": "full"}, {"a": ""}, 2)]


def test_escaped_names_and_values_round_trip_through_the_reader() -> None:
    from refdb.client import _batch_body

    records: list[dict[str, str | None]] = [
        {"a&b": "1 & 2 < 3 > \"q\" 'a' &amp; &#38; ]]>", "住所": "札幌市\t中央区\r\n1-2 ☃", "<x>": None, 'q"': ""},
        {"&": "&", "name": "&#38;#38;"},
        {"{x}": "{0} {}", "name": "}{"}, {"name": "}{", "{x}": "a"}, {"{x}": "b", "name": "c"},
        {"{x}": "d", "name": "e"},  # two of one shape in a row, after the same names in another order
    ]
    _, items = read(_batch_body("push-1", records), chunk=5)
    assert [fields for _, _, fields, _ in items] == records


def test_rows_stream_out_like_records_an_absent_attribute_being_null() -> None:
    body = envelope("Upsert", '<r:dataset>d</r:dataset><r:records>'
                    '<r:row a="1" b=""/><r:record><r:field name="a" value="2"/></r:record><r:row/>'
                    '<r:row a="x &amp; y &lt;z&gt; &amp;amp; &#38;#38; &#10;&#9;" c="&quot;"/></r:records>')
    for chunk in (7, 1000):  # the "&" arrives in a later feed than the first rows, or in the same
        _, items = read(body, chunk=chunk)
        assert [(fields, n) for _, _, fields, n in items] == [
            ({"a": "1", "b": ""}, 1), ({"a": "2"}, 2), ({}, 3), ({"a": "x & y <z> &amp; &#38; \n\t", "c": '"'}, 4)]
    _, items = read(envelope("Delete", '<r:dataset>d</r:dataset><r:keys><r:row a="1"/><r:key>'
                             '<r:field name="a" value="2"/></r:key></r:keys>'))
    assert [(op, fields) for op, _, fields, _ in items] == [("Delete", {"a": "1"}), ("Delete", {"a": "2"})]


def test_the_client_sends_rows_and_fields_only_for_names_no_attribute_can_have() -> None:
    from refdb.client import _batch_body

    records: list[dict[str, str | None]] = [
        {"person_id": "P1", "name": 'a & b < "c"\n\td', "fee": None},
        {"person_id": "P2", "name": "", "fee": "1"},
        {"person_id": "P3", "Name": "upper case"}, {"person_id": "P4", "xmlns": "urn:x"},
        {"person_id": "P5", "first name": "spaced"}, {"person_id": "P6", "name": "row again"},
    ]
    body = _batch_body("push-1", records)
    assert body.count(b"<r:row ") == 3 and body.count(b"<r:record>") == 3
    _, items = read(body, chunk=5)
    assert [fields for _, _, fields, _ in items] == [{k: v for k, v in r.items() if v is not None} for r in records]


def test_query_filters_are_collected() -> None:
    reader, items = read(envelope("Query", '<r:dataset>residents</r:dataset><r:filters>'
                                  '<r:filter name="birth" op="ge" value="2000-01-01"/><r:filter name="x"/>'
                                  '</r:filters><r:limit>5</r:limit>'))
    assert items == [] and reader.scalars == {"dataset": "residents", "limit": "5"}
    assert reader.filters == [{"name": "birth", "op": "ge", "value": "2000-01-01"}, {"name": "x"}]


@pytest.mark.parametrize(("body", "error", "message"), [
    (b"<x/>", MalformedMessage, "is not a SOAP Envelope"),
    (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', MalformedMessage, "DTDs are not allowed"),
    (envelope("Drop", ""), MalformedMessage, "is not a refdb operation"),
    (envelope("Upsert", "<r:records>")[:-20], MalformedMessage, "not well-formed"),
    (envelope("Upsert", '<r:records><r:record><r:field value="1"/></r:record></r:records>'), InvalidRecord,
     "record 1: a field has no name"),
    (envelope("Upsert", '<r:records><r:record><r:field name="a"/><r:field name="a"/></r:record></r:records>'),
     InvalidRecord, "field 'a' appears twice"),
    (envelope("Query", "<r:dataset>" + "x" * 2000 + "</r:dataset>"), MessageTooLarge, "BeginPush"),
    (envelope("Upsert", '<r:records><r:row a="1"/><r:row a="2"><r:field name="b" value="1"/></r:row></r:records>'),
     InvalidRecord, "record 2: a row holds no elements"),
], ids=["not-soap", "dtd", "unknown-operation", "truncated", "nameless-field", "field-twice", "too-large",
        "row-with-children"])
def test_bad_requests_are_refused(body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        read(body, max_bytes=1024)


# -- files ----------------------------------------------------------------------

def test_csv_and_jsonl_give_the_same_records() -> None:
    from_csv = list(read_records(DATA / "residents.csv"))
    from_jsonl = list(read_records(DATA / "residents.jsonl"))
    assert len(from_csv) == 4 and from_csv[2]["fee"] is None and from_csv[1]["name"] == "佐藤, 花子"
    converter = Converter(parse_refdb(refdb_section()).datasets["residents"])
    assert [converter.row(r) for r in from_csv] == [converter.row(r) for r in from_jsonl]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("short.csv", "a,b\n1\n", "line 2: 1 cells, the header has 2"),
    ("twice.csv", "a,a\n1,2\n", "name each column once"),
    ("list.jsonl", '{"a": [1]}\n', "line 1: 'a' must be a string"),
    ("broken.jsonl", '{"a": 1}\n{"a": \n', "line 2: not JSON"),
    ("array.jsonl", "[1, 2]\n", "must be a JSON object"),
    ("records.xml", "<x/>", "give a .csv or .jsonl file"),
])
def test_bad_files_name_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(FileError, match=message):
        list(read_records(path))


def test_elements_nested_in_fields_do_not_confuse_the_reader() -> None:
    body = envelope("Upsert", '<r:dataset>d</r:dataset><r:records>'
                    '<r:record><r:field name="a" value="1"><x:junk xmlns:x="urn:x"><x:deeper/></x:junk></r:field>'
                    '<r:field name="b" value="2"/></r:record><r:record><r:field name="a" value="3"/></r:record>'
                    '</r:records>')
    _, items = read(body)
    assert [(fields, n) for _, _, fields, n in items] == [({"a": "1", "b": "2"}, 1), ({"a": "3"}, 2)]
