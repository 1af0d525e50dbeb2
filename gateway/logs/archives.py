"""Reading archived log records back (``bmrgw logs``): the files :func:`gateway.logs.chain.archive` wrote.

Each archive file holds a prefix of every chain, older than its ``before``
cut-off (its first line says so), so a time range can skip whole files.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from gateway.errors import ArchiveUnreadable

from .chain import archive_header
from .records import LogRecord
from .tables import TABLES, LogFilter, LogTables

__all__ = ["read_archives"]


def read_archives(directory: Path, filters: LogFilter = LogFilter(), *,
                  tables: LogTables = TABLES) -> Iterator[LogRecord]:
    """Matching records of the archive files in ``directory``, file by file (oldest file first),
    each file's by time; files whose records are all older than ``filters.since`` are not opened
    past their first line.  A missing directory holds no archives (it is not created)."""
    for path in sorted(directory.glob(f"{tables.log.name}-*.jsonl.gz")):
        if filters.since is not None and not _may_reach(path, filters.since):
            continue
        found = [record for record in _all_archived(path) if filters.matches(record)]
        found.sort(key=lambda r: (r.ts, r.node, r.seq))
        yield from found


def _may_reach(path: Path, since: datetime) -> bool:
    """Whether the archive may hold a record at or after ``since`` (every record in it is older
    than its ``before``: an archive run moves only records older than that)."""
    try:
        before = datetime.fromisoformat(str(archive_header(path).get("before")))
    except ValueError:
        return True  # read it: better a slow answer than a record left out
    return _utc(before) > _utc(since)


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _all_archived(path: Path) -> Iterator[LogRecord]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            fh.readline()
            for line in fh:
                yield LogRecord.from_json(json.loads(line))
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveUnreadable(f"{path.name}: {exc}") from exc
