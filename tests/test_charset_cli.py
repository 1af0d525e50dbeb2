"""``bmrgw charset check FILE --endpoint NAME`` lists what would not survive, without sending (issue 23, item 3);
and a store made before ``charset_substitutions`` existed gets the column and keeps verifying."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from gateway.cli import main
from gateway.logs.chain import verify
from gateway.logs.records import LogRecord
from gateway.logs.tables import TABLES, append, ensure_schema, read

from .conftest import write_yaml

DATA = Path(__file__).parent / "data" / "charset"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.yaml"
    charset = {"encoding": "cp932", "gaiji": str(DATA / "gaiji-cp932.csv"), "unmappable": "refuse"}
    write_yaml(path, {"gateway": {"db": f"sqlite:///{tmp_path}/never.db"},
                      "endpoints": {"city": {"url": "http://127.0.0.1:9/city", "charset": charset},
                                    "plain": {"url": "http://127.0.0.1:9/plain"}}})
    return path


def test_check_lists_every_character_that_would_not_survive(config: Path, capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    code, out, err = run(capsys, "charset", "check", DATA / "unmappable.txt", "--endpoint", "city",
                         "--config", config, "--format", "json")
    assert code == 1
    found = [json.loads(line) for line in out.splitlines()]
    assert [(f["line"], f["column"], f["text"], f["code"], f["becomes"]) for f in found] == [
        (2, 6, "😀", "U+1F600", "〓"), (3, 4, "葛\U000e0101", "U+E0101", "葛"), (4, 3, "\ue000", "U+E000", "〓"),
        (5, 3, "𠀋", "U+2000B", "〓")]
    assert "4 character(s) would not survive city (cp932)" in err
    assert not (tmp_path / "never.db").exists(), "a check sends nothing and touches no store"
    code, out, _ = run(capsys, "charset", "check", DATA / "unmappable.txt", "--endpoint", "city", "--config", config)
    assert code == 1 and "U+1F600" in out and "line" in out.splitlines()[0]


def test_check_passes_a_clean_file_and_reads_partner_files(config: Path, capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    code, _, err = run(capsys, "charset", "check", DATA / "gaiji-sample.txt", "--endpoint", "city", "--config", config)
    assert code == 0 and "every character" in err
    partner = tmp_path / "from-city.csv"
    partner.write_bytes("1,髙\n2,".encode("cp932") + b"\xf0\x40\n3," + b"\xf0\x99\n")
    code, out, _ = run(capsys, "charset", "check", partner, "--endpoint", "city", "--config", config,
                       "--from-partner", "--format", "csv")
    assert code == 1
    assert out.splitlines() == ["line,column,position,text,code,becomes", "3,3,12,<F099>,0xF099,〓"]


def test_check_shows_what_a_reduction_makes_of_a_character(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "endpoints.yaml"
    write_yaml(path, {"gateway": {"db": f"sqlite:///{tmp_path}/never.db"}, "endpoints": {"mj": {
        "url": "http://127.0.0.1:9/mj", "charset": {"encoding": "shift_jis", "reduce": "mj"}}}})
    code, out, err = run(capsys, "charset", "check", DATA / "mj-names.txt", "--endpoint", "mj", "--config", path,
                         "--format", "json")
    assert code == 1, "a reduction is a loss: the city should know before go-live"
    found = [json.loads(line) for line in out.splitlines()]
    assert [(f["line"], f["column"], f["position"], f["text"], f["code"], f["becomes"]) for f in found] == [
        (2, 3, 10, "𠮷", "U+20BB7", "吉"), (2, 6, 13, "髙", "U+9AD9", "高"),
        (3, 3, 18, "邊\U000e0108", "U+908A U+E0108", "邊"), (3, 8, 23, "葛\U000e0101", "U+E0101", "葛"),
        (4, 3, 28, "剝", "U+525D", "剥"), (4, 6, 31, "😀", "U+1F600", "〓")]
    code, out, _ = run(capsys, "charset", "check", DATA / "mj-names.txt", "--endpoint", "mj", "--config", path)
    assert out.splitlines()[1].split() == ["2", "3", "10", "𠮷", "U+20BB7", "吉"]
    assert "6 character(s) would not survive mj (shift_jis)" in err


@pytest.mark.parametrize(("argv", "status", "message"), [
    (["--endpoint", "nowhere"], 2, "no endpoint named 'nowhere'"),
    (["--endpoint", "plain"], 0, "no character profile"),
])
def test_check_usage(argv: list[str], status: int, message: str, config: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "charset", "check", DATA / "unmappable.txt", *argv, "--config", config)
    assert code == status and message in out + err


def test_a_not_utf8_file_is_a_clear_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "charset", "check", DATA / "nec-ibm.cp932", "--endpoint", "city", "--config", config)
    assert code == 2 and err.startswith("bmrgw: ") and "not UTF-8" in err and "Traceback" not in err


def test_an_older_store_is_read_as_it_is_then_gets_the_column_and_still_verifies(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/old.db")
    try:
        ensure_schema(engine)
        record = LogRecord(ts=datetime(2026, 1, 1, tzinfo=UTC), ntp_offset=0.0, ntp_synced=True, kind="relay",
                           direction="request", status="ok", message_id="old-1")
        with engine.begin() as connection:
            append(connection, [record], node="dc-east")
            connection.exec_driver_sql(f'ALTER TABLE "{TABLES.log.name}" DROP COLUMN charset_substitutions')
        assert "charset_substitutions" not in {c["name"] for c in inspect(engine).get_columns(TABLES.log.name)}
        # Read-only commands read an older store as it is, without changing it.
        assert [r.message_id for r in read(engine)] == ["old-1"] and verify(engine, None).ok
        assert "charset_substitutions" not in {c["name"] for c in inspect(engine).get_columns(TABLES.log.name)}
        ensure_schema(engine)
        assert "charset_substitutions" in {c["name"] for c in inspect(engine).get_columns(TABLES.log.name)}
        stored = list(read(engine))
        assert [r.message_id for r in stored] == ["old-1"] and stored[0].charset_substitutions is None
        assert verify(engine, None).ok
    finally:
        engine.dispose()
