"""Nodes (or workers) that start together on an empty store: every table is created once, none fails.

PostgreSQL: an empty schema; SQLite: a new file, as `serve --workers N` meets it on first start."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.serve.app import AppOptions, make_app
from routing.config import parse_config

from .conftest import start_app
from .pg import pg_schema
from .refdb_support import refdb_section

NODES = 2
ROUNDS = 10


async def _boot(url: str, name: str, tmp_path: Path, barrier: threading.Barrier) -> int:
    """One gateway on its own event loop: every feature's tables are created as it starts."""
    config = {"gateway": {"name": name, "db": url, "data_dir": str(tmp_path / name)},
              "endpoints": {"kaigo": {"mailbox": "kaigo"}}, "refdb": refdb_section()}
    app = make_app(parse_config(config, source=tmp_path / "endpoints.yaml"), AppOptions(watch_config=False))
    barrier.wait(timeout=30)
    runner, base = await start_app(app)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
            return response.status
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def _sqlite(folder: Path) -> Iterator[str]:
    folder.mkdir(parents=True)
    yield f"sqlite:///{folder}/gw.db"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("store", ["postgresql", "sqlite"])
def test_nodes_starting_together_on_an_empty_schema_all_start(tmp_path: Path, store: str) -> None:
    failures: list[str] = []
    for round_ in range(ROUNDS):
        with pg_schema() if store == "postgresql" else _sqlite(tmp_path / f"db{round_}") as url:
            barrier = threading.Barrier(NODES)
            statuses: dict[str, int] = {}

            def node(name: str) -> None:
                try:
                    statuses[name] = asyncio.run(_boot(url, name, tmp_path / str(round_), barrier))
                except Exception as exc:  # the test's finding: which node failed, and why
                    failures.append(f"round {round_} {name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")

            threads = [threading.Thread(target=node, args=(f"node-{n}",)) for n in range(NODES)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert failures == []
            assert statuses == {f"node-{n}": 200 for n in range(NODES)}
