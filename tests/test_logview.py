"""``bmrgw logs`` and ``bmrgw time`` through their argparse commands, on a real store and NTP server."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from gateway.cli import config_option, main
from gateway.errors import ConfigError
from gateway.logs.commands import add_logs_command, add_time_command, follow, parse_time
from gateway.logs.records import FIELDS
from gateway.logs.tables import TABLES, LogFilter, ensure_schema, head_seqs
from gateway.store import Store

from .pg import pg_schema
from .sntp import SntpResponder
from .test_journal import entry, write

NOW = datetime.now(UTC).replace(microsecond=0)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bmrgw")
    commands = top.add_subparsers()
    add_logs_command(commands, config_option)
    add_time_command(commands, config_option)
    return top


def run(*argv: str) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


def write_config(path: Path, *, ntp: list[str] | None = None) -> Path:
    ntp_block = f"  ntp: {{servers: {json.dumps(ntp)}, interval: 1}}\n" if ntp is not None else ""
    path.write_text(f"gateway:\n  name: dc-test\n  db: sqlite:///{path.parent}/log.db\n"
                    f"  data_dir: {path.parent}/var\n{ntp_block}", encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A config whose store holds seven records of two nodes from the last three hours."""
    monkeypatch.delenv("BMRGW_DB_URL", raising=False)
    path = write_config(tmp_path / "endpoints.yaml")
    store = Store(f"sqlite:///{tmp_path}/log.db")
    ensure_schema(store.engine)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)  # not import time: --since 1h is now
    write(store.engine, "dc-east", [
        entry(0, ts=at, message_id="m-1"),
        entry(1, ts=at + timedelta(minutes=1), message_id="m-1", direction="response"),
        entry(2, ts=at + timedelta(hours=2, minutes=10), message_id="m-2", status="fault", fault_code="Server",
              http_status=500, ntp_synced=False),
        entry(3, ts=at + timedelta(hours=2, minutes=50), message_id="m-3", kind="jx", to_ap="cityhall-a"),
    ])
    write(store.engine, "dc-west", [
        entry(4, ts=at + timedelta(minutes=2), message_id="m-1", from_ap="dc-east-relay"),
        entry(5, ts=at + timedelta(minutes=3), message_id="m-1", direction="response"),
        entry(6, ts=at + timedelta(hours=2, minutes=55), message_id="m-4", status="error", to_ap="zei"),
    ])
    store.close()
    yield path


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


# -- bmrgw logs ----------------------------------------------------------------

def test_json_lines_use_exactly_the_spec_field_names(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("logs", "--config", str(config), "--format", "json") == 0
    lines = json_lines(capsys.readouterr().out)
    # charset_substitutions (issue 23) is written only where a character profile lost something.
    plain = [name for name in FIELDS if name != "charset_substitutions"]
    assert len(lines) == 7 and all(list(line) == plain for line in lines)
    first = lines[0]
    assert first["from"] == "juki" and first["to"] == "kaigo" and first["ntp_synced"] is True
    assert first["ts"].endswith("Z") and len(first["hash"]) == 64 and first["seq"] == 1
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)


