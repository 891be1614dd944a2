"""A deleted price or product is a tombstone: its deletion event marks the row deleted without
asking Stripe (which answers 404), and an event of the same second that arrives after it is
settled by a re-read that meets the 404, not parked for ever."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings
from collab_billing.db.engine import make_session_factory
from collab_billing.db.models import BillingPrice, BillingProduct
from collab_billing.reconcile.apply import Applier
from collab_billing.stripe_gateway import Event, StripeGateway
from tests.ops_helpers import pending_rows
from tests.stripe_helpers import Emulator


def events_of(emulator: Emulator, object_id: str) -> list[dict[str, Any]]:
    """The object's events, oldest first (the list is newest first)."""
    return [e for e in reversed(emulator.all_events()) if e["data"]["object"]["id"] == object_id]


def price_row(factory: sessionmaker[Session], price_id: str) -> BillingPrice:
    with factory() as session:
        return session.scalars(
            select(BillingPrice).where(BillingPrice.stripe_price_id == price_id)
        ).one()


def test_a_same_second_event_after_a_deletion_is_settled_by_the_404(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    factory = make_session_factory(engine)
    applier = Applier(factory, StripeGateway(stripe_settings))
    for _ in range(5):  # until the update and the deletion fall in the same second
        price_id = emulator.price()
        emulator.sdk.v1.prices.update(price_id, params={"nickname": "last words"})
        emulator.control("POST", f"prices/{price_id}/delete", {})
        *earlier, update, deletion = events_of(emulator, price_id)
        if update["created"] == deletion["created"]:
            break
    assert (update["type"], deletion["type"]) == ("price.updated", "price.deleted")
    assert update["created"] == deletion["created"]

    applier.apply([Event.from_dict(e) for e in [*earlier, deletion]])
    row = price_row(factory, price_id)
    assert (row.deleted, row.unit_amount, row.currency) == (True, 2000, "usd")

    stats = applier.apply([Event.from_dict(update)])  # a tie: re-read, 404
    assert stats.total("failed") == 0 and not pending_rows(factory)
    row = price_row(factory, price_id)
    assert (row.deleted, row.unit_amount, row.currency) == (True, 2000, "usd")


def test_a_product_deletion_is_a_tombstone(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    factory = make_session_factory(engine)
    applier = Applier(factory, StripeGateway(stripe_settings))
    product = emulator.sdk.v1.products.create(params={"name": "Short-lived"})
    emulator.sdk.v1.products.delete(product.id)
    applier.apply([Event.from_dict(e) for e in events_of(emulator, product.id)])
    with factory() as session:
        row = session.scalars(select(BillingProduct)).one()
    assert (row.stripe_product_id, row.name, row.deleted) == (product.id, "Short-lived", True)
