"""The billing cycle end to end, driven only through the service's API and Stripe's (the
emulator's) API, a test clock or the emulator's clock moving time: access at every step.

Path A (a test clock): checkout -> active; renewal paid -> active; card declined at renewal
-> grace -> blocked once the grace days pass -> checkout refused 409 with the invoice's page
-> `pay_invoice` answers that page -> paid there -> active again, and no overdue gate.
Path B (the emulator's clock): declined, retried 3, 5 and 7 days later, canceled for
`payment_failed` -> blocked while the invoice is open -> paid -> none, checkout open again.

The service judges grace by an injected clock (`create_app(clock=...)`): here the test
clock's frozen time, or the emulator's clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from collab_billing.api.app import create_app
from collab_billing.cli import app as cli
from collab_billing.config import Settings
from collab_billing.db.models import BillingState, BillingSubscription, ReconcilerState
from collab_billing.dev_clock import MADE_BY_DEV
from collab_billing.reconcile.run import Reconciler
from collab_billing.reconcile.signals import ActivitySignals
from collab_billing.stripe_gateway import StripeGateway
from tests.conftest import ADMIN_TOKEN
from tests.ops_helpers import running_service, service_env, subscribe, wait_until
from tests.servers import ServerThread
from tests.stripe_helpers import Emulator

DAY = 86_400
HOUR = 3_600


class Cycle:
    """The service (real HTTP, its clock injected) and a reconciler to apply Stripe's events."""

    def __init__(self, api: httpx.Client, reconciler: Reconciler, emulator: Emulator) -> None:
        self.api = api
        self.reconciler = reconciler
        self.emulator = emulator
        self.sdk = emulator.sdk.v1

    def view(self, user: int) -> dict[str, Any]:
        self.reconciler.drain()
        response = self.api.get("/billing/subscriptions", params={"github_user_id": user})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def access(self, user: int) -> str:
        view = self.view(user)
        assert view["has_active_subscription"] is (view["access"]["state"] in ("active", "grace"))
        return str(view["access"]["state"])

    def checkout(self, user: int) -> httpx.Response:
        return self.api.post("/billing/subscriptions", json={"github_user_id": user})

    def subscribe(self, user: int) -> str:
        response = self.checkout(user)
        assert response.status_code == 200, response.text
        done = self.emulator.complete_checkout(response.json()["checkout_session_url"])
        return str(done["subscription"])

    def decline_renewals(self, sub_id: str) -> None:
        """The customer's card now declines: Stripe's `pm_card_chargeCustomerFail`."""
        customer = str(self.sdk.subscriptions.retrieve(sub_id).customer)
        card = self.sdk.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer})
        self.sdk.subscriptions.update(sub_id, {"default_payment_method": card.id})

    def past_due(self, user: int) -> str:
        """The user subscribes, and the renewal a month later is declined: in grace."""
        self.add_user(user)
        sub_id = self.subscribe(user)
        self.decline_renewals(sub_id)
        self.emulator.past_period_end(sub_id, HOUR)
        assert self.access(user) == "grace"
        return sub_id

    def add_user(self, user: int) -> None:
        body = {"github_user_id": user, "github_login": f"user{user}"}
        assert self.api.post("/users", json=body).status_code in (200, 201)


def running(
    settings: Settings, engine: Engine, emulator: Emulator, clock: Callable[[], datetime]
) -> Iterator[Cycle]:
    app = create_app(settings.model_copy(update={"reconcile_enabled": False}), engine, clock=clock)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=auth) as api,
    ):
        yield Cycle(api, Reconciler(settings, engine, StripeGateway(settings)), emulator)


def emulator_now(emulator: Emulator) -> int:
    now: int = httpx.get(f"{emulator.url}/_emulator/clock").json()["now"]
    return now


@pytest.fixture
def test_clock(emulator: Emulator) -> str:
    clock = emulator.sdk.v1.test_helpers.test_clocks.create(
        {"frozen_time": emulator_now(emulator), "name": "billing cycle"}
    )
    return clock.id


@pytest.fixture
def on_test_clock(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, test_clock: str
) -> Iterator[Cycle]:
    clocks = emulator.sdk.v1.test_helpers.test_clocks

    def frozen_time() -> datetime:
        return datetime.fromtimestamp(clocks.retrieve(test_clock).frozen_time, UTC)

    yield from running(stripe_settings, engine, emulator, frozen_time)


