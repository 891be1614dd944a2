"""Usage ingest, usage and cost this period, and the spend cap, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.config import Settings
from collab_billing.db.models import BillingPrice, BillingUsageEvent
from collab_billing.mirror.meters import sync_meters
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.servers import ServerThread
from tests.stripe_helpers import Emulator
from tests.test_billing_api import AUTH, add_user, serve, subscribe

# The lookup key of the `meter` fixture's price, which every Checkout sells beside the plan.
USAGE_PRICE = "tokens-monthly"


def serve_selling_usage(settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    yield from serve(settings.model_copy(update={"billing_usage_prices": USAGE_PRICE}), engine)


@pytest.fixture
def api(stripe_settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    yield from serve_selling_usage(stripe_settings, engine)


def make_meter(emulator: Emulator, event_name: str = "llm_tokens", formula: str = "sum") -> str:
    meter = emulator.sdk.v1.billing.meters.create(
        params={
            "display_name": event_name,
            "event_name": event_name,
            "default_aggregation": {"formula": formula},  # type: ignore[typeddict-item]
        }
    )
    return str(meter.id)


def metered_price(
    emulator: Emulator, meter: str, decimal: str = "0.5", lookup_key: str | None = None
) -> str:
    price = emulator.sdk.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": decimal,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
            "product_data": {"name": "Tokens"},
            **({"lookup_key": lookup_key} if lookup_key else {}),
        }
    )
    return str(price.id)


@pytest.fixture
def meter(emulator: Emulator, stripe_settings: Settings, session_factory: Any) -> str:
    meter_id = make_meter(emulator)
    metered_price(emulator, meter_id, lookup_key=USAGE_PRICE)
    resync(session_factory, StripeGateway(stripe_settings))  # meters and prices
    return meter_id


def usage_price_of(factory: sessionmaker[Session], meter_id: str) -> str:
    with factory() as session:
        return session.scalars(
            select(BillingPrice.stripe_price_id).where(BillingPrice.stripe_meter_id == meter_id)
        ).one()


JSON = {"content-type": "application/json"}


def record(user: int, key: str, value: float = 1, **extra: Any) -> dict[str, Any]:
    return {"github_user_id": user, "meter": "llm_tokens", "value": value,
            "idempotency_key": key, **extra}  # fmt: skip


def stored(factory: sessionmaker[Session]) -> list[tuple[str, str]]:
    with factory() as session:
        rows = session.execute(
            select(BillingUsageEvent.idempotency_key, BillingUsageEvent.value).order_by(
                BillingUsageEvent.id
            )
        ).all()
    return [(key, f"{value.normalize():f}") for key, value in rows]


def test_one_record_or_a_batch_and_duplicates_answered_not_stored(
    api: httpx.Client, meter: str, session_factory: sessionmaker[Session]
) -> None:
    add_user(api, 7)
    one = api.post("/billing/usage", json=record(7, "a", 2.5))
    assert one.status_code == 202, one.text
    assert one.json() == {"accepted": 1, "duplicates": 0, "over_spend_cap": False}
    batch = [record(7, "a", 9), record(7, "b", 3), record(7, "b", 4), record(7, "c", 1)]
    answer = api.post("/billing/usage", json={"events": batch})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": 2, "duplicates": 2, "over_spend_cap": False}
    assert stored(session_factory) == [("a", "2.5"), ("b", "3"), ("c", "1")]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (record(404, "k"), "github_user_id 404"),
        ({**record(7, "k"), "meter": "nope"}, "'nope'"),
        (record(7, "k", 0), "greater than 0"),
        (record(7, "k", -1), "greater than 0"),
        ({**record(7, "k"), "value": "1"}, "JSON number"),
        (record(7, "k", 1234567.123456789012), "15 significant digits"),
        ({k: v for k, v in record(7, "k").items() if k != "idempotency_key"}, "idempotency_key"),
        # Timestamps relative to when the test runs (the list is made at collection).
        # 34 days and a minute: Stripe takes it, but it may no longer be at its sending.
        (record(7, "k", timestamp=-(34 * 86400 + 60)), "34 days"),
        (record(7, "k", timestamp=600), "5 minutes"),
        ({"events": []}, "at least 1"),
        ({"events": [record(7, f"k{i}") for i in range(1001)]}, "at most 1000"),
        ({**record(7, "k"), "extra": 1}, "extra"),
        # PostgreSQL cannot store NUL in text: refused like any other control character.
        (record(7, "nul\u0000key"), "idempotency_key"),
        ({**record(7, "k"), "meter": "llm\u0000tokens"}, "meter"),
        (record(7, "tab\tkey"), "idempotency_key"),
    ],
)
def test_bad_records_are_422_naming_the_problem_and_store_nothing(
    api: httpx.Client,
    meter: str,
    session_factory: sessionmaker[Session],
    body: dict[str, Any],
    named: str,
) -> None:
    add_user(api, 7)
    if "timestamp" in body:
        body = {**body, "timestamp": int(time.time()) + body["timestamp"]}
    batch = {"events": [record(7, "fine"), body]} if "events" not in body else body
    response = api.post("/billing/usage", json=batch)
    assert response.status_code == 422, response.text
    assert named in response.text
    assert stored(session_factory) == []


@pytest.mark.parametrize(
    "value",
    [
        "0.30000000000000001",
        "2.0000000000000000001",
        "100000000000000000.5",
        "0.1000000000000000000001",
    ],
)
def test_a_value_is_judged_as_written_not_as_a_double(
    api: httpx.Client, meter: str, session_factory: sessionmaker[Session], value: str
) -> None:
    """Read as a double, 0.30000000000000001 was 0.3 before any check saw its digits: accepted,
    and billed rounded."""
    add_user(api, 7)

    def send(value: str, key: str) -> httpx.Response:
        body = f'{{"github_user_id": 7, "meter": "llm_tokens", "value": {value}, '
        body += f'"idempotency_key": "{key}"}}'
        return api.post("/billing/usage", content=body, headers=JSON)

    refused = send(value, "k")
    assert refused.status_code == 422, refused.text
    assert "15 significant digits" in refused.text or "12 decimal places" in refused.text
    assert send("1.5e3", "f").status_code == 202
    assert stored(session_factory) == [("f", "1500")]


def test_meters_are_read_from_stripe(
    emulator: Emulator, stripe_settings: Settings, session_factory: sessionmaker[Session],
    api: httpx.Client,
) -> None:  # fmt: skip
    add_user(api, 7)
    assert api.post("/billing/usage", json=record(7, "k")).status_code == 422
    make_meter(emulator)
    assert sync_meters(session_factory, StripeGateway(stripe_settings)) == 1
    assert api.post("/billing/usage", json=record(7, "k")).status_code == 202


def usage_of(api: httpx.Client, user: int) -> dict[str, Any]:
    answer = api.get("/billing/usage", params={"github_user_id": user})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_past_the_cap_ingest_still_records_and_the_period_rolls_with_the_renewal(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,
    stripe_settings: Settings,
    engine: Engine,
) -> None:

    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    add_user(api, 7)
    subscribe(api, emulator, reconciler, 7)
    before = usage_of(api, 7)
    assert before["period_source"] == "subscription"
    assert before["meters"][0]["total"] == "0"
    preferences = {"github_user_id": 7, "max_monthly_spend_cents": 100}
    assert api.put("/billing/preferences", json=preferences).json() == preferences
    assert api.get("/billing/preferences", params={"github_user_id": 7}).json() == preferences

    under = api.post("/billing/usage", json=record(7, "a", 150))  # 150 x 0.5 cent = 75 cents
    assert under.json() == {"accepted": 1, "duplicates": 0, "over_spend_cap": False}
    over = api.post("/billing/usage", json=record(7, "b", 100))  # 125 cents > 100
    assert over.status_code == 202
    assert over.json() == {"accepted": 1, "duplicates": 0, "over_spend_cap": True}
    now = usage_of(api, 7)
    assert now["meters"][0]["total"] == "250"
    assert now["meters"][0]["estimated_cost_cents"] == 125
    assert (now["estimated_cost_cents"], now["over_spend_cap"]) == (125, True)

    # The renewal starts a new period: the total restarts (and the user is under the cap).
    period_end = now["period_end"]
    emulator.control("POST", "clock/advance", {"seconds": 31 * 86400})
    reconciler.drain()
    renewed = usage_of(api, 7)
    assert renewed["period_start"] == period_end
    assert renewed["meters"][0]["total"] == "0"
    assert renewed["over_spend_cap"] is False

    # No cap: never over.
    api.put("/billing/preferences", json={"github_user_id": 7, "max_monthly_spend_cents": None})
    assert usage_of(api, 7)["max_monthly_spend_cents"] is None


def test_a_trials_usage_costs_nothing(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """Stripe invoices a trial's usage at nothing: a trialing user is never past the cap."""
    from collab_billing.reconcile.run import Reconciler

    add_user(api, 9)
    customer = emulator.sdk.v1.customers.create(params={"metadata": {"github_user_id": "9"}})
    emulator.sdk.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [
                {"price": stripe_settings.stripe_price_id or ""},
                {"price": usage_price_of(session_factory, meter)},
            ],
            "trial_period_days": 7,
        }
    )
    Reconciler(stripe_settings, engine, StripeGateway(stripe_settings)).drain()
    api.put("/billing/preferences", json={"github_user_id": 9, "max_monthly_spend_cents": 100})
    answer = api.post("/billing/usage", json=record(9, "a", 1000))  # 500 cents, were it billed
    assert answer.json() == {"accepted": 1, "duplicates": 0, "over_spend_cap": False}
    usage = usage_of(api, 9)
    assert (usage["period_source"], usage["meters"][0]["total"]) == ("subscription", "1000")
    assert (usage["estimated_cost_cents"], usage["over_spend_cap"]) == (0, False)


