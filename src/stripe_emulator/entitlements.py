"""Entitlements: features, the features attached to products, and customers' active
entitlements, as Stripe keeps them.

A customer's active entitlements are the features of the products of its live subscriptions
(active, trialing or past_due). They are recomputed whenever a subscription of the customer
changes (created, its price changed, canceled: any `customer.subscription.*` event) and
whenever a product gains or loses a feature; when the set changes Stripe emits
`entitlements.active_entitlement_summary.updated`, whose object lists at most 10 of them
(`has_more` tells there are more: a consumer must list them). An entitlement keeps its id
while the customer keeps the feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stripe_emulator import ids
from stripe_emulator.errors import StripeError, not_found
from stripe_emulator.objects import Json, list_object

if TYPE_CHECKING:
    from stripe_emulator.events import Event
    from stripe_emulator.store import Store, Table

SUMMARY_EVENT = "entitlements.active_entitlement_summary.updated"
ENTITLING_STATUSES = ("active", "trialing", "past_due")
SUMMARY_LIMIT = 10  # entitlements listed in a summary event, as on Stripe


@dataclass(frozen=True, slots=True)
class Feature:
    id: str
    created: int
    name: str
    lookup_key: str
    active: bool = True
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProductFeature:
    id: str
    created: int
    product: str
    feature: str  # the feature's id


@dataclass(frozen=True, slots=True)
class ActiveEntitlement:
    id: str
    feature: str
    lookup_key: str


def new_table(kind: str) -> Table[Any]:
    from stripe_emulator.store import Table  # the store imports this module

    return Table(kind)


@dataclass
class Entitlements:
    """The entitlement objects of one emulated account (a field of the `Store`)."""

    features: Table[Feature] = field(default_factory=lambda: new_table("entitlements.feature"))
    product_features: Table[ProductFeature] = field(
        default_factory=lambda: new_table("product_feature")
    )
    # customer id -> its active entitlements, in the order they were granted
    active: dict[str, Table[ActiveEntitlement]] = field(default_factory=dict)
    # product id -> ids of its (attached, not detached) product features
    by_product: dict[str, list[str]] = field(default_factory=dict)

    def observe(self, store: Store, event: Event) -> None:
        """After each event: a subscription's change may change its customer's features."""
        if self.by_product and event.type.startswith("customer.subscription."):
            refresh_customer(store, event.obj.customer, event.created)


# -- rendering --------------------------------------------------------------------------------


def render_feature(record: Feature) -> Json:
    return {
        "id": record.id,
        "object": "entitlements.feature",
        "active": record.active,
        "livemode": False,
        "lookup_key": record.lookup_key,
        "metadata": dict(record.metadata),
        "name": record.name,
    }


def render_product_feature(store: Store, record: ProductFeature) -> Json:
    return {
        "id": record.id,
        "object": "product_feature",
        "entitlement_feature": render_feature(store.entitlements.features.get(record.feature)),
        "livemode": False,
    }


def render_active(record: ActiveEntitlement) -> Json:
    return {
        "id": record.id,
        "object": "entitlements.active_entitlement",
        "feature": record.feature,
        "livemode": False,
        "lookup_key": record.lookup_key,
    }


def summary(customer: str, granted: list[ActiveEntitlement]) -> Json:
    """The summary event's object: the first ten entitlements only."""
    return {
        "object": "entitlements.active_entitlement_summary",
        "customer": customer,
        "entitlements": list_object(
            [render_active(e) for e in granted[:SUMMARY_LIMIT]],
            len(granted) > SUMMARY_LIMIT,
            f"/v1/customer/{customer}/entitlements",
        ),
        "livemode": False,
    }


# -- changes ----------------------------------------------------------------------------------


def create_feature(store: Store, name: str, lookup_key: str, metadata: dict[str, str]) -> Feature:
    # An archived feature's lookup key is free again (Stripe's entitlements guide).
    features = store.entitlements.features.rows.values()
    taken = any(f.lookup_key == lookup_key and f.active for f in features)
    if taken:
        raise StripeError(
            400,
            f"A feature with lookup_key '{lookup_key}' already exists.",
            param="lookup_key",
        )
    record = Feature(ids.new_id("feat"), store.now(), name, lookup_key, True, metadata)
    store.entitlements.features.add(record.id, record)
    return record


def attach(store: Store, product: str, feature_id: str) -> ProductFeature:
    store.products.get(product, "product")
    feature = store.entitlements.features.get(feature_id, "entitlement_feature")
    if not feature.active:
        raise StripeError(
            400, "Inactive features cannot be attached to products.", param="entitlement_feature"
        )
    state = store.entitlements
    attached = state.by_product.setdefault(product, [])
    if any(state.product_features.get(pf).feature == feature_id for pf in attached):
        raise StripeError(
            400,
            f"The feature {feature_id} is already attached to product {product}.",
            param="entitlement_feature",
        )
    record = ProductFeature(ids.new_id("prodft"), store.now(), product, feature_id)
    state.product_features.add(record.id, record)
    attached.append(record.id)
    refresh_product(store, product)
    return record


def detach(store: Store, product: str, product_feature_id: str) -> None:
    attached = store.entitlements.by_product.get(product, [])
    if product_feature_id not in attached:
        raise not_found("product_feature", product_feature_id)
    attached.remove(product_feature_id)
    refresh_product(store, product)


def refresh_product(store: Store, product: str) -> None:
    """A product's features changed: so did those of its subscribers."""
    customers = {
        sub.customer
        for sub in store.subscriptions.rows.values()
        if sub.status in ENTITLING_STATUSES and any(i.price.product == product for i in sub.items)
    }
    for customer in sorted(customers):
        refresh_customer(store, customer, store.now())


def features_of(store: Store, customer: str) -> list[Feature]:
    """The features a customer is entitled to now, in the order its products list them."""
    state = store.entitlements
    found: dict[str, Feature] = {}
    for sub in store.customer_subscriptions(customer):
        if sub.status not in ENTITLING_STATUSES:
            continue
        for item in sub.items:
            for pf in state.by_product.get(item.price.product, []):
                feature = state.features.get(state.product_features.get(pf).feature)
                found.setdefault(feature.id, feature)
    return list(found.values())


def refresh_customer(store: Store, customer: str, created: int) -> None:
    """Recompute a customer's active entitlements; emit the summary event if they changed."""
    state = store.entitlements
    current = state.active.get(customer)
    had = {e.feature: e for e in current.rows.values()} if current else {}
    wanted = features_of(store, customer)
    if {f.id for f in wanted} == set(had):
        return
    table = new_table("entitlements.active_entitlement")
    for feature in wanted:
        kept = had.get(feature.id) or ActiveEntitlement(
            ids.new_id("ent"), feature.id, feature.lookup_key
        )
        table.add(kept.id, kept)
    state.active[customer] = table
    store.emit(SUMMARY_EVENT, summary(customer, list(table.rows.values())), created=created)
