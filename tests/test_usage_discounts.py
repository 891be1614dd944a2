"""A coupon on the subscription, through the service: Stripe takes a subscription's discount
off every invoice it makes while the discount lasts, its metered usage lines too, so the usage
estimate, and `over_spend_cap`, count what Stripe will bill after it (emulator, sender,
reconciler, the renewal invoice)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.billing.sender import UsageSender
from collab_billing.config import Settings
from collab_billing.db.models import BillingDiscount
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.servers import ServerThread
from tests.stripe_helpers import EMULATOR_KEY, Emulator
from tests.test_billing_api import AUTH, subscribe
from tests.test_billing_cycle import emulator_now
from tests.test_usage_api import (  # noqa: F401  (the fixture)
    USAGE_PRICE,
    meter,
    record,
    serve_selling_usage,
    usage_of,
    usage_price_of,
)
from tests.test_usage_invoices import invoices_of, subscribe_with_usage
from tests.test_usage_sender import drain


@pytest.fixture
def api(stripe_settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    yield from serve_selling_usage(stripe_settings, engine)


def _usage_line(emulator: Emulator, invoice_id: str, price_id: str) -> tuple[int, int]:
    """The invoice's usage line: its amount and what its discounts take off it."""
    for line in emulator.sdk.v1.invoices.retrieve(invoice_id).lines.data:
        details = line.pricing.price_details if line.pricing else None
        if details is not None and details.price == price_id:
            return line.amount, sum(d.amount for d in line.discount_amounts or [])
    raise AssertionError(f"no line of {price_id}")


def spend_past_a_cap(
    api: httpx.Client, settings: Settings, engine: Engine, estimate: int, over_cap: bool
) -> None:
    """User 7, capped at $1, uses $1.50 at list price: the estimate and the cap as answered
    by ingest, `GET /billing/usage` and the state document, once the records are sent."""
    cap = {"github_user_id": 7, "max_monthly_spend_cents": 100}
    assert api.put("/billing/preferences", json=cap).status_code == 200
    answer = api.post("/billing/usage", json=record(7, "a", 300))  # 300 x 0.5 cent: $1.50
    assert answer.status_code == 202
    assert answer.json()["over_spend_cap"] is over_cap
    drain(UsageSender(settings, engine))
    assert usage_of(api, 7)["estimated_cost_cents"] == estimate
    state = api.get("/billing/state", params={"github_user_id": 7}).json()
    assert state["usage"] == {"max_monthly_spend_cents": 100, "over_spend_cap": over_cap}


@pytest.mark.parametrize(
    ("coupon", "estimate", "over_cap"),
    [
        ({"percent_off": 50, "duration": "forever"}, 75, False),
        ({"percent_off": 100, "duration": "forever"}, 0, False),
        ({"percent_off": 100, "duration": "once"}, 0, False),  # the next invoice: the renewal
        ({"amount_off": 100, "currency": "usd", "duration": "forever"}, 150, True),  # see docs
    ],
)
def test_the_estimate_and_the_cap_count_what_stripe_bills_after_the_discount(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    coupon: dict[str, object],
    estimate: int,
    over_cap: bool,
) -> None:
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    sub_id = subscribe_with_usage(api, emulator, reconciler, meter)
    made = emulator.sdk.v1.coupons.create(params=coupon)  # type: ignore[arg-type]
    emulator.sdk.v1.subscriptions.update(sub_id, {"discounts": [{"coupon": made.id}]})
    reconciler.drain()
    spend_past_a_cap(api, stripe_settings, engine, estimate, over_cap)

    # What Stripe bills: the renewal's usage line, less its discount, is the estimate.
    emulator.past_period_end(sub_id, 3600)
    reconciler.drain()
    renewal = invoices_of(session_factory, sub_id)["subscription_cycle"]
    price_id = usage_price_of(session_factory, meter)
    amount, off = _usage_line(emulator, renewal.stripe_invoice_id, price_id)
    assert amount == 150
    if "percent_off" in coupon:
        assert amount - off == estimate
    else:  # Stripe spreads an amount off over the plan's line too: the estimate stays above
        assert 0 < amount - off < estimate


def give_its_customer_a_free_coupon(emulator: Emulator, sub_id: str) -> str:
    """A 100% coupon applied to the subscription's customer (the Dashboard's); its id."""
    sdk = emulator.sdk.v1
    customer = str(sdk.subscriptions.retrieve(sub_id).customer)
    free = sdk.coupons.create(params={"percent_off": 100, "duration": "forever"})
    emulator.control("POST", f"customers/{customer}/discount", {"coupon": free.id})
    return customer


