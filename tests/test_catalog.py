"""The catalog follows Stripe: prices and products mirrored through events and resync, and
`GET /billing/prices` shows the ones on sale."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings
from collab_billing.db.models import BillingPrice, BillingProduct
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import Emulator
from tests.test_billing_api import serve


@pytest.fixture
def reconciler(stripe_settings: Settings, engine: Engine) -> Reconciler:
    return Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))


def make_price(emulator: Emulator, product: str, lookup_key: str, amount: int) -> str:
    price = emulator.sdk.v1.prices.create(
        params={
            "product": product,
            "unit_amount": amount,
            "currency": "eur",
            "recurring": {"interval": "year", "interval_count": 1},
            "lookup_key": lookup_key,
        }
    )
    return str(price.id)


def sellable(settings: Settings, engine: Engine, **update: Any) -> list[dict[str, Any]]:
    with contextmanager(serve)(settings.model_copy(update=update), engine) as api:
        prices: list[dict[str, Any]] = api.get("/billing/prices").json()["prices"]
    return prices


@pytest.fixture
def team_prices(emulator: Emulator) -> Iterator[tuple[str, str]]:
    product = emulator.sdk.v1.products.create(params={"name": "Collab Team"})
    yield (
        make_price(emulator, product.id, "team_yearly", 20000),
        make_price(emulator, product.id, "team_plus_yearly", 30000),
    )


# A plain price's fields of a tiered or package one.
PER_UNIT: dict[str, Any] = {
    "billing_scheme": "per_unit",
    "tiers_mode": None,
    "tiers": None,
    "transform_quantity": None,
}


def test_the_catalog_follows_stripe(
    reconciler: Reconciler,
    emulator: Emulator,
    stripe_settings: Settings,
    engine: Engine,
    team_prices: tuple[str, str],
) -> None:
    team, plus = team_prices
    reconciler.drain()
    reconciler.drain()  # the first drain resyncs; the second polls what came since
    prices = sellable(stripe_settings, engine)
    # The fixture's price has no lookup key: not on sale.
    assert prices == [
        {
            "lookup_key": "team_plus_yearly",
            "stripe_price_id": plus,
            "product_name": "Collab Team",
            "unit_amount": 30000,
            **PER_UNIT,
            "unit_amount_decimal": "30000",
            "currency": "eur",
            "interval": "year",
            "interval_count": 1,
            "usage_type": "licensed",
        },
        {
            "lookup_key": "team_yearly",
            "stripe_price_id": team,
            "product_name": "Collab Team",
            "unit_amount": 20000,
            **PER_UNIT,
            "unit_amount_decimal": "20000",
            "currency": "eur",
            "interval": "year",
            "interval_count": 1,
            "usage_type": "licensed",
        },
    ]
    only = sellable(stripe_settings, engine, billing_prices=" team_yearly, unknown ")
    assert [p["stripe_price_id"] for p in only] == [team]
    assert sellable(stripe_settings, engine, billing_prices=" , ") == prices  # empty: unset

    emulator.sdk.v1.prices.update(plus, params={"active": False})  # archived in Stripe
    reconciler.drain()
    assert [p["stripe_price_id"] for p in sellable(stripe_settings, engine)] == [team]

    product = emulator.sdk.v1.prices.retrieve(team).product
    emulator.sdk.v1.products.update(str(product), params={"name": "Collab Teams"})
    reconciler.drain()
    assert [p["product_name"] for p in sellable(stripe_settings, engine)] == ["Collab Teams"]
    emulator.sdk.v1.products.update(str(product), params={"active": False})
    reconciler.drain()
    assert sellable(stripe_settings, engine) == []


def test_polled_events_write_the_catalog(
    reconciler: Reconciler, emulator: Emulator, session_factory: sessionmaker[Session]
) -> None:
    reconciler.drain()  # an empty resync: the catalog comes from the events that follow
    product = emulator.sdk.v1.products.create(params={"name": "Collab Solo"})
    price = make_price(emulator, product.id, "solo_yearly", 5000)
    emulator.sdk.v1.prices.update(price, params={"nickname": "Solo"})
    reconciler.drain()
    assert catalog(session_factory) == stripe_catalog(emulator)


def test_resync_rebuilds_the_catalog(
    reconciler: Reconciler,
    emulator: Emulator,
    session_factory: sessionmaker[Session],
    team_prices: tuple[str, str],
) -> None:
    emulator.sdk.v1.prices.update(team_prices[0], params={"active": False})
    with session_factory() as session, session.begin():
        session.execute(delete(BillingPrice))
        session.execute(delete(BillingProduct))
    report = resync(session_factory, StripeGateway(reconciler.settings))
    assert report.written["price"] == 3 and report.written["product"] == 2
    assert catalog(session_factory) == stripe_catalog(emulator)


def catalog(factory: sessionmaker[Session]) -> dict[str, tuple[Any, ...]]:
    """Prices and products as mirrored, in the shape of `stripe_catalog`."""
    with factory() as session:
        prices = {
            p.stripe_price_id: (
                p.lookup_key, p.stripe_product_id, p.unit_amount, p.currency,
                p.recurring_interval, p.recurring_interval_count, p.active, p.deleted,
            )
            for p in session.scalars(select(BillingPrice))
        }  # fmt: skip
        products = {
            p.stripe_product_id: (p.name, p.active, p.deleted)
            for p in session.scalars(select(BillingProduct))
        }
    return {**prices, **products}


def stripe_catalog(emulator: Emulator) -> dict[str, tuple[Any, ...]]:
    state = emulator.state()
    prices = {
        p["id"]: (
            p["lookup_key"], p["product"], p["unit_amount"], p["currency"],
            (p["recurring"] or {}).get("interval"), (p["recurring"] or {}).get("interval_count"),
            p["active"], False,
        )
        for p in _rows(state["prices"])
    }  # fmt: skip
    products = {p["id"]: (p["name"], p["active"], False) for p in _rows(state["products"])}
    return {**prices, **products}


def _rows(table: Any) -> list[dict[str, Any]]:
    return list(table.values()) if isinstance(table, dict) else list(table)


def test_the_prices_need_the_admin_token(stripe_settings: Settings, engine: Engine) -> None:
    with contextmanager(serve)(stripe_settings, engine) as api:
        assert api.get("/billing/prices", headers={"Authorization": ""}).status_code == 401
