"""The command-line programs' shared display: widths of Japanese text, tables, progress, --db."""

from __future__ import annotations

import argparse
import io

import pytest

from gateway.terminal import Progress, add_db_option, count, db_url, display_width, pad, table


@pytest.mark.parametrize(("text", "width"), [
    ("kaigo", 5), ("介護", 4), ("ＡＢＣ", 6), ("ｶﾅ", 2), ("が", 2), ("か\u3099", 2), ("", 0),
])
def test_display_width_counts_wide_characters_twice(text: str, width: int) -> None:
    assert display_width(text) == width


def test_a_table_of_japanese_names_lines_up() -> None:
    lines = table(["NAME", "URL"], [["介護保険", "http://127.0.0.1:9001/kaigo"], ["juki", "http://127.0.0.1:9002/"]])
    # every URL starts in the same terminal column
    columns = {display_width(line[: line.index("http")]) for line in lines[1:]}
    assert len(columns) == 1 and lines[0].startswith("NAME")
    assert pad("介護", 6) == "介護  " and pad("7", 3, right=True) == "  7"


def test_progress_line_shows_amount_rate_and_eta() -> None:
    progress = Progress(10 * 1024 * 1024, stream=io.StringIO())
    progress.add(5 * 1024 * 1024)
    line = progress.line(elapsed=2.0)
    assert "5.0 MiB / 10.0 MiB" in line and "50.0%" in line and "2.5 MiB/s" in line and "ETA 0:02" in line
    records = Progress(1000, unit=count("records"), stream=io.StringIO(), estimated=True)
    records.update(250)
    assert "250 records / ~1,000 records" in records.line(elapsed=5.0) and "ETA 0:15" in records.line(elapsed=5.0)


def test_progress_off_a_terminal_writes_a_line_per_tenth_and_nothing_when_disabled() -> None:
    out = io.StringIO()
    progress = Progress(100, stream=out)
    for _ in range(100):
        progress.add(1)
    assert len(out.getvalue().splitlines()) == 11  # 0 %, 10 %, ... 100 %
    quiet = io.StringIO()
    Progress(100, stream=quiet, enabled=False).add(100)
    assert quiet.getvalue() == ""


def test_db_option_then_environment_then_config(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_db_option(parser)
    monkeypatch.delenv("BMRGW_DB_URL", raising=False)
    assert db_url(parser.parse_args([])) is None
    monkeypatch.setenv("BMRGW_DB_URL", "postgresql://127.0.0.1/test")
    assert db_url(parser.parse_args([])) == "postgresql://127.0.0.1/test"
    assert db_url(parser.parse_args(["--db", "sqlite:///x.db"])) == "sqlite:///x.db"
