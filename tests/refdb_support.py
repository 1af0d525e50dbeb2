"""What the refdb tests share: the test dataset declaration, a config with it, a store on either database."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from gateway.store import Store
from refdb.config import RefdbSettings, parse_refdb
from refdb.schema import ensure_schema
from refdb.store import RefStore

from .pg import pg_schema

DATA = Path(__file__).parent / "data" / "refdb"
RESIDENTS: dict[str, Any] = YAML(typ="safe", pure=True).load((DATA / "residents.yaml").read_text())


def refdb_section(**extra: Any) -> dict[str, Any]:
    """A ``refdb`` section with ``residents`` and any further datasets given by name."""
    datasets = {"residents": copy.deepcopy(RESIDENTS), **extra}
    return {"datasets": datasets}


def settings(**extra: Any) -> RefdbSettings:
    return parse_refdb(refdb_section(**extra))


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A store URL: SQLite in ``tmp_path`` or a fresh schema of the real PostgreSQL."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/refdb.db"
    else:
        with pg_schema() as url:
            yield url


@contextlib.contextmanager
def refstore(url: str, declared: RefdbSettings) -> Iterator[RefStore]:
    opened = Store(url)
    try:
        yield RefStore(opened.engine, ensure_schema(opened.engine, declared))
    finally:
        opened.close()


def person(number: int, **values: str | None) -> dict[str, str | None]:
    """A valid residents record."""
    record: dict[str, str | None] = {"person_id": f"P{number:06d}", "name": f"name {number}",
                                     "birth": "1990-01-01", "household": str(number % 7)}
    record.update(values)
    return record
