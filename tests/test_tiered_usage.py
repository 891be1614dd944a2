"""Tiered metered prices, end to end: the price mirrored with its tiers (its events carry it
without them: the applier reads it with `expand[]=tiers`; resync lists `data.tiers`), the
usage estimate of `GET /billing/usage` priced per tier (graduated and volume, flat amounts)
or per package (`transform_quantity`), and the renewal invoice, billed by the emulator and
mirrored, equal to that estimate."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.sender import UsageSender
from collab_billing.config import Settings
from collab_billing.db.models import BillingPrice, BillingSubscription, ReconcilerState
from collab_billing.reconcile import ledger
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import Emulator
from tests.test_billing_api import add_user, serve, subscribe
from tests.test_usage_api import meter, record, usage_of  # noqa: F401  (the fixture)
from tests.test_usage_invoices import add_metered_item, invoices_of
from tests.test_usage_sender import drain

# 1..100 at 2 cents + 100 flat; 101..1000 at 1 cent + 50 flat; beyond at 0.5 cent.
TIERS: list[dict[str, Any]] = [
    {"up_to": 100, "unit_amount": 2, "flat_amount": 100},
    {"up_to": 1000, "unit_amount": 1, "flat_amount_decimal": "50"},
    {"up_to": "inf", "unit_amount_decimal": "0.5"},
]
MIRRORED_TIERS = [
    {"up_to": 100, "unit_amount_decimal": "2", "flat_amount_decimal": "100"},
    {"up_to": 1000, "unit_amount_decimal": "1", "flat_amount_decimal": "50"},
    {"up_to": None, "unit_amount_decimal": "0.5", "flat_amount_decimal": None},
]


@pytest.fixture
def api(stripe_settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    yield from serve(stripe_settings, engine)


def tiered_price(emulator: Emulator, meter_id: str, mode: str) -> str:
    params: dict[str, Any] = {
        "currency": "usd",
        "billing_scheme": "tiered",
        "tiers_mode": mode,
        "tiers": TIERS,
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
        "product_data": {"name": "Tiered tokens"},
    }
    return str(emulator.sdk.v1.prices.create(params=params).id)  # type: ignore[arg-type]


def mirrored(factory: sessionmaker[Session], price_id: str) -> tuple[Any, ...]:
    with factory() as session:
        row = session.scalars(
            select(BillingPrice).where(BillingPrice.stripe_price_id == price_id)
        ).one()
        return row.billing_scheme, row.tiers_mode, row.tiers, row.unit_amount


@pytest.mark.parametrize(
    ("mode", "cost"),
    [
        # 1201 tokens. graduated: 100 x 2 + 100, 900 x 1 + 50, 201 x 0.5 = 1350.5 -> 1351
        ("graduated", 1351),
        # volume: all 1201 in the last tier: 1201 x 0.5 = 600.5 -> 601 (half up)
        ("volume", 601),
    ],
)
def test_tiered_usage_is_estimated_and_billed_alike(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    mode: str,
    cost: int,
) -> None:
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    add_user(api, 7)
    sub_id = subscribe(api, emulator, reconciler, 7)
    price_id = tiered_price(emulator, meter, mode)
    reconciler.drain()  # price.created, without tiers: read with expand[]=tiers
    assert mirrored(session_factory, price_id) == ("tiered", mode, MIRRORED_TIERS, None)
    add_metered_item(emulator, sub_id, price_id)
    reconciler.drain()
    batch = [record(7, "a", 700), record(7, "b", 500.5), record(7, "c", 0.5)]
    assert api.post("/billing/usage", json={"events": batch}).status_code == 202
    fast = stripe_settings.model_copy(update={"billing_usage_requests_per_second": 100.0})
    drain(UsageSender(fast, engine))
    usage = usage_of(api, 7)
    [tokens] = usage["meters"]
    assert (tokens["total"], tokens["stripe_price_id"]) == ("1201", price_id)
    assert (tokens["estimated_cost_cents"], usage["estimated_cost_cents"]) == (cost, cost)

    emulator.past_period_end(sub_id, 3600)  # the renewal, its invoice finalized an hour on
    reconciler.drain()
    invoices = invoices_of(session_factory, sub_id)
    first, renewal = invoices["subscription_create"], invoices["subscription_cycle"]
    assert renewal.amount_due == first.amount_due + cost  # the plan, and the usage estimated
    assert (renewal.status, renewal.amount_paid) == ("paid", renewal.amount_due)


def test_resync_mirrors_the_tiers_and_a_price_update_keeps_them(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    price_id = tiered_price(emulator, meter, "volume")
    gateway = StripeGateway(stripe_settings)
    resync(session_factory, gateway)  # lists prices with expand[]=data.tiers
    assert mirrored(session_factory, price_id) == ("tiered", "volume", MIRRORED_TIERS, None)
    emulator.sdk.v1.prices.update(price_id, params={"nickname": "bulk"})
    Reconciler(stripe_settings, engine, gateway).drain()  # price.updated, without tiers
    assert mirrored(session_factory, price_id) == ("tiered", "volume", MIRRORED_TIERS, None)
    # The estimate of a subscription to it still goes by the tiers.
    add_user(api, 8)
    emulator.subscribe_in_stripe(8, price_id)
    Reconciler(stripe_settings, engine, gateway).drain()
    api.post("/billing/usage", json=record(8, "x", 101))
    [tokens] = usage_of(api, 8)["meters"]
    assert (tokens["stripe_price_id"], tokens["estimated_cost_cents"]) == (price_id, 151)


def package_price(emulator: Emulator, reconciler: Reconciler, meter_id: str, rounding: str) -> str:
    """$5 per 1,000 tokens of the meter, mirrored."""
    package = emulator.sdk.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 500,
            "transform_quantity": {"divide_by": 1000, "round": rounding},  # type: ignore[typeddict-item]
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
            "product_data": {"name": "Tokens by the thousand"},
        }
    )
    reconciler.drain()
    return str(package.id)


@pytest.mark.parametrize(("rounding", "cost"), [("up", 1000), ("down", 500)])
def test_package_priced_usage_is_estimated_and_billed_alike(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    rounding: str,
    cost: int,
) -> None:
    """$5 per 1,000 tokens (`transform_quantity`): 1,201 tokens are 2 packages rounded up, 1
    rounded down. The estimate multiplied the tokens: $6,005, past any cap."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    add_user(api, 7)
    sub_id = subscribe(api, emulator, reconciler, 7)
    add_metered_item(emulator, sub_id, package_price(emulator, reconciler, meter, rounding))
    reconciler.drain()
    assert api.post("/billing/usage", json=record(7, "a", 1201)).status_code == 202
    drain(UsageSender(stripe_settings, engine))
    [tokens] = usage_of(api, 7)["meters"]
    assert (tokens["total"], tokens["estimated_cost_cents"]) == ("1201", cost)
    emulator.past_period_end(sub_id, 3600)
    reconciler.drain()
    invoices = invoices_of(session_factory, sub_id)
    first, renewal = invoices["subscription_create"], invoices["subscription_cycle"]
    assert renewal.amount_due == first.amount_due + cost


