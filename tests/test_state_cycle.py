"""The state document through the billing cycle, plan changes and the spend cap, over real
HTTP: the service, the emulator, a reconciler, the notification sender and a receiver that
verifies every delivery.

A declined renewal -> `grace` (with its end) notified; the test clock passes the grace end
with no change at Stripe -> `GET /billing/state` says `blocked` at once, and the sender's sweep
notifies the `blocked` version; the invoice paid -> `active`. A plan change -> the new plan
and seats. Usage past the cap -> `usage.over_spend_cap` notified (usage under it: nothing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.billing.notify import Notifier
from collab_billing.config import Settings
from collab_billing.db.models import BillingNotification
from collab_billing.reconcile.leader import start_in_background
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.conftest import ADMIN_TOKEN
from tests.notify_helpers import NOTIFY_SECRET, Receiver, receiver
from tests.servers import ServerThread
from tests.stripe_helpers import Emulator
from tests.test_billing_cycle import DAY, HOUR, Cycle, emulator_now
from tests.test_usage_api import make_meter, metered_price

Clock = Callable[[], datetime]


class Scene(Cycle):
    """`Cycle` (the service on an injected clock, a reconciler) with the notification sender
    on the same clock, started and stopped at will, and its receiver."""

    def __init__(
        self, cycle: Cycle, settings: Settings, engine: Engine, clock: Clock, hook: Receiver
    ) -> None:
        super().__init__(cycle.api, cycle.reconciler, cycle.emulator)
        self.settings, self.engine, self.clock, self.hook = settings, engine, clock, hook
        self.sender: tuple[threading.Thread, threading.Event] | None = None

    def start_sender(self) -> None:
        notifier = Notifier(self.settings, self.engine, access_clock=self.clock)
        self.sender = start_in_background(notifier.run, "notifier")

    def stop_sender(self) -> None:
        if self.sender is not None:
            thread, stop = self.sender
            stop.set()
            thread.join(30)
            self.sender = None

    def state(self, user: int) -> dict[str, Any]:
        response = self.api.get("/billing/state", params={"github_user_id": user})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def notified(self, user: int, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The user's newest notification once it passes `check` (waiting for it)."""
        self.hook.wait_for(lambda _: bool(self.hook.documents(user)) and check(self.newest(user)))
        return self.newest(user)

    def newest(self, user: int) -> dict[str, Any]:
        return max(self.hook.documents(user), key=lambda d: int(d["version"]))


@contextmanager
def scene(settings: Settings, engine: Engine, emulator: Emulator, clock: Clock) -> Iterator[Scene]:
    with receiver() as hook:
        settings = settings.model_copy(
            update={
                "billing_notify_urls": hook.url,
                "billing_notify_secret": SecretStr(NOTIFY_SECRET),
                "billing_notify_max_backoff_seconds": 0.3,
                "billing_past_due_grace_days": 1,
            }
        )
        app = create_app(
            settings.model_copy(update={"reconcile_enabled": False}), engine, clock=clock
        )
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        reconciler = Reconciler(settings, engine, StripeGateway(settings), access_clock=clock)
        with (
            ServerThread(app) as server,
            httpx.Client(base_url=server.url, timeout=30, headers=auth) as api,
        ):
            running = Scene(Cycle(api, reconciler, emulator), settings, engine, clock, hook)
            running.start_sender()
            try:
                yield running
            finally:
                running.stop_sender()