@pytest.fixture
def on_emulator_clock(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> Iterator[Cycle]:
    def now() -> datetime:
        return datetime.fromtimestamp(emulator_now(emulator), UTC)

    yield from running(stripe_settings, engine, emulator, now)


def test_declined_renewal_grace_blocked_then_paid(
    on_test_clock: Cycle, emulator: Emulator, test_clock: str
) -> None:
    cycle, user = on_test_clock, 501
    clocks = emulator.sdk.v1.test_helpers.test_clocks
    cycle.add_user(user)
    # The user's Stripe customer lives on the test clock (matched by its metadata).
    emulator.sdk.v1.customers.create(
        params={"test_clock": test_clock, "metadata": {"github_user_id": str(user)}}
    )
    assert cycle.access(user) == "none"

    sub_id = cycle.subscribe(user)
    assert cycle.access(user) == "active"
    period_end = cycle.sdk.subscriptions.retrieve(sub_id)["items"].data[0].current_period_end

    clocks.advance(test_clock, {"frozen_time": period_end + HOUR})  # renewal, paid
    view = cycle.view(user)
    assert view["access"] == {"state": "active", "until": None}
    invoices = cycle.api.get("/billing/invoices", params={"github_user_id": user}).json()
    assert [i["status"] for i in invoices["invoices"]] == ["paid", "paid"]
    assert invoices["invoices"][0]["billing_reason"] == "subscription_cycle"

    cycle.decline_renewals(sub_id)
    renewal = cycle.sdk.subscriptions.retrieve(sub_id)["items"].data[0].current_period_end
    # The renewal: its invoice is a draft for an hour, neither overdue nor held against access.
    clocks.advance(test_clock, {"frozen_time": renewal + HOUR // 2})
    view = cycle.view(user)
    assert view["subscriptions"][0]["status"] == "active"
    assert (view["access"], view["overdue_invoices"]) == ({"state": "active", "until": None}, [])
    newest = cycle.api.get("/billing/invoices", params={"github_user_id": user, "limit": 1})
    [draft] = newest.json()["invoices"]
    assert (draft["status"], draft["billing_reason"], draft["attempt_count"]) == (
        "draft",
        "subscription_cycle",
        0,
    )
    assert (draft["hosted_invoice_url"], draft["number"], draft["finalized_at"]) == (None,) * 3
    # The renewal's draft is finalized and declined an hour later: grace counts from then.
    clocks.advance(test_clock, {"frozen_time": renewal + HOUR})
    view = cycle.view(user)
    assert view["subscriptions"][0]["status"] == "past_due"
    assert view["access"]["state"] == "grace"
    assert view["has_active_subscription"] is True
    until = datetime.fromisoformat(view["access"]["until"])
    assert until == datetime.fromtimestamp(renewal + HOUR, UTC) + timedelta(days=3)
    [overdue] = view["overdue_invoices"]
    invoice = cycle.sdk.invoices.retrieve(overdue["id"])
    assert overdue == {
        "id": invoice.id,
        "amount_remaining": 2000,
        "currency": "usd",
        "hosted_invoice_url": invoice.hosted_invoice_url,
    }

    clocks.advance(test_clock, {"frozen_time": renewal + 3 * DAY + HOUR})  # retry declined
    assert cycle.sdk.invoices.retrieve(invoice.id).attempt_count == 2
    view = cycle.view(user)
    assert view["subscriptions"][0]["status"] == "past_due"
    assert view["access"] == {"state": "blocked", "until": None}
    assert view["has_active_subscription"] is False

    refused = cycle.checkout(user)
    assert refused.status_code == 409
    assert invoice.id in refused.json()["detail"]
    assert refused.json()["hosted_invoice_url"] == invoice.hosted_invoice_url
    manage = {"github_user_id": user, "intent": "pay_invoice"}
    answer = cycle.api.post("/billing/subscriptions/manage", json=manage)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"hosted_invoice_url": invoice.hosted_invoice_url}

    # The user pays on the invoice's page with a card that works.
    paid = httpx.post(answer.json()["hosted_invoice_url"], data={"card": "pm_card_visa"})
    assert paid.status_code == 200, paid.text
    view = cycle.view(user)
    assert view["access"] == {"state": "active", "until": None}
    assert view["overdue_invoices"] == []
    gate = cycle.checkout(user)  # the overdue gate is open: only the active plan stands
    assert gate.status_code == 409 and "hosted_invoice_url" not in gate.json()
    assert "already has an active subscription" in gate.json()["detail"]
    newest = cycle.api.get("/billing/invoices", params={"github_user_id": user, "limit": 1})
    assert newest.json()["invoices"][0]["status"] == "paid"
    assert newest.json()["has_more"] is True


def test_retries_exhausted_cancel_for_payment_failed(
    on_emulator_clock: Cycle, emulator: Emulator
) -> None:
    cycle, user = on_emulator_clock, 502
    cycle.add_user(user)
    sub_id = cycle.subscribe(user)
    assert cycle.access(user) == "active"
    cycle.decline_renewals(sub_id)

    emulator.past_period_end(sub_id, HOUR)
    assert cycle.access(user) == "grace"
    for days in (3, 5, 7):  # Stripe's retries, each failing
        emulator.control("POST", "clock/advance", {"seconds": days * DAY})
    sub = cycle.sdk.subscriptions.retrieve(sub_id)
    assert sub.status == "canceled"
    assert sub.cancellation_details and sub.cancellation_details.reason == "payment_failed"
    view = cycle.view(user)
    assert view["subscriptions"][0]["status"] == "canceled"
    assert view["access"]["state"] == "blocked"
    [overdue] = view["overdue_invoices"]
    assert cycle.checkout(user).json()["hosted_invoice_url"] == overdue["hosted_invoice_url"]

    cycle.sdk.invoices.pay(overdue["id"], {"payment_method": "pm_card_visa"})
    view = cycle.view(user)
    assert view["access"] == {"state": "none", "until": None}
    assert view["overdue_invoices"] == []
    assert cycle.checkout(user).status_code == 200  # the gate is open again
    nothing = cycle.api.post(
        "/billing/subscriptions/manage", json={"github_user_id": user, "intent": "pay_invoice"}
    )
    assert nothing.status_code == 409


def test_a_past_due_customer_deleted_in_stripe_leaves_the_user_free_to_subscribe_again(
    on_emulator_clock: Cycle, emulator: Emulator
) -> None:
    """Its open invoice, which no one can pay now, kept the user 409 at every Checkout and
    listed as overdue, for good."""
    cycle, user = on_emulator_clock, 503
    sub_id = cycle.past_due(user)
    customer = str(cycle.sdk.subscriptions.retrieve(sub_id).customer)
    cycle.sdk.customers.delete(customer)
    view = cycle.view(user)
    assert (view["access"]["state"], view["overdue_invoices"]) == ("none", [])
    assert cycle.checkout(user).status_code == 200  # a new customer
    view = cycle.view(user)
    assert (view["access"]["state"], view["overdue_invoices"]) == ("none", [])


def test_a_customer_canceled_for_debt_then_deleted_in_stripe_is_free_on_every_route(
    on_emulator_clock: Cycle, emulator: Emulator
) -> None:
    """Its subscription had ended: the deletion changed no subscription, and the stored state
    document (`GET /billing/state`, the notifications) kept `blocked` while `GET
    /billing/subscriptions` said `none`."""
    cycle, user = on_emulator_clock, 508
    sub_id = cycle.past_due(user)
    for days in (3, 5, 7):  # Stripe's retries, each failing: canceled, the invoice open
        emulator.control("POST", "clock/advance", {"seconds": days * DAY})
    assert cycle.access(user) == "blocked"
    blocked = cycle.api.get("/billing/state", params={"github_user_id": user}).json()
    assert blocked["access"]["state"] == "blocked"
    cycle.sdk.customers.delete(str(cycle.sdk.subscriptions.retrieve(sub_id).customer))
    view = cycle.view(user)
    state = cycle.api.get("/billing/state", params={"github_user_id": user}).json()
    assert view["access"] == state["access"] == {"state": "none", "until": None}
    assert state["version"] == blocked["version"] + 1


def test_unpaid_after_retries_then_paid_by_api(
    on_emulator_clock: Cycle, emulator: Emulator
) -> None:
    """Stripe's other setting: the subscription becomes `unpaid` (blocked at once), and
    paying the invoice makes it active again."""
    emulator.control("POST", "billing", {"retry_days": [1], "after_retries": "unpaid"})
    cycle, user = on_emulator_clock, 504
    sub_id = cycle.past_due(user)
    emulator.control("POST", "clock/advance", {"seconds": DAY})
    view = cycle.view(user)
    assert (view["subscriptions"][0]["status"], view["access"]["state"]) == ("unpaid", "blocked")
    seen_elsewhere = ActivitySignals(cycle.reconciler.factory)  # a `reconcile` process's view
    before = seen_elsewhere.read().last_activity_at
    time.sleep(1.05)  # kept in whole seconds
    manage = {"github_user_id": user, "intent": "pay_invoice", "subscription_id": sub_id}
    hosted = cycle.api.post("/billing/subscriptions/manage", json=manage).json()
    assert (seen_elsewhere.read().last_activity_at or 0) > (before or 0)  # about to pay: poll fast
    assert hosted == {"hosted_invoice_url": view["overdue_invoices"][0]["hosted_invoice_url"]}
    cycle.sdk.invoices.pay(view["overdue_invoices"][0]["id"], {"payment_method": "pm_card_visa"})
    assert cycle.access(user) == "active"


def test_a_voided_failed_invoice_leaves_grace_that_ends(
    on_emulator_clock: Cycle, emulator: Emulator
) -> None:
    """Stripe keeps a subscription past due when its failed invoice is voided: grace still
    ends, dated by the period's start, then blocked."""
    cycle, user = on_emulator_clock, 505
    cycle.add_user(user)
    sub_id = cycle.subscribe(user)
    cycle.decline_renewals(sub_id)
    renewal = emulator.past_period_end(sub_id, HOUR)

    def grace(since: int) -> dict[str, str]:
        return {
            "state": "grace",
            "until": f"{datetime.fromtimestamp(since + 3 * DAY, UTC):%Y-%m-%dT%H:%M:%SZ}",
        }

    view = cycle.view(user)
    # Dated by the failed payment: the renewal's draft finalized and charged an hour on.
    assert view["access"] == grace(renewal + HOUR)
    cycle.sdk.invoices.void_invoice(view["overdue_invoices"][0]["id"])
    view = cycle.view(user)
    assert (view["subscriptions"][0]["status"], view["overdue_invoices"]) == ("past_due", [])
    assert view["access"] == grace(renewal)  # dated by the period's start
    emulator.control("POST", "clock/advance", {"seconds": 3 * DAY})
    assert cycle.sdk.subscriptions.retrieve(sub_id).status == "past_due"
    assert cycle.access(user) == "blocked"


def test_an_invoice_marked_uncollectible_is_still_owed_and_payable(
    on_emulator_clock: Cycle, emulator: Emulator
) -> None:
    """Stripe still takes the payment of an invoice marked uncollectible (a bad debt, with no
    more automatic attempts). The user, past due, was shown nothing owed, `pay_invoice` was a
    409 and Checkout "already subscribed": blocked for good once grace ended."""
    cycle, user = on_emulator_clock, 507
    sub_id = cycle.past_due(user)
    [owed] = cycle.view(user)["overdue_invoices"]
    cycle.sdk.invoices.mark_uncollectible(owed["id"])
    emulator.control("POST", "clock/advance", {"seconds": 3 * DAY})
    assert cycle.sdk.subscriptions.retrieve(sub_id).status == "past_due"
    view = cycle.view(user)
    assert view["access"]["state"] == "blocked"
    assert [i["id"] for i in view["overdue_invoices"]] == [owed["id"]]
    manage = {"github_user_id": user, "intent": "pay_invoice"}
    paying = cycle.api.post("/billing/subscriptions/manage", json=manage)
    assert paying.json() == {"hosted_invoice_url": owed["hosted_invoice_url"]}
    refused = cycle.checkout(user)
    assert refused.status_code == 409 and refused.json()["invoice"]["id"] == owed["id"]
    cycle.sdk.invoices.pay(owed["id"], {"payment_method": "pm_card_visa"})
    assert cycle.access(user) == "active"


def test_two_subscriptions_in_grace_grant_the_grace_that_ends_last(
    on_emulator_clock: Cycle, emulator: Emulator
) -> None:
    """Access took the older subscription's grace: when it ended, `GET /billing/state`
    blocked the user while the newer one's grace still ran."""
    cycle, user = on_emulator_clock, 506
    cycle.add_user(user)
    first = cycle.subscribe(user)
    customer = str(cycle.sdk.subscriptions.retrieve(first).customer)
    emulator.control("POST", "clock/advance", {"seconds": 2 * DAY})
    price = cycle.reconciler.settings.stripe_price_id or ""
    card = cycle.sdk.payment_methods.attach("pm_card_visa", {"customer": customer})
    second = cycle.sdk.subscriptions.create(
        {"customer": customer, "items": [{"price": price}], "default_payment_method": card.id}
    )
    cycle.decline_renewals(first)
    cycle.decline_renewals(second.id)
    emulator.past_period_end(second.id, 2 * HOUR)  # its renewal's draft hour, then declined
    failed = cycle.sdk.subscriptions.retrieve(second.id).latest_invoice or ""
    charged = cycle.sdk.invoices.retrieve(failed).status_transitions.finalized_at or 0
    until = f"{datetime.fromtimestamp(charged + 3 * DAY, UTC):%Y-%m-%dT%H:%M:%SZ}"
    view = cycle.view(user)
    assert [s["status"] for s in view["subscriptions"]] == ["past_due", "past_due"]
    assert view["access"] == {"state": "grace", "until": until}
    # The older grace ends first: the user is still in the newer one, on both routes.
    emulator.control("POST", "clock/advance", {"seconds": 2 * DAY})
    view = cycle.view(user)
    state = cycle.api.get("/billing/state", params={"github_user_id": user}).json()
    assert view["access"] == state["access"] == {"state": "grace", "until": until}


def test_invoice_pages_and_bad_input(on_emulator_clock: Cycle, emulator: Emulator) -> None:
    cycle, user = on_emulator_clock, 503
    cycle.add_user(user)
    sub_id = cycle.subscribe(user)
    for _ in range(3):
        emulator.past_period_end(sub_id, HOUR)
    cycle.reconciler.drain()
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"github_user_id": user, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = cycle.api.get("/billing/invoices", params=params).json()
        seen += [invoice["id"] for invoice in page["invoices"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            assert cursor is None
            break
    stripe_ids = [i.id for i in cycle.sdk.invoices.list(params={"limit": 100}).data]
    assert seen == stripe_ids and len(seen) == 4  # newest first, like Stripe's list

    get = cycle.api.get
    assert get("/billing/invoices", params={"github_user_id": 999}).status_code == 404
    for limit in ("0", "101", "+5", "1_0", " 5", "5.0"):  # digits alone, as ids are read
        assert (
            get("/billing/invoices", params={"github_user_id": user, "limit": limit}).status_code
            == 422
        )
    bad_cursor = {"github_user_id": user, "cursor": "nope"}
    assert get("/billing/invoices", params=bad_cursor).status_code == 422
    unknown = {"github_user_id": user, "cursor": "in_unknown"}
    assert get("/billing/invoices", params=unknown).status_code == 404
    wrong = {"github_user_id": user, "intent": "pay_everything"}
    assert cycle.api.post("/billing/subscriptions/manage", json=wrong).status_code == 422


def test_a_jump_past_stripes_30_days_of_events_is_caught_up_by_a_resync(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Under `dev` the emulator's clock is the service's: moved 65 days on, the events of
    the renewal and the cancellation are past Stripe's 30 days and gone from the Events API.
    The service's own reconciler sees it by that clock and resyncs (it went on polling,
    silently, leaving the user `active` for good)."""

    def now() -> datetime:
        return datetime.fromtimestamp(emulator_now(emulator), UTC)

    with running_service(stripe_settings, engine, now, reconcile_enabled=True) as service:
        sub_id = subscribe(service, emulator, 1)

        def status() -> str | None:
            rows = service.api.get("/billing/subscriptions", params={"github_user_id": 1})
            found = rows.json()["subscriptions"]
            return str(found[0]["status"]) if found else None

        wait_until(lambda: status() == "active", what="the subscription applied")
        emulator.sdk.v1.subscriptions.update(sub_id, {"cancel_at_period_end": True})
        emulator.control("POST", "clock/advance", {"seconds": 65 * 86_400})
        wait_until(lambda: status() == "canceled", what="the cancellation, 35 days ago")


def test_a_jump_past_stripes_30_days_while_a_resync_lists_is_caught_up_by_another(
    on_emulator_clock: Cycle, stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """The first poll's resync lists the subscriptions, then the clock moves 65 days on
    before the poll reads events: the renewal and the cancellation of that time are gone
    from the Events API before anything read them. A resync counts as a poll from its
    start, so another resync catches them up (the poll counted from after the jump, and
    the user stayed `active` for good)."""
    cycle = on_emulator_clock
    cycle.add_user(1)
    sub_id = cycle.subscribe(1)
    cycle.sdk.subscriptions.update(sub_id, {"cancel_at_period_end": True})
    emulator.control("DELETE", "requests")
    jumped: list[int] = []

    def clock() -> float:
        """The emulator's; it jumps 65 days once the subscriptions have been listed."""
        listed = emulator.control("GET", "requests")["by_route"].get("GET /v1/subscriptions")
        if listed and not jumped:
            jumped.append(emulator.control("POST", "clock/advance", {"seconds": 65 * DAY})["now"])
        return float(emulator.now())

    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings), clock=clock)
    reconciler.drain()
    assert jumped, "the resync listed no subscription"
    with reconciler.factory() as session:
        status = session.scalars(select(BillingSubscription.stripe_subscription_status)).one()
    assert status == "canceled"


def test_an_upgrade_invoiced_at_once_is_owed_like_a_renewal_when_declined(
    on_emulator_clock: Cycle, emulator: Emulator
) -> None:
    """More seats mid-period with `proration_behavior=always_invoice` (a portal or dashboard
    set to invoice prorations at once): Stripe invoices the prorated difference now. Paid,
    nothing changes for the user; declined, the subscription is past due and the proration
    invoice is the overdue one: grace from its failed payment, `pay_invoice` answers its page,
    and paying it restores access."""
    cycle, user = on_emulator_clock, 510
    cycle.add_user(user)
    sub_id = cycle.subscribe(user)
    emulator.control("POST", "clock/advance", {"seconds": 10 * DAY})
    item = cycle.sdk.subscriptions.retrieve(sub_id)["items"].data[0]
    paid = cycle.sdk.subscriptions.update(
        sub_id, {"items": [{"id": item.id, "quantity": 2}], "proration_behavior": "always_invoice"}
    )
    invoice = cycle.sdk.invoices.retrieve(str(paid.latest_invoice))
    assert (invoice.billing_reason, invoice.status) == ("subscription_update", "paid")
    view = cycle.view(user)
    assert (view["access"]["state"], view["overdue_invoices"]) == ("active", [])
    assert view["subscriptions"][0]["quantity"] == 2

    cycle.decline_renewals(sub_id)
    emulator.control("POST", "clock/advance", {"seconds": DAY})
    at = emulator_now(emulator)
    declined = cycle.sdk.subscriptions.update(
        sub_id, {"items": [{"id": item.id, "quantity": 3}], "proration_behavior": "always_invoice"}
    )
    owed = cycle.sdk.invoices.retrieve(str(declined.latest_invoice))
    assert owed.status == "open" and 0 < owed.amount_due < item.price.unit_amount
    view = cycle.view(user)
    assert view["subscriptions"][0]["status"] == "past_due"
    assert [i["id"] for i in view["overdue_invoices"]] == [owed.id]
    until = f"{datetime.fromtimestamp(at + 3 * DAY, UTC):%Y-%m-%dT%H:%M:%SZ}"
    assert view["access"] == {"state": "grace", "until": until}
    manage = {"github_user_id": user, "intent": "pay_invoice"}
    hosted = cycle.api.post("/billing/subscriptions/manage", json=manage).json()
    assert hosted == {"hosted_invoice_url": owed.hosted_invoice_url}
    cycle.sdk.invoices.pay(owed.id, {"payment_method": "pm_card_visa"})
    view = cycle.view(user)
    assert (view["access"]["state"], view["overdue_invoices"]) == ("active", [])
    assert view["subscriptions"][0]["status"] == "active"


def test_a_resync_beside_dev_judges_access_by_the_emulators_clock(
    on_emulator_clock: Cycle,
    emulator: Emulator,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`collab-billing resync` run on `dev`'s database writes the documents as of the
    emulator's time (as `dev` does): it stored and notified an ended grace again, judged by
    this machine's clock a month behind."""
    cycle, user = on_emulator_clock, 506
    cycle.past_due(user)
    emulator.control("POST", "clock/advance", {"seconds": 4 * DAY})  # the grace is over
    with cycle.reconciler.factory() as session, session.begin():
        session.add(ReconcilerState(name=MADE_BY_DEV, value="1"))
    for name, value in service_env(database_url, emulator).items():
        monkeypatch.setenv(name, value)
    resynced = CliRunner().invoke(cli, ["resync"])
    assert resynced.exit_code == 0, resynced.output
    with cycle.reconciler.factory() as session:
        stored = session.scalars(select(BillingState.document)).one()
    assert stored is not None and stored["access"]["state"] == "blocked"
