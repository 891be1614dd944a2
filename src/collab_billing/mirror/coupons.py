"""Coupons: `billing_coupons`, what discounts take off (they belong to no customer).

A coupon's event carries the whole coupon, so it is written from its payload like a product.
Stripe changes only a coupon's name and metadata; deleting it stops new redemptions and leaves
the discounts made from it as they are, so `coupon.deleted` writes a tombstone that keeps what
it took off (`mirror.discounts` reads it through the discount's `stripe_coupon_id`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from collab_billing.db.models import BillingCoupon
from collab_billing.mirror.types import MirroredType


class Coupon(msgspec.Struct):
    """The fields of a Stripe coupon that the service keeps (a deleted one's stub decodes)."""

    id: str
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration: str | None = None
    duration_in_months: int | None = None
    deleted: bool = False


def columns(coupon: Coupon) -> dict[str, Any]:
    return {
        "percent_off": coupon.percent_off,
        "amount_off": coupon.amount_off,
        "currency": coupon.currency,
        "duration": coupon.duration,
        "duration_in_months": coupon.duration_in_months,
        "deleted": coupon.deleted,
    }


COUPONS = MirroredType(
    kind="coupon",
    event_types=("coupon.created", "coupon.updated", "coupon.deleted"),
    object_type=Coupon,
    table=BillingCoupon.__table__,  # type: ignore[arg-type]
    key="stripe_coupon_id",
    columns=columns,
    object_id=lambda coupon: coupon.id,
    owner=None,
    retrieve_path="/v1/coupons/{id}",
    list_path="/v1/coupons",
)
