"""Features follow access per subscription: a subscription that grants no access (past due
beyond its grace) grants none of its product's features, even beside one that does.

Stripe's active entitlements list the features of every subscription Stripe entitles
(active, trialing, past due) whatever our access policy says; the state document serves only
those of the products of subscriptions that grant access (`state.access`). Over real HTTP:
the emulator driven by the SDK, the reconciler, the API, a real database.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings
from collab_billing.db.engine import transaction
from collab_billing.db.models import (
    BillingCustomer,
    BillingProductFeature,
    BillingProductFeatureSync,
    BillingState,
    User,
)
from collab_billing.reconcile.run import Reconciler
from collab_billing.state import outbox
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import Emulator
from tests.test_billing_api import serve
from tests.test_billing_cycle import DAY, HOUR
from tests.test_entitlements import featured_price, subscribe
from tests.test_reconcile_flow import add_user
from tests.test_state_cycle import Scene, recurring_price, scene


@pytest.fixture
def no_grace(stripe_settings: Settings) -> Settings:
    """A past due subscription is blocked at once (no grace): no clock to move."""
    return stripe_settings.model_copy(update={"billing_past_due_grace_days": 0})


@pytest.fixture
def reconciler(no_grace: Settings, engine: Engine) -> Reconciler:
    return Reconciler(no_grace, engine, StripeGateway(no_grace))


def second_subscription(
    emulator: Emulator, reconciler: Reconciler, price: str, github_user_id: int | None = None
) -> str:
    """Another subscription of the user's customer (by default, the only one), made in Stripe
    with a card."""
    statement = select(BillingCustomer.stripe_customer_id)
    if github_user_id is not None:
        statement = statement.join(User).where(User.github_user_id == github_user_id)
    with reconciler.factory() as session:
        [customer] = session.scalars(statement)
    card = emulator.sdk.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    params: dict[str, Any] = {
        "customer": customer,
        "items": [{"price": price}],
        "default_payment_method": card.id,
    }
    return str(emulator.sdk.v1.subscriptions.create(params=params).id)


def product_of(emulator: Emulator, price: str) -> str:
    return str(emulator.sdk.v1.prices.retrieve(price).product)


def product_features(reconciler: Reconciler) -> dict[str, list[str]]:
    with reconciler.factory() as session:
        rows = session.execute(
            select(BillingProductFeature.stripe_product_id, BillingProductFeature.lookup_key)
        ).all()
    listed: dict[str, list[str]] = {}
    for product, key in sorted(rows):
        listed.setdefault(product, []).append(key)
    return listed


@contextmanager
def state_of(settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    with contextmanager(serve)(settings, engine) as api:
        yield api


def state(api: httpx.Client, github_user_id: int) -> tuple[str, list[str]]:
    body = api.get("/billing/state", params={"github_user_id": github_user_id}).json()
    return body["access"]["state"], body["features"]


def test_a_blocked_subscription_grants_none_of_its_features_beside_an_active_one(
    reconciler: Reconciler, emulator: Emulator, no_grace: Settings, engine: Engine
) -> None:
    add_user(reconciler.factory, 970, "nine-seventy")
    reconciler.drain()  # resyncs (a new database) before the products exist: their
    # features are listed with the summary of the customer's second product
    basic, extra = featured_price(emulator, 2, "basic"), featured_price(emulator, 1, "extra")
    reconciler.drain()  # the catalog's events: the prices are for sale
    basic_product, extra_product = (product_of(emulator, price) for price in (basic, extra))
    first = subscribe(reconciler, emulator, basic, 970)
    reconciler.drain()
    second_subscription(emulator, reconciler, extra)
    reconciler.drain()
    with state_of(no_grace, engine) as api:
        assert state(api, 970) == ("active", ["basic-000", "basic-001", "extra-000"])
        assert product_features(reconciler) == {
            basic_product: ["basic-000", "basic-001"],
            extra_product: ["extra-000"],
        }
        emulator.set_status(first, "past_due")  # Stripe still entitles it: features kept
        reconciler.drain()
        assert state(api, 970) == ("active", ["extra-000"])
        emulator.set_status(first, "active")  # paid: its features are back
        reconciler.drain()
        assert state(api, 970) == ("active", ["basic-000", "basic-001", "extra-000"])


def share_a_feature(emulator: Emulator, *prices: str) -> None:
    """One more feature, `shared`, attached to the products of these prices."""
    feature = emulator.sdk.v1.entitlements.features.create(
        params={"name": "shared", "lookup_key": "shared"}
    )
    for price in prices:
        product = product_of(emulator, price)
        emulator.sdk.v1.products.features.create(product, {"entitlement_feature": feature.id})


def forget_features_of(factory: sessionmaker[Session], product: str) -> None:
    """As if the product's features had never been listed; the documents recomputed."""
    with transaction(factory) as session:
        for table in (BillingProductFeature, BillingProductFeatureSync):
            session.execute(delete(table).where(table.stripe_product_id == product))
    outbox.mark_every_document_stale(factory)


