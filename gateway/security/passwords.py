"""Password hashes for ``clients.*.basic.password_hash`` (issue 4, standard §4.5 secure communication).

scrypt (RFC 7914) from the standard library: salted, memory-hard and slow, so
a stolen endpoints.yaml does not give away passwords.  The text form carries
its parameters, so they can be raised later without breaking old hashes::

    $scrypt$ln=14,r=8,p=1$<salt, base64>$<key, base64>

Verification compares in constant time.

:class:`PasswordChecks` runs the checks of logins (:mod:`gateway.security.auth`)
in a small bounded pool of threads at the lowest CPU priority.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import hmac
import itertools
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from gateway.errors import LoginBusy
from routing.config import HASH_PREFIX

__all__ = ["hash_password", "verify_password", "HASH_PREFIX", "PasswordChecks", "CHECK_WORKERS", "CHECK_QUEUE",
           "CHECK_NICENESS", "CLEAN_RESERVE", "CHECK_WAIT"]

#: Threads that run password checks: half the CPUs, so hashing never takes all of them.
CHECK_WORKERS = max(1, (os.cpu_count() or 2) // 2)
#: Password checks that may wait for a thread; more are refused at once (LoginBusy).
CHECK_QUEUE = 16
#: Places of the queue that only checks from addresses without recent failures may take.
CLEAN_RESERVE = 4
#: Seconds a check may wait for a thread before it is refused (LoginBusy).
CHECK_WAIT = 10.0
#: Nice value of the check threads: the lowest priority, so hashing never takes CPU from serving.
CHECK_NICENESS = 19

_LOG2_N = 14  # N = 16384: 16 MiB and about 50 ms per check on this class of machine
_R = 8
_P = 1
_KEY_BYTES = 32
_SALT_BYTES = 16
_FORM = re.compile(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
_MAX_LOG2_N = 20  # refuse hashes that would make each check take seconds and gigabytes


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=256 * n * r + 1024 * 1024)


def hash_password(password: str) -> str:
    """A new salted hash of ``password`` in the text form above."""
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(password, salt, _LOG2_N, _R, _P, _KEY_BYTES)
    b64 = base64.b64encode
    return f"{HASH_PREFIX}ln={_LOG2_N},r={_R},p={_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; a malformed hash never matches."""
    match = _FORM.fullmatch(stored)
    if match is None:
        return False
    log2_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    try:
        salt, key = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p, len(key)), key)


class PasswordChecks:
    """scrypt checks in a small bounded pool of their own, so no other work ever waits behind them.

    Its threads run at nice :data:`CHECK_NICENESS`.  Checks wait for a thread
    in two ranks: a ``suspect`` one (its address failed lately, see
    :class:`gateway.security.auth.Authenticator`) queues behind
    every other, may fill only ``queue - CLEAN_RESERVE`` places, and is
    refused to make room when another arrives at a full queue, so a flood of
    guesses cannot keep a client that logs in for the first time from being
    checked.  Use it from one event loop.
    """

    def __init__(self, *, workers: int = CHECK_WORKERS, queue: int = CHECK_QUEUE, wait: float = CHECK_WAIT) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="password", initializer=_yield_cpu)
        self._workers = workers
        self._queue = queue
        self._wait = wait
        self._running = 0
        """Checks handed to the threads and not finished (their callers may have gone away)."""
        self._waiting: list[tuple[bool, int, asyncio.Future[bool]]] = []
        """Heap of waiting checks: not suspect before suspect, then by arrival."""
        self._suspects = 0
        self._arrivals = itertools.count()

    async def verify(self, password: str, stored: str, *, suspect: bool = False) -> bool:
        """Whether ``password`` matches ``stored``; raises :class:`LoginBusy` when no place is free."""
        loop = asyncio.get_running_loop()
        if self._running < self._workers and not self._waiting:
            self._running += 1
        else:
            await self._queue_up(loop, suspect)
        try:
            future = self._pool.submit(verify_password, password, stored)
        except BaseException:
            self._finished()
            raise
        # The place is passed on when the check ends, even if its caller went away: the bound holds threads' work.
        future.add_done_callback(lambda _done: _call_in(loop, self._finished))
        return await asyncio.wrap_future(future)

    async def _queue_up(self, loop: asyncio.AbstractEventLoop, suspect: bool) -> None:
        """Wait for a thread, at most ``wait`` seconds; on return the caller holds a running place."""
        full = len(self._waiting) >= self._queue
        if (full and (suspect or not self._evict())) or (
                not full and suspect and self._suspects >= self._queue - CLEAN_RESERVE):
            raise LoginBusy(f"{self._queue} password checks are already waiting; try again")
        entry = (suspect, next(self._arrivals), loop.create_future())
        heapq.heappush(self._waiting, entry)
        self._suspects += suspect
        turn = entry[2]
        try:
            async with asyncio.timeout(self._wait):
                given = await asyncio.shield(turn)
        except BaseException as exc:
            if turn.done() and turn.result():  # its turn came just as it gave up: pass the place on
                self._finished()
            else:
                self._leave(entry)
            if isinstance(exc, TimeoutError):
                raise LoginBusy(f"no password-check thread was free within {self._wait:g} s; try again") from None
            raise
        if not given:
            raise LoginBusy("password checks from addresses that did not fail lately came first; try again")

    def _evict(self) -> bool:
        """Refuse the latest waiting suspect check to make room for another; False if none waits."""
        suspects = [entry for entry in self._waiting if entry[0]]
        if not suspects:
            return False
        latest = max(suspects, key=lambda entry: entry[1])
        self._leave(latest)
        latest[2].set_result(False)
        return True

    def _leave(self, entry: tuple[bool, int, asyncio.Future[bool]]) -> None:
        self._waiting.remove(entry)
        heapq.heapify(self._waiting)
        self._suspects -= entry[0]

    def _finished(self) -> None:
        """A running place is free: give it to the first waiting check, or let it go."""
        if self._waiting:
            suspect, _arrival, turn = heapq.heappop(self._waiting)
            self._suspects -= suspect
            turn.set_result(True)
        else:
            self._running -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _call_in(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:  # the loop closed while the check ran: nobody is left to hand the place to
        pass


def _yield_cpu() -> None:
    """Lower the calling pool thread (only it: on Linux a priority belongs to a thread) to CHECK_NICENESS."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECK_NICENESS)
    except OSError:  # not Linux-like: the pool's bound still holds
        pass
