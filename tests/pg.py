"""The real PostgreSQL on 127.0.0.1:5432, one fresh schema per test.

Every feature's PostgreSQL tests use :func:`pg_schema`, so tests (and test
runs) never see each other's tables.  Outside CI an unreachable server skips
the test; under CI (``CI=true``) it fails, because SPEC.md's production store
must be exercised there.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

PG_URL = os.environ.get("BMRGW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_DROP_TRIES = 5


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test; the URL puts it first on the search path."""
    admin = create_engine(PG_URL)
    name = f"bmrgw_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_URL} is not reachable in CI: {exc.orig}")
        pytest.skip(f"PostgreSQL at {PG_URL} is not reachable: {exc.orig}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        try:
            _drop(admin, name)
        finally:
            admin.dispose()


def _drop(admin: Engine, name: str) -> None:
    """Drop the schema, trying again while a gateway of the test (torn down later) still commits to it."""
    for attempt in range(_DROP_TRIES):
        try:
            with admin.begin() as connection:
                connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
            return
        except OperationalError:  # deadlock with a late log batch: that side's lock goes soon
            if attempt == _DROP_TRIES - 1:
                raise
            time.sleep(0.2)
