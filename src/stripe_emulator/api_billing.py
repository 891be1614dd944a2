"""`/v1/subscriptions`, `/v1/checkout/sessions`, `/v1/billing_portal/sessions`."""

from __future__ import annotations

from typing import Any

from stripe_emulator import ids, objects, sessions
from stripe_emulator.api import Call, created_range, list_args, list_table, route
from stripe_emulator.errors import StripeError, bad_request, missing
from stripe_emulator.forms import Params
from stripe_emulator.objects import Json
from stripe_emulator.records import LineItem, Subscription, evolve
from stripe_emulator.store import Store
from stripe_emulator.subscriptions import (
    STATUSES,
    ItemSpec,
    SubscriptionChanges,
    cancel_subscription,
    create_subscription,
    save,
    update_subscription,
)

_SUB_IGNORED = (
    "add_invoice_items", "application_fee_percent", "automatic_tax", "backdate_start_date",
    "billing_cycle_anchor", "billing_cycle_anchor_config", "billing_mode", "billing_thresholds",
    "currency", "default_payment_method", "default_source", "default_tax_rates", "discounts",
    "invoice_settings", "off_session", "on_behalf_of", "payment_settings",
    "pending_invoice_item_interval", "proration_behavior", "proration_date", "transfer_data",
    "trial_from_plan", "trial_settings", "coupon", "promotion_code",
)  # fmt: skip


def _item_specs(store: Store, p: Params, key: str, required: bool) -> list[ItemSpec] | None:
    entries = p.dicts(key, required=required)
    if entries is None:
        return None
    if not entries:
        raise missing(key)
    specs = []
    for entry in entries:
        price_id = entry.string("price", required=True) or ""
        price = store.prices.get(price_id, entry.name("price"))
        if price.interval is None:
            raise bad_request(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                entry.name("price"),
            )
        quantity = entry.integer("quantity", minimum=1)
        metadata = entry.metadata()
        entry.ignore("id", "discounts", "tax_rates", "billing_thresholds", "deleted",
                     "clear_usage", "plan", "price_data")  # fmt: skip
        clean = {k: v for k, v in (metadata or {}).items() if v is not None}
        specs.append(ItemSpec(price, quantity or 1, clean))
    return specs


def _cancellation(p: Params) -> tuple[str | None, str | None]:
    details = p.hash("cancellation_details")
    if details is None:
        return None, None
    feedback_choices = ("customer_service", "low_quality", "missing_features", "other",
                        "switched_service", "too_complex", "too_expensive", "unused")  # fmt: skip
    return details.string("comment"), details.string("feedback", choices=feedback_choices)


def _cancel_at(p: Params, sub: Subscription | None) -> tuple[int | None, bool]:
    """`cancel_at`: a timestamp, "" (clear), or min/max_period_end (the period's end)."""
    raw = p.raw("cancel_at")
    if raw is None:
        return None, False
    if raw == "":
        return None, True
    if raw in ("min_period_end", "max_period_end"):
        return (sub.current_period_end if sub is not None else None), False
    return p.integer("cancel_at"), False


@route("POST", "/v1/subscriptions")
def create(call: Call) -> Json:
    p = call.params
    customer = p.string("customer", required=True) or ""
    call.store.live_customer(customer)
    items = _item_specs(call.store, p, "items", required=True)
    assert items is not None
    behavior = p.string("payment_behavior", choices=(
        "allow_incomplete", "default_incomplete", "error_if_incomplete", "pending_if_incomplete"
    ))  # fmt: skip
    trial_end_raw = p.raw("trial_end")
    trial_end = None
    if trial_end_raw is not None and trial_end_raw != "now":
        trial_end = p.integer("trial_end")
    cancel_at, _ = _cancel_at(p, None)
    p.ignore(*_SUB_IGNORED)
    fields: dict[str, Any] = dict(
        customer=customer,
        items=items,
        metadata=p.metadata(),
        status="incomplete" if behavior == "default_incomplete" else "active",
        trial_days=p.integer("trial_period_days", minimum=0),
        trial_end=trial_end,
        description=p.string("description"),
        collection_method=p.string(
            "collection_method", choices=("charge_automatically", "send_invoice")
        )
        or "charge_automatically",
        days_until_due=p.integer("days_until_due", minimum=0),
        cancel_at_period_end=bool(p.boolean("cancel_at_period_end")),
        cancel_at=cancel_at,
    )
    p.finish()
    return objects.subscription(create_subscription(call.store, **fields))


@route("GET", "/v1/subscriptions/{id}")
def retrieve(call: Call) -> Json:
    call.params.finish()
    return objects.subscription(call.store.subscriptions.get(call.id))


