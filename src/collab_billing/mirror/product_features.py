"""Product features: `billing_product_features`, the features each product gives.

A customer's active entitlements (`mirror.entitlements`) are the features of the products of
every subscription Stripe entitles (active, trialing, past due), and do not say which
subscription gives which. The state document serves only those of subscriptions that grant
access (`state.features`): it needs each product's features.

Stripe sends no event of a product's features (`/v1/products/{id}/features`; attaching or
detaching one emits only the summaries of the customers whose entitlements change). So this
type has no event of its own: a product's features are listed (`fetch`, every page) when a
customer with subscriptions of several products has its entitlements written from a summary
event (`BatchWriter.refresh_product_features`: the summary of a change of a product's
features reaches its subscribers), and by resync, for every live product. The watermark (one
row per product, `billing_product_feature_syncs`) is the summary's second; the listing is
read after it.
"""

from __future__ import annotations

import msgspec
from sqlalchemy import delete
from sqlalchemy.orm import Session

from collab_billing.db.dialect import insert
from collab_billing.db.models import BillingProductFeature, BillingProductFeatureSync
from collab_billing.mirror.types import MirroredType
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError

LIST_PATH = "/v1/products/{id}/features"


class Feature(msgspec.Struct):
    id: str
    lookup_key: str


class ProductFeature(msgspec.Struct):
    """A `product_feature`: its feature is always expanded (Stripe's schema)."""

    id: str
    entitlement_feature: Feature


class ProductFeatures(msgspec.Struct):
    """A product and every feature attached to it, as `fetch` lists them."""

    product: str
    features: list[Feature] = []


def fetch(gateway: StripeGateway, product_id: str) -> ProductFeatures:
    """The product's features, every page. A deleted product (404) gives none."""
    try:
        listed = [
            msgspec.json.decode(raw, type=ProductFeature).entitlement_feature
            for raw in gateway.list_all(LIST_PATH.format(id=product_id))
        ]
    except StripeGatewayError as error:
        if error.http_status != 404:
            raise
        listed = []
    return ProductFeatures(product_id, listed)


def replace_rows(session: Session, written: list[tuple[ProductFeatures, int | None]]) -> None:
    """Each product's `billing_product_features` rows become the listed ones."""
    by_product = {listed.product: listed for listed, _ in written}
    if not by_product:
        return
    table = BillingProductFeature
    session.execute(delete(table).where(table.stripe_product_id.in_(by_product)))
    rows = {
        (product, feature.id): {
            "stripe_product_id": product,
            "stripe_feature_id": feature.id,
            "lookup_key": feature.lookup_key,
        }
        for product, listed in by_product.items()
        for feature in listed.features
    }
    if rows:
        session.connection().execute(insert(session, table), list(rows.values()))


PRODUCT_FEATURES = MirroredType(
    kind="product_feature",
    event_types=(),  # Stripe has none: read with summaries, and by resync
    object_type=ProductFeatures,
    table=BillingProductFeatureSync.__table__,  # type: ignore[arg-type]
    key="stripe_product_id",
    columns=lambda listed: {},
    object_id=lambda listed: listed.product,
    owner=None,
    retrieve_path="",
    list_path="",
    trust_payload=False,
    fetch=fetch,
    after_write=replace_rows,
)
