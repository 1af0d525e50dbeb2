"""What every ``bmrgw`` sub-command shares on the terminal: tables, progress, the store option.

- :func:`table` aligns columns by *display* width: East Asian wide and
  full-width characters (介護, ＡＢＣ) take two columns, combining marks none,
  so Japanese business-AP names line up (``str.ljust`` counts code points).
  ``unicodedata`` already carries the East Asian Width property; a dependency
  such as ``wcwidth`` would add only emoji sequences, which names never hold.
- :class:`Progress` is one progress display for long transfers: done / total,
  percent, rate and ETA, redrawn in place on a terminal and one line per 10 %
  otherwise (so logs of cron jobs show progress too).
- :func:`add_db_option` and :func:`db_url`: ``--db URL``, else
  ``$BMRGW_DB_URL``, else ``gateway.db`` of the config — read in one place.
- :func:`http_url` and :func:`port_number` are argparse types, so a
  URL without a scheme or a port out of range is a usage error (exit 2)
  before anything starts; :func:`url_problem` is the check the config shares.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import TextIO

__all__ = ["ConfigOption", "display_width", "pad", "table", "Progress", "human_bytes", "count",
           "add_db_option", "db_url", "DB_ENV", "http_url", "port_number", "url_problem"]

#: Adds the ``--config`` option to a sub-command's parser (each package's commands take one).
ConfigOption = Callable[[argparse.ArgumentParser], None]
#: The environment variable that names the store when ``--db`` is not given.
DB_ENV = "BMRGW_DB_URL"


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: wide and full-width characters two, combining marks none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
    return width


def pad(text: str, width: int, *, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` display columns (aligned right when ``right``)."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()) -> list[str]:
    """Lines of an aligned table (columns two spaces apart; ``right`` lists right-aligned columns)."""
    lines = [header, *rows]
    widths = [max(display_width(line[i]) for line in lines) for i in range(len(header))]
    return ["  ".join(pad(cell, w, right=i in right) for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
            for line in lines]


def human_bytes(amount: float) -> str:
    """1536 → ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def count(unit: str) -> Callable[[float], str]:
    """A formatter for counted things: ``count("records")(12000)`` → ``12,000 records``."""
    return lambda amount: f"{amount:,.0f} {unit}"


class Progress:
    """A progress display of ``done`` out of ``total`` with rate and ETA, on ``stream`` (stderr).

    On a terminal the line is redrawn in place at most five times a second;
    elsewhere a line is written at every 10 % (and none when ``enabled`` is false).
    """

    def __init__(self, total: float, *, unit: Callable[[float], str] = human_bytes, stream: TextIO | None = None,
                 enabled: bool = True, estimated: bool = False) -> None:
        self.total = total
        self.done = 0.0
        self.estimated = estimated
        """Whether ``total`` is an estimate (shown with ``~``)."""
        self._unit = unit
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._tty = self._stream.isatty()
        self._started = time.monotonic()
        self._shown = 0.0
        self._tenth = -1

    def add(self, amount: float) -> None:
        self.update(self.done + amount)

    def update(self, done: float, total: float | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self._enabled:
            return
        now = time.monotonic()
        if self._tty:
            if now - self._shown >= 0.2 or self.done >= self.total:
                self._shown = now
                self._stream.write("\r" + self.line(now - self._started) + "\x1b[K")
                self._stream.flush()
        elif int(self.percent() // 10) > self._tenth:
            self._tenth = int(self.percent() // 10)
            self._stream.write(self.line(now - self._started).rstrip() + "\n")
            self._stream.flush()

    def percent(self) -> float:
        return min(100.0, 100 * self.done / self.total) if self.total else 100.0

    def line(self, elapsed: float) -> str:
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 and self.total > self.done else None
        left = f"{int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else "--:--"
        about = "~" if self.estimated else ""
        return (f"{self._unit(self.done)} / {about}{self._unit(self.total)} {self.percent():5.1f}%  "
                f"{self._unit(rate)}/s  ETA {left} ")

    def close(self) -> None:
        if self._enabled and self._tty:
            self._stream.write("\n")
            self._stream.flush()


def add_db_option(parser: argparse.ArgumentParser, *, what: str = "store URL") -> None:
    """``--db URL`` (default: ``$BMRGW_DB_URL``, else ``gateway.db`` of the config)."""
    parser.add_argument("--db", metavar="URL",
                        help=f"{what}, e.g. postgresql://host/db (default: ${DB_ENV}, else gateway.db)")


def db_url(args: argparse.Namespace) -> str | None:
    """The store URL the command line asks for, or ``None`` for the config's ``gateway.db``."""
    return getattr(args, "db", None) or os.environ.get(DB_ENV) or None


#: What a URL's host may hold once yarl has encoded it (IDN hosts become ``xn--``, IPv6 is bracketed).
_HOST = re.compile(r"[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+")


def url_problem(text: str) -> str | None:
    """Why ``text`` is not an http:// or https:// URL with a host (``None`` when it is one)."""
    from yarl import URL  # not at import time: ``bmrgw --help`` stays fast

    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        return "holds a blank or control character (write a space in a path as %20)"
    try:
        url = URL(text)
        host = url.raw_host
    except (ValueError, TypeError):
        return "is not a URL"
    if url.scheme not in ("http", "https") or not host:
        return "must be an http:// or https:// URL with a host"
    if not _HOST.fullmatch(host):
        return f"has a host name that cannot be one ({host!r})"
    return None


def http_url(text: str) -> str:
    """argparse type: an http:// or https:// URL, e.g. ``--server http://gw:8080/jx``."""
    why = url_problem(text)
    if why is not None:
        hint = f" (did you mean http://{text}?)" if "://" not in text else ""
        raise argparse.ArgumentTypeError(f"{text!r} {why}{hint}")
    return text


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: ports are 0 to 65535")
    return port
