"""A read from Stripe, and an event of the read's own second applied before the read is written.

A read made during second T reflects the events created before it, not those created later in
T. When one of those later events is applied (a webhook, in its own transaction) between the
read and the transaction that writes the read, that transaction must not write the older read
over it: the event is in the ledger, so it never applies again, and the row would stay behind
Stripe until the object's next event.

Every path that writes a read races so: a sync, resync's writes (`refresh`), a webhook's read
of its customer's features, and a tie's re-read. Each is driven here step by step: the read is
made by the service's own code, through a gateway whose observer (the gateway's own parameter)
runs the race the moment the read returns: Stripe changes, and the webhook of that change is
applied; then the service's code writes its read. All in one second on Stripe's clock,
deterministically: the customer lives on a test clock, so its events (those of the changes
made here) are all created at one second (the emulator's log never goes backwards, and nothing
else happens meanwhile).

The lists of a customer linked late (`catch_up`, `adopt`, a sync that links its customer) race
the same way, and wider: until it is linked, an event of its objects is skipped as not ours,
into the ledger, whatever its second (the last tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.sync import sync_subscriptions
from collab_billing.config import Settings
from collab_billing.db.engine import make_session_factory
from collab_billing.db.models import (
    BillingDiscount,
    BillingEntitlement,
    BillingInvoice,
    BillingSubscription,
)
from collab_billing.mirror.registry import relevant_types_filter
from collab_billing.mirror.subscriptions import SUBSCRIPTIONS
from collab_billing.reconcile.apply import Applier
from collab_billing.reconcile.resync import refresh
from collab_billing.stripe_gateway import Event, StripeGateway
from tests.stripe_helpers import Emulator
from tests.test_entitlements import featured_price
from tests.test_reconcile_flow import add_user

USER = 4242


class Race:
    """A user whose Stripe customer lives on a test clock (so every event of its objects is
    created at one second), with a webhook applier as `api/webhooks.py` builds it."""

    def __init__(
        self, emulator: Emulator, settings: Settings, engine: Engine, user: bool = True
    ) -> None:
        """`user=False`: the customer names `USER`, who does not exist yet (it is remembered
        unmatched, and its objects' events skipped, until `add_user`)."""
        self.emulator = emulator
        self.settings = settings
        self.factory: sessionmaker[Session] = make_session_factory(engine)
        self.gateway = StripeGateway(settings)
        self.applied: set[str] = set()
        self.since: int | None = None  # the events of the race: from its first subscription
        sdk = emulator.sdk.v1
        if user:
            self.add_user()
        # Events of objects on the test clock are stamped with its time, others (a customer's
        # update, the catalog's) with the emulator's: started just after a second begins, the
        # race runs within that second.
        time.sleep(1.02 - time.time() % 1)
        self.now = emulator.now()
        self.clock = sdk.test_helpers.test_clocks.create(params={"frozen_time": self.now}).id
        metadata = {"github_user_id": str(USER)}
        self.customer = sdk.customers.create(
            params={"metadata": metadata, "test_clock": self.clock}
        ).id
        self.webhooks()  # links the customer to the user (or remembers it unmatched)

    def add_user(self) -> None:
        add_user(self.factory, USER, "racer")

    def subscribe(self, price: str) -> Any:
        """A subscription left `incomplete`, its first invoice open (paid later: `pay`)."""
        if self.since is None:
            self.since = len(self.events())
        params: Any = {
            "customer": self.customer,
            "items": [{"price": price}],
            "payment_behavior": "default_incomplete",
        }
        return self.emulator.sdk.v1.subscriptions.create(params=params)

    def pay(self, subscription: Any) -> None:
        """Its invoice paid (out of band): the subscription becomes `active`."""
        invoice = str(subscription.latest_invoice)
        self.emulator.sdk.v1.invoices.pay(invoice, params={"paid_out_of_band": True})

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.emulator.control("GET", "state?events=true")["events"]
        return events

    def webhooks(self, gateway: StripeGateway | None = None, only: str | None = None) -> None:
        """Each event not delivered yet (of type `only`), delivered alone, as webhooks are."""
        applier = Applier(
            self.factory, gateway or self.gateway, source="webhook", read_features=True
        )
        for event in self.events():
            if event["id"] not in self.applied and only in (None, event["type"]):
                self.applied.add(event["id"])
                applier.apply([Event.from_dict(event)])

    def poll_everything(self) -> None:
        """Every event again, as a poll reads them (all of them processed already, here)."""
        Applier(self.factory, self.gateway).apply([Event.from_dict(e) for e in self.events()])

    def racing(self, operation: str, race: Callable[[], None]) -> StripeGateway:
        """A gateway that runs `race` once, right after its first successful `operation`."""
        done: list[bool] = []

        def observe(name: str, outcome: int | str) -> None:
            if name == operation and outcome == 200 and not done:
                done.append(True)
                race()

        return StripeGateway(self.settings, observer=observe)

    def one_second(self) -> int:
        """The one second every event of the race was created in."""
        seconds = {e["created"] for e in self.events()[self.since :]}
        assert len(seconds) == 1, seconds
        return seconds.pop()

    def status(self, subscription_id: str) -> str:
        with self.factory() as session:
            row = session.scalars(
                select(BillingSubscription).where(
                    BillingSubscription.stripe_subscription_id == subscription_id
                )
            ).one()
            return row.stripe_subscription_status


@pytest.fixture
def race(emulator: Emulator, stripe_settings: Settings, engine: Engine) -> Race:
    return Race(emulator, stripe_settings, engine)


def test_a_sync_does_not_write_its_read_over_an_event_applied_after_it(
    race: Race, emulator: Emulator
) -> None:
    sub = race.subscribe(emulator.price())
    race.webhooks()  # `customer.subscription.created`: incomplete, as of the second

    def paid_meanwhile() -> None:  # after the sync's list was read, before it is written
        race.pay(sub)
        race.webhooks()

    sync_subscriptions(race.factory, race.racing("subscriptions.list", paid_meanwhile), USER, None)
    race.one_second()
    race.poll_everything()
    stripe = emulator.sdk.v1.subscriptions.retrieve(sub.id).status
    assert stripe == "active"
    assert race.status(sub.id) == stripe


def test_a_sync_does_not_mark_deleted_a_discount_made_after_its_read(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    """The sync marks deleted the discounts its read of the subscriptions no longer shows;
    not one made after that read, in the second of its watermark, whose webhook was applied
    meanwhile (its row is of that second, at a version the sync did not see)."""
    sdk = emulator.sdk.v1
    # Before the race's clock: the catalog's events (stamped by the real clock, as the
    # subscription's update below) are of no later second than the race's.
    coupon = sdk.coupons.create(params={"percent_off": 50, "duration": "forever"})
    price = emulator.price()
    race = Race(emulator, stripe_settings, engine)
    sub = race.subscribe(price)
    race.pay(sub)
    race.webhooks()
    # The sync's watermark, the newest event's second, is the test clock's (the discount's
    # events are stamped with it): the race is of one second.
    second = sub.created
    assert race.gateway.newest_event_created(relevant_types_filter()) == second

    def discounted_meanwhile() -> None:  # after the sync's list was read, before it is written
        sdk.subscriptions.update(sub.id, params={"discounts": [{"coupon": coupon.id}]})
        race.webhooks()

    gateway = race.racing("subscriptions.list", discounted_meanwhile)
    sync_subscriptions(race.factory, gateway, USER, None)
    race.poll_everything()
    [shown] = sdk.subscriptions.retrieve(sub.id).discounts
    with race.factory() as session:
        row = session.scalars(select(BillingDiscount)).one()
    assert (row.stripe_discount_id, row.deleted) == (shown, False)
    assert row.stripe_state_as_of == second


def test_a_sync_marks_deleted_a_discount_removed_before_its_read(
    race: Race, emulator: Emulator
) -> None:
    """A discount removed before the sync's read, its row unchanged since (of the read's
    second, as a rule: the removal's `customer.subscription.updated` is stamped by the real
    clock, the race's other events by the test clock): the read no longer shows it."""
    sdk = emulator.sdk.v1
    coupon = sdk.coupons.create(params={"percent_off": 50, "duration": "forever"})
    sub = race.subscribe(emulator.price())
    race.pay(sub)
    sdk.subscriptions.update(sub.id, params={"discounts": [{"coupon": coupon.id}]})
    race.webhooks()
    sdk.subscriptions.delete_discount(sub.id)  # its events never delivered
    sync_subscriptions(race.factory, race.gateway, USER, None)
    with race.factory() as session:
        assert session.scalars(select(BillingDiscount.deleted)).all() == [True]


def test_a_refresh_does_not_write_its_read_over_an_event_applied_after_it(
    race: Race, emulator: Emulator
) -> None:
    sub = race.subscribe(emulator.price())
    race.webhooks()

    def paid_meanwhile() -> None:
        race.pay(sub)
        race.webhooks()

    gateway = race.racing("subscriptions.retrieve", paid_meanwhile)
    refresh(race.factory, gateway, SUBSCRIPTIONS, [sub.id])
    race.one_second()
    race.poll_everything()
    assert race.status(sub.id) == emulator.sdk.v1.subscriptions.retrieve(sub.id).status


def test_a_webhooks_features_read_is_not_written_over_a_later_summary(
    race: Race, emulator: Emulator
) -> None:
    # Both prices before the race's first event: the catalog's events follow the emulator's
    # clock, not the customer's test clock (`one_second` saw two seconds when it ticked).
    prices = featured_price(emulator, 1, "first"), featured_price(emulator, 1, "second")
    first, second = race.subscribe(prices[0]), race.subscribe(prices[1])
    race.webhooks()
    race.pay(first)  # `customer.subscription.updated` (active) and the summary (one feature)
    race.webhooks(only="entitlements.active_entitlement_summary.updated")

    def second_paid_meanwhile() -> None:  # after the features were read with the first's event
        race.pay(second)
        race.webhooks()

    gateway = race.racing("entitlements.active_entitlements.list", second_paid_meanwhile)
    race.webhooks(gateway, only="customer.subscription.updated")
    race.webhooks()
    race.one_second()
    race.poll_everything()
    listed = emulator.sdk.v1.entitlements.active_entitlements.list(
        params={"customer": race.customer}
    )
    stripe = sorted(e.lookup_key for e in listed.data)
    assert stripe == ["first-000", "second-000"]
    with race.factory() as session:
        rows = sorted(session.scalars(select(BillingEntitlement.lookup_key)))
    assert rows == stripe


def test_a_ties_re_read_is_not_written_over_an_event_applied_after_it(
    race: Race, emulator: Emulator
) -> None:
    sub = race.subscribe(emulator.price())
    race.webhooks(only="invoice.created")  # the invoice's row: as of the second

    def paid_meanwhile() -> None:  # after the tie was re-read, before its transaction
        race.pay(sub)
        race.webhooks()

    # `invoice.finalized` meets a row of its own second: re-read, then written.
    race.webhooks(race.racing("invoices.retrieve", paid_meanwhile), only="invoice.finalized")
    race.webhooks()
    race.one_second()
    race.poll_everything()
    invoice = emulator.sdk.v1.invoices.retrieve(str(sub.latest_invoice))
    assert invoice.status == "paid"
    with race.factory() as session:
        row = session.scalars(
            select(BillingInvoice).where(BillingInvoice.stripe_invoice_id == invoice.id)
        ).one()
    assert row.status == invoice.status


# A customer linked late: its objects' events were skipped while it was not ours, so it is
# linked with its objects, listed before the transaction that links it. Until that transaction
# commits, the customer is still not ours: an event of one of its objects applied meanwhile is
# skipped again (in any second, not only the list's), and must not be lost under the list.


@pytest.mark.parametrize("later", [False, True], ids=["same second", "a later second"])
def test_an_adoption_does_not_write_its_list_over_an_event_skipped_after_it(
    emulator: Emulator, stripe_settings: Settings, engine: Engine, later: bool
) -> None:
    race = Race(emulator, stripe_settings, engine, user=False)
    sub = race.subscribe(emulator.price())
    race.webhooks()  # skipped: the customer names no user of ours yet
    race.add_user()

    def paid_meanwhile() -> None:  # after the customer's objects were listed, before the link
        if later:  # not a same-second race: the event is skipped whatever its second
            emulator.advance_to(race.now + 10)
            params = {"frozen_time": race.now + 10}
            emulator.sdk.v1.test_helpers.test_clocks.advance(race.clock, params=params)
        race.pay(sub)
        race.webhooks()

    applier = Applier(race.factory, race.racing("subscriptions.list", paid_meanwhile))
    assert applier.adopt(as_of=0) == 1
    if not later:
        race.one_second()
    else:
        assert max(e["created"] for e in race.events()) == race.now + 10
    race.poll_everything()
    assert race.status(sub.id) == emulator.sdk.v1.subscriptions.retrieve(sub.id).status


def subscribed_before_the_user(
    emulator: Emulator, settings: Settings, engine: Engine
) -> tuple[Race, Any, Callable[[], None]]:
    """A customer naming `USER` subscribes (its events skipped: not ours), then the user
    signs up; with the race's payment of the subscription, to run meanwhile."""
    race = Race(emulator, settings, engine, user=False)
    sub = race.subscribe(emulator.price())
    race.webhooks()
    race.add_user()

    def paid_meanwhile() -> None:
        race.pay(sub)
        race.webhooks()

    return race, sub, paid_meanwhile


def test_a_catch_up_does_not_write_its_list_over_an_event_skipped_after_it(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    race, sub, paid_meanwhile = subscribed_before_the_user(emulator, stripe_settings, engine)
    metadata = {"github_user_id": str(USER), "plan": "team"}
    emulator.sdk.v1.customers.update(race.customer, params={"metadata": metadata})
    # `customer.updated` links the customer, and its transaction asks for its objects.
    race.webhooks(race.racing("subscriptions.list", paid_meanwhile), only="customer.updated")
    race.one_second()
    race.poll_everything()
    assert race.status(sub.id) == emulator.sdk.v1.subscriptions.retrieve(sub.id).status


def test_a_sync_that_links_its_customer_does_not_write_its_list_over_an_event_skipped_after_it(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    race, sub, paid_meanwhile = subscribed_before_the_user(emulator, stripe_settings, engine)
    sync_subscriptions(race.factory, race.racing("subscriptions.list", paid_meanwhile), USER, None)
    race.one_second()
    # The sync leaves such a customer unlinked; the next poll adopts it first, read again.
    Applier(race.factory, race.gateway).adopt(as_of=0)
    race.poll_everything()
    assert race.status(sub.id) == emulator.sdk.v1.subscriptions.retrieve(sub.id).status