def test_usage_without_a_subscription_is_the_calendar_month(api: httpx.Client, meter: str) -> None:
    add_user(api, 8)
    found = usage_of(api, 8)
    assert found["period_source"] == "calendar_month"
    assert found["period_start"].endswith("-01T00:00:00Z")
    assert api.get("/billing/usage", params={"github_user_id": 404}).status_code == 404
    bad = {"github_user_id": 8, "max_monthly_spend_cents": -1}
    assert api.put("/billing/preferences", json=bad).status_code == 422


def test_a_periods_total_is_exact(api: httpx.Client, meter: str) -> None:
    """0.1 + 2.7 + 0.2 is 3, as Stripe sums it: SQLite summed the values as doubles, to
    3.00000000000000044..., past a tier's edge of 3 units."""
    add_user(api, 9)
    records = [record(9, f"exact-{n}", value) for n, value in enumerate((0.1, 2.7, 0.2))]
    assert api.post("/billing/usage", json={"events": records}).status_code == 202
    [found] = usage_of(api, 9)["meters"]
    assert found["total"] == "3"


def test_usage_is_timed_and_checked_by_the_services_clock(
    stripe_settings: Settings,
    engine: Engine,
    emulator: Emulator,
    meter: str,
    session_factory: sessionmaker[Session],
) -> None:
    """`collab-billing dev` runs on the emulator's clock, which its README moves on by days:
    a record left without a timestamp is stamped by that clock (not the machine's, which the
    emulator's meter events would refuse as 35 days old), and one stamped by it is not "ahead"."""
    emulator.control("POST", "clock/advance", {"seconds": 40 * 86_400})
    emulator_now = httpx.get(f"{emulator.url}/_emulator/clock").json()["now"]
    app = create_app(
        stripe_settings.model_copy(update={"reconcile_enabled": False}),
        engine,
        clock=lambda: datetime.fromtimestamp(emulator_now, UTC),
    )
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as api,
    ):
        add_user(api, 9)
        unstamped = api.post("/billing/usage", json=record(9, "unstamped"))
        stamped = api.post("/billing/usage", json=record(9, "stamped", timestamp=emulator_now))
        old = api.post("/billing/usage", json=record(9, "old", timestamp=int(time.time())))
    assert (unstamped.status_code, stamped.status_code) == (202, 202), stamped.text
    assert old.status_code == 422 and "34 days" in old.text
    with session_factory() as session:
        times = session.scalars(select(BillingUsageEvent.timestamp)).all()
    assert sorted(times) == [emulator_now, emulator_now]


