"""Circuit breakers, one per upstream URL (README "Resilience").

A URL's circuit is *closed* while it works.  After ``gateway.breaker.failures``
consecutive failures — connections refused, reset or timed out, never an
answer the endpoint gave, whatever its status — it *opens*: requests fail
fast (or fail over to the next URL) without touching the network.  After the
back-off it is *half-open*: exactly one request goes through as a probe; its
success closes the circuit, its failure opens it again for twice as long (up
to ``max_backoff``).

State is in memory, per gateway process; :mod:`gateway.serve.control` publishes it
to the store for ``bmrgw endpoints list`` and applies ``bmrgw endpoints reset``.
Breakers are keyed by URL, so a new URL for an endpoint starts closed, and
:meth:`Circuits.keep` drops the breakers of URLs that left the table.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from routing.settings import BreakerSettings

__all__ = ["State", "Breaker", "Circuits"]


class State(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half-open"
    OPEN = "open"

    @property
    def level(self) -> int:
        """0 closed, 1 half-open, 2 open: the value of the ``bmrgw_circuit_state`` gauge."""
        return _LEVELS[self]


_LEVELS = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


@dataclass(eq=False)
class Breaker:
    """The circuit of one URL."""

    url: str
    settings: BreakerSettings
    on_change: Callable[[Breaker], None] = lambda _: None
    clock: Callable[[], float] = time.monotonic
    state: State = State.CLOSED
    failures: int = 0
    """Consecutive failures so far."""
    opened_at: float | None = None
    """time.time() when the circuit last opened."""
    retry_at: float = 0.0
    """clock() from when a probe may go through."""
    backoff: float = field(init=False)
    last_error: str | None = None
    _probing: bool = False

    def __post_init__(self) -> None:
        self.backoff = self.settings.backoff

    def allow(self) -> bool:
        """Whether a request may go to this URL now; the first one after the back-off is the probe."""
        if self.state is State.CLOSED:
            return True
        if self._probing or self.clock() < self.retry_at:
            return False
        self._probing = True
        self._move(State.HALF_OPEN)
        return True

    def succeeded(self) -> None:
        self._probing = False
        self.failures = 0
        self.backoff = self.settings.backoff
        self.last_error = None
        self._move(State.CLOSED)

    def failed(self, reason: str) -> None:
        self.last_error = reason
        self.failures += 1
        if self.state is State.HALF_OPEN:
            self.backoff = min(self.backoff * 2, self.settings.max_backoff)
            self._open()
        elif self.state is State.CLOSED and self.failures >= self.settings.failures:
            self._open()

    def abandoned(self) -> None:
        """The request ended without telling anything about the URL (e.g. the caller's body broke)."""
        self._probing = False

    def reset(self) -> None:
        """Close the circuit now (an operator's ``bmrgw endpoints reset``)."""
        self.backoff = self.settings.backoff
        self.succeeded()

    def seconds_left(self) -> float:
        return max(0.0, self.retry_at - self.clock())

    def _open(self) -> None:
        self._probing = False
        self.opened_at = time.time()
        self.retry_at = self.clock() + self.backoff
        self._move(State.OPEN)

    def _move(self, state: State) -> None:
        changed = state is not self.state
        self.state = state
        if changed:
            self.on_change(self)


class Circuits:
    """Every URL's breaker in one gateway process."""

    def __init__(self, settings: BreakerSettings, on_change: Callable[[Breaker], None] = lambda _: None) -> None:
        self.settings = settings
        self._on_change = on_change
        self._breakers: dict[str, Breaker] = {}

    def get(self, url: str) -> Breaker:
        breaker = self._breakers.get(url)
        if breaker is None:
            breaker = self._breakers[url] = Breaker(url, self.settings, on_change=self._on_change)
        return breaker

    def keep(self, urls: Collection[str], settings: BreakerSettings) -> list[str]:
        """Forget breakers of URLs not in ``urls`` (they left the table); returns the ones dropped."""
        gone = [url for url in self._breakers if url not in urls]
        for url in gone:
            del self._breakers[url]
        if settings != self.settings:
            self.settings = settings
            for breaker in self._breakers.values():
                breaker.settings = settings
        return gone

    def reset(self, urls: Collection[str]) -> int:
        """Close the circuits of ``urls``; returns how many were not closed."""
        count = 0
        for url in urls:
            breaker = self._breakers.get(url)
            if breaker is not None and breaker.state is not State.CLOSED:
                breaker.reset()
                count += 1
        return count

    def __iter__(self) -> Iterator[Breaker]:
        return iter(list(self._breakers.values()))
