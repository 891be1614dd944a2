"""Subscriptions: `billing_subscriptions`, one row per Stripe subscription of our customers.

Written from their events' objects. A subscription's events name its discounts by id only:
the discounts are a type of their own (`mirror.discounts`), so none of them costs a read."""

from __future__ import annotations

from typing import Any

import msgspec

from collab_billing.db.models import BillingSubscription
from collab_billing.db.queries import ACTIVE_STATUSES
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
    }


# A subscription's features are its products' while it is in one of the statuses that
# entitle (`queries.ACTIVE_STATUSES`, as Stripe's active entitlements): its creation, end,
# pause and resumption change them, as does an update of its items or one that moves it into
# or out of those statuses.
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
    return old is not None and (old in ACTIVE_STATUSES) != (new in ACTIVE_STATUSES)


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
    list_params={"status": "all"},
)
