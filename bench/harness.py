"""What every scenario shares: the run's settings and servers, and the shape of its results.

A scenario is anything with a ``name``, a ``title`` and a ``run(bench)`` that
returns a :class:`Section`: a table of absolute numbers and ratios plus the
acceptance :class:`Check` s it is judged by.  The relay scenarios in
``relay.py`` are the first; refdb pushes, file transfer or a two-worker gateway
can be added the same way and the report picks them up.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .servers import TARGETS, Stack, Tools, start_stack

__all__ = ["Bench", "Check", "Scenario", "Section", "Settings"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How long and against what the scenarios run."""

    #: Seconds of measured load per cell.
    duration: float = 10.0
    #: Seconds of unmeasured load before each cell (connection pools, caches, JIT-free warm paths).
    warmup: float = 2.0
    #: Which of :data:`servers.TARGETS` to measure.
    targets: tuple[str, ...] = TARGETS
    #: Size of the file moved by the file-transfer scenario, in MiB.
    file_mib: int = 1024
    #: Seconds the soak scenario runs.
    soak: float = 600.0
    #: Seconds the attack scenario attacks (after its quiet phase).
    attack: float = 60.0


@dataclass(frozen=True, kw_only=True)
class Check:
    """One acceptance target and how the run fared against it."""

    label: str
    #: The measured value, or None when a target it needs was not measured.
    measured: float | None
    limit: float
    unit: str
    #: True for "at least" (throughput), False for "at most" (latency).
    at_least: bool
    #: Why the measurement cannot be trusted (errors during the run), if so.
    problem: str | None = None

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "n/a"
        if self.problem:
            return "INVALID"
        ok = self.measured >= self.limit if self.at_least else self.measured <= self.limit
        return "PASS" if ok else "MISS"


@dataclass(frozen=True, kw_only=True)
class Section:
    """A scenario's results: one table, its acceptance checks, and raw numbers for JSON."""

    name: str
    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    checks: Sequence[Check] = ()
    notes: Sequence[str] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)


class Scenario(Protocol):
    """A benchmark that can be run by name (``python -m bench --only NAME``)."""

    @property
    def name(self) -> str: ...

    @property
    def title(self) -> str: ...

    def run(self, bench: Bench) -> Section: ...


class Bench:
    """One benchmark run: settings, tools, a scratch directory, and the live servers.

    Only one :class:`Stack` runs at a time, so an idle backend and its proxies
    never share the cores with the one being measured.
    """

    def __init__(self, *, tools: Tools, workdir: Path, settings: Settings, exits: ExitStack) -> None:
        self.tools = tools
        self.workdir = workdir
        self.settings = settings
        self._exits = exits
        self._stack: tuple[Stack, ExitStack] | None = None
        self._started = time.monotonic()

    def stack(self, delay: float, backend: str = "demo") -> Stack:
        """The ``backend`` (of :data:`servers.BACKENDS`) answering after ``delay`` seconds, with the
        selected proxies in front."""
        if self._stack and self._stack[0].delay == delay and self._stack[0].kind == backend:
            return self._stack[0]
        self.close_stack()
        exits = self._exits.enter_context(ExitStack())
        self.log(f"starting {backend} backend ({delay * 1000:g} ms) and {', '.join(self.settings.targets)}")
        self._stack = (start_stack(self.tools, self.workdir, delay=delay, targets=self.settings.targets,
                                   exits=exits, kind=backend), exits)
        return self._stack[0]

    def close_stack(self) -> None:
        """Stop the running servers, if any."""
        if self._stack:
            self._stack[1].close()
            self._stack = None

    def log(self, message: str) -> None:
        """Progress on stderr, so stdout carries only the results."""
        print(f"[{time.monotonic() - self._started:6.1f}s] {message}", file=sys.stderr, flush=True)
