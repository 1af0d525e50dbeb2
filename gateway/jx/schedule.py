"""When a ``bmrgw poll`` partner polls: every N seconds, or at cron-like times (issue 21, item 4).

Pure: a schedule answers "when next, after this moment?" for a moment it is
given, so tests hand it any clock.  Times are the city hall's local time (the
time zone of the machine, or ``tz`` of the partner), as the clerks who write
"08:30 and 17:00 on weekdays" mean them.

Cron expressions have five fields (minute hour day-of-month month
day-of-week, as crontab(5)) or six (seconds first, for polls within a
minute): ``*``, ``*/N``, ``A``, ``A-B``, ``A-B/N`` and comma lists;
day-of-week 0 or 7 is Sunday, and names (``mon``-``sun``) are accepted.  As
in cron, when both day fields are restricted, a day matching either fires.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..errors import ConfigError

__all__ = ["Schedule", "Every", "Cron", "parse_cron"]

_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
#: How far ahead a cron expression is searched for its next time (a Feb 30 never comes).
_HORIZON = timedelta(days=366 * 5)


class Schedule:
    """A partner's timetable."""

    def next_after(self, moment: datetime) -> datetime:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Every(Schedule):
    """Every ``seconds``, ± ``jitter`` of it, so that many city halls do not poll in step."""

    seconds: float
    jitter: float = 0.2

    def next_after(self, moment: datetime) -> datetime:
        spread = self.seconds * random.uniform(1 - self.jitter, 1 + self.jitter)
        return moment + timedelta(seconds=spread)

    def __str__(self) -> str:
        return f"every {self.seconds:g} s"


@dataclass(frozen=True, kw_only=True)
class Cron(Schedule):
    """The moments matching every field; ``seconds`` is ``(0,)`` for a five-field expression."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def next_after(self, moment: datetime) -> datetime:
        """The first matching whole second strictly after ``moment`` (same tzinfo)."""
        at = moment.replace(microsecond=0) + timedelta(seconds=1)
        end = moment + _HORIZON
        while at < end:
            if not self._day_matches(at):
                at = (at + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            elif at.hour not in self.hours:
                at = (at + timedelta(hours=1)).replace(minute=0, second=0)
            elif at.minute not in self.minutes:
                at = (at + timedelta(minutes=1)).replace(second=0)
            elif at.second not in self.seconds:
                at += timedelta(seconds=1)
            else:
                return at
        raise ConfigError(f"the schedule {self.text!r} never fires")

    def _day_matches(self, at: datetime) -> bool:
        if at.month not in self.months:
            return False
        day, weekday = at.day in self.days, (at.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday

    def __str__(self) -> str:
        return f"cron {self.text!r}"


def parse_cron(text: str, path: str) -> Cron:
    """A :class:`Cron` from a five- or six-field expression; a :class:`ConfigError` naming ``path`` if wrong."""
    parts = text.split()
    if len(parts) == 5:
        parts = ["0", *parts]
    if len(parts) != 6:
        raise ConfigError(f"{path}: {text!r} is not a cron expression (5 fields: minute hour day month "
                          "weekday, or 6 with seconds first)")
    ranges = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    names = ["second", "minute", "hour", "day", "month", "weekday"]
    sets = [_field(part, low, high, f"{path} ({name} {part!r})")
            for part, (low, high), name in zip(parts, ranges, names, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[5])
    cron = Cron(text=text, seconds=sets[0], minutes=sets[1], hours=sets[2], days=sets[3], months=sets[4],
                weekdays=weekdays, any_day=parts[3] == "*", any_weekday=parts[5] == "*")
    try:  # found now, not on the day it was meant to poll: 2001 + 5 years holds a 29 February
        cron.next_after(datetime(2001, 1, 1))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.reason}") from None
    return cron


def _field(text: str, low: int, high: int, where: str) -> frozenset[int]:
    values: set[int] = set()
    for item in text.lower().split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                first, last = low, high
            else:
                first_text, _, last_text = span.partition("-")
                first = _number(first_text)
                last = _number(last_text) if last_text else (high if step_text else first)
        except ValueError:
            raise ConfigError(f"{where}: not a number, range, list or */N") from None
        if step < 1 or not low <= first <= last <= high:
            raise ConfigError(f"{where}: outside {low}-{high}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _number(text: str) -> int:
    return _DAYS[text] if text in _DAYS else int(text)
