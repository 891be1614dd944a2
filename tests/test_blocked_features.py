"""Features follow access per subscription: a subscription that grants no access (past due
beyond its grace) grants none of its product's features, even beside one that does.

Stripe's active entitlements list the features of every subscription Stripe entitles
(active, trialing, past due) whatever our access policy says; the state document serves only
those of the products of subscriptions that grant access (`state.access`). Over real HTTP:
the emulator driven by the SDK, the reconciler, the API, a real database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from collab_billing.config import Settings
from collab_billing.db.models import BillingCustomer, BillingProductFeature
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import Emulator
from tests.test_billing_api import serve
from tests.test_entitlements import featured_price, subscribe
from tests.test_reconcile_flow import add_user


@pytest.fixture
def no_grace(stripe_settings: Settings) -> Settings:
    """A past due subscription is blocked at once (no grace): no clock to move."""
    return stripe_settings.model_copy(update={"billing_past_due_grace_days": 0})


@pytest.fixture
def reconciler(no_grace: Settings, engine: Engine) -> Reconciler:
    return Reconciler(no_grace, engine, StripeGateway(no_grace))


def second_subscription(emulator: Emulator, reconciler: Reconciler, price: str) -> str:
    """Another subscription of the user's one customer, made in Stripe with a card."""
    with reconciler.factory() as session:
        [customer] = session.scalars(select(BillingCustomer.stripe_customer_id))
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
