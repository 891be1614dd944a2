"""Which events matter, and which Stripe object each one is about."""

from __future__ import annotations

from typing import Any, Literal

Event = dict[str, Any]
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


def object_kind(event: Event) -> ObjectKind:
    event_type = str(event["type"])
    if event_type.startswith("customer.subscription."):
        return "subscription"
    if event_type in CUSTOMER_TYPES or event_type in CHECKOUT_TYPES:
        # A completed Checkout is news about its customer (who it belongs to).
        return "customer"
    return "other"


def object_id(event: Event) -> str:
    """The id of the object whose state the event changes: the key that orders events."""
    obj = event["data"]["object"]
    if event["type"] in CHECKOUT_TYPES:
        customer = obj.get("customer")
        if customer:
            return customer if isinstance(customer, str) else str(customer["id"])
    return str(obj.get("id") or event["id"])


def github_user_id_of(obj: dict[str, Any]) -> int | None:
    """The user a Stripe object names, through the metadata we set (or Checkout's reference)."""
    candidates = [(obj.get("metadata") or {}).get("github_user_id"), obj.get("client_reference_id")]
    for value in candidates:
        if isinstance(value, str) and value.isdigit() and 0 < int(value) < 2**63:
            return int(value)
    return None
