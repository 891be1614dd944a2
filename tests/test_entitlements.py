"""Entitlements mirrored in full from Stripe's active entitlements (never from the ten in the
summary event), in the state document and its notifications."""

from __future__ import annotations

from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings
from collab_billing.db.models import BillingCustomer, BillingEntitlement, BillingNotification
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.ops_helpers import WHSEC_NEW, delivered_ok, relevant_events, running_service, wait_until
from tests.stripe_helpers import Emulator
from tests.test_billing_api import serve
from tests.test_reconcile_flow import add_user, checkout
from tests.test_usage_api import USAGE_PRICE, make_meter, metered_price, serve_selling_usage


@pytest.fixture
def reconciler(stripe_settings: Settings, engine: Engine) -> Reconciler:
    return Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))


def featured_price(emulator: Emulator, count: int, prefix: str) -> str:
    product = emulator.sdk.v1.products.create(params={"name": f"Plan with {count} features"})
    for n in range(count):
        feature = emulator.sdk.v1.entitlements.features.create(
            params={"name": f"{prefix} {n}", "lookup_key": f"{prefix}-{n:03d}"}
        )
        emulator.sdk.v1.products.features.create(
            product.id, params={"entitlement_feature": feature.id}
        )
    price = emulator.sdk.v1.prices.create(
        params={
            "product": product.id,
            "unit_amount": 1500,
            "currency": "usd",
            "recurring": {"interval": "month"},
            "lookup_key": f"{prefix}-plan",  # for sale: an active recurring price with a key
        }
    )
    return str(price.id)


def lookup_keys(factory: sessionmaker[Session]) -> list[str]:
    with factory() as session:
        return sorted(session.scalars(select(BillingEntitlement.lookup_key)))


def subscribe(reconciler: Reconciler, emulator: Emulator, price: str, github_user_id: int) -> str:
    url = checkout(reconciler, price, github_user_id)
    return str(emulator.complete_checkout(url)["subscription"])


@pytest.mark.parametrize("count", [25, 130])  # more than the event's 10; more than a page
def test_a_customer_gets_every_feature(
    reconciler: Reconciler,
    emulator: Emulator,
    stripe_settings: Settings,
    engine: Engine,
    count: int,
) -> None:
    price = featured_price(emulator, count, "feat")
    add_user(reconciler.factory, 900, "nine")
    reconciler.drain()
    subscription = subscribe(reconciler, emulator, price, 900)
    reconciler.drain()
    expected = [f"feat-{n:03d}" for n in range(count)]
    assert lookup_keys(reconciler.factory) == expected
    with contextmanager(serve)(stripe_settings, engine) as api:
        state = api.get("/billing/state", params={"github_user_id": 900}).json()
    assert state["features"] == expected and state["access"]["state"] == "active"

    emulator.sdk.v1.subscriptions.cancel(subscription)
    reconciler.drain()
    assert lookup_keys(reconciler.factory) == []
    with reconciler.factory() as session:
        last = session.scalars(
            select(BillingNotification.payload).order_by(BillingNotification.id.desc())
        ).first()
    assert last is not None and last["features"] == [] and last["access"]["state"] == "none"