def iso(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")


def access_is(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda document: bool(document["access"]["state"] == state)


def test_grace_ends_by_time_alone_blocked_is_served_and_notified_then_paid_active(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    clocks = emulator.sdk.v1.test_helpers.test_clocks
    test_clock = clocks.create({"frozen_time": emulator_now(emulator), "name": "state"}).id

    def frozen_time() -> datetime:
        return datetime.fromtimestamp(clocks.retrieve(test_clock).frozen_time, UTC)

    with scene(stripe_settings, engine, emulator, frozen_time) as cycle:
        user = 601
        cycle.add_user(user)
        emulator.sdk.v1.customers.create(
            params={"test_clock": test_clock, "metadata": {"github_user_id": str(user)}}
        )
        cycle.reconciler.drain()  # the user's customer is the one on the test clock
        sub_id = cycle.subscribe(user)
        cycle.reconciler.drain()
        cycle.notified(user, access_is("active"))
        period_end = cycle.sdk.subscriptions.retrieve(sub_id)["items"].data[0].current_period_end

        cycle.decline_renewals(sub_id)
        # The renewal; its draft invoice is finalized and declined an hour later.
        clocks.advance(test_clock, {"frozen_time": period_end + HOUR})
        cycle.reconciler.drain()
        grace = cycle.notified(user, access_is("grace"))
        assert grace["access"] == {"state": "grace", "until": iso(period_end + HOUR + DAY)}
        assert grace["plan"]["status"] == "past_due"
        assert cycle.state(user) == grace

        # The grace day passes; nothing happens at Stripe (its first retry is 3 days later),
        # so no row changes: the stored `grace` is served as `blocked` at once...
        cycle.stop_sender()
        clocks.advance(test_clock, {"frozen_time": period_end + DAY + 2 * HOUR})
        served = cycle.state(user)
        assert served["access"] == {"state": "blocked", "until": None}
        assert served["features"] == [] and served["version"] == grace["version"]
        # ...and the sender's sweep stores and notifies the `blocked` version.
        cycle.start_sender()
        blocked = cycle.notified(user, access_is("blocked"))
        assert blocked["version"] == grace["version"] + 1
        assert cycle.state(user) == blocked

        [overdue] = cycle.view(user)["overdue_invoices"]
        paid = httpx.post(overdue["hosted_invoice_url"], data={"card": "pm_card_visa"})
        assert paid.status_code == 200, paid.text
        cycle.reconciler.drain()
        active = cycle.notified(user, access_is("active"))
        assert active["access"] == {"state": "active", "until": None}
        assert active["plan"]["status"] == "active"
        assert cycle.state(user) == active
        versions = [d["version"] for d in cycle.hook.documents(user)]
        assert versions == sorted(set(versions))


def notification_count(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(BillingNotification)) or 0)


@pytest.fixture
def on_emulator_clock(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> Iterator[Scene]:
    def now() -> datetime:
        return datetime.fromtimestamp(emulator_now(emulator), UTC)

    with scene(stripe_settings, engine, emulator, now) as running:
        yield running


def recurring_price(emulator: Emulator, product: str, amount: int, lookup_key: str) -> str:
    price = emulator.sdk.v1.prices.create(
        params={
            "product": product,
            "unit_amount": amount,
            "currency": "usd",
            "recurring": {"interval": "month"},
            "lookup_key": lookup_key,
        }
    )
    return str(price.id)


def test_a_plan_change_and_usage_past_the_cap_change_the_document(
    on_emulator_clock: Scene, emulator: Emulator, session_factory: sessionmaker[Session]
) -> None:
    cycle, user = on_emulator_clock, 602
    solo = emulator.sdk.v1.products.create(params={"name": "Collab Solo"}).id
    team = emulator.sdk.v1.products.create(params={"name": "Collab Team"}).id
    recurring_price(emulator, solo, 1000, "solo-monthly")
    team_price = recurring_price(emulator, team, 900, "team-monthly")
    tokens = metered_price(emulator, make_meter(emulator), decimal="0.5")  # 0.5 cent a token
    cycle.reconciler.resync("the catalog and the meter, for this test")
    cycle.add_user(user)
    answer = cycle.api.post(
        "/billing/subscriptions", json={"github_user_id": user, "price": "solo-monthly"}
    )
    assert answer.status_code == 200, answer.text
    sub_id = str(emulator.complete_checkout(answer.json()["checkout_session_url"])["subscription"])
    cycle.reconciler.drain()
    solo_doc = cycle.notified(user, access_is("active"))
    assert (solo_doc["plan"]["lookup_key"], solo_doc["quantity"]) == ("solo-monthly", 1)

    # The plan changes, and the usage price joins it (as in Stripe's dashboard).
    item = cycle.sdk.subscriptions.retrieve(sub_id)["items"].data[0].id
    cycle.sdk.subscriptions.update(
        sub_id,
        {"items": [{"id": item, "price": team_price, "quantity": 5}, {"price": tokens}]},
    )
    cycle.reconciler.drain()
    team_doc = cycle.notified(user, lambda d: d["quantity"] == 5)
    plan = team_doc["plan"]
    assert {k: plan[k] for k in ("lookup_key", "product_name", "unit_amount", "currency")} == {
        "lookup_key": "team-monthly",
        "product_name": "Collab Team",
        "unit_amount": 900,
        "currency": "usd",
    }
    assert (plan["interval"], plan["interval_count"], plan["stripe_price_id"]) == (
        "month",
        1,
        team_price,
    )
    listed = cycle.view(user)["subscriptions"][0]["plan"]
    assert {k: plan[k] for k in listed} == listed  # the same plan as the subscriptions' route
    assert team_doc["usage"] == {"max_monthly_spend_cents": None, "over_spend_cap": False}

    cap = {"github_user_id": user, "max_monthly_spend_cents": 100}
    assert cycle.api.put("/billing/preferences", json=cap).status_code == 200
    capped = cycle.notified(user, lambda d: d["usage"]["max_monthly_spend_cents"] == 100)
    assert capped["usage"]["over_spend_cap"] is False

    def record(key: str, value: int) -> dict[str, Any]:
        body = {"github_user_id": user, "meter": "llm_tokens", "value": value}
        response = cycle.api.post("/billing/usage", json={**body, "idempotency_key": key})
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return answer

    before = notification_count(session_factory)
    assert record("under", 100)["over_spend_cap"] is False  # 50 cents: no change, no version
    assert notification_count(session_factory) == before
    assert record("past", 200)["over_spend_cap"] is True  # 150 cents, past the 100 cap
    assert notification_count(session_factory) == before + 1
    over = cycle.notified(user, lambda d: d["usage"]["over_spend_cap"] is True)
    assert over["usage"] == {"max_monthly_spend_cents": 100, "over_spend_cap": True}
    assert over["version"] == capped["version"] + 1
    assert cycle.state(user) == over

    # The renewal starts a new period (the subscription's row changes): nothing used in it yet.
    emulator.past_period_end(sub_id, HOUR)
    cycle.reconciler.drain()
    renewed = cycle.notified(user, lambda d: d["usage"]["over_spend_cap"] is False)
    assert renewed["usage"] == {"max_monthly_spend_cents": 100, "over_spend_cap": False}
    assert renewed["plan"]["current_period_end"] > over["plan"]["current_period_end"]
