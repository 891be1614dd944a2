"""Calendar billing periods through the SDK, on test clocks set to chosen dates: monthly and
yearly periods are counted from the billing cycle anchor (its day of month clamped to shorter
months, its time of day kept), `interval_count` multiplies them, and a trial's end is the
anchor (ending a trial at once resets it)."""

from __future__ import annotations

from datetime import UTC, datetime

import stripe

from tests.emulator.conftest import CARD, recurring_price

HOUR = 3600


def at(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp())  # type: ignore[misc]


def customer_on_clock(client: stripe.StripeClient, frozen_time: int) -> tuple[str, str]:
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": frozen_time})
    customer = client.v1.customers.create(params={**CARD, "test_clock": clock.id})
    return clock.id, customer.id


def period(sub: stripe.Subscription) -> tuple[int, int]:
    item = sub["items"].data[0]
    return item.current_period_start, item.current_period_end


def renewed(client: stripe.StripeClient, clock: str, sub_id: str) -> stripe.Subscription:
    """The subscription after its clock passed its current period's end (by an hour)."""
    _, end = period(client.v1.subscriptions.retrieve(sub_id))
    client.v1.test_helpers.test_clocks.advance(clock, {"frozen_time": end + HOUR})
    return client.v1.subscriptions.retrieve(sub_id)


def period_ends(client: stripe.StripeClient, clock: str, sub_id: str, renewals: int) -> list[int]:
    """The subscription's period end now and after each of `renewals` renewals, checking that
    each period starts where the previous one ended and that the anchor stays put."""
    sub = client.v1.subscriptions.retrieve(sub_id)
    anchor = sub.billing_cycle_anchor
    ends = [period(sub)[1]]
    for _ in range(renewals):
        sub = renewed(client, clock, sub_id)
        start, end = period(sub)
        assert (start, sub.billing_cycle_anchor, sub.status) == (ends[-1], anchor, "active")
        ends.append(end)
    return ends


def test_a_month_end_anchor_renews_on_each_months_last_day(client: stripe.StripeClient) -> None:
    anchor = at(2025, 1, 31, 10, 30, 15)
    clock, customer = customer_on_clock(client, anchor)
    price = recurring_price(client, 1000)
    sub = client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": price.id}]}
    )
    assert sub.billing_cycle_anchor == anchor and period(sub) == (
        anchor,
        at(2025, 2, 28, 10, 30, 15),
    )
    assert period_ends(client, clock, sub.id, 3) == [
        at(2025, 2, 28, 10, 30, 15),
        at(2025, 3, 31, 10, 30, 15),  # back to the 31st: counted from the anchor
        at(2025, 4, 30, 10, 30, 15),
        at(2025, 5, 31, 10, 30, 15),
    ]
    # The renewal invoice bills the calendar period.
    invoice = client.v1.invoices.list(params={"subscription": sub.id, "limit": 1}).data[0]
    line = invoice.lines.data[0].period
    assert (line.start, line.end) == (at(2025, 4, 30, 10, 30, 15), at(2025, 5, 31, 10, 30, 15))


def test_leap_years(client: stripe.StripeClient) -> None:
    monthly_anchor = at(2024, 1, 31)
    clock, customer = customer_on_clock(client, monthly_anchor)
    monthly = client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": recurring_price(client).id}]}
    )
    assert period_ends(client, clock, monthly.id, 1) == [at(2024, 2, 29), at(2024, 3, 31)]

    yearly_anchor = at(2024, 2, 29, 12)
    clock, customer = customer_on_clock(client, yearly_anchor)
    price = recurring_price(client, 9000, "year")
    yearly = client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": price.id}]}
    )
    assert yearly.billing_cycle_anchor == yearly_anchor
    assert period_ends(client, clock, yearly.id, 4) == [
        at(2025, 2, 28, 12),
        at(2026, 2, 28, 12),
        at(2027, 2, 28, 12),
        at(2028, 2, 29, 12),  # a leap year again: the anchor's own day
        at(2029, 2, 28, 12),
    ]


def test_interval_count_multiplies_months_and_weeks_stay_fixed(
    client: stripe.StripeClient,
) -> None:
    anchor = at(2025, 11, 30, 8)
    clock, customer = customer_on_clock(client, anchor)
    quarterly = recurring_price(client, 2500, "month", 3)
    fortnightly = recurring_price(client, 500, "week", 2)
    by_quarter = client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": quarterly.id}]}
    )
    by_fortnight = client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": fortnightly.id}]}
    )
    assert period(by_fortnight) == (anchor, anchor + 14 * 24 * HOUR)
    assert period_ends(client, clock, by_quarter.id, 3) == [
        at(2026, 2, 28, 8),
        at(2026, 5, 30, 8),  # the anchor's 30th, not three months after Feb 28
        at(2026, 8, 30, 8),
        at(2026, 11, 30, 8),
    ]
    # The fortnightly one renewed all along, on its fixed 14 days.
    start, end = period(client.v1.subscriptions.retrieve(by_fortnight.id))
    assert (start - anchor) % (14 * 24 * HOUR) == 0 and end == start + 14 * 24 * HOUR


def test_a_trials_end_is_the_anchor(client: stripe.StripeClient) -> None:
    created = at(2025, 1, 3, 9)
    trial_end = at(2025, 1, 31, 9)
    clock, customer = customer_on_clock(client, created)
    price = recurring_price(client).id
    sub = client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": price}], "trial_end": trial_end}
    )
    assert (sub.status, sub.billing_cycle_anchor, sub.start_date) == (
        "trialing",
        trial_end,
        created,
    )
    assert period(sub) == (created, trial_end)
    assert period_ends(client, clock, sub.id, 2) == [
        trial_end,
        at(2025, 2, 28, 9),
        at(2025, 3, 31, 9),
    ]

    # A trial moved moves the anchor; ended at once (`trial_end=now`), it resets it to now.
    other = client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": price}], "trial_period_days": 30}
    )
    now = client.v1.test_helpers.test_clocks.retrieve(clock).frozen_time
    moved = client.v1.subscriptions.update(other.id, {"trial_end": now + 10 * 24 * HOUR})
    assert moved.billing_cycle_anchor == now + 10 * 24 * HOUR
    client.v1.test_helpers.test_clocks.advance(clock, {"frozen_time": now + 3 * 24 * HOUR})
    ended = client.v1.subscriptions.update(other.id, {"trial_end": "now"})
    now += 3 * 24 * HOUR  # 2025-03-03, 10:00 (the clock stopped an hour past Feb 28, 9:00)
    assert (ended.status, ended.billing_cycle_anchor) == ("active", now)
    assert now == at(2025, 3, 3, 10) and period(ended) == (now, at(2025, 4, 3, 10))
