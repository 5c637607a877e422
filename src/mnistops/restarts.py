"""How long to wait before starting again a process that ended: the monitor process (by
the server or the workers' supervisor) and the workers.

A process that ends as soon as it starts (a fault in its start-up that a restart cannot
mend) would otherwise be started every second for ever, at most of a core. The wait
doubles from :data:`FIRST_S` to :data:`MOST_S` while the process keeps ending, and falls
back to :data:`FIRST_S` once one has lived :data:`STEADY_S`.
"""

from __future__ import annotations

import time

FIRST_S = 1.0
MOST_S = 30.0
STEADY_S = 60.0
"""A process that lived this long ended by accident, not by a fault of its start-up."""


class Backoff:
    """The waits before the restarts of one process."""

    def __init__(self, first: float = FIRST_S, most: float = MOST_S, steady: float = STEADY_S):
        self.first, self.most, self.steady = first, most, steady
        self._next = first
        self._started = time.monotonic()

    def started(self) -> None:
        """The process was started (again) now."""
        self._started = time.monotonic()

    def delay(self) -> float:
        """The process ended: how long to wait before starting it again."""
        if time.monotonic() - self._started >= self.steady:
            self._next = self.first
        delay, self._next = self._next, min(self.most, self._next * 2)
        return delay
