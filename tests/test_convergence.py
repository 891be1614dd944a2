"""Property: whatever Stripe does, and whatever order, repetition and batching its events
arrive in, the database ends equal to Stripe's current objects.

Histories run against the emulator through the official SDK; events are delivered to the
same applier that polling and webhooks use, part-way through the history and at the end,
shuffled, duplicated, in random batches, with the same-second ties real histories have.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from collab_billing.config import Settings
from tests.convergence_history import USERS, converged_history
from tests.stripe_helpers import Emulator

STATUSES = ["active", "past_due", "unpaid", "paused", "trialing"]

# What changes on Stripe while a read is on its way to the database (`sync_racing`).
racing_change = st.one_of(
    st.tuples(st.just("set_status"), st.integers(0, 9), st.sampled_from(STATUSES)),
    st.tuples(st.just("cancel_at_period_end"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("change_plan"), st.integers(0, 9), st.booleans(), st.integers(1, 3)),
    st.tuples(st.just("pay"), st.integers(0, 9)),
)

operation = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, USERS - 1)),
    st.tuples(st.just("subscribe"), st.integers(0, USERS - 1)),
    # Plans: a trial (card-less ones end canceled), a change of price and seats, a trial ended.
    st.tuples(st.just("subscribe_trial"), st.integers(0, USERS - 1), st.booleans()),
    st.tuples(st.just("change_plan"), st.integers(0, 9), st.booleans(), st.integers(1, 3)),
    st.tuples(st.just("end_trial"), st.integers(0, 9)),
    st.tuples(st.just("trials_expire")),
    # A catalog price deleted (in the Dashboard): terminal, kept as a tombstone.
    st.tuples(st.just("delete_price")),
    st.tuples(st.just("cancel_at_period_end"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("set_status"), st.integers(0, 9), st.sampled_from(STATUSES)),
    st.tuples(st.just("cancel_now"), st.integers(0, 9)),
    st.tuples(st.just("delete_customer"), st.integers(0, USERS - 1)),
    # Customers made on Stripe (`customer_operation`, below), events delivered newest first.
    st.tuples(st.just("customer_on_stripe"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("sign_up"), st.integers(0, 1)),
    st.tuples(st.just("deliver_newest_first")),
    # Twice as likely: distinct seconds exercise payload ordering, ties the re-reads.
    st.tuples(st.just("advance"), st.integers(1, 3)),
    st.tuples(st.just("advance"), st.integers(1, 3)),
    st.tuples(st.just("deliver"), st.floats(0.1, 1.0)),
    # The catalog: prices belong to no customer; archiving and lookup keys are mirrored.
    # The billing cycle: invoices from Checkout and renewals, declined cards, retries,
    # payment; days pass (renewals after 30, retries 3, 5 and 7 days after a failure).
    st.tuples(st.just("checkout"), st.integers(0, USERS - 1)),
    st.tuples(st.just("decline"), st.integers(0, 9)),
    st.tuples(st.just("pay"), st.integers(0, 9)),
    st.tuples(st.just("advance"), st.sampled_from([3 * 86_400, 8 * 86_400, 31 * 86_400])),
    # Coupons and discounts: on a subscription (replaced, removed; a `once` one used up by a
    # renewal) and on the customer (the Dashboard's; removed), coupons renamed and deleted.
    st.tuples(st.just("discount_subscription"), st.integers(0, 9), st.integers(0, 1)),
    st.tuples(st.just("undiscount_subscription"), st.integers(0, 9)),
    st.tuples(st.just("discount_customer"), st.integers(0, USERS - 1), st.integers(0, 1)),
    st.tuples(st.just("undiscount_customer"), st.integers(0, USERS - 1)),
    st.tuples(st.just("update_coupon"), st.integers(0, 1)),
    st.tuples(st.just("delete_coupon"), st.integers(0, 1)),
    st.tuples(
        st.just("update_price"),
        st.sampled_from(["active", "lookup_key", "nickname", "metadata"]),
        st.booleans(),
    ),
    # Reads racing webhooks: a sync, or a delivery's tie re-read, reads from Stripe; before
    # it writes what it read, the history goes on (a change, in the same second as a rule)
    # and every event is delivered as webhooks are, one by one, each in its own transaction.
    # (A change first: the newest event, whose second the sync reads, is a fresh one.)
    st.tuples(st.just("sync_racing"), st.integers(0, USERS - 1), racing_change, racing_change),
    st.tuples(st.just("sync_racing"), st.integers(0, USERS - 1), racing_change, racing_change),
    st.tuples(st.just("deliver_racing"), st.floats(0.1, 1.0), racing_change),
    st.tuples(st.just("deliver_racing"), st.floats(0.1, 1.0), racing_change),
)


@pytest.mark.timeout(600)
def test_database_converges_to_stripe(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    @given(steps=st.lists(operation, min_size=1, max_size=25), seed=st.integers(0, 2**32))
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def check(steps: list[tuple[Any, ...]], seed: int) -> None:
        nonlocal subscriptions_checked, discounts_checked
        history = converged_history(emulator, stripe_settings, engine, steps, seed)
        subscriptions_checked += history.checked
        discounts_checked += history.discounts_checked

    subscriptions_checked = discounts_checked = 0
    check()
    assert discounts_checked > 0  # and histories showed discounts
    # The property is only worth something if histories made real subscriptions.
    assert subscriptions_checked > 20


# Histories of the billing cycle: checkouts (an invoice each), cards that decline, days
# passing (renewals, retries, cancellation for failed payment), payments, status moves.
billing_operation = st.one_of(
    st.tuples(st.just("checkout"), st.integers(0, USERS - 1)),
    st.tuples(st.just("decline"), st.integers(0, 9)),
    st.tuples(st.just("declined_renewal"), st.integers(0, 9)),
    st.tuples(st.just("pay"), st.integers(0, 9)),
    st.tuples(st.just("advance"), st.sampled_from([1, 3 * 86_400, 8 * 86_400, 31 * 86_400])),
    st.tuples(st.just("advance"), st.sampled_from([31 * 86_400, 16 * 86_400])),
    st.tuples(st.just("cancel_now"), st.integers(0, 9)),
    st.tuples(st.just("deliver"), st.floats(0.1, 1.0)),
)


@pytest.mark.timeout(600)
def test_invoices_converge_to_stripe(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    @given(steps=st.lists(billing_operation, min_size=3, max_size=14), seed=st.integers(0, 2**32))
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def check(steps: list[tuple[Any, ...]], seed: int) -> None:
        nonlocal invoices_checked
        steps = [("checkout", 0), *steps]
        history = converged_history(emulator, stripe_settings, engine, steps, seed)
        invoices_checked += history.invoices_checked
        failed_payments.update(
            e["data"]["object"]["id"]
            for e in history.every_event()
            if e["type"] == "invoice.payment_failed"
        )

    invoices_checked = 0
    failed_payments: set[str] = set()
    check()
    # Worth something only if histories made invoices, and declined some: 30 random histories
    # decline 5 to 40 payments (a bound above 5 failed a run now and then).
    assert invoices_checked > 30 and len(failed_payments) > 0


# Reads racing webhooks: syncs and tie re-reads whose write comes after a change of the same
# second and its webhooks (the interleaving `sync_racing` and `deliver_racing` make), among
# the changes they race with. The main property has them too, diluted among the rest.
racing_operation = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, USERS - 1)),
    st.tuples(st.just("checkout"), st.integers(0, USERS - 1)),
    racing_change,
    st.tuples(st.just("advance"), st.integers(1, 2)),
    st.tuples(st.just("deliver"), st.floats(0.1, 1.0)),
    st.tuples(st.just("sync_racing"), st.integers(0, USERS - 1), racing_change, racing_change),
    st.tuples(st.just("sync_racing"), st.integers(0, USERS - 1), racing_change, racing_change),
    st.tuples(st.just("deliver_racing"), st.floats(0.1, 1.0), racing_change),
)


@pytest.mark.timeout(600)
def test_reads_racing_webhooks_converge_to_stripe(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    # The two interleavings, always tried: a sync's read written after the webhook of a change
    # of its second; a tie's re-read (the update meets the row of its second) written after one.
    @example(
        steps=[
            ("subscribe", 0),
            ("deliver", 1.0),
            ("sync_racing", 0, ("set_status", 0, "past_due"), ("set_status", 0, "unpaid")),
        ],
        seed=0,
    )
    @example(
        steps=[
            ("subscribe", 0),
            ("deliver", 1.0),
            ("set_status", 0, "past_due"),
            ("deliver_racing", 1.0, ("set_status", 0, "unpaid")),
        ],
        seed=0,
    )
    @given(steps=st.lists(racing_operation, min_size=1, max_size=12), seed=st.integers(0, 2**32))
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def check(steps: list[tuple[Any, ...]], seed: int) -> None:
        nonlocal subscriptions_checked
        history = converged_history(emulator, stripe_settings, engine, steps, seed)
        subscriptions_checked += history.checked

    subscriptions_checked = 0
    check()
    assert subscriptions_checked > 20


# Customers made on Stripe (the Dashboard's, another product's), each naming a user of its own
# who signs up (and is adopted, as the poll does) at some point or never, some deleted at once
# or later (then a next one may name that user), beside our own customers' changes; their
# events delivered in random batches, or newest first one by one as webhooks may come. The
# main property has them too, diluted among the rest.
customer_operation = st.one_of(
    st.tuples(st.just("customer_on_stripe"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("customer_on_stripe"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("sign_up"), st.integers(0, 1)),
    st.tuples(st.just("delete_made_on_stripe"), st.integers(0, 1)),
    st.tuples(st.just("subscribe"), st.integers(0, USERS - 1)),
    st.tuples(st.just("delete_customer"), st.integers(0, USERS - 1)),
    st.tuples(st.just("advance"), st.integers(1, 2)),
    st.tuples(st.just("deliver"), st.floats(0.1, 1.0)),
    st.tuples(st.just("deliver_newest_first")),
)


@pytest.mark.timeout(600)
def test_customers_made_on_stripe_converge(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    # A deleted customer's older events delivered after its deletion, its user signed up or
    # not yet: always tried.
    @example(
        steps=[("sign_up", 0), ("customer_on_stripe", 0, True), ("deliver_newest_first",)],
        seed=0,
    )
    @example(steps=[("customer_on_stripe", 1, True), ("deliver_newest_first",)], seed=0)
    # A user whose customer made on Stripe was linked, then deleted, gets the next one.
    @example(
        steps=[
            ("sign_up", 0),
            ("customer_on_stripe", 0, False),
            ("deliver", 1.0),
            ("delete_made_on_stripe", 0),
            ("customer_on_stripe", 0, False),
            ("deliver", 1.0),
        ],
        seed=0,
    )
    @given(steps=st.lists(customer_operation, min_size=2, max_size=10), seed=st.integers(0, 2**32))
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def check(steps: list[tuple[Any, ...]], seed: int) -> None:
        nonlocal deleted_checked
        history = converged_history(emulator, stripe_settings, engine, steps, seed)
        made = {c for customers in history.made_on_stripe.values() for c in customers}
        deleted_checked += len(made & history.deleted)

    deleted_checked = 0
    check()
    # Worth something only if histories deleted customers made on Stripe (11 to 26 of them in
    # 40 random histories and the two examples, when the bound was set).
    assert deleted_checked > 4
