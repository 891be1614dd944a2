"""A plan in another currency than the user's subscriptions, end to end over real HTTP: Stripe
bills a customer in one currency and refuses a Checkout in another while any subscription of it
has not ended (the emulator does as Stripe: src/stripe_emulator/customer_currency.py). The user
gets a 409 that names the subscription, both currencies and the way out, and nothing changes;
once the subscription has ended, the plan is checked out and the customer's currency follows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, select

from collab_billing.config import Settings
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.ops_helpers import Service, running_service
from tests.stripe_helpers import Emulator
from tests.test_plans_api import buy, checkout, complete, manage, subscriptions

PLAN, EURO_PLAN = "pro-monthly", "pro-monthly-eur"


@pytest.fixture
def reconciler(stripe_settings: Settings, engine: Engine) -> Reconciler:
    return Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))


@pytest.fixture
def service(stripe_settings: Settings, engine: Engine) -> Iterator[Service]:
    with running_service(stripe_settings, engine, billing_trial_days=7) as running:
        yield running


@pytest.fixture
def catalog(emulator: Emulator, reconciler: Reconciler) -> dict[str, str]:
    """One product's monthly plan in dollars and in euros, mirrored: lookup key -> price id."""
    product = emulator.sdk.v1.products.create(params={"name": "Collab Pro"}).id
    prices = {}
    for key, currency, amount in ((PLAN, "usd", 1000), (EURO_PLAN, "eur", 900)):
        params: Any = {"product": product, "unit_amount": amount, "currency": currency,
                       "recurring": {"interval": "month"}, "lookup_key": key}  # fmt: skip
        prices[key] = emulator.sdk.v1.prices.create(params=params).id
    reconciler.drain()
    return prices


def everything(engine: Engine) -> dict[str, list[Any]]:
    """Every row of every table but `reconciler_state`, where each Checkout asked notes the
    time for the reconciler (it polls faster for a while after one)."""
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as connection:
        return {
            name: sorted(map(repr, connection.execute(select(table)).all()))
            for name, table in tables.tables.items()
            if name != "reconciler_state"
        }


def customer_of(emulator: Emulator, subscription_id: str) -> str:
    return str(emulator.sdk.v1.subscriptions.retrieve(subscription_id).customer)


def checkout_sessions(emulator: Emulator, customer: str) -> list[str]:
    listed = emulator.sdk.v1.checkout.sessions.list(params={"customer": customer}).data
    return sorted(f"{session.id} {session.status}" for session in listed)


def refused(
    service: Service, engine: Engine, emulator: Emulator, customer: str, **body: Any
) -> str:
    """The 409 of a Checkout asked with `body`, which changed nothing here nor in Stripe."""
    before, sessions = everything(engine), checkout_sessions(emulator, customer)
    answer = service.api.post("/billing/subscriptions", json=body)
    assert answer.status_code == 409, answer.text
    assert everything(engine) == before
    assert checkout_sessions(emulator, customer) == sessions
    detail: str = answer.json()["detail"]
    assert "sk_test" not in answer.text
    return detail


def test_a_subscriber_in_dollars_asking_for_a_plan_in_euros_is_told_why_not(
    service: Service,
    emulator: Emulator,
    reconciler: Reconciler,
    catalog: dict[str, str],
    engine: Engine,
) -> None:
    sub = buy(service, emulator, reconciler, 1, price=PLAN)
    customer = customer_of(emulator, sub)
    detail = refused(service, engine, emulator, customer, github_user_id=1, price=EURO_PLAN)
    assert f"({sub}, active) billed in usd" in detail and f"{EURO_PLAN} is in eur" in detail
    assert "one currency" in detail and "intent `cancel`" in detail
    # A plan change says the same (as Stripe bills a subscription in one currency).
    changed = manage(service, 1, "change_plan", price=EURO_PLAN)
    assert changed.status_code == 409 and "cancel" in changed.json()["detail"]


def test_a_subscription_not_active_but_not_ended_holds_its_currency(
    service: Service,
    emulator: Emulator,
    reconciler: Reconciler,
    catalog: dict[str, str],
    engine: Engine,
) -> None:
    """A paused subscription gives no access, so a Checkout was started for the plan in
    euros, and Stripe refused it: a 502."""
    sub = buy(service, emulator, reconciler, 2, price=PLAN)
    emulator.control("POST", f"subscriptions/{sub}/status", {"status": "paused"})
    reconciler.drain()
    customer = customer_of(emulator, sub)
    detail = refused(
        service, engine, emulator, customer, github_user_id=2, price=EURO_PLAN, trial=True
    )
    assert f"({sub}, paused) billed in usd" in detail and f"{EURO_PLAN} is in eur" in detail
    assert "check out a plan in usd, or" in detail
    # In its own currency the plan is checked out as before.
    again = service.api.post("/billing/subscriptions", json={"github_user_id": 2, "price": PLAN})
    assert again.status_code == 200, again.text


def test_stripes_refusal_of_what_the_mirror_does_not_show_yet_is_a_409(
    service: Service,
    emulator: Emulator,
    reconciler: Reconciler,
    catalog: dict[str, str],
    engine: Engine,
) -> None:
    """A subscription made in Stripe a moment ago, not applied here yet: Stripe's 400 at the
    session's creation was a 502 naming only Stripe's error type."""
    first = buy(service, emulator, reconciler, 3, price=PLAN)
    customer = customer_of(emulator, first)
    emulator.sdk.v1.subscriptions.cancel(first)
    reconciler.drain()
    made = emulator.sdk.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": catalog[PLAN]}]}
    )
    emulator.control("POST", f"subscriptions/{made.id}/status", {"status": "paused"})
    detail = refused(service, engine, emulator, customer, github_user_id=3, price=EURO_PLAN)
    assert "one currency" in detail and "with currency usd" in detail


def test_once_the_subscription_has_ended_the_plan_in_euros_is_checked_out(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """The way out the 409s give works: cancel, then check out the plan in the other
    currency; Stripe's customer is then billed in it."""
    sub = buy(service, emulator, reconciler, 4, price=PLAN)
    customer = customer_of(emulator, sub)
    portal = manage(service, 4, "cancel")
    assert portal.status_code == 200, portal.text
    emulator.confirm_portal(portal.json()["billing_portal_session_url"], immediately=True)
    reconciler.drain()
    answer = checkout(service, 4, price=EURO_PLAN)
    new = complete(emulator, answer)
    reconciler.drain()
    assert emulator.sdk.v1.customers.retrieve(customer).currency == "eur"
    rows = {row["stripe_subscription_id"]: row for row in subscriptions(service, 4)}
    assert (rows[sub]["status"], rows[new]["status"]) == ("canceled", "active")
    assert (rows[new]["plan"]["lookup_key"], rows[new]["plan"]["currency"]) == (EURO_PLAN, "eur")
