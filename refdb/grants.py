"""Who may SELECT the refdb views on PostgreSQL: the roles of ``refdb.datasets.NAME.sql_readers``, no others.

The config is the one source of the grants on the ``refdb_<dataset>`` views:
at start and after each reload they are made equal to it.  A role added gets
SELECT on that dataset's view; a role removed — or granted by hand, or left
over from the former ``refdb.read_role``, which read every view — loses every
privilege on it; the views of datasets no longer declared keep no readers.
The tables behind the views are never granted.  SQLite has no roles.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

from gateway.errors import ConfigError

from .config import RefdbSettings

__all__ = ["sync_grants"]

#: Grantees of SELECT on a view of the current schema, but its owner; ``PUBLIC`` when granted to all.
_GRANTEES = text("""
    SELECT coalesce(r.rolname, 'PUBLIC') FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN LATERAL aclexplode(c.relacl) a
    LEFT JOIN pg_roles r ON r.oid = a.grantee
    WHERE n.nspname = current_schema() AND c.relname = :view
      AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
""")
_ROLES = text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)")


def sync_grants(connection: Connection, settings: RefdbSettings, stored: Iterable[str]) -> None:
    """Make the SELECT grants on the views of the ``stored`` and declared datasets those of ``settings``
    (PostgreSQL; nothing on SQLite)."""
    if connection.dialect.name != "postgresql":
        return
    _check_roles(connection, settings)
    known = set(stored) | set(settings.datasets)
    for name in sorted(known):
        dataset = settings.datasets.get(name)
        _sync_view(connection, f"refdb_{name}", dataset.sql_readers if dataset else frozenset())


def _check_roles(connection: Connection, settings: RefdbSettings) -> None:
    wanted = {role for dataset in settings.datasets.values() for role in dataset.sql_readers}
    found = set(connection.execute(_ROLES, {"names": sorted(wanted)}).scalars())
    for dataset in sorted(settings.datasets.values(), key=lambda d: d.name):
        for role in sorted(dataset.sql_readers - found):
            raise ConfigError(f"refdb.datasets.{dataset.name}.sql_readers: role {role!r} does not exist "
                              "(the DBA creates it and grants it USAGE on the schema: README, 'Reference DB')")


def _sync_view(connection: Connection, view: str, readers: frozenset[str]) -> None:
    granted = set(connection.execute(_GRANTEES, {"view": view}).scalars())
    if not granted and not readers:
        return
    quote = connection.dialect.identifier_preparer.quote
    for role in sorted(granted - readers):
        connection.execute(text(f"REVOKE ALL ON {quote(view)} FROM {'PUBLIC' if role == 'PUBLIC' else quote(role)}"))
    for role in sorted(readers - granted):
        connection.execute(text(f"GRANT SELECT ON {quote(view)} TO {quote(role)}"))
