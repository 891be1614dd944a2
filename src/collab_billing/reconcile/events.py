"""Which events matter, and which Stripe object each one is about."""

from __future__ import annotations

from typing import Literal

from collab_billing.stripe_objects import DecodeError, Event, ObjectFields, id_of

__all__ = ["RELEVANT_TYPES", "Event", "ObjectKind", "github_user_id_of", "object_id", "object_kind"]

ObjectKind = Literal["customer", "subscription", "other"]

CUSTOMER_TYPES = ("customer.created", "customer.updated", "customer.deleted")
SUBSCRIPTION_TYPES = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.trial_will_end",
)
CHECKOUT_TYPES = ("checkout.session.completed",)
# `types[]` takes at most 20 values.
RELEVANT_TYPES = CUSTOMER_TYPES + SUBSCRIPTION_TYPES + CHECKOUT_TYPES


def object_kind(event_type: str) -> ObjectKind:
    if event_type.startswith("customer.subscription."):
        return "subscription"
    if event_type in CUSTOMER_TYPES or event_type in CHECKOUT_TYPES:
        # A completed Checkout is news about its customer (who it belongs to).
        return "customer"
    return "other"


def object_id(event: Event) -> str:
    """The id of the object whose state the event changes: the key that orders events."""
    try:
        obj = event.object
    except DecodeError:
        # Not the shape Stripe documents: the event stands alone, and applying it fails
        # (and parks it) without holding up the objects of other events.
        return event.id
    if event.type in CHECKOUT_TYPES and obj.customer:
        return id_of(obj.customer)
    return obj.id or event.id


def github_user_id_of(obj: ObjectFields) -> int | None:
    """The user a Stripe object names, through the metadata we set (or Checkout's reference)."""
    candidates = [(obj.metadata or {}).get("github_user_id"), obj.client_reference_id]
    for value in candidates:
        if isinstance(value, str) and value.isdigit() and 0 < int(value) < 2**63:
            return int(value)
    return None