def test_following_one_message_across_two_gateways(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("logs", "--config", str(config), "--message-id", "m-1", "--format", "json")
    lines = json_lines(capsys.readouterr().out)
    assert [(line["node"], line["direction"]) for line in lines] == [
        ("dc-east", "request"), ("dc-east", "response"), ("dc-west", "request"), ("dc-west", "response")]


@pytest.mark.parametrize(("options", "ids"), [
    (["--since", "1h"], ["m-2", "m-3", "m-4"]),
    (["--since", "1h", "--until", "10m"], ["m-2", "m-3"]),
    (["--ap", "zei"], ["m-4"]),
    (["--ap", "cityhall-a"], ["m-3"]),
    (["--status", "fault"], ["m-2"]),
    (["--status", "error"], ["m-4"]),
    (["--kind", "jx"], ["m-3"]),
    (["--node", "dc-west", "--limit", "1"], ["m-4"]),
])
def test_filters(config: Path, capsys: pytest.CaptureFixture[str], options: list[str], ids: list[str]) -> None:
    assert run("logs", "--config", str(config), "--format", "json", *options) == 0
    assert [line["message_id"] for line in json_lines(capsys.readouterr().out)] == ids


def test_table_is_aligned_and_plain_when_not_a_terminal(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("logs", "--config", str(config), "--utc")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and "\x1b[" not in "".join(lines)
    header = lines[0]
    assert header.split() == ["TIME", "(UTC)", "NODE", "KIND", "DIR", "FROM", "TO", "CLIENT", "ENDPOINT", "STATUS",
                              "SIZE", "MS", "MESSAGE-ID"]
    status_at = header.index("STATUS")
    assert {line[status_at:].split()[0] for line in lines[1:]} == {"ok", "fault", "error"}
    message_at = header.index("MESSAGE-ID")
    assert [line[message_at:] for line in lines[1:]] == ["m-1", "m-1", "m-1", "m-1", "m-2", "m-3", "m-4"]
    fault = next(line for line in lines if "m-2" in line)
    assert "* " in fault and " fault 500 Server " in fault  # * : not NTP-synchronised


def test_table_has_colours_on_a_terminal(config: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.delenv("NO_COLOR", raising=False)
    run("logs", "--config", str(config), "--status", "fault", "--utc")
    out = terminal.getvalue()
    assert "\x1b[33mfault 500" in out and "\x1b[1mTIME (UTC)" in out


def test_csv_has_the_spec_header(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("logs", "--config", str(config), "--format", "csv", "--status", "fault")
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == list(FIELDS) and len(rows) == 2
    record = dict(zip(rows[0], rows[1], strict=True))
    assert (record["from"], record["fault_code"], record["ntp_synced"]) == ("juki", "Server", "false")  # as JSON writes it (issue 22)


def test_no_match_says_so(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("logs", "--config", str(config), "--message-id", "nope") == 0
    captured = capsys.readouterr()
    assert "no matching log records" in captured.err


def test_follow_prints_records_as_they_are_committed(config: Path) -> None:
    store = Store(f"sqlite:///{config.parent}/log.db")
    positions = head_seqs(store.engine)
    stream = follow(store.engine, LogFilter(status="ok"), positions, poll=0.02)
    got: list[str | None] = []
    reader = threading.Thread(target=lambda: got.extend(next(stream).message_id for _ in range(2)))
    reader.start()
    write(store.engine, "dc-west", [entry(7, message_id="new-1", status="fault")])
    write(store.engine, "dc-east", [entry(8, message_id="new-2")])
    write(store.engine, "dc-west", [entry(9, message_id="new-3")])
    reader.join(timeout=10)
    store.close()
    assert got == ["new-2", "new-3"]


def test_follow_and_until_exclude_each_other(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("logs", "--config", str(config), "--follow", "--until", "1h") == 2
    assert "--until and --follow" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["yesterday", "2h ago", "-3h", "2024-13-01"])
def test_bad_times_are_usage_errors(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["logs", f"--since={bad}"])
    assert exited.value.code == 2 and "relative time like 30m" in capsys.readouterr().err


def test_times_relative_and_iso() -> None:
    now = datetime(2024, 4, 1, 12, 0, tzinfo=UTC)
    assert parse_time("2h", now=now) == datetime(2024, 4, 1, 10, 0, tzinfo=UTC)
    assert parse_time("30m", now=now) == datetime(2024, 4, 1, 11, 30, tzinfo=UTC)
    assert parse_time("1d", now=now) == datetime(2024, 3, 31, 12, 0, tzinfo=UTC)
    assert parse_time("2024-04-01T09:00:00Z") == datetime(2024, 4, 1, 9, 0, tzinfo=UTC)
    assert parse_time("2024-04-01T18:00:00+09:00") == datetime(2024, 4, 1, 9, 0, tzinfo=UTC)


def test_a_time_without_an_offset_is_the_local_time_the_table_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table prints local times (``TIME (+09:00)``), and an operator types what they read there:
    ``--since 2024-04-01T09:00`` on a JST machine is 00:00 UTC.  It was read as UTC, nine hours off
    (and the console's search form already read local time)."""
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert parse_time("2024-04-01 09:00") == datetime(2024, 4, 1, 0, 0, tzinfo=UTC)
        assert parse_time("2024-04-01") == datetime(2024, 3, 31, 15, 0, tzinfo=UTC)
        assert parse_time("2024-04-01T09:00:00Z") == datetime(2024, 4, 1, 9, 0, tzinfo=UTC)  # an offset wins
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_missing_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        run("logs", "--config", str(tmp_path / "nope.yaml"))


# -- bmrgw logs verify / archive -----------------------------------------------

def test_verify_clean_exits_0(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("logs", "verify", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert "chain dc-east: 4 records up to seq 4" in out and "OK: 2 chain(s) verified" in out


def test_verify_names_tampering_and_exits_1(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(f"sqlite:///{config.parent}/log.db")
    with store.engine.begin() as connection:
        connection.execute(delete(TABLES.log).where(TABLES.log.c.node == "dc-west", TABLES.log.c.seq == 2))
    store.close()
    assert run("logs", "--config", str(config), "verify") == 1  # --config before the action works too
    out = capsys.readouterr().out
    assert "TAMPERED chain dc-west: seq 2 deleted" in out and "FAILED: 1 problem(s) in 1 of 2 chain(s)" in out


def test_archive_then_verify(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("logs", "archive", "--config", str(config), "--before", "1h") == 0
    out = capsys.readouterr().out
    archive_dir = config.parent / "var" / "log-archive"
    assert "archived 4 records of 2 chain(s)" in out and str(archive_dir) in out
    assert len(list(archive_dir.glob("*.jsonl.gz"))) == 1
    assert run("logs", "verify", "--config", str(config)) == 0
    assert "(2 archived, 2 in the database)" in capsys.readouterr().out
    assert run("logs", "archive", "--config", str(config), "--days", "1") == 0
    assert "nothing older than" in capsys.readouterr().out


def test_archive_needs_before_or_days(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["logs", "archive", "--config", str(config)])
    assert exited.value.code == 2


def test_db_option_overrides_the_config(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.db"
    made = Store(f"sqlite:///{other}")
    ensure_schema(made.engine)
    made.close()
    assert run("logs", "--config", str(config), "--db", f"sqlite:///{other}", "--format", "json") == 0
    assert capsys.readouterr().out == ""


# -- read-only commands on a store that is not there (issue 18, finding 6) ------------

def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("argv", [["logs"], ["logs", "verify"], ["logs", "--format", "json"]],
                         ids=["show", "verify", "show-json"])
def test_read_only_commands_on_a_mistyped_store_fail_and_create_nothing(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    before = tree(tmp_path)
    typo = tmp_path / "typo" / "bmrgw.db"
    assert main([*argv, "--config", str(config), "--db", f"sqlite:///{typo}"]) != 0
    err = capsys.readouterr().err
    assert str(typo) in err and "does not exist" in err
    assert tree(tmp_path) == before  # no folder, no database file


def test_jx_list_on_a_mistyped_store_fails_and_creates_nothing(
        config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(tmp_path)
    typo = tmp_path / "typo" / "bmrgw.db"
    assert main(["jx", "list", "--config", str(config), "--db", f"sqlite:///{typo}"]) != 0
    assert "does not exist" in capsys.readouterr().err
    assert tree(tmp_path) == before


def test_read_only_commands_leave_an_existing_store_as_it_was(config: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = config.parent / "var"
    assert run("logs", "--config", str(config)) == 0
    assert run("logs", "verify", "--config", str(config)) == 0
    assert main(["jx", "list", "--config", str(config)]) != 0  # the store holds no JX tables
    assert not data_dir.exists()  # no archive folder, no JX folders, no checkpoint file
    store = Store(f"sqlite:///{config.parent}/log.db")
    with store.engine.connect() as connection:
        assert not any(name.startswith("jx") for name in connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table'").scalars())
    store.close()


def test_verify_on_a_store_without_a_log_fails(config: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    empty = Store(f"sqlite:///{tmp_path}/empty.db")
    empty.ping()  # a database file with no tables
    assert run("logs", "verify", "--config", str(config), "--db", empty.url) == 1
    assert "holds no send/receive log" in capsys.readouterr().out
    ensure_schema(empty.engine)  # the tables, but not one chain
    empty.close()
    assert run("logs", "verify", "--config", str(config), "--db", empty.url) == 1
    assert "holds no send/receive log" in capsys.readouterr().out


def test_verify_on_a_postgresql_schema_without_a_log_fails(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pg_schema() as url:
        assert run("logs", "verify", "--config", str(config), "--db", url) == 1
    assert "holds no send/receive log" in capsys.readouterr().out


# -- reading archived records --------------------------------------------------

def test_logs_reads_archived_records_when_the_time_range_reaches_them(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("logs", "--config", str(config), "--format", "json") == 0
    everything = json_lines(capsys.readouterr().out)
    assert run("logs", "archive", "--config", str(config), "--before", "1h") == 0
    capsys.readouterr()
    assert run("logs", "--config", str(config), "--format", "json") == 0
    assert json_lines(capsys.readouterr().out) == everything  # 4 archived + 3 in the database, in time order
    assert run("logs", "--config", str(config), "--format", "json", "--message-id", "m-1") == 0
    assert [(r["node"], r["seq"]) for r in json_lines(capsys.readouterr().out)] == [
        ("dc-east", 1), ("dc-east", 2), ("dc-west", 1), ("dc-west", 2)]
    assert run("logs", "--config", str(config), "--format", "json", "--since", "30m") == 0
    assert {r["message_id"] for r in json_lines(capsys.readouterr().out)} == {"m-3", "m-4"}
    assert run("logs", "--config", str(config), "--format", "json", "--no-archives") == 0
    assert len(json_lines(capsys.readouterr().out)) == 3
    assert run("logs", "--config", str(config), "--format", "json", "--limit", "5") == 0
    assert json_lines(capsys.readouterr().out) == everything[-5:]


# -- bmrgw time ----------------------------------------------------------------

def test_time_shows_each_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with SntpResponder(shift=3.0) as good, SntpResponder(shift=3.0, stratum=16) as bad:
        config = write_config(tmp_path / "endpoints.yaml", ntp=[good.address, bad.address])
        assert run("time", "--config", str(config)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SERVER", "OFFSET", "DELAY", "STRATUM", "STATUS"]
    assert lines[1].startswith(good.address) and lines[1].rstrip().endswith("ok")
    assert float(lines[1].split()[1]) == pytest.approx(3.0, abs=0.05)
    assert lines[2].startswith(bad.address) and "stratum 16" in lines[2]
    assert "median of 1 usable of 2 servers" in lines[3]


def test_time_without_a_usable_server_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with SntpResponder(leap=3) as alarm:
        config = write_config(tmp_path / "endpoints.yaml", ntp=[alarm.address])
        assert run("time", "--config", str(config), "--timeout", "0.5") == 1
    assert "leap indicator alarm" in capsys.readouterr().out


def test_time_without_servers_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("time", "--config", str(write_config(tmp_path / "endpoints.yaml"))) == 1
    assert "no NTP servers configured" in capsys.readouterr().out


# -- names a client chose never reach the terminal raw ---------------------------

HOSTILE = {"message_id": "m-\x1b[2J\x1b]0;owned\x07", "from_ap": "juki\r\nfake line", "to_ap": "kaigo\u202egnp.exe",
           "client": "app\x7f\x9b31m\u2066\u200f\u061c", "endpoint": "http://x/\t\x08"}
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("BMRGW_DB_URL", raising=False)
    path = write_config(tmp_path / "endpoints.yaml")
    store = Store(f"sqlite:///{tmp_path}/log.db")
    ensure_schema(store.engine)
    write(store.engine, "dc-east", [entry(0, ts=NOW, **HOSTILE)])
    store.close()
    return path


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_control_and_bidi_characters_are_printed_as_visible_escapes(
        hostile: Path, capsys: pytest.CaptureFixture[str], fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that the table cuts no name
    assert run("logs", "--config", str(hostile), "--format", fmt) == 0
    out = capsys.readouterr().out
    assert UNSAFE.search(out) is None, repr(out)
    assert len(out.splitlines()) == (1 if fmt == "json" else 2)  # the CR LF in a name starts no new line
    if fmt == "json":  # JSON stays exact: its \u escapes decode to the stored names
        record = json.loads(out)
        assert (record["message_id"], record["from"], record["to"], record["client"], record["endpoint"]) == (
            HOSTILE["message_id"], HOSTILE["from_ap"], HOSTILE["to_ap"], HOSTILE["client"], HOSTILE["endpoint"])
        assert "\\u202e" in out and "\\u001b" in out
        return
    shown = ["m-\\x1b[2J\\x1b]0;owned\\x07", "juki\\r\\nfake line", "kaigo\\u202egnp.exe"]
    # the table has client and endpoint columns too, with names cut at 24 columns
    shown += ["app\\x7f\\x9b31m\\u2066" + ("\\u200f\\u061c" if fmt == "csv" else ""), "http://x/\\t\\x08"]
    for text in shown:
        assert text in out
