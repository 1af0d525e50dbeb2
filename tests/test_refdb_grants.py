"""Per-dataset SQL readers on the real PostgreSQL (SPEC.md "Data at rest, per organisation"):
``refdb.datasets.NAME.sql_readers`` may SELECT that dataset's view and no other, and the grants
follow config edits — at start and on a reload, with no request needed."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from gateway.errors import ConfigError
from gateway.keys import LIVE
from gateway.serve.app import AppOptions, make_app, reloaded
from refdb.config import parse_refdb
from routing.config import parse_config

from .conftest import start_app, write_yaml
from .pg import pg_schema
from .refdb_support import RESIDENTS, person, refstore
from .test_refdb_store import push


def declared(residents: list[str], taxes: list[str]) -> dict[str, Any]:
    taxes_set = {**copy.deepcopy(RESIDENTS)}
    return {"datasets": {"residents": {**copy.deepcopy(RESIDENTS), "sql_readers": residents},
                         "taxes": {**taxes_set, "sql_readers": taxes}}}


@pytest.fixture
def roles() -> Iterator[tuple[str, Engine, str, str]]:
    """A fresh schema and two login-less roles with USAGE on it (the DBA's step); dropped afterwards."""
    kaigo, zei = (f"bmrgw_{who}_{uuid.uuid4().hex[:8]}" for who in ("kaigo", "zei"))
    with pg_schema() as url:
        admin = create_engine(url)
        with admin.begin() as c:
            schema = c.execute(text("SELECT current_schema()")).scalar_one()
            for role in (kaigo, zei):
                c.execute(text(f'CREATE ROLE "{role}"'))
                c.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        try:
            yield url, admin, kaigo, zei
        finally:
            with admin.begin() as c:
                for role in (kaigo, zei):
                    c.execute(text(f'DROP OWNED BY "{role}"'))
                    c.execute(text(f'DROP ROLE "{role}"'))
            admin.dispose()


def may_read(admin: Engine, role: str, view: str) -> bool:
    with admin.connect() as c:
        c.execute(text(f'SET ROLE "{role}"'))
        try:
            c.execute(text(f"SELECT count(*) FROM {view}")).scalar_one()
        except DBAPIError as exc:
            assert "permission denied" in str(exc)
            return False
        return True


def access(admin: Engine, *roles: str) -> dict[str, set[str]]:
    return {role: {v for v in ("refdb_residents", "refdb_taxes") if may_read(admin, role, v)} for role in roles}


def test_sql_readers_see_their_dataset_only_and_lose_it_when_removed(roles: tuple[str, Engine, str, str]) -> None:
    url, admin, kaigo, zei = roles
    with refstore(url, parse_refdb(declared([kaigo], [zei]))) as store:
        push(store, [person(1)])
    assert access(admin, kaigo, zei) == {kaigo: {"refdb_residents"}, zei: {"refdb_taxes"}}
    with refstore(url, parse_refdb(declared([kaigo, zei], []))):
        pass
    assert access(admin, kaigo, zei) == {kaigo: {"refdb_residents"}, zei: {"refdb_residents"}}
    with refstore(url, parse_refdb({"datasets": {"taxes": {**copy.deepcopy(RESIDENTS), "sql_readers": [kaigo]}}})):
        pass
    assert access(admin, kaigo, zei) == {kaigo: {"refdb_taxes"}, zei: set()}, \
        "the views of a dataset no longer declared keep no readers"


def test_a_grant_made_by_the_old_read_role_is_revoked(roles: tuple[str, Engine, str, str]) -> None:
    url, admin, kaigo, _ = roles
    with refstore(url, parse_refdb(declared([], []))):
        pass
    with admin.begin() as c:  # what refdb.read_role did: SELECT on every view
        c.execute(text(f'GRANT SELECT ON refdb_residents, refdb_taxes TO "{kaigo}"'))
    with refstore(url, parse_refdb(declared([kaigo], []))):
        pass
    assert access(admin, kaigo) == {kaigo: {"refdb_residents"}}


def test_read_role_for_every_view_is_refused_with_the_way_out() -> None:
    with pytest.raises(ConfigError, match="sql_readers"):
        parse_refdb({"read_role": "refdb_reader", "datasets": {"residents": RESIDENTS}})
    with pytest.raises(ConfigError, match=r"refdb.datasets.residents.sql_readers: .* PostgreSQL role name"):
        parse_refdb({"datasets": {"residents": {**RESIDENTS, "sql_readers": ["Robert'); DROP"]}}})


def test_a_role_that_does_not_exist_is_a_config_error(roles: tuple[str, Engine, str, str]) -> None:
    url, _, _, _ = roles
    with pytest.raises(ConfigError, match="refdb.datasets.taxes.sql_readers: role 'bmrgw_nobody_x' does not exist"):
        with refstore(url, parse_refdb(declared([], ["bmrgw_nobody_x"]))):
            pass


async def test_a_reload_of_the_gateway_revokes_at_once(roles: tuple[str, Engine, str, str], tmp_path: Path) -> None:
    url, admin, kaigo, zei = roles
    source = tmp_path / "endpoints.yaml"
    config: dict[str, Any] = {"gateway": {"db": url}, "refdb": declared([kaigo], [kaigo, zei])}
    write_yaml(source, config)
    app = make_app(parse_config(config, source=source), AppOptions(watch_config=False, db=url))
    runner, _ = await start_app(app)
    try:
        assert access(admin, kaigo, zei) == {kaigo: {"refdb_residents", "refdb_taxes"}, zei: {"refdb_taxes"}}
        app[LIVE].reload(lambda: parse_config({**config, "refdb": declared([kaigo], [zei])}, source=source))
        reloaded(app, True)
        for _ in range(100):
            if access(admin, kaigo, zei) == {kaigo: {"refdb_residents"}, zei: {"refdb_taxes"}}:
                break
            await asyncio.sleep(0.05)
        assert access(admin, kaigo, zei) == {kaigo: {"refdb_residents"}, zei: {"refdb_taxes"}}
    finally:
        await runner.cleanup()
