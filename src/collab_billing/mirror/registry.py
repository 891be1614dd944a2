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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from sqlalchemy import Table

T = TypeVar("T")


@dataclass(frozen=True)
class MirroredType(Generic[T]):
    kind: str
    event_types: tuple[str, ...]
    object_type: type[T]
    table: Table
    key: str  # the column holding the object's Stripe id
    columns: Callable[[T], dict[str, Any]]  # the row's values, from the object
    object_id: Callable[[T], str]
    # The Stripe customer an object belongs to (its row gets `billing_customer_id`); None for
    # objects that belong to no customer.
    owner: Callable[[T], str] | None
    retrieve_path: str  # e.g. "/v1/subscriptions/{id}"
    list_path: str  # for resync and for catching up a newly linked customer
    list_params: dict[str, Any] = field(default_factory=dict)

    def decode(self, raw: bytes | msgspec.Raw) -> T:
        return msgspec.json.decode(raw, type=self.object_type)

    def row(self, obj: T, as_of: int, billing_customer_id: int | None) -> dict[str, Any]:
        values = {self.key: self.object_id(obj), **self.columns(obj), "stripe_state_as_of": as_of}
        if self.owner is not None:
            values["billing_customer_id"] = billing_customer_id
        return values


def _mirrored_types() -> tuple[MirroredType[Any], ...]:
    from collab_billing.mirror import subscriptions

    return (subscriptions.SUBSCRIPTIONS,)


MIRRORED_TYPES: tuple[MirroredType[Any], ...] = _mirrored_types()
BY_EVENT_TYPE: dict[str, MirroredType[Any]] = {
    event_type: mirrored for mirrored in MIRRORED_TYPES for event_type in mirrored.event_types
}


def relevant_event_types() -> tuple[str, ...]:
    """Every event type the service reads (`types[]` takes at most 20)."""
    from collab_billing.mirror.customers import CUSTOMER_EVENT_TYPES

    types = CUSTOMER_EVENT_TYPES + tuple(BY_EVENT_TYPE)
    assert len(types) <= 20, "Stripe's types[] filter takes at most 20 values"
    return types
