"""``bmrgw refdb push|query|changes`` against a real ``bmrgw serve`` process."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from refdb.commands import _width

from .conftest import BMRGW, GatewayProcess
from .refdb_support import DATA, refdb_section


def bmrgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BMRGW, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def served(gateway_process: Callable[..., GatewayProcess]) -> GatewayProcess:
    return gateway_process({"refdb": refdb_section()}, name="refdb-gw")


def test_push_csv_then_query_in_every_format(served: GatewayProcess) -> None:
    pushed = bmrgw("refdb", "push", "--server", served.url, "--dataset", "residents",
                   str(DATA / "residents.csv"), "--mode", "full", "--batch", "3")
    assert pushed.returncode == 0, pushed.stderr
    assert "residents: version 1 (full): 4 records sent" in pushed.stdout
    assert "4 inserted, 0 updated, 0 deleted, 0 unchanged" in pushed.stdout
    assert "4 records / 4 records 100.0%" in pushed.stderr  # the progress lines (stderr is not a terminal)

    as_json = bmrgw("refdb", "query", "--config", str(served.config), "--dataset", "residents",
                    "--where", "birth>=1960-01-01", "--where", "active=false", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["person_id"] for r in rows] == ["P0002", "P0004"]
    assert rows[0]["name"] == "佐藤, 花子" and rows[1]["fee"] == "99999.99"

    as_csv = bmrgw("refdb", "query", "--server", served.url, "--dataset", "residents", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["person_id"] for r in parsed] == ["P0001", "P0002", "P0003", "P0004"]
    assert parsed[2]["name"] == 'Quote "Q" <&>' and parsed[2]["fee"] == ""

    table = bmrgw("refdb", "query", "--server", served.url, "--dataset", "residents", "--limit", "2")
    lines = table.stdout.splitlines()
    header = lines[0].split()  # declared order (the fixture's YAML dump sorts keys)
    assert sorted(header) == sorted(["person_id", "name", "birth", "updated", "fee", "household", "active"])
    assert len(lines) == 3 and " P0001 " in lines[1] and " 山田 太郎 " in lines[1]
    # Columns align on a terminal, after full-width names too.
    assert _width(lines[1][:lines[1].index("P0001")]) == _width(lines[2][:lines[2].index("P0002")])


def test_diff_push_of_jsonl_and_changes_since_a_version(served: GatewayProcess, tmp_path: Path) -> None:
    assert bmrgw("refdb", "push", "--server", served.url, "--dataset", "residents",
                 str(DATA / "residents.csv"), "--mode", "full", "--quiet").returncode == 0
    change = tmp_path / "change.jsonl"
    change.write_text('{"person_id": "P0001", "name": "山田 太郎", "birth": "1950-04-01", "fee": "5"}\n'
                      '{"person_id": "P0009", "name": "新人"}\n')
    pushed = bmrgw("refdb", "push", "--server", served.url, "--dataset", "residents", str(change), "--quiet")
    assert "version 2 (diff)" in pushed.stdout and "1 inserted, 1 updated" in pushed.stdout
    changes = bmrgw("refdb", "changes", "--server", served.url, "--dataset", "residents", "--since", "1")
    assert changes.returncode == 0 and changes.stderr.strip() == "version 2"
    rows = [json.loads(line) for line in changes.stdout.splitlines()]
    assert [(r["_op"], r["person_id"]) for r in rows] == [("upsert", "P0001"), ("upsert", "P0009")]
    assert rows[0]["updated"] is None  # a diff push replaces whole records


def test_progress_counts_records_sent_and_a_closed_pipe_ends_quietly(served: GatewayProcess, tmp_path: Path) -> None:
    data = tmp_path / "many.csv"
    data.write_text("person_id,name\n" + "".join(f"P{n:05d},name {n}\n" for n in range(20_000)))
    pushed = bmrgw("refdb", "push", "--server", served.url, "--dataset", "residents", str(data), "--batch", "2000")
    assert pushed.returncode == 0, pushed.stderr
    found = [re.match(r"([\d,]+) records / ~?[\d,]+ records +([\d.]+)%", line) for line in pushed.stderr.splitlines()]
    assert all(found), pushed.stderr
    shown = [(float(m.group(2)), int(m.group(1).replace(",", ""))) for m in found if m]
    # The reader runs a batch ahead of what is sent: the bar follows what is sent, so it reaches
    # 100 % with the last batch, not before.
    assert shown[-1] == (100, 20_000) and all(p < 100 for p, _ in shown[:-1]), shown
    assert [p for p, _ in shown] == sorted(p for p, _ in shown) and len(shown) >= 5

    query = subprocess.Popen([*BMRGW, "refdb", "query", "--server", served.url, "--dataset", "residents",
                              "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert query.stdout is not None and query.stderr is not None
    assert json.loads(query.stdout.readline())["person_id"] == "P00000"
    query.stdout.close()  # as `| head -1` does; 20,000 records do not fit in the pipe
    with query.stderr:
        assert query.wait(timeout=60) == 141
        assert "Traceback" not in query.stderr.read().decode()


def test_a_refused_push_says_why_and_changes_nothing(served: GatewayProcess) -> None:
    bad = DATA / "invalid" / "date-does-not-exist.csv"
    result = bmrgw("refdb", "push", "--server", served.url, "--dataset", "residents", str(bad), "--quiet")
    assert result.returncode == 1
    assert result.stderr.startswith("bmrgw: refused: record 1, field 'birth': '2024-02-30' is not a date")
    assert "(InvalidRecord); nothing was applied" in result.stderr and "Traceback" not in result.stderr
    empty = bmrgw("refdb", "query", "--server", served.url, "--dataset", "residents", "--format", "json")
    assert (empty.returncode, empty.stdout) == (0, "")


@pytest.mark.parametrize(("args", "message"), [
    (["push", "--dataset", "residents", "missing.csv"], "missing.csv: cannot read"),
    (["query", "--dataset", "nope"], "no dataset 'nope'"),
    (["query", "--dataset", "residents", "--where", "birth~1"], "is not COL=VALUE"),
])
def test_usage_and_refusals_are_one_line(served: GatewayProcess, args: list[str], message: str) -> None:
    result = bmrgw("refdb", *args, "--server", served.url)
    assert result.returncode in (1, 2) and message in result.stderr and "Traceback" not in result.stderr


def test_unreachable_gateway() -> None:
    result = bmrgw("refdb", "query", "--server", "http://127.0.0.1:9", "--dataset", "residents")
    assert result.returncode == 1 and "cannot reach http://127.0.0.1:9" in result.stderr


SNAP = {"owner": "o", "key": ["id"], "columns": {"id": "integer", "gen": "integer", "note": "string"}}


@pytest.mark.slow
def test_big_full_pushes_keep_memory_bounded_and_readers_see_whole_versions(
        gateway_process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    """Readers querying through /refdb while 30,000-row full pushes commit always get one whole version.

    (bench/refdb.py pushes 1,000,000 rows with readers running and reports the gateway's peak RSS.)
    """
    import threading

    from refdb.client import RefdbClient

    served = gateway_process({"refdb": {"datasets": {"snap": SNAP}}}, name="refdb-big")
    rows = 30_000
    files = []
    for generation in (1, 2, 3):
        path = tmp_path / f"gen{generation}.csv"
        with path.open("w") as handle:
            handle.write("id,gen,note\n")
            handle.writelines(f"{n},{generation},{'x' * 40}\n" for n in range(rows))
        files.append(path)
    stop = threading.Event()
    seen: list[tuple[int, set[str], int]] = []

    def reader() -> None:
        with RefdbClient(served.url) as client:
            while not stop.is_set():
                page = client.query("snap", offset=rows - 2_000, limit=2_000)
                seen.append((page.version, {r["gen"] or "" for r in page.records}, len(page.records)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for path in files:
            pushed = bmrgw("refdb", "push", "--server", served.url, "--dataset", "snap", str(path),
                           "--mode", "full", "--quiet")
            assert pushed.returncode == 0, pushed.stderr
    finally:
        stop.set()
        thread.join()
    assert "version 3 (full)" in pushed.stdout and f"{rows:,} unchanged" not in pushed.stdout
    versions = {version for version, _, _ in seen}
    assert len(versions) >= 2, versions
    for version, generations, count in seen:
        assert (generations, count) == (({str(version)}, 2_000) if version else (set(), 0))
    peak_mib = served.peak_rss_kib() / 1024
    print(f"gateway peak RSS after 3 x {rows:,}-row full pushes: {peak_mib:.1f} MiB")
    assert peak_mib < 160  # batches of 5,000 records, never the whole push (idle: about 100 MiB)
