"""A circuit breaker per endpoint: stop sending requests to an endpoint that keeps failing, and try it again
after a cooldown with one request at a time (rag/llm/pool.py keeps one per endpoint)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    """closed -(``threshold`` consecutive failures)-> open -(``cooldown_s``)-> half-open -(one trial)-> closed
    or open again. Any success closes it. Not locked itself: the pool calls it under its lock. ``clock``:
    monotonic seconds (a fake one in tests)."""

    def __init__(self, threshold: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.trial = False  # the half-open trial request is under way
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        return "open" if self.clock() - self.opened_at < self.cooldown_s else "half-open"

    @property
    def retry_in(self) -> float:
        """Seconds until an open circuit lets a trial through (0 unless open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def allows(self) -> bool:
        """May a request go now? (Asking takes nothing; :meth:`start` does.)"""
        state = self.state
        return state == "closed" or (state == "half-open" and not self.trial)

    def start(self) -> bool:
        """A request goes now; True if it is the half-open trial (the only one until it ends)."""
        if self.state == "half-open":
            self.trial = True
            return True
        return False

    def success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self.trial = False

    def failure(self, *, trip: bool = False) -> bool:
        """Count a failure; True if the circuit opened (or opened again) because of it. ``trip``: open it now,
        whatever the count (a timeout: each further request would wait as long)."""
        self.consecutive_failures += 1
        self.trial = False
        state = self.state
        if state == "half-open" or (state == "closed" and (trip or self.consecutive_failures >= self.threshold)):
            self.opened_at = self.clock()
            self.times_opened += 1
            return True
        return False  # still closed, or already open (a request that started earlier failed late)

    def abandon(self) -> None:
        """The trial ended without a verdict (the caller went away): the next request may try."""
        self.trial = False