def test_a_granting_subscriptions_product_never_listed_takes_nothing_off(
    reconciler: Reconciler, emulator: Emulator, no_grace: Settings, engine: Engine
) -> None:
    """Any feature may be that product's too: the entitlements are served as Stripe lists
    them, rather than a feature taken off that the active subscription gives."""
    add_user(reconciler.factory, 972, "nine-seventy-two")
    reconciler.drain()
    basic, extra = featured_price(emulator, 1, "basic"), featured_price(emulator, 1, "extra")
    share_a_feature(emulator, basic, extra)
    reconciler.drain()
    first = subscribe(reconciler, emulator, basic, 972)
    reconciler.drain()
    second_subscription(emulator, reconciler, extra)
    emulator.set_status(first, "past_due")
    reconciler.drain()
    with state_of(no_grace, engine) as api:
        assert state(api, 972) == ("active", ["extra-000", "shared"])
        forget_features_of(reconciler.factory, product_of(emulator, extra))
        assert state(api, 972) == ("active", ["basic-000", "extra-000", "shared"])


def test_a_blocked_subscription_alone_grants_no_feature(
    reconciler: Reconciler, emulator: Emulator, no_grace: Settings, engine: Engine
) -> None:
    price = featured_price(emulator, 2, "alone")
    add_user(reconciler.factory, 971, "nine-seventy-one")
    reconciler.drain()
    subscription = subscribe(reconciler, emulator, price, 971)
    reconciler.drain()
    emulator.set_status(subscription, "past_due")
    reconciler.drain()
    with state_of(no_grace, engine) as api:
        assert state(api, 971) == ("blocked", [])


def subscribed_twice(cycle: Scene, user: int, first: str, second: str) -> str:
    """The user subscribes to the price keyed `first` through the service, then to the price
    `second` in Stripe; the first's renewals will be declined. Returns the first."""
    cycle.add_user(user)
    body = {"github_user_id": user, "price": first}
    answer = cycle.api.post("/billing/subscriptions", json=body)
    assert answer.status_code == 200, answer.text
    checkout = answer.json()["checkout_session_url"]
    subscription = str(cycle.emulator.complete_checkout(checkout)["subscription"])
    cycle.reconciler.drain()
    second_subscription(cycle.emulator, cycle.reconciler, second, user)
    cycle.decline_renewals(subscription)
    return subscription


def declined_beside_active(cycle: Scene, users: list[int], first: str, second: str) -> int:
    """Each user is subscribed twice (`subscribed_twice`), and the month passes: the first
    subscriptions' renewals are declined (an hour later: in grace), the second's paid. Returns
    the (newest) renewal's second."""
    firsts = [subscribed_twice(cycle, user, first, second) for user in users]
    cycle.reconciler.drain()
    period_end = cycle.emulator.past_period_end(firsts[-1], HOUR)
    cycle.reconciler.drain()
    for user in users:
        view = cycle.view(user)
        assert sorted(s["status"] for s in view["subscriptions"]) == ["active", "past_due"]
    return period_end


