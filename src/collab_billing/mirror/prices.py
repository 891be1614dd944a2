"""Prices: `billing_prices`, the catalog, one row per Stripe price (they belong to no customer).

A tiered price's `tiers` are an includable field: Stripe shows them only when asked
(`expand[]=tiers`), never in an event's object. So a tiered price seen in an event without
its tiers is read from Stripe with `expand[]=tiers` (outside the write transaction, like
every read of the applier), and resync lists prices with `expand[]=data.tiers`.
"""

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


class PriceTier(msgspec.Struct):
    """One of Stripe's tiers; `up_to` None is the last one (`inf`)."""

    up_to: int | None = None
    unit_amount: int | None = None
    unit_amount_decimal: str | None = None
    flat_amount: int | None = None
    flat_amount_decimal: str | None = None


class TransformQuantity(msgspec.Struct):
    divide_by: int
    round: str


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
    billing_scheme: str = "per_unit"
    tiers_mode: str | None = None
    tiers: list[PriceTier] | None = None  # None: not expanded (or not tiered)
    transform_quantity: TransformQuantity | None = None


def _decimal_text(whole: int | None, text: str | None) -> str | None:
    return text if text is not None else (str(whole) if whole is not None else None)


def tier_rows(tiers: list[PriceTier] | None) -> list[dict[str, Any]] | None:
    """The tiers as kept in `billing_prices.tiers`: amounts in cents as decimal text."""
    if tiers is None:
        return None
    return [
        {
            "up_to": tier.up_to,
            "unit_amount_decimal": _decimal_text(tier.unit_amount, tier.unit_amount_decimal),
            "flat_amount_decimal": _decimal_text(tier.flat_amount, tier.flat_amount_decimal),
        }
        for tier in tiers
    ]


def has_its_tiers(price: Price) -> bool:
    """A tiered price is complete only with its tiers (Stripe's `expand[]=tiers`)."""
    return price.billing_scheme != "tiered" or price.tiers is not None or price.deleted


def columns(price: Price) -> dict[str, Any]:
    recurring, transform = price.recurring, price.transform_quantity
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
        "billing_scheme": price.billing_scheme,
        "tiers_mode": price.tiers_mode,
        "tiers": tier_rows(price.tiers),
        "transform_divide_by": transform.divide_by if transform else None,
        "transform_round": transform.round if transform else None,
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
    list_params={"expand": ["data.tiers"]},
    payload_complete=has_its_tiers,
    retrieve_params={"expand": ["tiers"]},
)