@route("POST", "/v1/subscriptions/{id}")
def update(call: Call) -> Json:
    p = call.params
    sub = call.store.subscriptions.get(call.id)
    cancel_at, clear = _cancel_at(p, sub)
    comment, feedback = _cancellation(p)
    pause_raw = p.raw("pause_collection")
    pause = p.hash("pause_collection") if isinstance(pause_raw, dict) else None
    changes = SubscriptionChanges(
        metadata=p.metadata(),
        cancel_at_period_end=p.boolean("cancel_at_period_end"),
        cancel_at=cancel_at,
        clear_cancel_at=clear,
        description=p.string("description"),
        items=_item_specs(call.store, p, "items", required=False),
        trial_end_now=p.raw("trial_end") == "now",
        pause_behavior=pause.string(
            "behavior", required=True, choices=("keep_as_draft", "mark_uncollectible", "void")
        )
        if pause is not None
        else None,  # fmt: skip
        resume_collection=pause_raw == "",
        comment=comment,
        feedback=feedback,
    )
    if pause is not None:
        pause.ignore("resumes_at")
    p.ignore(*_SUB_IGNORED, "payment_behavior", "collection_method", "days_until_due")
    p.finish()
    return objects.subscription(update_subscription(call.store, call.id, changes))


@route("DELETE", "/v1/subscriptions/{id}")
def cancel(call: Call) -> Json:
    p = call.params
    comment, feedback = _cancellation(p)
    p.ignore("invoice_now", "prorate")
    p.finish()
    record = cancel_subscription(call.store, call.id, comment=comment, feedback=feedback)
    return objects.subscription(record)


@route("POST", "/v1/subscriptions/{id}/resume")
def resume(call: Call) -> Json:
    p = call.params
    p.ignore("billing_cycle_anchor", "proration_behavior", "proration_date")
    p.finish()
    sub = call.store.subscriptions.get(call.id)
    if sub.status != "paused":
        raise bad_request("Only paused subscriptions can be resumed.")
    return objects.subscription(save(call.store, sub, evolve(sub, status="active")))


_LIST_STATUSES = (*STATUSES, "all", "ended")


