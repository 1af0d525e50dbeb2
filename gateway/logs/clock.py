"""NTP-corrected time for the send/receive logs (SPEC.md capability (G), "Log record").

The standard asks that every logged exchange carries a time synchronised by
NTP.  The gateway does not set the system clock (that is the operating
system's job); it measures the system clock's offset against the servers of
``gateway.ntp.servers`` and adds it: *log time = system clock + offset*.

:func:`query` is a small SNTP client (RFC 4330, answers of NTP v3/v4 per
RFC 5905) on an asyncio datagram socket, so that several servers are asked at
once without threads.  An answer is refused when it cannot be trusted:
stratum 0 (kiss-o'-death) or 16 and above (unsynchronised), leap indicator 3
(alarm), an origin timestamp other than the random one we sent (a stale or
spoofed packet), or a round-trip delay that is negative or above one second.

:class:`Clock` asks every server each ``interval`` seconds, takes the median
offset of the good answers, and says whether time is *synced*: a good answer
arrived within the last four intervals.  Without servers the offset is 0 and
time is never synced; the log records say so (``ntp_synced: false``).

Time cannot be moved by one server (SPEC.md Version 2, "Time"): after the
first sync, a correction of the gateway's time larger than
``gateway.ntp.max_step`` is applied only when most of the configured servers
— and at least two — agree on it within ``max_step`` (:func:`agreed_offset`).
Until then the old offset stays in force, time is not synced and
:meth:`Clock.status` carries a warning (``/healthz``), also logged.  The
correction is measured on the gateway's time against the monotonic clock, so
the operating system stepping the system clock (and the NTP offset moving
the other way) is not a step of the gateway's time.  Every log record keeps
both readings: ``ts`` is the corrected time and ``ts - ntp_offset`` the
system clock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import statistics
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from gateway.errors import ConfigError
from routing.settings import NtpSettings

__all__ = ["Clock", "Now", "Reading", "Sample", "Server", "query", "evaluate", "parse_server", "agreed_offset"]

log = logging.getLogger(__name__)

NTP_PORT = 123
#: Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_EPOCH_DELTA = 2_208_988_800
#: A time is synced while its last good answer is at most this many intervals old.
SYNC_INTERVALS = 4
DEFAULT_TIMEOUT = 2.0
#: Seconds: a larger correction of the gateway's time needs most servers to agree (``gateway.ntp.max_step``).
DEFAULT_MAX_STEP = 1.0
MAX_DELAY = 1.0
#: Clock granularity allowance: a round trip a few microseconds "negative" is rounding, not a lie.
DELAY_TOLERANCE = 0.001

_PACKET = struct.Struct("!BBbb4s4s4sQQQQ")
_MODE_CLIENT, _MODE_SERVER = 3, 4
_LEAP_ALARM = 3


class Now(NamedTuple):
    """One reading of the corrected clock: what a log record stores."""

    ts: datetime
    """NTP-corrected UTC time (aware)."""
    offset: float
    """Seconds added to the system clock."""
    synced: bool
    """Whether a server gave a good answer within the last four intervals."""


class Reading(NamedTuple):
    """One reading of the corrected clock as plain numbers (the relay's hot path; :class:`Now` is its time)."""

    time: float
    """NTP-corrected POSIX seconds (system time + offset)."""
    offset: float
    synced: bool

    def now(self) -> Now:
        """This reading as the time a log record stores."""
        return Now(datetime.fromtimestamp(self.time, UTC), self.offset, self.synced)


@dataclass(frozen=True, kw_only=True)
class Server:
    """An NTP server from ``gateway.ntp.servers``."""

    host: str
    port: int = NTP_PORT

    @property
    def label(self) -> str:
        """The server as the operator wrote it (port only when not 123)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == NTP_PORT else f"{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One server's answer to one query, or why there was no usable answer."""

    server: str
    """The server's label."""
    at: float
    """System time (Unix seconds) when the query ended."""
    offset: float | None = None
    """Seconds to add to the system clock to get the server's time."""
    delay: float | None = None
    """Round-trip delay in seconds, server processing time excluded."""
    stratum: int | None = None
    leap: int | None = None
    error: str | None = None
    """Why the answer was refused; ``None`` for a good answer."""

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_server(text: str) -> Server:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address → :class:`Server`."""
    host, port = text.strip(), str(NTP_PORT)
    if host.startswith("["):
        host, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"gateway.ntp.servers: {text!r} is not host, host:port or [v6]:port")
        port = rest[1:] or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"gateway.ntp.servers: {text!r} is not host, host:port or [v6]:port")
    return Server(host=host, port=int(port))


# -- the wire format (RFC 5905 §7.3) --------------------------------------------

def to_ntp(unix: float) -> int:
    """Unix seconds → 64-bit NTP timestamp (32.32 fixed point, era wraps in 2036)."""
    return int((unix + NTP_EPOCH_DELTA) * 2**32) & 0xFFFF_FFFF_FFFF_FFFF


def from_ntp(value: int) -> float:
    """64-bit NTP timestamp → Unix seconds; values before 1968 are read as era 1 (after 2036)."""
    seconds = value / 2**32
    if value >> 63 == 0:  # RFC 4330 §3: MSB 0 means 2036-02-07 and later
        seconds += 2**32
    return seconds - NTP_EPOCH_DELTA


def request_packet(nonce: int, version: int = 4) -> bytes:
    """A client request whose transmit timestamp is ``nonce``.

    The transmit field carries a random number rather than our clock (as
    chrony does): the server echoes it as the origin timestamp, which proves
    an answer belongs to this request, and our clock is not disclosed.
    """
    first = (0 << 6) | (version << 3) | _MODE_CLIENT
    return _PACKET.pack(first, 0, 0, 0, b"\0" * 4, b"\0" * 4, b"\0" * 4, 0, 0, 0, nonce)


def evaluate(server: str, data: bytes, *, nonce: int, t1: float, t4: float,
             max_delay: float = MAX_DELAY) -> Sample:
    """Judge one reply; ``t1``/``t4`` are the system times of sending and receiving."""
    failed = Sample(server=server, at=t4)
    if len(data) < _PACKET.size:
        return replace(failed, error=f"short reply ({len(data)} bytes)")
    first, stratum, _poll, _prec, _rd, _rdisp, refid, _ref, origin, t2_raw, t3_raw = _PACKET.unpack_from(data)
    leap, version, mode = first >> 6, (first >> 3) & 7, first & 7
    failed = replace(failed, stratum=stratum, leap=leap)
    problem = _header_problem(leap, version, mode, stratum, refid)
    if problem is None and origin != nonce:
        problem = "origin timestamp mismatch (stale or spoofed reply)"
    if problem is None and t3_raw == 0:
        problem = "server sent no transmit timestamp"
    if problem is not None:
        return replace(failed, error=problem)
    t2, t3 = from_ntp(t2_raw), from_ntp(t3_raw)
    offset, delay = ((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2)
    if delay < -DELAY_TOLERANCE or not math.isfinite(offset):
        return replace(failed, delay=delay, error=f"negative round-trip delay ({delay * 1000:.1f} ms)")
    if delay > max_delay:
        return replace(failed, delay=delay, error=f"round-trip delay {delay:.3f} s exceeds {max_delay:g} s")
    return replace(failed, offset=offset, delay=max(delay, 0.0))


def _header_problem(leap: int, version: int, mode: int, stratum: int, refid: bytes) -> str | None:
    if mode != _MODE_SERVER:
        return f"not a server reply (mode {mode})"
    if version not in (3, 4):
        return f"unsupported NTP version {version}"
    if stratum == 0:
        code = refid.decode("ascii", "replace").strip("\0 ")
        return f"kiss-o'-death {code or '(no code)'} (stratum 0)"
    if stratum >= 16:
        return f"server unsynchronised (stratum {stratum})"
    if leap == _LEAP_ALARM:
        return "leap indicator alarm (server clock not synchronised)"
    return None


# -- one query -----------------------------------------------------------------

class _Reply(asyncio.DatagramProtocol):
    """Receives the first datagram of a connected UDP socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[tuple[bytes, float]] = loop.create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.answer.done():
            self.answer.set_result((data, time.time()))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable arrives here on a connected socket: the server is gone.
        if not self.answer.done():
            self.answer.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("socket closed"))


