"""The registry of mirrored Stripe object types.

Customers are the root: they tie Stripe to our users (`mirror.customers`). Every other
mirrored type is a `MirroredType`: the event types it consumes, the struct its objects decode
into, how an object finds its owner (the Stripe customer it belongs to), its table and the
columns taken from the object. Its rows carry `stripe_state_as_of`, the `created` second of
what they show, which orders payloads (docs/reconciliation.md). The applier, resync, webhooks
and `reconcile --status` work from this registry alone: adding a type is one module that
defines a `MirroredType`, one line in `MIRRORED_TYPES`, and one migration for its table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collab_billing.mirror import (
    coupons,
    discounts,
    entitlements,
    invoices,
    prices,
    product_features,
    products,
    subscriptions,
)
from collab_billing.mirror.customers import CUSTOMER_EVENT_TYPES
from collab_billing.mirror.types import MirroredType

__all__ = [
    "BY_EVENT_TYPE",
    "MIRRORED_TYPES",
    "MIRROR_FORMAT",
    "RELEVANT_TYPES",
    "RELISTED_ON_UPGRADE",
    "MirroredType",
    "relevant_types_filter",
    "relisted_since",
    "types_filter",
]

# The mirrored rows' format: raise it when a type takes a new column from Stripe's objects,
# and name the kinds to list anew. The first poll of a release whose format differs from the
# stored one lists those kinds again (`reconcile.resync.relist`): else rows mirrored by an
# older release lacked the column until their next event, which a price may never have.
# 2: subscription items' `created` (usage is priced from it), prices' `transform_quantity`.
# 3: coupons and discounts (new types: their rows come from their events and lists), which
# the usage estimate takes off. 4: products' features (a new type with no event: read with
# the summaries of customers subscribed to several products, and per live product by a
# resync), which the state document takes off beside a subscription that grants no access.
MIRROR_FORMAT = 4
# The kinds each format raise lists again: an upgrade lists those of the formats after the
# stored one only (from 2 to 3, the prices and subscriptions listed for 2 are not listed again).
RELISTED_ON_UPGRADE: dict[int, frozenset[str]] = {
    2: frozenset({"price", "subscription"}),
    3: frozenset({"coupon", "discount"}),
    4: frozenset({"product_feature"}),
}


def relisted_since(stored: int | None) -> frozenset[str]:
    """The kinds to list again for rows mirrored at format `stored` (None: a release before
    formats were stored; a newer one than this release's: rolled back to it): every kind
    named since."""
    if stored is None or stored > MIRROR_FORMAT:
        return frozenset().union(*RELISTED_ON_UPGRADE.values())
    return frozenset().union(*(k for f, k in RELISTED_ON_UPGRADE.items() if f > stored))


MIRRORED_TYPES: tuple[MirroredType[Any], ...] = (
    subscriptions.SUBSCRIPTIONS,
    prices.PRICES,
    products.PRODUCTS,
    product_features.PRODUCT_FEATURES,
    coupons.COUPONS,
    discounts.DISCOUNTS,
    invoices.INVOICES,
    entitlements.ENTITLEMENTS,
)
BY_EVENT_TYPE: dict[str, MirroredType[Any]] = {
    event_type: mirrored for mirrored in MIRRORED_TYPES for event_type in mirrored.event_types
}
# Every event type the service reads.
RELEVANT_TYPES: tuple[str, ...] = CUSTOMER_EVENT_TYPES + tuple(BY_EVENT_TYPE)
# Stripe's `types[]` filter takes at most this many values.
MAX_TYPES_FILTER = 20


def types_filter(types: Sequence[str]) -> tuple[str, ...] | None:
    """The `types[]` filter for `/v1/events` that reads `types`, or None (read every event and
    leave out the others) when Stripe would refuse that many. Unfiltered pages cost no more
    reads while the account's other events are few beside ours: a page holds 100 events."""
    return tuple(types) if len(types) <= MAX_TYPES_FILTER else None


def relevant_types_filter() -> tuple[str, ...] | None:
    """The `types[]` filter that reads every event type the service reads."""
    return types_filter(RELEVANT_TYPES)
