"""Prices: `billing_prices`, the catalog, one row per Stripe price (they belong to no customer)."""

from __future__ import annotations

from typing import Any

import msgspec

from collab_billing.db.models import BillingPrice
from collab_billing.mirror.types import MirroredType
from collab_billing.stripe_gateway.events import Ref, id_of


class Recurring(msgspec.Struct):
    interval: str
    interval_count: int = 1
    usage_type: str = "licensed"
    meter: str | None = None


class Price(msgspec.Struct):
    """The fields of a Stripe price that the service keeps. Defaults let a deleted price's
    stub (`{"id", "object", "deleted": true}`) decode too."""

    id: str
    product: str | Ref = ""
    currency: str = ""
    unit_amount: int | None = None
    unit_amount_decimal: str | None = None
    lookup_key: str | None = None
    recurring: Recurring | None = None
    active: bool = False
    deleted: bool = False


def columns(price: Price) -> dict[str, Any]:
    recurring = price.recurring
    return {
        "lookup_key": price.lookup_key,
        "stripe_product_id": id_of(price.product),
        "unit_amount": price.unit_amount,
        "currency": price.currency,
        "recurring_interval": recurring.interval if recurring else None,
        "recurring_interval_count": recurring.interval_count if recurring else None,
        "usage_type": recurring.usage_type if recurring else None,
        "stripe_meter_id": recurring.meter if recurring else None,
        "unit_amount_decimal": price.unit_amount_decimal,
        "active": price.active,
        "deleted": price.deleted,
    }


PRICES = MirroredType(
    kind="price",
    event_types=("price.created", "price.updated", "price.deleted"),
    object_type=Price,
    table=BillingPrice.__table__,  # type: ignore[arg-type]
    key="stripe_price_id",
    columns=columns,
    object_id=lambda price: price.id,
    owner=None,
    retrieve_path="/v1/prices/{id}",
    list_path="/v1/prices",
)
