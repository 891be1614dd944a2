"""The billing routes over real HTTP: the service and the emulator as real servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.config import Settings
from collab_billing.db import queries
from collab_billing.db.engine import transaction
from collab_billing.db.models import BillingCustomer
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.conftest import ADMIN_TOKEN
from tests.emulator.conftest import CARD
from tests.servers import ServerThread
from tests.stripe_helpers import EMULATOR_KEY, Emulator


def serve(settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    app = create_app(settings.model_copy(update={"reconcile_enabled": False}), engine)
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client,
    ):
        yield client


AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def api(stripe_settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    yield from serve(stripe_settings, engine)


@pytest.fixture
def reconciler(stripe_settings: Settings, engine: Engine) -> Reconciler:
    return Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))


def add_user(api: httpx.Client, github_user_id: int, login: str = "octocat") -> None:
    body = {"github_user_id": github_user_id, "github_login": login, "email_address": "o@x.io"}
    assert api.post("/users", json=body).status_code in (200, 201)


def subscribe(api: httpx.Client, emulator: Emulator, reconciler: Reconciler, user: int) -> str:
    response = api.post("/billing/subscriptions", json={"github_user_id": user})
    assert response.status_code == 200, response.text
    session = emulator.complete_checkout(response.json()["checkout_session_url"])
    reconciler.drain()
    return str(session["subscription"])


def test_checkout_creates_the_customer_first_then_a_session(
    api: httpx.Client, emulator: Emulator, session_factory: sessionmaker[Session]
) -> None:
    add_user(api, 12345)
    response = api.post("/billing/subscriptions", json={"github_user_id": 12345})
    assert response.status_code == 200, response.text
    url = response.json()["checkout_session_url"]
    assert "cs_" in url
    with session_factory() as session:
        customer = session.scalars(select(BillingCustomer)).one()
    stripe_customer = emulator.sdk.v1.customers.retrieve(customer.stripe_customer_id)
    assert stripe_customer.metadata["github_user_id"] == "12345"
    assert stripe_customer.email == "o@x.io"
    # A second checkout (nothing paid yet) reuses the customer.
    assert api.post("/billing/subscriptions", json={"github_user_id": 12345}).status_code == 200
    assert len(emulator.sdk.v1.customers.list().data) == 1


def test_unknown_user_is_404(api: httpx.Client) -> None:
    response = api.post("/billing/subscriptions", json={"github_user_id": 999})
    assert response.status_code == 404
    assert "999" in response.json()["detail"]


def test_twenty_concurrent_checkouts_make_one_customer(
    api: httpx.Client, emulator: Emulator, session_factory: sessionmaker[Session]
) -> None:
    add_user(api, 77)

    def checkout(_: int) -> int:
        return api.post("/billing/subscriptions", json={"github_user_id": 77}).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(checkout, range(20)))
    assert 200 in statuses and set(statuses) <= {200, 409}  # 409: one is being started
    assert len(emulator.sdk.v1.customers.list().data) == 1
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(BillingCustomer)) == 1


def test_active_subscription_blocks_checkout_and_shows_in_the_list(
    api: httpx.Client, emulator: Emulator, reconciler: Reconciler
) -> None:
    add_user(api, 5)
    reconciler.drain()
    subscription_id = subscribe(api, emulator, reconciler, 5)
    again = api.post("/billing/subscriptions", json={"github_user_id": 5})
    assert again.status_code == 409
    assert "active subscription" in again.json()["detail"]
    listing = api.get("/billing/subscriptions", params={"github_user_id": 5}).json()
    assert listing["has_active_subscription"] is True
    [row] = listing["subscriptions"]
    assert row["stripe_subscription_id"] == subscription_id
    assert row["status"] == "active"
    assert row["cancel_at_period_end"] is False
    assert row["current_period_end"] is not None


def test_manage_cancel_paths(api: httpx.Client, emulator: Emulator, reconciler: Reconciler) -> None:
    add_user(api, 1, "one")
    add_user(api, 2, "two")
    reconciler.drain()
    no_subscription = api.post(
        "/billing/subscriptions/manage", json={"github_user_id": 1, "intent": "cancel"}
    )
    assert no_subscription.status_code == 409
    assert "no active subscription" in no_subscription.json()["detail"]

    mine = subscribe(api, emulator, reconciler, 1)
    theirs = subscribe(api, emulator, reconciler, 2)
    for subscription_id in (None, mine):
        body = {"github_user_id": 1, "intent": "cancel", "subscription_id": subscription_id}
        response = api.post("/billing/subscriptions/manage", json=body)
        assert response.status_code == 200, response.text
        assert "bps_" in response.json()["billing_portal_session_url"]

    ours = api.get("/billing/subscriptions", params={"github_user_id": 1}).json()
    our_id = ours["subscriptions"][0]["id"]
    by_our_id = {"github_user_id": 1, "intent": "cancel", "subscription_id": our_id}
    assert api.post("/billing/subscriptions/manage", json=by_our_id).status_code == 200

    not_mine = {"github_user_id": 1, "intent": "cancel", "subscription_id": theirs}
    assert api.post("/billing/subscriptions/manage", json=not_mine).status_code == 404
    unknown_intent = {"github_user_id": 1, "intent": "pause"}
    response = api.post("/billing/subscriptions/manage", json=unknown_intent)
    assert response.status_code == 422
    assert "cancel" in response.text

    emulator.sdk.v1.subscriptions.cancel(mine)
    reconciler.drain()
    canceled = {"github_user_id": 1, "intent": "cancel", "subscription_id": mine}
    response = api.post("/billing/subscriptions/manage", json=canceled)
    assert response.status_code == 409
    assert response.json()["detail"] == f"subscription {mine} has already ended (canceled)"


def test_several_active_subscriptions_need_an_id(
    api: httpx.Client, emulator: Emulator, reconciler: Reconciler, stripe_settings: Settings
) -> None:
    add_user(api, 3, "three")
    reconciler.drain()
    first = subscribe(api, emulator, reconciler, 3)
    paid = emulator.sdk.v1.subscriptions.retrieve(first)
    second = emulator.sdk.v1.subscriptions.create(
        params={
            "customer": str(paid.customer),
            "items": [{"price": stripe_settings.stripe_price_id or ""}],
            "default_payment_method": str(paid.default_payment_method),
        }
    )
    reconciler.drain()
    response = api.post(
        "/billing/subscriptions/manage", json={"github_user_id": 3, "intent": "cancel"}
    )
    assert response.status_code == 409
    assert first in response.json()["detail"] and second.id in response.json()["detail"]


def test_stripe_failure_is_502_without_secrets(api: httpx.Client, emulator: Emulator) -> None:
    add_user(api, 8)
    emulator.control(
        "POST", "faults", {"rate": 1.0, "statuses": [500], "path_prefix": "/v1/customers"}
    )
    response = api.post("/billing/subscriptions", json={"github_user_id": 8})
    assert response.status_code == 502
    assert "Stripe" in response.json()["detail"]
    assert EMULATOR_KEY not in response.text


def test_stripe_not_configured_is_503(settings: Settings, engine: Engine) -> None:
    for client in serve(settings, engine):
        add_user(client, 9)
        response = client.post("/billing/subscriptions", json={"github_user_id": 9})
        assert response.status_code == 503
        assert "STRIPE_API_KEY" in response.json()["detail"]


def test_missing_price_is_503(stripe_settings: Settings, engine: Engine) -> None:
    for client in serve(stripe_settings.model_copy(update={"stripe_price_id": None}), engine):
        add_user(client, 9)
        response = client.post("/billing/subscriptions", json={"github_user_id": 9})
        assert response.status_code == 503
        assert "STRIPE_PRICE_ID" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/users", {"github_user_id": 1, "github_login": "x"}),
        ("POST", "/billing/subscriptions", {"github_user_id": 1}),
        ("POST", "/billing/subscriptions/manage", {"github_user_id": 1, "intent": "cancel"}),
        ("GET", "/billing/subscriptions?github_user_id=1", None),
    ],
)
def test_every_admin_route_needs_the_token(
    api: httpx.Client, method: str, path: str, body: object
) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}):
        response = api.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (path, response.text)


def test_list_of_an_unknown_user_is_404_and_bad_query_is_422(api: httpx.Client) -> None:
    assert api.get("/billing/subscriptions", params={"github_user_id": 4}).status_code == 404
    for bad in ("-1", "abc", str(2**63), "1.5"):
        assert api.get("/billing/subscriptions", params={"github_user_id": bad}).status_code == 422


# -- a customer made in Stripe before its user -----------------------------------------------


def subscribed_in_stripe_before_the_user(
    api: httpx.Client,
    emulator: Emulator,
    reconciler: Reconciler,
    github_user_id: int,
    renewal_declined: bool = False,
    add: Callable[[httpx.Client, int], None] = add_user,
) -> str:
    """A Stripe customer naming the user, with an active subscription (or, `renewal_declined`,
    a past-due one whose renewal invoice is open), seen by a poll before the user exists (so
    unmatched); then the user is added. The subscription's id."""
    customer = emulator.sdk.v1.customers.create(
        {"metadata": {"github_user_id": str(github_user_id)}, **CARD}
    )
    price = reconciler.settings.stripe_price_id or ""
    sub = emulator.sdk.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": price}]}
    )
    assert sub.status == "active"
    if renewal_declined:
        declining = emulator.sdk.v1.payment_methods.attach(
            "pm_card_chargeCustomerFail", {"customer": customer.id}
        )
        emulator.sdk.v1.subscriptions.update(sub.id, {"default_payment_method": declining.id})
        renewal = sub["items"].data[0].current_period_end
        emulator.control("POST", "clock/advance", {"seconds": renewal - sub.created + 7200})
        assert emulator.sdk.v1.subscriptions.retrieve(sub.id).status == "past_due"
    reconciler.drain()
    add(api, github_user_id)
    return sub.id


