"""A real SNTP server on loopback that serves a deliberately shifted clock.

It answers NTP v3/v4 client requests (mode 3) per RFC 5905 §7.3 with the
system time plus ``shift`` seconds, echoing the request's transmit timestamp
as the origin timestamp.  Stratum, leap indicator and a few deliberate
faults are settable while it runs, so tests can turn a good server bad.

It runs in its own thread with a blocking socket, so both async tests (the
gateway's clock in the test's event loop) and synchronous CLI tests (which
start their own loop) can use it::

    with SntpResponder(shift=3.0) as ntp:
        clock = Clock([ntp.address], interval=0.2)
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from types import TracebackType

NTP_EPOCH_DELTA = 2_208_988_800
_PACKET = struct.Struct("!BBbb4s4s4sQQQQ")


def _ntp(unix: float) -> int:
    return int((unix + NTP_EPOCH_DELTA) * 2**32) & 0xFFFF_FFFF_FFFF_FFFF


class SntpResponder:
    """A UDP NTP server on 127.0.0.1 (random port) with settable behaviour."""

    def __init__(self, *, shift: float = 0.0, stratum: int = 2, leap: int = 0) -> None:
        self.shift = shift
        """Seconds the served clock is ahead of the system clock."""
        self.stratum = stratum
        self.leap = leap
        self.bad_origin = False
        """Answer with an origin timestamp other than the request's transmit timestamp."""
        self.claimed_processing = 0.0
        """Seconds between receive and transmit timestamps the server claims (negative delay when large)."""
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"sntp-{self.port}", daemon=True)

    @property
    def address(self) -> str:
        """``host:port`` as ``gateway.ntp.servers`` takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> SntpResponder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the port (later queries get ICMP port unreachable)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> SntpResponder:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(1024)
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.time() + self.shift
            reply = self.answer(data, received)
            if reply is not None:
                self.requests += 1
                self._sock.sendto(reply, peer)

    def answer(self, data: bytes, received: float) -> bytes | None:
        """The reply to one request, or ``None`` for anything but a v3/v4 client request."""
        if len(data) < _PACKET.size:
            return None
        first = data[0]
        version, mode = (first >> 3) & 7, first & 7
        if mode != 3 or version not in (3, 4):
            return None
        poll = data[2]
        origin = struct.unpack_from("!Q", data, 40)[0]
        if self.bad_origin:
            origin ^= 0xDEAD_BEEF
        transmit = time.time() + self.shift
        if self.claimed_processing:
            transmit = received + self.claimed_processing
        return _PACKET.pack(
            (self.leap << 6) | (version << 3) | 4,
            self.stratum, poll if poll < 128 else poll - 256, -20,
            struct.pack("!I", 0x0000_0100), struct.pack("!I", 0x0000_0100),
            b"LOCL" if self.stratum <= 1 else b"\x7f\x00\x00\x01",
            _ntp(received - 16), origin, _ntp(received), _ntp(transmit),
        )