def version_is(version: int) -> Callable[[dict[str, Any]], bool]:
    return lambda document: bool(document["version"] == version)


def stored_grace_end(cycle: Scene, user: int) -> datetime | None:
    """When the user's stored document is to be recomputed (`billing_states.grace_ends_at`)."""
    statement = select(BillingState.grace_ends_at).join(User).where(User.github_user_id == user)
    with cycle.reconciler.factory() as session:
        return session.scalar(statement)


def on_emulator_clock(emulator: Emulator) -> Callable[[], datetime]:
    return lambda: datetime.fromtimestamp(emulator.now(), UTC)


def test_a_grace_that_ends_by_time_alone_beside_an_active_subscription_takes_its_features_off(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Access stays `active` (the other subscription) and no row changes when the declined
    subscription's grace ends: the read recomputes the document, and the sender's sweep
    notifies it, all the same."""
    featured_price(emulator, 2, "basic")
    extra = featured_price(emulator, 1, "extra")
    everything = ["basic-000", "basic-001", "extra-000"]
    clock = on_emulator_clock(emulator)
    with scene(stripe_settings, engine, emulator, clock) as cycle:  # a grace of one day
        cycle.reconciler.drain()  # a new database: resynced, the prices are for sale
        read, swept = 973, 974
        period_end = declined_beside_active(cycle, [read, swept], "basic-plan", extra)
        graced: dict[int, dict[str, Any]] = {}
        for user in (read, swept):  # in grace: its features are still served
            graced[user] = cycle.state(user)
            assert (graced[user]["access"]["state"], graced[user]["features"]) == (
                "active",
                everything,
            )
            assert cycle.notified(user, version_is(graced[user]["version"])) == graced[user]

        # The grace day passes; nothing happens at Stripe (its first retry is 3 days later).
        cycle.stop_sender()
        emulator.advance_to(period_end + DAY + 2 * HOUR)
        served = cycle.state(read)  # recomputed on read: stored and notified
        assert (served["access"]["state"], served["features"]) == ("active", ["extra-000"])
        assert served["version"] == graced[read]["version"] + 1
        cycle.start_sender()  # the sweep finds the other user's ended grace
        notified = cycle.notified(swept, lambda d: d["features"] == ["extra-000"])
        assert notified["access"]["state"] == "active"
        assert notified["version"] == graced[swept]["version"] + 1
        assert cycle.state(swept) == notified
        assert cycle.notified(read, version_is(served["version"])) == served
        assert stored_grace_end(cycle, read) is stored_grace_end(cycle, swept) is None


def test_a_grace_that_ends_changing_nothing_is_recomputed_once_without_a_version(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Featureless plans: the document is the same once the grace has ended, and no version
    is written; the stored grace end moves on (else the sweep would find it again and again,
    and each read would recompute it)."""
    for key in ("plain-one", "plain-two"):
        recurring_price(emulator, emulator.sdk.v1.products.create({"name": key}).id, 700, key)
    with scene(stripe_settings, engine, emulator, on_emulator_clock(emulator)) as cycle:
        cycle.reconciler.drain()
        second = str(emulator.sdk.v1.prices.list({"lookup_keys": ["plain-two"]}).data[0].id)
        period_end = declined_beside_active(cycle, [975], "plain-one", second)
        before = cycle.state(975)
        assert stored_grace_end(cycle, 975) is not None
        emulator.advance_to(period_end + DAY + 2 * HOUR)
        deadline = time.monotonic() + 30
        while stored_grace_end(cycle, 975) is not None:  # the sweep's recomputation
            assert time.monotonic() < deadline, "the grace end was never moved on"
            time.sleep(0.05)
        assert cycle.state(975) == before
        assert max(d["version"] for d in cycle.hook.documents(975)) == before["version"]
