"""Private files (SPEC.md "Data at rest, per organisation"): whatever the gateway creates on disk
is 0600, its folders 0700, whatever the umask of the process."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import create_engine

from attachments.transfer.receiver import ReceiveOptions, make_receiver_app
from attachments.transfer.sender import SendOptions, send_file
from gateway.durable import private_dir, private_file
from gateway.logs.chain import archive

from .conftest import GatewayFactory, message, soap11_headers, start_app
from .jxhelp import get, put


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, under which files would come out 0644 and folders 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` (roots included) with its permission bits, e.g. ``{'db/x.db': '0o644'}``."""
    found = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in [".", *dirs, *files]:
                path = Path(folder, name)
                found[str(path.relative_to(root.parent))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def not_private(found: dict[str, str], roots: tuple[Path, ...]) -> dict[str, str]:
    base = roots[0].parent
    return {name: mode for name, mode in found.items()
            if mode != ("0o700" if (base / name).is_dir() else "0o600")}


async def test_everything_created_is_private_under_umask_022(umask_022: None, gateway: GatewayFactory,
                                                             tmp_path: Path, http: aiohttp.ClientSession) -> None:
    db, data, inbox = tmp_path / "db", tmp_path / "var", tmp_path / "inbox"
    runner, receiver = await start_app(make_receiver_app(ReceiveOptions(directory=inbox, max_file_bytes=1 << 20)))
    try:
        url = await gateway({"gateway": {"name": "gw", "db": f"sqlite:///{db}/bmrgw.db", "data_dir": str(data)},
                             "endpoints": {"files": {"url": f"{receiver}/files"}, "cityhall": {"mailbox": "131"}}})
        assert (await put(http, url, "doc-1", b"a JX document" * 6000, receiver="131")).result is True  # > 64 KiB: a file
        body = message("valid/soap11-routing-header.xml").replace(b"<r:To>demo</r:To>", b"<r:To>cityhall</r:To>")
        async with http.post(f"{url}/soap", data=body, headers=soap11_headers()) as resp:
            assert resp.status == 200
        assert (await get(http, url, "131")).result is True
        outgoing = tmp_path / "out" / "report.csv"
        outgoing.parent.mkdir()
        outgoing.write_bytes(b"x" * 100_000)
        sent = await send_file(SendOptions(path=outgoing, to="files", gateway=url, part_size=64 * 1024))
        assert sent.published == "report.csv"
    finally:
        await runner.cleanup()
    engine = create_engine(f"sqlite:///{db}/bmrgw.db")
    try:
        moved = archive(engine, data / "log-archive", datetime.now(UTC) + timedelta(hours=1))
    finally:
        engine.dispose()
    assert moved.path is not None and moved.path.parent == data / "log-archive"
    roots = (db, data, inbox)
    found = modes(*roots)
    assert {"db/bmrgw.db", "db/bmrgw.db-wal", "inbox/report.csv"} <= found.keys()
    assert any(name.startswith("var/jx/blobs/") and name.endswith(".doc") for name in found)
    assert any(name.startswith("var/log-archive/") and name.endswith(".jsonl.gz") for name in found)
    assert not_private(found, roots) == {}


def test_private_helpers_give_exact_modes_whatever_the_umask(umask_022: None, tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "b" / "c")
    private_file(made / "x.db")
    assert not_private(modes(tmp_path / "a"), (tmp_path / "a",)) == {}
    os.umask(0o000)
    private_dir(tmp_path / "open" / "d")
    private_file(tmp_path / "open" / "d" / "y")
    assert not_private(modes(tmp_path / "open"), (tmp_path / "open",)) == {}


def test_private_file_keeps_the_locks_sqlite_holds_on_an_existing_file(tmp_path: Path) -> None:
    """POSIX drops every lock a process holds on a file when any of its descriptors for that file is closed.
    Opening and closing an open store's file (a second Store, the JX engine, a worker starting beside
    another) silently released the first connection's locks: another process could then write under
    them (SQLite's "How to corrupt", 2.2), seen as 'disk I/O error' when nodes started together."""
    path = tmp_path / "gw.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    private_file(path)  # the store's file exists and is locked by this process
    other = subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
         "try:\n    c.execute('BEGIN IMMEDIATE'); print('wrote')\nexcept sqlite3.OperationalError as e:\n    print(e)",
         str(path)], capture_output=True, text=True, timeout=30, check=True)
    assert other.stdout.strip() == "database is locked"
    holder.execute("COMMIT")
    holder.close()
