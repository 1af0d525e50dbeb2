"""WS-Security Timestamps (``wsu:Timestamp``): their xsd:dateTime text and the window a message must be in.

:func:`check_time` is the receiver's check (OASIS WSS 1.0 §10: Created not
in the future, Expires not past, both within the allowed clock skew), with
a longest lifetime so a Timestamp without Expires is bounded too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lxml import etree

from gateway.errors import Expired, MalformedMessage
from gateway.ns import WSU

__all__ = ["TimePolicy", "check_time", "xsd_time"]


@dataclass(frozen=True, kw_only=True)
class TimePolicy:
    """How far a Timestamp may be from the gateway's (NTP-corrected) clock."""

    clock_skew: float = 300.0
    """Seconds of clock difference tolerated on Created and Expires."""
    max_ttl: float = 3600.0
    """Longest Created→Expires lifetime accepted; also bounds a Timestamp without Expires."""


def check_time(timestamp: etree._Element, now: dt.datetime, policy: TimePolicy) -> tuple[dt.datetime, dt.datetime]:
    """(Created, keep-until) of a valid Timestamp; raises :class:`Expired` when outside the window."""
    skew = dt.timedelta(seconds=policy.clock_skew)
    max_ttl = dt.timedelta(seconds=policy.max_ttl)
    created = _xsd_datetime(timestamp, "Created", required=True)
    assert created is not None
    expires = _xsd_datetime(timestamp, "Expires", required=False) or created + max_ttl
    if created > now + skew:
        raise Expired(f"the Timestamp was created in the future ({xsd_time(created)}; "
                      f"now {xsd_time(now)}, allowed clock skew {policy.clock_skew:g} s)")
    if expires < created:
        raise Expired("the Timestamp expires before it was created")
    if expires - created > max_ttl:
        raise Expired(f"the Timestamp's lifetime of {(expires - created).total_seconds():g} s exceeds the "
                      f"maximum of {policy.max_ttl:g} s")
    if expires + skew < now:
        raise Expired(f"the message expired at {xsd_time(expires)} (now {xsd_time(now)}, "
                      f"allowed clock skew {policy.clock_skew:g} s)")
    return created, expires + skew


def _xsd_datetime(timestamp: etree._Element, name: str, *, required: bool) -> dt.datetime | None:
    text = timestamp.findtext(f"{{{WSU}}}{name}")
    if text is None:
        if required:
            raise Expired(f"the Timestamp has no {name}")
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise MalformedMessage(f"wsu:{name} {text!r} is not an xsd:dateTime") from exc
    if value.tzinfo is None:
        raise MalformedMessage(f"wsu:{name} {text!r} has no time zone (WS-Security times are UTC)")
    return value


def xsd_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
