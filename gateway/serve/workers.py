"""``bmrgw serve --workers N``: N gateway processes on one port, supervised (README "Resilience").

The supervisor (this process) starts N copies of ``bmrgw serve`` with a
hidden ``--worker I``; each binds the port with ``SO_REUSEPORT`` and the
kernel spreads new connections over them.  They share the store; each writes
the send/receive log as its own node ``<gateway.name>.w<I>`` (its own hash
chain), so ``bmrgw logs verify`` checks each and ``--message-id`` finds all.

A worker that exits on its own is started again — at once if it ran for a
while, after a doubling pause (up to 30 s) if it keeps dying young.  Exit
status 2 from a worker (invalid config, port taken) stops everything: a
restart could not fix it.  SIGTERM/SIGINT are passed on and waited for (each
worker drains); SIGHUP is passed on (each worker reloads).

The watchdog: each worker's event loop writes a byte to a pipe every
:data:`_BEAT` seconds (:func:`heartbeat`).  A worker that has beaten once and
then stays silent for ``gateway.watchdog_timeout`` seconds has a loop that no
longer runs — stuck in a parse, a deadlock, stopped — and is killed with
SIGKILL (SIGTERM would wait for that same loop), then started again like a
worker that died.  Start-up is not timed: a worker is watched from its first beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from gateway.errors import ConfigError
from routing.config import Config

from .options import ServeOptions

__all__ = ["supervise", "heartbeat"]

log = logging.getLogger("bmrgw.workers")

_TICK = 0.2
_SETTLED = 10.0
"""A worker that ran this long before dying is restarted without a pause."""
_MAX_PAUSE = 30.0
_EXTRA_STOP_SECONDS = 15.0
_BEAT = 0.5
"""Seconds between a worker's heartbeats."""


@dataclass(eq=False)
class _Worker:
    number: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = 0.0
    due: float = 0.0
    restarts: int = field(default=0)
    beats: int | None = None
    """Read end of the worker's heartbeat pipe."""
    last_beat: float | None = None
    """When the worker last beat; ``None`` until its first beat."""

    def start(self) -> None:
        self.close_pipe()
        self.beats, pipe = os.pipe()
        os.set_blocking(self.beats, False)
        # Born ignoring SIGHUP: a reload passed on while it still starts must not kill it
        # (it reads the config fresh anyway); its event loop installs the real handler.
        try:
            self.proc = subprocess.Popen([*self.argv, "--heartbeat-fd", str(pipe)], preexec_fn=_ignore_hup,
                                         pass_fds=(pipe,))
        finally:
            os.close(pipe)
        self.started, self.last_beat = time.monotonic(), None
        log.info("worker %d started (pid %d)", self.number, self.proc.pid)

    def heard(self, now: float) -> None:
        """Take the beats that arrived since the last look."""
        assert self.beats is not None
        with contextlib.suppress(BlockingIOError):
            if os.read(self.beats, 4096):
                self.last_beat = now

    def close_pipe(self) -> None:
        if self.beats is not None:
            os.close(self.beats)
            self.beats = None


async def heartbeat(pipe: int) -> None:
    """In a worker: beat on the supervisor's pipe while this event loop runs (see the module docstring)."""
    os.set_blocking(pipe, False)
    try:
        while True:
            with contextlib.suppress(BlockingIOError):  # the pipe is full: the supervisor is behind, not us
                os.write(pipe, b".")
            await asyncio.sleep(_BEAT)
    except BrokenPipeError:
        log.error("the supervisor is gone; no more heartbeats")
    finally:
        os.close(pipe)


def _ignore_hup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _argv(options: ServeOptions, number: int, *, host: str, port: int) -> list[str]:
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(options.config), "--host", host,
            "--port", str(port), "--log-level", options.log_level, "--worker", str(number)]
    if options.data_dir is not None:
        argv += ["--data-dir", str(options.data_dir)]
    if options.db is not None:
        argv += ["--db", options.db]
    if options.node is not None:
        argv += ["--node", options.node]
    return argv


class _Signals:
    def __init__(self) -> None:
        self.stop = False
        self.hup = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._hup)

    def _stop(self, _: int, __: FrameType | None) -> None:
        self.stop = True

    def _hup(self, _: int, __: FrameType | None) -> None:
        self.hup = True


def supervise(options: ServeOptions, config: Config, *, host: str, port: int) -> int:
    """Run ``options.workers`` workers until SIGTERM; returns the exit status."""
    if port == 0:
        raise ConfigError("--workers needs a fixed port (gateway.listen.port or --port), not 0")
    signals = _Signals()
    workers = [_Worker(i, _argv(options, i, host=host, port=port)) for i in range(1, options.workers + 1)]
    for worker in workers:
        worker.start()
    print(f"bmrgw {config.gateway.name}: {len(workers)} workers on {host}:{port} (supervisor pid {os.getpid()})",
          flush=True)
    status = _watch(workers, signals, config.gateway.watchdog_timeout)
    return _stop_all(workers, config.gateway.drain_timeout + _EXTRA_STOP_SECONDS) or status


def _watch(workers: list[_Worker], signals: _Signals, watchdog: float) -> int:
    while not signals.stop:
        time.sleep(_TICK)
        if signals.hup:
            signals.hup = False
            _send(workers, signal.SIGHUP)
        for worker in workers:
            _check_beats(worker, watchdog)
            if _revive(worker) == 2:
                return 2
    return 0


def _check_beats(worker: _Worker, watchdog: float) -> None:
    """Kill ``worker`` if its event loop has been silent for ``watchdog`` seconds; _revive restarts it."""
    if worker.proc is None or worker.beats is None:
        return
    now = time.monotonic()
    worker.heard(now)
    if worker.last_beat is None or now - worker.last_beat <= watchdog or worker.proc.poll() is not None:
        return
    log.error("worker %d (pid %d) did not answer for %.1f s (gateway.watchdog_timeout %g s); killing it",
              worker.number, worker.proc.pid, now - worker.last_beat, watchdog)
    worker.proc.kill()
    worker.proc.wait()


def _revive(worker: _Worker) -> int | None:
    """Restart ``worker`` if it died (after its pause); returns its exit status when it died."""
    now = time.monotonic()
    if worker.proc is None:
        if now >= worker.due:
            worker.start()
        return None
    code = worker.proc.poll()
    if code is None:
        return None
    if code == 2:
        log.error("worker %d exited with status 2 (invalid configuration or port unavailable); stopping",
                  worker.number)
        return 2
    ran = now - worker.started
    worker.pause = 0.0 if ran >= _SETTLED else min(_MAX_PAUSE, max(0.5, worker.pause * 2))
    worker.due, worker.proc = now + worker.pause, None
    worker.close_pipe()
    worker.restarts += 1
    log.error("worker %d exited with status %s after %.1f s; starting it again in %g s", worker.number, code, ran,
              worker.pause)
    return code


def _send(workers: list[_Worker], signum: int) -> None:
    for worker in workers:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.send_signal(signum)


def _stop_all(workers: list[_Worker], timeout: float) -> int:
    """SIGTERM every worker, wait for them to drain; 1 if one had to be killed or failed."""
    _send(workers, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    status = 0
    for worker in workers:
        if worker.proc is None:
            continue
        try:
            code = worker.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop within %g s; killing it", worker.number, timeout)
            worker.proc.kill()
            code = worker.proc.wait()
        status = status or (1 if code not in (0, -signal.SIGTERM) else 0)
    return status
