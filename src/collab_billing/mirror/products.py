"""Products: `billing_products`, kept for their names (a price names its product by id)."""

from __future__ import annotations

from typing import Any

import msgspec

from collab_billing.db.models import BillingProduct
from collab_billing.mirror.types import MirroredType


class Product(msgspec.Struct):
    """The fields of a Stripe product that the service keeps (a deleted one's stub decodes)."""

    id: str
    name: str | None = None
    active: bool = False
    deleted: bool = False


def columns(product: Product) -> dict[str, Any]:
    return {"name": product.name, "active": product.active, "deleted": product.deleted}


PRODUCTS = MirroredType(
    kind="product",
    event_types=("product.created", "product.updated", "product.deleted"),
    object_type=Product,
    table=BillingProduct.__table__,  # type: ignore[arg-type]
    key="stripe_product_id",
    columns=columns,
    object_id=lambda product: product.id,
    owner=None,
    retrieve_path="/v1/products/{id}",
    list_path="/v1/products",
)
