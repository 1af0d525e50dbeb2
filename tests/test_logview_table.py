"""``bmrgw logs`` for people (issue 22): local time with the offset, human sizes, display-width columns
with client and endpoint, a table that fits the terminal, and ``--kind`` offering only kinds written."""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.logs.tables import ensure_schema
from gateway.store import Store
from gateway.terminal import display_width

from .test_journal import entry, write
from .test_logview import run, write_config

AT = datetime(2026, 4, 1, 0, 30, 5, tzinfo=UTC)
WIDE = "札幌市役所住民課"


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def store_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Records with a wide business-AP name, big bodies, a client and an endpoint, and UUID message ids."""
    monkeypatch.delenv("BMRGW_DB_URL", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    path = write_config(tmp_path / "endpoints.yaml")
    store = Store(f"sqlite:///{tmp_path}/log.db")
    ensure_schema(store.engine)
    write(store.engine, "dc-east", [
        entry(0, ts=AT, message_id=str(uuid.UUID(int=1)), from_ap=WIDE, bytes_in=1536, bytes_out=3 * 1024 * 1024),
        entry(1, ts=AT, message_id=str(uuid.UUID(int=2)), from_ap="juki", client="zeimu-app",
              endpoint="https://kaigo.example.lg.jp:8443/services/KaigoService"),
        entry(2, ts=AT, message_id=str(uuid.UUID(int=3)), status="fault", http_status=500, fault_code="Server"),
    ])
    store.close()
    return path


def table_lines(capsys: pytest.CaptureFixture[str], config: Path, *options: str) -> list[str]:
    assert run("logs", "--config", str(config), *options) == 0
    return capsys.readouterr().out.splitlines()


def test_table_shows_local_time_with_the_offset(tokyo: None, store_config: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    lines = table_lines(capsys, store_config)
    assert lines[0].startswith("TIME (+09:00)")
    assert all(line.startswith("2026-04-01 09:30:05") for line in lines[1:])  # 00:30:05 UTC in Tokyo


def test_utc_on_request(tokyo: None, store_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = table_lines(capsys, store_config, "--utc")
    assert lines[0].startswith("TIME (UTC)") and lines[1].startswith("2026-04-01 00:30:05")


def test_json_stays_utc_unless_local_time_is_asked(tokyo: None, store_config: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run("logs", "--config", str(store_config), "--format", "csv", "--limit", "1") == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["ts"] == "2026-04-01T00:30:05.000000Z" and row["ntp_synced"] == "true"
    assert run("logs", "--config", str(store_config), "--format", "csv", "--limit", "1", "--local-time") == 0
    row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["ts"] == "2026-04-01T09:30:05.000000+09:00"


def test_sizes_are_human(store_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = table_lines(capsys, store_config)[1]
    assert " 1.5 KiB " in first and "1536" not in first


def test_client_and_endpoint_columns(store_config: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    lines = table_lines(capsys, store_config)
    header = lines[0].split()
    assert "CLIENT" in header and "ENDPOINT" in header
    assert "zeimu-app" in lines[2] and "https://" in lines[2]


def column_starts(line: str, words: list[str]) -> list[int]:
    """The display column at which each word starts in ``line``."""
    return [display_width(line[:line.index(word)]) for word in words]


def test_wide_names_keep_the_columns_in_line(store_config: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    lines = table_lines(capsys, store_config, "--utc")
    ids = [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
    assert WIDE in lines[1]  # 16 display columns: within the 24 a name may take
    starts = {column_starts(line, [message_id])[0] for line, message_id in zip(lines[1:], ids, strict=True)}
    header_start = column_starts(lines[0], ["MESSAGE-ID"])[0]
    assert starts == {header_start}, lines
    status = {column_starts(line, [word])[0] for line, word in zip(lines[1:], ["ok", "ok", "fault"], strict=True)}
    assert status == {column_starts(lines[0], ["STATUS"])[0]}


def test_table_fits_the_terminal_by_cutting_names(store_config: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """At 120 columns names are cut so that rows with message ids of up to 30 characters fit (a UUID's: 126)."""
    monkeypatch.setenv("COLUMNS", "120")
    lines = table_lines(capsys, store_config)
    assert max(display_width(line) for line in lines) <= 126, "\n".join(lines)
    assert any("…" in line for line in lines)  # the long endpoint URL was cut
    assert str(uuid.UUID(int=2)) in lines[2]  # the message id never is


def test_kind_offers_only_kinds_that_are_written(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run("logs", "--help")
    shown = " ".join(capsys.readouterr().out.split())
    kinds = shown[shown.index("--kind K "):].split("--node")[0]
    assert "file" not in kinds and "relay" in kinds and "console" in kinds
