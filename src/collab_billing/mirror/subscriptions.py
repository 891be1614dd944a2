"""Subscriptions: `billing_subscriptions`, one row per Stripe subscription of our customers."""

from __future__ import annotations

from typing import Any

import msgspec

from collab_billing.db.models import BillingSubscription
from collab_billing.mirror.types import MirroredType, stripe_time
from collab_billing.stripe_gateway.events import Event, Ref, id_of


class Recurring(msgspec.Struct):
    usage_type: str = "licensed"


class ItemPrice(msgspec.Struct):
    """An item's price, which Stripe always expands on a subscription."""

    id: str
    recurring: Recurring | None = None


class SubscriptionItem(msgspec.Struct):
    id: str = ""
    created: int | None = None
    price: str | ItemPrice | None = None
    quantity: int | None = None
    current_period_end: int | None = None
    current_period_start: int | None = None


class CancellationDetails(msgspec.Struct):
    reason: str | None = None


class ItemList(msgspec.Struct):
    data: list[SubscriptionItem] = []


class Coupon(msgspec.Struct):
    id: str
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration: str | None = None


class DiscountSource(msgspec.Struct):
    coupon: str | Coupon | None = None


class Discount(msgspec.Struct):
    """A subscription's discount, read with `expand[]=discounts.source.coupon` (an event
    names its discounts by id only)."""

    id: str
    end: int | None = None
    source: DiscountSource | None = None


# Stripe's events carry a subscription's discounts as ids: reading one with them expands
# them down to their coupon (list: `data.` first, four levels, Stripe's most).
EXPAND_DISCOUNTS = "discounts.source.coupon"


class Subscription(msgspec.Struct):
    """The fields of a Stripe subscription that the service keeps."""

    id: str
    customer: str | Ref
    status: str
    created: int | None = None
    ended_at: int | None = None
    cancel_at_period_end: bool = False
    cancel_at: int | None = None
    canceled_at: int | None = None
    current_period_end: int | None = None  # before API 2025-03-31; now on the items
    trial_end: int | None = None
    cancellation_details: CancellationDetails | None = None
    current_period_start: int | None = None
    items: ItemList = msgspec.field(default_factory=ItemList)
    discounts: list[str | Discount] = []


def has_its_discounts(subscription: Subscription) -> bool:
    """Whether every discount, and its coupon, is expanded (else it is read from Stripe)."""
    return all(
        isinstance(d, Discount) and d.source is not None and isinstance(d.source.coupon, Coupon)
        for d in subscription.discounts
    )


def discount_rows(subscription: Subscription) -> list[dict[str, Any]] | None:
    """`billing_subscriptions.stripe_discounts`: per discount, its coupon's id, percent or
    amount off (and currency) and the discount's `end`; None when they were not expanded."""
    if not has_its_discounts(subscription):
        return None
    rows = []
    for discount in subscription.discounts:
        assert isinstance(discount, Discount) and discount.source is not None
        coupon = discount.source.coupon
        assert isinstance(coupon, Coupon)
        rows.append(
            {
                "coupon": coupon.id,
                "percent_off": coupon.percent_off,
                "amount_off": coupon.amount_off,
                "currency": coupon.currency,
                "duration": coupon.duration,
                "end": discount.end,
            }
        )
    return rows


def is_metered(item: SubscriptionItem) -> bool:
    price = item.price
    return (
        isinstance(price, ItemPrice)
        and price.recurring is not None
        and (price.recurring.usage_type == "metered")
    )


def item_price_id(item: SubscriptionItem) -> str | None:
    price = item.price
    return price.id if isinstance(price, ItemPrice) else price


def plan_item(items: list[SubscriptionItem]) -> SubscriptionItem | None:
    """The plan's item: the first licensed one; a metered price beside it bills usage."""
    return next((item for item in items if not is_metered(item)), items[0] if items else None)


def columns(subscription: Subscription) -> dict[str, Any]:
    items = subscription.items.data
    plan = plan_item(items)
    period_ends = [item.current_period_end for item in items if item.current_period_end]
    period_end = max(period_ends) if period_ends else subscription.current_period_end
    period_starts = [item.current_period_start for item in items if item.current_period_start]
    period_start = max(period_starts) if period_starts else subscription.current_period_start
    details = subscription.cancellation_details
    return {
        "stripe_subscription_status": subscription.status,
        "stripe_price_id": item_price_id(plan) if plan else None,
        "stripe_cancel_at_period_end": subscription.cancel_at_period_end,
        "stripe_cancel_at": stripe_time(subscription.cancel_at),
        "stripe_canceled_at": stripe_time(subscription.canceled_at),
        "stripe_current_period_end": stripe_time(period_end),
        "quantity": plan.quantity if plan else None,
        "stripe_trial_end": stripe_time(subscription.trial_end),
        "stripe_cancellation_reason": details.reason if details else None,
        "stripe_current_period_start": stripe_time(period_start),
        "stripe_item_price_ids": [price for item in items if (price := item_price_id(item))],
        "stripe_item_created": {
            price: item.created
            for item in items
            if (price := item_price_id(item)) and item.created is not None
        },
        "stripe_created": stripe_time(subscription.created),
        "stripe_ended_at": stripe_time(subscription.ended_at),
        "stripe_discounts": discount_rows(subscription),
    }


# A subscription's features are its products' while it is in one of these statuses (as
# Stripe's active entitlements): its creation, end, pause and resumption change them, as
# does an update of its items or one that moves it into or out of these statuses.
ENTITLING_STATUSES = frozenset({"active", "trialing", "past_due"})
_FEATURE_EVENT_TYPES = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.pending_update_applied",
    }
)


def may_change_features(event: Event) -> bool:
    """Whether this subscription event may change what its customer is entitled to (not a
    renewal, a cancellation scheduled, nor past due and back: dunning's churn)."""
    if event.type in _FEATURE_EVENT_TYPES:
        return True
    if event.type != "customer.subscription.updated":
        return False
    data = event.payload["data"]
    before = data.get("previous_attributes") or {}
    if "items" in before:
        return True
    old, new = before.get("status"), data["object"].get("status")
    return old is not None and (old in ENTITLING_STATUSES) != (new in ENTITLING_STATUSES)


SUBSCRIPTIONS = MirroredType(
    kind="subscription",
    event_types=(
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "customer.subscription.pending_update_applied",
        "customer.subscription.pending_update_expired",
        "customer.subscription.trial_will_end",
    ),
    object_type=Subscription,
    table=BillingSubscription.__table__,  # type: ignore[arg-type]
    key="stripe_subscription_id",
    columns=columns,
    object_id=lambda subscription: subscription.id,
    owner=lambda subscription: id_of(subscription.customer),
    retrieve_path="/v1/subscriptions/{id}",
    list_path="/v1/subscriptions",
    list_params={"status": "all", "expand": [f"data.{EXPAND_DISCOUNTS}"]},
    payload_complete=has_its_discounts,
    retrieve_params={"expand": [EXPAND_DISCOUNTS]},
)
