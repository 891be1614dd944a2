"""The client-side throttle: Stripe's rate on average, and a small burst to make up for a late
request, so that a sequential reader keeps the full rate."""

from __future__ import annotations

import time

from collab_billing.stripe_gateway.transport import Throttle


def timed(throttle: Throttle, calls: int) -> float:
    started = time.monotonic()
    for _ in range(calls):
        throttle.wait()
    return time.monotonic() - started


def test_a_late_caller_gets_its_burst_at_once_then_the_rate() -> None:
    throttle = Throttle(rate=10, burst=3)
    throttle.wait()
    time.sleep(0.5)  # a slow page: the slots it missed may be used at once, up to the burst
    assert timed(throttle, 3) < 0.05
    assert timed(throttle, 3) >= 0.29  # then one every 0.1 s


def test_the_average_never_exceeds_the_rate() -> None:
    throttle = Throttle(rate=50, burst=10)
    elapsed = timed(throttle, 40)
    # 40 calls: 10 at once, then 30 at 50 a second.
    assert elapsed >= 30 / 50 - 0.01


def test_without_a_burst_calls_are_evenly_spaced() -> None:
    throttle = Throttle(rate=20)
    throttle.wait()
    time.sleep(0.3)
    assert timed(throttle, 2) >= 0.049  # the first at once, the second a full interval later
