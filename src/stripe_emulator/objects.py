"""Render records as Stripe JSON objects, in the shapes of API version 2026-08-26.dahlia.

Every field of each object's OpenAPI schema is present (with Stripe's typical default where
the emulator does not model it), since clients may read any of them; fields the schema does not
list are never emitted. The contract test validates all of this against spec3.json.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from stripe_emulator import invoice_objects
from stripe_emulator.billing_records import Invoice, PaymentMethod, TestClock
from stripe_emulator.discount_objects import discount_json
from stripe_emulator.events import Event
from stripe_emulator.records import (
    CheckoutSession,
    Customer,
    Item,
    LineItem,
    PortalSession,
    Price,
    Product,
    Subscription,
)

API_VERSION = "2026-08-26.dahlia"

Json = dict[str, Any]


def customer(record: Customer) -> Json:
    if record.deleted:
        return deleted_customer(record.id)
    return {
        "id": record.id,
        "object": "customer",
        "address": dict(record.address) if record.address is not None else None,
        "balance": 0,
        "created": record.created,
        "currency": record.currency,
        "customer_account": None,
        "default_source": None,
        "delinquent": False,
        "description": record.description,
        "discount": discount_json(record.discount) if record.discount else None,
        "email": record.email,
        "invoice_prefix": record.invoice_prefix,
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": record.default_payment_method,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": dict(record.metadata),
        "name": record.name,
        "next_invoice_sequence": 1,
        "phone": record.phone,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": record.test_clock,
    }


def deleted_customer(customer_id: str) -> Json:
    return {"id": customer_id, "object": "customer", "deleted": True}


def product(record: Product) -> Json:
    return {
        "id": record.id,
        "object": "product",
        "active": record.active,
        "created": record.created,
        "default_price": record.default_price,
        "description": record.description,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": dict(record.metadata),
        "name": record.name,
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "unit_label": None,
        "updated": record.updated,
        "url": record.url,
    }


def price(record: Price) -> Json:
    recurring = None
    if record.interval is not None:
        recurring = {
            "interval": record.interval,
            "interval_count": record.interval_count,
            "meter": record.meter,
            "usage_type": "metered" if record.meter is not None else "licensed",
        }
    amount = record.unit_amount
    decimal = record.unit_amount_decimal or (str(amount) if amount is not None else None)
    return {
        "id": record.id,
        "object": "price",
        "active": record.active,
        "billing_scheme": record.billing_scheme,
        "created": record.created,
        "currency": record.currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": record.lookup_key,
        "metadata": dict(record.metadata),
        "nickname": record.nickname,
        "product": record.product,
        "recurring": recurring,
        "tax_behavior": record.tax_behavior,
        "tiers_mode": record.tiers_mode,
        "transform_quantity": (
            None
            if record.transform_quantity is None
            else dict(zip(("divide_by", "round"), record.transform_quantity, strict=True))
        ),
        "type": "recurring" if recurring is not None else "one_time",
        "unit_amount": amount,
        "unit_amount_decimal": decimal,
    }


def subscription_item(record: Item, sub: Subscription) -> Json:
    rendered: Json = {
        "id": record.id,
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": record.created,
        # Since API 2025-03-31 the current period lives on the items, not the subscription.
        "current_period_end": sub.current_period_end,
        "current_period_start": sub.current_period_start,
        "discounts": [],
        "metadata": dict(record.metadata),
        "price": price(record.price),
        "quantity": record.quantity,
        "subscription": sub.id,
        "tax_rates": [],
    }
    if record.price.meter is not None:
        del rendered["quantity"]  # a metered item has none (Stripe omits the field)
    return rendered


def subscription(record: Subscription) -> Json:
    pause = None
    if record.pause_behavior is not None:
        pause = {"behavior": record.pause_behavior, "resumes_at": None}
    return {
        "id": record.id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": record.billing_cycle_anchor,
        "billing_cycle_anchor_config": None,
        "billing_mode": {"flexible": {"proration_discounts": "included"}, "type": "flexible"},
        "billing_schedules": [],
        "billing_thresholds": None,
        "cancel_at": record.cancel_at,
        "cancel_at_period_end": record.cancel_at_period_end,
        "canceled_at": record.canceled_at,
        "cancellation_details": {
            "comment": record.cancellation_comment,
            "feedback": record.cancellation_feedback,
            "reason": record.cancellation_reason,
        },
        "collection_method": record.collection_method,
        "created": record.created,
        "currency": record.currency,
        "customer": record.customer,
        "customer_account": None,
        "days_until_due": record.days_until_due,
        "default_payment_method": record.default_payment_method,
        "default_source": None,
        "default_tax_rates": [],
        "description": record.description,
        "discounts": [discount.id for discount in record.discounts],
        "ended_at": record.ended_at,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {
            "object": "list",
            "data": [subscription_item(item, record) for item in record.items],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={record.id}",
        },
        "latest_invoice": record.latest_invoice,
        "livemode": False,
        "metadata": dict(record.metadata),
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": pause,
        "payment_settings": {
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": record.start_date,
        "status": record.status,
        "test_clock": record.test_clock,
        "transfer_data": None,
        "trial_end": record.trial_end,
        "trial_settings": {
            "end_behavior": {"missing_payment_method": record.missing_payment_method}
        },
        "trial_start": record.trial_start,
    }


def checkout_amount(record: CheckoutSession) -> int:
    return sum((line.price.unit_amount or 0) * line.quantity for line in record.line_items)


def checkout_session(record: CheckoutSession) -> Json:
    subtotal = checkout_amount(record)
    amount = subtotal - record.amount_discount
    discounts = []
    if record.promotion_code is not None:
        discounts = [{"coupon": None, "promotion_code": record.promotion_code}]
    complete = record.status == "complete"
    details: Json | None = None
    if complete:
        details = {
            "address": None,
            "business_name": None,
            "email": record.customer_details_email,
            "individual_name": None,
            "name": record.customer_details_name,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        }
    return {
        "id": record.id,
        "object": "checkout.session",
        "adaptive_pricing": None,
        "after_expiration": None,
        "allow_promotion_codes": record.allow_promotion_codes,
        "amount_subtotal": subtotal,
        "amount_total": amount,
        "automatic_tax": {
            "enabled": record.automatic_tax,
            "liability": None,
            "provider": "stripe" if record.automatic_tax else None,
            "status": "requires_location_inputs" if record.automatic_tax else None,
        },
        "billing_address_collection": record.billing_address_collection,
        "cancel_url": record.cancel_url,
        "client_reference_id": record.client_reference_id,
        "client_secret": None,
        "collected_information": None,
        "consent": None,
        "consent_collection": None,
        "created": record.created,
        "currency": record.line_items[0].price.currency if record.line_items else None,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {
            "after_submit": None,
            "shipping_address": None,
            "submit": None,
            "terms_of_service_acceptance": None,
        },
        "customer": record.customer,
        "customer_account": None,
        "customer_creation": None,
        "customer_details": details,
        "customer_email": record.customer_email,
        "discounts": discounts,
        "expires_at": record.expires_at,
        "invoice": None,
        "invoice_creation": None,
        "livemode": False,
        "locale": record.locale,
        "metadata": dict(record.metadata),
        "mode": "subscription",
        "origin_context": None,
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": record.payment_method_collection,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "payment_status": record.payment_status,
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "saved_payment_method_options": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_options": [],
        "status": record.status,
        "submit_type": None,
        "subscription": record.subscription,
        "success_url": record.success_url,
        "tax_id_collection": {
            "enabled": record.tax_id_collection,
            "required": "never",
        },
        "total_details": {
            "amount_discount": record.amount_discount,
            "amount_shipping": 0,
            "amount_tax": 0,
        },
        "ui_mode": "hosted_page",
        # Like Stripe, the hosted page's URL is only given while the session is open.
        "url": record.url if record.status == "open" else None,
        "wallet_options": None,
    }


def line_item(record: LineItem, description: str | None) -> Json:
    amount = (record.price.unit_amount or 0) * record.quantity
    return {
        "id": record.id,
        "object": "item",
        "amount_discount": 0,
        "amount_subtotal": amount,
        "amount_tax": 0,
        "amount_total": amount,
        "currency": record.price.currency,
        "description": description,
        "price": price(record.price),
        "quantity": None if record.price.meter is not None else record.quantity,
    }


def portal_session(record: PortalSession) -> Json:
    return {
        "id": record.id,
        "object": "billing_portal.session",
        "configuration": record.configuration,
        "created": record.created,
        "customer": record.customer,
        "customer_account": None,
        "flow": record.flow,
        "livemode": False,
        "locale": record.locale,
        "on_behalf_of": None,
        "return_url": record.return_url,
        "url": record.url,
    }


def render(obj: Any) -> Json:
    """An event's `data.object`: its record rendered (or the dict itself)."""
    if isinstance(obj, Subscription):
        return subscription(obj)
    if isinstance(obj, Customer):
        # customer.deleted carries the customer as it was, never the deleted stub.
        return customer(obj)
    if isinstance(obj, CheckoutSession):
        return checkout_session(obj)
    if isinstance(obj, Price):
        return price(obj)
    if isinstance(obj, Product):
        return product(obj)
    if isinstance(obj, PortalSession):
        return portal_session(obj)
    if isinstance(obj, (Invoice, PaymentMethod, TestClock)):
        return invoice_objects.render(obj)
    assert isinstance(obj, dict)
    return obj


def event(record: Event, pending_webhooks: int = 0) -> Json:
    """An event as Stripe renders it (`Store.render_event` supplies `pending_webhooks`)."""
    data: Json = {"object": render(record.obj)}
    if record.previous is not None:
        data["previous_attributes"] = record.previous
    return {
        "id": record.id,
        "object": "event",
        "api_version": API_VERSION,
        "created": record.created,
        "data": data,
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": {"id": record.request_id, "idempotency_key": record.idempotency_key},
        "type": record.type,
    }


def list_object(data: list[Json], has_more: bool, url: str) -> Json:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def dumps(body: Any) -> bytes:
    """`body` as compact JSON (orjson; the same content as `json.dumps`)."""
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError: non-str keys, ints beyond 64 bits, ...
        return json.dumps(body, separators=(",", ":")).encode()


def list_json(data: list[bytes], has_more: bool, url: str) -> bytes:
    """`list_object` already encoded, from the items' encoded JSON."""
    more = b"true" if has_more else b"false"
    return b"".join(
        (b'{"object":"list","data":[', b",".join(data), b'],"has_more":', more,
         b',"url":', dumps(url), b"}")
    )  # fmt: skip
