"""A discount (`di_...`) as Stripe renders it (objects.py renders a customer's with it), and as
the `DELETE .../discount` endpoints answer it once removed (`deleted_discount`)."""

from __future__ import annotations

from typing import Any

from stripe_emulator.records import Discount


def discount_json(record: Discount) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "discount",
        "checkout_session": None,
        "customer": record.customer,
        "customer_account": None,
        "end": record.end,
        "invoice": None,
        "invoice_item": None,
        "promotion_code": record.promotion_code,
        "source": {"coupon": record.coupon.id, "type": "coupon"},
        "start": record.start,
        "subscription": record.subscription,
        "subscription_item": None,
    }


def deleted_discount_json(record: Discount) -> dict[str, Any]:
    """The spec's `deleted_discount`: the discount with `deleted: true`, and no `end` (which
    that schema does not have)."""
    shown = {k: v for k, v in discount_json(record).items() if k != "end"}
    return {**shown, "deleted": True}
