"""The gateway's pacing and counting of Stripe requests, shared by every thread."""

from __future__ import annotations

import threading
import time


class Throttle:
    """At most `rate` requests a second across threads, in bursts of at most `burst`.

    Hand-written: a thread-safe token bucket is a dozen lines; the SDK has none, and the
    rate-limit packages on PyPI are asyncio-only or decorate whole functions."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.interval = 1.0 / rate
        self.burst = burst
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - self.interval * (self.burst - 1))
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class ReadTally:
    """Stripe read requests (GETs) made by this process and not yet recorded in the database:
    Stripe's read allowance counts every one (the read budget, `reconcile/budget.py`)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self, count: int = 1) -> None:
        with self._lock:
            self._count += count

    def take(self) -> int:
        """The reads counted since the last `take`, zeroed."""
        with self._lock:
            count, self._count = self._count, 0
            return count


# One tally per process: every gateway (the reconciler's, the admin routes') adds to it.
READS = ReadTally()
