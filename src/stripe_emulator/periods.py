"""Billing periods, as Stripe counts them: from the subscription's billing cycle anchor.

A `day` or `week` interval is a fixed number of seconds. A `month` or `year` interval is
calendar months (a year: twelve), counted from the anchor, never from the previous period's
end: the n-th period ends on the anchor's day of month, clamped to the month's last day, at
the anchor's time of day (UTC). So a monthly anchor of Jan 31 renews Feb 28 (29 in a leap
year), then Mar 31, Apr 30; a yearly anchor of Feb 29 renews Feb 28, and Feb 29 again in
the next leap year. `interval_count` multiplies the interval.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import UTC, datetime

from stripe_emulator.records import DAY, Item

Interval = tuple[str, int]  # ("month", 3): the price's `recurring.interval`, `interval_count`
_FIXED = {"day": DAY, "week": 7 * DAY}
_MONTHS = {"month": 1, "year": 12}
DEFAULT_INTERVAL: Interval = ("month", 1)  # a subscription with no recurring price


def interval_of(items: Iterable[Item]) -> Interval:
    """A subscription's billing interval: its first recurring price's."""
    for item in items:
        if item.price.interval is not None:
            return item.price.interval, item.price.interval_count
    return DEFAULT_INTERVAL


def add_months(at: int, months: int) -> int:
    """`at` moved by calendar months, its day of month clamped to the target month's length."""
    moment = datetime.fromtimestamp(at, UTC)
    years, month_index = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + years, month_index + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def next_period_end(anchor: int, after: int, interval: Interval) -> int:
    """The first period boundary of the cycle anchored at `anchor` that is after `after`
    (a period starting at `after` ends there). `after` is at or after the anchor."""
    unit, count = interval
    if unit in _FIXED:
        step = _FIXED[unit] * count
        return anchor + ((after - anchor) // step + 1) * step
    step_months = _MONTHS[unit] * count
    start, then = datetime.fromtimestamp(anchor, UTC), datetime.fromtimestamp(after, UTC)
    elapsed = (then.year - start.year) * 12 + then.month - start.month
    # Periods already over: one short of the months elapsed (a clamped boundary may still
    # lie ahead in the month `after` is in), then step to the first boundary past `after`.
    periods = max(elapsed // step_months - 1, 0)
    while (end := add_months(anchor, (periods + 1) * step_months)) <= after:
        periods += 1
    return end


def period_end(anchor: int, start: int, items: Iterable[Item]) -> int:
    """The end of the period that starts at `start`, for the subscription's items."""
    return next_period_end(anchor, start, interval_of(items))
