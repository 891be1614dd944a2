"""`/v1/checkout/sessions` and `/v1/billing_portal/sessions`."""

from __future__ import annotations

from typing import Any

from stripe_emulator import ids, objects, portal_flows, sessions
from stripe_emulator.api import Call, created_range, list_args, list_table, route
from stripe_emulator.api_billing import item_specs, missing_payment_method
from stripe_emulator.errors import StripeError, bad_request, check_currency
from stripe_emulator.forms import Params
from stripe_emulator.objects import Json
from stripe_emulator.records import LineItem
from stripe_emulator.store import Store
from stripe_emulator.subscription_items import build_items

# --- checkout sessions ---------------------------------------------------------------------

_CHECKOUT_IGNORED = (
    "adaptive_pricing", "branding_settings",
    "consent_collection", "currency", "custom_fields", "custom_text",
    "discounts", "invoice_creation", "name_collection", "optional_items", "origin_context",
    "payment_method_configuration", "payment_method_options",
    "payment_method_types", "permissions", "phone_number_collection", "redirect_on_completion",
    "return_url", "saved_payment_method_options", "shipping_address_collection",
    "shipping_options", "submit_type", "wallet_options",
    "customer_creation", "after_expiration",
)  # fmt: skip


def _line_items(store: Store, p: Params) -> list[LineItem]:
    specs = item_specs(store, p, "line_items", required=True)
    assert specs is not None
    built = build_items(specs, 0)
    for item in built:  # the subscription it makes bills in one currency
        check_currency(built[0].price.currency, item.price.currency, "line_items")
    return [LineItem(ids.new_id("li"), item.price, item.quantity) for item in built]


def _subscription_data(p: Params) -> dict[str, Any]:
    data = p.hash("subscription_data")
    if data is None:
        return {}
    metadata = data.metadata() or {}
    data.ignore(
        "application_fee_percent",
        "billing_cycle_anchor",
        "billing_mode",
        "default_tax_rates",
        "invoice_settings",
        "on_behalf_of",
        "proration_behavior",
        "transfer_data",
        "trial_end",
        "pending_invoice_item_interval",
    )
    return {
        "missing_payment_method": missing_payment_method(data),
        "subscription_metadata": {k: v for k, v in metadata.items() if v is not None},
        "subscription_description": data.string("description"),
        "trial_period_days": data.integer("trial_period_days", minimum=1),
    }


def _check_customer_update(p: Params, customer: str | None) -> None:
    """`customer_update[address|name|shipping]` (`auto` or `never`): what Checkout may write
    back to an existing customer, so only with `customer` (not modelled beyond the checks)."""
    update = p.hash("customer_update")
    if update is None:
        return
    if not customer:
        raise bad_request("`customer_update` can only be used with `customer`.", "customer_update")
    for key in ("address", "name", "shipping"):
        update.string(key, choices=("auto", "never"))


def _enabled(p: Params, key: str, *ignored: str) -> bool:
    """`automatic_tax[enabled]`-style switches."""
    section = p.hash(key)
    if section is None:
        return False
    section.ignore(*ignored)
    return bool(section.boolean("enabled"))


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
    _check_customer_update(p, customer)
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
        automatic_tax=_enabled(p, "automatic_tax", "liability"),
        billing_address_collection=p.string(
            "billing_address_collection", choices=("auto", "required")
        ),
        tax_id_collection=_enabled(p, "tax_id_collection", "required"),
        payment_method_collection=p.string(
            "payment_method_collection", choices=("always", "if_required")
        )
        or "always",
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
        for value, actual in (
            (customer, session.customer),
            (status, session.status),
            (subscription, session.subscription),
        ):
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
    kind = data.string(
        "type",
        required=True,
        choices=(
            "customer_update",
            "payment_method_update",
            "subscription_cancel",
            "subscription_update",
            "subscription_update_confirm",
        ),
    )
    if kind == "customer_update":
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
        **portal_flows.flow_sections(kind or "", data),
        "type": kind,
    }


def _after_completion(data: Params) -> dict[str, Any]:
    after = data.hash("after_completion")
    kind = "portal_homepage"
    redirect = hosted = None
    if after is not None:
        kind = (
            after.string(
                "type",
                required=True,
                choices=("hosted_confirmation", "portal_homepage", "redirect"),
            )
            or kind
        )
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
