"""How ``bmrgw logs`` prints records: an aligned table for people, JSON lines or CSV for programs.

- The table shows local time with the UTC offset in its header
  (``TIME (+09:00)``; ``--utc`` for UTC), a ``*`` after a time that was not
  NTP-synchronised, the client and endpoint of each record, the status with
  its HTTP status and fault code (``fault 500 Server``), the bytes received
  as ``1.5 KiB`` (JSON and CSV have both directions' counts) and the node
  only when the records come from more than one.  Columns are measured in
  *display* width (:func:`gateway.terminal.display_width`: 札幌市役所住民課
  takes 16 columns, not 8) and sized from the first records; names that
  would push a row past the terminal's width (``$COLUMNS``, else the
  terminal's, else 120) are cut with an ellipsis, the endpoint's URL first, then
  the widest name, the status's fault code last, down to five columns.  The message id, last, is never cut: it is what one
  searches for next.  So a row fits 120 columns with message ids of up to
  30 characters (a UUID's row is 126).
- JSON and CSV keep SPEC.md's field names and exact values (UTC ``ts``
  unless ``--local-time``); CSV writes booleans as JSON does (``false``).
- Names in records were chosen by clients, so control and bidi characters
  are printed as visible escapes (``\\x1b``, ``\\u202e``): in JSON as ``\\u``
  escapes that decode to the stored value, in the table and CSV as
  Python-style escapes.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TextIO

from gateway.ids import UNSAFE_CHARACTERS
from gateway.terminal import display_width, human_bytes, pad

from .records import FIELDS, LogRecord

__all__ = ["visible", "Output", "FORMATS", "table_width", "local_offset"]

FORMATS = ("table", "json", "csv")


def visible(text: str) -> str:
    """``text`` with control and bidi characters as escapes (``\\r``, ``\\x1b``, ``\\u202e``), safe on a terminal."""
    return UNSAFE_CHARACTERS.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    char = found.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def local_offset(moment: datetime | None = None) -> str:
    """The local UTC offset as ``+09:00`` (at ``moment``, else now)."""
    local = (moment or datetime.now(UTC)).astimezone()
    minutes = int((local.utcoffset() or timedelta(0)).total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def table_width(stream: TextIO) -> int:
    """The width the table should fit: ``$COLUMNS``, else the terminal's, else (not a terminal) 120."""
    given = os.environ.get("COLUMNS", "")
    if given.isdigit() and int(given) >= 40:
        return int(given)
    return shutil.get_terminal_size((120, 24)).columns if stream.isatty() else 120


class Output:
    """Writes records in one format, streaming."""

    def __init__(self, stream: TextIO, *, local: bool) -> None:
        self.stream = stream
        self.local = local
        self.last_seq: dict[str, int] = {}
        """The newest seq written per node (where ``--follow`` goes on from)."""

    @staticmethod
    def create(fmt: str, stream: TextIO, *, local: bool, width: int = 120) -> Output:
        """``fmt`` is one of :data:`FORMATS`; ``local``: times in local time; ``width``: the table's target."""
        if fmt == "table":
            return _Table(stream, local=local, width=width)
        return (_Json if fmt == "json" else _Csv)(stream, local=local)

    def write(self, records: Iterable[LogRecord]) -> int:
        count = 0
        for record in records:
            self.one(record)
            self.last_seq[record.node] = max(self.last_seq.get(record.node, 0), record.seq)
            count += 1
        self.stream.flush()
        return count

    def one(self, record: LogRecord) -> None:
        raise NotImplementedError

    def data(self, record: LogRecord) -> dict[str, object]:
        data = record.to_json()
        if self.local:
            data["ts"] = record.ts.astimezone().isoformat(timespec="microseconds")
        return data


class _Json(Output):
    def one(self, record: LogRecord) -> None:
        # json escapes C0 controls itself; DEL, C1 and bidi characters can only stand inside strings.
        line = json.dumps(self.data(record), ensure_ascii=False)
        self.stream.write(UNSAFE_CHARACTERS.sub(lambda found: f"\\u{ord(found.group()):04x}", line) + "\n")


class _Csv(Output):
    def __init__(self, stream: TextIO, *, local: bool) -> None:
        super().__init__(stream, local=local)
        self.csv = csv.writer(stream, lineterminator="\n")
        self.csv.writerow(FIELDS)

    def one(self, record: LogRecord) -> None:
        data = self.data(record)
        self.csv.writerow([_cell(data.get(name)) for name in FIELDS])


