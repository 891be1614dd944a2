"""Per-key rate limiting for routes that cost Stripe reads (`POST /billing/subscriptions/sync`).

A token bucket per key (a user): `per_minute` requests in a burst, refilled at `per_minute`
a minute. In memory, per process: it bounds what one caller can spend of the account's read
allowance, not a security boundary (the routes already need the admin token). Hand-written:
the rate-limit packages decorate whole routes or need Redis; this is a dozen lines.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

MAX_KEYS = 100_000  # the least recently used buckets are forgotten beyond this (full again)


class PerKeyLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.per_second = per_minute / 60.0
        self.clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: Hashable) -> int | None:
        """None if `key` may go on now (a token is taken); else the whole seconds to wait."""
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.per_second)
            allowed = tokens >= 1
            self._buckets[key] = (tokens - 1 if allowed else tokens, now)
            if len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
            if allowed:
                return None
            return max(1, math.ceil((1 - tokens) / self.per_second))
