"""Which features a user is served: those of the subscriptions that grant access.

Stripe's active entitlements (`billing_entitlements`) are the features of the products of
every subscription Stripe entitles (`queries.ACTIVE_STATUSES`: active, trialing, past due),
whatever our access policy says (`state.access`: past due beyond its grace is `blocked`).
When every such subscription grants access, or none does (access `blocked` or `none`, served
featureless by `state.document`), the entitlements are the answer as they are: no more
statement. Only a customer with both is *mixed*: the features that only its withheld
subscriptions' products give (`billing_product_features`, `mirror.product_features`) are
taken off. A feature that a granting subscription's product gives too stays, and so does
one no mirrored product is known to give (the entitlements are Stripe's word; a product
whose features were never listed takes nothing off). A customer one of whose granting
subscriptions' products is not known (its price not mirrored) or whose features were never
listed has nothing taken off: any feature may be that product's too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from collab_billing.db import queries
from collab_billing.db.dialect import in_ids
from collab_billing.db.models import (
    BillingPrice,
    BillingProductFeature,
    BillingProductFeatureSync,
    BillingSubscription,
)
from collab_billing.state.access import Invoice, grants_access

Entitlement = tuple[str, str]  # (feature id, lookup key)

_ITEM_PRICES = select(BillingSubscription.id, BillingSubscription.stripe_item_price_ids).where(
    in_ids(BillingSubscription.id)
)
_PRICE_PRODUCTS = select(BillingPrice.stripe_price_id, BillingPrice.stripe_product_id).where(
    in_ids(BillingPrice.stripe_price_id)
)
_PRODUCT_FEATURES = select(
    BillingProductFeature.stripe_product_id, BillingProductFeature.stripe_feature_id
).where(in_ids(BillingProductFeature.stripe_product_id))
_LISTED = select(BillingProductFeatureSync.stripe_product_id).where(
    in_ids(BillingProductFeatureSync.stripe_product_id)
)


def split(
    subscriptions: Sequence[queries.SubscriptionRow],
    open_invoices: Sequence[Invoice],
    now: datetime,
    grace: timedelta,
) -> tuple[list[int], list[int]] | None:
    """(granting, withheld): the row ids of the subscriptions Stripe entitles that grant
    access and of those that do not; None unless there are both (not mixed)."""
    entitled = [s for s in subscriptions if s.stripe_subscription_status in queries.ACTIVE_STATUSES]
    granting = [s.id for s in entitled if grants_access(s, open_invoices, now, grace)]
    withheld = [s.id for s in entitled if s.id not in granting]
    return (granting, withheld) if granting and withheld else None


def served(
    session: Session,
    entitlements: Mapping[int, Sequence[Entitlement]],
    mixed: Mapping[int, tuple[list[int], list[int]]],
) -> dict[int, list[str]]:
    """Each customer's lookup keys to serve: its entitlements, less, for a mixed customer
    (`split`), the features only its withheld subscriptions' products give."""
    taken_off = _withheld_features(session, mixed) if mixed else {}
    return {
        cid: [key for feature, key in listed if feature not in taken_off.get(cid, ())]
        for cid, listed in entitlements.items()
    }


def _withheld_features(
    session: Session, mixed: Mapping[int, tuple[list[int], list[int]]]
) -> dict[int, set[str]]:
    """Per mixed customer, the feature ids its withheld subscriptions' products give and its
    granting ones' do not; none while a granting one's products are not all known and listed
    (four statements for every customer at once)."""
    subscription_ids = [sid for both in mixed.values() for ids in both for sid in ids]
    products = item_products(session, subscription_ids)
    all_products = list({p for found in products.values() for p in found if p is not None})
    listed = set(session.scalars(_LISTED, {"ids": all_products}))
    features: dict[str, set[str]] = {}
    for product, feature in session.execute(_PRODUCT_FEATURES, {"ids": all_products}):
        features.setdefault(product, set()).add(feature)

    def given(ids: Collection[int]) -> set[str]:
        return {f for sid in ids for p in products.get(sid, ()) for f in features.get(p or "", ())}

    def known(ids: Collection[int]) -> bool:
        return all(products.get(sid) and listed.issuperset(products[sid]) for sid in ids)

    return {
        cid: given(withheld) - given(granting) if known(granting) else set()
        for cid, (granting, withheld) in mixed.items()
    }


def subscription_products(session: Session, subscription_ids: Sequence[int]) -> dict[int, set[str]]:
    """The products of each subscription's items (by our row id), as far as the mirrored
    catalog knows their prices."""
    return {
        sid: {product for product in found if product is not None}
        for sid, found in item_products(session, subscription_ids).items()
    }


def item_products(session: Session, subscription_ids: Sequence[int]) -> dict[int, set[str | None]]:
    """The product of each subscription's items' prices (by our row id); None for a price
    the mirrored catalog does not know."""
    items = dict(session.execute(_ITEM_PRICES, {"ids": list(subscription_ids)}).all())
    prices = {price for listed in items.values() for price in listed or ()}
    product_of = dict(session.execute(_PRICE_PRODUCTS, {"ids": list(prices)}).all())
    return {sid: {product_of.get(price) for price in listed or ()} for sid, listed in items.items()}
