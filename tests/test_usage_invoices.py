"""Usage reaches the renewal invoice, end to end: records posted to the service, sent to Stripe
as meter events by the sender, billed in arrears on the renewal invoice (emulator), mirrored
into `billing_invoices`, and the period's total restarts at 0."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.sender import UsageSender
from collab_billing.config import Settings
from collab_billing.db.models import BillingCustomer, BillingInvoice
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import Emulator
from tests.test_billing_api import add_user, serve, subscribe
from tests.test_usage_api import (  # noqa: F401  (the fixture)
    meter,
    metered_price,
    record,
    serve_selling_usage,
    usage_of,
    usage_price_of,
)
from tests.test_usage_sender import drain


@pytest.fixture
def api(stripe_settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    yield from serve_selling_usage(stripe_settings, engine)


def add_metered_item(emulator: Emulator, sub_id: str, price_id: str) -> None:
    """The usage price joins the plan on the subscription (the service's checkout sells the
    plan; an operator or the host adds the metered price, as in Stripe's dashboard)."""
    [plan_item] = emulator.sdk.v1.subscriptions.retrieve(sub_id)["items"].data
    emulator.sdk.v1.subscriptions.update(
        sub_id, {"items": [{"id": plan_item.id}, {"price": price_id}]}
    )


def customer_with_card(
    api: httpx.Client, emulator: Emulator, factory: sessionmaker[Session]
) -> tuple[str, str]:
    """User 7's Stripe customer (made by a Checkout) and a card of it: their ids."""
    add_user(api, 7)
    checkout = api.post("/billing/subscriptions", json={"github_user_id": 7})
    assert checkout.status_code == 200, checkout.text
    with factory() as session:
        customer = session.scalars(select(BillingCustomer.stripe_customer_id)).one()
    card = emulator.sdk.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    return customer, card.id


def subscribe_with_usage(
    api: httpx.Client, emulator: Emulator, reconciler: Reconciler, meter_id: str
) -> str:
    """User 7 subscribes to the plan through Checkout, which sells the meter's price beside it
    (`BILLING_USAGE_PRICES`); the subscription's id."""
    add_user(api, 7)
    sub_id = subscribe(api, emulator, reconciler, 7)
    items = emulator.sdk.v1.subscriptions.retrieve(sub_id)["items"].data
    assert [item.price.id for item in items][1:] == [usage_price_of(reconciler.factory, meter_id)]
    return sub_id


def invoices_of(factory: sessionmaker[Session], sub_id: str) -> dict[str, BillingInvoice]:
    with factory() as session:
        rows = session.scalars(
            select(BillingInvoice).where(BillingInvoice.stripe_subscription_id == sub_id)
        ).all()
    return {row.billing_reason or "": row for row in rows}


def test_renewal_invoice_bills_the_usage_sent_and_the_period_restarts(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    sub_id = subscribe_with_usage(api, emulator, reconciler, meter)
    batch = [record(7, "a", 150), record(7, "b", 100.5), record(7, "c", 0.5)]
    assert api.post("/billing/usage", json={"events": batch}).status_code == 202
    fast = stripe_settings.model_copy(update={"billing_usage_requests_per_second": 100.0})
    drain(UsageSender(fast, engine))
    period = usage_of(api, 7)
    assert (period["meters"][0]["total"], period["estimated_cost_cents"]) == ("251", 126)

    # The renewal, and an hour later its draft invoice finalized and paid.
    emulator.past_period_end(sub_id, 3600)
    reconciler.drain()

    invoices = invoices_of(session_factory, sub_id)
    first, renewal = invoices["subscription_create"], invoices["subscription_cycle"]
    # 251 tokens x 0.5 cent = 125.5, rounded half up: the service's estimate, billed.
    assert renewal.amount_due == first.amount_due + 126
    assert (renewal.status, renewal.amount_paid) == ("paid", renewal.amount_due)
    lines = emulator.sdk.v1.invoices.retrieve(renewal.stripe_invoice_id).lines.data
    assert sorted((line.amount, line.quantity) for line in lines) == sorted(
        [(first.amount_due, 1), (126, 251)]
    )
    renewed = usage_of(api, 7)
    assert renewed["period_start"] == period["period_end"]
    assert (renewed["meters"][0]["total"], renewed["estimated_cost_cents"]) == ("0", 0)


def test_after_the_subscription_ends_its_billed_usage_no_longer_counts(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
) -> None:
    """Canceled with its usage invoiced at once, the estimate fell back to the calendar month
    and priced the billed usage again: the user was told, and notified, they were over their
    cap while owing nothing."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    sub_id = subscribe_with_usage(api, emulator, reconciler, meter)
    api.put("/billing/preferences", json={"github_user_id": 7, "max_monthly_spend_cents": 100})
    assert api.post("/billing/usage", json=record(7, "a", 150)).status_code == 202
    drain(UsageSender(stripe_settings, engine))
    assert usage_of(api, 7)["estimated_cost_cents"] == 75

    time.sleep(1)  # ended in a later second than the record's
    ended = emulator.sdk.v1.subscriptions.cancel(sub_id, {"invoice_now": True})
    reconciler.drain()
    [final] = [i for i in emulator.sdk.v1.invoices.list({"subscription": sub_id}).data
               if i.billing_reason != "subscription_create"]  # fmt: skip
    assert [(line.amount, line.quantity) for line in final.lines.data] == [(75, 150)]  # billed
    after = usage_of(api, 7)
    assert after["period_source"] == "calendar_month"
    assert (
        after["period_start"] == datetime.fromtimestamp(ended.ended_at, UTC).isoformat()[:19] + "Z"
    )
    assert (after["meters"][0]["total"], after["estimated_cost_cents"]) == ("0", 0)
    # Usage after the end is counted, and billed by no subscription: it costs nothing.
    answer = api.post("/billing/usage", json=record(7, "b", 300, timestamp=ended.ended_at + 1))
    assert answer.json()["over_spend_cap"] is False
    [meter_usage] = usage_of(api, 7)["meters"]
    assert (meter_usage["total"], meter_usage["stripe_price_id"]) == ("300", None)
    assert meter_usage["estimated_cost_cents"] == 0


def test_a_metered_plan_is_sold_without_a_quantity(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """Stripe refuses a quantity on a metered price in Checkout: the service sends none; and
    the usage price sold beside every plan is not added to itself."""
    add_user(api, 7)
    answer = api.post(
        "/billing/subscriptions", json={"github_user_id": 7, "price": "tokens-monthly"}
    )
    assert answer.status_code == 200, answer.text
    done = emulator.complete_checkout(answer.json()["checkout_session_url"])
    [item] = emulator.sdk.v1.subscriptions.retrieve(done["subscription"])["items"].data
    assert "quantity" not in item and item.price.lookup_key == "tokens-monthly"
    first = emulator.sdk.v1.invoices.list(params={"subscription": done["subscription"]}).data
    assert [invoice.amount_due for invoice in first] == [0]  # usage is billed in arrears


def test_usage_is_estimated_at_the_price_on_the_subscription(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """A subscription of a metered price and a plan, in that order: its plan is the plan, and
    its usage is estimated at its own metered price (what the invoice bills), not at the
    meter's newest price (another plan's, 100 times dearer)."""
    own = usage_price_of(session_factory, meter)
    metered_price(emulator, meter, "50")
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    customer, card = customer_with_card(api, emulator, session_factory)
    plan = stripe_settings.stripe_price_id
    items = [{"price": own}, {"price": plan}]
    sub = emulator.sdk.v1.subscriptions.create(
        params={"customer": customer, "items": items, "default_payment_method": card}
    )
    reconciler.drain()
    [row] = api.get("/billing/subscriptions", params={"github_user_id": 7}).json()["subscriptions"]
    assert (row["price_id"], row["quantity"]) == (plan, 1)

    batch = [record(7, "a", 150), record(7, "b", 100.5), record(7, "c", 0.5)]
    assert api.post("/billing/usage", json={"events": batch}).status_code == 202
    drain(
        UsageSender(
            stripe_settings.model_copy(update={"billing_usage_requests_per_second": 100.0}), engine
        )
    )
    [usage] = usage_of(api, 7)["meters"]
    assert (usage["stripe_price_id"], usage["estimated_cost_cents"]) == (own, 126)

    emulator.past_period_end(sub.id, 3600)  # the renewal, its invoice finalized an hour on
    reconciler.drain()
    renewal = invoices_of(session_factory, sub.id)["subscription_cycle"]
    lines = emulator.sdk.v1.invoices.retrieve(renewal.stripe_invoice_id).lines.data
    assert (126, 251) in [(line.amount, line.quantity) for line in lines]


def test_usage_is_estimated_on_the_subscription_that_bills_it_not_the_newest(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """A usage subscription, then a plan on its own subscription: the estimate took the
    newest one's period (restarting at 0) and its price (none), while Stripe bills the usage
    on the first."""
    usage_price = usage_price_of(session_factory, meter)
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    customer, card = customer_with_card(api, emulator, session_factory)

    def subscribe_to(price: str) -> None:
        items = [{"price": price}]
        emulator.sdk.v1.subscriptions.create(
            params={"customer": customer, "items": items, "default_payment_method": card}
        )

    subscribe_to(usage_price)
    reconciler.drain()
    assert api.post("/billing/usage", json=record(7, "a", 150)).status_code == 202
    before = usage_of(api, 7)
    assert (before["meters"][0]["total"], before["estimated_cost_cents"]) == ("150", 75)
    emulator.control("POST", "clock/advance", {"seconds": 60})
    subscribe_to(stripe_settings.stripe_price_id or "")
    reconciler.drain()
    assert (
        len(api.get("/billing/subscriptions", params={"github_user_id": 7}).json()["subscriptions"])
        == 2
    )
    assert usage_of(api, 7) == before


def plan_price(emulator: Emulator, lookup_key: str, amount: int, interval: str) -> str:
    product = emulator.sdk.v1.products.create(params={"name": lookup_key})
    price = emulator.sdk.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": amount,
            "currency": "usd",
            "recurring": {"interval": interval},  # type: ignore[typeddict-item]
            "lookup_key": lookup_key,
        }
    )
    return str(price.id)


def subscribe_yearly(api: httpx.Client, emulator: Emulator, reconciler: Reconciler) -> str:
    """User 7 on a yearly plan, sold alone (no yearly usage price): the subscription's id."""
    plan_price(emulator, "pro-yearly", 20000, "year")
    resync(reconciler.factory, reconciler.gateway)
    add_user(api, 7)
    answer = api.post("/billing/subscriptions", json={"github_user_id": 7, "price": "pro-yearly"})
    sub_id = str(emulator.complete_checkout(answer.json()["checkout_session_url"])["subscription"])
    reconciler.drain()
    return sub_id


def test_checkout_sells_the_usage_price_beside_plans_of_its_interval(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    """A monthly plan gets the monthly usage price as a second item; a yearly plan does not
    (Stripe bills a subscription's items on one interval), and says so: none is listed."""
    plan_price(emulator, "pro-yearly", 20000, "year")
    resync(session_factory, StripeGateway(stripe_settings))
    usage_price = usage_price_of(session_factory, meter)
    for user, price, usage_prices in ((7, None, [usage_price]), (8, "pro-yearly", [])):
        add_user(api, user)
        body = {"github_user_id": user, **({"price": price} if price else {})}
        answer = api.post("/billing/subscriptions", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage_price_ids"] == usage_prices
        done = emulator.complete_checkout(answer.json()["checkout_session_url"])
        items = emulator.sdk.v1.subscriptions.retrieve(done["subscription"])["items"].data
        assert [item.price.id for item in items][1:] == usage_prices


def test_a_usage_price_setting_that_names_no_metered_price_is_a_503_naming_it(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    misnamed = stripe_settings.model_copy(update={"billing_usage_prices": "tokens-montly"})
    for api in serve(misnamed, engine):
        add_user(api, 7)
        answer = api.post("/billing/subscriptions", json={"github_user_id": 7})
        assert answer.status_code == 503
        assert "BILLING_USAGE_PRICES names 'tokens-montly'" in answer.json()["detail"]
    assert emulator.sdk.v1.checkout.sessions.list().data == []  # nothing sold


def test_a_plan_beside_usage_is_changed_through_the_api_within_its_interval(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """Stripe's portal cannot update a subscription of several items: the plan's item is
    changed through the API (the usage price stays), and the answer is the subscription."""
    team = plan_price(emulator, "team-monthly", 900, "month")
    plan_price(emulator, "pro-yearly", 20000, "year")
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    sub_id = subscribe_with_usage(api, emulator, reconciler, meter)

    change = {"github_user_id": 7, "intent": "change_plan", "price": "team-monthly", "quantity": 3}
    answer = api.post("/billing/subscriptions/manage", json=change)
    assert answer.status_code == 200, answer.text
    assert answer.json()["billing_portal_session_url"] is None
    changed = answer.json()["subscription"]
    assert (changed["plan"]["lookup_key"], changed["quantity"]) == ("team-monthly", 3)
    items = emulator.sdk.v1.subscriptions.retrieve(sub_id)["items"].data
    usage_price = usage_price_of(session_factory, meter)
    assert [(item.price.id, item.to_dict().get("quantity")) for item in items] == [
        (team, 3),
        (usage_price, None),
    ]

    yearly = {**change, "price": "pro-yearly", "quantity": None}
    refused = api.post("/billing/subscriptions/manage", json=yearly)
    assert refused.status_code == 409
    assert "bills usage beside its plan" in refused.json()["detail"]


def test_a_plan_change_to_a_plan_sold_with_usage_adds_its_usage_price(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """A yearly plan (sold alone: no yearly usage price) changed to the monthly plan gets the
    monthly usage price, as its Checkout would: the portal's one-item flow dropped it, and
    the usage was never billed."""
    sub_id = subscribe_yearly(
        api, emulator, Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    )

    monthly = stripe_settings.stripe_price_id or ""
    change = {"github_user_id": 7, "intent": "change_plan", "price": monthly}
    changed = api.post("/billing/subscriptions/manage", json=change)
    assert changed.status_code == 200, changed.text
    assert changed.json()["subscription"]["price_id"] == monthly
    items = emulator.sdk.v1.subscriptions.retrieve(sub_id)["items"].data
    usage_price = usage_price_of(session_factory, meter)
    assert [item.price.id for item in items] == [monthly, usage_price]
    assert api.post("/billing/usage", json=record(7, "a", 150)).status_code == 202
    assert usage_of(api, 7)["estimated_cost_cents"] == 75


def test_two_usage_prices_of_one_meter_for_a_plan_are_a_503_naming_them(
    stripe_settings: Settings,
    engine: Engine,
    emulator: Emulator,
    meter: str,  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    """Both would go on the subscription, and Stripe would bill the meter's usage twice."""
    metered_price(emulator, meter, "0.7", lookup_key="tokens-b")
    resync(session_factory, StripeGateway(stripe_settings))
    twice = stripe_settings.model_copy(update={"billing_usage_prices": "tokens-monthly,tokens-b"})
    for api in serve(twice, engine):
        add_user(api, 7)
        answer = api.post("/billing/subscriptions", json={"github_user_id": 7})
        assert answer.status_code == 503
        assert f"two prices of meter {meter}" in answer.json()["detail"]


def test_a_double_clicked_plan_change_adds_the_usage_price_once(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """Both requests read the items, then each added the usage price: Stripe billed the usage
    twice (or, refusing the second item of one price, the second answered 502). One change is
    made; the other is a 409."""
    sub_id = subscribe_yearly(
        api, emulator, Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    )

    change = {
        "github_user_id": 7,
        "intent": "change_plan",
        "price": stripe_settings.stripe_price_id,
    }
    start = threading.Barrier(2)

    def click() -> int:
        start.wait()
        return api.post("/billing/subscriptions/manage", json=change).status_code

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(lambda _: click(), range(2)))
    assert statuses == [200, 409]
    items = emulator.sdk.v1.subscriptions.retrieve(sub_id)["items"].data
    assert [item.price.id for item in items] == [
        stripe_settings.stripe_price_id,
        usage_price_of(session_factory, meter),
    ]


def test_a_metered_item_added_in_stripe_bills_the_usage_after_it_and_passes_a_cap(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """Usage on a plan that bills none costs nothing. The meter's price added to the
    subscription in Stripe bills the usage from then on, as Stripe does (the usage before it
    was counted, and passed the cap on money never billed); the later usage passes the cap,
    and the state document says so. The renewal's invoice bills what was estimated."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    add_user(api, 1)
    sub = emulator.subscribe_in_stripe(1, stripe_settings.stripe_price_id or "")
    reconciler.drain()
    cap = {"github_user_id": 1, "max_monthly_spend_cents": 50}
    assert api.put("/billing/preferences", json=cap).status_code == 200
    before = record(1, "a", 150, timestamp=emulator.now())
    assert api.post("/billing/usage", json=before).json()["over_spend_cap"] is False
    assert usage_of(api, 1)["estimated_cost_cents"] == 0

    emulator.advance_to(emulator.now() + 60)
    [item] = sub["items"].data
    usage_item = {"price": usage_price_of(session_factory, meter)}
    emulator.sdk.v1.subscriptions.update(sub.id, {"items": [{"id": item.id}, usage_item]})
    reconciler.drain()
    assert usage_of(api, 1)["estimated_cost_cents"] == 0  # nothing billed yet
    after = record(1, "b", 120, timestamp=emulator.now())
    assert api.post("/billing/usage", json=after).json()["over_spend_cap"] is True
    shown = usage_of(api, 1)
    assert (shown["meters"][0]["total"], shown["estimated_cost_cents"]) == ("270", 60)
    state = api.get("/billing/state", params={"github_user_id": 1}).json()
    assert state["usage"]["over_spend_cap"] is True
    drain(UsageSender(stripe_settings, engine))
    emulator.past_period_end(sub.id, 2 * 3600)
    renewal = emulator.sdk.v1.invoices.list({"subscription": sub.id, "limit": 1}).data[0]
    billed = [line.amount for line in renewal.lines.data if line.pricing]
    assert 60 in billed
