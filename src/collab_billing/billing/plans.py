"""Plans: which price a request names (a lookup key or a price id) and whether it may be sold.

Answers from the mirrored catalog (`billing_prices`), never from Stripe: a price archived in
Stripe stops being sellable as soon as its event is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import RowMapping
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.errors import InvalidField, Misconfigured
from collab_billing.db import queries
from collab_billing.db.engine import read_only
from collab_billing.db.models import BillingPrice


@dataclass(frozen=True)
class Plan:
    stripe_price_id: str
    lookup_key: str | None
    # A metered price (`recurring.usage_type=metered`) bills usage, not a quantity: Stripe
    # refuses a quantity for it in Checkout.
    metered: bool = False


def resolve_plan(
    factory: sessionmaker[Session],
    requested: str | None,
    default_price: str | None,
    lookup_keys: Sequence[str] | None,
) -> Plan:
    """The plan for `requested` (a lookup key or a price id), or for STRIPE_PRICE_ID when
    None. A requested price must be sellable (`GET /billing/prices`): else 422 naming the
    sellable ones. The configured default (a price id) is trusted before the catalog is
    mirrored, or without a lookup key; not once the mirror shows it, or its product, archived or
    deleted."""
    with read_only(factory) as session:
        sellable = queries.sellable_prices(session, lookup_keys)
        known = queries.price_row(session, default_price or "")
        on_sale = known is not None and queries.price_on_sale(session, known.stripe_price_id)
    wanted = requested if requested is not None else default_price
    match = _find(sellable, wanted)
    if match is not None:
        metered = match["usage_type"] == "metered"
        return Plan(match["stripe_price_id"], match["lookup_key"], metered)
    names = ", ".join(row["lookup_key"] for row in sellable) or "none"
    gone = known is not None and not on_sale
    trusted = default_price is not None and default_price.startswith("price_") and not gone
    if requested is not None and not (requested == default_price and trusted):
        raise InvalidField("price", f"price {requested!r} is not for sale; for sale: {names}")
    if default_price is None:
        raise InvalidField("price", "no price given and STRIPE_PRICE_ID is not set")
    if not trusted:
        raise InvalidField(
            "price",
            f"no price given, and STRIPE_PRICE_ID {default_price!r} is no price for sale "
            f"(archived, deleted, or a lookup key not mirrored yet); for sale: {names}",
        )
    return _plan_of(default_price, known)


def same_product(factory: sessionmaker[Session], price_id: str, other: str | None) -> bool:
    """Whether two prices are of one product (by the mirror: False when either is unknown)."""
    if price_id == other:
        return True
    with read_only(factory) as session:
        new, old = queries.price_row(session, price_id), queries.price_row(session, other or "")
    product = new.stripe_product_id if new is not None else None
    return product is not None and old is not None and old.stripe_product_id == product


def usage_prices(factory: sessionmaker[Session], plan: Plan, keys: Sequence[str]) -> dict[str, str]:
    """The metered prices of `BILLING_USAGE_PRICES` (`keys`: lookup keys or price ids) that go
    beside `plan`, by meter: those of the plan's currency, interval and interval count (Stripe
    bills a subscription's items together), on a meter the plan does not bill itself. A 503
    names the key that names no active metered price in the mirror (usage would otherwise go
    unbilled without a word), or two prices of one meter that would both go beside the plan
    (its usage would be billed twice)."""
    if not keys:
        return {}
    with read_only(factory) as session:
        own = queries.price_row(session, plan.stripe_price_id)
        found = queries.active_metered_prices(session, keys)
    named = {key for row in found for key in (row.lookup_key, row.stripe_price_id)}
    missing = [key for key in keys if key not in named]
    if missing:
        raise Misconfigured(
            f"BILLING_USAGE_PRICES names {', '.join(map(repr, missing))}: no active metered "
            "price has this lookup key or id (archived, deleted, or not mirrored yet)"
        )
    if own is None:
        return {}
    by_meter: dict[str, str] = {}
    for row in found:
        meter = row.stripe_meter_id
        if _cadence(row) != _cadence(own):
            continue
        if meter is None or meter == own.stripe_meter_id:
            continue
        if meter in by_meter:
            raise Misconfigured(
                f"BILLING_USAGE_PRICES names two prices of meter {meter} for "
                f"{plan.lookup_key or plan.stripe_price_id} ({by_meter[meter]}, "
                f"{row.stripe_price_id}): Stripe would bill its usage twice"
            )
        by_meter[meter] = row.stripe_price_id
    return by_meter


def meters_of(factory: sessionmaker[Session], price_ids: Sequence[str]) -> set[str]:
    """The meters that these prices bill (by the mirror)."""
    with read_only(factory) as session:
        rows = [queries.price_row(session, price_id) for price_id in price_ids]
    return {row.stripe_meter_id for row in rows if row is not None and row.stripe_meter_id}


def plan_of_price(factory: sessionmaker[Session], price_id: str) -> Plan:
    """A price as a plan, for sale or not (the one a subscription is on)."""
    with read_only(factory) as session:
        return _plan_of(price_id, queries.price_row(session, price_id))


def _plan_of(price_id: str, row: BillingPrice | None) -> Plan:
    """The plan of a price, as far as the mirror knows it (nothing yet: no lookup key)."""
    if row is None:
        return Plan(price_id, None)
    return Plan(price_id, row.lookup_key, row.usage_type == "metered")


def currencies_of(factory: sessionmaker[Session], price_ids: Sequence[str]) -> list[str]:
    """The distinct currencies of these prices, in their order (the unknown left out)."""
    with read_only(factory) as session:
        rows = [queries.price_row(session, price_id) for price_id in price_ids]
    return list(dict.fromkeys(row.currency for row in rows if row is not None))


def currency_by_price(factory: sessionmaker[Session], price_ids: Sequence[str]) -> dict[str, str]:
    """The currency of each of these prices, by price id (the unknown left out)."""
    with read_only(factory) as session:
        rows = [queries.price_row(session, price_id) for price_id in price_ids]
    return {row.stripe_price_id: row.currency for row in rows if row is not None}


def same_cadence(factory: sessionmaker[Session], price_id: str, other: str | None) -> bool:
    """Whether two prices bill in one currency on one interval (False when either is unknown)."""
    with read_only(factory) as session:
        new, old = queries.price_row(session, price_id), queries.price_row(session, other or "")
    return new is not None and old is not None and _cadence(new) == _cadence(old)


def _cadence(price: BillingPrice) -> tuple[str, str | None, int | None]:
    """What prices billed together on one subscription share: currency and interval."""
    return price.currency, price.recurring_interval, price.recurring_interval_count


def _find(rows: Sequence[RowMapping], wanted: str | None) -> RowMapping | None:
    for row in rows:
        if wanted in (row["lookup_key"], row["stripe_price_id"]):
            return row
    return None
