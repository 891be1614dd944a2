"""Plans, seats, trials and every manage intent, end to end over real HTTP: the service and the
emulator as real servers, the catalog mirrored from Stripe, changes seen after a poll or a
webhook."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from collab_billing.billing.trials import claim_trial
from collab_billing.config import Settings
from collab_billing.db.models import BillingCustomer, User
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.ops_helpers import Service, running_service
from tests.stripe_helpers import Emulator, session_id_in

DAY = 86_400
PLANS = {  # lookup key -> (product, amount, interval)
    "pro-monthly": ("Collab Pro", 1000, "month"),
    "pro-yearly": ("Collab Pro", 10000, "year"),
    "team-monthly": ("Collab Team", 900, "month"),
}


@pytest.fixture
def reconciler(stripe_settings: Settings, engine: Engine) -> Reconciler:
    return Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))


@pytest.fixture
def catalog(emulator: Emulator, reconciler: Reconciler) -> dict[str, str]:
    """The plans, made in Stripe and mirrored: lookup key -> price id."""
    products: dict[str, str] = {}
    prices = {}
    for key, (name, amount, interval) in PLANS.items():
        if name not in products:
            products[name] = emulator.sdk.v1.products.create(params={"name": name}).id
        price = emulator.sdk.v1.prices.create(
            params={
                "product": products[name],
                "unit_amount": amount,
                "currency": "usd",
                "recurring": {"interval": interval},  # type: ignore[typeddict-item]
                "lookup_key": key,
            }
        )
        prices[key] = price.id
    reconciler.drain()
    reconciler.drain()
    return prices


@pytest.fixture
def service(stripe_settings: Settings, engine: Engine) -> Iterator[Service]:
    with running_service(stripe_settings, engine, billing_trial_days=7) as running:
        yield running


def add_user(service: Service, github_user_id: int) -> None:
    body = {"github_user_id": github_user_id, "github_login": f"user{github_user_id}"}
    assert service.api.post("/users", json=body).is_success


def checkout(service: Service, github_user_id: int, **fields: Any) -> dict[str, Any]:
    response = service.api.post(
        "/billing/subscriptions", json={"github_user_id": github_user_id, **fields}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def complete(emulator: Emulator, answer: dict[str, Any], **body: Any) -> str:
    session_id = session_id_in(answer["checkout_session_url"], "cs_")
    done = emulator.control("POST", f"checkout/sessions/{session_id}/complete", body)
    return str(done["subscription"])


def checkout_session(emulator: Emulator, answer: dict[str, Any]) -> Any:
    session_id = session_id_in(answer["checkout_session_url"], "cs_")
    return emulator.sdk.v1.checkout.sessions.retrieve(session_id)


def portal_session(emulator: Emulator, url: str) -> dict[str, Any]:
    """The portal session behind a URL, as Stripe made it (the API cannot retrieve one)."""
    session_id = session_id_in(url, "bps_")
    sessions = emulator.state()["billing_portal_sessions"]
    found: dict[str, Any] = next(s for s in sessions if s["id"] == session_id)
    return found


def subscriptions(service: Service, github_user_id: int) -> list[dict[str, Any]]:
    response = service.api.get("/billing/subscriptions", params={"github_user_id": github_user_id})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["subscriptions"]
    return rows


def manage(service: Service, github_user_id: int, intent: str, **fields: Any) -> Any:
    body = {"github_user_id": github_user_id, "intent": intent, **fields}
    return service.api.post("/billing/subscriptions/manage", json=body)


def buy(
    service: Service,
    emulator: Emulator,
    reconciler: Reconciler,
    user: int,
    card: bool | None = None,
    **fields: Any,
) -> str:
    """The user checks out (`fields`) and pays (`card`: with a card or not; None: the
    emulator's default); the subscription is applied."""
    add_user(service, user)
    paid = {} if card is None else {"card": card}
    sub_id = complete(emulator, checkout(service, user, **fields), **paid)
    reconciler.drain()
    return sub_id


def test_each_plan_is_bought_with_seats(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    for user, (key, seats) in enumerate(
        [("pro-monthly", 1), ("pro-yearly", 2), ("team-monthly", 25)], start=1
    ):
        add_user(service, user)
        answer = checkout(service, user, price=key, quantity=seats)
        assert answer["stripe_price_id"] == catalog[key]
        assert (answer["lookup_key"], answer["quantity"], answer["trial"]) == (key, seats, False)
        session = emulator.sdk.v1.checkout.sessions.retrieve(
            session_id_in(answer["checkout_session_url"], "cs_")
        )
        assert session.success_url is not None
        assert session.success_url.endswith("session_id={CHECKOUT_SESSION_ID}")
        items = emulator.sdk.v1.checkout.sessions.line_items.list(session.id).data
        assert [(i.price.id if i.price else None, i.quantity) for i in items] == [
            (catalog[key], seats)
        ]
        complete(emulator, answer)
    reconciler.drain()
    for user, (key, seats) in enumerate(
        [("pro-monthly", 1), ("pro-yearly", 2), ("team-monthly", 25)], start=1
    ):
        [row] = subscriptions(service, user)
        name, amount, interval = PLANS[key]
        assert row["plan"] == {
            "stripe_price_id": catalog[key],
            "lookup_key": key,
            "product_name": name,
            "unit_amount": amount,
            "currency": "usd",
            "interval": interval,
            "interval_count": 1,
        }
        assert (row["quantity"], row["kind"], row["trial_end"]) == (seats, "paid", None)
        assert row["cancellation_reason"] is None


def test_a_price_not_for_sale_or_bad_seats_is_422(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    add_user(service, 1)
    for body, field in [
        ({"price": "enterprise"}, "price"),
        ({"price": "pro-monthly", "quantity": 0}, "quantity"),
        ({"price": "pro-monthly", "quantity": 10_001}, "quantity"),
        ({"price": "pro-monthly", "quantity": "2"}, "quantity"),
        ({"trial": "yes"}, "trial"),
    ]:
        response = service.api.post("/billing/subscriptions", json={"github_user_id": 1, **body})
        assert response.status_code == 422, (body, response.text)
        assert [e["loc"][-1] for e in response.json()["detail"]] == [field]
    refused = service.api.post(
        "/billing/subscriptions", json={"github_user_id": 1, "price": "enterprise"}
    )
    assert "pro-monthly, pro-yearly, team-monthly" in refused.text

    # The catalog follows Stripe: an archived price is no longer for sale.
    emulator.sdk.v1.prices.update(catalog["pro-yearly"], params={"active": False})
    reconciler.drain()
    keys = [p["lookup_key"] for p in service.api.get("/billing/prices").json()["prices"]]
    assert keys == ["pro-monthly", "team-monthly"]
    archived = service.api.post(
        "/billing/subscriptions", json={"github_user_id": 1, "price": "pro-yearly"}
    )
    assert archived.status_code == 422
    # A price deleted (Dashboard) and its product deleted: gone from the catalog too.
    emulator.control("POST", f"prices/{catalog['team-monthly']}/delete", {})
    product = emulator.sdk.v1.prices.retrieve(catalog["pro-monthly"]).product
    team_product = next(
        p.id for p in emulator.sdk.v1.products.list().data if p.name == "Collab Team"
    )
    emulator.sdk.v1.products.delete(team_product)
    reconciler.drain()
    prices = service.api.get("/billing/prices").json()["prices"]
    assert [(p["lookup_key"], p["stripe_price_id"]) for p in prices] == [
        ("pro-monthly", catalog["pro-monthly"])
    ]
    assert product != team_product


def test_a_cardless_trial_ends_canceled_without_a_card_and_active_with_one(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    subs = {}
    for user in (1, 2):
        add_user(service, user)
        answer = checkout(service, user, price="team-monthly", quantity=3, trial=True)
        assert (answer["trial"], answer["trial_days"], answer["trial_refused"]) == (True, 7, None)
        session = emulator.sdk.v1.checkout.sessions.retrieve(
            session_id_in(answer["checkout_session_url"], "cs_")
        )
        assert session.payment_method_collection == "if_required"
        subs[user] = complete(emulator, answer, card=False)
    reconciler.drain()
    for user in (1, 2):
        [row] = subscriptions(service, user)
        assert (row["status"], row["kind"], row["quantity"]) == ("trialing", "trial", 3)
        assert row["trial_end"] is not None
    # User 2 adds a card in the portal.
    url = manage(service, 2, "update_payment_method").json()["billing_portal_session_url"]
    portal = emulator.control(
        "POST", f"billing_portal/sessions/{session_id_in(url, 'bps_')}/confirm", {}
    )
    assert portal["subscriptions"][0]["default_payment_method"].startswith("pm_")

    emulator.control("POST", "clock/advance", {"seconds": 7 * DAY + 60})
    reconciler.drain()
    [ended] = subscriptions(service, 1)
    assert (ended["status"], ended["kind"]) == ("canceled", "trial")  # never paid for
    assert ended["cancellation_reason"] == "cancellation_requested"
    [paying] = subscriptions(service, 2)
    assert (paying["status"], paying["kind"], paying["cancellation_reason"]) == (
        "active",
        "paid",
        None,
    )


def test_only_the_newest_checkout_of_a_user_can_be_paid(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """Two Checkouts opened one after the other (a second tab, a click back) must not become
    two paid subscriptions: starting one expires the user's others."""
    add_user(service, 1)
    first = checkout(service, 1, price="pro-monthly")
    second = checkout(service, 1, price="team-monthly", quantity=2)
    first_id = checkout_session(emulator, first).id
    assert checkout_session(emulator, first).status == "expired"
    paid = emulator.http.post(f"/_emulator/checkout/sessions/{first_id}/complete", json={})
    assert paid.status_code == 400
    complete(emulator, second)
    # Paid, but not yet applied: a new Checkout is refused rather than opened beside it.
    third = service.api.post("/billing/subscriptions", json={"github_user_id": 1})
    assert third.status_code == 409 and "not applied here yet" in third.text
    reconciler.drain()
    [row] = subscriptions(service, 1)
    assert (row["plan"]["lookup_key"], row["quantity"]) == ("team-monthly", 2)
    assert len(emulator.sdk.v1.subscriptions.list(params={"status": "all"}).data) == 1


def test_checkouts_of_one_user_at_once_leave_one_to_pay(
    service: Service, emulator: Emulator, catalog: dict[str, str]
) -> None:
    """A double (or fivefold) click, Stripe 300 ms away: one request opens the session, the
    others are told at once that it is being started (409), without waiting for it (each
    would hold one of the API's Stripe slots, then expire the session the user is on)."""
    add_user(service, 1)
    emulator.control("POST", "faults", {"latency_ms": 300})

    def click(_: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        body = {"github_user_id": 1, "price": "team-monthly"}
        answer = service.api.post("/billing/subscriptions", json=body)
        return answer, time.monotonic() - started

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(click, range(5)))
    emulator.control("DELETE", "faults")
    opened = [answer for answer, _ in answers if answer.status_code == 200]
    refused = [(answer, seconds) for answer, seconds in answers if answer.status_code == 409]
    assert len(opened) == 1 and len(refused) == 4, [a.text for a, _ in answers]
    assert all("being started" in answer.text and seconds < 1.0 for answer, seconds in refused)
    assert checkout_session(emulator, opened[0].json()).status == "open"
    sessions = emulator.sdk.v1.checkout.sessions.list(params={"limit": 100}).data
    assert [session.status for session in sessions] == ["open"]


def test_a_trial_claimed_for_a_checkout_never_paid_is_free_again(
    service: Service, emulator: Emulator, catalog: dict[str, str]
) -> None:
    """The trial's session expired unpaid on Stripe, or was never made (the request killed
    between claiming the trial and creating the session): the next Checkout offers the trial
    again at once (a killed request withheld it for a day)."""
    add_user(service, 1)
    abandoned = checkout(service, 1, price="pro-monthly", trial=True)
    emulator.sdk.v1.checkout.sessions.expire(checkout_session(emulator, abandoned).id)
    again = checkout(service, 1, price="pro-monthly", trial=True)
    assert (again["trial"], again["trial_days"]) == (True, 7)

    add_user(service, 2)
    checkout(service, 2, price="pro-monthly")  # the customer exists
    with service.factory() as session:
        customer = session.scalar(
            select(BillingCustomer.stripe_customer_id)
            .join(User, BillingCustomer.user_id == User.id)
            .where(User.github_user_id == 2)
        )
    assert customer is not None
    assert claim_trial(service.factory, customer, datetime.now(UTC)) is not None  # then killed
    later = checkout(service, 2, price="pro-monthly", trial=True)
    assert (later["trial"], later["trial_days"]) == (True, 7)


def test_one_trial_per_customer(
    service: Service,
    emulator: Emulator,
    reconciler: Reconciler,
    catalog: dict[str, str],
    stripe_settings: Settings,
    engine: Engine,
) -> None:
    add_user(service, 1)
    first = checkout(service, 1, price="pro-monthly", trial=True)
    assert first["trial"] is True
    # Asked again before paying: the first Checkout is expired, and its trial given back.
    again = checkout(service, 1, price="pro-monthly", trial=True)
    assert (again["trial"], again["trial_days"]) == (True, 7)
    assert checkout_session(emulator, first).status == "expired"
    sub_id = complete(emulator, again)
    reconciler.drain()
    emulator.sdk.v1.subscriptions.cancel(sub_id)
    reconciler.drain()
    # The trial was used: no other, and a card is taken.
    used = checkout(service, 1, price="pro-monthly", trial=True)
    assert (used["trial"], used["trial_days"]) == (False, None)
    assert "already had a trial" in used["trial_refused"]
    assert checkout_session(emulator, used).payment_method_collection == "always"

    # Concurrent first asks of a new user: at most one open Checkout holds the trial.
    add_user(service, 2)

    def ask(_: int) -> httpx.Response:
        body = {"github_user_id": 2, "price": "pro-monthly", "trial": True}
        return service.api.post("/billing/subscriptions", json=body)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(ask, range(8)))
    assert {response.status_code for response in responses} <= {200, 409}
    answers = [response.json() for response in responses if response.status_code == 200]
    assert any(a["trial"] for a in answers)
    open_sessions = [checkout_session(emulator, a) for a in answers]
    open_sessions = [s for s in open_sessions if s.status == "open"]
    assert open_sessions and sum("trial_days" in s.metadata for s in open_sessions) <= 1

    # Trials off (BILLING_TRIAL_DAYS=0): the answer says so; with a card required: "always".
    add_user(service, 3)
    with running_service(stripe_settings, engine) as no_trials:
        answer = checkout(no_trials, 3, trial=True)
        assert answer["trial"] is False and "not offered" in answer["trial_refused"]
    add_user(service, 4)
    with running_service(
        stripe_settings,
        engine,
        billing_trial_days=14,
        billing_trial_requires_payment_method=True,
        billing_allow_promotion_codes=True,
        billing_automatic_tax=True,
    ) as strict:
        answer = checkout(strict, 4, price="pro-yearly", trial=True)
        assert (answer["trial"], answer["trial_days"]) == (True, 14)
        session = emulator.sdk.v1.checkout.sessions.retrieve(
            session_id_in(answer["checkout_session_url"], "cs_")
        )
        assert session.payment_method_collection == "always"
        assert session.allow_promotion_codes is True
        assert session.automatic_tax.enabled is True
        assert session.billing_address_collection == "required"
        assert session.tax_id_collection is not None and session.tax_id_collection.enabled


def test_change_plan_confirmed_in_stripe_shows_after_a_poll_and_after_a_webhook(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    for user in (1, 2):
        buy(service, emulator, reconciler, user, price="pro-monthly")
    assert manage(service, 1, "change_plan", price="pro-monthly").status_code == 409
    missing = manage(service, 1, "change_plan")
    assert missing.status_code == 422 and "price" in missing.text
    assert manage(service, 1, "change_plan", price="enterprise").status_code == 422
    assert manage(service, 1, "change_plan", price="pro-yearly", quantity=0).status_code == 422

    for user, delivery in ((1, "poll"), (2, "webhook")):
        response = manage(service, user, "change_plan", price="team-monthly", quantity=5)
        assert response.status_code == 200, response.text
        url = response.json()["billing_portal_session_url"]
        portal = portal_session(emulator, url)
        assert portal["flow"]["type"] == "subscription_update_confirm"
        [item] = portal["flow"]["subscription_update_confirm"]["items"]
        assert (item["price"], item["quantity"]) == (catalog["team-monthly"], 5)
        # Nothing changes until the user confirms in Stripe's UI.
        assert subscriptions(service, user)[0]["plan"]["lookup_key"] == "pro-monthly"
        emulator.control("POST", f"billing_portal/sessions/{portal['id']}/confirm", {})
        if delivery == "poll":
            reconciler.drain()
        else:
            updated = next(  # the newest
                e for e in emulator.all_events() if e["type"] == "customer.subscription.updated"
            )
            assert service.deliver(updated).json()["outcome"] == "applied"
        [row] = subscriptions(service, user)
        assert (row["plan"]["lookup_key"], row["quantity"]) == ("team-monthly", 5), delivery


def test_a_plan_change_without_a_quantity_keeps_the_seats_only_within_a_product(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """5 seats of Pro monthly become 5 of Pro yearly; 5 seats of Team become 1 of Pro (as
    its Checkout would sell it), not a Pro plan billed five times."""
    buy(service, emulator, reconciler, 1, price="pro-monthly", quantity=5)
    buy(service, emulator, reconciler, 2, price="team-monthly", quantity=5)
    for user, price, seats in ((1, "pro-yearly", 5), (2, "pro-yearly", 1)):
        response = manage(service, user, "change_plan", price=price)
        assert response.status_code == 200, response.text
        portal = portal_session(emulator, response.json()["billing_portal_session_url"])
        [item] = portal["flow"]["subscription_update_confirm"]["items"]
        assert (item["price"], item["quantity"]) == (catalog[price], seats), user
    again = manage(service, 2, "change_plan", price="team-monthly")
    assert again.status_code == 409 and "already on team-monthly" in again.text


def tokens_for_sale(emulator: Emulator, reconciler: Reconciler) -> str:
    """A metered price on sale as a plan of its own: `tokens-monthly`. Its id."""
    meter = emulator.sdk.v1.billing.meters.create(
        params={
            "event_name": "tokens",
            "display_name": "Tokens",
            "default_aggregation": {"formula": "sum"},
        }
    )
    price = emulator.sdk.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": "0.5",
            "lookup_key": "tokens-monthly",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "product_data": {"name": "Tokens"},
        }
    )
    reconciler.drain()
    return str(price.id)


def test_a_metered_plan_is_bought_and_changed_to_without_a_quantity(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """A metered price bills usage: Stripe refuses a quantity for it, in Checkout and in the
    portal's plan change alike, so the service sends none and answers none."""
    tokens_for_sale(emulator, reconciler)
    add_user(service, 2)
    assert checkout(service, 2, price="tokens-monthly", quantity=4)["quantity"] is None

    buy(service, emulator, reconciler, 1, price="pro-monthly", quantity=3)
    response = manage(service, 1, "change_plan", price="tokens-monthly", quantity=3)
    assert response.status_code == 200, response.text
    portal = portal_session(emulator, response.json()["billing_portal_session_url"])
    [item] = portal["flow"]["subscription_update_confirm"]["items"]
    assert "quantity" not in item
    emulator.control("POST", f"billing_portal/sessions/{portal['id']}/confirm", {})
    reconciler.drain()
    [row] = subscriptions(service, 1)
    assert (row["plan"]["lookup_key"], row["quantity"]) == ("tokens-monthly", None)
    again = manage(service, 1, "change_plan", price="tokens-monthly")
    assert again.status_code == 409 and "already on tokens-monthly" in again.text


def test_change_plan_from_a_trial_ends_the_trial(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """The change is paid for at once, with the card given at Checkout: the subscription is
    active and paid (without a card it is a 409: see the next tests)."""
    add_user(service, 1)
    complete(emulator, checkout(service, 1, price="pro-monthly", trial=True), card=True)
    reconciler.drain()
    url = manage(service, 1, "change_plan", price="pro-yearly").json()
    portal = session_id_in(url["billing_portal_session_url"], "bps_")
    emulator.control("POST", f"billing_portal/sessions/{portal}/confirm", {})
    reconciler.drain()
    [row] = subscriptions(service, 1)
    assert (row["status"], row["kind"], row["plan"]["lookup_key"]) == (
        "active",
        "paid",
        "pro-yearly",
    )
    invoices = emulator.sdk.v1.invoices.list(
        params={"subscription": row["stripe_subscription_id"]}
    ).data
    [charged] = [invoice for invoice in invoices if invoice.amount_due == 10000]
    assert charged.status == "paid"


def test_stop_cancellation_and_end_trial_are_done_through_the_api(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    sub_id = buy(service, emulator, reconciler, 1, card=True, price="pro-monthly", trial=True)
    nothing = manage(service, 1, "stop_cancellation")
    assert nothing.status_code == 409 and "scheduled to cancel" in nothing.text

    url = manage(service, 1, "cancel").json()["billing_portal_session_url"]
    emulator.confirm_portal(url)
    reconciler.drain()
    assert subscriptions(service, 1)[0]["cancel_at_period_end"] is True
    stopped = manage(service, 1, "stop_cancellation")
    assert stopped.status_code == 200, stopped.text
    body = stopped.json()
    assert body["billing_portal_session_url"] is None
    assert body["subscription"]["stripe_subscription_id"] == sub_id
    assert body["subscription"]["cancel_at_period_end"] is False
    assert emulator.sdk.v1.subscriptions.retrieve(sub_id).cancel_at_period_end is False
    reconciler.drain()  # the event arrives after: the row stays as it is
    assert subscriptions(service, 1)[0]["cancel_at_period_end"] is False

    ended = manage(service, 1, "end_trial", subscription_id=sub_id)
    assert ended.status_code == 200, ended.text
    assert ended.json()["subscription"]["kind"] == "paid"
    assert ended.json()["subscription"]["status"] == "active"
    assert emulator.sdk.v1.subscriptions.retrieve(sub_id).status == "active"
    invoices = emulator.sdk.v1.invoices.list(params={"subscription": sub_id}).data
    assert [(i.amount_paid, i.billing_reason) for i in invoices if i.amount_due] == [
        (1000, "subscription_update")
    ]  # billing starts now
    again = manage(service, 1, "end_trial")
    assert again.status_code == 409 and "trial" in again.text
    reconciler.drain()
    assert subscriptions(service, 1)[0]["status"] == "active"


def test_a_trial_without_a_card_is_not_ended_into_a_failed_payment(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """Ended now, a trial is billed now: with no card that is a failed payment, access in
    grace then blocked, and a debt; the service refuses and says to add a card first. So for
    a plan change through the portal, which ends the trial."""
    sub_id = buy(service, emulator, reconciler, 1, card=False, price="pro-monthly", trial=True)
    for intent, fields in (("end_trial", {}), ("change_plan", {"price": "pro-yearly"})):
        refused = manage(service, 1, intent, **fields)
        assert refused.status_code == 409 and "update_payment_method" in refused.text, intent
    assert emulator.sdk.v1.subscriptions.retrieve(sub_id).status == "trialing"
    customer = str(emulator.sdk.v1.subscriptions.retrieve(sub_id).customer)
    card = emulator.sdk.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    emulator.sdk.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": card.id}}
    )
    ended = manage(service, 1, "end_trial")
    assert ended.status_code == 200, ended.text
    assert ended.json()["subscription"]["status"] == "active"


def test_portal_home_and_payment_method_intents(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    add_user(service, 1)
    for intent in ("manage", "update_payment_method"):
        response = manage(service, 1, intent)
        assert response.status_code == 409 and "check out first" in response.text
    buy(service, emulator, reconciler, 1, price="pro-monthly")
    home = manage(service, 1, "manage").json()
    assert home["subscription"] is None
    assert portal_session(emulator, home["billing_portal_session_url"])["flow"] is None
    card = manage(service, 1, "update_payment_method").json()
    portal = portal_session(emulator, card["billing_portal_session_url"])
    assert portal["flow"]["type"] == "payment_method_update"
    assert manage(service, 99, "manage").status_code == 404
    assert (
        manage(
            service, 1, "change_plan", price="pro-yearly", subscription_id="sub_nope"
        ).status_code
        == 404
    )
    other = buy(service, emulator, reconciler, 2, price="pro-monthly")
    for intent in ("manage", "update_payment_method"):  # another user's subscription
        refused = manage(service, 1, intent, subscription_id=other)
        assert refused.status_code == 404 and "not one of user 1's" in refused.text


def test_a_cancellation_set_for_a_date_is_not_cancelable_again(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    sub_id = buy(service, emulator, reconciler, 1, price="pro-monthly")
    ends = emulator.control("GET", "clock")["now"] + 5 * DAY
    emulator.sdk.v1.subscriptions.update(sub_id, params={"cancel_at": ends})
    reconciler.drain()
    [row] = subscriptions(service, 1)
    assert (row["is_cancelable"], row["cancel_at_period_end"]) == (False, False)
    refused = manage(service, 1, "cancel")
    assert refused.status_code == 409 and "no active subscription to cancel" in refused.text
    assert f"{sub_id} is already set to cancel" in refused.text  # why the one there does not fit
    assert manage(service, 1, "stop_cancellation").status_code == 200
    reconciler.drain()
    assert subscriptions(service, 1)[0]["is_cancelable"] is True


def test_a_trial_paid_after_it_then_canceled_is_paid(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """Canceled (asked during the trial), but a paid period followed the trial: `paid`."""
    sub_id = buy(service, emulator, reconciler, 1, card=True, price="pro-monthly", trial=True)
    emulator.confirm_portal(manage(service, 1, "cancel").json()["billing_portal_session_url"])
    reconciler.drain()
    ended = manage(service, 1, "end_trial")  # billed now, to end with the paid period
    assert ended.status_code == 200
    period_end = ended.json()["subscription"]["current_period_end"]
    assert ended.json()["subscription"]["cancel_at"] == period_end
    emulator.control("POST", "clock/advance", {"seconds": 31 * DAY})
    reconciler.drain()
    assert emulator.sdk.v1.subscriptions.retrieve(sub_id).status == "canceled"
    [row] = subscriptions(service, 1)
    assert (row["status"], row["kind"]) == ("canceled", "paid")


def test_change_plan_to_the_default_price_without_a_lookup_key(
    service: Service,
    emulator: Emulator,
    reconciler: Reconciler,
    catalog: dict[str, str],
    stripe_settings: Settings,
) -> None:
    buy(service, emulator, reconciler, 1, price="pro-monthly")
    default = stripe_settings.stripe_price_id
    assert default is not None and default not in catalog.values()
    response = manage(service, 1, "change_plan", price=default)
    assert response.status_code == 200, response.text
    flow = portal_session(emulator, response.json()["billing_portal_session_url"])["flow"]
    assert flow["subscription_update_confirm"]["items"][0]["price"] == default


def test_an_intent_on_a_subscription_ended_at_stripe_but_not_here_is_409(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    sub_id = buy(service, emulator, reconciler, 1, price="pro-monthly")
    emulator.sdk.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    reconciler.drain()
    emulator.sdk.v1.subscriptions.cancel(sub_id)  # its event not applied yet
    refused = manage(service, 1, "stop_cancellation")
    assert refused.status_code == 409 and "has already ended (canceled)" in refused.text
    assert subscriptions(service, 1)[0]["status"] == "canceled"  # read while refusing


def test_an_archived_default_price_is_refused_as_not_for_sale(
    stripe_settings: Settings,
    engine: Engine,
    emulator: Emulator,
    reconciler: Reconciler,
    catalog: dict[str, str],
) -> None:
    """STRIPE_PRICE_ID archived in Stripe, or its product: a 422 naming what is for sale, by
    id or by lookup key, with or without `price` (it was sent to Stripe: a 502)."""
    emulator.sdk.v1.prices.update(catalog["pro-monthly"], params={"active": False})
    team = str(emulator.sdk.v1.prices.retrieve(catalog["team-monthly"]).product)
    emulator.sdk.v1.products.update(team, params={"active": False})
    reconciler.drain()
    for default in (catalog["pro-monthly"], "pro-monthly", catalog["team-monthly"]):
        with running_service(stripe_settings, engine, stripe_price_id=default) as service:
            add_user(service, 1)
            for fields in ({}, {"price": default}):
                body = {"github_user_id": 1, **fields}
                refused = service.api.post("/billing/subscriptions", json=body)
                assert refused.status_code == 422, (default, fields, refused.text)
                assert refused.json()["detail"][0]["msg"].endswith("for sale: pro-yearly")
            asked = service.api.post(
                "/billing/subscriptions", json={"github_user_id": 1, "price": "pro-monthly"}
            )
            assert "price 'pro-monthly' is not for sale" in asked.text


def test_a_trial_extended_in_stripe_and_an_item_removed_show_in_the_state(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    sub_id = buy(service, emulator, reconciler, 1, card=True, price="pro-monthly", trial=True)
    [row] = subscriptions(service, 1)
    later = emulator.sdk.v1.subscriptions.retrieve(sub_id).trial_end + 10 * DAY
    emulator.sdk.v1.subscriptions.update(sub_id, {"trial_end": later})
    reconciler.drain()
    state = service.api.get("/billing/state", params={"github_user_id": 1}).json()
    assert state["trial_end"] == subscriptions(service, 1)[0]["trial_end"] != row["trial_end"]
    assert state["plan"]["current_period_end"] == state["trial_end"]

    pro = emulator.sdk.v1.subscriptions.retrieve(sub_id)["items"].data[0]
    emulator.sdk.v1.subscriptions.update(
        sub_id,
        {
            "items": [
                {"price": catalog["team-monthly"], "quantity": 3},
                {"id": pro.id, "deleted": True},
            ]
        },
    )
    reconciler.drain()
    state = service.api.get("/billing/state", params={"github_user_id": 1}).json()
    assert (state["plan"]["lookup_key"], state["quantity"]) == ("team-monthly", 3)


def test_a_subscription_of_usage_alone_gains_the_plan_beside_its_usage(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """Its usage item was taken for the plan and replaced by the new price: the period's
    usage so far was never billed."""
    tokens = tokens_for_sale(emulator, reconciler)
    sub_id = buy(service, emulator, reconciler, 3, price="tokens-monthly")
    [usage_item] = emulator.sdk.v1.subscriptions.retrieve(sub_id)["items"].data
    response = manage(service, 3, "change_plan", price="pro-monthly")
    assert response.status_code == 200, response.text
    assert response.json()["billing_portal_session_url"] is None  # through the API
    items = emulator.sdk.v1.subscriptions.retrieve(sub_id)["items"].data
    assert {(item.id == usage_item.id, item.price.id) for item in items} == {
        (True, tokens),
        (False, catalog["pro-monthly"]),
    }
    [row] = subscriptions(service, 3)
    assert (row["plan"]["lookup_key"], row["quantity"]) == ("pro-monthly", 1)


def monthly_beside(
    emulator: Emulator, price_id: str, amount: int, currency: str, lookup_key: str, **more: Any
) -> str:
    """A new monthly price of the product of `price_id`."""
    product = str(emulator.sdk.v1.prices.retrieve(price_id).product)
    params = {"product": product, "unit_amount": amount, "currency": currency,
              "recurring": {"interval": "month"}, "lookup_key": lookup_key, **more}  # fmt: skip
    return str(emulator.sdk.v1.prices.create(params=params).id)  # type: ignore[arg-type]


def test_seats_change_on_a_price_no_longer_sold(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """A subscriber kept on an archived price (its lookup key moved to a new price) could
    change seats only by moving to the new price: the old one was "not for sale"."""
    buy(service, emulator, reconciler, 4, price="team-monthly", quantity=3)
    team = emulator.sdk.v1.prices.retrieve(catalog["team-monthly"])
    monthly_beside(emulator, team.id, 1200, "usd", "team-monthly", transfer_lookup_key=True)
    emulator.sdk.v1.prices.update(team.id, params={"active": False})
    reconciler.drain()
    for fields, seats in (({"quantity": 4}, 4), ({"price": team.id, "quantity": 5}, 5)):
        response = manage(service, 4, "change_plan", **fields)
        assert response.status_code == 200, response.text
        portal = portal_session(emulator, response.json()["billing_portal_session_url"])
        [item] = portal["flow"]["subscription_update_confirm"]["items"]
        assert (item["price"], item["quantity"]) == (None, seats)  # the price stays
        emulator.control("POST", f"billing_portal/sessions/{portal['id']}/confirm", {})
        reconciler.drain()
        [row] = subscriptions(service, 4)
        assert (row["plan"]["stripe_price_id"], row["quantity"]) == (team.id, seats)
    neither = manage(service, 4, "change_plan")
    assert neither.status_code == 422 and "quantity" in neither.text


def test_seats_change_on_an_archived_price_named_by_its_lookup_key(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """Archived, the price keeps its lookup key: the subscription's own price, named so, was
    refused as "not for sale"."""
    buy(service, emulator, reconciler, 6, price="pro-monthly", quantity=2)
    emulator.sdk.v1.prices.update(catalog["pro-monthly"], params={"active": False})
    reconciler.drain()
    response = manage(service, 6, "change_plan", price="pro-monthly", quantity=3)
    assert response.status_code == 200, response.text
    portal = portal_session(emulator, response.json()["billing_portal_session_url"])
    [item] = portal["flow"]["subscription_update_confirm"]["items"]
    assert (item["price"], item["quantity"]) == (None, 3)


def test_a_plan_in_another_currency_is_a_409_that_says_the_way_out(
    service: Service, emulator: Emulator, reconciler: Reconciler, catalog: dict[str, str]
) -> None:
    """Stripe bills a subscription in one currency and refuses an item of another."""
    monthly_beside(emulator, catalog["pro-monthly"], 900, "eur", "pro-monthly-eur")
    reconciler.drain()
    buy(service, emulator, reconciler, 5, price="pro-monthly")
    refused = manage(service, 5, "change_plan", price="pro-monthly-eur")
    assert refused.status_code == 409, refused.text
    assert "bills in usd" in refused.json()["detail"] and "cancel" in refused.json()["detail"]