def _cell(value: object) -> object:
    """A CSV cell: booleans as JSON writes them (``false``, not Python's ``False``), text made visible."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else visible(value) if isinstance(value, str) else value


# -- the terminal table --------------------------------------------------------

#: header, whether it may be cut to fit, right-aligned
_COLUMNS: tuple[tuple[str, bool, bool], ...] = (
    ("TIME", False, False), ("NODE", True, False), ("KIND", True, False), ("DIR", False, False),
    ("FROM", True, False), ("TO", True, False), ("CLIENT", True, False), ("ENDPOINT", True, False),
    ("STATUS", True, False), ("SIZE", False, True), ("MS", False, True), ("MESSAGE-ID", False, False),
)
_NODE, _ENDPOINT, _STATUS = 1, 7, 8
_NAMES = (1, 2, 4, 5, 6)  # node, kind, from, to, client
_MAX_WIDTH = 24
#: The narrowest a cut column gets (or its heading, when wider): ``juki…``.
_FLOOR = 5
_COLOURS = {"ok": "32", "fault": "33", "error": "31"}
_SAMPLE = 200


class _Table(Output):
    """Aligned columns; widths from the first records, long names cut with an ellipsis to fit ``width``."""

    def __init__(self, stream: TextIO, *, local: bool, width: int) -> None:
        super().__init__(stream, local=local)
        self.colour = stream.isatty() and "NO_COLOR" not in os.environ
        self.target = width
        self.widths: list[int] | None = None
        self.nodes = False
        """Whether the records come from more than one node (else the NODE column is left out)."""

    def write(self, records: Iterable[LogRecord]) -> int:
        records = iter(records)
        if self.widths is None:
            first = list(itertools.islice(records, _SAMPLE))
            self.nodes = len({r.node for r in first}) > 1
            self.widths = fitted([self.cells(r) for r in first], self.headers(), self.target, nodes=self.nodes)
            self._line(self.headers(), header=True)
            records = itertools.chain(first, records)
        return super().write(records)

    def headers(self) -> list[str]:
        zone = f"TIME ({local_offset()})" if self.local else "TIME (UTC)"
        return [zone, *(h for h, _cut, _right in _COLUMNS[1:])]

    def cells(self, record: LogRecord) -> list[str]:
        ts = record.ts.astimezone() if self.local else record.ts
        status = " ".join(part for part in (record.status, str(record.http_status or ""), record.fault_code or "")
                          if part)
        texts = [
            ts.strftime("%Y-%m-%d %H:%M:%S") + ("" if record.ntp_synced else "*"), record.node, record.kind,
            "req" if record.direction == "request" else "resp", record.from_ap or "-", record.to_ap or "-",
            record.client or "-", record.endpoint or "-", status, _size(record.bytes_in),
            f"{record.duration_ms:.1f}", record.message_id or "-",
        ]
        return [visible(text) for text in texts]

    def one(self, record: LogRecord) -> None:
        self._line(self.cells(record))

    def _line(self, cells: list[str], *, header: bool = False) -> None:
        assert self.widths is not None
        parts = []
        for i, (cell, width, (_h, _cut, right)) in enumerate(zip(cells, self.widths, _COLUMNS, strict=True)):
            if i == _NODE and not self.nodes:
                continue
            text = cut(cell, width) if width else cell
            parts.append(self._paint(pad(text, width, right=right), cell, header))
        self.stream.write("  ".join(parts).rstrip() + "\n")

    def _paint(self, padded: str, cell: str, header: bool) -> str:
        if not self.colour:
            return padded
        code = "1" if header else _COLOURS.get(cell.split(" ")[0]) if cell[:1].isalpha() else None
        return f"\x1b[{code}m{padded}\x1b[0m" if code else padded


def _size(amount: int) -> str:
    return human_bytes(amount).replace(".0 ", " ") if amount >= 1024 else f"{amount} B"


def fitted(rows: list[list[str]], headers: list[str], target: int, *, nodes: bool = True) -> list[int]:
    """Column widths: each column's widest cell (names at most 24), then the cuttable columns narrowed,
    never below five columns or their heading (:func:`_next_cut` says which first), until a row with the
    longest message id fits ``target``."""
    widths = []
    for i, (header, cuttable, _right) in enumerate(_COLUMNS[:-1]):
        longest = max((display_width(row[i]) for row in rows), default=0)
        widths.append(max(display_width(headers[i]), min(longest, _MAX_WIDTH) if cuttable else longest))
    last = max((display_width(row[-1]) for row in rows), default=0)
    if not nodes:
        widths[_NODE] = 0
    total = sum(widths) + 2 * len([w for w in widths if w]) + last
    floors = [0 if widths[i] == 0 else min(widths[i], max(_FLOOR, display_width(headers[i]))) if cuttable else widths[i]
              for i, (_h, cuttable, _r) in enumerate(_COLUMNS[:-1])]
    while total > target:
        narrowed = _next_cut(widths, floors)
        if narrowed is None:
            break
        widths[narrowed] -= 1
        total -= 1
    return [*widths, 0]  # the message id is never padded or cut


def _next_cut(widths: list[int], floors: list[int]) -> int | None:
    """The column to narrow next: the endpoint's URL (TO names where it went), then the widest name, then
    the status's fault code; ``None`` when all are at their floor."""
    for group in ((_ENDPOINT,), _NAMES, (_STATUS,)):
        i = max(group, key=lambda j: widths[j] - floors[j])
        if widths[i] > floors[i]:
            return i
    return None


def cut(text: str, width: int) -> str:
    """``text`` cut to ``width`` display columns, ending in an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    while text and display_width(text) > width - 1:
        text = text[:-1]
    return pad(text + "…", width)
