"""Coupons and discounts are mirrored from their own events: a subscription with discounts
is written from its events' payloads like any other, so a catch-up (or a webhook at each
renewal) of discounted subscriptions reads no subscription from Stripe."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select

from collab_billing.config import Settings
from collab_billing.db.models import (
    BillingCoupon,
    BillingCustomer,
    BillingDiscount,
    ReconcilerState,
)
from collab_billing.reconcile import ledger, resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.state.spend import subscription_discounts
from collab_billing.stripe_gateway import Event
from tests.reconcile_helpers import assert_matches_stripe
from tests.stripe_helpers import Emulator
from tests.test_reconcile_flow import reconciler, subscribe_new_user, subscriptions

__all__ = ["reconciler"]  # the fixture

CUSTOMERS = 6


def _subscribed(reconciler: Reconciler, emulator: Emulator, price: str) -> list[str]:
    for n in range(CUSTOMERS):
        subscribe_new_user(reconciler, emulator, price, 500 + n)
    return sorted(row.stripe_subscription_id for row in subscriptions(reconciler.factory))


def _subscription_reads(emulator: Emulator) -> dict[str, int]:
    routes = emulator.control("GET", "requests")["by_route"]
    return {r: n for r, n in routes.items() if r.startswith("GET /v1/subscriptions")}


@pytest.mark.parametrize("duration", ["forever", "once"])
def test_a_catch_up_of_discounted_subscriptions_reads_no_subscription(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings, duration: str
) -> None:
    """Coupons applied to subscriptions, each then changed twice and renewed (a `once`
    coupon is used up by the renewal: Stripe deletes its discount), all caught up in one
    drain: the drain reads events only (before: one subscription read per discounted
    subscription's event group), and the rows are Stripe's."""
    sub_ids = _subscribed(reconciler, emulator, stripe_settings.stripe_price_id or "")
    # Within Stripe's 30 days of events of the renewal (else the drain is a resync).
    emulator.past_period_end(sub_ids[0], -5 * 86400)
    reconciler.drain()
    sdk = emulator.sdk.v1
    half = sdk.coupons.create(params={"percent_off": 50, "duration": duration})  # type: ignore[typeddict-item]
    for sub_id in sub_ids:
        sdk.subscriptions.update(sub_id, {"discounts": [{"coupon": half.id}]})
        sdk.subscriptions.update(sub_id, {"metadata": {"seen": "1"}})
    sdk.coupons.update(half.id, {"name": "Half"})
    emulator.past_period_end(sub_ids[0], 3600)  # every subscription renews
    for sub_id in sub_ids:
        sdk.subscriptions.update(sub_id, {"cancel_at_period_end": True})
    emulator.control("DELETE", "requests")

    report = reconciler.drain()

    assert report.stats.total("applied") > 0, report.stats.outcomes
    assert _subscription_reads(emulator) == {}
    assert assert_matches_stripe(emulator, reconciler.factory) == CUSTOMERS
    with reconciler.factory() as session:
        coupons = session.scalars(select(BillingCoupon)).all()
        assert len(coupons) == 1, report.stats.outcomes
        [coupon] = coupons
        assert (coupon.stripe_coupon_id, coupon.percent_off) == (half.id, 50)
        discounts = session.scalars(select(BillingDiscount)).all()
        assert sorted(d.stripe_subscription_id or "" for d in discounts) == sub_ids
        assert all(d.deleted == (duration == "once") for d in discounts)
        left = [subscription_discounts(session, sub_id) for sub_id in sub_ids]
    assert all(len(found) == (duration == "forever") for found in left)


def test_resync_lists_coupons_and_the_subscriptions_discounts(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    """Stripe has no list of discounts: resync takes them from the subscriptions it lists
    (`expand[]=data.discounts`), and the coupons from `/v1/coupons` (a deleted one, gone
    from the list, stays a tombstone that keeps what it takes off)."""
    sub_ids = _subscribed(reconciler, emulator, stripe_settings.stripe_price_id or "")
    sdk = emulator.sdk.v1
    third = sdk.coupons.create(params={"percent_off": 30, "duration": "forever"})
    for sub_id in sub_ids[:2]:
        sdk.subscriptions.update(sub_id, {"discounts": [{"coupon": third.id}]})
    reconciler.drain()
    sdk.coupons.delete(third.id)
    with reconciler.factory() as session, session.begin():
        session.execute(BillingDiscount.__table__.delete())

    report = resync.resync(reconciler.factory, reconciler.gateway)

    assert report.written["discount"] == 2
    with reconciler.factory() as session:
        [coupon] = session.scalars(select(BillingCoupon)).all()
        assert (coupon.percent_off, coupon.deleted) == (30, False)  # its event is not read yet
        found = {sub_id: subscription_discounts(session, sub_id) for sub_id in sub_ids}
    assert [len(d) for d in found.values()] == [1, 1] + [0] * (CUSTOMERS - 2)
    reconciler.drain()
    with reconciler.factory() as session:
        [coupon] = session.scalars(select(BillingCoupon)).all()
        assert (coupon.percent_off, coupon.deleted) == (30, True)
        assert len(subscription_discounts(session, sub_ids[0])) == 1


def test_webhooks_of_a_discounted_subscription_read_no_subscription(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    """Each event delivered alone, as webhooks deliver them: the discount, the renewal and
    the changes of a subscription with a `forever` coupon read no subscription (before: one
    read per event of it)."""
    sub_ids = _subscribed(reconciler, emulator, stripe_settings.stripe_price_id or "")
    emulator.past_period_end(sub_ids[0], -5 * 86400)
    reconciler.drain()
    seen = {event["id"] for event in emulator.all_events()}
    sdk = emulator.sdk.v1
    half = sdk.coupons.create(params={"percent_off": 50, "duration": "forever"})
    sdk.subscriptions.update(sub_ids[0], {"discounts": [{"coupon": half.id}]})
    emulator.past_period_end(sub_ids[0], 3600)
    sdk.subscriptions.update(sub_ids[0], {"cancel_at_period_end": True})
    delivered = [e for e in reversed(emulator.all_events()) if e["id"] not in seen]
    emulator.control("DELETE", "requests")

    for event in delivered:
        reconciler.applier.apply([Event.from_dict(event)])

    assert _subscription_reads(emulator) == {}
    with reconciler.factory() as session:
        [discount] = subscription_discounts(session, sub_ids[0])
    assert discount.percent_off == 50


def test_resync_lists_the_customers_own_discounts(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    """A customer's own discount (no `subscription`) is shown by the customer alone, in full
    (no expansion): resync takes it from the customers it lists, and a one-user resync from
    that user's customer."""
    sub_ids = _subscribed(reconciler, emulator, stripe_settings.stripe_price_id or "")
    sdk = emulator.sdk.v1
    free = sdk.coupons.create(params={"percent_off": 100, "duration": "forever"})
    owners = [str(sdk.subscriptions.retrieve(sub_id).customer) for sub_id in sub_ids[:2]]
    made = {
        owner: emulator.control("POST", f"customers/{owner}/discount", {"coupon": free.id})["id"]
        for owner in owners
    }

    def rows() -> dict[str, tuple[str | None, bool]]:
        with reconciler.factory() as session:
            found = session.scalars(select(BillingDiscount)).all()
        return {d.stripe_discount_id: (d.stripe_subscription_id, d.deleted) for d in found}

    resync.resync(reconciler.factory, reconciler.gateway)
    assert rows() == {made[owner]: (None, False) for owner in owners}

    with reconciler.factory() as session, session.begin():
        session.execute(BillingDiscount.__table__.delete())
    github_user_id = int(sdk.customers.retrieve(owners[1]).metadata["github_user_id"])
    resync.resync(reconciler.factory, reconciler.gateway, github_user_id)
    assert rows() == {made[owners[1]]: (None, False)}


def test_a_coupon_deleted_before_the_upgrade_is_still_taken_off(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    """Stripe's list of coupons leaves out a deleted one, whose discounts it still takes off:
    the first poll of the release that mirrors coupons (after an older one that read none of
    their events) lists the discounts with their coupons, and keeps those coupons."""
    sub_ids = _subscribed(reconciler, emulator, stripe_settings.stripe_price_id or "")
    sdk = emulator.sdk.v1
    third = sdk.coupons.create(params={"percent_off": 30, "duration": "forever"})
    sdk.subscriptions.update(sub_ids[0], {"discounts": [{"coupon": third.id}]})
    sdk.coupons.delete(third.id)  # the campaign is over; the discount goes on
    reconciler.drain()
    with reconciler.factory() as session, session.begin():  # as the older release left it
        session.execute(delete(BillingDiscount))
        session.execute(delete(BillingCoupon))
        session.execute(delete(ReconcilerState).where(ReconcilerState.name == ledger.MIRROR_FORMAT))

    reconciler.drain()  # the release's first poll

    with reconciler.factory() as session:
        found = subscription_discounts(session, sub_ids[0])
    assert [d.percent_off for d in found] == [30]


def test_resync_marks_deleted_the_discounts_stripe_no_longer_shows(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    """Discounts removed (a subscription's, a customer's own) while their events went unread:
    resync's lists no longer show them, and it marks their rows deleted; a one-user resync
    those of the user's customer only. Their events, read afterwards, are found stale."""
    sub_ids = _subscribed(reconciler, emulator, stripe_settings.stripe_price_id or "")
    sdk = emulator.sdk.v1
    half = sdk.coupons.create(params={"percent_off": 50, "duration": "forever"})
    owners = [str(sdk.subscriptions.retrieve(sub_id).customer) for sub_id in sub_ids]
    for sub_id in sub_ids[:3]:
        sdk.subscriptions.update(sub_id, {"discounts": [{"coupon": half.id}]})
    for owner in owners[3:5]:
        emulator.control("POST", f"customers/{owner}/discount", {"coupon": half.id})
    reconciler.drain()
    emulator.control("POST", "clock/advance", {"seconds": 60})  # unread from here on
    for sub_id in sub_ids[:2]:  # `discounts=""`: the other way Stripe takes
        sdk.subscriptions.update(sub_id, {"discounts": ""})
    for owner in owners[3:5]:
        sdk.customers.delete_discount(owner)
    emulator.control("POST", "clock/advance", {"seconds": 60})
    sdk.coupons.update(half.id, {"name": "Half"})  # the newest event, a minute later

    def live() -> set[str]:
        """What the live rows are on: their subscription, else their customer."""
        with reconciler.factory() as session:
            rows = session.execute(
                select(BillingDiscount.stripe_subscription_id, BillingCustomer.stripe_customer_id)
                .join(BillingCustomer, BillingCustomer.id == BillingDiscount.billing_customer_id)
                .where(BillingDiscount.deleted.is_(False))
            )
            return {subscription or customer for subscription, customer in rows}

    assert live() == {*sub_ids[:3], *owners[3:5]}
    github_user_id = int(sdk.customers.retrieve(owners[0]).metadata["github_user_id"])
    report = resync.resync(reconciler.factory, reconciler.gateway, github_user_id)
    assert live() == {*sub_ids[1:3], *owners[3:5]}
    assert report.deleted["discount"] == 1

    report = resync.resync(reconciler.factory, reconciler.gateway)
    assert live() == {sub_ids[2]}
    assert report.deleted["discount"] == 3
    # The removals' events, older than what resync read, are found stale.
    drained = reconciler.drain()
    assert drained.stats.outcomes[("stale", "customer.discount.deleted")] == 4
    assert live() == {sub_ids[2]}