async def query(server: Server, *, timeout: float = DEFAULT_TIMEOUT, max_delay: float = MAX_DELAY) -> Sample:
    """Ask one server once; never raises, a failure is a :class:`Sample` with ``error``."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(loop, server, max_delay)
    except TimeoutError:
        return Sample(server=server.label, at=time.time(), error=f"no answer within {timeout:g} s")
    except OSError as exc:
        return Sample(server=server.label, at=time.time(), error=f"unreachable: {exc.strerror or exc}")


async def _exchange(loop: asyncio.AbstractEventLoop, server: Server, max_delay: float) -> Sample:
    # A connected socket: the kernel drops datagrams from any other address.
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Reply(loop), remote_addr=(server.host, server.port))
    try:
        nonce = secrets.randbits(64)
        t1 = time.time()
        transport.sendto(request_packet(nonce))
        data, t4 = await protocol.answer
    finally:
        transport.close()
    return evaluate(server.label, data, nonce=nonce, t1=t1, t4=t4, max_delay=max_delay)


async def query_all(servers: Sequence[Server], *, timeout: float = DEFAULT_TIMEOUT,
                    max_delay: float = MAX_DELAY) -> list[Sample]:
    """Ask every server at once; one sample per server, in order."""
    return list(await asyncio.gather(*(query(s, timeout=timeout, max_delay=max_delay) for s in servers)))


def combined_offset(samples: Sequence[Sample]) -> float | None:
    """Median offset of the good samples (robust against one false ticker), or ``None``."""
    good = [s.offset for s in samples if s.ok and s.offset is not None]
    return statistics.median(good) if good else None


def agreed_offset(samples: Sequence[Sample], *, configured: int, tolerance: float) -> float | None:
    """The median offset of the largest group of good answers within ``tolerance`` of one another,
    when that group is most of the ``configured`` servers (silent and refused ones count against it)
    and at least two of them: one source can never vouch for a step.  ``None`` otherwise."""
    good = sorted(s.offset for s in samples if s.ok and s.offset is not None)
    best: list[float] = []
    for centre in good:
        group = [offset for offset in good if abs(offset - centre) <= tolerance]
        if len(group) > len(best):
            best = group
    if len(best) < 2 or 2 * len(best) <= configured:
        return None
    return statistics.median(best)


def _base() -> float:
    """System time minus monotonic time: it changes only when the system clock is stepped."""
    return time.time() - time.monotonic()


# -- the clock -----------------------------------------------------------------

class Clock:
    """System time corrected by the median NTP offset, refreshed every ``interval`` s.

    Start it with :meth:`start` inside the event loop and stop it with
    :meth:`stop`; :meth:`now` is cheap and may be called from any thread.
    Between answers the last offset stays in force: it is a better estimate
    than none, and the record's ``ntp_synced`` tells how fresh it is.
    """

    def __init__(self, servers: Sequence[str] = (), interval: float = 64.0, *,
                 timeout: float = DEFAULT_TIMEOUT, max_delay: float = MAX_DELAY,
                 max_step: float = DEFAULT_MAX_STEP) -> None:
        self.servers = tuple(parse_server(s) for s in servers)
        self.interval = interval
        self.timeout = timeout
        self.max_delay = max_delay
        self.max_step = max_step
        self._offset = 0.0
        self._good_at: float | None = None  # monotonic time of the last good round
        # The gateway's time minus the monotonic clock when the offset was adopted
        # (None before the first sync): what a step is measured against.
        self._anchor: float | None = None
        self._warning: str | None = None
        self._last: dict[str, Sample] = {}
        self._last_good: dict[str, Sample] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, ntp: NtpSettings) -> Clock:
        """The clock of ``gateway.ntp``."""
        return cls(ntp.servers, ntp.interval, max_step=ntp.max_step)

    @property
    def offset(self) -> float:
        return self._offset

    @property
    def synced(self) -> bool:
        """A good answer arrived within the last four intervals, and no step waits for a majority."""
        if self._good_at is None or self._warning is not None:
            return False
        return time.monotonic() - self._good_at <= SYNC_INTERVALS * self.interval

    def now(self) -> Now:
        """The corrected UTC time with the offset used and whether it is synced."""
        return self.read().now()

    def read(self) -> Reading:
        """The corrected time as POSIX seconds, without making a datetime of it (:meth:`Reading.now` does)."""
        offset = self._offset
        return Reading(time.time() + offset, offset, self.synced)

    async def sync(self) -> list[Sample]:
        """Ask every server once and adopt the median of the good answers."""
        samples = await query_all(self.servers, timeout=self.timeout, max_delay=self.max_delay)
        self._adopt(samples)
        return samples

    def _adopt(self, samples: Sequence[Sample]) -> None:
        for sample in samples:
            self._last[sample.server] = sample
            if sample.ok:
                self._last_good[sample.server] = sample
            else:
                log.warning("NTP server %s refused: %s", sample.server, sample.error)
        offset = combined_offset(samples)
        if offset is None:
            return
        base = _base()
        if self._anchor is not None and abs(step := base + offset - self._anchor) > self.max_step:
            agreed = agreed_offset(samples, configured=len(self.servers), tolerance=self.max_step)
            if agreed is None:
                self._refuse(step)
                return
            log.warning("NTP: stepping the time by %+.3f s: most of the %d servers agree on it",
                        base + agreed - self._anchor, len(self.servers))
            offset = agreed
        self._offset, self._anchor, self._warning = offset, base + offset, None
        self._good_at = time.monotonic()

    def _refuse(self, step: float) -> None:
        """Keep the offset in force; say loudly that time is not synced while the step waits."""
        self._warning = (f"NTP servers answer a step of {step:+.3f} s, more than gateway.ntp.max_step "
                         f"({self.max_step:g} s), and most of the {len(self.servers)} configured servers do not "
                         "agree on it: the step is not applied and time is not synced")
        log.warning("%s", self._warning)

    async def start(self) -> None:
        """Run the polling loop as a task of the current event loop (no-op without servers)."""
        if self.servers and self._task is None:
            self._task = asyncio.create_task(self._run(), name="ntp-clock")

    async def stop(self) -> None:
        """Cancel the polling loop and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sync()
            except Exception:  # the clock must outlive any surprise; the next round retries
                log.exception("NTP round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def status(self) -> dict[str, Any]:
        """JSON-ready snapshot for ``/healthz``: offset, synced and each server's last answer."""
        return {
            "synced": self.synced,
            "offset": self._offset,
            "interval": self.interval,
            "max_step": self.max_step,
            "warning": self._warning,
            "servers": [self._server_status(s.label) for s in self.servers],
        }

    def _server_status(self, label: str) -> dict[str, Any]:
        last, good = self._last.get(label), self._last_good.get(label)
        return {
            "server": label,
            "ok": bool(last and last.ok),
            "offset": good.offset if good else None,
            "delay": good.delay if good else None,
            "stratum": good.stratum if good else None,
            "last_sync": _iso(good.at + (good.offset or 0.0)) if good else None,
            "error": last.error if last else "not asked yet",
        }


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