def test_rows_of_an_older_release_are_listed_again_at_the_first_poll(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """A release that kept no `transform_quantity` (nor items' `created`) left its rows
    without them, until their next event, which a price may never have: the estimate stayed
    a thousand times the bill, past any cap."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    add_user(api, 7)
    sub_id = subscribe(api, emulator, reconciler, 7)
    add_metered_item(emulator, sub_id, package_price(emulator, reconciler, meter, "up"))
    reconciler.drain()
    assert api.post("/billing/usage", json=record(7, "a", 1201)).status_code == 202
    with session_factory() as session, session.begin():  # as the older release left them
        session.execute(update(BillingPrice).values(transform_divide_by=None, transform_round=None))
        session.execute(update(BillingSubscription).values(stripe_item_created=None))
        session.execute(delete(ReconcilerState).where(ReconcilerState.name == ledger.MIRROR_FORMAT))
    assert usage_of(api, 7)["estimated_cost_cents"] == 600_500
    reconciler.drain()  # the release's first poll
    assert usage_of(api, 7)["estimated_cost_cents"] == 1000


def test_the_prices_on_sale_show_what_a_pricing_page_needs_of_usage_prices(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
) -> None:
    """A tiered, a sub-cent and a package price: `unit_amount` is null or per package, so
    `GET /billing/prices` shows their tiers, decimal amount and package (it showed a null
    amount and nothing else)."""
    recurring = {"interval": "month", "usage_type": "metered", "meter": meter}
    prices = emulator.sdk.v1.prices
    prices.create(
        params={  # type: ignore[typeddict-item]
            "currency": "usd", "billing_scheme": "tiered", "tiers_mode": "graduated",
            "tiers": TIERS, "recurring": recurring, "lookup_key": "tiered",
            "product_data": {"name": "Tiered tokens"},
        }
    )  # fmt: skip
    prices.create(
        params={  # type: ignore[typeddict-item]
            "currency": "jpy", "unit_amount_decimal": "0.015", "recurring": recurring,
            "lookup_key": "decimal", "product_data": {"name": "Tokens in yen"},
        }
    )  # fmt: skip
    prices.create(
        params={  # type: ignore[typeddict-item]
            "currency": "usd", "unit_amount": 500, "recurring": recurring,
            "transform_quantity": {"divide_by": 1000, "round": "up"}, "lookup_key": "package",
            "product_data": {"name": "Tokens by the thousand"},
        }
    )  # fmt: skip
    Reconciler(stripe_settings, engine, StripeGateway(stripe_settings)).drain()
    listed = {p["lookup_key"]: p for p in api.get("/billing/prices").json()["prices"]}
    tiered, decimal, package = listed["tiered"], listed["decimal"], listed["package"]
    assert (tiered["billing_scheme"], tiered["tiers_mode"]) == ("tiered", "graduated")
    assert (tiered["unit_amount"], tiered["tiers"]) == (None, MIRRORED_TIERS)
    assert (decimal["unit_amount"], decimal["unit_amount_decimal"]) == (None, "0.015")
    assert (decimal["currency"], decimal["tiers"], decimal["transform_quantity"]) == (
        "jpy",
        None,
        None,
    )
    assert package["unit_amount"] == 500
    assert package["transform_quantity"] == {"divide_by": 1000, "round": "up"}