def test_resync_lists_entitlements(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    price = featured_price(emulator, 12, "r")
    add_user(reconciler.factory, 901, "nine-o-one")
    reconciler.drain()
    subscribe(reconciler, emulator, price, 901)
    reconciler.drain()
    with reconciler.factory() as session, session.begin():
        session.execute(delete(BillingEntitlement))  # lost, as if never polled
    report = resync(reconciler.factory, reconciler.gateway)
    assert report.seen["entitlement"] == 1
    assert lookup_keys(reconciler.factory) == [f"r-{n:03d}" for n in range(12)]
    resync(reconciler.factory, reconciler.gateway, github_user_id=901)
    assert len(lookup_keys(reconciler.factory)) == 12


def test_a_product_losing_a_feature_is_mirrored(reconciler: Reconciler, emulator: Emulator) -> None:
    price = featured_price(emulator, 3, "x")
    add_user(reconciler.factory, 902, "nine-o-two")
    reconciler.drain()
    subscribe(reconciler, emulator, price, 902)
    reconciler.drain()
    product = str(emulator.sdk.v1.prices.retrieve(price).product)
    attached = emulator.sdk.v1.products.features.list(product).data
    emulator.sdk.v1.products.features.delete(product, attached[0].id)
    reconciler.drain()
    remaining = sorted(pf.entitlement_feature.lookup_key for pf in attached[1:])
    assert lookup_keys(reconciler.factory) == remaining


def test_state_route_is_admin_only(stripe_settings: Settings, engine: Engine) -> None:
    with contextmanager(serve)(stripe_settings, engine) as api:
        bare = httpx.get(api.base_url.join("/billing/state"), params={"github_user_id": 1})
    assert bare.status_code == 401


def test_a_sync_on_return_from_checkout_shows_the_plans_features_at_once(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    """The page a user returns to from Checkout syncs: the state it reads, and the one
    notification of the change, carry the features the plan gives, not only the access."""
    price = featured_price(emulator, 2, "sync")
    add_user(reconciler.factory, 901, "nine-o-one")
    reconciler.drain()
    subscribe(reconciler, emulator, price, 901)
    with contextmanager(serve)(stripe_settings, engine) as api:
        synced = api.post("/billing/subscriptions/sync", json={"github_user_id": 901})
        assert synced.status_code == 200, synced.text
        state = api.get("/billing/state", params={"github_user_id": 901}).json()
    assert state["access"]["state"] == "active"
    assert state["features"] == ["sync-000", "sync-001"]
    with reconciler.factory() as session:
        notified = session.scalars(select(BillingNotification.payload)).all()
    assert [n["features"] for n in notified if n["access"]["state"] == "active"] == [
        ["sync-000", "sync-001"]
    ]


def test_a_customer_made_anew_after_its_deletion_gets_its_features(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    """The user's Stripe customer deleted, the user buys again (a new customer for the same
    user): the new customer's features are mirrored, and the sync on return answers. Its
    entitlements failed on the old customer's row, for ever, and every sync was a 500."""
    price = featured_price(emulator, 2, "again")
    add_user(reconciler.factory, 950, "again")
    reconciler.drain()
    subscribe(reconciler, emulator, price, 950)
    reconciler.drain()
    assert lookup_keys(reconciler.factory) == ["again-000", "again-001"]
    with reconciler.factory() as session:
        [old] = session.scalars(select(BillingCustomer.stripe_customer_id))
    emulator.sdk.v1.customers.delete(old)
    reconciler.drain()
    assert lookup_keys(reconciler.factory) == []
    subscribe(reconciler, emulator, price, 950)  # a new customer
    reconciler.drain()
    assert lookup_keys(reconciler.factory) == ["again-000", "again-001"]
    assert reconciler.last_report is not None and not reconciler.last_report.stats.total("failed")
    with contextmanager(serve)(stripe_settings, engine) as api:
        synced = api.post("/billing/subscriptions/sync", json={"github_user_id": 950})
        assert synced.status_code == 200, synced.text
        state = api.get("/billing/state", params={"github_user_id": 950}).json()
    assert state["features"] == ["again-000", "again-001"]
    assert state["access"]["state"] == "active"


def test_a_plan_changed_through_the_api_comes_with_its_features_at_once(
    reconciler: Reconciler,
    emulator: Emulator,
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """A plan beside usage changes through the API: the answer, the state and the one
    notification of the change carry the new plan's features (the old plan's were kept, and
    notified with the new plan, until the next poll)."""
    metered_price(emulator, make_meter(emulator), lookup_key=USAGE_PRICE)
    old, new = featured_price(emulator, 1, "old"), featured_price(emulator, 1, "new")
    resync(session_factory, StripeGateway(stripe_settings))
    add_user(reconciler.factory, 902, "nine-o-two")
    with contextmanager(serve_selling_usage)(stripe_settings, engine) as api:
        started = api.post("/billing/subscriptions", json={"github_user_id": 902, "price": old})
        emulator.complete_checkout(started.json()["checkout_session_url"])
        reconciler.drain()
        assert api.get("/billing/state", params={"github_user_id": 902}).json()["features"] == [
            "old-000"
        ]
        change = {"github_user_id": 902, "intent": "change_plan", "price": "new-plan"}
        changed = api.post("/billing/subscriptions/manage", json=change)
        assert changed.status_code == 200 and changed.json()["subscription"]["price_id"] == new
        state = api.get("/billing/state", params={"github_user_id": 902}).json()
    assert (state["plan"]["stripe_price_id"], state["features"]) == (new, ["new-000"])
    with reconciler.factory() as session:
        notified = session.scalars(select(BillingNotification.payload)).all()
    assert [
        n["features"] for n in notified if n["plan"] and n["plan"]["stripe_price_id"] == new
    ] == [["new-000"]]


def test_with_webhooks_each_plan_is_notified_with_its_own_features(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Stripe sends a subscription's change and its customer's new entitlements as two events.
    Delivered as webhooks, every version notified carries the features of the plan it names:
    the subscription's webhook reads the features with it (it used to notify the new plan with
    the old plan's features, or none, then the right ones). Past due and back reads nothing."""
    first, second = featured_price(emulator, 2, "first"), featured_price(emulator, 1, "second")
    features = {first: ["first-000", "first-001"], second: ["second-000"]}
    with running_service(stripe_settings, engine) as service:
        catalog = {e["id"] for e in relevant_events(emulator)}  # made before the endpoint
        for event in relevant_events(emulator):
            service.deliver(event)
        endpoint = {"url": f"{service.url}/stripe/webhooks", "secret": WHSEC_NEW}
        emulator.control("POST", "webhook_endpoints", endpoint)

        def all_delivered() -> None:
            expected = {e["id"] for e in relevant_events(emulator)} - catalog
            wait_until(lambda: delivered_ok(emulator) >= expected, what="the deliveries")

        user = {"github_user_id": 960, "github_login": "nine-sixty"}
        assert service.api.post("/users", json=user).is_success
        wanted = {"github_user_id": 960, "price": first}
        started = service.api.post("/billing/subscriptions", json=wanted).json()
        subscription = emulator.complete_checkout(started["checkout_session_url"])["subscription"]
        all_delivered()
        item = emulator.sdk.v1.subscriptions.retrieve(subscription)["items"]["data"][0]
        emulator.sdk.v1.subscriptions.update(
            subscription, params={"items": [{"id": item["id"], "price": second}]}
        )
        all_delivered()
        reads = "GET /v1/entitlements/active_entitlements"
        before = emulator.control("GET", "requests")["by_route"][reads]
        emulator.set_status(subscription, "past_due")  # dunning's churn keeps the features
        emulator.set_status(subscription, "active")
        all_delivered()
        assert emulator.control("GET", "requests")["by_route"][reads] == before
    with service.factory() as session:
        notified = session.scalars(
            select(BillingNotification.payload).order_by(BillingNotification.id)
        ).all()
    granted = [
        (n["plan"]["stripe_price_id"], n["features"])
        for n in notified
        if n["access"]["state"] == "active"
    ]
    assert list(dict.fromkeys(price for price, _ in granted)) == [first, second]
    assert granted == [(price, features[price]) for price, _ in granted]


def test_a_failed_read_of_the_features_leaves_them_to_their_own_event(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Stripe failing the read of the features does not fail the subscription's webhook."""
    price = featured_price(emulator, 1, "later")
    summary = "entitlements.active_entitlement_summary.updated"
    with running_service(stripe_settings, engine) as service:
        catalog = relevant_events(emulator)
        for event in catalog:
            service.deliver(event)
        assert service.api.post("/users", json={"github_user_id": 961, "github_login": "x"})
        wanted = {"github_user_id": 961, "price": price}
        started = service.api.post("/billing/subscriptions", json=wanted).json()
        emulator.complete_checkout(started["checkout_session_url"])
        events = relevant_events(emulator)[len(catalog) :]
        faults = {"rate": 1.0, "statuses": [500], "path_prefix": "/v1/entitlements"}
        emulator.control("POST", "faults", faults)
        outcomes = {service.deliver(e).json()["outcome"] for e in events if e["type"] != summary}
        emulator.control("DELETE", "faults")
        state = service.api.get("/billing/state", params={"github_user_id": 961}).json()
        assert outcomes == {"applied"}
        assert (state["access"]["state"], state["features"]) == ("active", [])
        assert {service.deliver(e).json()["outcome"] for e in events if e["type"] == summary} == {
            "applied"
        }
        state = service.api.get("/billing/state", params={"github_user_id": 961}).json()
    assert state["features"] == ["later-000"]
