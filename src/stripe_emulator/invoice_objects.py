"""Render invoices, payment methods and test clocks as Stripe JSON (API 2026-08-26.dahlia).

Like objects.py: every field of each schema, Stripe's defaults where the emulator models
nothing. Since API 2025-03-31 an invoice names its subscription under
`parent.subscription_details.subscription` (there is no top-level `subscription`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from stripe_emulator.billing_records import (
    Invoice,
    InvoiceLine,
    PaymentMethod,
    TestClock,
    unit_amount,
)

Json = dict[str, Any]


def payment_method(record: PaymentMethod) -> Json:
    return {
        "id": record.id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": None,
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
        "card": {
            "brand": record.brand,
            "checks": {
                "address_line1_check": None,
                "address_postal_code_check": None,
                "cvc_check": "pass",
            },
            "country": "US",
            "display_brand": record.brand,
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": f"fp{record.last4}{record.brand[:4]}",
            "funding": "credit",
            "generated_from": None,
            "last4": record.last4,
            "networks": {"available": [record.brand], "preferred": None},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": True},
            "wallet": None,
        },
        "created": record.created,
        "customer": record.customer,
        "customer_account": None,
        "livemode": False,
        "metadata": dict(record.metadata),
        "type": "card",
    }


def decimal_text(value: Decimal) -> str:
    """A decimal as Stripe writes a `format: decimal` string: plain digits, no exponent."""
    return format(value.normalize(), "f")


def _description(record: InvoiceLine) -> str:
    """Stripe's words (with an x for its multiplication sign): `1 x Plan` for an item, and for
    a proration `Unused time on 5 x Plan after 07 Dec 2026` (the credit) or `Remaining time on
    8 x Plan after 07 Dec 2026`."""
    quantity = decimal_text(record.quantity_decimal)
    product = record.price.nickname or record.price.product
    name = f"{quantity} x {product}"
    if record.proration is None:
        return name
    kind = "Unused" if record.proration < 0 else "Remaining"
    after = datetime.fromtimestamp(record.period_start, UTC).strftime("%d %b %Y")
    return f"{kind} time on {name} after {after}"


def invoice_line(record: InvoiceLine, invoice: Invoice, discounted: list[int]) -> Json:
    """`discounted`: what each of the invoice's discounts takes off this line."""
    quantity = decimal_text(record.quantity_decimal)
    return {
        "id": record.id,
        "object": "line_item",
        "amount": record.amount,
        "currency": invoice.currency,
        "description": _description(record),
        "discount_amounts": [
            {"amount": amount, "discount": discount.id}
            for amount, discount in zip(discounted, invoice.discounts, strict=True)
        ],
        "discountable": True,
        "discounts": [],
        "invoice": invoice.id,
        "livemode": False,
        "metadata": {},
        "parent": {
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": record.invoice_item,
                "proration": record.proration is not None,
                "proration_details": {"credited_items": None},
                "subscription": invoice.subscription,
                "subscription_item": record.subscription_item or "",
            },
            "type": "subscription_item_details",
        },
        "period": {"end": record.period_end, "start": record.period_start},
        "pretax_credit_amounts": [],
        "pricing": {
            "price_details": {"price": record.price.id, "product": record.price.product},
            "type": "price_details",
            "unit_amount_decimal": (
                None
                if record.price.billing_scheme == "tiered"
                else decimal_text(unit_amount(record.price))
            ),
        },
        "quantity": record.quantity,
        "quantity_decimal": quantity,
        "subtotal": record.amount,
        "taxes": [],
    }


def _parent(record: Invoice) -> Json | None:
    if record.subscription is None:
        return None
    return {
        "quote_details": None,
        "subscription_details": {"metadata": {}, "subscription": record.subscription},
        "type": "subscription_details",
    }


def invoice(record: Invoice) -> Json:
    subtotal, line_discounts = record.subtotal, record.line_discounts()
    off = [sum(taken) for taken in zip(*line_discounts, strict=True)] if line_discounts else []
    total = subtotal - sum(off)
    draft = record.status == "draft"
    return {
        "id": record.id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Stripe emulator",
        "account_tax_ids": None,
        "amount_due": record.amount_due,
        "amount_overpaid": 0,
        "amount_paid": record.amount_paid,
        "amount_paid_off_stripe": 0,
        "amount_remaining": record.amount_remaining,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": record.attempt_count,
        "attempted": record.attempted,
        "auto_advance": record.auto_advance and record.status in ("draft", "open"),
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": record.automatically_finalizes_at if draft else None,
        "billing_reason": record.billing_reason,
        "collection_method": "charge_automatically",
        "confirmation_secret": None,
        "created": record.created,
        "currency": record.currency,
        "custom_fields": None,
        "customer": record.customer,
        "customer_account": None,
        "customer_address": None,
        "customer_email": None,
        "customer_name": None,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [discount.id for discount in record.discounts],
        "due_date": None,
        "effective_at": record.finalized_at,
        "ending_balance": None if draft else min(total, 0),
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None if draft else record.hosted_invoice_url,
        "invoice_pdf": None if draft else f"{record.hosted_invoice_url}/pdf",
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {
            "object": "list",
            "data": [
                invoice_line(line, record, taken)
                for line, taken in zip(record.lines, line_discounts, strict=True)
            ],
            "has_more": False,
            "url": f"/v1/invoices/{record.id}/lines",
        },
        "livemode": False,
        "metadata": dict(record.metadata),
        "next_payment_attempt": record.next_payment_attempt,
        "number": None if draft else record.number,
        "on_behalf_of": None,
        "parent": _parent(record),
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": record.period_end,
        "period_start": record.period_start,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": record.status,
        "status_transitions": {
            "finalized_at": record.finalized_at,
            "marked_uncollectible_at": record.marked_uncollectible_at,
            "paid_at": record.paid_at,
            "voided_at": record.voided_at,
        },
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "test_clock": record.test_clock,
        "total": total,
        "total_discount_amounts": [
            {"amount": amount, "discount": discount.id}
            for amount, discount in zip(
                off or [0] * len(record.discounts), record.discounts, strict=True
            )
        ],
        "total_excluding_tax": total,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": record.created,
    }


def test_clock(record: TestClock) -> Json:
    return {
        "id": record.id,
        "object": "test_helpers.test_clock",
        "created": record.created,
        "deletes_after": record.deletes_after,
        "frozen_time": record.frozen_time,
        "livemode": False,
        "name": record.name,
        "status": record.status,
        "status_details": {},
    }


def render(obj: Invoice | PaymentMethod | TestClock) -> Json:
    if isinstance(obj, Invoice):
        return invoice(obj)
    if isinstance(obj, PaymentMethod):
        return payment_method(obj)
    return test_clock(obj)
