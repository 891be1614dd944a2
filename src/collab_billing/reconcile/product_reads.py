"""The features of products, listed with the entitlement summaries of customers whose
entitled subscriptions are of several products (only then does it matter which product
gives a feature: `state.features`). Stripe sends no event of a product's features; the rules
are in docs/reconciliation.md ("Adding a mirrored type", `mirror/product_features.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from collab_billing.db import queries
from collab_billing.db.dialect import in_ids
from collab_billing.db.models import BillingSubscription
from collab_billing.mirror.product_features import PRODUCT_FEATURES
from collab_billing.reconcile.reads import Read
from collab_billing.state.features import subscription_products

if TYPE_CHECKING:
    from collab_billing.reconcile.batch import BatchWriter

_ENTITLED = select(BillingSubscription.id, BillingSubscription.billing_customer_id).where(
    in_ids(BillingSubscription.billing_customer_id),
    BillingSubscription.stripe_subscription_status.in_(queries.ACTIVE_STATUSES),
)


def products_to_list(session: Session, entitled: Mapping[int, int]) -> dict[str, int]:
    """product -> the newest summary second among `entitled` (our customer id -> the second
    its entitlements were written as of) whose customer's entitled subscriptions are of
    several products."""
    if not entitled:
        return {}
    owners = dict(session.execute(_ENTITLED, {"ids": list(entitled)}).all())
    products: dict[int, set[str]] = {}
    for sid, found in subscription_products(session, list(owners)).items():
        products.setdefault(owners[sid], set()).update(found)
    wanted: dict[str, int] = {}
    for cid, found in products.items():
        if len(found) > 1:
            for product in found:
                wanted[product] = max(wanted.get(product, 0), entitled[cid])
    return wanted


def list_product_features(writer: BatchWriter) -> None:
    """Write the features of `products_to_list(writer.entitled)`, or name their reads in
    `writer.needed` (a failed read fails the batch, retried like any failure)."""
    wanted = products_to_list(writer.session, writer.entitled)
    if not wanted:  # every batch comes here: no statement for none
        return
    marks = writer.watermarks(PRODUCT_FEATURES, wanted)
    for product, as_of in wanted.items():
        mark, version = marks.get(product, (None, None))
        if mark is not None and mark > as_of:
            continue  # listed after a newer summary already
        read = Read("object", product, PRODUCT_FEATURES.kind)
        if mark == as_of and version is not None:
            listed = writer.reads.get_since(read, version, writer.needed, lambda _: False)
        else:
            listed = writer.reads.get(read, writer.needed)
        if listed is not None:
            seen = {product: version} if version is not None else {}
            writer.write_read(PRODUCT_FEATURES, [listed], as_of, seen)