def test_checkout_of_a_user_stripe_already_bills_is_a_409_before_the_next_poll(
    api: httpx.Client, emulator: Emulator, reconciler: Reconciler
) -> None:
    """It was a Checkout on a second Stripe customer: the first, never linked once the user
    had one, billed on unseen, and the user could pay twice."""
    sub_id = subscribed_in_stripe_before_the_user(api, emulator, reconciler, 62)
    refused = api.post("/billing/subscriptions", json={"github_user_id": 62})
    assert refused.status_code == 409, refused.text
    assert sub_id in refused.json()["detail"]
    customers = emulator.sdk.v1.customers.list({"limit": 100}).data
    assert [c.metadata["github_user_id"] for c in customers] == ["62"]  # no second customer
    listed = api.get("/billing/subscriptions", params={"github_user_id": 62}).json()
    assert [s["stripe_subscription_id"] for s in listed["subscriptions"]] == [sub_id]


def test_sync_of_a_user_links_the_customer_that_names_them(
    api: httpx.Client, emulator: Emulator, reconciler: Reconciler
) -> None:
    sub_id = subscribed_in_stripe_before_the_user(api, emulator, reconciler, 60)
    synced = api.post("/billing/subscriptions/sync", json={"github_user_id": 60})
    assert synced.status_code == 200, synced.text
    assert [s["stripe_subscription_id"] for s in synced.json()["subscriptions"]] == [sub_id]
    assert synced.json()["access"]["state"] == "active"