@pytest.mark.postgres_only
def test_two_batches_of_one_user_at_once_both_count_toward_the_cap(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,
    stripe_settings: Settings,
    engine: Engine,
) -> None:
    """60 cents each, at once, against a cap of 100: the document says the cap is passed (each
    transaction priced only its own records, and neither marked the document)."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    users = list(range(1, 21))
    for user in users:
        add_user(api, user)
        subscribe(api, emulator, reconciler, user)
        cap = {"github_user_id": user, "max_monthly_spend_cents": 100}
        assert api.put("/billing/preferences", json=cap).status_code == 200
    posts = [(user, key) for user in users for key in ("a", "b")]
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda p: api.post("/billing/usage", json=record(p[0], p[1], 120)), posts)
        )
    assert [a.text for a in answers if a.status_code != 202] == []
    for user in users:
        state = api.get("/billing/state", params={"github_user_id": user}).json()
        assert state["usage"]["over_spend_cap"] is True, user


def test_a_meter_turned_off_stops_counting_toward_the_cap(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """Its usage is no longer priced: the cap it passed is no longer passed, and the state
    document says so at the next read of the meters."""
    add_user(api, 1)
    subscribe(api, emulator, Reconciler(stripe_settings, engine, StripeGateway(stripe_settings)), 1)
    cap = {"github_user_id": 1, "max_monthly_spend_cents": 10}
    assert api.put("/billing/preferences", json=cap).status_code == 200
    assert api.post("/billing/usage", json=record(1, "a", 150)).json()["over_spend_cap"] is True
    emulator.sdk.v1.billing.meters.deactivate(meter)
    sync_meters(session_factory, StripeGateway(stripe_settings))
    state = api.get("/billing/state", params={"github_user_id": 1}).json()
    assert state["usage"]["over_spend_cap"] is False