@pytest.mark.parametrize(
    ("own_percent_off", "removed", "estimate", "over_cap"),
    [
        (None, False, 0, False),  # the customer's 100% off: nothing billed
        (None, True, 0, False),  # ... until it is removed from the customer
        (50, False, 75, False),  # the subscription's own discount: the customer's not
    ],
)
def test_a_customers_own_discount_counts_for_a_subscription_without_one(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    own_percent_off: int | None,
    removed: bool,
    estimate: int,
    over_cap: bool,
) -> None:
    """A coupon applied to the customer (`customer.discount` with no `subscription`, applied
    in the Dashboard) discounts the invoices of its subscriptions that have none of their
    own; before, the estimate ignored it and reported money never billed over the cap."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    sub_id = subscribe_with_usage(api, emulator, reconciler, meter)
    sdk = emulator.sdk.v1
    customer = give_its_customer_a_free_coupon(emulator, sub_id)
    if own_percent_off is not None:
        own = sdk.coupons.create(params={"percent_off": own_percent_off, "duration": "forever"})
        sdk.subscriptions.update(sub_id, {"discounts": [{"coupon": own.id}]})
    reconciler.drain()
    spend_past_a_cap(api, stripe_settings, engine, estimate, over_cap)
    if removed:  # removed from the customer: the usage is billed, the state says so
        assert sdk.customers.delete_discount(customer).deleted is True
        reconciler.drain()
        estimate = 150
        assert usage_of(api, 7)["estimated_cost_cents"] == estimate
        state = api.get("/billing/state", params={"github_user_id": 7}).json()
        assert state["usage"]["over_spend_cap"] is True

    emulator.past_period_end(sub_id, 3600)
    reconciler.drain()
    renewal = invoices_of(session_factory, sub_id)["subscription_cycle"]
    price_id = usage_price_of(session_factory, meter)
    amount, off = _usage_line(emulator, renewal.stripe_invoice_id, price_id)
    assert (amount, amount - off) == (150, estimate)


@pytest.fixture
def api_on_emulator_clock(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> Iterator[httpx.Client]:
    """The service judging time (usage periods and timestamps) by the emulator's clock, as
    `collab-billing dev` does, so that the emulator's clock can move on by a month."""
    settings = stripe_settings.model_copy(
        update={"billing_usage_prices": USAGE_PRICE, "reconcile_enabled": False}
    )
    app = create_app(
        settings, engine, clock=lambda: datetime.fromtimestamp(emulator_now(emulator), UTC)
    )
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client,
    ):
        yield client


@pytest.mark.parametrize("whose", ["subscription", "customer"])
def test_a_discount_removed_while_no_event_was_read_is_not_taken_off_after_a_resync(
    api_on_emulator_clock: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    database_url: str,
    whose: str,
) -> None:
    """A 100%-off coupon (the subscription's, or its customer's own) removed in Stripe while
    the service read no event, for longer than Stripe keeps events: its
    `customer.discount.deleted` is gone. `collab-billing resync` finds the discount shown by
    nothing any more and marks it deleted, so the usage is estimated, and capped, at what
    Stripe bills (before: the resync left it live, and the usage was still free, never over
    the cap)."""
    api = api_on_emulator_clock
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    sub_id = subscribe_with_usage(api, emulator, reconciler, meter)
    sdk = emulator.sdk.v1
    customer = str(sdk.subscriptions.retrieve(sub_id).customer)
    free = sdk.coupons.create(params={"percent_off": 100, "duration": "forever"})
    if whose == "subscription":
        sdk.subscriptions.update(sub_id, {"discounts": [{"coupon": free.id}]})
    else:
        emulator.control("POST", f"customers/{customer}/discount", {"coupon": free.id})
    reconciler.drain()
    cap = {"github_user_id": 7, "max_monthly_spend_cents": 100}
    assert api.put("/billing/preferences", json=cap).status_code == 200
    free_usage = api.post("/billing/usage", json=record(7, "a", 300))  # $1.50 at list price
    assert free_usage.json()["over_spend_cap"] is False
    assert usage_of(api, 7)["estimated_cost_cents"] == 0

    # The service reads nothing while the discount is removed and a month goes by (the
    # subscription renews): Stripe's events of the removal are past its 30 days.
    if whose == "subscription":
        sdk.subscriptions.delete_discount(sub_id)
    else:
        sdk.customers.delete_discount(customer)
    emulator.past_period_end(sub_id, 3 * 86_400)
    assert "customer.discount.deleted" not in {e["type"] for e in emulator.all_events()}

    env = {**os.environ, "DATABASE_URL": database_url, "STRIPE_API_KEY": EMULATOR_KEY,
           "STRIPE_API_BASE": emulator.url, "STRIPE_REQUESTS_PER_SECOND": "1000"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "resync"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    # This period's usage is billed in full: past the cap.
    billed = api.post("/billing/usage", json=record(7, "b", 300))
    assert billed.json()["over_spend_cap"] is True
    assert usage_of(api, 7)["estimated_cost_cents"] == 150
    state = api.get("/billing/state", params={"github_user_id": 7}).json()
    assert state["usage"] == {"max_monthly_spend_cents": 100, "over_spend_cap": True}
    with session_factory() as session:
        [deleted] = session.scalars(select(BillingDiscount.deleted)).all()
    assert deleted is True
    assert "0 discounts seen, 0 written, 1 deleted" in result.stdout, result.stdout


def test_a_deleted_customers_own_discount_does_not_count_for_the_users_next_customer(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
) -> None:
    """The user's customer, with a 100% coupon of its own, is deleted on Stripe; the user's
    next Checkout makes a new customer, which Stripe bills in full: the old customer's
    discount (gone with it, though Stripe sends no event for it) takes nothing off."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    sub_id = subscribe_with_usage(api, emulator, reconciler, meter)
    sdk = emulator.sdk.v1
    deleted = give_its_customer_a_free_coupon(emulator, sub_id)
    reconciler.drain()
    sdk.customers.delete(deleted)  # and its subscription, canceled at once
    reconciler.drain()
    new_sub_id = subscribe(api, emulator, reconciler, 7)
    assert str(sdk.subscriptions.retrieve(new_sub_id).customer) != deleted
    spend_past_a_cap(api, stripe_settings, engine, estimate=150, over_cap=True)