def test_a_lost_customer_answer_then_a_new_email_makes_no_second_customer(
    api: httpx.Client, emulator: Emulator, reconciler: Reconciler
) -> None:
    """The key covered the user's details: retried after a profile change, it made a second
    Stripe customer, the first left unlinked for good."""
    add_user(api, 63)
    lost = {"drop_rate": 1.0, "drop_after_processing": True, "count": 1}
    emulator.control("POST", "faults", {**lost, "path_prefix": "/v1/customers"})
    assert api.post("/billing/subscriptions", json={"github_user_id": 63}).status_code == 502
    user = {"github_user_id": 63, "github_login": "octocat", "email_address": "new@example.com"}
    assert api.post("/users", json=user).is_success
    retried = api.post("/billing/subscriptions", json={"github_user_id": 63})
    assert retried.status_code == 409 and "retry" in retried.json()["detail"]
    reconciler.drain()  # the customer's event, as a webhook or the next poll brings it
    assert api.post("/billing/subscriptions", json={"github_user_id": 63}).status_code == 200
    customers = emulator.sdk.v1.customers.list({"limit": 100}).data
    assert [c.metadata["github_user_id"] for c in customers] == ["63"]


def test_a_user_added_after_stripe_named_them_shows_their_subscription_at_once(
    api: httpx.Client, emulator: Emulator, reconciler: Reconciler
) -> None:
    """The customer was linked only at the next poll: up to the safety interval (300 s) with
    healthy webhooks, meanwhile the user's subscription and access were not shown."""
    sub_id = subscribed_in_stripe_before_the_user(api, emulator, reconciler, 63)
    listed = api.get("/billing/subscriptions", params={"github_user_id": 63}).json()
    assert [s["stripe_subscription_id"] for s in listed["subscriptions"]] == [sub_id]
    assert listed["access"]["state"] == "active"
    state = api.get("/billing/state", params={"github_user_id": 63}).json()
    assert state["access"]["state"] == "active"


@pytest.mark.parametrize("linked_by", ["POST /users", "sync"])
def test_a_user_added_after_stripe_named_them_sees_what_they_owe(
    api: httpx.Client, emulator: Emulator, reconciler: Reconciler, linked_by: str
) -> None:
    """The customer's invoices were not mirrored when `POST /users` or a sync linked it (only
    its subscriptions were read, and its invoices' events were skipped while it was not
    ours): the user was in grace with nothing shown overdue, and `pay_invoice` was a 409.
    "sync": the user was added as `collab-billing users add` does (no Stripe read)."""
    add = add_user if linked_by == "POST /users" else add_user_in_the_database(reconciler)
    sub_id = subscribed_in_stripe_before_the_user(api, emulator, reconciler, 64, True, add)
    if linked_by == "sync":
        assert api.post("/billing/subscriptions/sync", json={"github_user_id": 64}).is_success
    [open_invoice] = emulator.sdk.v1.invoices.list({"subscription": sub_id, "status": "open"})
    listed = api.get("/billing/subscriptions", params={"github_user_id": 64}).json()
    assert listed["access"]["state"] == "grace"
    assert [i["id"] for i in listed["overdue_invoices"]] == [open_invoice.id]
    body = {"github_user_id": 64, "intent": "pay_invoice"}
    paying = api.post("/billing/subscriptions/manage", json=body)
    assert paying.status_code == 200, paying.text
    assert paying.json()["hosted_invoice_url"] == open_invoice.hosted_invoice_url


def add_user_in_the_database(reconciler: Reconciler) -> Callable[[httpx.Client, int], None]:
    def add(api: httpx.Client, github_user_id: int) -> None:
        with transaction(reconciler.factory) as session:
            queries.upsert_user(session, github_user_id, "octocat")

    return add