@route("GET", "/v1/subscriptions")
def list_subscriptions(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    customer = p.string("customer")
    price = p.string("price")
    status = p.string("status", choices=_LIST_STATUSES)
    collection = p.string("collection_method")
    created = created_range(p)
    p.ignore("current_period_end", "current_period_start", "test_clock", "automatic_tax", "plan")
    p.finish()

    def keep(sub: Subscription) -> bool:
        if status is None and sub.status == "canceled":
            return False
        if status == "ended" and sub.status not in ("canceled", "incomplete_expired"):
            return False
        if status not in (None, "all", "ended") and sub.status != status:
            return False
        if price is not None and all(item.price.id != price for item in sub.items):
            return False
        if collection is not None and sub.collection_method != collection:
            return False
        gte, lt = created
        return (gte is None or sub.created >= gte) and (lt is None or sub.created < lt)

    positions = None
    if customer is not None:
        positions = call.store.subscriptions_by_customer.get(customer, [])
    table = call.store.subscriptions
    return list_table(table, args, "/v1/subscriptions", objects.subscription, keep, positions)


# --- checkout sessions ---------------------------------------------------------------------

_CHECKOUT_IGNORED = (
    "adaptive_pricing", "automatic_tax", "billing_address_collection", "branding_settings",
    "consent_collection", "currency", "custom_fields", "custom_text", "customer_update",
    "discounts", "invoice_creation", "name_collection", "optional_items", "origin_context",
    "payment_method_collection", "payment_method_configuration", "payment_method_options",
    "payment_method_types", "permissions", "phone_number_collection", "redirect_on_completion",
    "return_url", "saved_payment_method_options", "shipping_address_collection",
    "shipping_options", "submit_type", "tax_id_collection", "wallet_options",
    "customer_creation", "after_expiration",
)  # fmt: skip


def _line_items(store: Store, p: Params) -> list[LineItem]:
    specs = _item_specs(store, p, "line_items", required=True)
    assert specs is not None
    return [LineItem(ids.new_id("li"), spec.price, spec.quantity) for spec in specs]


def _subscription_data(p: Params) -> dict[str, Any]:
    data = p.hash("subscription_data")
    if data is None:
        return {}
    metadata = data.metadata() or {}
    data.ignore("application_fee_percent", "billing_cycle_anchor", "billing_mode",
                "default_tax_rates", "invoice_settings", "on_behalf_of", "proration_behavior",
                "transfer_data", "trial_settings", "trial_end", "pending_invoice_item_interval")  # fmt: skip
    return {
        "subscription_metadata": {k: v for k, v in metadata.items() if v is not None},
        "subscription_description": data.string("description"),
        "trial_period_days": data.integer("trial_period_days", minimum=1),
    }


@route("POST", "/v1/checkout/sessions")
def create_checkout(call: Call) -> Json:
    p = call.params
    mode = p.string("mode", required=True, choices=("payment", "setup", "subscription"))
    if mode != "subscription":
        raise bad_request("The emulator supports only `mode=subscription`.", "mode")
    customer = p.string("customer")
    email = p.string("customer_email")
    if customer and email:
        raise StripeError(
            400,
            "You may only specify one of these parameters: customer, customer_email.",
            code="parameters_exclusive",
            param="customer_email",
        )
    ui_mode = p.string("ui_mode", choices=("hosted_page", "hosted", "embedded_page", "elements"))
    if ui_mode not in (None, "hosted", "hosted_page"):
        raise bad_request("The emulator supports only hosted Checkout pages.", "ui_mode")
    p.ignore(*_CHECKOUT_IGNORED)
    line_items = _line_items(call.store, p)
    fields: dict[str, Any] = dict(
        base_url=call.info.base_url,
        line_items=line_items,
        expires_at=p.integer("expires_at"),
        success_url=p.string("success_url"),
        cancel_url=p.string("cancel_url"),
        customer=customer or None,
        customer_email=email or None,
        client_reference_id=p.string("client_reference_id", max_length=200) or None,
        metadata={k: v for k, v in (p.metadata() or {}).items() if v is not None},
        locale=p.string("locale"),
        allow_promotion_codes=p.boolean("allow_promotion_codes"),
        **_subscription_data(p),
    )
    p.finish()
    return objects.checkout_session(sessions.create_checkout_session(call.store, **fields))


@route("GET", "/v1/checkout/sessions/{id}")
def retrieve_checkout(call: Call) -> Json:
    call.params.finish()
    return objects.checkout_session(call.store.checkout_sessions.get(call.id))


@route("POST", "/v1/checkout/sessions/{id}/expire")
def expire_checkout(call: Call) -> Json:
    call.params.finish()
    return objects.checkout_session(sessions.expire_checkout_session(call.store, call.id))


@route("GET", "/v1/checkout/sessions/{id}/line_items")
def checkout_line_items(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    p.finish()
    session = call.store.checkout_sessions.get(call.id)
    products = call.store.products.rows
    data = [
        objects.line_item(line, products[line.price.product].name) for line in session.line_items
    ]
    # A session has few line items: paginate the small list directly.
    names = [item["id"] for item in data]
    start = names.index(args.starting_after) + 1 if args.starting_after in names else 0
    page = data[start : start + args.limit]
    url = f"/v1/checkout/sessions/{call.id}/line_items"
    return objects.list_object(page, start + args.limit < len(data), url)


@route("GET", "/v1/checkout/sessions")
def list_checkout(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    customer = p.string("customer")
    status = p.string("status", choices=("complete", "expired", "open"))
    subscription = p.string("subscription")
    created = created_range(p)
    p.ignore("payment_intent", "payment_link", "customer_details", "customer_account")
    p.finish()

    def keep(session: Any) -> bool:
        for value, actual in ((customer, session.customer), (status, session.status),
                              (subscription, session.subscription)):  # fmt: skip
            if value is not None and value != actual:
                return False
        gte, lt = created
        return (gte is None or session.created >= gte) and (lt is None or session.created < lt)

    table = call.store.checkout_sessions
    return list_table(table, args, "/v1/checkout/sessions", objects.checkout_session, keep)


# --- billing portal sessions ---------------------------------------------------------------


def _flow(p: Params) -> dict[str, Any] | None:
    data = p.hash("flow_data")
    if data is None:
        return None
    kind = data.string("type", required=True, choices=(
        "customer_update", "payment_method_update", "subscription_cancel",
        "subscription_update", "subscription_update_confirm",
    ))  # fmt: skip
    if kind not in ("subscription_cancel", "payment_method_update"):
        raise bad_request(f"The emulator does not support portal flows of type {kind}.")
    cancel = None
    if kind == "subscription_cancel":
        section = data.hash("subscription_cancel", required=True)
        assert section is not None
        section.ignore("retention")
        cancel = {"retention": None, "subscription": section.string("subscription", required=True)}
    return {
        "after_completion": _after_completion(data),
        "customer_update": None,
        "subscription_cancel": cancel,
        "subscription_update": None,
        "subscription_update_confirm": None,
        "type": kind,
    }


def _after_completion(data: Params) -> dict[str, Any]:
    after = data.hash("after_completion")
    kind = "portal_homepage"
    redirect = hosted = None
    if after is not None:
        kind = after.string("type", required=True, choices=(
            "hosted_confirmation", "portal_homepage", "redirect"
        )) or kind  # fmt: skip
        section = after.hash("redirect", required=kind == "redirect")
        if section is not None:
            redirect = {"return_url": section.string("return_url", required=True)}
        confirmation = after.hash("hosted_confirmation")
        if kind == "hosted_confirmation":
            message = confirmation.string("custom_message") if confirmation else None
            hosted = {"custom_message": message}
    return {"hosted_confirmation": hosted, "redirect": redirect, "type": kind}


@route("POST", "/v1/billing_portal/sessions")
def create_portal(call: Call) -> Json:
    p = call.params
    customer = p.string("customer", required=True) or ""
    p.ignore("configuration", "on_behalf_of", "customer_account")
    fields: dict[str, Any] = dict(
        base_url=call.info.base_url,
        customer=customer,
        return_url=p.string("return_url"),
        flow=_flow(p),
        locale=p.string("locale"),
    )
    p.finish()
    return objects.portal_session(sessions.create_portal_session(call.store, **fields))
